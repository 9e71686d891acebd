"""
Tests for the response head of a route with filters: written by the
proxy's own head writer (L{twisted_rproxy.server.ProxyRequest}) whether or
not a response hook changed it, the headers folded together only when a
hook looks at them (L{HeadHeaders}), and a filtered request freed by
reference counting.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer

from tests.test_garbage import cyclicGarbage
from twisted_rproxy.filterenv import FilterSet
from twisted_rproxy.filterresponse import HeadHeaders
from twisted_rproxy.filters import FilterChain, RequestContext, ResponseHead
from twisted_rproxy.interfaces import IBodyTransform, IRequestFilter, IResponseFilter
from twisted_rproxy.testing import CannedResource, FilterHarness

BACKEND_HEADERS = [
    (b"content-type", b"text/plain"),
    (b"Content-Length", b"5"),
    (b"x-backend", b"b1"),
    (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
]


@implementer(IRequestFilter, IResponseFilter)
class Hooks:
    """
    A filter whose hooks are given functions (by default, hooks that do
    nothing).
    """

    def __init__(self, onRequest: Any = None, onResponse: Any = None) -> None:
        self.onRequest = onRequest
        self.onResponse = onResponse
        self.seen: list[ResponseHead] = []

    def filterRequest(self, request: Any, context: RequestContext) -> object:
        if self.onRequest is not None:
            return self.onRequest(request, context)
        return None

    def filterResponse(
        self, request: Any, context: RequestContext, head: ResponseHead
    ) -> Any:
        self.seen.append(head)
        if self.onResponse is not None:
            return self.onResponse(request, context, head)
        return None


@implementer(IBodyTransform)
class Doubled:
    """
    Writes each piece of the body twice.
    """

    def transform(self, data: bytes) -> bytes:
        return data + data

    def flush(self) -> bytes:
        return b""


def canned(code: int = 200, headers: Any = None, chunks: Any = (b"hello",)) -> Any:
    return CannedResource(
        code, BACKEND_HEADERS if headers is None else headers, chunks=chunks
    )


def headOf(raw: bytes) -> list[bytes]:
    """
    The lines of a raw response's head, its status line first.
    """
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


class UntouchedHeadTests(SynchronousTestCase):
    """
    A response hook that does not look at the headers leaves the head as
    the proxy writes it without filters.
    """

    def test_sameBytesAsWithoutFilters(self) -> None:
        """
        The response through a no-op request and response hook is, byte
        for byte, the one of the same route without filters: the backend's
        headers as they were sent (names as spelled), nothing folded.
        """
        plain = FilterHarness([], canned()).request().raw
        hooks = Hooks()
        filtered = FilterHarness([("noop", hooks)], canned()).request().raw
        self.assertEqual(filtered, plain)
        self.assertIn(b"content-type: text/plain", headOf(filtered))
        self.assertIn(b"x-backend: b1", headOf(filtered))
        [head] = hooks.seen
        self.assertFalse(head.headers.folded)  # type: ignore[attr-defined]

    def test_codeOnly(self) -> None:
        """
        A hook that reads and changes only the status leaves the headers
        unfolded; the new status and its reason phrase are written.
        """

        def teapot(request: Any, context: Any, head: ResponseHead) -> None:
            if head.code == 200:
                head.code = 418

        hooks = Hooks(onResponse=teapot)
        response = FilterHarness([("t", hooks)], canned()).request()
        self.assertEqual(headOf(response.raw)[0], b"HTTP/1.1 418 I'm a teapot")
        self.assertEqual(response.body, b"hello")
        self.assertFalse(hooks.seen[0].headers.folded)  # type: ignore[attr-defined]

    def test_requestHookHeaderKept(self) -> None:
        """
        A response header a request hook set goes out beside the backend's,
        and a passed C{Date} replaces the request hook's, as when folded.
        """

        def stamp(request: Any, context: Any) -> None:
            request.responseHeaders.setRawHeaders(b"x-edge", [b"e1"])
            request.responseHeaders.setRawHeaders(b"date", [b"earlier"])

        response = FilterHarness([("s", Hooks(onRequest=stamp))], canned()).request()
        self.assertEqual(response.header(b"x-edge"), [b"e1"])
        self.assertEqual(response.header(b"date"), [BACKEND_HEADERS[3][1]])


class ChangedHeadTests(SynchronousTestCase):
    """
    A response hook that reads or changes the headers sees all of them,
    and its head is written by the proxy's head writer as twisted.web's
    would write it.
    """

    def test_hookSeesPassedHeaders(self) -> None:
        """
        The backend's headers are visible to a hook through C{head.headers}
        and through the request's C{responseHeaders}, which are the same.
        """
        seen: list[object] = []

        def look(request: Any, context: Any, head: ResponseHead) -> None:
            seen.append(head.headers.getRawHeaders(b"x-backend"))
            seen.append(request.responseHeaders is head.headers)

        FilterHarness([("l", Hooks(onResponse=look))], canned()).request()
        self.assertEqual(seen, [[b"b1"], True])

    def test_changedHeadWritten(self) -> None:
        """
        Headers a hook adds, replaces and removes are written so, by the
        proxy's own head writer (the request's C{passedHeaders} left
        empty, not L{None}), with one C{Content-Length} and one C{Date}.
        """
        requests: list[Any] = []

        def change(request: Any, context: Any, head: ResponseHead) -> None:
            requests.append(request)
            head.headers.addRawHeader(b"x-added", b"1")
            head.headers.setRawHeaders(b"x-backend", [b"replaced"])
            head.headers.removeHeader(b"content-type")

        response = FilterHarness([("c", Hooks(onResponse=change))], canned()).request()
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header(b"x-added"), [b"1"])
        self.assertEqual(response.header(b"x-backend"), [b"replaced"])
        self.assertEqual(response.header(b"content-type"), [])
        self.assertEqual(response.header(b"content-length"), [b"5"])
        self.assertEqual(len(response.header(b"date")), 1)
        self.assertEqual(response.body, b"hello")
        self.assertEqual(requests[0].passedHeaders, [])

    def test_replacedHeaders(self) -> None:
        """
        A hook that puts a new L{Headers} in C{head.headers} has only those
        written (and the proxy's C{Date}), none of the backend's.
        """

        def replace(request: Any, context: Any, head: ResponseHead) -> None:
            head.headers = Headers({b"content-length": [b"5"], b"x-only": [b"y"]})

        response = FilterHarness([("r", Hooks(onResponse=replace))], canned()).request()
        self.assertEqual(response.header(b"x-only"), [b"y"])
        self.assertEqual(response.header(b"x-backend"), [])
        self.assertEqual(response.header(b"content-type"), [])
        self.assertEqual(len(response.header(b"date")), 1)
        self.assertEqual(response.body, b"hello")

    def test_transformedBodyChunked(self) -> None:
        """
        A body transform drops the untransformed length: the response is
        chunked, with a single C{Transfer-Encoding}, even when the hook set
        one itself.
        """

        def double(request: Any, context: Any, head: ResponseHead) -> Doubled:
            head.headers.setRawHeaders(b"transfer-encoding", [b"chunked"])
            return Doubled()

        response = FilterHarness([("d", Hooks(onResponse=double))], canned()).request()
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b"hellohello")
        self.assertEqual(response.header(b"content-length"), [])
        self.assertEqual(
            [line for line in headOf(response.raw) if b"ransfer-" in line],
            [b"Transfer-Encoding: chunked"],
        )

    def test_transformedHead(self) -> None:
        """
        A HEAD through a transforming hook says its GET would be chunked,
        and has no body.
        """
        hooks = Hooks(onResponse=lambda request, context, head: Doubled())
        response = FilterHarness([("d", hooks)], canned()).request(method=b"HEAD")
        self.assertEqual(response.header(b"transfer-encoding"), [b"chunked"])
        self.assertEqual(response.header(b"content-length"), [])
        self.assertTrue(response.raw.endswith(b"\r\n\r\n"))

    def test_noLengthChunked(self) -> None:
        """
        A response without a length, its headers folded, is sent chunked
        to an HTTP/1.1 client.
        """

        def look(request: Any, context: Any, head: ResponseHead) -> None:
            head.headers.hasHeader(b"x-anything")

        hooks = Hooks(onResponse=look)
        resource = canned(headers=[(b"content-type", b"text/plain")])
        response = FilterHarness([("h", hooks)], resource).request()
        self.assertEqual(response.header(b"transfer-encoding"), [b"chunked"])
        self.assertEqual(response.body, b"hello")

    def test_cookieAndETagWritten(self) -> None:
        """
        What a hook sets through twisted.web's request API (a cookie, an
        entity tag) is written: such a head goes through twisted.web's own
        writer.
        """

        def cookie(request: Any, context: Any, head: ResponseHead) -> None:
            request.addCookie(b"session", b"s1")
            request.setETag(b'"v2"')

        response = FilterHarness([("k", Hooks(onResponse=cookie))], canned()).request()
        self.assertEqual(response.header(b"set-cookie"), [b"session=s1"])
        self.assertEqual(response.header(b"etag"), [b'"v2"'])
        self.assertEqual(response.header(b"x-backend"), [b"b1"])
        self.assertEqual(response.body, b"hello")

    def test_failedHookAfterLookingAnswers500(self) -> None:
        """
        A hook that fails once the headers were folded answers the proxy's
        500 page, with none of the backend's headers.
        """

        def fail(request: Any, context: Any, head: ResponseHead) -> None:
            head.headers.getRawHeaders(b"x-backend")
            raise ValueError("boom")

        response = FilterHarness([("f", Hooks(onResponse=fail))], canned()).request()
        self.assertEqual(response.code, 500)
        self.assertEqual(response.header(b"x-backend"), [])
        self.assertEqual(response.header(b"cache-control"), [b"no-store"])
        self.flushLoggedErrors(ValueError)


class HeadHeadersTests(SynchronousTestCase):
    """
    L{HeadHeaders} are the request's headers and the passed ones together,
    as soon as anything looks.
    """

    def make(self) -> tuple[Headers, HeadHeaders]:
        own = Headers({b"x-own": [b"o"], b"date": [b"old"]})
        return own, HeadHeaders(own, [(b"x-passed", b"p"), (b"Date", b"new")])

    def test_everyPublicMethodFolds(self) -> None:
        """
        Every public method of L{Headers} (of the installed Twisted) is one
        that L{HeadHeaders} folds in: a new one fails here, not silently.
        """
        public = {name for name in vars(Headers) if not name.startswith("_")}
        public |= {"__repr__", "__cmp__", "__eq__", "__ne__"}
        missing = {name for name in public if name not in vars(HeadHeaders)}
        self.assertEqual(missing, set())

    def test_folded(self) -> None:
        """
        Folded, they hold the request's headers and the passed ones; a
        passed C{Date} replaces the request's; the request's own
        L{Headers} is left as it was.
        """
        own, headers = self.make()
        self.assertFalse(headers.folded)
        self.assertEqual(headers.getRawHeaders(b"x-passed"), [b"p"])
        self.assertTrue(headers.folded)
        self.assertEqual(
            dict(headers.getAllRawHeaders()),
            {b"X-Own": [b"o"], b"Date": [b"new"], b"X-Passed": [b"p"]},
        )
        self.assertEqual(own.getRawHeaders(b"date"), [b"old"])
        self.assertFalse(own.hasHeader(b"x-passed"))

    def test_eachMethodFolds(self) -> None:
        """
        Each method sees the passed headers on a fresh instance.
        """
        checks = [
            lambda h: self.assertTrue(h.hasHeader(b"x-passed")),
            lambda h: self.assertEqual(h.getRawHeaders("x-passed"), ["p"]),
            lambda h: self.assertIn(b"X-Passed", dict(h.getAllRawHeaders())),
            lambda h: self.assertIn(b"X-Passed", dict(h.copy().getAllRawHeaders())),
            lambda h: self.assertIn("X-Passed", repr(h)),
        ]
        for check in checks:
            check(self.make()[1])

    def test_changes(self) -> None:
        """
        Changes apply to the folded headers.
        """
        for change, expected in [
            (lambda h: h.removeHeader(b"x-passed"), None),
            (lambda h: h.setRawHeaders(b"x-passed", [b"q"]), [b"q"]),
            (lambda h: h.addRawHeader(b"x-passed", b"q"), [b"p", b"q"]),
        ]:
            headers = self.make()[1]
            change(headers)
            self.assertTrue(headers.folded)
            self.assertEqual(headers.getRawHeaders(b"x-passed"), expected)

    def test_copyIsPlain(self) -> None:
        """
        A copy is a plain L{Headers}, independent of the original.
        """
        headers = self.make()[1]
        copied = headers.copy()
        self.assertIs(type(copied), Headers)
        copied.addRawHeader(b"x-more", b"m")
        self.assertFalse(headers.hasHeader(b"x-more"))

    def test_equality(self) -> None:
        """
        They compare equal to a plain L{Headers} with the same headers,
        whichever side either is on, before they are folded.
        """
        plain = Headers({b"x-own": [b"o"], b"date": [b"new"], b"x-passed": [b"p"]})
        self.assertTrue(self.make()[1] == plain)
        self.assertTrue(plain == self.make()[1])
        self.assertFalse(plain != self.make()[1])
        self.assertTrue(self.make()[1] == self.make()[1])
        self.assertNotEqual(self.make()[1], Headers())
        self.assertEqual(len({self.make()[1], self.make()[1]}), 2)


class FilteredRequestFreedTests(SynchronousTestCase):
    """
    A request through filters leaves nothing to the cyclic garbage
    collector.
    """

    def test_noCycles(self) -> None:
        """
        After requests through request and response hooks (one changing
        the head, with a body transform), no request, interceptor or
        context is left in a reference cycle.
        """

        def change(request: Any, context: Any, head: ResponseHead) -> Doubled:
            head.headers.addRawHeader(b"x-seen", b"1")
            return Doubled()

        harness = FilterHarness(
            [("noop", Hooks()), ("change", Hooks(onResponse=change))], canned()
        )
        harness.request()
        with cyclicGarbage() as found:
            for _ in range(20):
                response = harness.request()
                self.assertEqual(response.body, b"hellohello")
                response.disconnect()
        # (A closed connection's channel and transport may be a cycle: one
        # per connection, not per request.)
        perRequest = {
            "ProxyRequest",
            "Headers",
            "HeadHeaders",
            "FilteredResponse",
            "RequestContext",
            "ResponseHead",
            "Doubled",
        }
        left = {
            name: count
            for name, count in found.items()
            if name.rsplit(".", 1)[-1] in perRequest
        }
        self.assertEqual(left, {})


class FilterSetTrackingTests(SynchronousTestCase):
    """
    L{FilterSet} holds the requests through its filters weakly, in memory
    bounded by those in flight.
    """

    def test_boundedAndInFlight(self) -> None:
        """
        Of many requests tracked, the set keeps only about twice those not
        finished, and L{FilterSet.inFlight} names exactly those.
        """

        class Tracked:
            finished = False

        filterSet = FilterSet(MemoryReactorClock())
        pending = [Tracked() for _ in range(10)]
        for request in pending:
            filterSet.track(request)
        done = []
        for _ in range(1000):
            request = Tracked()
            request.finished = True
            done.append(request)
            filterSet.track(request)
        self.assertLessEqual(len(filterSet._inFlight), 2 * 64)
        self.assertEqual(
            sorted(map(id, filterSet.inFlight())), sorted(map(id, pending))
        )
        del pending[5:]
        self.assertEqual(len(filterSet.inFlight()), 5)

    def test_chainTracks(self) -> None:
        """
        A chain built with a set reports a request that waits in a hook,
        and not once it is answered.
        """
        from twisted.internet.defer import Deferred

        waiting: Deferred[object] = Deferred()
        harness = FilterHarness([("w", Hooks(onRequest=lambda r, c: waiting))])
        filterSet = FilterSet(harness.reactor)
        harness.chain = FilterChain(
            harness.resource, harness.chain.filters, harness.reactor, None, filterSet
        )
        harness.site.resource = harness.chain
        response = harness.request()
        self.assertEqual(len(filterSet.inFlight()), 1)
        waiting.callback(None)
        self.assertTrue(response.complete)
        self.assertEqual(filterSet.inFlight(), [])
