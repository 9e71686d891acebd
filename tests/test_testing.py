"""
Tests for L{twisted_rproxy.testing}, the public test doubles.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from zope.interface import implementer

from twisted_rproxy.filterenv import buildConfiguredFilter
from twisted_rproxy.filters import FilterChain, FilterOptionError, FilterResponse
from twisted_rproxy.interfaces import IRequestFilter
from twisted_rproxy.testing import (
    CannedResource,
    FilterHarness,
    StubHTTPClient,
    StubResponse,
    buildFilter,
)


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


@implementer(IRequestFilter)
class Recording:
    """
    Holds every request on C{waiting} and records how it ended.
    """

    def __init__(self) -> None:
        self.cancelled: list[Deferred[None]] = []
        self.waiting: Deferred[None] = Deferred(self.cancelled.append)
        self.finished: list[Failure] = []

    def filterRequest(self, request: Any, context: object) -> Deferred[None]:
        request.notifyFinish().addErrback(self.finished.append)
        return self.waiting


class DefaultsTests(SynchronousTestCase):
    """
    The documented defaults of the harness.
    """

    def test_defaults(self) -> None:
        """
        C{GET /} with C{Host: example.com}; the clock at 1_700_000_000; a
        C{requests} record of method, URI, headers and body.
        """
        resource = CannedResource()
        harness = FilterHarness([], resource)
        self.assertEqual(harness.reactor.seconds(), 1_700_000_000)
        response = harness.request()
        self.assertEqual((response.code, response.body), (200, b""))
        [(method, uri, headers, body)] = resource.requests
        self.assertEqual((method, uri, body), (b"GET", b"/", b""))
        self.assertIsInstance(headers, Headers)
        self.assertEqual(headers.getRawHeaders(b"host"), [b"example.com"])


class DisconnectTests(SynchronousTestCase):
    """
    L{HarnessResponse.disconnect} makes the client go away mid-request.
    """

    def test_cancelsWaitingHook(self) -> None:
        """
        The hook's waiting L{Deferred} is cancelled and the request's
        C{notifyFinish} fails; nothing is answered.
        """
        hook = Recording()
        harness = FilterHarness([("wait", hook)])
        response = harness.request()
        response.disconnect()
        self.assertEqual(hook.cancelled, [hook.waiting])
        self.assertEqual(len(hook.finished), 1)
        self.assertTrue(response.closed)
        self.assertEqual(response.raw, b"")
        # Twice is harmless.
        response.disconnect()

    def test_midBody(self) -> None:
        """
        Going away while the body streams stops it: the resource's timer
        writes nothing more.
        """
        harness = FilterHarness([])
        harness.resource = harness.chain.resource = CannedResource(
            chunks=[b"a", b"b"], interval=1.0, clock=harness.reactor
        )
        response = harness.request()
        self.assertEqual(response.body, b"a")
        response.disconnect()
        before = response.raw
        harness.reactor.advance(5)
        self.assertEqual(response.raw, before)
        self.assertFalse(harness.reactor.getDelayedCalls())


@implementer(IRequestFilter)
class Lookup:
    """
    Asks a service with the environment's HTTP client, in a coroutine.
    """

    def __init__(self, environment: Any) -> None:
        self.client = environment.httpClient()
        self.errors: list[Failure] = []

    async def filterRequest(self, request: Any, context: object) -> object:
        try:
            answer = await self.client.get("http://auth.test/check")
        except Exception:
            self.errors.append(Failure())
            raise
        if answer.code != 200:
            return FilterResponse(403)
        request.requestHeaders.setRawHeaders(b"x-user", [await answer.content()])
        return None


class LookupFactory:
    name = "lookup"

    def buildFilter(self, options: object, environment: Any) -> Lookup:
        return Lookup(environment)


class StubClientTests(SynchronousTestCase):
    """
    L{StubHTTPClient}, given through L{FilterHarness.environment}.
    """

    def build(self, client: StubHTTPClient) -> tuple[FilterHarness, Lookup]:
        harness = FilterHarness([])
        environment = harness.environment("lookup", httpClient=client)
        self.assertIs(environment.httpClient(), client)
        self.assertIs(environment.reactor, harness.reactor)
        built = buildConfiguredFilter(LookupFactory(), {}, environment)  # type: ignore[arg-type]
        assert isinstance(built, Lookup)
        harness.chain = FilterChain(
            harness.resource, [("lookup", built)], harness.reactor
        )
        harness.site.resource = harness.chain
        return harness, built

    def test_cannedAnswers(self) -> None:
        """
        A URL in C{responses} gets its response; the request is recorded.
        """
        client = StubHTTPClient(
            {"http://auth.test/check": StubResponse(200, body=b"ann")}
        )
        harness, _ = self.build(client)
        response = harness.request()
        self.assertEqual(response.code, 200)
        [(_, _, headers, _)] = harness.resource.requests  # type: ignore[attr-defined]
        self.assertEqual(headers.getRawHeaders(b"x-user"), [b"ann"])
        [(method, url, _, data)] = client.requests
        self.assertEqual((method, url, data), (b"GET", "http://auth.test/check", None))

    def test_default(self) -> None:
        """
        Other URLs get C{default}, a 404 unless given.
        """
        harness, _ = self.build(StubHTTPClient())
        self.assertEqual(harness.request().code, 403)

    def test_heldThenCancelled(self) -> None:
        """
        A held request waits for L{StubHTTPClient.release}; the client going
        away cancels it, which fails it as treq's: C{ResponseNeverReceived}
        wrapping C{CancelledError}.
        """
        client = StubHTTPClient(
            {"http://auth.test/check": StubResponse(200, body=b"bo")}, hold=True
        )
        harness, built = self.build(client)
        response = harness.request()
        self.assertEqual(len(client.waiting), 1)
        response.disconnect()
        self.assertEqual(client.waiting, [])
        [failure] = built.errors
        self.assertTrue(failure.check(ResponseNeverReceived))
        self.assertTrue(failure.value.reasons[0].check(CancelledError))
        again = harness.request()
        self.assertEqual(again.code, 0)
        client.release()
        self.assertEqual(again.code, 200)


class EnvironmentTests(SynchronousTestCase):
    """
    The harness's environment and L{buildFilter} with one.
    """

    def test_buildFilterWithEnvironment(self) -> None:
        """
        A factory that takes an environment is given the one passed.
        """
        harness = FilterHarness([])
        environment = harness.environment("api", workers=3)
        built = buildFilter("rate_limit", {"rate": 5}, environment)
        self.assertTrue(IRequestFilter.providedBy(built))
        self.assertEqual(len(environment.warnings), 1)
        self.assertIn("3 workers", environment.warnings[0])
