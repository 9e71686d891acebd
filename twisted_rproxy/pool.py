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

from attrs import define, frozen
from twisted.internet import error as ierror
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.balance import HashOn, balancerFor, parseHashOn

# Re-exported: it lived here before twisted_rproxy.balance.
from twisted_rproxy.balance import RoundRobinBalancer as RoundRobinBalancer
from twisted_rproxy.health import (
    WEIGHT_SCALE,
    HealthChecker,
    OutlierDetector,
    RetryBudget,
    SlowStart,
    eligibleServers,
)
from twisted_rproxy.interfaces import IBackendServer, IBalancer, IResponseReceiver
from twisted_rproxy.tls import backendConnectionCreators, describeTLSFailure

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


@implementer(IBackendServer)
class Backend:
    """
    One backend server of a pool, and its connections.

    @ivar idle: Kept-alive connections waiting for a request, most recently
        used last (reused first: warm connections stay warm, cold ones
        expire).
    @ivar busy: Connections carrying a request.
    @ivar connecting: Connection attempts under way.
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
    """

    def __init__(self, pool: BackendPool, server: BackendServer) -> None:
        self.pool = pool
        self.server = server
        self.weight = server.weight * WEIGHT_SCALE
        self.idle: list[BackendConnection] = []
        self.busy = 0
        self.connecting = 0
        self.requests = 0
        self.failures = 0
        self.up = True
        self.checkStreak = 0
        self.ejected = False
        self.ejectedUntil: float | None = None
        self.ejections = 0
        self.errorStreak = 0
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
    def inFlight(self) -> int:
        """
        Requests on this server now: on busy connections or connecting.
        """
        return self.busy + self.connecting

    def noteFailure(self) -> None:
        """
        A request failed on this server: count it for passive health.
        """
        self.failures += 1
        self.errorStreak += 1
        outlier = self.pool._outlier
        if outlier is not None:
            outlier.failed(self)

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
        pool = self.pool
        pool._connectionGone()
        self.noteFailure()
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


def _hostPort(server: BackendServer) -> bytes:
    host = server.host
    if ":" in host:
        host = f"[{host}]"
    default = 443 if server.scheme == "https" else 80
    if server.port == default:
        return host.encode("idna") if not host.startswith("[") else host.encode()
    return f"{host}:{server.port}".encode()


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


def _serverStatus(backend: Backend, serving: bool) -> ServerStatus:
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
    )


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
        self._balancer = (
            balancer if balancer is not None else balancerFor(config.balance)
        )
        #: What a hashing pool hashes: the proxy computes each request's
        #: C{hashKey} only when this is not L{None}.
        self.hashOn: HashOn | None = (
            parseHashOn(config.hashOn or "client") if config.balance == "hash" else None
        )
        self.servers = [Backend(self, server) for server in config.servers]
        # The servers that take new requests; a new list whenever health
        # changes, never changed in place (balancers may cache by identity).
        self._eligible: list[Backend] = list(self.servers)
        self.panic = False
        self._pending: deque[_Exchange] = deque()
        self._closed = False
        self._sweepCall: IDelayedCall | None = None
        self._connections = 0
        self._whenIdle: list[Callable[[], None]] = []
        self.requestCount = 0
        self.retryCount = 0
        budget = config.retryBudget
        self._budget = RetryBudget(budget.percent, budget.minRetries, budget.window)
        self._outlier = (
            OutlierDetector(reactor, self, config.outlier)
            if config.outlier is not None
            else None
        )
        self._checker = (
            HealthChecker(reactor, self, config.health)
            if config.health is not None
            else None
        )
        self._slowStart = (
            SlowStart(reactor, self, config.slowStart)
            if config.slowStart > 0 and len(self.servers) > 1
            else None
        )
        # Made once per pool: trust roots and client certificates are read here.
        self._tlsCreators = backendConnectionCreators(config)

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
        self.requestCount += 1
        self._place(exchange)
        return exchange

    def _place(self, exchange: _Exchange) -> None:
        eligible = self._eligible
        if not eligible:
            exchange.fail(NoHealthyServers("no healthy server"))
            return
        server = self._balancer.pick(eligible, exchange.request)
        if server is None:
            self._enqueue(exchange)
        else:
            server.assign(exchange)

    def connectTunnel(self, factory: ClientFactory) -> BackendServer | None:
        """
        Open a connection of its own to a serving server, for a tunnel (an
        upgraded WebSocket connection, a C{CONNECT}): it is not pooled,
        and not counted against C{max_connections}.

        @param factory: Builds the protocol of the connection.
        @return: The server connected to, or L{None} if no server is
            serving (or the pool is closed).
        """
        eligible = self._eligible
        if self._closed or not eligible:
            return None
        self._tunnelTurn = (getattr(self, "_tunnelTurn", -1) + 1) % len(eligible)
        server = eligible[self._tunnelTurn].server
        self._dial(server, factory)
        return server

    def startHealthChecks(self) -> None:
        """
        Start the active health checks, if the pool has any (the
        L{ProxyService} does this as it starts; an embedder who builds a
        pool with C{health} calls it).
        """
        if self._checker is not None and not self._closed:
            self._checker.start()

    def _healthChanged(self, cameBack: Backend | None = None) -> None:
        """
        A server's health changed: recompute which servers take requests.

        @param cameBack: A server that just became healthy again, to slow
            start.
        """
        eligible, panic = eligibleServers(self.servers, self.config.panicThreshold)
        if panic != self.panic:
            self.panic = panic
            if panic:
                _log.warn(
                    "Pool {pool}: too few healthy servers, panic: using all of them",
                    pool=self.name,
                )
            else:
                _log.info("Pool {pool}: out of panic", pool=self.name)
        self._eligible = eligible
        for server in self.servers:
            if server not in eligible:
                # Its kept-alive connections may be as dead as it is.
                for connection in list(server.idle):
                    connection.close()
        if cameBack is not None and self._slowStart is not None and not panic:
            self._slowStart.begin(cameBack)
        self._dispatchPending()

    def status(self) -> PoolStatus:
        """
        The pool's state now, for the admin page and monitoring.
        """
        return PoolStatus(
            name=self.name,
            balance=self.config.balance,
            panic=self.panic,
            closed=self._closed,
            pending=len(self._pending),
            requests=self.requestCount,
            retries=self.retryCount,
            retriesRefused=self._budget.refused,
            servers=tuple(_serverStatus(s, s in self._eligible) for s in self.servers),
        )

    def _takePending(self, other: BackendPool) -> None:
        """
        Hand the requests waiting in this pool to C{other} (its successor on
        a reload).
        """
        while self._pending:
            exchange = self._pending.popleft()
            if exchange.queuedCall is not None:
                exchange.queuedCall.cancel()
                exchange.queuedCall = None
            exchange.pool = other
            other.requestCount += 1
            other._place(exchange)

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
            server = self._balancer.pick(self._eligible, pending[0].request)
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
        self._connections += 1
        self._dial(server, factory)

    def _dial(self, server: BackendServer, factory: ClientFactory) -> None:
        """
        Open a connection to C{server} (with TLS for C{https://}) for
        C{factory}, within the pool's connect timeout.
        """
        timeout = self.config.connectTimeout
        if server.scheme == "https":
            self._reactor.connectSSL(
                server.host,
                server.port,
                factory,
                # connectSSL takes a connection creator too (Twisted 14.0+).
                self._tlsCreators[server],  # type: ignore[arg-type]
                timeout=timeout,
                bindAddress=None,
            )
        else:
            self._reactor.connectTCP(server.host, server.port, factory, timeout=timeout)

    def _attemptFailed(
        self, exchange: _Exchange, reason: BackendError, failed: Backend
    ) -> None:
        # (The connection attempt is already counted gone by the caller.)
        if exchange.done:
            return
        # Nothing was sent: any other server may take any request.
        if not self._retryElsewhere(exchange):
            exchange.fail(reason)

    def _retryTarget(self, exchange: _Exchange) -> Backend | None:
        """
        The server to retry C{exchange} on, if it has retries left, the
        retry budget allows one more, and another healthy server that it
        has not tried can take it now; the retry is counted.
        """
        if exchange.retriesLeft <= 0 or self._closed:
            return None
        tried = exchange.triedServers
        others = [s for s in self._eligible if s not in tried]
        if not others:
            return None
        server = self._balancer.pick(others, exchange.request)
        if server is None:
            return None
        if not self._budget.allow(self._clock.seconds(), self.requestCount):
            _log.warn(
                "Pool {pool}: retry budget spent, request not retried", pool=self.name
            )
            return None
        exchange.retriesLeft -= 1
        self.retryCount += 1
        return server

    def _retryElsewhere(self, exchange: _Exchange) -> bool:
        """
        Start C{exchange} again on another server (see L{_retryTarget}).

        @return: Whether it was.
        """
        server = self._retryTarget(exchange)
        if server is None:
            return False
        server.assign(exchange)
        return True

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

    def close(self, successor: BackendPool | None = None) -> Deferred[None]:
        """
        Stop taking requests, fail the queued ones, close idle connections
        and close the busy ones as their exchanges finish.

        @param successor: The pool that replaces this one (on a reload): the
            queued requests go to it instead of failing.
        @return: A L{Deferred} that fires when every connection is closed.
        """
        if successor is not None:
            self._takePending(successor)
        self._closed = True
        if self._sweepCall is not None:
            self._sweepCall.cancel()
            self._sweepCall = None
        for stoppable in (self._checker, self._outlier, self._slowStart):
            if stoppable is not None:
                stoppable.stop()
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
