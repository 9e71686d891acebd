"""
An RFC 9111 shared HTTP cache for the resource tree.

  - L{twisted_rproxy.cache.policy}: the rules, as pure functions of data
    (storability, freshness, age, reuse, validation, invalidation);
  - L{twisted_rproxy.cache.store}: L{CacheEntry} and the in-memory
    L{MemoryStore} (an L{twisted_rproxy.interfaces.ICacheStore});
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

from twisted_rproxy.cache.resource import CacheResource
from twisted_rproxy.cache.status import BYPASS, HIT, MISS, REVALIDATED, STALE
from twisted_rproxy.cache.store import CacheEntry, MemoryStore
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.state import SharedState

__all__ = [
    "BYPASS",
    "HIT",
    "MISS",
    "REVALIDATED",
    "STALE",
    "CacheEntry",
    "CacheResource",
    "MemoryStore",
    "buildStores",
]


def buildStores(
    caches: Mapping[str, CacheConfig],
    existing: Mapping[str, ICacheStore] | None = None,
    sharedState: SharedState | None = None,
) -> dict[str, ICacheStore]:
    """
    The store of each configured cache: a L{MemoryStore} of its
    C{maxSize}; one of C{existing} (a reload's previous stores) is kept,
    contents included, under the same name, and given the new bound.

    @param sharedState: The client of C{[state]}, where the caches with
        C{store = "redis"} keep their entries; L{None} without C{[state]}.
    """
    stores: dict[str, ICacheStore] = {}
    for name, config in caches.items():
        store = (existing or {}).get(name)
        if store is None:
            store = MemoryStore(config.maxSize)
        else:
            resize = getattr(store, "setMaxSize", None)
            if resize is not None:
                resize(config.maxSize)
        stores[name] = store
    return stores
