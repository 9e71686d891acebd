"""
The bookkeeping of one exchange through a pool (L{_Exchange}); and, from
L{twisted_rproxy.messages}, what travels through it: the errors it reports,
the request to forward (L{BackendRequest}) and a streamed request body
(L{RequestBodyStream}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IDelayedCall

from twisted_rproxy.interfaces import IResponseReceiver
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

if TYPE_CHECKING:
    from twisted_rproxy.pool import Backend, BackendPool
    from twisted_rproxy.pool.connection import BackendConnection

__all__ = [
    "IDEMPOTENT_METHODS",
    "BackendError",
    "BackendProtocolError",
    "BackendRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "NoHealthyServers",
    "PoolClosed",
    "PoolOverloaded",
    "RequestBodyStream",
]


class _Exchange:
    """
    One request travelling through a pool: its attempts, its place in the
    queue or on a connection, and its receiver.
    """

    __slots__ = (
        "request",
        "receiver",
        "pool",
        "retriesLeft",
        "triedServers",
        "connection",
        "queuedCall",
        "done",
    )

    def __init__(
        self, request: BackendRequest, receiver: IResponseReceiver, pool: BackendPool
    ) -> None:
        self.request = request
        self.receiver = receiver
        self.pool = pool
        self.retriesLeft = pool.config.retries
        self.triedServers: list[Backend] = []
        self.connection: BackendConnection | None = None
        self.queuedCall: IDelayedCall | None = None
        self.done = False

    def fail(self, reason: BackendError) -> None:
        if self.done:
            return
        self.done = True
        self.receiver.requestFailed(reason)

    def cancel(self) -> None:
        """
        The client went away: forget the request, wherever it is.
        """
        if self.done:
            return
        self.done = True
        if self.queuedCall is not None:
            self.queuedCall.cancel()
            self.queuedCall = None
            try:
                self.pool._pending.remove(self)
            except ValueError:
                pass
        connection = self.connection
        if connection is not None:
            connection.abandon(self)
