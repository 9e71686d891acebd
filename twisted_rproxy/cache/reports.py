"""
What a capture (L{twisted_rproxy.cache.capture}) reports to the cache
that sent its request: L{CaptureReports}, the part of
L{twisted_rproxy.cache.resource.CacheResource} that stores a complete
response, marks an uncacheable key, or answers from a stored response
once a revalidation's 304 is in. And the interceptors of the responses the
cache passes on without capturing them: L{_Invalidator} (after an unsafe
request) and L{_Stamp} (C{Cache-Status}, RFC 9211).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.cache.capture import _Capture, appendCacheStatus, responsePairs
from twisted_rproxy.cache.flight import Flights
from twisted_rproxy.cache.keys import Pairs
from twisted_rproxy.cache.policy import FreshnessLimits, validatorMatches
from twisted_rproxy.cache.status import MISS, REVALIDATED, STALE
from twisted_rproxy.intercept import ResponseInterceptor
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.state import StateUnavailable

__all__ = ["CaptureReports"]

_log = Logger()


class CaptureReports:
    """
    The L{twisted_rproxy.cache.capture.CaptureOwner} methods of a cache
    (a mixin: the cache has the attributes and the methods declared here).
    """

    store: ICacheStore
    reactor: IReactorTime
    limits: FreshnessLimits
    _flights: Flights
    _held: dict[bytes, bytes]

    if TYPE_CHECKING:

        def landed(self, key: bytes) -> None: ...

        def _pass(
            self, request: Any, label: bytes, fwd: bytes, collapsed: bytes = b""
        ) -> None: ...

        def _serve(
            self,
            request: Any,
            entry: CacheEntry,
            label: bytes,
            fwd: bytes = b"",
            fwdStatus: int = 0,
            collapsed: bool | None = None,
            detail: bytes = b"",
        ) -> None: ...

    def unstored(self, capture: _Capture) -> bool:
        """
        A response not to be stored has its head: done with it at once
        unless something waits for its end (see L{CaptureOwner.unstored}).
        """
        key = capture.key
        if (
            capture.stale is not None
            or key in self._flights.flying
            or key in self._held
        ):
            return False
        if capture.status < 500:
            self._flights.uncacheable(key, False)
        return True

    def captureCompleted(self, capture: _Capture) -> None:
        """
        A response passed on to the client is complete: store it if it may
        be, or drop the stored one it replaces.
        """
        key = capture.key
        if capture.status < 500:
            self._flights.uncacheable(key, capture.storing)
        if capture.storing:
            stored = capture.commit(self.store, self.reactor.seconds(), self.limits)
            if isinstance(stored, Deferred):
                # Those waiting for it look once it is there.
                stored.addErrback(self._writeFailed)
                stored.addBoth(lambda _: self.landed(key))
                return
        elif capture.stale is not None and capture.status < 500:
            # The new response replaces the stored one, which it can't.
            self._written(self.store.remove(key))
        self.landed(key)

    def _written(self, result: object) -> None:
        # A store's write goes on by itself; logged if it fails for more
        # than an outage (which the shared state logs once).
        if isinstance(result, Deferred):
            result.addErrback(self._writeFailed)

    def _writeFailed(self, failure: Failure) -> None:
        if not failure.check(StateUnavailable):
            _log.failure("Cache: a store operation failed", failure)

    def captureIntercepted(self, capture: _Capture) -> None:
        """
        A 304 to a revalidation, or an error a stale response replaces, is
        complete: answer from what is stored.
        """
        stale = capture.stale
        assert stale is not None
        label = capture.intercepted
        assert label is not None
        request = capture.request
        if label == REVALIDATED:
            if not validatorMatches(stale.headers, capture.headers):
                # The 304 is not for what is stored (RFC 9111 section
                # 4.3.4): drop it and ask again, unconditionally.
                self._written(self.store.remove(stale.key))
                self.landed(capture.key)
                capture.restore()
                if not capture.background:
                    self._pass(request, MISS, capture.fwd)
                return
            capture.freshen(stale, self.reactor.seconds(), self.limits)
            self._written(self.store.resized(stale))
        self.landed(capture.key)
        capture.restore()
        if not capture.background:
            self._serve(
                request,
                stale,
                label,
                fwd=capture.fwd,
                fwdStatus=capture.status,
                collapsed=capture.collapsed,
                detail=b"stale-if-error" if label == STALE else b"",
            )


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


class _Stamp(ResponseInterceptor):
    """
    Adds the cache's C{Cache-Status} member to a response the cache passes
    through without capturing it, once its head is final; then steps
    aside.
    """

    __slots__ = ("member",)

    def __init__(self, request: Any, member: bytes) -> None:
        """
        @param request: The request passed through.
        @param member: The member (see
            L{twisted_rproxy.cache.status.cacheStatusMember}).
        """
        self.member = member
        ResponseInterceptor.__init__(self, request)

    def head(self) -> None:
        appendCacheStatus(self.request, self.member)
        self.detach()
