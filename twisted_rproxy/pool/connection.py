"""
L{BackendConnection}: our own small, strict HTTP/1.1 client protocol, one
exchange at a time over a kept-alive connection.

The wire rules are L{twisted_rproxy.rules.http1}'s (the response parser and
the request-head writer); the retry decisions are the L{Backend}'s. What is
here is the I/O: the transport, the read timeout, backpressure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet import error as ierror
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy._twisted import writeBatched
from twisted_rproxy.interfaces import IInterimReceiver, IResponseReceiver
from twisted_rproxy.messages import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
)
from twisted_rproxy.pool.request import ExchangeQueue, _Exchange

# Re-exported: it lived here before twisted_rproxy.rules.http1.
from twisted_rproxy.rules.http1 import MAX_RESPONSE_HEAD as MAX_RESPONSE_HEAD
from twisted_rproxy.rules.http1 import (
    ResponseHead,
    ResponseParser,
    formatRequestHead,
)
from twisted_rproxy.tls import describeTLSFailure

if TYPE_CHECKING:
    from twisted_rproxy.config import BackendServer

_log = Logger()

#: The most interim (1xx) responses passed on to the receiver for one
#: exchange; later ones are read and dropped.
MAX_INTERIM_FORWARDED = 10

#: The most bytes of interim heads (status lines and headers) passed on for
#: one exchange: what the client connection may have to buffer for them.
MAX_INTERIM_BYTES = 65536

#: The most interim responses read for one exchange, passed on or not: a
#: backend sending more is broken (or hostile) and the exchange fails.
MAX_INTERIM_RESPONSES = 100


class ConnectionOwner(TypingProtocol):
    """
    What a L{BackendConnection} needs of the backend server it belongs to
    (L{twisted_rproxy.pool.Backend} provides it): where to report what
    happened to its exchange. The server and its pool decide what follows
    (reuse, close, retry).
    """

    errorStreak: int

    @property
    def server(self) -> BackendServer:
        """
        The server's configuration (its URL, for the log).
        """

    @property
    def pool(self) -> ExchangeQueue:
        """
        The server's pool: its settings and clock.
        """

    @property
    def hostPort(self) -> bytes:
        """
        The server's authority, for a C{Host} header.
        """

    def connected(
        self, attempt: object, connection: BackendConnection, exchange: _Exchange
    ) -> None:
        """
        The connection of C{attempt}, made for C{exchange}, is up.
        """

    def release(self, connection: BackendConnection) -> None:
        """
        C{connection} finished its exchange and may carry another.
        """

    def retire(self, connection: BackendConnection) -> None:
        """
        C{connection} carries nothing more and is being closed.
        """

    def lost(self, connection: BackendConnection) -> None:
        """
        C{connection} is closed.
        """

    def serverError(self, exchange: _Exchange, status: int) -> bool:
        """
        The server answered C{exchange} with a 5xx.

        @return: Whether the request went to another server.
        """

    def responseFailed(
        self, exchange: _Exchange, reason: BackendError, beforeResponse: bool
    ) -> None:
        """
        C{exchange} failed with C{reason}; the connection is closed.
        """

    def staleConnection(
        self, exchange: _Exchange, connection: BackendConnection
    ) -> bool:
        """
        The kept-alive C{connection} was closed by the server as it was
        reused, before any answer.

        @return: Whether the request was sent again (C{connection} is then
            forgotten, its slot taken by the new attempt); if not, the
            connection reports its loss as usual.
        """


@implementer(IPushProducer)
class BackendConnection(Protocol):
    """
    One HTTP/1.1 connection to a backend server, carrying one exchange at
    a time and kept alive between them.

    It reads responses with a L{ResponseParser} and reports to its
    L{Backend} what happened (a 5xx, a failure, a stale connection); the
    backend decides whether the request is retried.

    It is the L{IPushProducer} of its response body: the receiver pauses it
    while the client is slow, which stops reading from the backend.
    """

    idleSince = 0.0
    #: Whether the whole body of the response just started is already read
    #: (so there is nothing to pause).
    bodyBuffered = False
    # A TCP or TLS transport: ITransport, IConsumer, IPushProducer and
    # abortConnection, which ITransport alone does not declare.
    transport: Any

    def __init__(
        self, backend: ConnectionOwner, firstExchange: _Exchange, attempt: object
    ) -> None:
        self.backend = backend
        self._first: _Exchange | None = firstExchange
        self._attempt = attempt
        self._exchange: _Exchange | None = None
        self._parser = ResponseParser(self)
        self._clock = backend.pool.clock
        self._gotBytes = False
        self._paused = False
        self._closing = False
        self._timeoutCall: IDelayedCall | None = None
        self._lastRead = 0.0
        self.exchanges = 0
        # Interim responses of the current exchange: read, and bytes passed on.
        self._interimCount = 0
        self._interimBytes = 0

    def connectionMade(self) -> None:
        first, self._first = self._first, None
        assert first is not None
        self.backend.connected(self._attempt, self, first)

    # Sending.

    def send(self, exchange: _Exchange) -> None:
        """
        Send C{exchange}'s request and start reading its response.
        """
        self._exchange = exchange
        exchange.connection = self
        self._gotBytes = False
        self._interimCount = 0
        self._interimBytes = 0
        request = exchange.request
        self._parser.expect(request.method)
        clock = self._clock
        self._lastRead = clock.seconds()
        if self._timeoutCall is None:
            # One timer per connection, not per request: it checks the time
            # of the last read when it fires.
            self._timeoutCall = clock.callLater(
                self.backend.pool.config.readTimeout, self._checkTimeout
            )
        transport = self.transport
        assert transport is not None
        host = self.backend.hostPort if request.hostFromBackend else None
        stream = request.bodyStream
        body = request.body
        chunked = False
        if stream is not None:
            length = stream.length
            chunked = length is None
        elif isinstance(body, bytes):
            sized = bool(body) or request.method in (b"POST", b"PUT", b"PATCH")
            length = len(body) if sized else None
        else:
            length = request.bodyLength
        head = formatRequestHead(
            request.method, request.target, request.headers, host, length, chunked
        )
        if stream is not None:
            transport.write(head)
            if chunked:
                stream.startStreaming(self._writeChunk, self._finishChunked)
            else:
                stream.startStreaming(transport.write, _noop)
            transport.registerProducer(stream, True)
        elif isinstance(body, bytes):
            writeBatched(transport, head + body if body else head)
        else:
            assert body is not None
            transport.write(head)
            body.seek(0)
            FileSender().beginFileTransfer(body, transport)
        self.exchanges += 1

    def _writeChunk(self, data: bytes) -> None:
        if data and self.transport is not None:
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _finishChunked(self) -> None:
        if self.transport is not None:
            self.transport.write(b"0\r\n\r\n")

    # Reading.

    def dataReceived(self, data: bytes) -> None:
        if self._exchange is None:
            # Bytes nobody asked for: this connection can't be trusted.
            self._closing = True
            if self.transport is not None:
                self.transport.loseConnection()
            return
        self._lastRead = self._clock.seconds()
        self._gotBytes = True
        self._parser.feed(data)

    # What the parser reports (ResponseEvents).

    def interimHead(self, head: ResponseHead) -> None:
        """
        A 1xx head, the final one to follow: passed on to a receiver that
        takes them (L{IInterimReceiver}), as it arrives.

        A C{100 Continue} is dropped: the proxy answers a client's
        C{Expect} itself and does not forward it, so the backend's says
        nothing the client needs. Past L{MAX_INTERIM_FORWARDED} heads or
        L{MAX_INTERIM_BYTES} of them, the rest are dropped; past
        L{MAX_INTERIM_RESPONSES}, the exchange fails as a protocol error.
        """
        exchange = self._exchange
        assert exchange is not None
        self._interimCount += 1
        if self._interimCount > MAX_INTERIM_RESPONSES:
            self.protocolError(f"more than {MAX_INTERIM_RESPONSES} interim responses")
            return
        status, reason, headers = head[0], head[1], head[2]
        receiver = exchange.receiver
        if status == 100 or not IInterimReceiver.providedBy(receiver):
            return
        size = len(reason) + 14 + sum(len(n) + len(v) + 4 for n, v in headers)
        if (
            self._interimCount > MAX_INTERIM_FORWARDED
            or self._interimBytes + size > MAX_INTERIM_BYTES
        ):
            return
        self._interimBytes += size
        IInterimReceiver(receiver).interimResponse(status, reason, headers)

    def responseHead(self, head: ResponseHead) -> Callable[[bytes], None]:
        """
        The final head: a 5xx is reported to the backend, which may retry
        the request elsewhere; the receiver gets the response.

        @return: The receiver's C{responseData}, for the body.
        """
        exchange = self._exchange
        assert exchange is not None
        self.bodyBuffered = self._parser.bodyBuffered
        status, reason, headers = head[0], head[1], head[2]
        backend = self.backend
        if status >= 500:
            if backend.serverError(exchange, status):
                # The request went elsewhere; the rest of this response
                # is read and dropped, so that the connection stays usable.
                exchange = _Exchange(exchange.request, _DISCARD, backend.pool)
                exchange.connection = self
                self._exchange = exchange
        elif backend.errorStreak:
            backend.errorStreak = 0
        receiver = exchange.receiver
        receiver.responseStarted(status, reason, headers, self)
        return receiver.responseData

    def responseEnd(self, keepAlive: bool) -> None:
        """
        The response is complete: the connection goes back to its backend,
        or closes.
        """
        exchange = self._exchange
        assert exchange is not None
        self._exchange = None
        exchange.connection = None
        exchange.done = True
        if self._paused:
            self._paused = False
            if self.transport is not None:
                self.transport.resumeProducing()
        stream = exchange.request.bodyStream
        if stream is not None:
            stream.stopStreaming()
            if self.transport is not None:
                self.transport.unregisterProducer()
            if not stream.complete:
                # The backend answered before the body was all sent.
                keepAlive = False
        if keepAlive and not self._closing:
            self.backend.release(self)
        else:
            self.backend.retire(self)
            if self.transport is not None:
                self.transport.loseConnection()
        exchange.receiver.responseFinished()

    def protocolError(self, reason: str) -> None:
        """
        The response is malformed: the exchange fails, the connection
        closes.
        """
        _log.warn(
            "Malformed response from backend {url}: {why}",
            url=self.backend.server.url,
            why=reason,
        )
        self._fail(BackendProtocolError(reason))

    def _fail(self, reason: BackendError) -> None:
        """
        End the current exchange with C{reason} and close the connection;
        the backend decides whether the request is retried.
        """
        exchange = self._exchange
        parser = self._parser
        beforeResponse = not parser.headReceived
        parser.detach()
        self._exchange = None
        self._cancelTimeout()
        self._closing = True
        self.backend.retire(self)
        if self.transport is not None:
            self.transport.abortConnection()
        if exchange is not None:
            exchange.connection = None
            self.backend.responseFailed(exchange, reason, beforeResponse)

    # Timeouts.

    def _checkTimeout(self) -> None:
        self._timeoutCall = None
        if self._exchange is None:
            return
        clock = self._clock
        timeout = self.backend.pool.config.readTimeout
        waited = clock.seconds() - self._lastRead
        if waited < timeout or self._paused:
            # Data came in the meantime, or the client is the slow one.
            self._timeoutCall = clock.callLater(
                max(timeout - waited, 0.001) if not self._paused else timeout,
                self._checkTimeout,
            )
            return
        _log.warn(
            "Backend {url} timed out after {timeout}s",
            url=self.backend.server.url,
            timeout=timeout,
        )
        self._fail(BackendTimeout("read timed out"))

    def _cancelTimeout(self) -> None:
        call = self._timeoutCall
        if call is not None:
            self._timeoutCall = None
            call.cancel()

    # Producer, for the client side's backpressure.

    def pauseProducing(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        exchange = self._exchange
        if exchange is not None:
            self.abandon(exchange)

    # Endings.

    def abandon(self, exchange: _Exchange) -> None:
        """
        The client of C{exchange} went away mid-response: this connection
        is in an unknown place in the response, so it closes.
        """
        if self._exchange is exchange:
            self._exchange = None
            exchange.connection = None
            self._parser.detach()
            self._cancelTimeout()
            self._closing = True
            self.backend.retire(self)
            if self.transport is not None:
                self.transport.abortConnection()

    def close(self) -> None:
        """
        Close this connection, which carries no exchange.
        """
        self._closing = True
        self.backend.retire(self)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = ierror.ConnectionDone) -> None:  # type: ignore[assignment]
        self._cancelTimeout()
        exchange = self._exchange
        self._exchange = None
        backend = self.backend
        parser = self._parser
        beforeResponse = not parser.headReceived
        ended = parser.feedEOF()
        if exchange is None:
            backend.lost(self)
            return
        exchange.connection = None
        if (
            not ended
            and not self._gotBytes
            and self.exchanges > 1
            and backend.staleConnection(exchange, self)
        ):
            # A kept-alive connection that the backend closed as we reused
            # it: the request went again on a fresh one, which took this
            # one's slot.
            return
        backend.lost(self)
        if ended:
            # The normal end of a body delimited by the connection's close.
            exchange.done = True
            exchange.receiver.responseFinished()
            return
        tlsFailure = describeTLSFailure(reason) if self.exchanges == 1 else None
        if tlsFailure is not None and beforeResponse and not self._gotBytes:
            failure: BackendError = BackendUnavailable(tlsFailure)
        elif beforeResponse and not self._gotBytes:
            failure = BackendUnavailable(
                "backend closed the connection without answering"
            )
        else:
            failure = BackendProtocolError("backend closed the connection mid-response")
        _log.warn("Backend {url}: {why}", url=backend.server.url, why=str(failure))
        backend.responseFailed(exchange, failure, beforeResponse)


@implementer(IResponseReceiver)
class _Discard:
    """
    Receives the rest of a response whose request is retried elsewhere.
    """

    def responseStarted(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        connection: object,
    ) -> None:
        pass

    def responseData(self, data: bytes) -> None:
        pass

    def responseFinished(self) -> None:
        pass

    def requestFailed(self, reason: object) -> None:
        pass


_DISCARD = _Discard()


def _noop() -> None:
    pass
