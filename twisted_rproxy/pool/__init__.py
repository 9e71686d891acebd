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

The package, bottom to top (each module imports only those before it):
L{dial} (connecting to a server: TCP or a unix socket, with TLS for
C{https}), L{request} (one exchange's bookkeeping), L{connection} (the HTTP/1.1
client protocol), L{backend} (one server and its connections), L{health}
(active checks, outlier ejection, slow start), L{status} (what the admin
page shows), L{control} (run-time changes of the servers: admin states,
weights, the server set), L{backendpool} (the pool), L{discovery} (DNS
discovery of a pool's servers, which drives it). Each declares, as a typing
protocol, what it needs of the one above it. This module re-exports.
"""

from twisted_rproxy._twisted import writeBatched as writeBatched

# Re-exported: it lived here before twisted_rproxy.balance.
from twisted_rproxy.balance import RoundRobinBalancer as RoundRobinBalancer
from twisted_rproxy.messages import (
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
)
from twisted_rproxy.pool.backend import (
    ADMIN_STATES,
    DRAIN,
    MAINTENANCE,
    READY,
    Backend,
)
from twisted_rproxy.pool.backendpool import BackendPool
from twisted_rproxy.pool.connection import MAX_RESPONSE_HEAD, BackendConnection
from twisted_rproxy.pool.control import ServerControl, serverIdentity
from twisted_rproxy.pool.health import HealthChecker, OutlierDetector, SlowStart
from twisted_rproxy.pool.status import PoolStatus, ServerStatus

__all__ = [
    "ADMIN_STATES",
    "DRAIN",
    "IDEMPOTENT_METHODS",
    "MAINTENANCE",
    "READY",
    "MAX_RESPONSE_HEAD",
    "Backend",
    "BackendConnection",
    "BackendError",
    "BackendPool",
    "BackendProtocolError",
    "BackendRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "HealthChecker",
    "NoHealthyServers",
    "OutlierDetector",
    "PoolClosed",
    "PoolOverloaded",
    "PoolStatus",
    "RequestBodyStream",
    "RoundRobinBalancer",
    "ServerControl",
    "ServerStatus",
    "SlowStart",
    "serverIdentity",
    "writeBatched",
]
