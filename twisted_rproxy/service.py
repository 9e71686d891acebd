"""
L{ProxyService}: one configuration running: its listeners, backend pools
and resource tree. It is what C{twistd rproxy} runs and what an
application embeds.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.config import Config
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.server import ProxyRequest, ProxySite
from twisted_rproxy.tree import Router, buildResource

_log = Logger()


class ProxyService(MultiService):
    """
    The proxy for one L{Config}.

    Starting it listens on every C{server.listen} endpoint; stopping it
    stops listening, then closes the pools' connections.

    @ivar config: The configuration it runs.
    @ivar pools: The L{BackendPool}s by name.
    @ivar router: The root of the resource tree.
    @ivar site: The L{ProxySite} serving every listener.
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
        self.router: Router = buildResource(config, self.pools)
        server = config.server
        router = self.router

        def bodyPolicy(request: ProxyRequest) -> tuple[int, bool]:
            return router.bodyPolicy(request, server)

        self.site = ProxySite(router, server, reactor, bodyPolicy)
        self._ports: list[IListeningPort] = []
        self._listening: Deferred[list[IListeningPort]] | None = None

    def startService(self) -> None:
        """
        Listen on every configured endpoint.

        A listener that fails at once (a port in use, say) raises here, so
        that C{twistd} reports it and exits instead of running deaf.
        """
        super().startService()  # type: ignore[no-untyped-call]  # python/mypy#16653
        waiting = []
        for description in self.config.server.listen:
            endpoint = serverFromString(self.reactor, description)
            listening = _listenOrRaise(endpoint, self.site)
            waiting.append(listening.addCallback(self._listened))
        self._listening = gatherResults(waiting, consumeErrors=True)
        self._listening.addErrback(self._listenFailed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self._ports.append(port)
        _log.info("Listening on {address}", address=port.getHost())
        return port

    def _listenFailed(self, failure: Failure) -> Failure:
        _log.failure("Could not listen", failure)
        return failure

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
        Stop listening, then close every pool.
        """
        super().stopService()  # type: ignore[no-untyped-call]  # python/mypy#16653
        ports, self._ports = self._ports, []
        stopping = [Deferred.fromCoroutine(_stop(port)) for port in ports]

        def closePools(_: object) -> Deferred[list[tuple[bool, None]]]:
            return DeferredList([pool.close() for pool in self.pools.values()])

        closed = DeferredList(stopping).addCallback(closePools)
        return closed.addCallback(lambda _: None)


async def _stop(port: IListeningPort) -> None:
    # stopListening() may return None when the port stops at once.
    stopped = port.stopListening()
    if stopped is not None:
        await stopped


def _listenOrRaise(
    endpoint: IStreamServerEndpoint, factory: ProxySite
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
