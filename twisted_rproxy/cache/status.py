"""
What the cache says it did with a request: the values of its C{X-Cache}
response header, which also count its responses (C{CacheResource.stats})
and, lowercased, name them for the metrics (C{request.cacheStatus}).
"""

from __future__ import annotations

__all__ = ["BYPASS", "HIT", "MISS", "REVALIDATED", "STALE", "STATUS_HEADER"]

#: Served from the store, fresh.
HIT = b"HIT"
#: Sent to the child (and stored if it may be).
MISS = b"MISS"
#: Served from the store, stale (allowed by the directives or the
#: configuration).
STALE = b"STALE"
#: Served from the store after the child said it had not changed.
REVALIDATED = b"REVALIDATED"
#: Passed to the child, not looked up (a method the cache does not serve).
BYPASS = b"BYPASS"

#: The response header that tells the status, when the cache is configured
#: to send it.
STATUS_HEADER = b"X-Cache"
