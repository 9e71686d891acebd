"""
What travels through a pool: the errors it reports, the request to forward
(L{BackendRequest}), a streamed request body (L{RequestBodyStream}), and
the bookkeeping of one exchange.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING

from attrs import define
from twisted.internet.interfaces import IDelayedCall, IPushProducer

from twisted_rproxy.interfaces import IResponseReceiver

if TYPE_CHECKING:
    from twisted_rproxy.pool import Backend, BackendPool
    from twisted_rproxy.pool.connection import BackendConnection


#: Methods that RFC 9110 section 9.2.2 calls idempotent: safe to send again.
IDEMPOTENT_METHODS = frozenset(
    [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"]
)


class BackendError(Exception):
    """
    A request could not be completed by the pool's backends.

    @cvar status: The status the proxy answers the client with.
    """

    status = 502


class BackendUnavailable(BackendError):
    """
    No connection could be made: refused, unreachable, or closed before
    answering.
    """


class BackendTimeout(BackendError):
    """
    The backend did not connect or answer in time.
    """

    status = 504


class BackendProtocolError(BackendError):
    """
    The backend's response was not well-formed HTTP/1.1.
    """


class PoolOverloaded(BackendError):
    """
    Every server is at its connection limit and the pool's queue is full,
    or the request waited in it for too long.
    """

    status = 503


class NoHealthyServers(PoolOverloaded):
    """
    Every server of the pool is down or ejected, and its panic threshold
    is 0 (so it does not fall back on them).
    """


class PoolClosed(BackendError):
    """
    The pool was shut down.
    """

    status = 503


@define
class BackendRequest:
    """
    One request to forward: method, target, headers already rewritten for
    the backend, and the body.

    @ivar body: The whole body as L{bytes}, or a seekable binary file of
        C{bodyLength} bytes, for a buffered request; or L{None} when the
        body streams from C{bodyStream}.
    @ivar bodyStream: For a streamed request, the source of the body as it
        arrives from the client (see L{IRequestBodyStream}).
    @ivar hashKey: What a C{balance = "hash"} pool places the request by
        (see L{BackendPool.hashOn}); L{None} otherwise.
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | IO[bytes] | None = b""
    bodyLength: int = 0
    bodyStream: RequestBodyStream | None = None
    hostFromBackend: bool = False
    hashKey: bytes | None = None

    @property
    def replayable(self) -> bool:
        """
        Whether the request may be sent again after a failed attempt: an
        idempotent method whose body we still hold.
        """
        return self.bodyStream is None and self.method in IDEMPOTENT_METHODS


class RequestBodyStream:
    """
    The body of a client request that is forwarded as it arrives.

    The client side calls L{dataReceived} and L{finished}; the backend
    connection calls L{startStreaming} with its write callbacks. Data that
    arrives before a backend connection is ready is held, and the client
    is paused (through C{clientProducer}) until it is taken.

    @ivar length: The body's length when the client gave a Content-Length,
        else L{None} (the backend then gets it chunked).
    """

    _maxHeld = 65536

    def __init__(self, length: int | None, clientProducer: IPushProducer) -> None:
        self.length = length
        self._client = clientProducer
        self._held: list[bytes] = []
        self._heldSize = 0
        self._done = False
        self._pausedClient = False
        self._write: Callable[[bytes], None] | None = None
        self._finish: Callable[[], None] | None = None
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        """
        A piece of the body arrived from the client.
        """
        self.received += len(data)
        if self._write is not None:
            self._write(data)
            return
        self._held.append(data)
        self._heldSize += len(data)
        if self._heldSize > self._maxHeld and not self._pausedClient:
            self._pausedClient = True
            self._client.pauseProducing()

    @property
    def complete(self) -> bool:
        """
        Whether the whole body has arrived from the client.
        """
        return self._done

    def finished(self) -> None:
        """
        The whole body arrived from the client.
        """
        self._done = True
        if self._finish is not None:
            self._finish()

    def startStreaming(
        self, write: Callable[[bytes], None], finish: Callable[[], None]
    ) -> None:
        """
        Deliver the body, from now on, to C{write}, and its end to C{finish}.
        """
        self._write = write
        self._finish = finish
        held, self._held, self._heldSize = self._held, [], 0
        for data in held:
            write(data)
        if self._pausedClient:
            self._pausedClient = False
            self._client.resumeProducing()
        if self._done:
            finish()

    def stopStreaming(self) -> None:
        """
        The backend connection is gone: hold nothing more for it.
        """
        self._write = self._finish = None
        self._held = []

    # IPushProducer, registered with the backend transport for backpressure.
    def pauseProducing(self) -> None:
        self._client.pauseProducing()

    def resumeProducing(self) -> None:
        self._client.resumeProducing()

    def stopProducing(self) -> None:
        self.stopStreaming()


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
