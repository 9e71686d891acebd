"""
What a request is stored under: the primary key the configuration's
C{key} parts make of it (L{CacheKeys}), the stored variant its varying
headers select (L{selectEntry}, RFC 9111 section 4.1); and removing what
is stored under a URL: C{PURGE} requests (L{renderPurge}) and the
invalidation after an unsafe request (L{invalidate}, RFC 9111 section 4.4).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, FirstError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.cache.policy import invalidationTargets, secondaryKey
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.pages import renderError
from twisted_rproxy.rules.networks import Network, inNetworks

__all__ = [
    "CODING",
    "CacheKeys",
    "Fields",
    "Pairs",
    "invalidate",
    "renderPurge",
    "requestPairs",
    "variantKey",
]

#: Header fields as (name, value) pairs, a value per line.
Pairs = list[tuple[bytes, bytes]]

#: Header fields by name, as C{Headers.getAllRawHeaders} gives them.
Fields = Mapping[bytes, Sequence[bytes]]

#: In a stored response's C{varyOn}, in place of C{accept-encoding}: the
#: response varies with the content coding negotiated from the request
#: (C{gzip}, C{br} or C{identity}), not with the header as written, so that
#: a URL has one stored variant per coding whatever the spellings of
#: C{Accept-Encoding} (L{twisted_rproxy.cache.coding}). No field name has a
#: colon.
CODING = b":coding"

#: What negotiates a request's coding from its header pairs, for a
#: response stored by coding.
Negotiate = Callable[[Pairs], bytes]

_log = Logger()


def _total(counts: Sequence[int | Deferred[int]]) -> int | Deferred[int]:
    """
    The sum of counts a store answered at once or later: at once if they
    all were; else a Deferred, failing as the first of them that failed.
    """
    if not any(isinstance(count, Deferred) for count in counts):
        return sum(count for count in counts if not isinstance(count, Deferred))

    def unwrap(failure: Failure) -> Failure:
        first = failure.value
        if isinstance(first, FirstError):
            inner: Failure = first.subFailure
            return inner
        return failure

    waiting = [
        count if isinstance(count, Deferred) else succeed(count) for count in counts
    ]
    return gatherResults(waiting, consumeErrors=True).addCallbacks(sum, unwrap)


def requestPairs(request: IRequest) -> Pairs:
    """
    A request's header fields, names lowercased.
    """
    return [
        (name.lower(), value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]


def variantKey(
    names: Sequence[bytes], pairs: Pairs, negotiate: Negotiate | None
) -> bytes | None:
    """
    The secondary key of a request for a response varying on C{names}
    (see L{secondaryKey}); with L{CODING} among them, the coding
    C{negotiate} gives the request stands for its C{Accept-Encoding}.

    @return: The key; L{None} for a response stored by coding when there is
        nothing to negotiate with (it selects no request).
    """
    if CODING not in names:
        return secondaryKey(names, pairs)
    if negotiate is None:
        return None
    key = secondaryKey([name for name in names if name != CODING], pairs)
    return key + (b"\n" if key else b"") + CODING + b"=" + negotiate(pairs)


def selectEntry(
    entries: Sequence[CacheEntry],
    request: IRequest,
    negotiate: Negotiate | None = None,
) -> CacheEntry | None:
    """
    The stored response that a request selects (RFC 9111 section 4.1):
    the most recent of those whose varying headers match.

    @param negotiate: The coding of a request, for the responses stored by
        coding (L{CODING}); without it, those select no request.
    """
    chosen: CacheEntry | None = None
    pairs: Pairs | None = None
    for entry in entries:
        if entry.varyOn:
            if pairs is None:
                pairs = requestPairs(request)
            if variantKey(entry.varyOn, pairs, negotiate) != entry.variant:
                continue
        if chosen is None or entry.responseTime > chosen.responseTime:
            chosen = entry
    return chosen


class CacheKeys:
    """
    The primary keys of a cache, made of the parts its configuration
    names (C{method}, C{scheme}, C{host}, C{path}, C{query},
    C{header:NAME}).
    """

    __slots__ = ("_method", "_scheme", "_host", "_path", "_query", "_headers")

    def __init__(self, parts: Sequence[str]) -> None:
        """
        @param parts: The configuration's C{key}.
        """
        names = set(parts)
        self._method = "method" in names
        self._scheme = "scheme" in names
        self._host = "host" in names
        self._path = "path" in names
        self._query = "query" in names
        self._headers = [
            part[7:].lower().encode("ascii")
            for part in parts
            if part.lower().startswith("header:")
        ]

    def urlKey(self, scheme: bytes, host: bytes, target: bytes) -> bytes:
        """
        The part of a key that names a URL (no method, no headers).
        """
        path, _, query = target.partition(b"?")
        key = b""
        if self._scheme:
            key += scheme + b"://"
        if self._host:
            key += host
        if self._path:
            key += path
        if self._query and query:
            key += b"?" + query
        return key

    @staticmethod
    def scheme(request: IRequest) -> bytes:
        """
        The scheme a request came with.
        """
        return b"https" if request.isSecure() else b"http"

    @staticmethod
    def host(request: IRequest) -> bytes:
        """
        The host a request names, lowercased; empty without one.
        """
        values = request.requestHeaders.getRawHeaders(b"host")
        return values[0].lower() if values else b""

    def keyFor(self, request: IRequest, fields: Fields | None = None) -> bytes:
        """
        The primary cache key of a request (a C{HEAD} is looked up as the
        C{GET} of the same target).

        @param fields: The request's header fields as C{getAllRawHeaders}
            names them (canonical capitalization), if the caller has them.
        """
        # urlKey(scheme(request), host(request), request.uri), inline: this
        # is on the path of every lookup.
        key = b"GET " if self._method else b""
        if self._scheme:
            key += b"https://" if request.isSecure() else b"http://"
        if self._host:
            values = (
                fields.get(b"Host")
                if fields is not None
                else request.requestHeaders.getRawHeaders(b"host")
            )
            if values:
                key += values[0].lower()
        path, _, query = request.uri.partition(b"?")
        if self._path:
            key += path
        if self._query and query:
            key += b"?" + query
        if self._headers:
            getRawHeaders = request.requestHeaders.getRawHeaders
            for name in self._headers:
                key += b"\n" + name + b"=" + b",".join(getRawHeaders(name) or ())
        return key

    def purge(
        self, store: ICacheStore, target: bytes | str, prefix: bool
    ) -> int | Deferred[int]:
        """
        Remove stored responses from C{store}.

        @param target: A URL as the key names it, or a whole key.
        @param prefix: Remove every key whose URL starts with C{target}.
        @return: How many responses were removed, or (for a store that
            answers later) a Deferred firing with it.
        """
        if isinstance(target, str):
            target = target.encode("utf-8")
        if not target.startswith(b"GET ") and self._method:
            target = b"GET " + target
        if prefix:
            return store.purge(target)
        if self._headers:
            return _total([store.remove(target), store.purge(target + b"\n")])
        return store.remove(target)


def renderPurge(
    request: Any, keys: CacheKeys, store: ICacheStore, allowed: Sequence[Network]
) -> None:
    """
    Answer a C{PURGE} request: remove what is stored under its target (a
    final C{*} makes it a prefix) if its client is in one of the C{allowed}
    networks, and say how many in a JSON body; 403 otherwise.
    """
    client = request.getClientAddress()
    address = getattr(client, "host", "")
    if not inNetworks(address, allowed):
        renderError(request, 403)
        return
    target = request.uri
    prefix = target.endswith(b"*")
    if prefix:
        target = target[:-1]
    url = keys.urlKey(keys.scheme(request), keys.host(request), target)
    count = keys.purge(store, url, prefix)
    if isinstance(count, Deferred):
        # Answered once the store has the count (and so has removed them).
        count.addCallbacks(
            partial(_answerPurge, request, 200),
            partial(_purgeFailed, request),
        )
        return
    _answerPurge(request, 200, count)


def _answerPurge(request: Any, status: int, count: int | None) -> None:
    if requestGone(request):
        return
    if count is None:
        data: dict[str, object] = {
            "purged": None,
            "error": "the cache store could not be reached: nothing is known "
            "to be removed",
        }
    else:
        data = {"purged": count}
    body = json.dumps(data).encode("ascii") + b"\n"
    request.setResponseCode(status)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"application/json"])
    headers.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    request.write(body)
    request.finish()


def _purgeFailed(request: Any, failure: Failure) -> None:
    _log.warn(
        "PURGE {uri}: the cache store failed ({error}); answered 503",
        uri=request.uri,
        error=failure.getErrorMessage() or type(failure.value).__name__,
    )
    _answerPurge(request, 503, None)


def invalidate(
    keys: CacheKeys, store: ICacheStore, request: Any, status: int, headers: Pairs
) -> None:
    """
    Remove what the response to an unsafe request made stale (RFC 9111
    section 4.4): its target's, and its C{Location} and
    C{Content-Location} if they are on the same host.
    """
    scheme, host = keys.scheme(request), keys.host(request)
    for target in invalidationTargets(
        request.method, status, scheme, host, request.uri, headers
    ):
        removed = keys.purge(store, keys.urlKey(scheme, host, target), False)
        if isinstance(removed, Deferred):
            # Nobody waits for it; a store that cannot be reached has said
            # so already (the shared state logs its outages).
            removed.addErrback(_invalidationFailed, target)


def _invalidationFailed(failure: Failure, target: bytes) -> None:
    _log.debug(
        "Invalidating {target!r} failed: {error}",
        target=target,
        error=failure.getErrorMessage(),
    )
