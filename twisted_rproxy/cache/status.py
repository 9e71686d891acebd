"""
What the cache says it did with a request: the values of its C{X-Cache}
response header, which also count its responses (C{CacheResource.stats})
and, lowercased, name them for the metrics (C{request.cacheStatus}); and
its member of the C{Cache-Status} header (RFC 9211, L{cacheStatusMember}).
"""

from __future__ import annotations

import math

__all__ = [
    "BYPASS",
    "CACHE_STATUS",
    "FWD_BYPASS",
    "FWD_METHOD",
    "FWD_MISS",
    "FWD_REQUEST",
    "FWD_STALE",
    "FWD_URI_MISS",
    "FWD_VARY_MISS",
    "HIT",
    "MISS",
    "REVALIDATED",
    "STALE",
    "STATUS_HEADER",
    "cacheStatusMember",
]

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

#: The RFC 9211 response header, sent beside C{X-Cache} when the cache is
#: configured to send its status.
CACHE_STATUS = b"Cache-Status"

#: RFC 9211 section 2.2: why a request went forward.
FWD_URI_MISS = b"uri-miss"
FWD_VARY_MISS = b"vary-miss"
FWD_MISS = b"miss"
FWD_STALE = b"stale"
FWD_REQUEST = b"request"
FWD_METHOD = b"method"
FWD_BYPASS = b"bypass"


def cacheStatusMember(
    name: bytes,
    hit: bool = False,
    fwd: bytes = b"",
    fwdStatus: int = 0,
    ttl: float | None = None,
    stored: bool = False,
    collapsed: bool | None = None,
    detail: bytes = b"",
) -> bytes:
    """
    One cache's member of a C{Cache-Status} List (RFC 9211 section 2): an
    RFC 8941 Item, its parameters written C{"; "} apart as in the RFC's
    examples (a space after C{";"} is valid Structured Field syntax).

    @param name: The cache's name, serialized (a Token or a String).
    @param hit: Answered from the cache without going forward (2.1).
    @param fwd: Why the request went forward (2.2), one of the C{FWD_*}
        tokens; C{b""} if it did not.
    @param fwdStatus: The status the next hop answered, when it differs
        from the response's (2.3); 0 for none.
    @param ttl: The response's remaining freshness in seconds, negative
        when stale (2.4), rounded down; L{None} to leave it out.
    @param stored: Whether the response was stored (2.5).
    @param collapsed: Whether the request waited for another's (2.6):
        L{True} when that response answered it, L{False} when it had to
        go forward itself; L{None} when it did not wait.
    @param detail: Something more, as a Token (2.8); C{b""} for nothing.
    """
    member = name
    if hit:
        member += b"; hit"
    if fwd:
        member += b"; fwd=" + fwd
        if fwdStatus:
            member += b"; fwd-status=%d" % (fwdStatus,)
    if ttl is not None:
        member += b"; ttl=%d" % (math.floor(ttl),)
    if fwd and stored:
        member += b"; stored"
    if fwd and collapsed is not None:
        member += b"; collapsed" if collapsed else b"; collapsed=?0"
    if detail:
        member += b"; detail=" + detail
    return member
