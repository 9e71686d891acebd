"""
What a pool shows of itself: L{PoolStatus}, L{ServerStatus} and
L{DiscoveryStatus}, for the admin page and the metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

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
    @ivar effectiveWeight: Its share now, relative to its full weight (the
        override, or the configured one): below 1.0 during a slow start.
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
    @ivar adminState: C{"ready"}, C{"drain"} or C{"maintenance"} (set at
        run time); C{"drain"} too for a server that left the pool's server
        set and is draining.
    @ivar weightOverride: The weight set at run time in place of the
        configured one, or L{None}.
    @ivar removed: Whether the server left the pool's server set and is
        draining until its last connection is gone.
    @ivar checked: Whether its active health checks run (the pool has
        them, and it is not in maintenance).
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
    adminState: str = "ready"
    weightOverride: int | None = None
    removed: bool = False
    checked: bool = False


@frozen
class DiscoveryStatus:
    """
    One DNS discovery entry's state (see
    L{twisted_rproxy.pool.discovery.ServerDiscovery}).

    @ivar entry: What is resolved (C{"dns app.internal port 8000"}).
    @ivar key: The entry's key in the configuration.
    @ivar servers: The URLs of the servers of its last good answer: the
        ones it keeps in the pool while resolution fails.
    @ivar lastResolution: When it was last resolved, successfully or not
        (reactor time), or L{None} before its first answer.
    @ivar lastSuccess: When an answer last gave servers, or L{None}.
    @ivar lastError: Why the last resolution failed (or, when only one of
        its queries failed, what that one said), or L{None}.
    @ivar failures: Resolutions failed in a row.
    @ivar nextResolution: When it is resolved next, or L{None} while it
        is being resolved (or is stopped).
    """

    entry: str
    key: str
    servers: tuple[str, ...]
    lastResolution: float | None
    lastSuccess: float | None
    lastError: str | None
    failures: int
    nextResolution: float | None


class DiscoverySource(Protocol):
    """
    What finds a pool's servers by DNS, as the pool's status reads it.
    """

    def status(self) -> tuple[DiscoveryStatus, ...]:
        """
        The state of each of its entries.
        """


@frozen
class PoolStatus:
    """
    A pool's state (see L{BackendPool.status}).

    @ivar panic: Whether too few servers are healthy, so that all serve.
    @ivar pending: Requests waiting for a connection.
    @ivar requests: Requests submitted.
    @ivar retries: Retries made on another server.
    @ivar retriesRefused: Retries the retry budget refused.
    @ivar discovery: The state of its DNS discovery entries, if any.
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
    discovery: tuple[DiscoveryStatus, ...] = ()


def serverStatus(backend: Backend, serving: bool, checked: bool) -> ServerStatus:
    """
    The L{ServerStatus} of C{backend}.

    @param serving: Whether it takes new requests now.
    @param checked: Whether its active health checks run.
    """
    server = backend.server
    state = "ejected" if backend.ejected else "healthy" if backend.up else "down"
    adminState = backend.adminState
    if backend.removed and adminState == "ready":
        adminState = "drain"
    return ServerStatus(
        url=server.url,
        state=state,
        serving=serving,
        weight=server.weight,
        effectiveWeight=backend.weight / (backend.baseWeight * WEIGHT_SCALE),
        inFlight=backend.inFlight,
        idleConnections=len(backend.idle),
        requests=backend.requests,
        failures=backend.failures,
        ejections=backend.ejections,
        ejectedUntil=backend.ejectedUntil,
        busyConnections=backend.busy,
        connecting=backend.connecting,
        closingConnections=backend.closing,
        adminState=adminState,
        weightOverride=backend.weightOverride,
        removed=backend.removed,
        checked=checked,
    )
