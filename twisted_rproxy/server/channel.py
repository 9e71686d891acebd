"""
L{ProxyHTTPChannel}: the HTTP/1.1 channel that lets its request refuse or
stream the body once the headers are in, with the request limits, timeouts
and checks; and the wrapper that hands TLS connections to HTTP/2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from attrs import frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _GenericHTTPChannelProtocol,
    _MalformedChunkedDataError,
)
from twisted.web.server import Request
from zope.interface import implementer

from twisted_rproxy.hardening import (
    BAD_LINE,
    MAX_CHUNK_SIZE,
    bodyRateDeadline,
    checkHead,
    refusal,
)
from twisted_rproxy.pages import renderError
from twisted_rproxy.policies import (
    forwardedFor,
    realClient,
    xForwardedFor,
)
from twisted_rproxy.pool import writeThrough
from twisted_rproxy.rules.headers import connectionTokens

if TYPE_CHECKING:
    from twisted_rproxy.server.request import (
        ProxyRequest,
    )


_log = Logger()


@frozen
class RequestGuard:
    """
    The time limits of receiving a request; 0 for none.

    @ivar headerTimeout: Seconds from a request's first byte to the end of
        its head.
    @ivar bodyTimeout: Seconds its body may go without a byte arriving.
    @ivar requestTimeout: Seconds from its first byte to the end of its
        body.
    @ivar minBodyRate: The slowest average rate, in bytes per second, of
        its body once C{minBodyRateGrace} has passed.
    @ivar minBodyRateGrace: Seconds the body has before its rate counts.
    """

    headerTimeout: float = 0.0
    bodyTimeout: float = 0.0
    requestTimeout: float = 0.0
    minBodyRate: float = 0.0
    minBodyRateGrace: float = 0.0

    def __bool__(self) -> bool:
        return bool(
            self.headerTimeout
            or self.bodyTimeout
            or self.requestTimeout
            or self.minBodyRate
        )


class _StrictChunkedDecoder(_ChunkedTransferDecoder):
    """
    twisted.web's decoder of chunked request bodies, refusing at once what
    it would wait on: a chunk-size or trailer line ended by a bare LF
    (twisted.web waits for a CRLF that never comes), a chunk size past
    L{MAX_CHUNK_SIZE} (an overflow in the backends' parsers), and one that
    takes the body past C{maxBody} (C{tooLarge} is called first).

    This, the subclass of a private class of twisted.web, and
    L{ProxyHTTPChannel} are the one place that reaches into twisted.web's
    HTTP/1.1 parser (tests/test_clientside.py checks what they rely on).

    @ivar maxBody: The largest body accepted, once the request knows it.
    """

    maxBody: int | None = None
    _declared = 0

    def __init__(
        self,
        dataCallback: Callable[[bytes], None],
        finishCallback: Callable[[bytes], None],
        tooLarge: Callable[[], None],
    ) -> None:
        _ChunkedTransferDecoder.__init__(self, dataCallback, finishCallback)
        self._tooLarge = tooLarge

    def _refuseBareLF(self) -> None:
        # The line being read ends at the first CRLF (or is not complete):
        # an LF before it is a bare one.
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if buffer.find(b"\n", 0, len(buffer) if end < 0 else end) >= 0:
            raise _MalformedChunkedDataError("Line ended by a bare LF")

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        self._refuseBareLF()
        if not _ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH(self):
            return False
        length: int = self.length
        if length > MAX_CHUNK_SIZE:
            raise _MalformedChunkedDataError("Chunk size overflows")
        self._declared += length
        maxBody = self.maxBody
        if maxBody is not None and self._declared > maxBody:
            self._tooLarge()
            raise _MalformedChunkedDataError("Chunk size past the body limit")
        return True

    def _dataReceived_CRLF(self) -> bool:
        if self._buffer[:1] == b"\n":
            raise _MalformedChunkedDataError("Chunk ended by a bare LF")
        return _ChunkedTransferDecoder._dataReceived_CRLF(self)

    def _dataReceived_TRAILER(self) -> bool:
        self._refuseBareLF()
        return _ChunkedTransferDecoder._dataReceived_TRAILER(self)


@implementer(IPushProducer)
class _BodyReader:
    """
    The client connection as the producer of a streamed request body:
    pausing it (while no backend takes the body) also stops the clock of
    the body's rate.
    """

    __slots__ = ("channel",)

    def __init__(self, channel: ProxyHTTPChannel) -> None:
        self.channel = channel

    def pauseProducing(self) -> None:
        self.channel.pauseBody()

    def resumeProducing(self) -> None:
        self.channel.resumeBody()

    def stopProducing(self) -> None:
        transport = self.channel.transport
        if transport is not None:
            transport.stopProducing()


def _closeAfterThis(request: Request, version: bytes) -> bool:
    """
    The C{checkPersistence} of a connection that closes after the current
    request (see L{ProxyHTTPChannel.lastRequest}): the response says so.
    """
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


class ProxyHTTPChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that lets its request refuse or stream the body
    once the headers are in (see L{ProxyRequest.headersReceived}).
    """

    # A TCP or TLS transport; ITransport does not declare abortConnection.
    transport: Any
    _closing = False

    #: The longest request line accepted (414 past it).
    maxRequestLine = 8192
    #: The trusted proxies' networks, when any: their forwarding headers
    #: name the client (see L{twisted_rproxy.policies.realClient}).
    trustedProxies: tuple[Any, ...] = ()
    #: The time limits of receiving a request, or L{None} for none.
    requestGuard: RequestGuard | None = None
    # When the request being received started, or None between requests.
    _requestStart: float | None = None
    # When the rate of the body being received is measured from (its start,
    # or the end of a pause), and how much of it had arrived then; None
    # while no body is being received.
    _bodyStart: float | None = None
    _bodyBase = 0
    _bodyPaused = False
    _guardCall: Any = None
    _host: object = None
    _secure: bool | None = None

    # The idle timeout. twisted.web's channel cancels its timer when a
    # request arrives and makes a new one when it is done: two heap
    # operations per request. Here one timer is kept, and checks the time of
    # the last activity when it fires.
    _idleCall: Any = None
    _idlePeriod: float | None = None
    _lastActivity = 0.0

    #: The protocol that took the connection over (an upgraded tunnel), or
    #: L{None} while it speaks HTTP.
    tunnel: Protocol | None = None

    _served = False
    _connectedAt = 0.0

    def connectionMade(self) -> None:
        self._seconds = self.factory.reactor.seconds
        self._connectedAt = self._seconds()
        HTTPChannel.connectionMade(self)

    def isIdle(self) -> bool:
        """
        Whether no request is in progress (nor a tunnel open): closing
        the connection now loses nothing.

        A connection just accepted whose first request is still on its way
        is not idle: closing it would lose that request (for up to 2
        seconds; after that it is taken as a speculative connection).
        """
        if self.requests or self.tunnel is not None:
            return False
        return self._served or self._seconds() - self._connectedAt > 2.0

    def lastRequest(self) -> None:
        """
        Make the request in progress, or the next one to arrive (on a
        connection just accepted), the last on this connection: it closes
        once that response is done (a graceful stop).

        C{persistent} is not cleared before a request has arrived:
        twisted.web would drop that request unanswered, as data sent after
        the last one. L{checkPersistence} says no from now on instead (an
        instance attribute: other connections keep the class's method).
        """
        if self.requests:
            self.persistent = False
        self.checkPersistence = _closeAfterThis  # type: ignore[method-assign]

    def switchToTunnel(self, protocol: Protocol) -> bytes:
        """
        Hand the connection over to C{protocol} (after a C{101} or a
        C{CONNECT}): from now on it gets every byte the client sends and
        the connection's end; HTTP parsing and the idle timer stop.

        @return: Bytes the client sent after the request, already read.
        """
        self.stopIdleTimer()
        self.tunnel = protocol
        self.persistent = False
        buffered = b"".join(getattr(self, "_dataBuffer", []))
        self._dataBuffer = []
        # Instance attributes: the channel's own methods stay untouched for
        # every other connection (twisted.web's websocket does the same).
        self.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
        self.connectionLost = protocol.connectionLost  # type: ignore[method-assign]
        return buffered

    def setTimeout(self, period: float | None) -> float | None:
        previous = self._idlePeriod
        self._idlePeriod = period
        # Twisted declares timeOut an int; a period may have a fraction.
        self.timeOut = period  # type: ignore[assignment]
        if period is not None:
            self._lastActivity = self._seconds()
            if self._idleCall is None:
                self._idleCall = self.callLater(period, self._checkIdle)
        return previous

    def resetTimeout(self) -> None:
        if self._idlePeriod is not None:
            self._lastActivity = self._seconds()

    def _checkIdle(self) -> None:
        self._idleCall = None
        period = self._idlePeriod
        if period is None:
            return
        idle = self._seconds() - self._lastActivity
        if idle < period:
            self._idleCall = self.callLater(period - idle, self._checkIdle)
        else:
            self.timeoutConnection()

    def stopIdleTimer(self) -> None:
        """
        Cancel the idle timer for good (the connection is closed, or was
        handed over to HTTP/2).
        """
        self._idlePeriod = None
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()
        self._requestStart = None
        self._bodyStart = None
        self._cancelGuard()

    def _cancelGuard(self) -> None:
        guard, self._guardCall = self._guardCall, None
        if guard is not None and guard.active():
            guard.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        HTTPChannel.connectionLost(self, reason)
        self.stopIdleTimer()

    def getHost(self) -> object:
        # Asked for every request; the answer is the connection's.
        host = self._host
        if host is None:
            host = self._host = HTTPChannel.getHost(self)
        return host

    _peer: object = None

    def getPeer(self) -> object:
        # Asked for every request too (and by the access rules).
        peer = self._peer
        if peer is None:
            peer = self._peer = HTTPChannel.getPeer(self)
        return peer

    def isSecure(self) -> bool:
        secure = self._secure
        if secure is None:
            secure = self._secure = bool(HTTPChannel.isSecure(self))
        return secure

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """
        Whether the connection stays open after the response to
        C{request}: for HTTP/1.1, unless a C{Connection} header lists
        C{close} (twisted.web looks for it in the first header only, and
        splits that on spaces, not commas: C{close, foo} kept it open).
        """
        if version != b"HTTP/1.1":
            return False
        values = request.requestHeaders.getRawHeaders(b"connection")
        if values and b"close" in connectionTokens(values):
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return True

    def allHeadersReceived(self) -> None:
        self._served = True
        request = self.requests[-1]
        status, target = checkHead(
            self._command,
            self._path,
            self._version,
            request.requestHeaders,
            self.maxRequestLine,
        )
        if status:
            self._refuse(status)
            return
        self._path = target
        if self._version == b"HTTP/1.0" and not request.requestHeaders.hasHeader(
            b"host"
        ):
            # Forwarded as HTTP/1.1, which must have a Host: the address
            # the client connected to.
            local: Any = self.getHost()
            request.requestHeaders.setRawHeaders(
                b"host", [b"%s:%d" % (str(local.host).encode(), local.port)]
            )
        trusted = self.trustedProxies
        if trusted:
            self._resolveClient(request, trusted)
        request.method = self._command
        request.uri = self._path
        request.clientproto = self._version
        self.persistent = self.checkPersistence(request, self._version)
        refusal = request.headersReceived(self.length)
        if refusal is not None:
            self.persistent = False
            self._handlingRequest = True
            self.setTimeout(None)
            renderError(request, refusal)
            self._closing = True
            return
        if self.length != 0:
            self._bodyStarted(request)
        request.gotLength(self.length)
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if (
            expect
            and expect[0].lower() == b"100-continue"
            and self._version == b"HTTP/1.1"
            and not request.startedWriting
        ):
            self._send100Continue()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        guard = self.requestGuard
        if guard is None:
            HTTPChannel.dataReceived(self, data)
            self._refuseBareLF()
            return
        if self._requestStart is None and not self._handlingRequest:
            self._requestStart = self._seconds()
        HTTPChannel.dataReceived(self, data)
        self._refuseBareLF()
        # Most requests arrive whole in one read: no timer for those.
        if (
            self._requestStart is not None
            and self._guardCall is None
            and not self._closing
        ):
            self._scheduleGuard(guard)

    def _refuseBareLF(self) -> None:
        """
        Refuse a request line or header line ended by a bare LF, as soon as
        it is in: twisted.web would wait for a CRLF that may never come.

        Every complete line was taken out of the buffer at its CRLF, so any
        LF left in the buffer is a bare one. (One inside a complete line is
        refused by L{lineReceived}.)
        """
        buffer = self._buffer
        if buffer and self.line_mode and not self._closing and b"\n" in buffer:
            self._refuse(400)

    def lineReceived(self, line: bytes) -> None:
        if BAD_LINE.search(line) is None:
            HTTPChannel.lineReceived(self, line)
        else:
            self._refuse(400)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One line longer than the largest head accepted.
        firstLine = getattr(self, "_HTTPChannel__first_line", 0)
        self._refuse(414 if firstLine else 431)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to every problem it finds: say which.
        status = 400
        if self._receivedHeaderSize > self.totalHeadersSize:
            status = 414 if getattr(self, "_HTTPChannel__first_line", 0) else 431
        elif self._receivedHeaderCount > self.maxHeaders:
            status = 431
        self._refuse(status)

    def _refuse(self, status: int) -> None:
        """
        Refuse what the client sent with C{status} and close: nothing of it
        reaches a backend, and nothing after it is read.
        """
        if self._closing:
            return
        request = self.requests[-1] if self.requests else None
        if request is not None and (request.startedWriting or request._streaming):
            # A response (or a backend request) is under way: only closing
            # is left (and the access log says why).
            request.lostStatus = status
            self.forceClose()
            return
        serverHeader = getattr(self.factory, "serverHeader", None)
        self.transport.write(refusal(status, serverHeader))
        self.persistent = False
        self._closing = True
        HTTPChannel.loseConnection(self)

    def _resolveClient(self, request: ProxyRequest, trusted: Any) -> None:
        """
        Make the request's client address the one the trusted proxies in
        front of the proxy report (see L{realClient}).
        """
        peer = request.client
        host = getattr(peer, "host", None)
        if not host:
            return
        headers = request.requestHeaders
        values = headers.getRawHeaders(b"forwarded")
        chain = (
            forwardedFor(values)
            if values
            else xForwardedFor(headers.getRawHeaders(b"x-forwarded-for") or [])
        )
        client = realClient(host, chain, trusted)
        if client != host:
            request.peerHost = host
            kind = "TCP6" if ":" in client else "TCP"
            address = IPv6Address if ":" in client else IPv4Address
            request.client = address(kind, client, 0)  # type: ignore[arg-type]

    def _scheduleGuard(self, guard: RequestGuard) -> None:
        """
        Time the request being received: its head must be in within the
        header timeout, its body must not stall past the body timeout nor
        fall below the minimum rate, and the whole must be in within the
        request timeout. One timer does it all, however the request
        trickles in.
        """
        start = self._requestStart
        if start is None or self._closing:
            return
        deadline = None
        if self.line_mode:
            if guard.headerTimeout:
                deadline = start + guard.headerTimeout
        else:
            if guard.bodyTimeout:
                deadline = self._lastActivity + guard.bodyTimeout
            bodyStart = self._bodyStart
            if (
                guard.minBodyRate
                and bodyStart is not None
                and not self._bodyPaused
                and self.requests
            ):
                slow = bodyRateDeadline(
                    bodyStart,
                    self.requests[-1].bodyReceived - self._bodyBase,
                    guard.minBodyRate,
                    guard.minBodyRateGrace,
                )
                if deadline is None or slow < deadline:
                    deadline = slow
        requestTimeout = guard.requestTimeout
        if requestTimeout and (deadline is None or start + requestTimeout < deadline):
            deadline = start + requestTimeout
        if deadline is None:
            return
        delay = deadline - self._seconds()
        if delay <= 0:
            _log.debug("Request timed out while being received")
            self._refuse(408)
            return
        self._guardCall = self.callLater(delay, self._checkGuard)

    def _bodyStarted(self, request: ProxyRequest) -> None:
        """
        The head of C{request} is in and its body follows: start the
        clock of its rate, and make the chunked decoder a strict one.
        """
        decoder = self._transferDecoder
        if type(decoder) is _ChunkedTransferDecoder:
            strict = _StrictChunkedDecoder(
                decoder.dataCallback, decoder.finishCallback, self._chunkTooLarge
            )
            strict.maxBody = request.maxBody
            self._transferDecoder = strict
        guard = self.requestGuard
        if guard is None or not guard.minBodyRate:
            return
        self._bodyStart = self._seconds()
        self._bodyBase = 0
        self._bodyPaused = False
        if self._guardCall is not None:
            # Timing the head (which came in pieces): time the body now.
            self._cancelGuard()

    def _chunkTooLarge(self) -> None:
        """
        A chunk size takes the request body past its limit: refuse it now
        (413), before any of that chunk arrives.
        """
        if self.requests:
            self.requests[-1].refuseBody()
        self._closing = True

    def bodyProducer(self) -> IPushProducer:
        """
        The producer a streamed request body pauses while no backend takes
        it: the connection's transport, with the body's rate clock stopped
        while it is paused (the client is not slow, the backend is).
        """
        return _BodyReader(self)

    def pauseBody(self) -> None:
        """
        Stop reading the request body (see L{bodyProducer}).
        """
        self._bodyPaused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeBody(self) -> None:
        """
        Read the request body again; its rate is measured afresh, from now
        (see L{bodyProducer}).
        """
        self._bodyPaused = False
        if self._bodyStart is not None and self.requests:
            self._bodyStart = self._seconds()
            self._bodyBase = self.requests[-1].bodyReceived
            guard = self.requestGuard
            if guard is not None:
                self._cancelGuard()
                self._scheduleGuard(guard)
        if self.transport is not None:
            self.transport.resumeProducing()

    def _checkGuard(self) -> None:
        self._guardCall = None
        guard = self.requestGuard
        if guard is not None:
            self._scheduleGuard(guard)

    def allContentReceived(self) -> None:
        self._requestStart = None
        self._bodyStart = None
        if self._closing or not self.requests:
            return
        HTTPChannel.allContentReceived(self)

    def loseConnection(self) -> None:
        self._closing = True
        HTTPChannel.loseConnection(self)

    def write(self, data: bytes) -> None:
        writeThrough(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        writeThrough(self.transport, b"".join(iovec))

    def forceClose(self) -> None:
        """
        Close now, whatever is in flight: a response can't be completed.
        """
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()


class _ChannelSwitcher(_GenericHTTPChannelProtocol):
    """
    twisted.web's wrapper that hands a TLS connection to HTTP/2 when ALPN
    chose it; this one also stops the HTTP/1.1 channel's idle timer then.
    """

    def dataReceived(self, data: bytes) -> None:
        channel: Any = self._channel
        _GenericHTTPChannelProtocol.dataReceived(self, data)
        if self._channel is not channel and isinstance(channel, ProxyHTTPChannel):
            channel.stopIdleTimer()

    def makeConnection(self, transport: Any) -> None:
        # One set operation per connection, for a graceful stop. (The
        # wrapper passes makeConnection on to the channel: connectionMade is
        # never called on the wrapper itself.)
        site = self._factory
        if site is not None:
            site.connections.add(self)
        _GenericHTTPChannelProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        site = self._factory
        if site is not None:
            site.connections.discard(self)
        _GenericHTTPChannelProtocol.connectionLost(self, reason)

    def isIdle(self) -> bool:
        """
        Whether the connection has nothing in progress.
        """
        channel: Any = self._channel
        if isinstance(channel, ProxyHTTPChannel):
            return channel.isIdle()
        # HTTP/2: idle when no stream is open.
        return not getattr(channel, "streams", None)

    def closeIfIdle(self, force: bool = False) -> bool:
        """
        Close the connection if it is idle (or at once, with C{force});
        else make it close once its response is done.

        @return: Whether it was closed now.
        """
        channel: Any = self._channel
        transport: Any = getattr(channel, "transport", None)
        if transport is None:
            return True
        if force:
            transport.abortConnection()
            return True
        if self.isIdle():
            transport.loseConnection()
            return True
        if isinstance(channel, ProxyHTTPChannel):
            # The response in progress (or to the request on its way) is the
            # last on this connection.
            channel.lastRequest()
        return False
