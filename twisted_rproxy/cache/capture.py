"""
The response side of what the cache sends to its child: L{_Capture}
records a miss (or a revalidation) as it streams to the client, for the
store. It is a L{ResponseInterceptor}, so that whatever writes the
response (the proxy's fast path with C{passedHeaders} included) goes
through it; so are L{twisted_rproxy.cache.reports}' L{_Invalidator} and
L{_Stamp}, which watch responses the cache does not capture.

What to do with what was captured is the cache's (L{CaptureOwner}).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.cache.background import CONDITIONAL
from twisted_rproxy.cache.keys import CODING, Pairs, requestPairs, variantKey
from twisted_rproxy.cache.policy import (
    CacheControl,
    FreshnessLimits,
    correctedInitialAge,
    freshnessLifetime,
    isStorable,
    storedHeaders,
    updateStoredHeaders,
    varyNames,
)
from twisted_rproxy.cache.status import (
    CACHE_STATUS,
    FWD_MISS,
    MISS,
    REVALIDATED,
    STALE,
    STATUS_HEADER,
    cacheStatusMember,
)
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.intercept import ResponseInterceptor
from twisted_rproxy.interfaces import ICacheBodyWriter, ICacheStore
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.rules.cachecontrol import directivesFor, freshnessHeaders

__all__: list[str] = []


def responsePairs(request: Any) -> Pairs:
    """
    Every header of a response about to be written: those the proxy passes
    as they are, then those of C{responseHeaders} (but C{X-Cache}).
    """
    pairs = list(getattr(request, "passedHeaders", None) or ())
    for name, values in request.responseHeaders.getAllRawHeaders():
        if name.lower() == b"x-cache":
            continue
        for value in values:
            pairs.append((name, value))
    return pairs


def appendCacheStatus(request: Any, member: bytes) -> None:
    """
    Add a member to the C{Cache-Status} of a response whose head is final
    but not yet written: after the backend's own (RFC 9211 section 2: the
    list grows towards the client), whether the proxy passes those as they
    are or they are in C{responseHeaders}.
    """
    passed = getattr(request, "passedHeaders", None)
    if passed is not None:
        passed.append((CACHE_STATUS, member))
    else:
        request.responseHeaders.addRawHeader(CACHE_STATUS, member)


def _dated(headers: Pairs, now: float) -> Pairs:
    """
    C{headers}, with a C{Date} of C{now} added if they have none (as the
    store keeps them).
    """
    if not any(name.lower() == b"date" for name, _ in headers):
        # Below this layer; imported here only for the stored head's date.
        from twisted_rproxy.server import httpDate

        headers.append((b"Date", httpDate(now)))
    return headers


#: The directives of the responses seen, by their fields that say them
#: and the target list (most responses of a backend say the same): parsed
#: once. Bounded: emptied when full. Parsed directives are never changed.
_DIRECTIVES: dict[tuple[object, ...], CacheControl] = {}
_DIRECTIVES_KEPT = 256


#: Where the fields that L{directivesFor} reads (C{Cache-Control} and the
#: targeted ones) are among the headers of a response, with their names
#: lowercased, by the target list and the names of those headers in order
#: (most responses of a backend name the same headers in the same order):
#: found once, then read at their places without lowercasing every name.
#: Bounded: emptied when full.
_PLACES: dict[
    tuple[tuple[bytes, ...], tuple[bytes, ...]], tuple[tuple[int, bytes], ...]
] = {}

_headerName = itemgetter(0)


def _directivesOf(
    passed: Sequence[tuple[bytes, bytes]],
    responseHeaders: Headers,
    targeted: tuple[bytes, ...],
) -> CacheControl:
    """
    L{directivesFor} the headers of a response about to be written (see
    L{responsePairs}), remembered for the fields of them it reads; read
    where they are, without gathering every header first (a response not
    to be stored needs no more of them).

    @param passed: The headers the proxy passes as they are.
    """
    names = tuple(map(_headerName, passed))
    layout = (targeted, names)
    places = _PLACES.get(layout)
    if places is None:
        places = tuple(
            (index, lower)
            for index, lower in enumerate(name.lower() for name in names)
            if lower == b"cache-control" or lower in targeted
        )
        if len(_PLACES) >= _DIRECTIVES_KEPT:
            _PLACES.clear()
        _PLACES[layout] = places
    fields = []
    for index, lower in places:
        fields.append((lower, passed[index][1]))
    for name, values in responseHeaders.getAllRawHeaders():
        lower = name.lower()
        if lower == b"cache-control" or (lower in targeted and lower != b"x-cache"):
            for value in values:
                fields.append((lower, value))
    key = (targeted, *fields)
    found = _DIRECTIVES.get(key)
    if found is None:
        found = directivesFor(fields, targeted)
        if len(_DIRECTIVES) >= _DIRECTIVES_KEPT:
            _DIRECTIVES.clear()
        _DIRECTIVES[key] = found
    return found


class CaptureOwner(Protocol):
    """
    What a L{_Capture} reads of its cache and reports to it.
    """

    reactor: IReactorTime
    store: ICacheStore
    config: CacheConfig
    statusHeader: bool
    stats: dict[bytes, int]
    targeted: tuple[bytes, ...]
    limits: FreshnessLimits
    statusName: bytes

    def requestCacheControl(self, request: IRequest) -> CacheControl:
        """
        The C{Cache-Control} directives of a request.
        """

    def staleIfError(self, request: IRequest, stale: CacheEntry) -> bool:
        """
        Whether C{stale} may answer C{request} in place of an error.
        """

    def unstored(self, capture: _Capture) -> bool:
        """
        The head of a response passed on to the client says it is not to
        be stored: if nothing waits for its end (no stored response it
        replaces, no requests waiting for it, no lock across proxies), the
        cache is done with it, as with a complete one.

        @return: Whether it is done with it.
        """

    def landed(self, key: bytes) -> None:
        """
        The backend request for C{key} is over.
        """

    def captureCompleted(self, capture: _Capture) -> None:
        """
        A response passed on to the client is complete: store it, or not.
        """

    def captureIntercepted(self, capture: _Capture) -> None:
        """
        A response kept from the client is complete (its C{intercepted}
        says why): answer the client from what is stored.
        """


class _Capture(ResponseInterceptor):
    """
    The response side of one request the cache sent to its child.

    @ivar intercepted: L{REVALIDATED} or L{STALE} when the response is kept
        from the client (a 304 to a revalidation; an error that a stale
        response may replace), else L{None}.
    @ivar storing: Whether the response is accumulated for the store: in
        C{chunks}, or, for a store that takes bodies as they arrive (its
        optional C{openWriter}), by C{writer}.
    @ivar writer: The store's L{ICacheBodyWriter} taking the body, if any.
    @ivar done: Whether the response completed or was abandoned.
    @ivar fwd: Why the request went forward (RFC 9211 section 2.2).
    @ivar collapsed: L{False} when it waited for another's backend request
        in vain first, else L{None}.
    @ivar coding: The coding negotiated for the request when the response
        varies with it (L{twisted_rproxy.cache.coding.Encoding} says so):
        it is stored by that coding, not by C{Accept-Encoding} as written;
        else L{None}.
    """

    __slots__ = (
        "owner",
        "key",
        "stale",
        "revalidating",
        "saved",
        "background",
        "requestTime",
        "done",
        "intercepted",
        "storing",
        "writer",
        "chunks",
        "size",
        "status",
        "reason",
        "headers",
        "responseCC",
        "fwd",
        "collapsed",
        "coding",
        "requestCC",
        "watching",
    )

    def __init__(
        self,
        owner: CaptureOwner,
        request: Any,
        key: bytes,
        stale: CacheEntry | None,
        revalidating: bool,
        saved: dict[bytes, list[bytes]],
        background: bool = False,
        fwd: bytes = FWD_MISS,
        collapsed: bool | None = None,
    ) -> None:
        """
        @param owner: The cache.
        @param request: The request sent to the child.
        @param key: Its primary key.
        @param stale: The stored response it revalidates (or that may
            replace an error), or L{None}.
        @param revalidating: Whether the request carries the validators of
            C{stale}.
        @param saved: The client's own conditional headers, replaced by the
            validators for a revalidation (L{restore} puts them back).
        @param background: Whether C{request} is a background revalidation
            (whose response no client sees).
        @param fwd: See L{fwd}.
        @param collapsed: See L{collapsed}.
        """
        self.owner = owner
        self.key = key
        self.stale = stale
        self.revalidating = revalidating
        self.saved = saved
        self.background = background
        self.requestTime = owner.reactor.seconds()
        self.done = False
        self.intercepted: bytes | None = None
        self.storing = False
        self.writer: ICacheBodyWriter | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.reason = b""
        #: Every header of the response (L{responsePairs}), gathered when
        #: it may be stored or answers a revalidation.
        self.headers: Pairs = []
        self.responseCC: CacheControl | None = None
        self.fwd = fwd
        self.collapsed = collapsed
        self.coding: bytes | None = None
        #: The request's directives, when the cache parsed them already.
        self.requestCC: CacheControl | None = None
        #: Whether L{watchClient} was called.
        self.watching = False
        # ResponseInterceptor.__init__, inline: one call less per miss.
        self.request = request
        self.headDone = False
        self._pending = True
        self.downWrite = request.write
        self.downFinish = request.finish
        request.write = self.write
        request.finish = self.finish

    def head(self) -> None:
        request = self.request
        owner = self.owner
        status = self.status = request.code
        self.reason = request.code_message
        passed = getattr(request, "passedHeaders", None) or ()
        stale = self.stale
        if stale is not None:
            self.headers = responsePairs(request)
            if status == 304 and self.revalidating:
                self.intercepted = REVALIDATED
            elif status >= 500 and owner.staleIfError(request, stale):
                self.intercepted = STALE
            if self.intercepted is not None:
                return
        # RFC 9213: a targeted field, when valid, instead of Cache-Control
        # and Expires.
        responseCC = self.responseCC = _directivesOf(
            passed, request.responseHeaders, owner.targeted
        )
        # The most common refusal first (RFC 9111 section 5.2.2.5), before
        # what the others need (every header).
        storable = False
        if b"no-store" not in responseCC.directives:
            headers = self.headers
            if stale is None:
                headers = self.headers = responsePairs(request)
            requestCC = self.requestCC
            storable = isStorable(
                b"GET",
                status,
                requestCC
                if requestCC is not None
                else owner.requestCacheControl(request),
                responseCC,
                freshnessHeaders(headers, responseCC),
                request.requestHeaders.hasHeader(b"authorization"),
            )
        if storable:
            length = None
            for name, value in self.headers:
                if name.lower() == b"content-length":
                    length = int(value) if value.isdigit() else None
            storable = length is None or length <= owner.config.maxObjectSize
        if storable:
            storable = self._openWriter(owner)
        self.storing = storable
        if owner.statusHeader and not self.background:
            request.responseHeaders.setRawHeaders(STATUS_HEADER, [MISS])
            now = owner.reactor.seconds()
            appendCacheStatus(
                request, self.forwardStatus(now, owner.limits, owner.statusName)
            )
        owner.stats[MISS] += 1
        request.cacheStatus = "miss"
        if storable:
            if not self.watching:
                # Abandoned if the client goes: what is kept of the body
                # is released.
                self.watchClient()
            return
        if owner.unstored(self):
            # Nothing of the body is kept, nothing waits for its end: its
            # writes go on without passing through here.
            self.done = True
            self.detach()

    def watchClient(self) -> None:
        """
        Abandon the capture if the client goes before the response is
        complete: called once the child has rendered the request when the
        cache holds something for its key (requests waiting for it, a lock
        across proxies), else by L{head} when the body is to be kept (see
        L{CaptureOwner.unstored}). Once only.

        A request of the proxy (L{twisted_rproxy.interfaces.IProxyRequest})
        says so through its C{onConnectionLost}, after whatever the child
        set there (the proxy's exchange with the backend): cheaper than a
        Deferred of C{notifyFinish}, which other requests get.
        """
        if self.done or self.watching:
            return
        self.watching = True
        request = self.request
        if requestGone(request):
            self.abandon()
            return
        try:
            current = request.onConnectionLost
        except AttributeError:
            request.notifyFinish().addErrback(self.abandon)
            return
        abandon = self.abandon
        if current is None:
            request.onConnectionLost = abandon
            return

        def both(reason: object) -> None:
            abandon(reason)
            current(reason)

        request.onConnectionLost = both

    def _openWriter(self, owner: CaptureOwner) -> bool:
        """
        With a store that takes bodies as they arrive, begin writing this
        one to it, so that a large body is never held here.

        @return: Whether the response is still to be stored (the store may
            decline it).
        """
        opener = getattr(owner.store, "openWriter", None)
        if opener is None:
            return True
        self.writer = opener(self.storedEntry(owner.reactor.seconds(), owner.limits))
        return self.writer is not None

    def body(self, data: bytes) -> None:
        if self.intercepted is not None:
            return
        if self.storing and data:
            self.size += len(data)
            if self.size > self.owner.config.maxObjectSize:
                # Too large after all: pass the rest through, uncached.
                self.storing = False
                self.chunks = []
                self._discard()
            elif self.writer is not None:
                self.writer.write(data)
            else:
                self.chunks.append(data)
        self.downWrite(data)

    def _discard(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.discard()

    def abandon(self, reason: object = None) -> None:
        """
        The response will not complete (the client or the backend went):
        store nothing, release the waiters.
        """
        if self.done:
            return
        self.done = True
        self.chunks = []
        self._discard()
        self.owner.landed(self.key)

    def end(self) -> None:
        if self.done:
            self.downFinish()
            return
        self.done = True
        if self.intercepted is not None:
            self.detach()
            self.owner.captureIntercepted(self)
            return
        self.owner.captureCompleted(self)
        self.chunks = []
        self.downFinish()

    def storedEntry(self, now: float, limits: FreshnessLimits) -> CacheEntry:
        """
        The entry the complete response becomes: its headers as stored (RFC
        9111 section 3.1), its actual C{Content-Length}, a C{Date} if it had
        none, its variant, age and freshness.

        @param now: The time it completed.
        """
        responseCC = self.responseCC
        assert responseCC is not None
        # With a writer, the body is the store's already.
        body = b"" if self.writer is not None else b"".join(self.chunks)
        headers = storedHeaders(self.headers, responseCC)
        lengthValue = b"%d" % (self.size if self.writer is not None else len(body),)
        for index, (name, _) in enumerate(headers):
            if name.lower() == b"content-length":
                headers[index] = (name, lengthValue)
                break
        else:
            headers.append((b"Content-Length", lengthValue))
        headers = _dated(headers, now)
        names = varyNames(headers)
        coding = self.coding
        if coding is not None:
            names = [CODING if name == b"accept-encoding" else name for name in names]
        variant = b""
        if names:
            pairs = requestPairs(self.request)
            variant = variantKey(names, pairs, lambda _: coding or b"") or b""
        return CacheEntry(
            key=self.key,
            variant=variant,
            varyOn=tuple(names),
            status=self.status,
            reason=self.reason,
            headers=headers,
            body=body,
            responseTime=now,
            initialAge=correctedInitialAge(self.headers, self.requestTime, now),
            lifetime=self._lifetime(headers, limits),
            cacheControl=responseCC,
        )

    def commit(
        self, store: ICacheStore, now: float, limits: FreshnessLimits
    ) -> bool | Deferred[bool]:
        """
        Store the complete response in C{store}: finish its writer, or put
        the entry.

        @param now: The time it completed.
        @return: What C{put} (or the writer's C{finish}) returns.
        """
        entry = self.storedEntry(now, limits)
        writer, self.writer = self.writer, None
        if writer is not None:
            return writer.finish(entry)
        return store.put(entry)

    def freshen(self, entry: CacheEntry, now: float, limits: FreshnessLimits) -> None:
        """
        Update a stored response from this 304 (RFC 9111 section 4.3.4):
        its headers, directives (a targeted field's, RFC 9213), freshness
        and age.

        @param now: The time the 304 completed.
        """
        entry.headers = updateStoredHeaders(entry.headers, self.headers)
        entry.cacheControl = responseCC = directivesFor(
            entry.headers, self.owner.targeted
        )
        entry.lifetime = freshnessLifetime(
            entry.status,
            responseCC,
            freshnessHeaders(entry.headers, responseCC),
            limits,
        )
        entry.initialAge = correctedInitialAge(self.headers, self.requestTime, now)
        entry.responseTime = now

    def _lifetime(self, headers: Pairs, limits: FreshnessLimits) -> float:
        responseCC = self.responseCC
        assert responseCC is not None
        return freshnessLifetime(
            self.status, responseCC, freshnessHeaders(headers, responseCC), limits
        )

    def forwardStatus(self, now: float, limits: FreshnessLimits, name: bytes) -> bytes:
        """
        The cache's C{Cache-Status} member (RFC 9211) for this response,
        which went forward and is passed on: why, whether it is stored, and
        then its freshness as it will be stored.

        @param now: The time its head is final.
        @param name: The cache's name, serialized.
        """
        ttl = None
        if self.storing:
            ttl = self._lifetime(_dated(list(self.headers), now), limits)
            ttl -= correctedInitialAge(self.headers, self.requestTime, now)
        return cacheStatusMember(
            name, fwd=self.fwd, ttl=ttl, stored=self.storing, collapsed=self.collapsed
        )

    def swapConditionals(self, validators: Pairs) -> None:
        """
        Make the request a revalidation of C{stale}: the client's own
        conditional headers (kept for L{restore}) replaced by C{validators}.
        """
        headers = self.request.requestHeaders
        for name in CONDITIONAL:
            values = headers.getRawHeaders(name)
            if values is not None:
                self.saved[name] = values
                headers.removeHeader(name)
        for name, value in validators:
            headers.setRawHeaders(name, [value])
            self.revalidating = True

    def restore(self) -> None:
        """
        Make the request as it was before the intercepted response: no
        response head yet, and the client's own conditional headers back
        (replaced by the cache's validators for the revalidation).
        """
        request = self.request
        request.passedHeaders = None
        request.responseHeaders = Headers()
        request.code = 200
        request.code_message = b"OK"
        headers = request.requestHeaders
        headers.removeHeader(b"if-none-match")
        headers.removeHeader(b"if-modified-since")
        for name, values in self.saved.items():
            headers.setRawHeaders(name, values)
