"""
What a pool shows of itself: L{PoolStatus} and L{ServerStatus}, for the
admin page and the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrs import frozen

from twisted_rproxy.health import WEIGHT_SCALE

if TYPE_CHECKING:
    from twisted_rproxy.pool.backend import Backend


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


def serverStatus(backend: Backend, serving: bool) -> ServerStatus:
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
