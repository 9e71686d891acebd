"""
Tests for a miss whose response is not to be stored: the cache is done
with it once its head is in (L{twisted_rproxy.cache.reports.CaptureReports.unstored}),
its body passes without interception; unless something waits for its end.
And the hit-for-miss mark of such keys (L{twisted_rproxy.cache.flight.Flights}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from twisted_rproxy.cache.capture import _Capture
from twisted_rproxy.cache.flight import UNCACHEABLE_TTL, Flights
from twisted_rproxy.cache.keys import CacheKeys
from twisted_rproxy.cache.resource import CacheResource
from twisted_rproxy.cache.store import MemoryStore
from twisted_rproxy.config import CacheConfig


class _Backend(Resource):
    """
    A leaf that answers with C{Cache-Control: cacheControl} and a body it
    writes when told (L{more}, L{end}), recording what it rendered.
    """

    isLeaf = True

    def __init__(self, cacheControl: bytes) -> None:
        super().__init__()
        self.cacheControl = cacheControl
        self.requests: list[Any] = []

    def render(self, request: Any) -> object:
        self.requests.append(request)
        request.responseHeaders.setRawHeaders(b"cache-control", [self.cacheControl])
        return NOT_DONE_YET


class _Request(DummyRequest):
    """
    A request to a cache: what L{DummyRequest} has, with a scheme and the
    status line of C{twisted.web}'s requests.
    """

    code = 200
    code_message = b"OK"

    def isSecure(self) -> bool:
        return False


def _request() -> Any:
    request = _Request([b"page"])
    request.uri = b"/page"
    request.requestHeaders.setRawHeaders(b"host", [b"example.test"])
    return request


class UnstoredTests(SynchronousTestCase):
    """
    A response not to be stored, with nothing waiting for it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(1 << 20)

    def cache(self, backend: _Backend, **options: Any) -> CacheResource:
        config = CacheConfig(name="main", **options)
        return CacheResource(backend, self.store, self.clock, config)

    def test_detachedAtHead(self) -> None:
        """
        Once the head of a C{no-store} response is written, the request has
        its own C{write} and C{finish} back, the key is marked uncacheable
        and the miss counted, before the body is complete; the body reaches
        the client whole; nothing is stored.
        """
        backend = _Backend(b"no-store")
        cache = self.cache(backend, coalesce=False)
        request = _request()
        ownWrite, ownFinish = request.write, request.finish
        cache.render(request)
        self.assertNotEqual(request.write, ownWrite)
        request.write(b"first ")
        self.assertEqual(request.write, ownWrite)
        self.assertEqual(request.finish, ownFinish)
        self.assertFalse(cache._flights.coalesces(cache.keyFor(request)))
        self.assertEqual(cache.stats[b"MISS"], 1)
        self.assertEqual(request.cacheStatus, "miss")
        request.write(b"second")
        request.finish()
        self.assertEqual(b"".join(request.written), b"first second")
        self.assertEqual(request.finished, 1)
        self.assertEqual(self.store.get(cache.keyFor(request)), [])

    def test_storableStaysUntilEnd(self) -> None:
        """
        A storable response is captured to its end, then stored.
        """
        backend = _Backend(b"max-age=60")
        cache = self.cache(backend)
        request = _request()
        ownWrite = request.write
        cache.render(request)
        request.write(b"body")
        self.assertNotEqual(request.write, ownWrite)
        request.finish()
        (entry,) = self.store.get(cache.keyFor(request))
        self.assertEqual(entry.body, b"body")
        self.assertTrue(cache._flights.coalesces(cache.keyFor(request)))

    def test_waitersKeepCaptureToEnd(self) -> None:
        """
        When another miss waits for it (coalesced), a response not to be
        stored is followed to its end: the waiter is released then, not at
        its head, and goes to the backend itself.
        """
        backend = _Backend(b"no-store")
        cache = self.cache(backend)
        first, second = _request(), _request()
        cache.render(first)
        cache.render(second)
        self.assertEqual(backend.requests, [first])
        first.write(b"body")
        self.assertEqual(backend.requests, [first])
        first.finish()
        self.assertEqual(backend.requests, [first, second])


class HitForMissTests(SynchronousTestCase):
    """
    Within a second of a response that could not be stored, the misses of
    its key are passed to the backend as it was, without their responses
    being captured; the first after that second is captured again.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(1 << 20)
        self.backend = _Backend(b"no-store")
        config = CacheConfig(name="main", statusHeader=True)
        self.cache = CacheResource(self.backend, self.store, self.clock, config)

    def _answer(self) -> Any:
        request = _request()
        self.cache.render(request)
        interceptor = getattr(request.write, "__self__", None)
        request.captured = isinstance(interceptor, _Capture)
        request.write(b"body")
        request.finish()
        return request

    def test_passedWithinASecond(self) -> None:
        """
        A miss within a second of an unstored response is not captured:
        what its backend answers is not stored even if it may be. The
        first miss a second later is captured, and stored.
        """
        first = self._answer()
        self.assertTrue(first.captured)
        self.backend.cacheControl = b"max-age=60"
        self.clock.advance(0.9)
        second = self._answer()
        self.assertFalse(second.captured)
        key = self.cache.keyFor(second)
        self.assertEqual(self.store.get(key), [])
        self.clock.advance(0.1)
        third = self._answer()
        self.assertTrue(third.captured)
        (entry,) = self.store.get(key)
        self.assertEqual(entry.body, b"body")
        self.assertTrue(self.cache._flights.coalesces(key))

    def test_sameHeaders(self) -> None:
        """
        A miss passed so has the C{X-Cache} and C{Cache-Status} of the one
        captured before it, and is counted as a miss.
        """
        first = self._answer()
        second = self._answer()
        self.assertTrue(first.captured)
        self.assertFalse(second.captured)
        for name in (b"x-cache", b"cache-status"):
            self.assertEqual(
                second.responseHeaders.getRawHeaders(name),
                first.responseHeaders.getRawHeaders(name),
            )
        self.assertEqual(second.responseHeaders.getRawHeaders(b"x-cache"), [b"MISS"])
        self.assertEqual(
            second.responseHeaders.getRawHeaders(b"cache-status"),
            [b"main; fwd=miss"],
        )
        self.assertEqual(self.cache.stats[b"MISS"], 2)
        self.assertEqual(second.cacheStatus, "miss")

    def test_markedAgain(self) -> None:
        """
        A captured miss a second on that is still not storable marks the
        key again: the misses of the next second are passed.
        """
        self._answer()
        self.clock.advance(1.5)
        self.assertTrue(self._answer().captured)
        self.clock.advance(0.5)
        self.assertFalse(self._answer().captured)


class KeyForTests(SynchronousTestCase):
    """
    L{CacheKeys.keyFor} with the fields a caller read already.
    """

    def test_sameKey(self) -> None:
        """
        The key made with the request's fields (as C{getAllRawHeaders}
        gives them) is the one made without.
        """
        keys = CacheKeys(["method", "scheme", "host", "path", "query", "header:x-v"])
        request = _request()
        request.uri = b"/page?q=1"
        request.requestHeaders.setRawHeaders(b"host", [b"Example.TEST"])
        request.requestHeaders.setRawHeaders(b"x-v", [b"2"])
        fields = dict(request.requestHeaders.getAllRawHeaders())
        self.assertEqual(keys.keyFor(request, fields), keys.keyFor(request))
        self.assertEqual(
            keys.keyFor(request), b"GET http://example.test/page?q=1\nx-v=2"
        )


class RemarkTests(SynchronousTestCase):
    """
    A key marked uncacheable again within a second keeps its mark.
    """

    def test_markKeptWithinASecond(self) -> None:
        """
        Marked again half a second later, a key coalesces again
        L{UNCACHEABLE_TTL} after its first mark.
        """
        clock = Clock()
        flights = Flights(clock)
        flights.uncacheable(b"k", False)
        clock.advance(0.5)
        flights.uncacheable(b"k", False)
        clock.advance(UNCACHEABLE_TTL - 0.5)
        self.assertTrue(flights.coalesces(b"k"))

    def test_markMovedLater(self) -> None:
        """
        Marked again two seconds later, the mark is renewed from then.
        """
        clock = Clock()
        flights = Flights(clock)
        flights.uncacheable(b"k", False)
        clock.advance(2)
        flights.uncacheable(b"k", False)
        clock.advance(UNCACHEABLE_TTL - 1)
        self.assertFalse(flights.coalesces(b"k"))
        clock.advance(1)
        self.assertTrue(flights.coalesces(b"k"))

    def test_storedEndsMark(self) -> None:
        """
        A stored response ends the mark at once.
        """
        flights = Flights(Clock())
        flights.uncacheable(b"k", False)
        flights.uncacheable(b"k", True)
        self.assertTrue(flights.coalesces(b"k"))
