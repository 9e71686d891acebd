"""
L{CacheResource}: an RFC 9111 shared cache in front of any resource
(usually a route's L{twisted_rproxy.proxy.ProxyResource}).

How a response is captured: like L{twisted_rproxy.filters._FilteredResponse},
a L{_Capture} is installed as the request's own C{write} and C{finish}, so
that whatever writes the response (the proxy's fast path with
C{passedHeaders} included) goes through it: the response streams to the
client as it arrives and is accumulated for the store (abandoned past
C{maxObjectSize}). On a revalidation, a 304 (or, within C{stale-if-error},
a 5xx) is kept from the client and the stored response answers instead.

A hit never touches the child: the stored head is handed to the proxy's
head writer as C{passedHeaders} (plus C{Age}) and the body written at once.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers as HeadersObject
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET, Request

from twisted_rproxy.cache.policy import (
    SAFE_METHODS,
    CacheControl,
    Decision,
    FreshnessLimits,
    correctedInitialAge,
    currentAge,
    decide,
    freshnessLifetime,
    invalidationTargets,
    isStorable,
    notModified,
    notModifiedHeaders,
    parseCacheControl,
    secondaryKey,
    staleIfErrorAllowed,
    storedHeaders,
    updateStoredHeaders,
    validatorMatches,
    validators,
    varyNames,
)
from twisted_rproxy.cache.store import CacheEntry
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.pages import reasonPhrase, renderError
from twisted_rproxy.rules.dates import parseHTTPDate
from twisted_rproxy.rules.ranges import parseRange

__all__ = ["CacheResource", "HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"]

_log = Logger()

#: The values of the C{X-Cache} status header.
HIT = b"HIT"
MISS = b"MISS"
STALE = b"STALE"
REVALIDATED = b"REVALIDATED"
BYPASS = b"BYPASS"

STATUS_HEADER = b"X-Cache"

#: Request headers that make a response depend on the client's own state;
#: replaced by the cache's validators when it revalidates.
_CONDITIONAL = (b"if-none-match", b"if-modified-since", b"range", b"if-range")

_Pairs = list[tuple[bytes, bytes]]


def _requestPairs(request: IRequest) -> _Pairs:
    return [
        (name.lower(), value)
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]


def _responsePairs(request: Any) -> _Pairs:
    """
    Every header of a response about to be written: those the proxy passes
    as they are, then those of C{responseHeaders}.
    """
    pairs = list(getattr(request, "passedHeaders", None) or ())
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name.lower() == b"x-cache":
            continue
        for value in values:
            pairs.append((name, value))
    return pairs


class _Flight:
    """
    One backend request for a key that others wait on (coalescing).
    """

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[Callable[[], None]] = []


class _Capture:
    """
    The response side of one request the cache sent to its child:
    installed as the request's C{write} and C{finish}.
    """

    def __init__(
        self,
        cache: CacheResource,
        request: Any,
        key: bytes,
        stale: CacheEntry | None,
        revalidating: bool,
        saved: dict[bytes, list[bytes]],
        background: bool = False,
    ) -> None:
        self.cache = cache
        self.request = request
        self.key = key
        self.stale = stale
        self.revalidating = revalidating
        self.saved = saved
        self.background = background
        self.requestTime = cache.reactor.seconds()
        self.headDone = False
        self.done = False
        self.intercepted: bytes | None = None
        self.storing = False
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.reason = b""
        self.headers: _Pairs = []
        self.responseCC: CacheControl | None = None
        self.downWrite: Callable[[bytes], None] = request.write
        self.downFinish: Callable[[], None] = request.finish
        request.write = self.write
        request.finish = self.finish

    def _head(self) -> None:
        self.headDone = True
        request = self.request
        cache = self.cache
        status = self.status = request.code
        self.reason = request.code_message
        headers = self.headers = _responsePairs(request)
        stale = self.stale
        if stale is not None:
            if status == 304 and self.revalidating:
                self.intercepted = REVALIDATED
            elif status >= 500 and cache._staleIfError(request, stale):
                self.intercepted = STALE
            if self.intercepted is not None:
                return
        requestCC = cache._requestCC(request)
        responseCC = self.responseCC = parseCacheControl(
            v for n, v in headers if n.lower() == b"cache-control"
        )
        storable = isStorable(
            b"GET",
            status,
            requestCC,
            responseCC,
            headers,
            request.requestHeaders.hasHeader(b"authorization"),
        )
        if storable:
            length = None
            for name, value in headers:
                if name.lower() == b"content-length":
                    length = int(value) if value.isdigit() else None
            storable = length is None or length <= cache.config.maxObjectSize
        self.storing = storable
        if cache.statusHeader and not self.background:
            request.responseHeaders.setRawHeaders(STATUS_HEADER, [MISS])
        cache.stats[MISS] += 1
        request.cacheStatus = "miss"

    def write(self, data: bytes) -> None:
        if not self.headDone:
            self._head()
        if self.intercepted is not None:
            return
        if self.storing and data:
            self.size += len(data)
            if self.size > self.cache.config.maxObjectSize:
                # Too large after all: pass the rest through, uncached.
                self.storing = False
                self.chunks = []
            else:
                self.chunks.append(data)
        self.downWrite(data)

    def abandon(self, reason: object = None) -> None:
        """
        The response will not complete (the client or the backend went):
        store nothing, release the waiters.
        """
        if self.done:
            return
        self.done = True
        self.chunks = []
        self.cache._landed(self.key)

    def finish(self) -> None:
        if not self.headDone:
            self._head()
        if self.done:
            self.downFinish()
            return
        self.done = True
        cache = self.cache
        request = self.request
        if self.intercepted is not None:
            stale = self.stale
            assert stale is not None
            request.write = self.downWrite
            request.finish = self.downFinish
            if self.intercepted == REVALIDATED:
                if not validatorMatches(stale.headers, self.headers):
                    # The 304 is not for what is stored (RFC 9111 section
                    # 4.3.4): drop it and ask again, unconditionally.
                    cache.store.remove(stale.key)
                    cache._landed(self.key)
                    self._restore()
                    if not self.background:
                        cache._pass(request, MISS)
                    return
                cache._freshen(stale, self.headers, self.requestTime)
            cache._landed(self.key)
            self._restore()
            if not self.background:
                cache._serve(request, stale, self.intercepted)
            return
        if self.storing:
            cache._storeResponse(self)
        elif self.stale is not None and self.status < 500:
            # The new response replaces the stored one, which it can't.
            cache.store.remove(self.key)
        self.chunks = []
        cache._landed(self.key)
        self.downFinish()

    def _restore(self) -> None:
        """
        Put back the client's own conditional headers, replaced by the
        cache's validators for the revalidation.
        """
        request = self.request
        request.passedHeaders = None
        request.responseHeaders = HeadersObject()
        request.code = 200
        request.code_message = b"OK"
        headers = request.requestHeaders
        headers.removeHeader(b"if-none-match")
        headers.removeHeader(b"if-modified-since")
        for name, values in self.saved.items():
            headers.setRawHeaders(name, values)


class _BackgroundChannel:
    """
    Stands for a client connection in a background revalidation: there is
    none, and aborting means the response is abandoned.
    """

    # What twisted.web's Request reads of its channel's site.
    _parsePOSTFormSubmission = False

    def __init__(self) -> None:
        self.transport = self
        self.site = self
        self.capture: _Capture | None = None

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 0)

    getHost = getPeer

    def isSecure(self) -> bool:
        return False

    def abortConnection(self) -> None:
        if self.capture is not None:
            self.capture.abandon()

    loseConnection = abortConnection

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class _BackgroundRequest(Request):
    """
    A copy of a client's request that the cache sends to its child on its
    own, to refresh a stale response (stale-while-revalidate): what is
    written to it goes nowhere but the cache.
    """

    def __init__(self, original: Any) -> None:
        channel = _BackgroundChannel()
        Request.__init__(self, channel)
        self.backgroundChannel = channel
        self.method = b"GET"
        self.uri = original.uri
        self.path = original.path
        self.clientproto = original.clientproto
        self.prepath = list(original.prepath)
        self.postpath = list(original.postpath)
        self.client = original.getClientAddress()
        self._secure = bool(original.isSecure())
        self.content = None
        self.args = {}
        for name, values in original.requestHeaders.getAllRawHeaders():
            if name.lower() not in _CONDITIONAL:
                self.requestHeaders.setRawHeaders(name, list(values))

    def isSecure(self) -> bool:
        return self._secure

    def write(self, data: bytes) -> None:
        # So that a response cut short is aborted, not finished as an
        # error page (see ProxyResource).
        self.startedWriting = 1

    def finish(self) -> None:
        self.finished = 1

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class _Invalidator:
    """
    Watches the response to an unsafe request, to invalidate what it
    changed (RFC 9111 section 4.4) once its status is known.
    """

    def __init__(self, cache: CacheResource, request: Any) -> None:
        self.cache = cache
        self.request = request
        self.done = False
        self.downWrite: Callable[[bytes], None] = request.write
        self.downFinish: Callable[[], None] = request.finish
        request.write = self.write
        request.finish = self.finish

    def _head(self) -> None:
        self.done = True
        request = self.request
        self.cache._invalidate(request, request.code, _responsePairs(request))

    def write(self, data: bytes) -> None:
        if not self.done:
            self._head()
        self.downWrite(data)

    def finish(self) -> None:
        if not self.done:
            self._head()
        self.downFinish()


class CacheResource(Resource):
    """
    A shared HTTP cache (RFC 9111) in front of C{resource}.

    @ivar resource: What misses go to (traversal goes on in it).
    @ivar store: Where responses are kept.
    @ivar config: The cache's settings.
    @ivar stats: Responses by C{X-Cache} status, counted.
    """

    isLeaf = True

    def __init__(
        self,
        resource: IResource,
        store: ICacheStore,
        reactor: IReactorTime,
        config: CacheConfig | None = None,
    ) -> None:
        """
        @param resource: See L{resource}.
        @param store: See L{store}.
        @param reactor: The clock (ages, coalescing waits).
        @param config: See L{config}; the defaults of L{CacheConfig}
            when not given.
        """
        super().__init__()  # type: ignore[no-untyped-call]  # python/mypy#16653
        self.resource = resource
        self.store = store
        self.reactor = reactor
        self.config = config if config is not None else CacheConfig(name="cache")
        config = self.config
        self.limits = FreshnessLimits(
            heuristicFraction=config.heuristicFraction,
            heuristicMax=config.heuristicMax,
            defaultTTL=config.defaultTTL,
            staleWhileRevalidate=config.staleWhileRevalidate,
            staleIfError=config.staleIfError,
        )
        self.statusHeader = config.statusHeader
        parts = set(config.key)
        self._keyMethod = "method" in parts
        self._keyScheme = "scheme" in parts
        self._keyHost = "host" in parts
        self._keyPath = "path" in parts
        self._keyQuery = "query" in parts
        self._keyHeaders = [
            part[7:].lower().encode("ascii")
            for part in config.key
            if part.lower().startswith("header:")
        ]
        self._purgeFrom = [ipaddress.ip_network(n) for n in config.purgeFrom]
        self._flights: dict[bytes, _Flight] = {}
        self.stats: dict[bytes, int] = dict.fromkeys(
            (HIT, MISS, STALE, REVALIDATED, BYPASS), 0
        )

    # -- keys ---------------------------------------------------------------

    def _urlKey(self, scheme: bytes, host: bytes, target: bytes) -> bytes:
        """
        The part of a key that names a URL (no method, no headers).
        """
        path, _, query = target.partition(b"?")
        key = b""
        if self._keyScheme:
            key += scheme + b"://"
        if self._keyHost:
            key += host
        if self._keyPath:
            key += path
        if self._keyQuery and query:
            key += b"?" + query
        return key

    @staticmethod
    def _scheme(request: IRequest) -> bytes:
        return b"https" if request.isSecure() else b"http"

    @staticmethod
    def _host(request: IRequest) -> bytes:
        values = request.requestHeaders.getRawHeaders(b"host")
        return values[0].lower() if values else b""

    def keyFor(self, request: IRequest) -> bytes:
        """
        The primary cache key of a request (a C{HEAD} is looked up as the
        C{GET} of the same target).
        """
        key = self._urlKey(self._scheme(request), self._host(request), request.uri)
        if self._keyMethod:
            key = b"GET " + key
        if self._keyHeaders:
            getRawHeaders = request.requestHeaders.getRawHeaders
            for name in self._keyHeaders:
                key += b"\n" + name + b"=" + b",".join(getRawHeaders(name) or ())
        return key

    # -- purging ------------------------------------------------------------

    def purge(self, target: bytes | str, prefix: bool = False) -> int:
        """
        Remove stored responses.

        @param target: A URL as the key names it (with the default key,
            C{"http://example.com/path?query"}); or a whole key.
        @param prefix: Remove every key whose URL starts with C{target}.
        @return: How many responses were removed.
        """
        if isinstance(target, str):
            target = target.encode("utf-8")
        if not target.startswith(b"GET ") and self._keyMethod:
            target = b"GET " + target
        if prefix:
            return self.store.purge(target)
        count = self.store.remove(target)
        if self._keyHeaders:
            count += self.store.purge(target + b"\n")
        return count

    def _renderPurge(self, request: Any) -> None:
        client = request.getClientAddress()
        address = getattr(client, "host", "")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        if ip is None or not any(ip in network for network in self._purgeFrom):
            renderError(request, 403)
            return
        target = request.uri
        prefix = target.endswith(b"*")
        if prefix:
            target = target[:-1]
        url = self._urlKey(self._scheme(request), self._host(request), target)
        count = self.purge(url, prefix)
        body = json.dumps({"purged": count}).encode("ascii") + b"\n"
        request.setResponseCode(200)
        headers = request.responseHeaders
        headers.setRawHeaders(b"content-type", [b"application/json"])
        headers.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        request.write(body)
        request.finish()

    def _invalidate(self, request: Any, status: int, headers: _Pairs) -> None:
        scheme, host = self._scheme(request), self._host(request)
        for target in invalidationTargets(
            request.method, status, scheme, host, request.uri, headers
        ):
            self.purge(self._urlKey(scheme, host, target))

    # -- serving ------------------------------------------------------------

    def render(self, request: IRequest) -> object:
        req: Any = request
        method = request.method
        if method == b"GET" or method == b"HEAD":
            self._lookup(req, False)
        elif method == b"PURGE":
            self._renderPurge(req)
        else:
            if method not in SAFE_METHODS:
                _Invalidator(self, req)
            self._pass(req, BYPASS)
        return NOT_DONE_YET

    def _requestCC(self, request: IRequest) -> CacheControl:
        return parseCacheControl(
            request.requestHeaders.getRawHeaders(b"cache-control") or ()
        )

    def _select(
        self, entries: Sequence[CacheEntry], request: IRequest
    ) -> CacheEntry | None:
        """
        The stored response that a request selects (RFC 9111 section 4.1):
        the most recent of those whose varying headers match.
        """
        chosen: CacheEntry | None = None
        pairs: _Pairs | None = None
        for entry in entries:
            if entry.varyOn:
                if pairs is None:
                    pairs = _requestPairs(request)
                if secondaryKey(entry.varyOn, pairs) != entry.variant:
                    continue
            if chosen is None or entry.responseTime > chosen.responseTime:
                chosen = entry
        return chosen

    def _lookup(self, request: Any, coalesced: bool) -> None:
        if getattr(request, "_disconnected", False):
            return
        key = self.keyFor(request)
        entries = self.store.get(key)
        entry = self._select(entries, request) if entries else None
        requestHeaders = request.requestHeaders
        ccValues = requestHeaders.getRawHeaders(b"cache-control")
        requestCC = parseCacheControl(ccValues) if ccValues else _NO_DIRECTIVES
        if entry is not None:
            now = self.reactor.seconds()
            age = currentAge(entry.initialAge, entry.responseTime, now)
            pragma = (
                not ccValues
                and b"no-cache"
                in b",".join(requestHeaders.getRawHeaders(b"pragma") or ()).lower()
            )
            decision = decide(
                age, entry.lifetime, requestCC, entry.cacheControl, self.limits, pragma
            )
            if decision is Decision.FRESH:
                self._serve(request, entry, HIT)
                return
            if decision is Decision.STALE:
                self._serve(request, entry, STALE)
                return
            if decision is Decision.STALE_REVALIDATE:
                self._serve(request, entry, STALE)
                self._refresh(request, key, entry)
                return
        if requestCC.has(b"only-if-cached"):
            # RFC 9111 section 5.2.1.7.
            renderError(request, 504)
            return
        if request.method != b"GET" or requestCC.has(b"no-store"):
            self._pass(request, MISS)
            return
        if entry is None and requestHeaders.hasHeader(b"range"):
            # Only complete responses are stored: a range of something not
            # stored goes to the backend as it is.
            self._pass(request, MISS)
            return
        flight = self._flights.get(key)
        if flight is not None:
            if self.config.coalesce and not coalesced:
                self._wait(request, flight)
                return
        elif self.config.coalesce:
            self._flights[key] = _Flight()
        self._fetch(request, key, entry)

    def _wait(self, request: Any, flight: _Flight) -> None:
        """
        Wait, at most C{coalesceWait}, for the backend request in flight
        for the same key; then look again (and go to the backend if what
        came back was not stored).
        """
        timer: list[IDelayedCall] = []

        def wake() -> None:
            if timer:
                call = timer.pop()
                if call.active():
                    call.cancel()
            self._lookup(request, True)

        def timedOut() -> None:
            timer.clear()
            if wake in flight.waiters:
                flight.waiters.remove(wake)
            self._lookup(request, True)

        flight.waiters.append(wake)
        timer.append(self.reactor.callLater(self.config.coalesceWait, timedOut))

    def _landed(self, key: bytes) -> None:
        """
        The backend request for C{key} is over: wake its waiters.
        """
        flight = self._flights.pop(key, None)
        if flight is None:
            return
        for waiter in flight.waiters:
            try:
                waiter()
            except Exception:
                _log.failure("A coalesced request failed", Failure())

    def _pass(self, request: Any, label: bytes) -> None:
        """
        Send a request to the child without storing its response.
        """
        self.stats[label] += 1
        request.cacheStatus = label.decode("ascii").lower()
        if self.statusHeader:
            request.responseHeaders.setRawHeaders(STATUS_HEADER, [label])
        self._renderChild(request)

    def _renderChild(self, request: Any) -> None:
        try:
            request.render(getChildForRequest(self.resource, request))
        except Exception:
            request.processingFailed(Failure())

    def _fetch(self, request: Any, key: bytes, stale: CacheEntry | None) -> None:
        """
        Send a request to the child and capture the response; with a stored
        response, as a revalidation with its validators.
        """
        saved: dict[bytes, list[bytes]] = {}
        revalidating = False
        if stale is not None:
            requestHeaders = request.requestHeaders
            for name in _CONDITIONAL:
                values = requestHeaders.getRawHeaders(name)
                if values is not None:
                    saved[name] = values
                    requestHeaders.removeHeader(name)
            for name, value in validators(stale.headers):
                requestHeaders.setRawHeaders(name, [value])
                revalidating = True
        capture = _Capture(self, request, key, stale, revalidating, saved)
        request.notifyFinish().addErrback(capture.abandon)
        self._renderChild(request)

    def _refresh(self, request: Any, key: bytes, stale: CacheEntry) -> None:
        """
        Revalidate a stale response in the background.
        """
        if key in self._flights:
            return
        self._flights[key] = _Flight()
        capture: _Capture | None = None
        try:
            background = _BackgroundRequest(request)
            for name, value in validators(stale.headers):
                background.requestHeaders.setRawHeaders(name, [value])
            capture = _Capture(self, background, key, stale, True, {}, background=True)
            background.backgroundChannel.capture = capture
            resource = getChildForRequest(self.resource, background)
            background.render(resource)  # type: ignore[no-untyped-call]
        except Exception:
            _log.failure("Background revalidation failed", Failure())
            if capture is not None:
                capture.abandon()
            else:
                self._landed(key)

    def _staleIfError(self, request: IRequest, stale: CacheEntry) -> bool:
        now = self.reactor.seconds()
        return staleIfErrorAllowed(
            currentAge(stale.initialAge, stale.responseTime, now),
            stale.lifetime,
            self._requestCC(request),
            stale.cacheControl,
            self.limits,
        )

    def _freshen(self, entry: CacheEntry, headers: _Pairs, requestTime: float) -> None:
        """
        Update a stored response from a 304 (RFC 9111 section 4.3.4).
        """
        now = self.reactor.seconds()
        entry.headers = updateStoredHeaders(entry.headers, headers)
        entry.cacheControl = parseCacheControl(
            v for n, v in entry.headers if n.lower() == b"cache-control"
        )
        entry.lifetime = freshnessLifetime(
            entry.status, entry.cacheControl, entry.headers, self.limits
        )
        entry.initialAge = correctedInitialAge(headers, requestTime, now)
        entry.responseTime = now
        self.store.resized(entry)

    def _storeResponse(self, capture: _Capture) -> None:
        request = capture.request
        now = self.reactor.seconds()
        responseCC = capture.responseCC
        assert responseCC is not None
        body = b"".join(capture.chunks)
        headers = storedHeaders(capture.headers, responseCC)
        lengthValue = b"%d" % (len(body),)
        for index, (name, _) in enumerate(headers):
            if name.lower() == b"content-length":
                headers[index] = (name, lengthValue)
                break
        else:
            headers.append((b"Content-Length", lengthValue))
        if not any(name.lower() == b"date" for name, _ in headers):
            from twisted_rproxy.server import httpDate

            headers.append((b"Date", httpDate(now)))
        names = varyNames(headers)
        variant = secondaryKey(names, _requestPairs(request)) if names else b""
        entry = CacheEntry(
            key=capture.key,
            variant=variant,
            varyOn=tuple(names),
            status=capture.status,
            reason=capture.reason,
            headers=headers,
            body=body,
            responseTime=now,
            initialAge=correctedInitialAge(capture.headers, capture.requestTime, now),
            lifetime=freshnessLifetime(
                capture.status, responseCC, headers, self.limits
            ),
            cacheControl=responseCC,
        )
        self.store.put(entry)

    def _serve(self, request: Any, entry: CacheEntry, label: bytes) -> None:
        """
        Answer a request from a stored response: 200 (or its stored
        status), 304 for the client's matching conditional request, 206 or
        416 for its range.
        """
        if getattr(request, "_disconnected", False):
            return
        self.stats[label] += 1
        # For the metrics (rproxy_cache_requests_total).
        request.cacheStatus = label.decode("ascii").lower()
        status = entry.status
        reason = entry.reason
        headers = entry.headers
        body = entry.body
        requestHeaders = request.requestHeaders
        conditional = requestHeaders.hasHeader(
            b"if-none-match"
        ) or requestHeaders.hasHeader(b"if-modified-since")
        if conditional and 200 <= status < 300:
            if notModified(_requestPairs(request), headers):
                status, reason, body = 304, b"Not Modified", b""
                headers = notModifiedHeaders(headers)
        elif status == 200 and request.method == b"GET":
            rangeValues = requestHeaders.getRawHeaders(b"range")
            if rangeValues and self._ifRange(request, entry):
                ranges = parseRange(rangeValues[0], len(body))
                if ranges == []:
                    status, reason = 416, reasonPhrase(416)
                    headers = [
                        (n, v)
                        for n, v in headers
                        if n.lower() in (b"date", b"etag", b"last-modified")
                    ] + [
                        (b"Content-Range", b"bytes */%d" % (len(body),)),
                        (b"Content-Length", b"0"),
                    ]
                    body = b""
                elif ranges is not None and len(ranges) == 1:
                    first, last = ranges[0]
                    status, reason = 206, reasonPhrase(206)
                    full = len(body)
                    body = body[first : last + 1]
                    headers = [
                        (n, v) for n, v in headers if n.lower() != b"content-length"
                    ] + [
                        (b"Content-Range", b"bytes %d-%d/%d" % (first, last, full)),
                        (b"Content-Length", b"%d" % (len(body),)),
                    ]
        age = currentAge(entry.initialAge, entry.responseTime, self.reactor.seconds())
        passed = headers + [(b"Age", b"%d" % (age,))]
        if self.statusHeader:
            passed.append((STATUS_HEADER, label))
        request.code = status
        request.code_message = reason or reasonPhrase(status)
        if hasattr(request, "passedHeaders"):
            request.passedHeaders = passed
        else:
            responseHeaders = request.responseHeaders
            for name, value in passed:
                responseHeaders.addRawHeader(name, value)
        request.write(body if request.method != b"HEAD" else b"")
        request.finish()

    @staticmethod
    def _ifRange(request: IRequest, entry: CacheEntry) -> bool:
        """
        Whether the C{If-Range} of a request (if any) lets its C{Range}
        apply (RFC 9110 section 13.1.5): a strong C{ETag} or the exact
        C{Last-Modified} of the stored response.
        """
        values = request.requestHeaders.getRawHeaders(b"if-range")
        if not values:
            return True
        condition = values[0].strip()
        for name, value in entry.headers:
            lower = name.lower()
            if condition.startswith(b'"') or condition.startswith(b"W/"):
                if lower == b"etag":
                    return (
                        not condition.startswith(b"W/") and value.strip() == condition
                    )
            elif lower == b"last-modified":
                stamp = parseHTTPDate(condition)
                return stamp is not None and stamp == parseHTTPDate(value)
        return False


_NO_DIRECTIVES = parseCacheControl(())
