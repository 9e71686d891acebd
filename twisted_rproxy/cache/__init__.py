"""
An RFC 9111 shared HTTP cache for the resource tree.

  - L{twisted_rproxy.cache.policy}: the rules, as pure functions of data
    (storability, freshness, age, reuse, validation, invalidation);
  - L{twisted_rproxy.cache.store}: L{CacheEntry} and the in-memory
    L{MemoryStore} (an L{twisted_rproxy.interfaces.ICacheStore});
  - L{twisted_rproxy.cache.redisstore}: L{RedisStore}, the store shared by
    several proxies in the Redis of C{[state]} (its layout in
    C{redisformat});
  - L{twisted_rproxy.cache.diskstore}: L{DiskStore}, the store of files in
    a directory for caches larger than memory (C{store = "disk"}; its
    layout in C{diskformat}, its in-memory index in C{diskindex}, the
    streaming of a stored body in C{diskbody});
  - L{twisted_rproxy.cache.resource}: L{CacheResource}, which wraps any
    resource (usually a route's proxy), with its parts: C{keys} (keys,
    variants, purging), C{flight} (request coalescing), C{capture} (the
    capture of a miss), C{background} (the request of a background
    revalidation), C{serving} (answering from a stored response: 304, 206,
    416) and C{status} (the C{X-Cache} values).

See C{docs/caching.rst}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, cast

from twisted_rproxy.cache.diskstore import DiskStore
from twisted_rproxy.cache.redisstore import RedisStore
from twisted_rproxy.cache.resource import CacheResource
from twisted_rproxy.cache.status import BYPASS, HIT, MISS, REVALIDATED, STALE
from twisted_rproxy.cache.store import CacheEntry, MemoryStore
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.state import SharedState

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = [
    "BYPASS",
    "HIT",
    "MISS",
    "REVALIDATED",
    "STALE",
    "CacheEntry",
    "CacheResource",
    "DiskStore",
    "MemoryStore",
    "RedisStore",
    "buildStores",
]


def buildStores(
    caches: Mapping[str, CacheConfig],
    existing: Mapping[str, ICacheStore] | None = None,
    sharedState: SharedState | None = None,
    reactor: IReactorTime | None = None,
) -> dict[str, ICacheStore]:
    """
    The store of each configured cache: a L{MemoryStore} of its
    C{maxSize}, or with C{store = "redis"} a L{RedisStore} on
    C{sharedState}.  One of C{existing} (a reload's previous stores) is
    kept under the same name: a memory store with its contents, given the
    new bound; a Redis store if its settings and client are the same (its
    entries are in Redis either way); a disk store (C{store = "disk"}) if
    its C{path} is the same, given the new bound (its files stay either
    way, and a new store indexes them again).

    @param sharedState: The client of C{[state]}, where the caches with
        C{store = "redis"} keep their entries; L{None} without C{[state]}.
    @param reactor: The reactor whose thread pool the disk stores use;
        needed for a cache with C{store = "disk"}.
    @raise ValueError: For a cache with C{store = "redis"} without
        C{sharedState} (the configuration's checks report it first), or
        with C{store = "disk"} without C{reactor}.
    """
    stores: dict[str, ICacheStore] = {}
    for name, config in caches.items():
        # Read as an object: mypy-zope sees no ICacheStore in a RedisStore.
        current: object = (existing or {}).get(name)
        store: ICacheStore
        if config.store == "redis":
            if sharedState is None:
                raise ValueError(
                    f'caches.{name}.store: "redis" needs a [state] table (its '
                    "redis URL) to store in"
                )
            if (
                isinstance(current, RedisStore)
                and current.sharedState is sharedState
                and current.config == config
            ):
                store = current
            else:
                store = RedisStore(sharedState, config)
        elif config.store == "disk":
            if reactor is None:
                raise ValueError(
                    f'caches.{name}.store: "disk" needs a reactor (its threads)'
                )
            if isinstance(current, DiskStore) and current.path == config.path:
                current.reconfigure(config)
                store = cast(ICacheStore, current)
            else:
                store = cast(ICacheStore, DiskStore(reactor, config))
        elif current is None or isinstance(current, (RedisStore, DiskStore)):
            store = MemoryStore(config.maxSize)
        else:
            store = cast(ICacheStore, current)
            resize = getattr(store, "setMaxSize", None)
            if resize is not None:
                resize(config.maxSize)
        stores[name] = store
    return stores
