"""
L{CacheResource}: an RFC 9111 shared cache in front of any resource
(usually a route's L{twisted_rproxy.proxy.ProxyResource}).

A lookup that finds a fresh (or usable stale) response serves it
(L{twisted_rproxy.cache.serving}); a miss goes to the child, at most one at
a time per key when coalescing (L{twisted_rproxy.cache.flight}), and its
response is captured as it streams to the client
(L{twisted_rproxy.cache.capture}), abandoned past C{maxObjectSize}. On a
revalidation, a 304 (or, within C{stale-if-error}, a 5xx) is kept from the
client and the stored response answers instead; with
C{stale-while-revalidate}, the revalidation is a request of its own
(L{twisted_rproxy.cache.background}). Keys, variants and purging are in
L{twisted_rproxy.cache.keys}.

A store may answer at once (memory) or later (Redis): the request then
waits, and is dropped if its client went; a lookup that fails is a miss.
With a store shared by several proxies (L{SharedFlights}), a cold key's
misses are coalesced across them too. With a coder (L{storeCoded}),
compressed variants are stored (L{twisted_rproxy.cache.coding}).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.cache.background import _BackgroundRequest
from twisted_rproxy.cache.capture import _Capture
from twisted_rproxy.cache.coding import (
    Encoding,
    VariantCoder,
    requestCoding,
    revalidators,
)
from twisted_rproxy.cache.flight import Flights, SharedFlights, awaitShared
from twisted_rproxy.cache.keys import (
    CacheKeys,
    Fields,
    Negotiate,
    invalidate,
    renderPurge,
    requestPairs,
    selectEntry,
)
from twisted_rproxy.cache.policy import (
    SAFE_METHODS,
    CacheControl,
    Decision,
    FreshnessLimits,
    currentAge,
    decide,
    parseCacheControl,
    staleIfErrorAllowed,
)
from twisted_rproxy.cache.reports import CaptureReports, _Invalidator, _Stamp
from twisted_rproxy.cache.serving import serveEntry
from twisted_rproxy.cache.status import (
    BYPASS,
    FWD_METHOD,
    FWD_MISS,
    FWD_REQUEST,
    FWD_STALE,
    FWD_VARY_MISS,
    HIT,
    MISS,
    REVALIDATED,
    STALE,
    STATUS_HEADER,
    cacheStatusMember,
)
from twisted_rproxy.cache.store import CacheEntry
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.pages import renderError
from twisted_rproxy.rules.cachecontrol import directivesFor
from twisted_rproxy.rules.networks import parseNetworks
from twisted_rproxy.rules.structured import serializeNameItem
from twisted_rproxy.state import StateUnavailable

__all__ = ["CacheResource", "HIT", "MISS", "STALE", "REVALIDATED", "BYPASS"]

_log = Logger()

_NO_DIRECTIVES = parseCacheControl(())

#: What a lookup that failed answers: no entries, and no way to tell a
#: miss of the URI from one of its variants (RFC 9211 section 2.2).
_LOOKUP_FAILED: list[CacheEntry] = []


class CacheResource(CaptureReports, Resource):
    """
    A shared HTTP cache (RFC 9111) in front of C{resource}.

    @ivar resource: What misses go to (traversal goes on in it).
    @ivar store: Where responses are kept.
    @ivar config: The cache's settings.
    @ivar stats: Responses by C{X-Cache} status, counted.
    @ivar targeted: The lowercased names of the targeted fields (RFC 9213)
        whose directives this cache obeys before C{Cache-Control}.
    @ivar statusName: Its name in C{Cache-Status} (RFC 9211 section 2).
    @ivar coder: What compresses the responses it stores into their coded
        variants (L{twisted_rproxy.cache.coding}), or L{None}.
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
        self.limits = FreshnessLimits.of(config)
        self.statusHeader = config.statusHeader
        self.targeted = tuple(name.lower().encode("ascii") for name in config.targeted)
        self.statusName = serializeNameItem(config.name)
        self._keys = CacheKeys(config.key)
        self._purgeFrom = parseNetworks(config.purgeFrom)
        self._flights = Flights(reactor)
        self._shared = store if isinstance(store, SharedFlights) else None
        # The locks this cache holds of cold keys it fetches, by key.
        self._held: dict[bytes, bytes] = {}
        self.stats: dict[bytes, int] = dict.fromkeys(
            (HIT, MISS, STALE, REVALIDATED, BYPASS), 0
        )
        self.coder: VariantCoder | None = None
        self._negotiate: Negotiate | None = None

    def storeCoded(self, coder: VariantCoder) -> None:
        """
        Compress the responses fetched from now on with C{coder} as they
        enter the cache, and store their coded variants by coding (see
        L{twisted_rproxy.cache.coding}).
        """
        self.coder = coder
        self._negotiate = partial(requestCoding, coder)

    def keyFor(self, request: IRequest) -> bytes:
        """
        The primary cache key of a request (a C{HEAD} is looked up as the
        C{GET} of the same target).
        """
        return self._keys.keyFor(request)

    def purge(self, target: bytes | str, prefix: bool = False) -> int | Deferred[int]:
        """
        Remove stored responses.

        @param target: A URL as the key names it (with the default key,
            C{"http://example.com/path?query"}); or a whole key.
        @param prefix: Remove every key whose URL starts with C{target}.
        @return: How many responses were removed; with a store that
            answers later, a Deferred firing with it.
        """
        return self._keys.purge(self.store, target, prefix)

    # -- serving ------------------------------------------------------------

    def render(self, request: IRequest) -> object:
        req: Any = request
        method = request.method
        if method == b"GET" or method == b"HEAD":
            self._look(req, b"")
        elif method == b"PURGE":
            renderPurge(req, self._keys, self.store, self._purgeFrom)
        else:
            if method not in SAFE_METHODS:
                _Invalidator(req, partial(invalidate, self._keys, self.store))
            self._pass(req, BYPASS, FWD_METHOD)
        return NOT_DONE_YET

    def requestCacheControl(self, request: IRequest) -> CacheControl:
        return parseCacheControl(
            request.requestHeaders.getRawHeaders(b"cache-control") or ()
        )

    def _lookup(self, request: Any, collapsed: bytes) -> None:
        """
        Look a request up.

        @param collapsed: Why it went forward the first time it was looked
            up, when it waited for another's backend request since;
            C{b""} for its first look.
        """
        if requestGone(request):
            return
        self._look(request, collapsed)

    def _look(self, request: Any, collapsed: bytes) -> None:
        """
        L{_lookup}, for a request known to be still connected.
        """
        # The request's fields by name, as getAllRawHeaders spells them
        # (canonical capitalization): one call for the few read here.
        fields = dict(request.requestHeaders.getAllRawHeaders())
        key = self._keys.keyFor(request, fields)
        entries = self.store.get(key)
        if not isinstance(entries, list):
            entries.addErrback(self._lookupFailed)
            entries.addCallback(self._looked, request, key, collapsed)
            entries.addErrback(self._failedLater, request, key)
            return
        self._decide(entries, request, key, collapsed, fields)

    def _lookupFailed(self, failure: Failure) -> list[CacheEntry]:
        if not failure.check(StateUnavailable):
            _log.failure("Cache lookup failed: served as a miss", failure)
        return _LOOKUP_FAILED

    def _failedLater(self, failure: Failure, request: Any, key: bytes) -> None:
        """
        Something broke while going on with a request after the store
        answered: answer it with an error page (as twisted.web would, had it
        raised in C{render}) and release what it held.
        """
        _log.failure("Cache: answering a request failed", failure)
        if key in self._held or key in self._flights:
            # A flight left in the air would hold up the key's next misses.
            self.landed(key)
        if not requestGone(request) and not request.startedWriting:
            request.processingFailed(failure)

    def _looked(
        self, entries: list[CacheEntry], request: Any, key: bytes, collapsed: bytes
    ) -> None:
        """
        Go on with a request once the store answered its lookup, unless its
        client went meanwhile.

        @param collapsed: See L{_lookup}.
        """
        if requestGone(request):
            return
        self._decide(entries, request, key, collapsed)

    def _decide(
        self,
        entries: list[CacheEntry],
        request: Any,
        key: bytes,
        collapsed: bytes,
        fields: Fields | None = None,
    ) -> None:
        """
        Serve a request from C{entries}, what is stored under its key, or
        send it forward.

        @param collapsed: See L{_lookup}.
        @param fields: The request's header fields (see L{CacheKeys.keyFor}),
            if read already.
        """
        entry = selectEntry(entries, request, self._negotiate) if entries else None
        requestHeaders = (
            fields
            if fields is not None
            else dict(request.requestHeaders.getAllRawHeaders())
        )
        ccValues = requestHeaders.get(b"Cache-Control")
        requestCC = parseCacheControl(ccValues) if ccValues else _NO_DIRECTIVES
        if entry is not None:
            responseCC = entry.cacheControl
            if responseCC.field is None and self.targeted:
                # Read back from a store that keeps no parsed directives:
                # chosen once (RFC 9213), then kept with the entry.
                entry.cacheControl = responseCC = directivesFor(
                    entry.headers, self.targeted
                )
            now = self.reactor.seconds()
            age = currentAge(entry.initialAge, entry.responseTime, now)
            pragma = (
                not ccValues
                and b"no-cache" in b",".join(requestHeaders.get(b"Pragma", ())).lower()
            )
            decision = decide(
                age, entry.lifetime, requestCC, responseCC, self.limits, pragma
            )
            if decision is Decision.FRESH and not collapsed:
                self._serve(request, entry, HIT)
                return
            if decision is not Decision.VALIDATE:
                self._serveLooked(request, key, entry, decision, collapsed)
                return
            fwd = FWD_STALE
            if self.statusHeader and (
                decide(age, entry.lifetime, _NO_DIRECTIVES, responseCC, self.limits)
                is not Decision.VALIDATE
            ):
                # Usable but for what the request asked (RFC 9211 2.2).
                fwd = FWD_REQUEST
        elif entries is _LOOKUP_FAILED:
            fwd = FWD_MISS
        else:
            fwd = FWD_VARY_MISS if entries else FWD_MISS
        asked = requestCC.directives
        if b"only-if-cached" in asked:
            # RFC 9111 section 5.2.1.7.
            renderError(request, 504)
            return
        if request.method != b"GET" or b"no-store" in asked:
            self._pass(request, MISS, fwd, collapsed)
            return
        if entry is None and b"Range" in requestHeaders:
            # Only complete responses are stored: a range of something not
            # stored goes to the backend as it is.
            self._pass(request, MISS, fwd, collapsed)
            return
        flights = self._flights
        if self.config.coalesce and flights.coalesces(key):
            if key not in flights:
                flights.start(key)
                if entry is None and not collapsed and self._shared is not None:
                    self._claim(self._shared, request, key, fwd)
                    return
            elif not collapsed:
                # Wait for the backend request in flight for the same key,
                # at most coalesceWait; then look again (and go to the
                # backend if what came back was not stored).
                wake = partial(self._lookup, request, fwd)
                flights.wait(key, wake, self.config.coalesceWait)
                return
        elif not entries and self.coder is None and flights.unstoredLately(key):
            # Nothing stored, and its last response could not be, a moment
            # ago: passed as that one was (the same X-Cache and
            # Cache-Status), without capturing what is sure to be the same.
            self._pass(request, MISS, fwd, collapsed)
            return
        self._fetch(request, key, entry, fwd, False if collapsed else None, requestCC)

    def _serveLooked(
        self,
        request: Any,
        key: bytes,
        entry: CacheEntry,
        decision: Decision,
        collapsed: bytes,
    ) -> None:
        """
        Serve a stored response that C{decision} allows (fresh, or stale
        without validation); when the request waited for another's backend
        request, it is said to have gone forward, collapsed (RFC 9211
        section 2.6), else to be a hit.
        """
        refresh = decision is Decision.STALE_REVALIDATE
        label = HIT if decision is Decision.FRESH else STALE
        self._serve(
            request,
            entry,
            label,
            fwd=collapsed,
            collapsed=True if collapsed else None,
            detail=b"stale-while-revalidate" if refresh else b"",
        )
        if refresh:
            self._refresh(request, key, entry)

    def _claim(
        self, shared: SharedFlights, request: Any, key: bytes, fwd: bytes
    ) -> None:
        """
        A cold key that other proxies may be fetching too: fetch it if this
        one takes its lock; else wait (at most coalesceWait) for the entry
        the holder stores, and fetch only if none comes.

        @param fwd: Why the request goes forward (RFC 9211 section 2.2).
        """
        waited: list[bool] = []

        def fetch() -> None:
            if requestGone(request):
                self.landed(key)
                return
            self._fetch(request, key, None, fwd, False if waited else None)

        def found(entries: list[CacheEntry]) -> bool:
            if requestGone(request):
                self.landed(key)
                return True
            if not entries or selectEntry(entries, request, self._negotiate) is None:
                return False
            # The local waiters look again (and find it too).
            self.landed(key)
            self._decide(entries, request, key, fwd)
            return True

        def claimed(token: bytes | None) -> None:
            if token is None:
                waited.append(True)
                awaitShared(
                    self.reactor, shared, key, self.config.coalesceWait, found, fetch
                )
                return
            if token:
                self._held[key] = token
            fetch()

        claiming = shared.claimFetch(key, self.config.coalesceWait)
        claiming.addCallback(claimed).addErrback(self._failedLater, request, key)

    def landed(self, key: bytes) -> None:
        """
        The backend request for C{key} is over (its response stored, if it
        was to be): release its lock across proxies, wake its waiters.
        """
        token = self._held.pop(key, None)
        if token is not None and self._shared is not None:
            self._shared.releaseFetch(key, token)
        self._flights.land(key)

    def _pass(
        self, request: Any, label: bytes, fwd: bytes, collapsed: bytes = b""
    ) -> None:
        """
        Send a request to the child without storing its response.

        @param fwd: Why it goes forward (RFC 9211 section 2.2).
        @param collapsed: See L{_lookup}.
        """
        self.stats[label] += 1
        request.cacheStatus = label.decode("ascii").lower()
        if self.statusHeader:
            request.responseHeaders.setRawHeaders(STATUS_HEADER, [label])
            waited = False if collapsed else None
            _Stamp(
                request, cacheStatusMember(self.statusName, fwd=fwd, collapsed=waited)
            )
        self._renderChild(request)

    def _renderChild(self, request: Any) -> None:
        resource = self.resource
        try:
            if not resource.isLeaf:
                resource = getChildForRequest(resource, request)
            request.render(resource)
        except Exception:
            request.processingFailed(Failure())

    def _fetch(
        self,
        request: Any,
        key: bytes,
        stale: CacheEntry | None,
        fwd: bytes,
        collapsed: bool | None,
        requestCC: CacheControl | None = None,
    ) -> None:
        """
        Send a request to the child and capture the response; with a stored
        response, as a revalidation with its validators.

        @param fwd: Why it goes forward (RFC 9211 section 2.2).
        @param collapsed: L{False} if it waited for another's backend
            request in vain, else L{None}.
        @param requestCC: The request's directives, if parsed already.
        """
        coder = self.coder
        coding = requestCoding(coder, requestPairs(request)) if coder else b""
        capture = _Capture(self, request, key, stale, False, {}, False, fwd, collapsed)
        capture.requestCC = requestCC
        if stale is not None:
            capture.swapConditionals(revalidators(stale))
        if coder is not None:
            Encoding(request, coder, capture, coding)
        self._renderChild(request)
        if key in self._flights.flying or key in self._held:
            # Those waiting are released if the client goes.
            capture.watchClient()

    def _refresh(self, request: Any, key: bytes, stale: CacheEntry) -> None:
        """
        Revalidate a stale response in the background.
        """
        if key in self._flights:
            return
        self._flights.start(key)
        capture: _Capture | None = None
        try:
            background = _BackgroundRequest(request)
            for name, value in revalidators(stale):
                background.requestHeaders.setRawHeaders(name, [value])
            capture = _Capture(
                self, background, key, stale, True, {}, background=True, fwd=FWD_STALE
            )
            if self.coder is not None:
                coding = requestCoding(self.coder, requestPairs(request))
                Encoding(background, self.coder, capture, coding)
            background.backgroundChannel.onAbort = capture.abandon
            resource = getChildForRequest(self.resource, background)
            background.render(resource)  # type: ignore[no-untyped-call]
        except Exception:
            _log.failure("Background revalidation failed", Failure())
            if capture is not None:
                capture.abandon()
            else:
                self.landed(key)

    def staleIfError(self, request: IRequest, stale: CacheEntry) -> bool:
        now = self.reactor.seconds()
        return staleIfErrorAllowed(
            currentAge(stale.initialAge, stale.responseTime, now),
            stale.lifetime,
            self.requestCacheControl(request),
            stale.cacheControl,
            self.limits,
        )

    def _serve(
        self,
        request: Any,
        entry: CacheEntry,
        label: bytes,
        fwd: bytes = b"",
        fwdStatus: int = 0,
        collapsed: bool | None = None,
        detail: bytes = b"",
    ) -> None:
        """
        Answer a request from a stored response (see L{serveEntry}).

        @param label: The C{X-Cache} status.
        @param fwd: Why the request went forward, if it did (then it is no
            hit: RFC 9211 section 2.1); the other parameters are those of
            L{cacheStatusMember}.
        """
        if requestGone(request):
            return
        self.stats[label] += 1
        # For the metrics (rproxy_cache_requests_total).
        request.cacheStatus = label.decode("ascii").lower()
        age = currentAge(entry.initialAge, entry.responseTime, self.reactor.seconds())
        member = None
        if self.statusHeader:
            member = cacheStatusMember(
                self.statusName,
                hit=not fwd,
                fwd=fwd,
                fwdStatus=fwdStatus,
                ttl=entry.lifetime - age,
                collapsed=collapsed,
                detail=detail,
            )
        serveEntry(
            request, entry, label, age, member, partial(self._gone, label, request)
        )

    def _gone(self, label: bytes, request: Any) -> None:
        """
        A stored body (kept by the store, streamed) is gone before it was
        served: ask the backend, as for a miss.
        """
        self.stats[label] -= 1
        self._pass(request, MISS, FWD_MISS)
