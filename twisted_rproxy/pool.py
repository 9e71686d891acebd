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
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from attrs import define
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.interfaces import IBackendServer, IBalancer, IResponseReceiver

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConnector

    from twisted_rproxy.config import BackendServer, PoolConfig
    from twisted_rproxy.interfaces import IProxyReactor

_log = Logger()

#: Methods that RFC 9110 section 9.2.2 calls idempotent: safe to send again.
IDEMPOTENT_METHODS = frozenset(
    [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"]
)

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
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | IO[bytes] | None = b""
    bodyLength: int = 0
    bodyStream: RequestBodyStream | None = None
    hostFromBackend: bool = False

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


@implementer(IBalancer)
class RoundRobinBalancer:
    """
    Smooth weighted round robin (as nginx does it): over a cycle each server
    gets requests in proportion to its weight, interleaved rather than in
    bursts, skipping servers that are at their limit.
    """

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def pick(self, servers: list[Backend], request: object) -> Backend | None:
        if len(servers) == 1:
            only = servers[0]
            return only if only.available else None
        current = self._current
        best = None
        bestWeight = 0
        total = 0
        for server in servers:
            if not server.available:
                continue
            key = id(server)
            weight = current.get(key, 0) + server.weight
            current[key] = weight
            total += server.weight
            if best is None or weight > bestWeight:
                best, bestWeight = server, weight
        if best is not None:
            current[id(best)] = bestWeight - total
        return best


@implementer(IBackendServer)
class Backend:
    """
    One backend server of a pool, and its connections.

    @ivar idle: Kept-alive connections waiting for a request, most recently
        used last (reused first: warm connections stay warm, cold ones
        expire).
    @ivar busy: Connections carrying a request.
    @ivar connecting: Connection attempts under way.
    """

    def __init__(self, pool: BackendPool, server: BackendServer) -> None:
        self.pool = pool
        self.server = server
        self.weight = server.weight
        self.idle: list[BackendConnection] = []
        self.busy = 0
        self.connecting = 0
        self.requests = 0
        self.failures = 0
        self._limit = pool.config.maxConnections
        self._hostPort = _hostPort(server)

    def __repr__(self) -> str:
        return f"<Backend {self.server.url} busy={self.busy} idle={len(self.idle)}>"

    @property
    def available(self) -> bool:
        """
        Whether a request could start on this server now.
        """
        return bool(self.idle) or self.busy + self.connecting < self._limit

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
            self.busy += 1
            connection.send(exchange)
            return
        self.connecting += 1
        self.pool._connect(self, exchange)

    def connected(self, connection: BackendConnection, exchange: _Exchange) -> None:
        """
        A connection attempt made for C{exchange} succeeded.
        """
        self.connecting -= 1
        self.busy += 1
        connection.role = _BUSY
        if exchange.done:
            self.release(connection)
        else:
            connection.send(exchange)

    def connectFailed(self, exchange: _Exchange, reason: BackendError) -> None:
        """
        A connection attempt made for C{exchange} failed.
        """
        self.connecting -= 1
        self.failures += 1
        pool = self.pool
        pool._connectionGone()
        pool._attemptFailed(exchange, reason, self)
        pool._dispatchPending()

    def release(self, connection: BackendConnection) -> None:
        """
        C{connection} finished its exchange and may carry another.
        """
        self.busy -= 1
        pool = self.pool
        if pool._closed or len(self.idle) >= pool.config.maxIdle:
            connection.role = _CLOSING
            connection.close()
        else:
            connection.role = _IDLE_ROLE
            connection.idleSince = pool._clock.seconds()
            self.idle.append(connection)
            pool._scheduleSweep()
        pool._dispatchPending()

    def retire(self, connection: BackendConnection) -> None:
        """
        C{connection} will carry nothing more and is being closed.
        """
        role = connection.role
        connection.role = _CLOSING
        if role == _BUSY:
            self.busy -= 1
            self.pool._dispatchPending()
        elif role == _IDLE_ROLE:
            try:
                self.idle.remove(connection)
            except ValueError:
                pass


class _ConnectionFactory(ClientFactory):
    """
    Makes the one connection of one connection attempt.
    """

    noisy = False

    def __init__(self, backend: Backend, exchange: _Exchange) -> None:
        self.backend = backend
        self.exchange = exchange

    def buildProtocol(self, addr: object) -> BackendConnection:
        return BackendConnection(self.backend, self.exchange)

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
        self.backend.connectFailed(self.exchange, failure)


# Roles of a BackendConnection in its Backend's bookkeeping.
_CONNECTING = 0
_BUSY = 1
_IDLE_ROLE = 2
_CLOSING = 3

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
    role = _CONNECTING
    #: Whether the whole body of the response just started is already read
    #: (so there is nothing to pause).
    bodyBuffered = False
    # A TCP or TLS transport: ITransport, IConsumer, IPushProducer and
    # abortConnection, which ITransport alone does not declare.
    transport: Any

    def __init__(self, backend: Backend, firstExchange: _Exchange) -> None:
        self.backend = backend
        self._first: _Exchange | None = firstExchange
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
        self.backend.connected(self, first)

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
        if end < 0:
            if len(buffer) > MAX_RESPONSE_HEAD:
                self._protocolError("response head too large")
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
        exchange.receiver.responseStarted(status, reason, headers, self)
        if self._state == _DONE and self._exchange is exchange:
            self._responseDone()
            return False
        return True

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
        End the current exchange with C{reason} and close the connection.
        """
        exchange = self._exchange
        self._exchange = None
        self._state = _DONE
        self._cancelTimeout()
        self._closing = True
        self.backend.retire(self)
        if self.transport is not None:
            self.transport.abortConnection()
        if exchange is not None:
            exchange.connection = None
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
            backend.retire(self)
            pool._connectionGone()
            return
        exchange.connection = None
        state = self._state
        self._state = _DONE
        backend.retire(self)
        pool._connectionGone()
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
        if state == _HEAD and not self._gotBytes:
            failure: BackendError = BackendUnavailable(
                "backend closed the connection without answering"
            )
        else:
            failure = BackendProtocolError("backend closed the connection mid-response")
        _log.warn("Backend {url}: {why}", url=backend.server.url, why=str(failure))
        exchange.fail(failure)


_PLAIN_TCP = (_TCPClient, _TCPServer)


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


def _hostPort(server: BackendServer) -> bytes:
    host = server.host
    if ":" in host:
        host = f"[{host}]"
    default = 443 if server.scheme == "https" else 80
    if server.port == default:
        return host.encode("idna") if not host.startswith("[") else host.encode()
    return f"{host}:{server.port}".encode()


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
        self._balancer = balancer if balancer is not None else RoundRobinBalancer()
        self.servers = [Backend(self, server) for server in config.servers]
        self._pending: deque[_Exchange] = deque()
        self._closed = False
        self._sweepCall: IDelayedCall | None = None
        self._connections = 0
        self._whenIdle: list[Callable[[], None]] = []

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
        server = self._balancer.pick(self.servers, request)
        if server is None:
            self._enqueue(exchange)
        else:
            server.assign(exchange)
        return exchange

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
            server = self._balancer.pick(self.servers, pending[0].request)
            if server is None:
                return
            exchange = pending.popleft()
            if exchange.queuedCall is not None:
                exchange.queuedCall.cancel()
                exchange.queuedCall = None
            server.assign(exchange)

    def _connect(self, backend: Backend, exchange: _Exchange) -> None:
        server = backend.server
        factory = _ConnectionFactory(backend, exchange)
        timeout = self.config.connectTimeout
        self._connections += 1
        if server.scheme == "https":
            self._reactor.connectSSL(
                server.host,
                server.port,
                factory,
                # connectSSL takes a connection creator too (Twisted 14.0+).
                optionsForClientTLS(server.host),  # type: ignore[arg-type]
                timeout=timeout,
                bindAddress=None,
            )
        else:
            self._reactor.connectTCP(server.host, server.port, factory, timeout=timeout)

    def _attemptFailed(
        self, exchange: _Exchange, reason: BackendError, failed: Backend
    ) -> None:
        self._connectionGone()
        if exchange.done:
            return
        if exchange.retriesLeft > 0 and not self._closed:
            # Nothing was sent: any other server may take the request.
            others = [s for s in self.servers if s not in exchange.triedServers]
            if others:
                server = self._balancer.pick(others, exchange.request)
                if server is not None:
                    exchange.retriesLeft -= 1
                    server.assign(exchange)
                    return
        exchange.fail(reason)

    def _connectionGone(self) -> None:
        self._connections -= 1
        if self._connections == 0 and self._whenIdle:
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

    def close(self) -> Deferred[None]:
        """
        Stop taking requests, fail the queued ones, close idle connections
        and close the busy ones as their exchanges finish.

        @return: A L{Deferred} that fires when every connection is closed.
        """
        self._closed = True
        if self._sweepCall is not None:
            self._sweepCall.cancel()
            self._sweepCall = None
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
        if self._connections <= 0:
            done.callback(None)
        else:
            self._whenIdle.append(lambda: done.callback(None))
        return done
