"""
Tests for L{twisted_rproxy.intercept}: L{ResponseInterceptor} on its own,
on a plain twisted.web request over a L{DummyChannel}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from twisted_rproxy.filters import _FilteredResponse
from twisted_rproxy.intercept import ResponseInterceptor, foldPassedHeaders
from twisted_rproxy.messages import RequestContext, ResponseHead


def _request(method: bytes = b"GET") -> tuple[Any, DummyChannel]:
    channel = DummyChannel()
    request: Any = Request(channel)
    request.method = method
    request.clientproto = b"HTTP/1.1"
    request.uri = request.path = b"/"
    return request, channel


def _written(channel: DummyChannel) -> bytes:
    value: bytes = channel.transport.written.getvalue()
    return value


class Recorder(ResponseInterceptor):
    """
    Records what its hooks see in C{log}, shared with others; upper-cases
    the body if asked.
    """

    __slots__ = ("name", "log", "upper")

    def __init__(
        self, request: Any, name: str, log: list[object], upper: bool = False
    ) -> None:
        self.name = name
        self.log = log
        self.upper = upper
        ResponseInterceptor.__init__(self, request)

    def head(self) -> None:
        self.log.append((self.name, "head", self.request.code))

    def body(self, data: bytes) -> None:
        self.log.append((self.name, "body", data))
        self.downWrite(data.upper() if self.upper else data)

    def end(self) -> None:
        self.log.append((self.name, "end"))
        self.downFinish()


class ResponseInterceptorTests(SynchronousTestCase):
    """
    Tests for L{ResponseInterceptor}.
    """

    def test_headOnceBeforeFirstWrite(self) -> None:
        """
        The head hook runs once, before the first piece of the body, with
        the status final; every piece goes through the body hook; finishing
        goes through the end hook, and the response reaches the channel.
        """
        request, channel = _request()
        log: list[object] = []
        Recorder(request, "a", log)
        request.setResponseCode(201)
        request.write(b"one")
        request.write(b"two")
        request.finish()
        self.assertEqual(
            log,
            [
                ("a", "head", 201),
                ("a", "body", b"one"),
                ("a", "body", b"two"),
                ("a", "end"),
            ],
        )
        self.assertTrue(_written(channel).startswith(b"HTTP/1.1 201 Created\r\n"))
        self.assertTrue(request.finished)

    def test_finishWithoutWrite(self) -> None:
        """
        A response finished without a write gets its head hook once, at
        finish, before the end hook (twisted.web's C{finish} then writes
        the head with an empty write, which comes through again).
        """
        request, channel = _request()
        log: list[object] = []
        Recorder(request, "a", log)
        request.setResponseCode(204)
        request.finish()
        self.assertEqual(log[:2], [("a", "head", 204), ("a", "end")])
        self.assertEqual(log[2:], [("a", "body", b"")])
        self.assertTrue(_written(channel).startswith(b"HTTP/1.1 204 No Content\r\n"))

    def test_chainOfTwo(self) -> None:
        """
        Interceptors chain: the last installed sees the response first, and
        what it passes on is what the one installed before it sees.
        """
        request, channel = _request()
        log: list[object] = []
        Recorder(request, "outer", log)
        Recorder(request, "inner", log, upper=True)
        request.write(b"abc")
        request.finish()
        self.assertEqual(
            log,
            [
                ("inner", "head", 200),
                ("inner", "body", b"abc"),
                ("outer", "head", 200),
                ("outer", "body", b"ABC"),
                ("inner", "end"),
                ("outer", "end"),
            ],
        )
        self.assertTrue(_written(channel).endswith(b"ABC\r\n0\r\n\r\n"))

    def test_detach(self) -> None:
        """
        An interceptor that detaches gives the request back the C{write}
        and C{finish} it had, and sees nothing more.
        """
        request, channel = _request()
        write, finish = request.write, request.finish
        log: list[object] = []
        recorder = Recorder(request, "a", log)
        request.write(b"one")
        self.assertTrue(recorder.detach())
        self.assertEqual((request.write, request.finish), (write, finish))
        request.write(b"two")
        request.finish()
        self.assertEqual(log, [("a", "head", 200), ("a", "body", b"one")])
        self.assertIn(b"two", _written(channel))
        self.assertTrue(request.finished)

    def test_detachUnderAnother(self) -> None:
        """
        An interceptor that detaches while one installed after it chains to
        it stays in the chain, passing everything through; the other one
        goes on seeing the response.
        """
        request, channel = _request()
        log: list[object] = []
        lower = Recorder(request, "lower", log, upper=True)
        Recorder(request, "upper", log)
        self.assertFalse(lower.detach())
        request.write(b"abc")
        request.finish()
        self.assertEqual(
            log, [("upper", "head", 200), ("upper", "body", b"abc"), ("upper", "end")]
        )
        self.assertTrue(_written(channel).endswith(b"abc\r\n0\r\n\r\n"))
        self.assertTrue(request.finished)

    def test_detachInHead(self) -> None:
        """
        A head hook may detach: the piece being written goes on unchanged,
        without the body hook.
        """
        log: list[object] = []

        class Once(Recorder):
            __slots__ = ()

            def head(self) -> None:
                Recorder.head(self)
                self.detach()

        request, channel = _request()
        Once(request, "a", log, upper=True)
        request.write(b"abc")
        request.finish()
        self.assertEqual(log, [("a", "head", 200)])
        self.assertTrue(_written(channel).endswith(b"abc\r\n0\r\n\r\n"))

    def test_headRequest(self) -> None:
        """
        The response to a HEAD request goes through the hooks as any other;
        the request writes its head and no body.
        """
        request, channel = _request(b"HEAD")
        log: list[object] = []
        Recorder(request, "a", log)
        request.responseHeaders.setRawHeaders(b"content-length", [b"3"])
        request.write(b"")
        request.finish()
        self.assertEqual(log, [("a", "head", 200), ("a", "body", b""), ("a", "end")])
        written = _written(channel)
        self.assertIn(b"Content-Length: 3\r\n", written)
        self.assertTrue(written.endswith(b"\r\n\r\n"))

    def test_slots(self) -> None:
        """
        An interceptor has no instance dictionary: its state is in slots.
        """
        request, _ = _request()
        self.assertFalse(hasattr(ResponseInterceptor(request), "__dict__"))


class FoldPassedHeadersTests(SynchronousTestCase):
    """
    Tests for L{foldPassedHeaders}.
    """

    def test_folds(self) -> None:
        """
        Passed headers are added to C{responseHeaders} (a passed C{Date}
        replacing the one there), and are passed no more.
        """
        request, _ = _request()
        request.responseHeaders.setRawHeaders(b"date", [b"old"])
        request.responseHeaders.setRawHeaders(b"x-a", [b"1"])
        request.passedHeaders = [(b"X-A", b"2"), (b"Date", b"new")]
        foldPassedHeaders(request)
        self.assertIsNone(request.passedHeaders)
        self.assertIsNone(request.defaultContentType)
        headers = request.responseHeaders
        self.assertEqual(headers.getRawHeaders(b"x-a"), [b"1", b"2"])
        self.assertEqual(headers.getRawHeaders(b"date"), [b"new"])

    def test_nothingPassed(self) -> None:
        """
        A request without passed headers is left as it is.
        """
        request, _ = _request()
        foldPassedHeaders(request)
        self.assertEqual(request.defaultContentType, b"text/html")


class FilteredResponseChainTests(SynchronousTestCase):
    """
    The filters' response side is an interceptor like the others.
    """

    def test_chainsToInstalled(self) -> None:
        """
        A L{_FilteredResponse} passes the response on to what was installed
        before it (a cache around a filter chain sees the filtered
        response), not to the request's own C{write}.
        """
        request, channel = _request()
        log: list[object] = []
        Recorder(request, "outside", log)

        def hook(request: Any, context: RequestContext, head: ResponseHead) -> None:
            head.code = 202

        context = RequestContext(request, Clock(), None, "", 0.0)
        _FilteredResponse(request, context, [("f", hook)])
        request.write(b"abc")
        request.finish()
        self.assertEqual(
            log,
            [("outside", "head", 202), ("outside", "body", b"abc"), ("outside", "end")],
        )
        self.assertTrue(_written(channel).startswith(b"HTTP/1.1 202 Accepted\r\n"))
