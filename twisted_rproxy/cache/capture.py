"""
The response side of what the cache sends to its child: L{_Capture}
records a miss (or a revalidation) as it streams to the client, for the
store; L{_Invalidator} watches the status of the response to an unsafe
request. Both are L{ResponseInterceptor}s, so that whatever writes the
response (the proxy's fast path with C{passedHeaders} included) goes
through them.

What to do with what was captured is the cache's (L{CaptureOwner}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from twisted_rproxy.cache.keys import Pairs
from twisted_rproxy.cache.policy import CacheControl, isStorable, parseCacheControl
from twisted_rproxy.cache.status import MISS, REVALIDATED, STALE, STATUS_HEADER
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.intercept import ResponseInterceptor
from twisted_rproxy.messages import CacheEntry

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


class CaptureOwner(Protocol):
    """
    What a L{_Capture} reads of its cache and reports to it.
    """

    reactor: IReactorTime
    config: CacheConfig
    statusHeader: bool
    stats: dict[bytes, int]

    def requestCacheControl(self, request: IRequest) -> CacheControl:
        """
        The C{Cache-Control} directives of a request.
        """

    def staleIfError(self, request: IRequest, stale: CacheEntry) -> bool:
        """
        Whether C{stale} may answer C{request} in place of an error.
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
    @ivar storing: Whether the response is accumulated for the store.
    @ivar done: Whether the response completed or was abandoned.
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
        "chunks",
        "size",
        "status",
        "reason",
        "headers",
        "responseCC",
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
        self.chunks: list[bytes] = []
        self.size = 0
        self.status = 0
        self.reason = b""
        self.headers: Pairs = []
        self.responseCC: CacheControl | None = None
        ResponseInterceptor.__init__(self, request)

    def head(self) -> None:
        request = self.request
        owner = self.owner
        status = self.status = request.code
        self.reason = request.code_message
        headers = self.headers = responsePairs(request)
        stale = self.stale
        if stale is not None:
            if status == 304 and self.revalidating:
                self.intercepted = REVALIDATED
            elif status >= 500 and owner.staleIfError(request, stale):
                self.intercepted = STALE
            if self.intercepted is not None:
                return
        responseCC = self.responseCC = parseCacheControl(
            v for n, v in headers if n.lower() == b"cache-control"
        )
        storable = isStorable(
            b"GET",
            status,
            owner.requestCacheControl(request),
            responseCC,
            headers,
            request.requestHeaders.hasHeader(b"authorization"),
        )
        if storable:
            length = None
            for name, value in headers:
                if name.lower() == b"content-length":
                    length = int(value) if value.isdigit() else None
            storable = length is None or length <= owner.config.maxObjectSize
        self.storing = storable
        if owner.statusHeader and not self.background:
            request.responseHeaders.setRawHeaders(STATUS_HEADER, [MISS])
        owner.stats[MISS] += 1
        request.cacheStatus = "miss"

    def body(self, data: bytes) -> None:
        if self.intercepted is not None:
            return
        if self.storing and data:
            self.size += len(data)
            if self.size > self.owner.config.maxObjectSize:
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


class _Invalidator(ResponseInterceptor):
    """
    Watches the response to an unsafe request, to invalidate what it
    changed (RFC 9111 section 4.4) once its status is known; then steps
    aside.
    """

    __slots__ = ("invalidate",)

    def __init__(
        self, request: Any, invalidate: Callable[[Any, int, Pairs], None]
    ) -> None:
        """
        @param request: The unsafe request.
        @param invalidate: Called with the request, the response's status
            and headers.
        """
        self.invalidate = invalidate
        ResponseInterceptor.__init__(self, request)

    def head(self) -> None:
        request = self.request
        self.invalidate(request, request.code, responsePairs(request))
        self.detach()
