"""
L{ProxyHTTPChannel}: the HTTP/1.1 channel that lets its request refuse or
stream the body once the headers are in, with the request limits, timeouts
and checks; and the wrapper that hands TLS connections to HTTP/2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    _GenericHTTPChannelProtocol,
)
from twisted.web.server import Request

from twisted_rproxy.hardening import BAD_LINE, checkHead, refusal
from twisted_rproxy.pages import renderError
from twisted_rproxy.policies import (
    forwardedFor,
    realClient,
    xForwardedFor,
)
from twisted_rproxy.pool import writeThrough

if TYPE_CHECKING:
    from twisted_rproxy.server.request import (
        ProxyRequest,
    )


_log = Logger()


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
    #: The header, body and request timeouts, or L{None} for none.
    requestGuard: tuple[float, float, float] | None = None
    # When the request being received started, or None between requests.
    _requestStart: float | None = None
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
            return
        if self._requestStart is None and not self._handlingRequest:
            self._requestStart = self._seconds()
        HTTPChannel.dataReceived(self, data)
        # Most requests arrive whole in one read: no timer for those.
        if (
            self._requestStart is not None
            and self._guardCall is None
            and not self._closing
        ):
            self._scheduleGuard(guard)

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
            # is left.
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

    def _scheduleGuard(self, guard: tuple[float, float, float]) -> None:
        """
        Time the request being received: its head must be in within the
        header timeout, its body must not stall past the body timeout, and
        the whole within the request timeout.
        """
        start = self._requestStart
        if start is None or self._closing:
            return
        headerTimeout, bodyTimeout, requestTimeout = guard
        deadline = None
        if self.line_mode:
            if headerTimeout:
                deadline = start + headerTimeout
        elif bodyTimeout:
            deadline = self._lastActivity + bodyTimeout
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

    def _checkGuard(self) -> None:
        self._guardCall = None
        guard = self.requestGuard
        if guard is not None:
            self._scheduleGuard(guard)

    def allContentReceived(self) -> None:
        self._requestStart = None
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
