"""
L{ProxyService}: one configuration running: its listeners, backend pools
and resource tree. It is what C{twistd rproxy} runs and what an
application embeds.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IResolver,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

from twisted_rproxy.acme import ACMEManager, HTTP01Resource
from twisted_rproxy.admin import Admin
from twisted_rproxy.cache import buildStores
from twisted_rproxy.config import Config
from twisted_rproxy.filters import FilterSet
from twisted_rproxy.interfaces import IProxyReactor, IProxyStatus
from twisted_rproxy.listening import adoptListener, listeningDescription
from twisted_rproxy.policies import listenerPolicy, policedFactory
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.pool.discovery import ServerDiscovery, closeResolver, makeResolver
from twisted_rproxy.router import Router
from twisted_rproxy.server import ProxyRequest, ProxySite
from twisted_rproxy.state import SharedState
from twisted_rproxy.tls import HTTPSRedirect, OCSPStapler, ServerTLS
from twisted_rproxy.tree import buildResource

_log = Logger()


@implementer(IProxyStatus)
class ProxyService(MultiService):
    """
    The proxy for one L{Config}.

    Starting it listens on every C{server.listen} endpoint; stopping it
    stops listening, then closes the pools' connections.

    @ivar config: The configuration it runs.
    @ivar pools: The L{BackendPool}s by name.
    @ivar router: The root of the resource tree.
    @ivar site: The L{ProxySite} serving every listener (the plain-HTTP ones
        excepted when a C{[[tls]]} group redirects them to https).
    @ivar tls: The L{ServerTLS} of each C{[[tls]]} group, in order.
    @ivar ocsp: The L{OCSPStapler} of their certificates.
    @ivar cacheStores: The store of each C{[caches.NAME]}, by name; kept
        across reloads.
    @ivar sharedState: The client of the shared Redis of C{[state]}, or
        L{None} without one; kept across reloads that leave C{[state]} as it
        is, connections included.
    @ivar discoveries: The L{ServerDiscovery} of each pool with DNS
        discovery entries, by pool name.
    """

    def __init__(self, config: Config, reactor: IProxyReactor) -> None:
        # mypy reports super() calls to Twisted's untyped methods despite
        # untyped_calls_exclude (python/mypy#16653).
        super().__init__()  # type: ignore[no-untyped-call]
        self.config = config
        self.reactor = reactor
        self.pools = {
            name: BackendPool(reactor, poolConfig)
            for name, poolConfig in config.pools.items()
        }
        #: The DNS client of discovery, made with the first pool that needs it.
        self._resolver: IResolver | None = None
        self.discoveries: dict[str, ServerDiscovery] = {}
        self._discover(self.pools, {})
        #: Discoveries replaced by a reload, until their queries are over.
        self._retiredDiscoveries: list[Deferred[None]] = []
        self.sharedState: SharedState | None = None
        if config.state is not None:
            self.sharedState = SharedState(reactor, config.state)
        # The caches' stores outlive reloads (see reload).
        self.cacheStores = buildStores(
            config.caches, sharedState=self.sharedState, reactor=reactor
        )
        #: The filters of the running tree; a reload retires them.
        self.filterSet = FilterSet(reactor)
        self.router: Router = buildResource(
            config,
            self.pools,
            reactor,
            self.cacheStores,
            self.sharedState,
            self.filterSet,
        )
        #: Shared states replaced by a reload, until they are closed.
        self._retiredStates: list[Deferred[None]] = []
        server = config.server

        def bodyPolicy(request: ProxyRequest) -> tuple[int, bool]:
            # The router of the moment: reload() replaces it.
            return self.router.bodyPolicy(request, server)

        self.site = ProxySite(self.router, server, reactor, bodyPolicy)
        self.ocsp = OCSPStapler(reactor)
        self.tls = [ServerTLS(group, self.ocsp) for group in config.tls]
        if config.tls and config.tls[0].hsts is not None:
            # Every group has the same (config.py checks it).
            self.site.hstsHeader = b"max-age=%d" % (config.tls[0].hsts,)
        self._redirect: HTTPSRedirect | None = None
        #: The site of the plain (not TLS) listeners: the proxy's own, or
        #: one that redirects to HTTPS (C{redirect_http}).
        self.plainSite: Site = self.site
        if any(group.redirectHttp for group in config.tls):
            self._redirect = HTTPSRedirect()
            self.plainSite = ProxySite(self._redirect, server, reactor)
        #: The certificates of C{acme_domains}, or L{None} without C{[acme]}.
        self.acme: ACMEManager | None = None
        if config.acme is not None:
            self.acme = ACMEManager(
                reactor,
                config.acme,
                list(zip(config.tls, self.tls, strict=True)),
                self.sharedState,
            )
            if config.acme.challenge == "http-01":
                self._answerHTTP01(self.acme)
        self._ports: list[IListeningPort] = []
        #: Listening sockets inherited from a supervising process (see
        #: L{twisted_rproxy.workers}), by endpoint description: the file
        #: descriptor and address family.
        self.inheritedListeners: dict[str, tuple[int, int]] = {}
        self.admin: Admin | None = None
        if config.admin is not None:
            self.admin = Admin(self, config.admin, reactor)
        self._listening: Deferred[list[IListeningPort]] | None = None
        self._retiring: list[Deferred[None]] = []
        #: Filter sets replaced by a reload, until they are closed.
        self._retiringFilters: list[Deferred[None]] = []

    def startService(self) -> None:
        """
        Listen on every configured endpoint.

        A listener that fails at once (a port in use, say) raises here, so
        that C{twistd} reports it and exits instead of running deaf.
        """
        super().startService()  # type: ignore[no-untyped-call]  # python/mypy#16653
        if self.sharedState is not None:
            # Connects in the background: requests wait for it (within
            # [state] timeout) or fall back as on_error says.
            self.sharedState.start()
        waiting = []
        for description in self.config.server.listen:
            endpoint = self._endpoint(description)
            listening = self._listen(
                description, endpoint, self._policed(description, self.plainSite)
            )
            waiting.append(listening.addCallback(self._listened))
        for group, serverTLS in zip(self.config.tls, self.tls, strict=True):
            factory = TLSMemoryBIOFactory(serverTLS, False, self.site)
            for index, description in enumerate(group.listen):
                endpoint = self._endpoint(description)
                listening = self._listen(
                    description, endpoint, self._policed(description, factory)
                )
                listening.addCallback(self._listened)
                if index == 0 and group.redirectHttp:
                    listening.addCallback(self._redirectTo)
                waiting.append(listening)
            serverTLS.startWatching(self.reactor)
        self.ocsp.start()
        if self.acme is not None:
            self.acme.start()
        self._listening = gatherResults(waiting, consumeErrors=True)
        self._listening.addErrback(self._listenFailed)
        for pool in self.pools.values():
            pool.startHealthChecks()
        for discovery in self.discoveries.values():
            discovery.start()
        if self.admin is not None:
            self.admin.startListening()

    def _discover(
        self, pools: dict[str, BackendPool], previous: dict[str, ServerDiscovery]
    ) -> None:
        """
        Make the L{ServerDiscovery} of each of C{pools} that has DNS
        discovery entries and none yet, starting from the servers of the
        one of its name in C{previous} (the pools a reload replaces).
        """
        discoveries: dict[str, ServerDiscovery] = {}
        for name, pool in pools.items():
            if not pool.config.discovery:
                continue
            current = self.discoveries.get(name)
            if current is not None and current.pool is pool:
                discoveries[name] = current
                continue
            if self._resolver is None:
                self._resolver = makeResolver(
                    self.reactor, self.config.server.resolvers
                )
            discoveries[name] = ServerDiscovery(
                self.reactor, self._resolver, pool, previous.get(name)
            )
        self.discoveries = discoveries

    def _endpoint(self, description: str) -> IStreamServerEndpoint:
        """
        The endpoint of the listener on C{description}, with its backlog.
        """
        endpoint: IStreamServerEndpoint = serverFromString(
            self.reactor, listeningDescription(self.config.server, description)
        )
        return endpoint

    def _listen(
        self, description: str, endpoint: IStreamServerEndpoint, factory: Any
    ) -> Deferred[IListeningPort]:
        """
        Listen on C{endpoint}, or adopt the socket a supervising process
        opened for C{description}.
        """
        inherited = self.inheritedListeners.get(description)
        if inherited is None:
            return _listenOrRaise(endpoint, factory)
        fd, family = inherited
        return succeed(adoptListener(self.reactor, fd, family, factory))

    def _policed(self, description: str, factory: Any) -> Any:
        """
        The factory a listener on C{description} listens with: C{factory}
        behind the listener's access rules, connection limit and PROXY
        protocol (see L{twisted_rproxy.policies}), checked before TLS.
        """
        return policedFactory(factory, listenerPolicy(self.config.server, description))

    def reload(self, config: Config) -> None:
        """
        Run C{config}'s pools and routes from now on, without a restart.

        New requests go to the new pools and routes at once; requests in
        flight finish on the old pools, which close once idle (their queued
        requests move to the new pool of the same name). A pool whose
        configuration did not change is kept as it is, connections and
        health included, but its servers' run-time changes (admin states
        and weights set on the admin listener) are undone. C{[server]}
        and the listeners are not reloaded (that takes a restart: a
        warning says so). Certificates are read
        again (see L{reloadCertificates}).

        @param config: A configuration already validated (by L{loadConfig}).
        """
        old = self.pools
        pools: dict[str, BackendPool] = {}
        for name, poolConfig in config.pools.items():
            current = old.get(name)
            if current is not None and current.config == poolConfig:
                # Run-time changes (admin states, weights) end here too.
                current.resetServers()
                pools[name] = current
                continue
            pools[name] = BackendPool(self.reactor, poolConfig)
            if self.running:
                pools[name].startHealthChecks()
        oldDiscoveries = self.discoveries
        self._discover(pools, oldDiscoveries)
        for name, discovery in oldDiscoveries.items():
            if self.discoveries.get(name) is not discovery:
                stopping = discovery.stop()
                self._retiredDiscoveries.append(stopping)
                stopping.addCallback(self._discoveryRetired, stopping)
        if self.running:
            for discovery in self.discoveries.values():
                discovery.start()
        sharedState = self._reloadedState(config)
        cacheStores = buildStores(
            config.caches,
            self.cacheStores,
            sharedState=sharedState,
            reactor=self.reactor,
        )
        filterSet = FilterSet(self.reactor)
        router = buildResource(
            config, pools, self.reactor, cacheStores, sharedState, filterSet
        )
        self.cacheStores = cacheStores
        if sharedState is not self.sharedState:
            oldState, self.sharedState = self.sharedState, sharedState
            if oldState is not None:
                # Operations in flight on it fail as an outage would.
                stopping = oldState.stop()
                self._retiredStates.append(stopping)
                stopping.addCallback(self._stateRetired, stopping)
            if sharedState is not None and self.running:
                sharedState.start()
            if self.acme is not None:
                # Its order lock moves to the new Redis (or to the file).
                self.acme.setSharedState(sharedState)
        if config.server != self.config.server:
            _log.warn("Reload: changes to [server] take effect at the next restart")
            config = evolve(config, server=self.config.server)
        if config.tls != self.config.tls:
            # The TLS listeners keep their settings; their files are read
            # again below.
            _log.warn(
                "Reload: changes to [[tls]] settings take effect at the next "
                "restart (certificate files are read again now)"
            )
            config = evolve(config, tls=self.config.tls)
        if config.acme != self.config.acme:
            _log.warn("Reload: changes to [acme] take effect at the next restart")
            config = evolve(config, acme=self.config.acme)
        self.config = config
        self.router = router
        # The old filters close once the requests through them are done
        # (or drain_timeout has passed).
        oldFilters, self.filterSet = self.filterSet, filterSet
        closingFilters = oldFilters.retire(self.config.server.drainTimeout)
        if not closingFilters.called:
            self._retiringFilters.append(closingFilters)
            closingFilters.addCallback(
                lambda _: self._retiringFilters.remove(closingFilters)
            )
        if not isinstance(self.site.resource, HTTP01Resource):
            self.site.resource = router
        self.pools = pools
        for name, pool in old.items():
            if pools.get(name) is not pool:
                closing = pool.close(successor=pools.get(name))
                self._retiring.append(closing)
                closing.addCallback(self._retired, closing)
        _log.info(
            "Reloaded {source}: pools {pools}",
            source=config.source,
            pools=", ".join(sorted(pools)) or "none",
        )
        reloadCertificates = getattr(self, "reloadCertificates", None)
        if reloadCertificates is not None:
            reloadCertificates()

    def _reloadedState(self, config: Config) -> SharedState | None:
        """
        The shared state of a reload to C{config}: the current one when
        C{[state]} did not change, else a new one (not started yet), or
        L{None} without C{[state]}.
        """
        current = self.sharedState
        if config.state is None:
            return None
        if current is not None and current.config == config.state:
            return current
        return SharedState(self.reactor, config.state)

    def _discoveryRetired(self, _: None, stopping: Deferred[None]) -> None:
        self._retiredDiscoveries.remove(stopping)

    def _stateRetired(self, _: None, stopping: Deferred[None]) -> None:
        self._retiredStates.remove(stopping)

    def _retired(self, _: None, closing: Deferred[None]) -> None:
        self._retiring.remove(closing)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self._ports.append(port)
        _log.info("Listening on {address}", address=port.getHost())
        return port

    def _answerHTTP01(self, acme: ACMEManager) -> None:
        """
        Answer the CA's HTTP-01 challenges on the plain listeners, before
        the routes and the redirect to https.
        """
        redirect = self._redirect
        if redirect is not None:
            self.plainSite.resource = HTTP01Resource(acme.responder, lambda: redirect)
        else:
            self.site.resource = HTTP01Resource(acme.responder, lambda: self.router)

    def _redirectTo(self, port: IListeningPort) -> IListeningPort:
        if self._redirect is not None:
            self._redirect.port = getattr(port.getHost(), "port", None)
        return port

    def reloadCertificates(self) -> bool:
        """
        Read every C{[[tls]]} certificate file again: new handshakes use the
        new certificates, established connections keep theirs.  A file that
        cannot be used is reported in the log and its certificate stays in
        service.

        @return: Whether every file was read.
        """
        results = [serverTLS.reload() for serverTLS in self.tls]
        return all(results)

    def _listenFailed(self, failure: Failure) -> Failure:
        _log.failure("Could not listen", failure)
        return failure

    def listeningAddresses(self) -> list[object]:
        """
        The addresses the proxy's listeners are bound to now.
        """
        return [port.getHost() for port in self._ports]

    def whenListening(self) -> Deferred[list[IListeningPort]]:
        """
        The listening ports, once every listener is up.

        @return: A L{Deferred} firing with the ports in configuration order.
        """
        if self._listening is None:
            raise RuntimeError("the service is not running")
        result: Deferred[list[IListeningPort]] = Deferred()

        def done(ports: list[IListeningPort]) -> list[IListeningPort]:
            result.callback(ports)
            return ports

        def failed(failure: Failure) -> None:
            result.errback(failure)

        self._listening.addCallbacks(done, failed)
        return result

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: stop listening, let the requests in flight finish
        (for up to C{[server] drain_timeout}; connections still busy then
        are cut), then close every pool.
        """
        super().stopService()  # type: ignore[no-untyped-call]  # python/mypy#16653
        for serverTLS in self.tls:
            serverTLS.stopWatching()
        self.ocsp.stop()
        # An order under way stops at its next step (bounded), and frees
        # its lock before the shared state closes.
        acmeStopped = self.acme.stop() if self.acme is not None else None
        ports, self._ports = self._ports, []
        stopping = [Deferred.fromCoroutine(_stop(port)) for port in ports]
        if acmeStopped is not None:
            stopping.append(acmeStopped)

        def closePools(_: object) -> Deferred[list[tuple[bool, None]]]:
            # Pools retired by a reload may still finish their last requests.
            retiring = list(self._retiring)
            return DeferredList(
                [pool.close() for pool in self.pools.values()] + retiring
            )

        # Answers that come in from now on are ignored; the queries under
        # way end within their timeouts, then the resolver's connections
        # are closed.
        resolving: Deferred[Any] = DeferredList(
            [d.stop() for d in self.discoveries.values()] + self._retiredDiscoveries
        )
        resolver = self._resolver
        if resolver is not None:
            resolving.addCallback(lambda _: closeResolver(resolver))

        def closeState(_: object) -> Deferred[list[tuple[bool, None]]]:
            # Last: requests drained above may still have used it.
            closing: list[Deferred[Any]] = list(self._retiredStates)
            closing.append(resolving)
            if self.sharedState is not None:
                closing.append(self.sharedState.stop())
            return DeferredList(closing)

        def drain(_: object) -> Deferred[list[tuple[bool, None]]]:
            timeout = self.config.server.drainTimeout
            sites: dict[int, Any] = {
                id(site): site for site in (self.site, self.plainSite)
            }
            return DeferredList([site.drain(timeout) for site in sites.values()])

        if self.admin is not None:
            stopping.append(self.admin.stopListening())
        def closeFilters(_: object) -> Deferred[list[tuple[bool, None]]]:
            # After the drain, before the pools and the shared state they
            # may use: each filter's close() is waited for, bounded.
            retiring = [self.filterSet.retire(), *self._retiringFilters]
            return DeferredList(retiring)

        closed = DeferredList(stopping).addCallback(drain)
        closed.addCallback(closeFilters).addCallback(closePools)
        return closed.addCallback(closeState).addCallback(lambda _: None)


async def _stop(port: IListeningPort) -> None:
    # stopListening() may return None when the port stops at once.
    stopped = port.stopListening()
    if stopped is not None:
        await stopped


def _listenOrRaise(
    endpoint: IStreamServerEndpoint, factory: Site | TLSMemoryBIOFactory
) -> Deferred[IListeningPort]:
    """
    Listen on C{endpoint}; raise at once if that fails at once.
    """
    listening = endpoint.listen(factory)
    failures: list[Failure] = []

    def capture(failure: Failure) -> Failure:
        failures.append(failure)
        return failure

    listening.addErrback(capture)
    if failures:
        # Raised here instead of being left in the Deferred.
        listening.addErrback(lambda _: None)
        failures[0].raiseException()
    return listening


def makeService(config: Config, reactor: IProxyReactor) -> ProxyService:
    """
    The L{ProxyService} for C{config}, to start or to add to a service
    hierarchy.

    @param reactor: The reactor it runs on (usually
        C{twisted.internet.reactor}).
    """
    return ProxyService(config, reactor)
