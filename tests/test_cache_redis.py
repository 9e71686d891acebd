"""
Tests for the shared cache store (C{store = "redis"}): the pure parts
(how long an entry is kept, the encoding of a stored head, lexicographic
ranges, the configuration keys, the wait for another proxy's entry) and
the cache's handling of a store that answers later, on memory reactors.
The loopback tests with two real proxies on one real C{redis-server} are
in L{tests.test_cache_redis_loopback}.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_cache_resource import CachingProxy, _get, _only, _response
from twisted_rproxy.cache import (
    CacheResource,
    MemoryStore,
    RedisStore,
    buildStores,
)
from twisted_rproxy.cache.flight import awaitShared
from twisted_rproxy.cache.policy import FreshnessLimits, parseCacheControl, usefulFor
from twisted_rproxy.cache.redisformat import decodeEntry, encodeHead, lexRange
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    ConfigError,
    StateConfig,
    parseConfig,
)
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.state import SharedState, StateUnavailable

_LIMITS = FreshnessLimits()


def _cc(value: bytes) -> Any:
    return parseCacheControl([value])


class UsefulForTests(SynchronousTestCase):
    """
    L{usefulFor}: how long a store that expires entries keeps one.
    """

    def test_freshOnly(self) -> None:
        """
        Without stale allowances or validators: what is left of its
        freshness.
        """
        self.assertEqual(usefulFor(10, 60, _cc(b"max-age=60"), [], _LIMITS, 3600), 50)

    def test_staleAllowances(self) -> None:
        """
        The larger of C{stale-while-revalidate} and C{stale-if-error} is
        added; the configured defaults stand in for directives not given.
        """
        cc = _cc(b"max-age=60, stale-while-revalidate=30, stale-if-error=120")
        self.assertEqual(usefulFor(0, 60, cc, [], _LIMITS, 3600), 180)
        limits = FreshnessLimits(staleWhileRevalidate=15, staleIfError=5)
        self.assertEqual(usefulFor(0, 60, _cc(b"max-age=60"), [], limits, 3600), 75)
        # A directive wins over the default, even a smaller one.
        cc = _cc(b"max-age=60, stale-while-revalidate=1")
        self.assertEqual(usefulFor(0, 60, cc, [], limits, 3600), 65)

    def test_mustRevalidate(self) -> None:
        """
        A response that must not be served stale gets no stale allowance.
        """
        for value in (b"must-revalidate", b"proxy-revalidate", b"s-maxage=60"):
            cc = _cc(b"max-age=60, stale-if-error=600, " + value)
            self.assertEqual(usefulFor(0, 60, cc, [], _LIMITS, 3600), 60, value)

    def test_validatorRetention(self) -> None:
        """
        With an C{ETag} or C{Last-Modified}, the retention is added, even
        to a response already stale.
        """
        headers = [(b"ETag", b'"x"')]
        self.assertEqual(
            usefulFor(0, 60, _cc(b"max-age=60"), headers, _LIMITS, 3600), 3660
        )
        headers = [(b"Last-Modified", b"Mon, 01 Jan 2024 00:00:00 GMT")]
        self.assertEqual(
            usefulFor(500, 60, _cc(b"max-age=60"), headers, _LIMITS, 100), 100
        )

    def test_useless(self) -> None:
        """
        A stale response with nothing to revalidate it is of no use.
        """
        self.assertEqual(usefulFor(90, 60, _cc(b"max-age=60"), [], _LIMITS, 3600), 0)


def _entry(**kwargs: Any) -> CacheEntry:
    values: dict[str, Any] = {
        "key": b"GET http://example.test/a",
        "variant": b"",
        "varyOn": (),
        "status": 200,
        "reason": b"OK",
        "headers": [(b"Cache-Control", b"max-age=60"), (b"Content-Length", b"5")],
        "body": b"hello",
        "responseTime": 1000.5,
        "initialAge": 2.25,
        "lifetime": 60.0,
    }
    values.update(kwargs)
    return CacheEntry(**values)


class FormatTests(SynchronousTestCase):
    """
    The encoding of stored heads and the ranges of a purge by prefix.
    """

    @given(
        headers=st.lists(
            st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=40)),
            max_size=8,
        ),
        reason=st.binary(max_size=20),
        variant=st.binary(max_size=30),
    )
    def test_roundTrip(
        self, headers: list[tuple[bytes, bytes]], reason: bytes, variant: bytes
    ) -> None:
        """
        Every byte of names, values and the reason phrase survives.
        """
        entry = _entry(
            headers=headers + [(b"Cache-Control", b"max-age=7")],
            reason=reason,
            variant=variant,
            varyOn=(b"accept-language",),
        )
        back = decodeEntry(entry.key, variant, encodeHead(entry), entry.body)
        for name in (
            "key",
            "variant",
            "varyOn",
            "status",
            "reason",
            "headers",
            "body",
            "responseTime",
            "initialAge",
            "lifetime",
        ):
            self.assertEqual(getattr(back, name), getattr(entry, name), name)
        self.assertEqual(back.cacheControl.seconds(b"max-age"), 7)

    def test_malformed(self) -> None:
        """
        A head that is not one (another format, broken JSON, missing
        fields) is a L{ValueError}.
        """
        good = json.loads(encodeHead(_entry()))
        for head in (
            b"not json",
            json.dumps({**good, "f": 99}).encode(),
            json.dumps({"f": 1}).encode(),
            json.dumps([1]).encode(),
        ):
            self.assertRaises(ValueError, decodeEntry, b"k", b"", head, b"")

    def test_lexRange(self) -> None:
        """
        The range of a prefix holds exactly the members that start with it.
        """
        self.assertEqual(lexRange(b""), (b"-", b"+"))
        self.assertEqual(lexRange(b"GET /a"), (b"[GET /a", b"(GET /b"))
        self.assertEqual(lexRange(b"a\xff"), (b"[a\xff", b"(b"))
        self.assertEqual(lexRange(b"\xff\xff"), (b"[\xff\xff", b"+"))


class ConfigTests(SynchronousTestCase):
    """
    C{local_size} and C{local_ttl} of C{[caches.NAME]}.
    """

    def parse(self, cache: dict[str, Any]) -> Config:
        data: dict[str, Any] = {
            "server": {"listen": ["tcp:0:interface=127.0.0.1"]},
            "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
            "routes": [{"pool": "app", "cache": "main"}],
            "caches": {"main": cache},
            "state": {"redis": "redis://127.0.0.1:6379/0"},
        }
        return parseConfig(data, "f.toml", ".")

    def test_keys(self) -> None:
        """
        Sizes and durations as elsewhere; none by default.
        """
        config = self.parse({"store": "redis", "local_size": "8MiB", "local_ttl": "2s"})
        cache = config.caches["main"]
        self.assertEqual((cache.localSize, cache.localTTL), (8 << 20, 2.0))
        cache = self.parse({"store": "redis"}).caches["main"]
        self.assertEqual((cache.localSize, cache.localTTL), (0, 1.0))

    def test_errors(self) -> None:
        """
        A local layer of a memory store, or a bad value, names the key.
        """
        for cache, key in (
            ({"local_size": "1MiB"}, "caches.main.local_size"),
            ({"store": "redis", "local_size": "lots"}, "caches.main.local_size"),
            ({"store": "redis", "local_ttl": "0s"}, "caches.main.local_ttl"),
        ):
            with self.assertRaises(ConfigError) as caught:
                self.parse(cache)
            self.assertIn(key, str(caught.exception))
            self.assertIn("f.toml", str(caught.exception))


class BuildStoresTests(SynchronousTestCase):
    """
    L{buildStores} picks each cache's store.
    """

    def test_redis(self) -> None:
        """
        C{store = "redis"} makes a L{RedisStore}, kept by a reload with the
        same settings and client, replaced otherwise; a memory cache gets a
        L{MemoryStore} again; without a client it is an error.
        """
        state = SharedState(Clock(), StateConfig.fromURL("redis://127.0.0.1/0"))
        caches = {
            "r": CacheConfig(name="r", store="redis", localSize=1000),
            "m": CacheConfig(name="m"),
        }
        stores = buildStores(caches, sharedState=state)
        redis = stores["r"]
        assert isinstance(redis, RedisStore)
        self.assertIsInstance(stores["m"], MemoryStore)
        self.assertEqual(redis.local.maxSize if redis.local is not None else 0, 1000)
        self.assertIs(buildStores(caches, stores, sharedState=state)["r"], redis)
        changed = {**caches, "r": CacheConfig(name="r", store="redis")}
        self.assertIsNot(buildStores(changed, stores, sharedState=state)["r"], redis)
        back = buildStores({"r": CacheConfig(name="r")}, stores, sharedState=state)
        self.assertIsInstance(back["r"], MemoryStore)
        self.assertRaises(ValueError, buildStores, caches)


class _LaterStore(MemoryStore):
    """
    A memory store that answers every operation with a L{Deferred}, fired
    (or failed) by the test.
    """

    def __init__(self) -> None:
        super().__init__(1 << 20)
        self.pending: list[tuple[Deferred[Any], Any]] = []

    def _later(self, result: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((d, result))
        return d

    def get(self, key: bytes) -> Any:
        return self._later(super().get(key))

    def put(self, entry: CacheEntry) -> Any:
        return self._later(super().put(entry))

    def remove(self, key: bytes) -> Any:
        return self._later(super().remove(key))

    def purge(self, prefix: bytes) -> Any:
        return self._later(super().purge(prefix))

    def fireAll(self) -> None:
        while self.pending:
            d, result = self.pending.pop(0)
            d.callback(result)

    def failAll(self) -> None:
        while self.pending:
            d, _ = self.pending.pop(0)
            d.errback(StateUnavailable("down"))


def _cacheOf(proxy: CachingProxy) -> CacheResource:
    resource = proxy.service.router.routes[0].resource
    assert isinstance(resource, CacheResource)
    return resource


class LaterStoreTests(SynchronousTestCase):
    """
    The cache in front of a store that answers with Deferreds.
    """

    def setUp(self) -> None:
        self.proxy = CachingProxy(purgeFrom=("192.0.2.0/24",))
        self.store = _LaterStore()
        _cacheOf(self.proxy).store = self.store

    def store_(self) -> None:
        """
        Fetch C{/a} once (a miss) and let the store answer everything.
        """
        _, client = self.proxy.exchange(_get())
        self.store.fireAll()
        self.proxy.backendSince((0, [])).dataReceived(_response())
        self.store.fireAll()
        self.assertEqual(_only(client).header(b"x-cache"), [b"MISS"])

    def test_memoryHitAtOnce(self) -> None:
        """
        With the memory store a hit is written before the request's
        C{dataReceived} returns: no Deferred, no reactor turn.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        store = _cacheOf(proxy).store
        answers: list[object] = []
        get = store.get

        def spy(key: bytes) -> Any:
            answer = get(key)
            answers.append(answer)
            return answer

        self.patch(store, "get", spy)
        _, client = proxy.exchange(_get())
        self.assertEqual(_only(client).header(b"x-cache"), [b"HIT"])
        self.assertEqual([type(answer) for answer in answers], [list])

    def test_hitWaits(self) -> None:
        """
        A hit is answered once the store's lookup fires, not before.
        """
        self.store_()
        _, client = self.proxy.exchange(_get())
        self.assertEqual(client.value(), b"")
        self.store.fireAll()
        response = _only(client)
        self.assertEqual(
            (response.body, response.header(b"x-cache")), (_BODY, [b"HIT"])
        )

    def test_clientGone(self) -> None:
        """
        A client that went while the lookup was pending is dropped: nothing
        is written, nothing sent to the backend.
        """
        self.store_()
        before = self.proxy.snapshot()
        protocol, client = self.proxy.exchange(_get(b"/other"))
        protocol.connectionLost(Exception("gone"))
        self.store.fireAll()
        self.assertEqual(client.value(), b"")
        self.assertEqual(self.proxy.snapshot(), before)

    def test_failedLookupIsMiss(self) -> None:
        """
        A lookup that fails is a miss served by the backend, not an error.
        """
        _, client = self.proxy.exchange(_get())
        self.store.failAll()
        self.proxy.backendSince((0, [])).dataReceived(_response(b"from backend"))
        self.store.failAll()
        response = _only(client)
        self.assertEqual((response.status, response.body), (200, b"from backend"))

    def test_purgeWaitsForCount(self) -> None:
        """
        A PURGE is answered with the count once the store has it; 503 if
        the store fails.
        """
        self.store_()
        _, client = self.proxy.exchange(
            b"PURGE /a HTTP/1.1\r\nHost: example.test\r\n\r\n"
        )
        self.assertEqual(client.value(), b"")
        self.store.fireAll()
        self.assertEqual(json.loads(_only(client).body), {"purged": 1})
        _, client = self.proxy.exchange(
            b"PURGE /a HTTP/1.1\r\nHost: example.test\r\n\r\n"
        )
        self.store.failAll()
        response = _only(client)
        self.assertEqual(response.status, 503)
        self.assertIsNone(json.loads(response.body)["purged"])


_BODY = b"0123456789"


class _Flights:
    """
    A L{twisted_rproxy.cache.flight.SharedFlights} answering from lists.
    """

    def __init__(self, answers: list[tuple[bool, list[CacheEntry]]]) -> None:
        self.answers = answers
        self.looks = 0

    def claimFetch(self, key: bytes, ttl: float) -> Deferred[bytes | None]:
        raise AssertionError("only the wait is under test: nothing claims")

    def releaseFetch(self, key: bytes, token: bytes) -> None:
        raise AssertionError("only the wait is under test: nothing releases")

    def awaitEntry(self, key: bytes) -> Deferred[tuple[bool, list[CacheEntry]]]:
        self.looks += 1
        d: Deferred[tuple[bool, list[CacheEntry]]] = Deferred()
        if self.answers:
            d.callback(self.answers.pop(0))
        else:
            d.errback(StateUnavailable("down"))
        return d


class AwaitSharedTests(SynchronousTestCase):
    """
    L{awaitShared} looks for another proxy's entry until it comes, the
    lock goes or the wait ends.
    """

    def run_(
        self, answers: list[tuple[bool, list[CacheEntry]]], timeout: float = 5.0
    ) -> tuple[Clock, _Flights, list[str], list[list[CacheEntry]]]:
        clock = Clock()
        flights = _Flights(answers)
        outcome: list[str] = []
        seen: list[list[CacheEntry]] = []

        def found(entries: list[CacheEntry]) -> bool:
            seen.append(entries)
            if entries:
                outcome.append("found")
                return True
            return False

        awaitShared(
            clock, flights, b"k", timeout, found, lambda: outcome.append("gave up")
        )
        for _ in range(200):
            clock.advance(0.05)
        return clock, flights, outcome, seen

    def test_found(self) -> None:
        """
        The entry that appears while the lock is held is taken.
        """
        entry = _entry()
        _, flights, outcome, _ = self.run_([(True, []), (True, []), (True, [entry])])
        self.assertEqual((outcome, flights.looks), (["found"], 3))

    def test_lockReleased(self) -> None:
        """
        A lock released without an entry ends the wait at once.
        """
        _, flights, outcome, _ = self.run_([(True, []), (False, [])])
        self.assertEqual((outcome, flights.looks), (["gave up"], 2))

    def test_deadline(self) -> None:
        """
        A lock held past the wait ends it, after a bounded number of looks
        (the interval grows).
        """
        clock, flights, outcome, _ = self.run_([(True, [])] * 100, timeout=1.0)
        self.assertEqual(outcome, ["gave up"])
        self.assertLess(flights.looks, 15)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_unreachable(self) -> None:
        """
        A store that cannot be reached ends the wait.
        """
        _, _, outcome, _ = self.run_([])
        self.assertEqual(outcome, ["gave up"])
