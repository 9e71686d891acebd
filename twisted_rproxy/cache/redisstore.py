"""
L{RedisStore}: an L{ICacheStore} in the shared Redis of C{[state]}, so that
every proxy using it (worker processes, instances on other machines) sees
what any of them stored, purged or invalidated; with the lock that lets
one of them fetch a cold key while the others wait
(L{twisted_rproxy.cache.flight.SharedFlights}), and an optional small
in-process layer in front of Redis.

Entries expire in Redis when they are of no further use (see
L{twisted_rproxy.cache.policy.usefulFor}); how much Redis holds in all is
Redis' own business (C{maxmemory} and an LRU eviction policy).  The layout
is in L{twisted_rproxy.cache.redisformat}.

While Redis cannot be reached, lookups are misses and nothing is stored
(C{on_error = "local"}: the in-process layer, if any, goes on answering
and storing alone); no operation waits longer than C{[state] timeout}.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.cache.policy import FreshnessLimits, currentAge, usefulFor
from twisted_rproxy.cache.redisformat import (
    APPEND,
    GET,
    PURGE,
    PUT,
    REMOVE,
    UNLOCK,
    decodeEntry,
    digest,
    encodeHead,
    lexRange,
)
from twisted_rproxy.cache.store import MemoryStore
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.state import SharedState, StateUnavailable

__all__ = [
    "BODY_PIECE",
    "MAX_VARIANTS",
    "PURGE_BATCH",
    "RedisStore",
    "VALIDATOR_RETENTION",
]

_log = Logger()

#: Seconds a response with a validator is kept past its usable life, so
#: that a revalidation answered 304 finds its body.
VALIDATOR_RETENTION = 3600.0

#: The most variants (C{Vary}) kept per primary key; past it, those that
#: expire first go.
MAX_VARIANTS = 32

#: Bodies larger than this are written in pieces of this size.
BODY_PIECE = 128 * 1024

#: Keys removed per script call of a purge by prefix (so that Redis is not
#: blocked long by one).
PURGE_BATCH = 500

#: Milliseconds a body being written in pieces may take.
_PIECES_TTL_MS = 60_000


@implementer(ICacheStore)
class RedisStore:
    """
    The entries of one cache (C{[caches.NAME]} with C{store = "redis"}) in
    the shared Redis.

    @ivar sharedState: The Redis client.
    @ivar config: The cache's configuration (C{name} names its keys).
    @ivar local: The in-process layer (C{local_size}), or L{None}.
    @ivar maxSize: C{max_size}, which Redis enforces with C{maxmemory}, not
        this store.
    @ivar stats: Operations counted: C{hits} and C{misses} of lookups that
        asked Redis, C{local} lookups answered by the in-process layer,
        C{stored}, C{errors} (operations that failed or were skipped while
        Redis was unreachable).
    """

    def __init__(
        self,
        sharedState: SharedState,
        config: CacheConfig,
        validatorRetention: float = VALIDATOR_RETENTION,
        maxVariants: int = MAX_VARIANTS,
    ) -> None:
        """
        @param sharedState: See L{sharedState}.
        @param config: See L{config}.
        @param validatorRetention: See L{VALIDATOR_RETENTION}.
        @param maxVariants: See L{MAX_VARIANTS}.
        """
        self.sharedState = sharedState
        self.config = config
        self.maxSize = config.maxSize
        self.validatorRetention = validatorRetention
        self.maxVariants = maxVariants
        self.limits = FreshnessLimits(
            heuristicFraction=config.heuristicFraction,
            heuristicMax=config.heuristicMax,
            defaultTTL=config.defaultTTL,
            staleWhileRevalidate=config.staleWhileRevalidate,
            staleIfError=config.staleIfError,
        )
        self.local = MemoryStore(config.localSize) if config.localSize else None
        # When each key was last read from Redis into the local layer.
        self._loaded: dict[bytes, float] = {}
        self._clock = sharedState.reactor
        self.stats = dict.fromkeys(("hits", "misses", "local", "stored", "errors"), 0)
        key = sharedState.key
        name = config.name
        self._heads = key("cache", name, "k", "")
        self._bodies = key("cache", name, "b", "")
        self._index = key("cache", name, "index")
        self._expiry = key("cache", name, "expiry")
        self._locks = key("cache", name, "lock", "")
        self._pieces = key("cache", name, "tmp", "")

    @property
    def size(self) -> int:
        """
        The bytes the in-process layer holds (Redis' own memory is Redis').
        """
        return self.local.size if self.local is not None else 0

    def __len__(self) -> int:
        return len(self.local) if self.local is not None else 0

    def status(self) -> dict[str, object]:
        """
        What the admin page shows of this store.
        """
        return {
            "store": "redis",
            "redis": self.sharedState.config.displayURL,
            "available": self.sharedState.available,
            "local_entries": len(self),
            "local_bytes": self.size,
            "local_max_bytes": self.local.maxSize if self.local is not None else 0,
            **self.stats,
        }

    # -- reading --------------------------------------------------------------

    def get(self, key: bytes) -> list[CacheEntry] | Deferred[list[CacheEntry]]:
        local = self.local
        if local is not None:
            loaded = self._loaded.get(key)
            if (
                loaded is not None
                and self._clock.seconds() - loaded < self.config.localTTL
            ):
                entries = local.get(key)
                if entries:
                    self.stats["local"] += 1
                    return entries
        return self._read(key, False).addCallback(lambda result: result[1])

    def awaitEntry(self, key: bytes) -> Deferred[tuple[bool, list[CacheEntry]]]:
        """
        See L{twisted_rproxy.cache.flight.SharedFlights.awaitEntry}.
        """
        return self._read(key, True, quiet=False)

    def _read(
        self, key: bytes, withLock: bool, quiet: bool = True
    ) -> Deferred[tuple[bool, list[CacheEntry]]]:
        h = digest(key)
        keys = [self._heads + h.encode()]
        if withLock:
            keys.append(self._locks + h.encode())
        reading = self.sharedState.evalScript(
            GET, keys, [self._bodies + h.encode() + b":"]
        )
        return reading.addCallbacks(
            self._decoded, self._readFailed, (key,), errbackArgs=(key, quiet)
        )

    def _decoded(self, reply: Any, key: bytes) -> tuple[bool, list[CacheEntry]]:
        held = bool(reply[0])
        entries: list[CacheEntry] = []
        if reply[1] == key:
            for index in range(2, len(reply) - 2, 3):
                variant, head, body = reply[index : index + 3]
                try:
                    entries.append(decodeEntry(key, variant, head, body))
                except ValueError as e:
                    _log.warn(
                        "Cache {name}: an entry in Redis could not be read ({error}); "
                        "it counts as a miss",
                        name=self.config.name,
                        error=e,
                    )
        self.stats["hits" if entries else "misses"] += 1
        local = self.local
        if local is not None:
            # What Redis holds now replaces what this process had.
            local.remove(key)
            for entry in entries:
                local.put(entry)
            if entries:
                self._loaded[key] = self._clock.seconds()
            else:
                self._loaded.pop(key, None)
            self._forgetEvicted()
        return held, entries

    def _readFailed(
        self, failure: Failure, key: bytes, quiet: bool
    ) -> tuple[bool, list[CacheEntry]] | Failure:
        self.stats["errors"] += 1
        if not failure.check(StateUnavailable):
            _log.failure(
                "Cache {name}: a lookup in Redis failed; served as a miss",
                failure,
                name=self.config.name,
            )
        elif not quiet:
            return failure
        entries: list[CacheEntry] = []
        if self.local is not None and self.sharedState.onError == "local":
            # Nothing can be purged in Redis either meanwhile: what this
            # process holds is as good as it gets.
            entries = self.local.get(key)
        return False, entries

    def _forgetEvicted(self) -> None:
        """
        Drop the load times of keys the local layer evicted.
        """
        local = self.local
        if local is not None and len(self._loaded) > 2 * len(local) + 64:
            held = set(local.keys())
            self._loaded = {k: t for k, t in self._loaded.items() if k in held}

    # -- writing --------------------------------------------------------------

    def put(self, entry: CacheEntry) -> bool | Deferred[bool]:
        if len(entry.body) > self.config.maxObjectSize:
            return False
        ttl = self._ttl(entry)
        if ttl <= 0:
            return False
        if self.local is not None:
            self.local.put(entry)
        return Deferred.fromCoroutine(self._write(entry, ttl, entry.body))

    def resized(self, entry: CacheEntry) -> Deferred[None] | None:
        if self.local is not None:
            self.local.resized(entry)
        ttl = self._ttl(entry)
        if ttl <= 0:
            return None
        writing = Deferred.fromCoroutine(self._write(entry, ttl, None))
        return writing.addCallback(lambda _: None)

    def _ttl(self, entry: CacheEntry) -> int:
        """
        Milliseconds for which C{entry} is worth keeping, from now.
        """
        age = currentAge(entry.initialAge, entry.responseTime, self._clock.seconds())
        seconds = usefulFor(
            age,
            entry.lifetime,
            entry.cacheControl,
            entry.headers,
            self.limits,
            self.validatorRetention,
        )
        return int(seconds * 1000)

    async def _write(self, entry: CacheEntry, ttl: int, body: bytes | None) -> bool:
        """
        Store C{entry}'s head, and C{body} unless it is L{None} (the stored
        body stays).

        @return: Whether it was stored.
        """
        h = digest(entry.key).encode()
        bodies = self._bodies + h + b":"
        keys = [
            self._heads + h,
            bodies + digest(entry.variant).encode(),
            self._index,
            self._expiry,
        ]
        mode: str
        payload: bytes
        try:
            if body is None:
                mode, payload = "keep", b""
            elif len(body) <= BODY_PIECE:
                mode, payload = "body", body
            else:
                mode, payload = "rename", await self._writePieces(h, body)
            stored = await self.sharedState.evalScript(
                PUT,
                keys,
                [
                    entry.key,
                    entry.variant,
                    encodeHead(entry),
                    ttl,
                    mode,
                    payload,
                    bodies,
                    self.maxVariants,
                ],
            )
        except StateUnavailable:
            self.stats["errors"] += 1
            return False
        except Exception:
            self.stats["errors"] += 1
            _log.failure("Cache {name}: storing in Redis failed", name=self.config.name)
            return False
        if stored and body is not None:
            self.stats["stored"] += 1
        return bool(stored)

    async def _writePieces(self, h: bytes, body: bytes) -> bytes:
        """
        Write a large body to a key of its own, a piece at a time (each
        sent once the previous one is in), so that at most one piece is
        copied while it is sent.

        @return: The key it was written to.
        @raise StateUnavailable: If it could not be written whole.
        """
        pieces = self._pieces + h + b":" + os.urandom(8).hex().encode()
        state = self.sharedState
        await state.execute("SET", pieces, body[:BODY_PIECE], "PX", _PIECES_TTL_MS)
        for offset in range(BODY_PIECE, len(body), BODY_PIECE):
            length = await state.evalScript(
                APPEND, [pieces], [body[offset : offset + BODY_PIECE]]
            )
            if length < 0:
                raise StateUnavailable("a body being written expired")
        return pieces

    # -- removing ---------------------------------------------------------------

    def remove(self, key: bytes) -> int | Deferred[int]:
        if self.local is not None:
            self.local.remove(key)
            self._loaded.pop(key, None)
        h = digest(key).encode()
        removing = self.sharedState.evalScript(
            REMOVE,
            [self._heads + h, self._index, self._expiry],
            [key, self._bodies + h + b":"],
        )
        return removing.addCallback(int)

    def purge(self, prefix: bytes) -> int | Deferred[int]:
        if self.local is not None:
            self.local.purge(prefix)
            for key in [k for k in self._loaded if k.startswith(prefix)]:
                del self._loaded[key]
        return Deferred.fromCoroutine(self._purge(prefix))

    async def _purge(self, prefix: bytes) -> int:
        start, end = lexRange(prefix)
        total = 0
        while True:
            count, looked = await self.sharedState.evalScript(
                PURGE,
                [self._index, self._expiry],
                [start, end, PURGE_BATCH, self._heads, self._bodies],
            )
            total += int(count)
            if int(looked) < PURGE_BATCH:
                return total

    def keys(self) -> Iterator[bytes]:
        """
        The keys the in-process layer holds (what Redis holds is listed by
        Redis: C{ZRANGE} of the cache's index).
        """
        return self.local.keys() if self.local is not None else iter(())

    # -- the lock of a cold key ---------------------------------------------------

    def claimFetch(self, key: bytes, ttl: float) -> Deferred[bytes | None]:
        """
        See L{twisted_rproxy.cache.flight.SharedFlights.claimFetch}.
        """
        if not self.sharedState.available:
            # Known to be down: don't make the request wait to learn it.
            return succeed(b"")
        token = os.urandom(12).hex().encode()
        lock = self._locks + digest(key).encode()
        claiming = self.sharedState.execute(
            "SET", lock, token, "NX", "PX", max(1, int(ttl * 1000))
        )

        def claimed(reply: object) -> bytes | None:
            return token if reply is not None else None

        def failed(failure: Failure) -> bytes:
            if not failure.check(StateUnavailable):
                _log.failure(
                    "Cache {name}: a lock failed", failure, name=self.config.name
                )
            return b""

        return claiming.addCallbacks(claimed, failed)

    def releaseFetch(self, key: bytes, token: bytes) -> None:
        """
        See L{twisted_rproxy.cache.flight.SharedFlights.releaseFetch}.
        """
        lock = self._locks + digest(key).encode()
        releasing = self.sharedState.evalScript(UNLOCK, [lock], [token])
        # Not released: it expires by itself.
        releasing.addErrback(lambda failure: None)
