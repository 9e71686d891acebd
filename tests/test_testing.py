"""
Tests for L{twisted_rproxy.testing}, the public test doubles.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_rproxy.filters import FilterOptionError
from twisted_rproxy.interfaces import IRequestFilter
from twisted_rproxy.testing import CannedResource, FilterHarness, buildFilter


@implementer(IRequestFilter)
class Waiting:
    """
    Holds every request until C{waiting} fires.
    """

    def __init__(self) -> None:
        self.waiting: Deferred[None] = Deferred()

    def filterRequest(self, request: object, context: object) -> Deferred[None]:
        return self.waiting


class HarnessTests(SynchronousTestCase):
    """
    L{FilterHarness} drives requests through the real server code and
    L{HarnessResponse} follows what arrives.
    """

    def test_cannedResponse(self) -> None:
        """
        Without filters, the canned response arrives whole: status, the
        backend's headers, the body, and the request as the resource saw it.
        """
        resource = CannedResource(
            201, [(b"X-A", b"1"), (b"Content-Length", b"5")], [b"he", b"llo"]
        )
        harness = FilterHarness([], resource)
        response = harness.request(b"POST", b"/p?q=1", [(b"Host", b"h")], b"data")
        self.assertEqual(response.code, 201)
        self.assertEqual(response.header(b"x-a"), [b"1"])
        self.assertEqual(response.body, b"hello")
        self.assertTrue(response.complete)
        self.assertFalse(response.closed)
        method, uri, headers, body = resource.requests[0]
        self.assertEqual((method, uri, body), (b"POST", b"/p?q=1", b"data"))
        self.assertEqual(headers.getRawHeaders(b"host"), [b"h"])

    def test_pacedBody(self) -> None:
        """
        With a clock and an interval, the body arrives piece by piece as the
        clock advances, and the response is complete only at the end.
        """
        harness = FilterHarness([])
        harness.resource = CannedResource(
            chunks=[b"a", b"b"], interval=2.0, clock=harness.reactor
        )
        harness.chain.resource = harness.resource
        response = harness.request()
        self.assertEqual((response.body, response.complete), (b"a", False))
        harness.reactor.advance(2)
        self.assertEqual((response.body, response.complete), (b"ab", False))
        harness.reactor.advance(2)
        self.assertEqual((response.body, response.complete), (b"ab", True))

    def test_pendingUntilFilterResumes(self) -> None:
        """
        A response held by a filter reads as empty and incomplete.
        """
        waiting = Waiting()
        harness = FilterHarness([("wait", waiting)])
        response = harness.request()
        self.assertEqual((response.code, response.complete), (0, False))
        waiting.waiting.callback(None)
        self.assertEqual((response.code, response.complete), (200, True))

    def test_datedResponses(self) -> None:
        """
        The harness's own clock does not stand at 1970.
        """
        response = FilterHarness([]).request()
        self.assertNotIn(b"1970", response.header(b"date")[0])


class BuildFilterTests(SynchronousTestCase):
    """
    L{buildFilter} finds plugins as the proxy does.
    """

    def test_builtIn(self) -> None:
        """
        The built-in C{headers} plugin builds a filter from options.
        """
        built = buildFilter("headers", {"request": {"remove": ["cookie"]}})
        self.assertTrue(IRequestFilter.providedBy(built))

    def test_unknown(self) -> None:
        """
        An unknown plugin is a L{LookupError}; bad options a
        L{FilterOptionError}.
        """
        self.assertRaises(LookupError, buildFilter, "no-such-plugin")
        self.assertRaises(FilterOptionError, buildFilter, "headers", {"x": 1})
