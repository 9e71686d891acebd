"""
L{Backend}: one backend server of a pool and its connections, and what it
needs of its pool (L{ServerPool}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from typing import Protocol as TypingProtocol

from twisted.internet import error as ierror
from twisted.internet.protocol import ClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.health import WEIGHT_SCALE
from twisted_rproxy.interfaces import IBackendServer
from twisted_rproxy.messages import BackendError, BackendTimeout, BackendUnavailable
from twisted_rproxy.pool.connection import BackendConnection
from twisted_rproxy.pool.request import ExchangeQueue, _Exchange
from twisted_rproxy.rules.http1 import formatAuthority

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConnector

    from twisted_rproxy.config import BackendServer

_log = Logger()

#: The admin states of a server (L{Backend.adminState}): it takes new
#: requests; it takes none, its requests in flight finish and its
#: connections close as they end; the same, and its health checks stop.
READY = "ready"
DRAIN = "drain"
MAINTENANCE = "maintenance"
ADMIN_STATES = (READY, DRAIN, MAINTENANCE)


class ServerPool(ExchangeQueue, TypingProtocol):
    """
    What a L{Backend} needs of its pool (L{twisted_rproxy.pool.BackendPool}
    provides it): the server reports, the pool decides (dialling, the
    queue, retries on another server, passive health).
    """

    @property
    def closed(self) -> bool:
        """
        Whether the pool is shut down.
        """

    def dial(self, server: BackendServer, factory: ClientFactory) -> None:
        """
        Open a connection to C{server} for C{factory}.
        """

    def connectionGone(self) -> None:
        """
        One of the pool's connections (or attempts) is gone.
        """

    def attemptFailed(self, exchange: _Exchange, reason: BackendError) -> None:
        """
        The connection attempt made for C{exchange} failed with C{reason}
        (nothing was sent).
        """

    def dispatchPending(self) -> None:
        """
        A slot may be free: start queued requests.
        """

    def scheduleSweep(self) -> None:
        """
        A connection went idle: make sure idle ones are swept.
        """

    def retryTarget(self, exchange: _Exchange) -> Backend | None:
        """
        The server to retry C{exchange} on, the retry counted; or L{None}.
        """

    def retryElsewhere(self, exchange: _Exchange) -> bool:
        """
        Start C{exchange} again on another server, if it may be.
        """

    def serverFailed(self, backend: Backend) -> None:
        """
        A request failed on C{backend} (for passive health).
        """


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
    @ivar adminState: L{READY}, L{DRAIN} or L{MAINTENANCE}: set at run
        time (L{twisted_rproxy.pool.BackendPool.setServerState}).
    @ivar weightOverride: A weight set at run time in place of the
        configured one, or L{None}.
    @ivar removed: Whether the server left the pool's server set
        (L{twisted_rproxy.pool.BackendPool.updateServers}): it drains, and
        is forgotten once its last connection is gone.
    """

    def __init__(self, pool: ServerPool, server: BackendServer) -> None:
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
        self.adminState = READY
        self.weightOverride: int | None = None
        self.removed = False
        self._limit = pool.config.maxConnections
        self._hostPort = _hostPort(server)

    def __repr__(self) -> str:
        return (
            f"<Backend {self.server.url} connecting={len(self._attempts)} "
            f"busy={len(self._busy)} idle={len(self.idle)} "
            f"closing={len(self._closing)}>"
        )

    @property
    def accepting(self) -> bool:
        """
        Whether the server may be given new requests (health permitting):
        it is ready and still one of the pool's servers.
        """
        return self.adminState == READY and not self.removed

    @property
    def baseWeight(self) -> int:
        """
        The full weight, unscaled: the run-time override, or the
        configured weight.
        """
        override = self.weightOverride
        return override if override is not None else self.server.weight

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
        self.pool.serverFailed(self)

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
        self.pool.dial(self.server, attempt)

    def connected(
        self,
        attempt: object,
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
        pool.connectionGone()
        self.noteFailure()
        pool.attemptFailed(exchange, reason)
        pool.dispatchPending()

    def release(self, connection: BackendConnection) -> None:
        """
        C{connection} finished its exchange and may carry another.
        """
        if connection not in self._busy:
            # Retired while its exchange ended: it stays closing.
            return
        self._busy.remove(connection)
        pool = self.pool
        if pool.closed or not self.accepting or len(self.idle) >= pool.config.maxIdle:
            # A draining server's connections close as their exchanges end.
            self._closing.add(connection)
            connection.close()
        else:
            connection.idleSince = pool.clock.seconds()
            self.idle.append(connection)
            pool.scheduleSweep()
        pool.dispatchPending()

    def retire(self, connection: BackendConnection) -> None:
        """
        C{connection} will carry nothing more and is being closed; a busy
        one gives its slot back.
        """
        if connection in self._busy:
            self._busy.remove(connection)
            self._closing.add(connection)
            self.pool.dispatchPending()
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
        self.pool.connectionGone()

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
        target = pool.retryTarget(exchange)
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
            and self.pool.retryElsewhere(exchange)
        ):
            return
        exchange.fail(reason)

    def staleConnection(
        self, exchange: _Exchange, connection: BackendConnection
    ) -> bool:
        """
        The kept-alive C{connection} that carried C{exchange} was closed by
        this server as it was reused, before any byte of an answer (a race
        with its idle timeout, not a failure): send the request again, on
        a fresh connection to this server, if it may be.

        The fresh attempt takes the closed connection's slot at once: a
        queued request must not take it in between, or the server would
        be over its connection limit.

        @return: Whether it was; C{connection} is then forgotten. If not,
            it is still to be reported L{lost}.
        """
        if (
            not exchange.request.replayable
            or exchange.retriesLeft <= 0
            or self.pool.closed
            or connection not in self._busy
        ):
            return False
        if not self.accepting:
            # Draining: the request was not seen, so another server takes
            # it if one can; else it goes again here, as it was in flight.
            target = self.pool.retryTarget(exchange)
            if target is not None:
                self._busy.remove(connection)
                target.assign(exchange)
                self.pool.connectionGone()
                return True
            if exchange.retriesLeft <= 0:
                return False
        exchange.retriesLeft -= 1
        self._busy.remove(connection)
        self.assign(exchange, fresh=True)
        self.pool.connectionGone()
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
        if self.idle and not self.accepting:
            raise AssertionError(f"{self!r}: idle connections while draining")


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
