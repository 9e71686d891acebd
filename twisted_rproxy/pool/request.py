"""
The bookkeeping of one exchange through a pool (L{_Exchange}), and what it
needs of the pool it waits in (L{ExchangeQueue}) and of the connection that
carries it (L{ExchangeCarrier}): the two are declared here, so that this
module imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.internet.interfaces import IDelayedCall

from twisted_rproxy.interfaces import IResponseReceiver
from twisted_rproxy.messages import BackendError, BackendRequest

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from twisted_rproxy.config import PoolConfig


class ExchangeQueue(Protocol):
    """
    What an exchange, and the connection carrying it, need of their pool
    (L{twisted_rproxy.pool.BackendPool} provides it).
    """

    @property
    def config(self) -> PoolConfig:
        """
        The pool's settings (retries, timeouts).
        """

    @property
    def clock(self) -> IReactorTime:
        """
        The pool's clock.
        """

    def withdraw(self, exchange: _Exchange) -> None:
        """
        Take C{exchange} out of the queue of requests waiting for a
        connection, if it is in it.
        """


class ExchangeCarrier(Protocol):
    """
    What an exchange needs of the connection carrying it.
    """

    def abandon(self, exchange: _Exchange) -> None:
        """
        The client of C{exchange} went away: stop carrying it.
        """


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
        self, request: BackendRequest, receiver: IResponseReceiver, pool: ExchangeQueue
    ) -> None:
        self.request = request
        self.receiver = receiver
        self.pool = pool
        self.retriesLeft = pool.config.retries
        # The servers (pool.Backend) tried, compared by identity.
        self.triedServers: list[object] = []
        self.connection: ExchangeCarrier | None = None
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
            self.pool.withdraw(self)
        connection = self.connection
        if connection is not None:
            connection.abandon(self)
