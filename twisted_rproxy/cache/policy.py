"""
The rules of an RFC 9111 shared cache, as plain functions of data: what may
be stored, for how long it is fresh, how old it is, when a stored response
may be reused, and what an unsafe request invalidates.

Nothing here reads a clock or touches a request object: the caller passes
the time and the header values, so every rule is tested on its own (see
C{tests/test_cache_policy.py}, where each test names the section it
checks).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from urllib.parse import urlsplit

from attrs import frozen

from twisted_rproxy.config import CacheConfig
from twisted_rproxy.rules.cachecontrol import CacheControl, parseCacheControl
from twisted_rproxy.rules.dates import parseHTTPDate
from twisted_rproxy.rules.etags import etagMatches
from twisted_rproxy.rules.headers import HOP_BY_HOP

__all__ = [
    "CACHEABLE_BY_DEFAULT",
    "CacheControl",
    "Decision",
    "ageSeconds",
    "FreshnessLimits",
    "Headers",
    "correctedInitialAge",
    "currentAge",
    "decide",
    "freshnessLifetime",
    "headerValues",
    "invalidationTargets",
    "isStorable",
    "notModified",
    "parseCacheControl",
    "secondaryKey",
    "staleIfErrorAllowed",
    "storedHeaders",
    "updateStoredHeaders",
    "usefulFor",
    "varyNames",
]

#: Header lists as the proxy passes them: C{(name, value)} pairs.
Headers = Sequence[tuple[bytes, bytes]]

#: RFC 9110 section 15.1: status codes heuristically cacheable by default.
CACHEABLE_BY_DEFAULT = frozenset(
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]
)

#: Methods whose responses this cache stores (RFC 9111 section 3: the
#: method must be understood and defined as cacheable; HEAD is answered from
#: a stored GET response).
CACHEABLE_METHODS = frozenset([b"GET"])

#: RFC 9110 section 9.2.1: methods that are safe, and invalidate nothing.
SAFE_METHODS = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE"])

#: Headers never stored with a response (RFC 9111 section 3.1: the
#: connection-specific ones; C{Age} is computed anew on each reuse).
_NOT_STORED = HOP_BY_HOP | {b"age", b"x-cache"}

#: RFC 9111 section 3.2: a 304 does not update these.
_NOT_UPDATED = _NOT_STORED | {b"content-length", b"content-encoding", b"content-range"}

#: RFC 9110 section 15.4.5: what a 304 carries of the stored response.
_NOT_MODIFIED_HEADERS = frozenset(
    [b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"]
)


def headerValues(headers: Headers, name: bytes) -> list[bytes]:
    """
    Every value of the header C{name} (lowercase) in C{headers}.
    """
    return [value for key, value in headers if key.lower() == name]


def _first(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


@frozen
class FreshnessLimits:
    """
    The cache's own choices where RFC 9111 leaves one to the cache.

    @ivar heuristicFraction: The fraction of the time since C{Last-Modified}
        a response without explicit freshness stays fresh (RFC 9111 section
        4.2.2 suggests 10%).
    @ivar heuristicMax: The longest heuristic freshness, in seconds.
    @ivar defaultTTL: Freshness, in seconds, of a response cacheable by
        default that has neither explicit freshness nor C{Last-Modified}
        (a heuristic too; 0 for none).
    @ivar staleWhileRevalidate: Seconds a stale response may be served
        while it is revalidated in the background, when the response does
        not say (RFC 5861 section 3).
    @ivar staleIfError: Seconds a stale response may be served when the
        backend fails, when the response does not say (RFC 5861 section 4).
    """

    heuristicFraction: float = 0.1
    heuristicMax: float = 86400.0
    defaultTTL: float = 0.0
    staleWhileRevalidate: float = 0.0
    staleIfError: float = 0.0

    @classmethod
    def of(cls, config: CacheConfig) -> FreshnessLimits:
        """The limits a cache's configuration sets."""
        return cls(
            heuristicFraction=config.heuristicFraction,
            heuristicMax=config.heuristicMax,
            defaultTTL=config.defaultTTL,
            staleWhileRevalidate=config.staleWhileRevalidate,
            staleIfError=config.staleIfError,
        )


def isStorable(
    method: bytes,
    status: int,
    requestCC: CacheControl,
    responseCC: CacheControl,
    responseHeaders: Headers,
    authorized: bool,
) -> bool:
    """
    Whether a shared cache may store a response (RFC 9111 section 3).

    @param method: The request method.
    @param status: The response's final status.
    @param requestCC: The request's C{Cache-Control}.
    @param responseCC: The response's C{Cache-Control}.
    @param responseHeaders: The response's headers (for C{Expires} and
        C{Vary}).
    @param authorized: Whether the request had C{Authorization}.
    """
    if method not in CACHEABLE_METHODS:
        return False
    # Partial and not-modified responses are not stored as entries of
    # their own: this cache stores complete responses only.
    if status < 200 or status in (206, 304):
        return False
    if requestCC.has(b"no-store") or responseCC.has(b"no-store"):
        return False
    # Section 5.2.2.7: "private" unqualified forbids a shared cache to
    # store; the qualified form only keeps the named fields out.
    if responseCC.has(b"private") and not responseCC.fieldNames(b"private"):
        return False
    if authorized and not (
        responseCC.has(b"must-revalidate")
        or responseCC.has(b"public")
        or responseCC.has(b"s-maxage")
    ):
        # Section 3.5.
        return False
    if b"*" in varyNames(responseHeaders):
        # Section 4.1: "Vary: *" never matches, so storing is useless.
        return False
    return (
        responseCC.has(b"public")
        or responseCC.seconds(b"s-maxage") is not None
        or responseCC.seconds(b"max-age") is not None
        or _first(responseHeaders, b"expires") is not None
        or status in CACHEABLE_BY_DEFAULT
    )


def freshnessLifetime(
    status: int,
    responseCC: CacheControl,
    responseHeaders: Headers,
    limits: FreshnessLimits,
) -> float:
    """
    How long a response stays fresh, in seconds (RFC 9111 section 4.2.1):
    C{s-maxage}, else C{max-age}, else C{Expires} minus C{Date}, else a
    heuristic (section 4.2.2) for responses cacheable by default or marked
    C{public}: a fraction of the time since C{Last-Modified}, bounded, or
    the configured default.
    """
    sMaxAge = responseCC.seconds(b"s-maxage")
    if sMaxAge is not None:
        return float(sMaxAge)
    maxAge = responseCC.seconds(b"max-age")
    if maxAge is not None:
        return float(maxAge)
    expires = _first(responseHeaders, b"expires")
    if expires is not None:
        expiresAt = parseHTTPDate(expires)
        if expiresAt is None:
            # Section 5.3: an invalid Expires (like "0") means already expired.
            return 0.0
        dateValue = _first(responseHeaders, b"date")
        date = parseHTTPDate(dateValue) if dateValue is not None else None
        return float(max(0, expiresAt - (date if date is not None else expiresAt)))
    if status not in CACHEABLE_BY_DEFAULT and not responseCC.has(b"public"):
        return 0.0
    lastModifiedValue = _first(responseHeaders, b"last-modified")
    if lastModifiedValue is not None:
        lastModified = parseHTTPDate(lastModifiedValue)
        dateValue = _first(responseHeaders, b"date")
        date = parseHTTPDate(dateValue) if dateValue is not None else None
        if lastModified is not None and date is not None and date > lastModified:
            return min(
                limits.heuristicMax, (date - lastModified) * limits.heuristicFraction
            )
        return 0.0
    return limits.defaultTTL


def correctedInitialAge(
    responseHeaders: Headers, requestTime: float, responseTime: float
) -> float:
    """
    The age a response had when it arrived (RFC 9111 section 4.2.3):
    the larger of its apparent age (arrival minus C{Date}) and its C{Age}
    corrected by the time the request took.

    @param requestTime: When the request was sent.
    @param responseTime: When the response arrived.
    """
    dateValue = _first(responseHeaders, b"date")
    date = parseHTTPDate(dateValue) if dateValue is not None else None
    apparentAge = max(0.0, responseTime - date) if date is not None else 0.0
    age = ageSeconds(_first(responseHeaders, b"age"))
    responseDelay = responseTime - requestTime
    return max(apparentAge, age + responseDelay)


def ageSeconds(value: bytes | None) -> int:
    """
    The seconds an C{Age} field value says (RFC 9111 section 5.1): of a
    list, the first member; 0 (ignored) unless it is a plain non-negative
    integer (no sign, no fraction); at most 2**31 (section 1.2.2).

    @param value: The field's first line, or L{None} without one.
    """
    if value is None:
        return 0
    first = value.split(b",", 1)[0].strip(b" \t")
    if not first.isdigit():
        return 0
    return min(int(first), 2**31)


def currentAge(initialAge: float, responseTime: float, now: float) -> float:
    """
    A stored response's age now (RFC 9111 section 4.2.3): its corrected
    initial age plus the time it has been stored.
    """
    return initialAge + max(0.0, now - responseTime)


class Decision(enum.Enum):
    """
    What to do with a stored response for a request (see L{decide}).
    """

    #: Serve it: it is fresh enough for the request.
    FRESH = "fresh"
    #: Serve it although stale: the request's C{max-stale} allows it.
    STALE = "stale"
    #: Serve it stale and revalidate it in the background (RFC 5861).
    STALE_REVALIDATE = "stale-while-revalidate"
    #: Validate it with the backend before serving.
    VALIDATE = "validate"


def _forbidsStale(responseCC: CacheControl) -> bool:
    # RFC 9111 sections 4.2.4, 5.2.2.2, 5.2.2.8, 5.2.2.10: a shared cache
    # must not serve these stale, whatever the request allows.
    return (
        responseCC.has(b"must-revalidate")
        or responseCC.has(b"proxy-revalidate")
        or responseCC.has(b"s-maxage")
    )


def decide(
    age: float,
    lifetime: float,
    requestCC: CacheControl,
    responseCC: CacheControl,
    limits: FreshnessLimits,
    pragmaNoCache: bool = False,
) -> Decision:
    """
    Whether a stored response may be served for a request (RFC 9111
    section 4), and how.

    @param age: The stored response's current age.
    @param lifetime: Its freshness lifetime.
    @param requestCC: The request's C{Cache-Control}.
    @param responseCC: The stored response's C{Cache-Control}.
    @param pragmaNoCache: The request has C{Pragma: no-cache} (section
        5.4: treated as C{no-cache} only without C{Cache-Control}).
    """
    if requestCC.has(b"no-cache") or (pragmaNoCache and not requestCC.directives):
        # Section 5.2.1.4.
        return Decision.VALIDATE
    if responseCC.has(b"no-cache") and not responseCC.fieldNames(b"no-cache"):
        # Section 5.2.2.4.
        return Decision.VALIDATE
    maxAge = requestCC.seconds(b"max-age")
    if maxAge is not None and age > maxAge:
        # Section 5.2.1.1.
        return Decision.VALIDATE
    minFresh = requestCC.seconds(b"min-fresh")
    if minFresh is not None and lifetime - age < minFresh:
        # Section 5.2.1.3.
        return Decision.VALIDATE
    if age < lifetime:
        return Decision.FRESH
    if _forbidsStale(responseCC):
        return Decision.VALIDATE
    staleness = age - lifetime
    if requestCC.has(b"max-stale"):
        # Section 5.2.1.2: without a value, any staleness is accepted.
        maxStale = requestCC.seconds(b"max-stale")
        if requestCC.directives[b"max-stale"] is None or (
            maxStale is not None and staleness <= maxStale
        ):
            return Decision.STALE
    window = responseCC.seconds(b"stale-while-revalidate")
    allowed = limits.staleWhileRevalidate if window is None else float(window)
    if staleness < allowed:
        return Decision.STALE_REVALIDATE
    return Decision.VALIDATE


def staleIfErrorAllowed(
    age: float,
    lifetime: float,
    requestCC: CacheControl,
    responseCC: CacheControl,
    limits: FreshnessLimits,
) -> bool:
    """
    Whether a stale response may answer a request whose backend failed
    (RFC 5861 section 4: C{stale-if-error} of the response or the request,
    else the configured default; never past C{must-revalidate} and its
    kin).
    """
    if age < lifetime:
        return True
    if _forbidsStale(responseCC) or requestCC.has(b"no-cache"):
        return False
    window = requestCC.seconds(b"stale-if-error")
    if window is None:
        window = responseCC.seconds(b"stale-if-error")
    allowed = limits.staleIfError if window is None else float(window)
    return age - lifetime < allowed


def usefulFor(
    age: float,
    lifetime: float,
    responseCC: CacheControl,
    headers: Headers,
    limits: FreshnessLimits,
    validatorRetention: float,
) -> float:
    """
    How many more seconds a stored response can be of use, so that a store
    that expires its entries (Redis) keeps it that long and no longer: while
    fresh; then while it may be served stale (the larger of its
    C{stale-while-revalidate} and C{stale-if-error}, or the configured
    defaults; none past C{must-revalidate} and its kin); then, if it has a
    validator (C{ETag}, C{Last-Modified}), C{validatorRetention} more, so
    that a revalidation answered 304 still finds its body.

    A client's C{max-stale} may accept an older response than this: the
    store need not keep it for that.

    @param age: The response's current age.
    @param lifetime: Its freshness lifetime.
    @param responseCC: Its C{Cache-Control}.
    @param headers: Its stored headers.
    @param validatorRetention: Seconds a revalidatable response is kept
        past its usable life.
    @return: Seconds, 0 for a response of no further use.
    """
    stale = 0.0
    if not _forbidsStale(responseCC):
        whileRevalidate = responseCC.seconds(b"stale-while-revalidate")
        ifError = responseCC.seconds(b"stale-if-error")
        stale = max(
            limits.staleWhileRevalidate
            if whileRevalidate is None
            else float(whileRevalidate),
            limits.staleIfError if ifError is None else float(ifError),
        )
    remaining = max(0.0, lifetime + stale - age)
    if validators(headers):
        remaining += validatorRetention
    return remaining


def varyNames(headers: Headers) -> list[bytes]:
    """
    The lowercased field names listed in C{Vary} (C{b"*"} included).
    """
    names: list[bytes] = []
    for value in headerValues(headers, b"vary"):
        for part in value.split(b","):
            name = part.strip(b" \t").lower()
            if name and name not in names:
                names.append(name)
    return names


def secondaryKey(names: Sequence[bytes], requestHeaders: Headers) -> bytes:
    """
    The values of the request headers a response varies on, normalized
    (RFC 9111 section 4.1: whitespace around commas and case of the names
    do not matter), as one byte string: two requests select the same
    stored response when their secondary keys are equal.
    """
    if not names:
        return b""
    parts = []
    for name in names:
        values = headerValues(requestHeaders, name)
        joined = b",".join(
            part.strip(b" \t") for value in values for part in value.split(b",")
        )
        # An absent header differs from an empty one.
        parts.append(name + (b"=" + joined if values else b"!"))
    return b"\n".join(parts)


def storedHeaders(
    headers: Headers, responseCC: CacheControl
) -> list[tuple[bytes, bytes]]:
    """
    The headers kept with a stored response: not the connection-specific
    ones nor C{Age} (RFC 9111 section 3.1), nor those named by a qualified
    C{no-cache} or C{private} (sections 5.2.2.4 and 5.2.2.7).
    """
    named = responseCC.fieldNames(b"no-cache") | responseCC.fieldNames(b"private")
    return [
        (name, value)
        for name, value in headers
        if name.lower() not in _NOT_STORED and name.lower() not in named
    ]


def updateStoredHeaders(stored: Headers, fresh: Headers) -> list[tuple[bytes, bytes]]:
    """
    A stored response's headers updated from a 304 or HEAD response (RFC
    9111 section 3.2 and 4.3.4): every field of the new response replaces
    the stored fields of that name, except C{Content-Length} and those
    never stored.
    """
    replaced: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for name, value in fresh:
        lower = name.lower()
        if lower in _NOT_UPDATED:
            continue
        replaced.setdefault(lower, []).append((name, value))
    if not replaced:
        return list(stored)
    out = [(name, value) for name, value in stored if name.lower() not in replaced]
    for pairs in replaced.values():
        out.extend(pairs)
    return out


def notModified(requestHeaders: Headers, storedResponseHeaders: Headers) -> bool:
    """
    Whether a client's conditional request is answered 304 from a stored
    response (RFC 9111 section 4.3.2, RFC 9110 section 13.1):
    C{If-None-Match} by weak comparison with its C{ETag} (C{*} matches),
    else C{If-Modified-Since} against its C{Last-Modified} (or C{Date}).
    """
    ifNoneMatch = headerValues(requestHeaders, b"if-none-match")
    if ifNoneMatch:
        etag = _first(storedResponseHeaders, b"etag")
        joined = b", ".join(ifNoneMatch)
        if joined.strip(b" \t") == b"*":
            return True
        if etag is None:
            return False
        tag = etag.strip(b" \t")
        if tag.startswith(b"W/"):
            tag = tag[2:]
        return etagMatches(joined, tag, weak=True)
    since = _first(requestHeaders, b"if-modified-since")
    if since is None:
        return False
    sinceTime = parseHTTPDate(since)
    if sinceTime is None:
        return False
    modified = _first(storedResponseHeaders, b"last-modified") or _first(
        storedResponseHeaders, b"date"
    )
    modifiedTime = parseHTTPDate(modified) if modified is not None else None
    return modifiedTime is not None and modifiedTime <= sinceTime


def notModifiedHeaders(stored: Headers) -> list[tuple[bytes, bytes]]:
    """
    The headers of a 304 made from a stored response (RFC 9110 section
    15.4.5): those a 200 would have carried that describe its validity.
    """
    return [(n, v) for n, v in stored if n.lower() in _NOT_MODIFIED_HEADERS]


def validators(stored: Headers) -> list[tuple[bytes, bytes]]:
    """
    The conditional headers that revalidate a stored response (RFC 9111
    section 4.3.1): C{If-None-Match} with its C{ETag}, C{If-Modified-Since}
    with its C{Last-Modified}.
    """
    out = []
    etag = _first(stored, b"etag")
    if etag is not None:
        out.append((b"If-None-Match", etag))
    lastModified = _first(stored, b"last-modified")
    if lastModified is not None:
        out.append((b"If-Modified-Since", lastModified))
    return out


def validatorMatches(stored: Headers, notModifiedResponse: Headers) -> bool:
    """
    Whether a 304 selects a stored response for update (RFC 9111 section
    4.3.4): its strong C{ETag} equals the stored one; without an C{ETag},
    its C{Last-Modified} (if any) equals the stored one.
    """
    newTag = _first(notModifiedResponse, b"etag")
    if newTag is not None:
        oldTag = _first(stored, b"etag")
        return oldTag is not None and oldTag.strip() == newTag.strip()
    newModified = _first(notModifiedResponse, b"last-modified")
    if newModified is not None:
        oldModified = _first(stored, b"last-modified")
        return oldModified is not None and oldModified.strip() == newModified.strip()
    return True


def invalidationTargets(
    method: bytes,
    status: int,
    scheme: bytes,
    host: bytes,
    target: bytes,
    responseHeaders: Headers,
) -> list[bytes]:
    """
    The request targets (path and query) whose stored responses an unsafe
    request invalidates (RFC 9111 section 4.4): its own, and those of
    C{Location} and C{Content-Location} when they are of the same origin;
    only for a non-error (2xx or 3xx) response.

    @param scheme: The request's scheme (C{b"http"} or C{b"https"}).
    @param host: The request's C{Host}, lowercased.
    @param target: The request target (path and query).
    """
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    targets = [target]
    for name in (b"location", b"content-location"):
        value = _first(responseHeaders, name)
        if value is None:
            continue
        try:
            parts = urlsplit(value.strip().decode("ascii"))
        except UnicodeDecodeError:
            continue
        if parts.scheme or parts.netloc:
            # Absolute: same origin only (section 4.4, to stop a backend
            # from purging another site's entries).
            if (
                parts.scheme.encode("ascii").lower() != scheme
                or parts.netloc.encode("ascii").lower() != host
            ):
                continue
        path = parts.path.encode("ascii")
        if not path.startswith(b"/"):
            # Relative references resolve against the request target.
            base = target.split(b"?", 1)[0]
            path = base.rsplit(b"/", 1)[0] + b"/" + path
        query = parts.query.encode("ascii")
        full = path + (b"?" + query if query else b"")
        if full not in targets:
            targets.append(full)
    return targets
