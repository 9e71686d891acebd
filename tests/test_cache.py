"""
Tests for L{twisted_rproxy.cache}: the RFC 9111 policy as pure functions
(each test names the section it checks), the memory store's bound
(hypothesis), and the cache configuration.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.cache.policy import (
    Decision,
    FreshnessLimits,
    correctedInitialAge,
    currentAge,
    decide,
    freshnessLifetime,
    invalidationTargets,
    isStorable,
    notModified,
    parseCacheControl,
    secondaryKey,
    staleIfErrorAllowed,
    storedHeaders,
    updateStoredHeaders,
    validatorMatches,
    varyNames,
)
from twisted_rproxy.cache.store import CacheEntry, MemoryStore
from twisted_rproxy.config import ConfigError, parseConfig

LIMITS = FreshnessLimits()
NONE = parseCacheControl([])


def cc(value: bytes) -> object:
    return parseCacheControl([value])


def storable(
    status: int = 200,
    response: bytes = b"",
    request: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    method: bytes = b"GET",
    authorized: bool = False,
) -> bool:
    return isStorable(
        method,
        status,
        parseCacheControl([request] if request else []),
        parseCacheControl([response] if response else []),
        headers or [],
        authorized,
    )


class CacheControlTests(SynchronousTestCase):
    """
    Parsing of C{Cache-Control} (RFC 9111 section 5.2).
    """

    def test_directives(self) -> None:
        """
        RFC 9111 section 5.2: names are case-insensitive, arguments tokens
        or quoted strings whose commas do not split.
        """
        parsed = parseCacheControl([b'Max-Age=60, no-cache="Set-Cookie, X", public'])
        self.assertEqual(parsed.seconds(b"max-age"), 60)
        self.assertEqual(parsed.fieldNames(b"no-cache"), {b"set-cookie", b"x"})
        self.assertTrue(parsed.has(b"public"))

    def test_invalidSeconds(self) -> None:
        """
        RFC 9111 section 1.2.2: a delta-seconds that is not a non-negative
        integer is invalid.
        """
        self.assertIsNone(parseCacheControl([b"max-age=-1"]).seconds(b"max-age"))
        self.assertIsNone(parseCacheControl([b"max-age=abc"]).seconds(b"max-age"))


class StorabilityTests(SynchronousTestCase):
    """
    RFC 9111 section 3: what a shared cache may store.
    """

    def test_cacheableByDefault(self) -> None:
        """
        RFC 9111 section 3 and RFC 9110 section 15.1: a 200 or a 404 is
        storable without freshness information; a 302 or 500 is not.
        """
        self.assertTrue(storable(200))
        self.assertTrue(storable(404))
        self.assertFalse(storable(302))
        self.assertFalse(storable(500))

    def test_explicitFreshnessMakesStorable(self) -> None:
        """
        RFC 9111 section 3: a status not cacheable by default is storable
        with max-age, s-maxage, Expires or public.
        """
        self.assertTrue(storable(302, b"max-age=10"))
        self.assertTrue(storable(302, b"s-maxage=10"))
        self.assertTrue(storable(302, b"public"))
        self.assertTrue(
            storable(302, headers=[(b"Expires", b"Thu, 01 Jan 2037 00:00:00 GMT")])
        )

    def test_methods(self) -> None:
        """
        RFC 9111 section 3: only responses to cacheable methods (GET here)
        are stored.
        """
        self.assertFalse(storable(method=b"POST", response=b"max-age=60"))

    def test_noStore(self) -> None:
        """
        RFC 9111 sections 5.2.1.5 and 5.2.2.5: no-store in the request or
        the response.
        """
        self.assertFalse(storable(response=b"no-store"))
        self.assertFalse(storable(request=b"no-store"))

    def test_private(self) -> None:
        """
        RFC 9111 section 5.2.2.7: a shared cache does not store "private";
        the qualified form only drops the named fields.
        """
        self.assertFalse(storable(response=b"private, max-age=60"))
        self.assertTrue(storable(response=b'private="Set-Cookie", max-age=60'))
        kept = storedHeaders(
            [(b"Set-Cookie", b"a=b"), (b"ETag", b'"x"')],
            parseCacheControl([b'private="Set-Cookie"']),
        )
        self.assertEqual(kept, [(b"ETag", b'"x"')])

    def test_authorization(self) -> None:
        """
        RFC 9111 section 3.5: a response to a request with Authorization is
        stored only with must-revalidate, public or s-maxage.
        """
        self.assertFalse(storable(response=b"max-age=60", authorized=True))
        self.assertTrue(storable(response=b"public", authorized=True))
        self.assertTrue(storable(response=b"s-maxage=5", authorized=True))
        self.assertTrue(storable(response=b"must-revalidate", authorized=True))

    def test_varyStar(self) -> None:
        """
        RFC 9111 section 4.1: "Vary: *" never matches, so is not stored.
        """
        self.assertFalse(storable(response=b"max-age=60", headers=[(b"Vary", b"*")]))

    def test_partialAndNotModified(self) -> None:
        """
        RFC 9111 section 3.3: 206 (and 304) are not stored as entries of
        their own by this cache.
        """
        self.assertFalse(storable(206, b"max-age=60"))
        self.assertFalse(storable(304, b"max-age=60"))

    def test_hopByHopNotStored(self) -> None:
        """
        RFC 9111 section 3.1: connection headers and Age are not stored.
        """
        kept = storedHeaders(
            [(b"Connection", b"x"), (b"Age", b"5"), (b"ETag", b'"x"')], NONE
        )
        self.assertEqual(kept, [(b"ETag", b'"x"')])


DATE = b"Thu, 01 Jan 2026 00:00:00 GMT"
DATE_T = 1767225600


class FreshnessTests(SynchronousTestCase):
    """
    RFC 9111 section 4.2: freshness lifetime, heuristics and age.
    """

    def lifetime(
        self, response: bytes = b"", headers: list[tuple[bytes, bytes]] = (), status=200
    ) -> float:
        return freshnessLifetime(
            status,
            parseCacheControl([response] if response else []),
            [(b"Date", DATE), *headers],
            LIMITS,
        )

    def test_sMaxAgeFirst(self) -> None:
        """
        RFC 9111 section 4.2.1: s-maxage wins over max-age in a shared
        cache, max-age over Expires.
        """
        self.assertEqual(self.lifetime(b"max-age=10, s-maxage=20"), 20)
        self.assertEqual(
            self.lifetime(
                b"max-age=10", [(b"Expires", b"Thu, 01 Jan 2026 01:00:00 GMT")]
            ),
            10,
        )

    def test_expires(self) -> None:
        """
        RFC 9111 section 4.2.1 and 5.3: Expires minus Date; an invalid
        Expires means already expired.
        """
        self.assertEqual(
            self.lifetime(headers=[(b"Expires", b"Thu, 01 Jan 2026 01:00:00 GMT")]),
            3600,
        )
        self.assertEqual(self.lifetime(headers=[(b"Expires", b"0")]), 0)

    def test_heuristic(self) -> None:
        """
        RFC 9111 section 4.2.2: 10% of the time since Last-Modified, and
        bounded.
        """
        tenHours = b"Wed, 31 Dec 2025 14:00:00 GMT"
        self.assertEqual(self.lifetime(headers=[(b"Last-Modified", tenHours)]), 3600)
        yearAgo = b"Wed, 01 Jan 2025 00:00:00 GMT"
        self.assertEqual(
            self.lifetime(headers=[(b"Last-Modified", yearAgo)]), LIMITS.heuristicMax
        )

    def test_noHeuristicForOtherStatuses(self) -> None:
        """
        RFC 9111 section 4.2.2: heuristics only for statuses cacheable by
        default (or public).
        """
        tenHours = b"Wed, 31 Dec 2025 14:00:00 GMT"
        self.assertEqual(
            self.lifetime(headers=[(b"Last-Modified", tenHours)], status=302), 0
        )

    def test_age(self) -> None:
        """
        RFC 9111 section 4.2.3: corrected initial age from Age, Date and the
        response delay, plus resident time.
        """
        initial = correctedInitialAge(
            [(b"Date", DATE), (b"Age", b"30")], DATE_T + 1, DATE_T + 3
        )
        # max(apparent 3, 30 + delay 2)
        self.assertEqual(initial, 32)
        self.assertEqual(currentAge(initial, DATE_T + 3, DATE_T + 13), 42)
        apparent = correctedInitialAge([(b"Date", DATE)], DATE_T + 99, DATE_T + 100)
        self.assertEqual(apparent, 100)


class ReuseTests(SynchronousTestCase):
    """
    RFC 9111 section 4 and 5.2.1: when a stored response is served.
    """

    def decide(
        self, age: float, lifetime: float, request: bytes = b"", response: bytes = b""
    ) -> Decision:
        return decide(
            age,
            lifetime,
            parseCacheControl([request] if request else []),
            parseCacheControl([response] if response else []),
            LIMITS,
        )

    def test_freshAndStale(self) -> None:
        """
        RFC 9111 section 4.2: fresh while age < lifetime.
        """
        self.assertEqual(self.decide(5, 10), Decision.FRESH)
        self.assertEqual(self.decide(10, 10), Decision.VALIDATE)

    def test_requestMaxAge(self) -> None:
        """
        RFC 9111 section 5.2.1.1: request max-age limits the age.
        """
        self.assertEqual(self.decide(5, 10, b"max-age=3"), Decision.VALIDATE)

    def test_minFresh(self) -> None:
        """
        RFC 9111 section 5.2.1.3: min-fresh asks for freshness left.
        """
        self.assertEqual(self.decide(5, 10, b"min-fresh=6"), Decision.VALIDATE)
        self.assertEqual(self.decide(5, 10, b"min-fresh=4"), Decision.FRESH)

    def test_maxStale(self) -> None:
        """
        RFC 9111 section 5.2.1.2: max-stale accepts staleness, up to its
        value; without one, any.
        """
        self.assertEqual(self.decide(15, 10, b"max-stale=10"), Decision.STALE)
        self.assertEqual(self.decide(25, 10, b"max-stale=10"), Decision.VALIDATE)
        self.assertEqual(self.decide(1000, 10, b"max-stale"), Decision.STALE)

    def test_mustRevalidate(self) -> None:
        """
        RFC 9111 sections 5.2.2.2, 5.2.2.8, 5.2.2.10: must-revalidate,
        proxy-revalidate and s-maxage forbid serving stale.
        """
        for response in (b"must-revalidate", b"proxy-revalidate", b"s-maxage=10"):
            self.assertEqual(
                self.decide(15, 10, b"max-stale", response), Decision.VALIDATE
            )

    def test_noCache(self) -> None:
        """
        RFC 9111 sections 5.2.1.4, 5.2.2.4 and 5.4: no-cache in the request
        or response, and Pragma: no-cache without Cache-Control, validate.
        """
        self.assertEqual(self.decide(1, 10, b"no-cache"), Decision.VALIDATE)
        self.assertEqual(self.decide(1, 10, response=b"no-cache"), Decision.VALIDATE)
        self.assertEqual(
            decide(1, 10, NONE, NONE, LIMITS, pragmaNoCache=True), Decision.VALIDATE
        )
        self.assertEqual(
            decide(1, 10, cc(b"max-stale"), NONE, LIMITS, pragmaNoCache=True),
            Decision.FRESH,
        )

    def test_staleWhileRevalidate(self) -> None:
        """
        RFC 5861 section 3: within stale-while-revalidate, serve stale and
        refresh; the configured default applies when the response is silent.
        """
        response = b"max-age=10, stale-while-revalidate=5"
        self.assertEqual(
            self.decide(12, 10, response=response), Decision.STALE_REVALIDATE
        )
        self.assertEqual(self.decide(16, 10, response=response), Decision.VALIDATE)
        limits = FreshnessLimits(staleWhileRevalidate=30)
        self.assertEqual(decide(20, 10, NONE, NONE, limits), Decision.STALE_REVALIDATE)

    def test_staleIfError(self) -> None:
        """
        RFC 5861 section 4: stale-if-error from the response, the request or
        the default; never with must-revalidate.
        """
        self.assertTrue(
            staleIfErrorAllowed(15, 10, NONE, cc(b"stale-if-error=10"), LIMITS)
        )
        self.assertFalse(
            staleIfErrorAllowed(25, 10, NONE, cc(b"stale-if-error=10"), LIMITS)
        )
        self.assertTrue(
            staleIfErrorAllowed(25, 10, cc(b"stale-if-error=60"), NONE, LIMITS)
        )
        self.assertFalse(staleIfErrorAllowed(15, 10, NONE, NONE, LIMITS))
        self.assertFalse(
            staleIfErrorAllowed(
                15, 10, NONE, cc(b"stale-if-error=60, must-revalidate"), LIMITS
            )
        )


class VaryTests(SynchronousTestCase):
    """
    RFC 9111 section 4.1: secondary keys.
    """

    def test_normalized(self) -> None:
        """
        RFC 9111 section 4.1: whitespace around list commas does not make
        a different variant; a missing header differs from an empty one.
        """
        names = varyNames([(b"Vary", b"Accept-Encoding, Accept-Language")])
        self.assertEqual(names, [b"accept-encoding", b"accept-language"])
        a = secondaryKey(names, [(b"accept-encoding", b"gzip,br")])
        b = secondaryKey(names, [(b"accept-encoding", b"gzip, br")])
        self.assertEqual(a, b)
        self.assertNotEqual(
            secondaryKey([b"x"], []), secondaryKey([b"x"], [(b"x", b"")])
        )


class ValidationTests(SynchronousTestCase):
    """
    RFC 9111 section 4.3: validation and the update of stored headers.
    """

    def test_update(self) -> None:
        """
        RFC 9111 section 3.2 and 4.3.4: a 304's fields replace the stored
        ones of the same name, except Content-Length.
        """
        stored = [
            (b"Cache-Control", b"max-age=0"),
            (b"Content-Length", b"10"),
            (b"ETag", b'"a"'),
        ]
        updated = updateStoredHeaders(
            stored, [(b"Cache-Control", b"max-age=60"), (b"Content-Length", b"0")]
        )
        self.assertEqual(
            sorted(updated),
            [
                (b"Cache-Control", b"max-age=60"),
                (b"Content-Length", b"10"),
                (b"ETag", b'"a"'),
            ],
        )

    def test_selection(self) -> None:
        """
        RFC 9111 section 4.3.4: a 304 updates the stored response whose
        validator it names.
        """
        stored = [(b"ETag", b'"a"')]
        self.assertTrue(validatorMatches(stored, [(b"ETag", b'"a"')]))
        self.assertFalse(validatorMatches(stored, [(b"ETag", b'"b"')]))

    def test_clientConditional(self) -> None:
        """
        RFC 9111 section 4.3.2: If-None-Match (weak comparison) before
        If-Modified-Since.
        """
        stored = [(b"ETag", b'"a"'), (b"Last-Modified", DATE)]
        self.assertTrue(notModified([(b"if-none-match", b'W/"a"')], stored))
        self.assertFalse(
            notModified(
                [(b"if-none-match", b'"b"'), (b"if-modified-since", DATE)], stored
            )
        )
        self.assertTrue(notModified([(b"if-modified-since", DATE)], stored))
        self.assertFalse(
            notModified(
                [(b"if-modified-since", b"Wed, 31 Dec 2025 00:00:00 GMT")], stored
            )
        )


class InvalidationTests(SynchronousTestCase):
    """
    RFC 9111 section 4.4: invalidation by unsafe methods.
    """

    def targets(
        self, method: bytes, status: int, headers: list[tuple[bytes, bytes]] = ()
    ) -> list[bytes]:
        return invalidationTargets(
            method, status, b"http", b"example.com", b"/a/b?x=1", headers
        )

    def test_unsafeOnly(self) -> None:
        """
        RFC 9111 section 4.4: an unsafe method with a non-error response
        invalidates its target; safe methods and errors do not.
        """
        self.assertEqual(self.targets(b"POST", 200), [b"/a/b?x=1"])
        self.assertEqual(self.targets(b"GET", 200), [])
        self.assertEqual(self.targets(b"DELETE", 500), [])

    def test_locations(self) -> None:
        """
        RFC 9111 section 4.4: Location and Content-Location of the same
        origin too, relative ones resolved; other origins not.
        """
        self.assertEqual(
            self.targets(
                b"PUT",
                201,
                [
                    (b"Location", b"http://example.com/new"),
                    (b"Content-Location", b"c"),
                ],
            ),
            [b"/a/b?x=1", b"/new", b"/a/c"],
        )
        self.assertEqual(
            self.targets(b"PUT", 201, [(b"Location", b"http://other.example/x")]),
            [b"/a/b?x=1"],
        )


def entry(key: bytes, variant: bytes, bodySize: int) -> CacheEntry:
    return CacheEntry(
        key=key,
        variant=variant,
        varyOn=(),
        status=200,
        reason=b"OK",
        headers=[(b"Content-Length", b"%d" % (bodySize,))],
        body=b"x" * bodySize,
        responseTime=0.0,
        initialAge=0.0,
        lifetime=60.0,
    )


_operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "remove", "purge"]),
        st.sampled_from([b"a", b"ab", b"b", b"c", b"d"]),
        st.sampled_from([b"", b"v1", b"v2"]),
        st.integers(min_value=0, max_value=5000),
    ),
    max_size=60,
)


class MemoryStoreTests(SynchronousTestCase):
    """
    L{MemoryStore}: bounded in bytes, least recently used first out.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.integers(min_value=300, max_value=20000), _operations)
    def test_neverExceedsBound(self, maxSize: int, operations: list) -> None:
        """
        Whatever is put, got, removed or purged, the store holds at most
        maxSize bytes and its count matches its entries.
        """
        store = MemoryStore(maxSize)
        for operation, key, variant, size in operations:
            if operation == "put":
                stored = store.put(entry(key, variant, size))
                self.assertEqual(stored, entry(key, variant, size).size <= maxSize)
            elif operation == "get":
                store.get(key)
            elif operation == "remove":
                store.remove(key)
            else:
                store.purge(key)
            self.assertLessEqual(store.size, maxSize)
            total = sum(e.size for k in store.keys() for e in store.get(k))
            self.assertEqual(total, store.size)

    def test_leastRecentlyUsedFirst(self) -> None:
        """
        The entry used least recently is evicted first.
        """
        one = entry(b"a", b"", 100)
        store = MemoryStore(one.size * 2)
        store.put(one)
        store.put(entry(b"b", b"", 100))
        store.get(b"a")
        store.put(entry(b"c", b"", 100))
        self.assertEqual(sorted(store.keys()), [b"a", b"c"])


BASE = {
    "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
    "routes": [{"pool": "app", "cache": "main"}],
}


class CacheConfigTests(SynchronousTestCase):
    """
    C{[caches.NAME]} and a route's C{cache}.
    """

    def parse(self, cache: dict, **extra: object) -> object:
        return parseConfig({**BASE, "caches": {"main": cache}, **extra}, "t", "/")

    def test_defaults(self) -> None:
        """
        An empty table gets the documented defaults.
        """
        config = self.parse({})
        main = config.caches["main"]
        self.assertEqual(main.maxSize, 64 * 1024 * 1024)
        self.assertEqual(main.key, ("method", "scheme", "host", "path", "query"))
        self.assertFalse(main.statusHeader)
        self.assertEqual(config.routes[0].cache, "main")

    def test_errors(self) -> None:
        """
        Each mistake names its dotted key.
        """
        cases = [
            ({"max_sise": 1}, "caches.main.max_sise"),
            ({"key": ["path", "cookie"]}, "caches.main.key[1]"),
            (
                {"max_size": "1KiB", "max_object_size": "2KiB"},
                "caches.main.max_object_size",
            ),
            ({"purge_from": ["nope"]}, "caches.main.purge_from[0]"),
            ({"coalesce_wait": "0s"}, "caches.main.coalesce_wait"),
        ]
        for table, key in cases:
            with self.assertRaises(ConfigError) as raised:
                self.parse(table)
            self.assertEqual(raised.exception.key, key)

    def test_undefinedCache(self) -> None:
        """
        A route naming an undefined cache is refused.
        """
        with self.assertRaises(ConfigError) as raised:
            parseConfig(BASE, "t", "/")
        self.assertEqual(raised.exception.key, "routes[0].cache")
