"""
L{BackendPool}: the servers of one C{[pools.NAME]} table, their
connections, and the requests waiting for one.

Each server (L{twisted_rproxy.pool.backend.Backend}) keeps its idle
kept-alive connections and counts the busy and connecting ones against its
connection limit; requests that find every server at its limit wait in the
pool's bounded queue. The pool decides what the servers report: where a
request goes, whether it is retried on another server, when health
changes which servers serve.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger

from twisted_rproxy.balance import balancerFor
from twisted_rproxy.discovery import failoverTier
from twisted_rproxy.health import RetryBudget, eligibleServers
from twisted_rproxy.interfaces import IBalancer, IResponseReceiver
from twisted_rproxy.messages import (
    BackendError,
    BackendRequest,
    NoHealthyServers,
    PoolClosed,
    PoolOverloaded,
)
from twisted_rproxy.pool.backend import MAINTENANCE, Backend
from twisted_rproxy.pool.control import ServerControl
from twisted_rproxy.pool.dial import connectServer
from twisted_rproxy.pool.health import HealthChecker, OutlierDetector, SlowStart
from twisted_rproxy.pool.request import _Exchange
from twisted_rproxy.pool.status import DiscoverySource, PoolStatus, serverStatus
from twisted_rproxy.tls import backendConnectionCreators

if TYPE_CHECKING:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    from twisted_rproxy.config import BackendServer, PoolConfig
    from twisted_rproxy.interfaces import IProxyReactor

_log = Logger()


class BackendPool(ServerControl):
    """
    The servers of one pool, their connections, and the requests waiting
    for one; what changes its servers at run time is L{ServerControl}'s.

    @ivar servers: The L{Backend}s, in configuration order, then those that
        joined since (L{updateServers}) in the order they joined; a server
        that left stays until its last connection is gone.
    """

    def __init__(
        self,
        reactor: IProxyReactor,
        config: PoolConfig,
        balancer: IBalancer | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self._reactor = reactor
        #: The pool's clock (its reactor).
        self.clock = reactor
        self._balancer = (
            balancer if balancer is not None else balancerFor(config.balance)
        )
        #: What a hashing pool hashes: the proxy computes each request's
        #: C{hashKey} only when this is not L{None}.
        self.hashOn = config.hashBy
        self.servers = [Backend(self, server) for server in config.servers]
        # The servers that take new requests; a new list whenever health
        # changes, never changed in place (balancers may cache by identity).
        self._eligible: list[Backend] = failoverTier(self.servers)
        self.panic = False
        self._pending: deque[_Exchange] = deque()
        self.closed = False
        self._sweepCall: IDelayedCall | None = None
        self._whenIdle: list[Callable[[], None]] = []
        self.requestCount = 0
        self.retryCount = 0
        # Servers that left the server set, draining (see updateServers).
        self._leaving: list[Backend] = []
        budget = config.retryBudget
        self._budget = RetryBudget(budget.percent, budget.minRetries, budget.window)
        self._outlier = (
            OutlierDetector(reactor, self, config.outlier)
            if config.outlier is not None
            else None
        )
        self._checker = (
            HealthChecker(reactor, self, config.health)
            if config.health is not None
            else None
        )
        # Made even for one server: more may join (updateServers).
        self._slowStart = (
            SlowStart(reactor, self, config.slowStart) if config.slowStart > 0 else None
        )
        # Made once per pool: trust roots and client certificates are read here.
        self._tlsCreators = backendConnectionCreators(config)
        #: What finds its servers by DNS (C{config.discovery}), for the
        #: status; set by it.
        self.discovery: DiscoverySource | None = None

    def __repr__(self) -> str:
        return f"<BackendPool {self.name!r} servers={self.servers!r}>"

    def submit(self, request: BackendRequest, receiver: IResponseReceiver) -> _Exchange:
        """
        Forward C{request}; report progress to C{receiver}.

        @return: A handle whose C{cancel()} abandons the request (for when the
            client goes away).
        """
        exchange = _Exchange(request, receiver, self)
        if self.closed:
            exchange.fail(PoolClosed("pool is shut down"))
            return exchange
        self.requestCount += 1
        self._place(exchange)
        return exchange

    def _place(self, exchange: _Exchange) -> None:
        eligible = self._eligible
        if not eligible:
            exchange.fail(NoHealthyServers(self._whyNone()))
            return
        server = self._pick(eligible, exchange.request)
        if server is None:
            self._enqueue(exchange)
        else:
            server.assign(exchange)

    def _newBackend(self, server: BackendServer) -> Backend:
        return Backend(self, server)

    def _whyNone(self) -> str:
        if not self.servers:
            return "the pool has no server"
        if not any(server.accepting for server in self.servers):
            return "no server is ready (all are draining or in maintenance)"
        return "no healthy server"

    def _pick(
        self, servers: Sequence[Backend], request: BackendRequest
    ) -> Backend | None:
        # A balancer answers with one of the servers it is given.
        return self._balancer.pick(servers, request)  # type: ignore[return-value]

    def connectTunnel(self, factory: ClientFactory) -> BackendServer | None:
        """
        Open a connection of its own to a serving server, for a tunnel (an
        upgraded WebSocket connection, a C{CONNECT}): it is not pooled,
        and not counted against C{max_connections}.

        @param factory: Builds the protocol of the connection.
        @return: The server connected to, or L{None} if no server is
            serving (or the pool is closed).
        """
        eligible = self._eligible
        if self.closed or not eligible:
            return None
        self._tunnelTurn = (getattr(self, "_tunnelTurn", -1) + 1) % len(eligible)
        server = eligible[self._tunnelTurn].server
        self.dial(server, factory)
        return server

    def startHealthChecks(self) -> None:
        """
        Start the active health checks, if the pool has any (the
        L{ProxyService} does this as it starts; an embedder who builds a
        pool with C{health} calls it).
        """
        if self._checker is not None and not self.closed:
            self._checker.start()

    def healthChanged(self, cameBack: Backend | None = None) -> None:
        """
        A server's health changed: recompute which servers take requests.

        @param cameBack: A server that just became healthy again, to slow
            start.

        Only servers that are ready (L{Backend.accepting}) take new
        requests, in a panic too. Of those, only the servers of the lowest
        priority with a healthy server take part (SRV priorities: the
        failover order; every other server has priority 0), and the panic
        threshold counts those.
        """
        ready = [server for server in self.servers if server.accepting]
        eligible, panic = eligibleServers(
            failoverTier(ready), self.config.panicThreshold
        )
        if panic != self.panic:
            self.panic = panic
            if panic:
                _log.warn(
                    "Pool {pool}: too few healthy servers, panic: using all of them",
                    pool=self.name,
                )
            else:
                _log.info("Pool {pool}: out of panic", pool=self.name)
        self._eligible = eligible
        for server in self.servers:
            if server not in eligible:
                # Its kept-alive connections may be as dead as it is.
                for connection in list(server.idle):
                    connection.close()
        if cameBack is not None and cameBack.accepting:
            self._beginSlowStart(cameBack)
        self.dispatchPending()

    def _beginSlowStart(self, backend: Backend) -> None:
        """
        Slow start C{backend} (which joins, or is back), if the pool slow
        starts servers and others take requests beside it.
        """
        slowStart = self._slowStart
        if slowStart is None or self.panic:
            return
        if any(s is not backend and s.accepting for s in self.servers):
            slowStart.begin(backend)

    def status(self) -> PoolStatus:
        """
        The pool's state now, for the admin page and monitoring.
        """
        return PoolStatus(
            name=self.name,
            balance=self.config.balance,
            panic=self.panic,
            closed=self.closed,
            pending=len(self._pending),
            requests=self.requestCount,
            retries=self.retryCount,
            retriesRefused=self._budget.refused,
            servers=tuple(
                serverStatus(s, s in self._eligible, self._checked(s))
                for s in self.servers
            ),
            discovery=self.discovery.status() if self.discovery is not None else (),
        )

    def _checked(self, backend: Backend) -> bool:
        checker = self._checker
        return (
            checker is not None
            and checker.running
            and backend.adminState != MAINTENANCE
            and not backend.removed
        )

    def _takePending(self, other: BackendPool) -> None:
        """
        Hand the requests waiting in this pool to C{other} (its successor on
        a reload).
        """
        while self._pending:
            exchange = self._pending.popleft()
            if exchange.queuedCall is not None:
                exchange.queuedCall.cancel()
                exchange.queuedCall = None
            exchange.pool = other
            other.requestCount += 1
            other._place(exchange)

    @property
    def pendingCount(self) -> int:
        """
        How many requests wait for a connection.
        """
        return len(self._pending)

    def _enqueue(self, exchange: _Exchange) -> None:
        if len(self._pending) >= self.config.maxPending:
            _log.warn("Pool {pool} is full: request refused", pool=self.name)
            exchange.fail(PoolOverloaded("too many requests waiting"))
            return
        exchange.queuedCall = self.clock.callLater(
            self.config.pendingTimeout, self._pendingExpired, exchange
        )
        self._pending.append(exchange)

    def withdraw(self, exchange: _Exchange) -> None:
        """
        Take C{exchange} out of the queue, if it is in it (its client went).
        """
        try:
            self._pending.remove(exchange)
        except ValueError:
            pass

    def serverFailed(self, backend: Backend) -> None:
        """
        A request failed on C{backend}: passive health counts it.
        """
        outlier = self._outlier
        if outlier is not None:
            outlier.failed(backend)

    def tlsCreator(
        self, server: BackendServer
    ) -> IOpenSSLClientConnectionCreator | None:
        """
        The TLS connection creator of the pool's C{https://} C{server} (its
        trust roots, client certificate and verification policy), or
        L{None} for a plain one.
        """
        return self._tlsCreators.get(server)

    def _pendingExpired(self, exchange: _Exchange) -> None:
        exchange.queuedCall = None
        try:
            self._pending.remove(exchange)
        except ValueError:
            return
        _log.warn(
            "Pool {pool}: request waited too long for a connection", pool=self.name
        )
        exchange.fail(PoolOverloaded("waited too long for a backend connection"))

    def dispatchPending(self) -> None:
        pending = self._pending
        while pending:
            server = self._pick(self._eligible, pending[0].request)
            if server is None:
                return
            exchange = pending.popleft()
            if exchange.queuedCall is not None:
                exchange.queuedCall.cancel()
                exchange.queuedCall = None
            server.assign(exchange)

    def dial(self, server: BackendServer, factory: ClientFactory) -> None:
        """
        Open a connection to C{server} (its host and port, or its unix
        socket; with TLS for C{https://}) for C{factory}, within the pool's
        connect timeout.
        """
        connectServer(
            self._reactor,
            server,
            factory,
            self._tlsCreators.get(server),
            self.config.connectTimeout,
        )

    def attemptFailed(self, exchange: _Exchange, reason: BackendError) -> None:
        # (The connection attempt is already counted gone by the caller.)
        if exchange.done:
            return
        # Nothing was sent: any other server may take any request.
        if not self.retryElsewhere(exchange):
            exchange.fail(reason)

    def retryTarget(self, exchange: _Exchange) -> Backend | None:
        """
        The server to retry C{exchange} on, if it has retries left, the
        retry budget allows one more, and another healthy server that it
        has not tried can take it now; the retry is counted.
        """
        if exchange.retriesLeft <= 0 or self.closed:
            return None
        tried = exchange.triedServers
        others = [s for s in self._eligible if s not in tried]
        if not others:
            return None
        server = self._pick(others, exchange.request)
        if server is None:
            return None
        if not self._budget.allow(self.clock.seconds(), self.requestCount):
            _log.warn(
                "Pool {pool}: retry budget spent, request not retried", pool=self.name
            )
            return None
        exchange.retriesLeft -= 1
        self.retryCount += 1
        return server

    def retryElsewhere(self, exchange: _Exchange) -> bool:
        """
        Start C{exchange} again on another server (see L{retryTarget}).

        @return: Whether it was.
        """
        server = self.retryTarget(exchange)
        if server is None:
            return False
        server.assign(exchange)
        return True

    @property
    def inFlight(self) -> int:
        """
        Requests on the pool's servers now (not counting queued ones).
        """
        return sum(server.inFlight for server in self.servers)

    @property
    def openConnections(self) -> int:
        """
        The pool's connections and connection attempts not yet gone.
        """
        return sum(server.openConnections for server in self.servers)

    def checkConsistency(self) -> None:
        """
        Check the bookkeeping of every server (see
        L{Backend.checkConsistency}) and of the queue.

        @raise AssertionError: If it is wrong.
        """
        for server in self.servers:
            server.checkConsistency()
            if server.removed and server.openConnections == 0:
                raise AssertionError(f"{server!r} left the pool but is kept")
        for exchange in self._pending:
            if exchange.done or exchange.queuedCall is None:
                raise AssertionError(f"{exchange!r} is queued but finished")

    def connectionGone(self) -> None:
        if self._leaving:
            self._dropGone()
        if self._whenIdle and self.openConnections == 0:
            callbacks, self._whenIdle = self._whenIdle, []
            for callback in callbacks:
                callback()

    def scheduleSweep(self) -> None:
        if self._sweepCall is None:
            self._sweepCall = self.clock.callLater(
                max(self.config.idleTimeout / 2, 0.5), self._sweepIdle
            )

    def _sweepIdle(self) -> None:
        self._sweepCall = None
        deadline = self.clock.seconds() - self.config.idleTimeout
        anyLeft = False
        for server in self.servers:
            expired = [c for c in server.idle if c.idleSince <= deadline]
            for connection in expired:
                connection.close()
            anyLeft = anyLeft or bool(server.idle)
        if anyLeft:
            self.scheduleSweep()

    def close(self, successor: BackendPool | None = None) -> Deferred[None]:
        """
        Stop taking requests, fail the queued ones, close idle connections
        and close the busy ones as their exchanges finish.

        @param successor: The pool that replaces this one (on a reload): the
            queued requests go to it instead of failing.
        @return: A L{Deferred} that fires when every connection is closed.
        """
        if successor is not None:
            self._takePending(successor)
        self.closed = True
        if self._sweepCall is not None:
            self._sweepCall.cancel()
            self._sweepCall = None
        for stoppable in (self._checker, self._outlier, self._slowStart):
            if stoppable is not None:
                stoppable.stop()
        while self._pending:
            exchange = self._pending.popleft()
            if exchange.queuedCall is not None:
                exchange.queuedCall.cancel()
                exchange.queuedCall = None
            exchange.fail(PoolClosed("pool is shut down"))
        for server in self.servers:
            for connection in list(server.idle):
                connection.close()
        done: Deferred[None] = Deferred()
        if self.openConnections == 0:
            done.callback(None)
        else:
            self._whenIdle.append(lambda: done.callback(None))
        return done
