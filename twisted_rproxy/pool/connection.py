"""
L{BackendConnection}: our own small, strict HTTP/1.1 client protocol, one
exchange at a time over a kept-alive connection; and L{writeThrough}.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet import error as ierror
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.interfaces import IResponseReceiver
from twisted_rproxy.pool.request import (
    BackendError,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    _Exchange,
)
from twisted_rproxy.tls import describeTLSFailure

if TYPE_CHECKING:
    from twisted_rproxy.pool import Backend, _ConnectionFactory

_log = Logger()


#: The largest response head (status line and headers) accepted from a backend.
MAX_RESPONSE_HEAD = 65536


#: One header line, after the CRLF that ends the line before it: a token
#: name, a colon, and the value without its surrounding blanks.
_HEADER_LINE = re.compile(
    rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):"
    rb"[ \t]*((?:[^\r\n]*[^\r\n \t])?)[ \t]*(?=\r\n|$)"
)


_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: (.*))?")


_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")


# Parser states of a BackendConnection.
_IDLE = 0


_HEAD = 1


_BODY_LENGTH = 2


_BODY_CHUNKED = 3


_BODY_UNTIL_CLOSE = 4


_DONE = 5


# Sub-states of the chunked decoder.
_CHUNK_SIZE = 0


_CHUNK_DATA = 1


_CHUNK_CRLF = 2


_CHUNK_TRAILER = 3


@implementer(IPushProducer)
class BackendConnection(Protocol):
    """
    One HTTP/1.1 connection to a backend server, carrying one exchange at
    a time and kept alive between them.

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
        self, backend: Backend, firstExchange: _Exchange, attempt: _ConnectionFactory
    ) -> None:
        self.backend = backend
        self._first: _Exchange | None = firstExchange
        self._attempt = attempt
        self._exchange: _Exchange | None = None
        self._state = _IDLE
        self._buffer = b""
        self._remaining = 0
        self._chunkState = _CHUNK_SIZE
        self._gotBytes = False
        self._keepAlive = True
        self._paused = False
        self._closing = False
        self._timeoutCall: IDelayedCall | None = None
        self._lastRead = 0.0
        self._noBody = False
        self.exchanges = 0

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
        self._state = _HEAD
        self._gotBytes = False
        self._keepAlive = True
        request = exchange.request
        self._noBody = request.method == b"HEAD"
        clock = self.backend.pool._clock
        self._lastRead = clock.seconds()
        if self._timeoutCall is None:
            # One timer per connection, not per request: it checks the time
            # of the last read when it fires.
            self._timeoutCall = clock.callLater(
                self.backend.pool.config.readTimeout, self._checkTimeout
            )
        transport = self.transport
        assert transport is not None
        parts = [request.method, b" ", request.target, b" HTTP/1.1\r\n"]
        if request.hostFromBackend:
            parts += (b"Host: ", self.backend.hostPort, b"\r\n")
        for name, value in request.headers:
            parts += (name, b": ", value, b"\r\n")
        stream = request.bodyStream
        body = request.body
        if stream is not None:
            if stream.length is None:
                parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
                transport.write(b"".join(parts))
                stream.startStreaming(self._writeChunk, self._finishChunked)
            else:
                parts.append(b"Content-Length: %d\r\n\r\n" % (stream.length,))
                transport.write(b"".join(parts))
                stream.startStreaming(transport.write, _noop)
            transport.registerProducer(stream, True)
        elif isinstance(body, bytes):
            if body or request.method in (b"POST", b"PUT", b"PATCH"):
                parts.append(b"Content-Length: %d\r\n\r\n" % (len(body),))
                parts.append(body)
            else:
                parts.append(b"\r\n")
            writeThrough(transport, b"".join(parts))
        else:
            assert body is not None
            parts.append(b"Content-Length: %d\r\n\r\n" % (request.bodyLength,))
            transport.write(b"".join(parts))
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
        state = self._state
        if state == _BODY_LENGTH and not self._buffer:
            # The common case, kept short: a piece of a sized body.
            self._lastRead = self.backend.pool._clock.seconds()
            remaining = self._remaining
            exchange = self._exchange
            assert exchange is not None
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                exchange.receiver.responseData(data)
                return
            self._remaining = 0
            exchange.receiver.responseData(data[:remaining])
            if len(data) > remaining:
                self._keepAlive = False
            self._responseDone()
            return
        if state == _IDLE or state == _DONE:
            # Bytes nobody asked for: this connection can't be trusted.
            self._closing = True
            if self.transport is not None:
                self.transport.loseConnection()
            return
        self._gotBytes = True
        self._lastRead = self.backend.pool._clock.seconds()
        self._buffer += data
        self._parse()

    def _parse(self) -> None:
        while self._buffer and self._exchange is not None:
            state = self._state
            if state == _HEAD:
                if not self._parseHead():
                    return
            elif state == _BODY_LENGTH:
                data, self._buffer = self._buffer, b""
                remaining = self._remaining
                if len(data) < remaining:
                    self._remaining -= len(data)
                    self._exchange.receiver.responseData(data)
                    return
                self._remaining = 0
                if len(data) > remaining:
                    self._keepAlive = False
                self._exchange.receiver.responseData(data[:remaining])
                self._responseDone()
                return
            elif state == _BODY_CHUNKED:
                if not self._parseChunked():
                    return
            elif state == _BODY_UNTIL_CLOSE:
                data, self._buffer = self._buffer, b""
                self._exchange.receiver.responseData(data)
                return
            else:
                # Bytes after the response, before the next request.
                self._keepAlive = False
                self._buffer = b""
                return

    def _parseHead(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end > MAX_RESPONSE_HEAD or (end < 0 and len(buffer) > MAX_RESPONSE_HEAD):
            # However the bytes arrive: all at once or in pieces.
            self._protocolError("response head too large")
            return False
        if end < 0:
            return False
        head = buffer[:end]
        self._buffer = buffer[end + 4 :]
        statusEnd = head.find(b"\r\n")
        statusLine = head if statusEnd < 0 else head[:statusEnd]
        match = _STATUS.fullmatch(statusLine)
        if match is None:
            self._protocolError("bad status line")
            return False
        status = int(match.group(2))
        reason = match.group(3) or b""
        headers = _HEADER_LINE.findall(head, max(statusEnd, 0))
        # Every line must be a well-formed header line, with no NUL and no
        # CR or LF but the line ends.
        lineEnds = head.count(b"\n")
        if (
            len(headers) != lineEnds
            or head.count(b"\r") != lineEnds
            or b"\x00" in head
        ):
            self._protocolError("malformed response head")
            return False
        contentLength = None
        chunked = False
        transferEncoding = False
        connectionTokens = b""
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                for item in value.split(b","):
                    item = item.strip(b" \t")
                    if not item.isdigit() or (
                        contentLength is not None and int(item) != contentLength
                    ):
                        self._protocolError("bad Content-Length")
                        return False
                    contentLength = int(item)
            elif lower == b"transfer-encoding":
                transferEncoding = True
                codings = [c.strip(b" \t").lower() for c in value.split(b",")]
                chunked = codings[-1] == b"chunked"
            elif lower == b"connection":
                connectionTokens += b"," + value.lower()
        if status < 200:
            # 1xx: an interim response; the final one follows.
            if status == 101:
                self._protocolError("unexpected protocol switch")
                return False
            return True
        if match.group(1) == b"0":
            self._keepAlive = b"keep-alive" in connectionTokens
        elif connectionTokens and b"close" in connectionTokens:
            self._keepAlive = False
        if transferEncoding and contentLength is not None:
            self._protocolError("both Transfer-Encoding and Content-Length")
            return False
        exchange = self._exchange
        assert exchange is not None
        if self._noBody or status == 204 or status == 304:
            self._state = _DONE
        elif chunked:
            self._state = _BODY_CHUNKED
            self._chunkState = _CHUNK_SIZE
        elif transferEncoding:
            self._state = _BODY_UNTIL_CLOSE
            self._keepAlive = False
        elif contentLength is not None:
            self._state = _BODY_LENGTH if contentLength else _DONE
            self._remaining = contentLength
        else:
            self._state = _BODY_UNTIL_CLOSE
            self._keepAlive = False
        self.bodyBuffered = self._state == _DONE or (
            self._state == _BODY_LENGTH and len(self._buffer) >= self._remaining
        )
        if status >= 500:
            exchange = self._serverError(exchange, status)
        elif self.backend.errorStreak:
            self.backend.errorStreak = 0
        exchange.receiver.responseStarted(status, reason, headers, self)
        if self._state == _DONE and self._exchange is exchange:
            self._responseDone()
            return False
        return True

    def _serverError(self, exchange: _Exchange, status: int) -> _Exchange:
        """
        The backend answered C{exchange} with a 5xx: count the failure, and
        retry the request on another server when it may be (an idempotent
        request, a status in the pool's C{retryStatuses}, a retry left).

        @return: The exchange that the rest of this response goes to: the
            same, or a stand-in that reads and drops it (so that the
            connection stays usable) while the request is retried.
        """
        backend = self.backend
        backend.noteFailure()
        pool = backend.pool
        if status in pool.config.retryStatuses and exchange.request.replayable:
            target = pool._retryTarget(exchange)
            if target is not None:
                drain = _Exchange(exchange.request, _DISCARD, pool)
                drain.connection = self
                self._exchange = drain
                exchange.connection = None
                target.assign(exchange)
                return drain
        return exchange

    def _parseChunked(self) -> bool:
        exchange = self._exchange
        assert exchange is not None
        while self._buffer:
            chunkState = self._chunkState
            buffer = self._buffer
            if chunkState == _CHUNK_DATA:
                remaining = self._remaining
                if len(buffer) <= remaining:
                    self._buffer = b""
                    self._remaining -= len(buffer)
                    if self._remaining == 0:
                        self._chunkState = _CHUNK_CRLF
                    exchange.receiver.responseData(buffer)
                else:
                    self._buffer = buffer[remaining:]
                    self._remaining = 0
                    self._chunkState = _CHUNK_CRLF
                    exchange.receiver.responseData(buffer[:remaining])
                if self._exchange is not exchange:
                    return False
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > 4096:
                    self._protocolError("chunk header too long")
                return False
            line = buffer[:end]
            self._buffer = buffer[end + 2 :]
            if chunkState == _CHUNK_SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if _HEX.fullmatch(size) is None:
                    self._protocolError("bad chunk size")
                    return False
                self._remaining = int(size, 16)
                self._chunkState = _CHUNK_DATA if self._remaining else _CHUNK_TRAILER
            elif chunkState == _CHUNK_CRLF:
                if line:
                    self._protocolError("chunk data longer than its size")
                    return False
                self._chunkState = _CHUNK_SIZE
            elif not line:
                # The empty line that ends the trailer section.
                if self._buffer:
                    self._keepAlive = False
                self._buffer = b""
                self._responseDone()
                return False
        return False

    def _responseDone(self) -> None:
        exchange = self._exchange
        assert exchange is not None
        self._exchange = None
        exchange.connection = None
        exchange.done = True
        self._state = _IDLE
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
                self._keepAlive = False
        if self._keepAlive and not self._closing:
            self.backend.release(self)
        else:
            self.backend.retire(self)
            if self.transport is not None:
                self.transport.loseConnection()
        exchange.receiver.responseFinished()

    def _protocolError(self, why: str) -> None:
        _log.warn(
            "Malformed response from backend {url}: {why}",
            url=self.backend.server.url,
            why=why,
        )
        self._buffer = b""
        self._fail(BackendProtocolError(why))

    def _fail(self, reason: BackendError) -> None:
        """
        End the current exchange with C{reason} and close the connection;
        retry it elsewhere if no response byte was passed on yet.
        """
        exchange = self._exchange
        beforeResponse = self._state == _HEAD
        self._exchange = None
        self._state = _DONE
        self._cancelTimeout()
        self._closing = True
        self.backend.retire(self)
        if self.transport is not None:
            self.transport.abortConnection()
        if exchange is not None:
            exchange.connection = None
            self.backend.noteFailure()
            if (
                beforeResponse
                and exchange.request.replayable
                and self.backend.pool._retryElsewhere(exchange)
            ):
                return
            exchange.fail(reason)

    # Timeouts.

    def _checkTimeout(self) -> None:
        self._timeoutCall = None
        if self._exchange is None:
            return
        clock = self.backend.pool._clock
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
            self._state = _DONE
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
        pool = backend.pool
        if exchange is None:
            backend.lost(self)
            return
        exchange.connection = None
        state = self._state
        self._state = _DONE
        backend.lost(self)
        if state == _BODY_UNTIL_CLOSE:
            # The normal end of a body delimited by the connection's close.
            self._buffer = b""
            exchange.done = True
            exchange.receiver.responseFinished()
            return
        if (
            not self._gotBytes
            and self.exchanges > 1
            and exchange.request.replayable
            and exchange.retriesLeft > 0
            and not pool._closed
        ):
            # A kept-alive connection that the backend closed as we reused it.
            exchange.retriesLeft -= 1
            backend.assign(exchange, fresh=True)
            return
        tlsFailure = describeTLSFailure(reason) if self.exchanges == 1 else None
        if tlsFailure is not None and state == _HEAD and not self._gotBytes:
            failure: BackendError = BackendUnavailable(tlsFailure)
        elif state == _HEAD and not self._gotBytes:
            failure = BackendUnavailable(
                "backend closed the connection without answering"
            )
        else:
            failure = BackendProtocolError("backend closed the connection mid-response")
        _log.warn("Backend {url}: {why}", url=backend.server.url, why=str(failure))
        backend.noteFailure()
        if (
            state == _HEAD
            and exchange.request.replayable
            and not exchange.done
            and pool._retryElsewhere(exchange)
        ):
            # Nothing of the response reached the client: another server
            # may answer it.
            return
        exchange.fail(failure)


_PLAIN_TCP = (_TCPClient, _TCPServer)


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


def writeThrough(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a plain TCP transport at once when nothing is queued
    before it, and leave only what the socket did not take to the
    transport.

    A Twisted transport queues every write until the reactor's next turn,
    which costs a turn and two C{epoll_ctl} calls; a request head, or a
    small response, almost always fits in the socket buffer at once. Other
    transports (TLS, memory) get an ordinary C{write}.
    """
    if (
        type(transport) in _PLAIN_TCP
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let the transport meet the error the ordinary way.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)
