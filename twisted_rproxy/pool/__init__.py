"""
Backend pools: persistent HTTP/1.1 connections to backend servers.

A L{BackendPool} owns the L{Backend} servers of one C{[pools.NAME]} table.
Each server keeps its idle kept-alive connections and counts the busy and
connecting ones against its connection limit; requests that find every
server at its limit wait in the pool's bounded queue.

The client side of HTTP/1.1 here is our own, small and strict: Twisted's
C{HTTP11ClientProtocol} costs more per request than a proxy can afford, and
C{twisted.web.proxy.ProxyClient} speaks HTTP/1.0 with one connection per
request.

The package: L{request}, L{connection} (the HTTP/1.1 client protocol), and
here the servers and the pool.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from attrs import frozen
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

# Re-exported: it lived here before twisted_rproxy.balance.
from twisted_rproxy.balance import RoundRobinBalancer as RoundRobinBalancer
from twisted_rproxy.balance import balancerFor
from twisted_rproxy.health import (
    WEIGHT_SCALE,
    HealthChecker,
    OutlierDetector,
    RetryBudget,
    SlowStart,
    eligibleServers,
)
from twisted_rproxy.interfaces import IBackendServer, IBalancer, IResponseReceiver
from twisted_rproxy.pool.connection import (
    MAX_RESPONSE_HEAD,
    BackendConnection,
    writeThrough,
)
from twisted_rproxy.pool.request import (
    IDEMPOTENT_METHODS,
    BackendError,
    BackendProtocolError,
    BackendRequest,
    BackendTimeout,
    BackendUnavailable,
    NoHealthyServers,
    PoolClosed,
    PoolOverloaded,
    RequestBodyStream,
    _Exchange,
)
from twisted_rproxy.rules.http1 import formatAuthority
from twisted_rproxy.tls import backendConnectionCreators

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConnector

    from twisted_rproxy.config import BackendServer, PoolConfig
    from twisted_rproxy.interfaces import IProxyReactor

__all__ = [
    "IDEMPOTENT_METHODS",
    "MAX_RESPONSE_HEAD",
    "Backend",
    "BackendConnection",
    "BackendError",
    "BackendPool",
    "BackendProtocolError",
    "BackendRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "NoHealthyServers",
    "PoolClosed",
    "PoolOverloaded",
    "PoolStatus",
    "RequestBodyStream",
    "RoundRobinBalancer",
    "ServerStatus",
    "writeThrough",
]

_log = Logger()


@implementer(IBackendServer)
class Backend:
    """
    One backend server of a pool, and its connections.

    Every connection of the server is in exactly one of its four sets:
    being dialled (L{connecting}), waiting for a request (L{idle}),
    carrying one (busy), or closing. Each move between them goes through
    one method here, and every count (L{busy}, L{connecting},
    L{inFlight}, the pool's open connections) is the size of a set, not a
    counter kept in step by hand: a connection that leaves gives its slot
    back once, however it leaves.

    @ivar idle: Kept-alive connections waiting for a request, most recently
        used last (reused first: warm connections stay warm, cold ones
        expire).
    @ivar weight: The balancing weight: the configured weight times
        L{WEIGHT_SCALE}, less during a slow start.
    @ivar up: Whether the active health checks pass (L{True} without them).
    @ivar checkStreak: Active checks in a row that went against C{up}.
    @ivar ejected: Whether passive health ejected the server for now.
    @ivar ejectedUntil: When the current ejection ends, or L{None}.
    @ivar ejections: Ejections in a row, which lengthen the next one.
    @ivar errorStreak: Failed requests in a row (refused, reset, timed out,
        5xx).
    @ivar requests: Requests started on this server (retries included).
    @ivar failures: Requests that failed on this server.
    """

    def __init__(self, pool: BackendPool, server: BackendServer) -> None:
        self.pool = pool
        self.server = server
        self.weight = server.weight * WEIGHT_SCALE
        self.idle: list[BackendConnection] = []
        self._busy: set[BackendConnection] = set()
        self._closing: set[BackendConnection] = set()
        self._attempts: set[_ConnectionFactory] = set()
        self.requests = 0
        self.failures = 0
        self.up = True
        self.checkStreak = 0
        self.ejected = False
        self.ejectedUntil: float | None = None
        self.ejections = 0
        self.errorStreak = 0
        self._limit = pool.config.maxConnections
        self._hostPort = _hostPort(server)

    def __repr__(self) -> str:
        return (
            f"<Backend {self.server.url} connecting={len(self._attempts)} "
            f"busy={len(self._busy)} idle={len(self.idle)} "
            f"closing={len(self._closing)}>"
        )

    @property
    def busy(self) -> int:
        """
        Connections carrying a request.
        """
        return len(self._busy)

    @property
    def connecting(self) -> int:
        """
        Connection attempts under way.
        """
        return len(self._attempts)

    @property
    def closing(self) -> int:
        """
        Connections that carry nothing more and are being closed.
        """
        return len(self._closing)

    @property
    def openConnections(self) -> int:
        """
        Connections and connection attempts not yet gone, in any state.
        """
        return (
            len(self._attempts) + len(self.idle) + len(self._busy) + len(self._closing)
        )

    @property
    def available(self) -> bool:
        """
        Whether a request could start on this server now.
        """
        return bool(self.idle) or len(self._busy) + len(self._attempts) < self._limit

    @property
    def inFlight(self) -> int:
        """
        Requests on this server now: on busy connections or connecting.
        """
        return len(self._busy) + len(self._attempts)

    def noteFailure(self) -> None:
        """
        A request failed on this server: count it for passive health.
        """
        self.failures += 1
        self.errorStreak += 1
        outlier = self.pool._outlier
        if outlier is not None:
            outlier.failed(self)

    @property
    def hostPort(self) -> bytes:
        """
        The server's authority (C{host:port}), for a C{Host} header.
        """
        return self._hostPort

    def assign(self, exchange: _Exchange, fresh: bool = False) -> None:
        """
        Start C{exchange} on an idle connection, or on a new one.
        """
        self.requests += 1
        exchange.triedServers.append(self)
        idle = self.idle
        if idle and not fresh:
            connection = idle.pop()
            self._busy.add(connection)
            connection.send(exchange)
            return
        attempt = _ConnectionFactory(self, exchange)
        self._attempts.add(attempt)
        self.pool._dial(self.server, attempt)

    def connected(
        self,
        attempt: _ConnectionFactory,
        connection: BackendConnection,
        exchange: _Exchange,
    ) -> None:
        """
        Connection attempt C{attempt}, made for C{exchange}, succeeded.
        """
        self._attempts.discard(attempt)
        self._busy.add(connection)
        if exchange.done:
            self.release(connection)
        else:
            connection.send(exchange)

    def connectFailed(
        self, attempt: _ConnectionFactory, exchange: _Exchange, reason: BackendError
    ) -> None:
        """
        Connection attempt C{attempt}, made for C{exchange}, failed.
        """
        if attempt not in self._attempts:
            return
        self._attempts.remove(attempt)
        pool = self.pool
        pool._connectionGone()
        self.noteFailure()
        pool._attemptFailed(exchange, reason, self)
        pool._dispatchPending()

    def release(self, connection: BackendConnection) -> None:
        """
        C{connection} finished its exchange and may carry another.
        """
        if connection not in self._busy:
            # Retired while its exchange ended: it stays closing.
            return
        self._busy.remove(connection)
        pool = self.pool
        if pool._closed or len(self.idle) >= pool.config.maxIdle:
            self._closing.add(connection)
            connection.close()
        else:
            connection.idleSince = pool._clock.seconds()
            self.idle.append(connection)
            pool._scheduleSweep()
        pool._dispatchPending()

    def retire(self, connection: BackendConnection) -> None:
        """
        C{connection} will carry nothing more and is being closed; a busy
        one gives its slot back.
        """
        if connection in self._busy:
            self._busy.remove(connection)
            self._closing.add(connection)
            self.pool._dispatchPending()
        elif connection in self._closing:
            return
        else:
            try:
                self.idle.remove(connection)
            except ValueError:
                return
            self._closing.add(connection)

    def lost(self, connection: BackendConnection) -> None:
        """
        C{connection} is closed: forget it, whatever state it was in.
        """
        self.retire(connection)
        self._closing.discard(connection)
        self.pool._connectionGone()

    # What a connection reports about its exchange: the pool decides
    # whether the request is tried again.

    def serverError(self, exchange: _Exchange, status: int) -> bool:
        """
        This server answered C{exchange} with a 5xx: count the failure, and
        retry the request on another server when it may be (an idempotent
        request, a status in the pool's C{retryStatuses}, a retry left, the
        retry budget).

        @return: Whether the request went to another server; the
            connection then reads and drops the rest of the response (so
            that it stays usable), and C{exchange} is no longer its.
        """
        self.noteFailure()
        pool = self.pool
        if status not in pool.config.retryStatuses or not exchange.request.replayable:
            return False
        target = pool._retryTarget(exchange)
        if target is None:
            return False
        # Let go of the old connection before the new one takes it.
        exchange.connection = None
        target.assign(exchange)
        return True

    def responseFailed(
        self, exchange: _Exchange, reason: BackendError, beforeResponse: bool
    ) -> None:
        """
        C{exchange} failed on this server with C{reason}, and its
        connection is closed: count the failure, and retry the request on
        another server if nothing of the response was passed on yet and it
        may be sent again; else it fails.

        @param beforeResponse: Whether the failure came before the final
            response head.
        """
        self.noteFailure()
        if (
            beforeResponse
            and not exchange.done
            and exchange.request.replayable
            and self.pool._retryElsewhere(exchange)
        ):
            return
        exchange.fail(reason)

    def staleConnection(self, exchange: _Exchange) -> bool:
        """
        The kept-alive connection that carried C{exchange} was closed by
        this server as it was reused, before any byte of an answer (a race
        with its idle timeout, not a failure): send the request again, on
        a fresh connection to this server, if it may be.

        @return: Whether it was.
        """
        if (
            not exchange.request.replayable
            or exchange.retriesLeft <= 0
            or self.pool._closed
        ):
            return False
        exchange.retriesLeft -= 1
        self.assign(exchange, fresh=True)
        return True

    def checkConsistency(self) -> None:
        """
        Check that every connection is in one state only, and that the
        counts are within the limit.

        @raise AssertionError: If they are not (a bookkeeping bug).
        """
        idle = set(self.idle)
        sets = (idle, self._busy, self._closing)
        if len(idle) != len(self.idle):
            raise AssertionError(f"{self!r}: a connection is idle twice")
        for i, one in enumerate(sets):
            for other in sets[i + 1 :]:
                if one & other:
                    raise AssertionError(f"{self!r}: a connection in two states")
        if len(self._busy) + len(self._attempts) > self._limit:
            raise AssertionError(f"{self!r}: over its limit of {self._limit}")


class _ConnectionFactory(ClientFactory):
    """
    Makes the one connection of one connection attempt.
    """

    noisy = False

    def __init__(self, backend: Backend, exchange: _Exchange) -> None:
        self.backend = backend
        self.exchange = exchange

    def buildProtocol(self, addr: object) -> BackendConnection:
        return BackendConnection(self.backend, self.exchange, self)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if reason.check(ierror.TimeoutError):
            failure: BackendError = BackendTimeout("connect timed out")
        else:
            failure = BackendUnavailable(reason.getErrorMessage())
        _log.warn(
            "Backend {url} unreachable: {why}",
            url=self.backend.server.url,
            why=reason.getErrorMessage(),
        )
        self.backend.connectFailed(self, self.exchange, failure)


def _hostPort(server: BackendServer) -> bytes:
    return formatAuthority(server.host, server.port, server.scheme)


@frozen
class ServerStatus:
    """
    One server's state (see L{BackendPool.status}).

    @ivar url: The server's URL.
    @ivar state: C{"healthy"}, C{"down"} (its active checks fail) or
        C{"ejected"} (passive health).
    @ivar serving: Whether it takes new requests now (a server that is not
        healthy does when the pool is in panic).
    @ivar weight: The configured weight.
    @ivar effectiveWeight: Its share now, relative to the configured one
        (below 1.0 during a slow start).
    @ivar inFlight: Requests on it now.
    @ivar idleConnections: Kept-alive connections waiting.
    @ivar requests: Requests started on it, retries included.
    @ivar failures: Requests that failed on it.
    @ivar ejections: Its ejections in a row.
    @ivar ejectedUntil: When its ejection ends (reactor time), or L{None}.
    @ivar busyConnections: Connections carrying a request (part of
        C{inFlight}).
    @ivar connecting: Connection attempts under way (the rest of
        C{inFlight}).
    @ivar closingConnections: Connections closing, not yet closed.
    """

    url: str
    state: str
    serving: bool
    weight: int
    effectiveWeight: float
    inFlight: int
    idleConnections: int
    requests: int
    failures: int
    ejections: int
    ejectedUntil: float | None
    busyConnections: int = 0
    connecting: int = 0
    closingConnections: int = 0


@frozen
class PoolStatus:
    """
    A pool's state (see L{BackendPool.status}).

    @ivar panic: Whether too few servers are healthy, so that all serve.
    @ivar pending: Requests waiting for a connection.
    @ivar requests: Requests submitted.
    @ivar retries: Retries made on another server.
    @ivar retriesRefused: Retries the retry budget refused.
    """

    name: str
    balance: str
    panic: bool
    closed: bool
    pending: int
    requests: int
    retries: int
    retriesRefused: int
    servers: tuple[ServerStatus, ...]


def _serverStatus(backend: Backend, serving: bool) -> ServerStatus:
    server = backend.server
    state = "ejected" if backend.ejected else "healthy" if backend.up else "down"
    return ServerStatus(
        url=server.url,
        state=state,
        serving=serving,
        weight=server.weight,
        effectiveWeight=backend.weight / (server.weight * WEIGHT_SCALE),
        inFlight=backend.inFlight,
        idleConnections=len(backend.idle),
        requests=backend.requests,
        failures=backend.failures,
        ejections=backend.ejections,
        ejectedUntil=backend.ejectedUntil,
        busyConnections=backend.busy,
        connecting=backend.connecting,
        closingConnections=backend.closing,
    )


class BackendPool:
    """
    The servers of one pool, their connections, and the requests waiting
    for one.

    @ivar servers: The L{Backend}s, in configuration order.
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
        self._clock = reactor
        self._balancer = (
            balancer if balancer is not None else balancerFor(config.balance)
        )
        #: What a hashing pool hashes: the proxy computes each request's
        #: C{hashKey} only when this is not L{None}.
        self.hashOn = config.hashBy
        self.servers = [Backend(self, server) for server in config.servers]
        # The servers that take new requests; a new list whenever health
        # changes, never changed in place (balancers may cache by identity).
        self._eligible: list[Backend] = list(self.servers)
        self.panic = False
        self._pending: deque[_Exchange] = deque()
        self._closed = False
        self._sweepCall: IDelayedCall | None = None
        self._whenIdle: list[Callable[[], None]] = []
        self.requestCount = 0
        self.retryCount = 0
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
        self._slowStart = (
            SlowStart(reactor, self, config.slowStart)
            if config.slowStart > 0 and len(self.servers) > 1
            else None
        )
        # Made once per pool: trust roots and client certificates are read here.
        self._tlsCreators = backendConnectionCreators(config)

    def __repr__(self) -> str:
        return f"<BackendPool {self.name!r} servers={self.servers!r}>"

    def submit(self, request: BackendRequest, receiver: IResponseReceiver) -> _Exchange:
        """
        Forward C{request}; report progress to C{receiver}.

        @return: A handle whose C{cancel()} abandons the request (for when the
            client goes away).
        """
        exchange = _Exchange(request, receiver, self)
        if self._closed:
            exchange.fail(PoolClosed("pool is shut down"))
            return exchange
        self.requestCount += 1
        self._place(exchange)
        return exchange

    def _place(self, exchange: _Exchange) -> None:
        eligible = self._eligible
        if not eligible:
            exchange.fail(NoHealthyServers("no healthy server"))
            return
        server = self._pick(eligible, exchange.request)
        if server is None:
            self._enqueue(exchange)
        else:
            server.assign(exchange)

    def _pick(
        self, servers: Sequence[Backend], request: BackendRequest
    ) -> Backend | None:
        # A balancer answers with one of the servers it is given.
        return cast("Backend | None", self._balancer.pick(servers, request))

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
        if self._closed or not eligible:
            return None
        self._tunnelTurn = (getattr(self, "_tunnelTurn", -1) + 1) % len(eligible)
        server = eligible[self._tunnelTurn].server
        self._dial(server, factory)
        return server

    def startHealthChecks(self) -> None:
        """
        Start the active health checks, if the pool has any (the
        L{ProxyService} does this as it starts; an embedder who builds a
        pool with C{health} calls it).
        """
        if self._checker is not None and not self._closed:
            self._checker.start()

    def _healthChanged(self, cameBack: Backend | None = None) -> None:
        """
        A server's health changed: recompute which servers take requests.

        @param cameBack: A server that just became healthy again, to slow
            start.
        """
        eligible, panic = eligibleServers(self.servers, self.config.panicThreshold)
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
        if cameBack is not None and self._slowStart is not None and not panic:
            self._slowStart.begin(cameBack)
        self._dispatchPending()

    def status(self) -> PoolStatus:
        """
        The pool's state now, for the admin page and monitoring.
        """
        return PoolStatus(
            name=self.name,
            balance=self.config.balance,
            panic=self.panic,
            closed=self._closed,
            pending=len(self._pending),
            requests=self.requestCount,
            retries=self.retryCount,
            retriesRefused=self._budget.refused,
            servers=tuple(_serverStatus(s, s in self._eligible) for s in self.servers),
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
        exchange.queuedCall = self._clock.callLater(
            self.config.pendingTimeout, self._pendingExpired, exchange
        )
        self._pending.append(exchange)

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

    def _dispatchPending(self) -> None:
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

    def _dial(self, server: BackendServer, factory: ClientFactory) -> None:
        """
        Open a connection to C{server} (with TLS for C{https://}) for
        C{factory}, within the pool's connect timeout.
        """
        timeout = self.config.connectTimeout
        if server.scheme == "https":
            self._reactor.connectSSL(
                server.host,
                server.port,
                factory,
                # connectSSL takes a connection creator too (Twisted 14.0+).
                self._tlsCreators[server],  # type: ignore[arg-type]
                timeout=timeout,
                bindAddress=None,
            )
        else:
            self._reactor.connectTCP(server.host, server.port, factory, timeout=timeout)

    def _attemptFailed(
        self, exchange: _Exchange, reason: BackendError, failed: Backend
    ) -> None:
        # (The connection attempt is already counted gone by the caller.)
        if exchange.done:
            return
        # Nothing was sent: any other server may take any request.
        if not self._retryElsewhere(exchange):
            exchange.fail(reason)

    def _retryTarget(self, exchange: _Exchange) -> Backend | None:
        """
        The server to retry C{exchange} on, if it has retries left, the
        retry budget allows one more, and another healthy server that it
        has not tried can take it now; the retry is counted.
        """
        if exchange.retriesLeft <= 0 or self._closed:
            return None
        tried = exchange.triedServers
        others = [s for s in self._eligible if s not in tried]
        if not others:
            return None
        server = self._pick(others, exchange.request)
        if server is None:
            return None
        if not self._budget.allow(self._clock.seconds(), self.requestCount):
            _log.warn(
                "Pool {pool}: retry budget spent, request not retried", pool=self.name
            )
            return None
        exchange.retriesLeft -= 1
        self.retryCount += 1
        return server

    def _retryElsewhere(self, exchange: _Exchange) -> bool:
        """
        Start C{exchange} again on another server (see L{_retryTarget}).

        @return: Whether it was.
        """
        server = self._retryTarget(exchange)
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
        for exchange in self._pending:
            if exchange.done or exchange.queuedCall is None:
                raise AssertionError(f"{exchange!r} is queued but finished")

    def _connectionGone(self) -> None:
        if self._whenIdle and self.openConnections == 0:
            callbacks, self._whenIdle = self._whenIdle, []
            for callback in callbacks:
                callback()

    def _scheduleSweep(self) -> None:
        if self._sweepCall is None:
            self._sweepCall = self._clock.callLater(
                max(self.config.idleTimeout / 2, 0.5), self._sweepIdle
            )

    def _sweepIdle(self) -> None:
        self._sweepCall = None
        deadline = self._clock.seconds() - self.config.idleTimeout
        anyLeft = False
        for server in self.servers:
            expired = [c for c in server.idle if c.idleSince <= deadline]
            for connection in expired:
                connection.close()
            anyLeft = anyLeft or bool(server.idle)
        if anyLeft:
            self._scheduleSweep()

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
        self._closed = True
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
