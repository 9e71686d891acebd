"""
The client-facing endpoint: the L{ProxySite}, its HTTP/1.1 channel and
request class, body size limits, request-body streaming and the access log.

twisted.web reads a request's whole body before it calls C{render}. The
proxy needs two things it does not offer: refusing an oversized body from
its C{Content-Length} before reading it (413), and forwarding a body while
it arrives (C{request_buffering = false}). L{ProxyHTTPChannel} asks the
request what to do once the headers are in, and L{ProxyRequest} either
buffers the body (in memory, or in a temporary file past
L{ProxySite.memoryBodyLimit}) or starts processing at once and streams it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from typing import IO, Any, TextIO
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    NO_BODY_CODES,
    HTTPChannel,
    _GenericHTTPChannelProtocol,
    combinedLogFormatter,
    datetimeToString,
    toChunk,
)
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from twisted_rproxy.config import ServerConfig
from twisted_rproxy.hardening import BAD_LINE, checkHead, refusal
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.pages import renderError
from twisted_rproxy.policies import (
    forwardedFor,
    parseNetworks,
    realClient,
    xForwardedFor,
)
from twisted_rproxy.pool import RequestBodyStream, writeThrough

_log = Logger()

#: What the body policy answers: the largest body accepted, and whether
#: the body is buffered (L{True}) or streamed to the backend.
BodyPolicy = Callable[["ProxyRequest"], tuple[int, bool]]

# No second is -1: the first call always formats a date.
_dateCache: tuple[int, bytes] = (-1, b"")


def _discard(data: bytes) -> None:
    pass


def _closeAfterThis(request: Request, version: bytes) -> bool:
    """
    The C{checkPersistence} of a connection that closes after the current
    request (see L{ProxyHTTPChannel.lastRequest}): the response says so.
    """
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


def httpDate(now: float) -> bytes:
    """
    The RFC 9110 C{Date} value for C{now}, computed once a second.
    """
    global _dateCache
    second = int(now)
    if _dateCache[0] != second:
        _dateCache = (second, datetimeToString(second))
    return _dateCache[1]


class ProxyRequest(Request):
    """
    A request whose body is size-checked before it is read, and buffered or
    streamed as its route says.

    @ivar bodyStream: For a streamed body, the L{RequestBodyStream} the
        proxy forwards from; L{None} when the body is buffered in
        C{content}.
    @ivar route: The route that takes the request, once the router found
        it.
    @ivar passedHeaders: Response headers passed on from a backend as they
        are (already filtered); written after those of C{responseHeaders}.
    @ivar onConnectionLost: Called with the reason if the client connection
        is lost before the response is finished.
    @ivar startedAt: Reactor time when the request's head was in.
    @ivar upstreamStarted: Reactor time when it was handed to a pool, or
        L{None} if it was not.
    @ivar upstreamTime: Seconds from then to the backend's response head,
        or L{None}.
    @ivar upstreamServer: The URL of the backend server that answered, or
        L{None}.
    @ivar connectTarget: The target of an allowed C{CONNECT} request (its
        C{uri} is then C{b"/"}, for routing).
    """

    # An HTTPChannel of ours or an H2Stream: attributes twisted.web's types
    # don't declare (site, transport, persistent...). None once twisted.web
    # let go of it (it deletes the attribute when a request is done).
    channel: Any = None
    bodyStream: RequestBodyStream | None = None
    route: object = None
    passedHeaders: list[tuple[bytes, bytes]] | None = None
    onConnectionLost: Callable[[Failure], object] | None = None
    #: The connection's peer address, when trusted proxies in front named
    #: another client (which C{getClientAddress} then returns).
    peerHost: str | None = None
    startedAt = 0.0
    upstreamStarted: float | None = None
    upstreamTime: float | None = None
    upstreamServer: str | None = None
    connectTarget: bytes | None = None
    _maxBody: int | None = None
    _received = 0
    _streaming = False
    _refusal: int | None = None

    def headersReceived(self, length: int | None) -> int | None:
        """
        Decide how to take the body, once the method, target and headers
        are known and before any of the body is read.

        @param length: The body's C{Content-Length}, L{None} for a chunked
            body.
        @return: L{None} to go on, or the status to refuse the request with.
        """
        site = self.channel.site
        self.startedAt = site.reactor.seconds()
        if self.method == b"CONNECT":
            if not site.config.allowConnect:
                return 405
            # Routed as a request for "/" of its Host; the proxy resource
            # tunnels it (see twisted_rproxy.upgrade).
            self.connectTarget = self.uri
            self.uri = b"/"
        maxBody, buffered = site.bodyPolicy(self)
        if length is not None and length > maxBody:
            return 413
        self._maxBody = maxBody
        self._streaming = not buffered and length != 0
        return None

    def gotLength(self, length: int | None) -> None:
        if self._maxBody is None:
            # Only HTTP/2 streams get here: ProxyHTTPChannel asks
            # headersReceived first.
            self._streamHeadersReceived(length)
            return
        if not self._streaming:
            Request.gotLength(self, length)
            return
        self.content = BytesIO()
        self.bodyStream = RequestBodyStream(length, self.channel.transport)
        # Process now, with the body still to come: the proxy forwards it as
        # it arrives.
        self.args = {}
        self.path = self.uri.split(b"?", 1)[0]
        self.process()

    def _streamHeadersReceived(self, length: int | None) -> None:
        """
        L{headersReceived} for an HTTP/2 stream, whose body is always
        buffered (an H2Stream has no transport of its own to pause).
        """
        channel = self.channel
        # The pseudo-headers come first in an HTTP/2 header block, so the
        # stream knows them by the time the length is known.
        self.method = getattr(channel, "command", self.method)
        self.uri = getattr(channel, "path", self.uri)
        self.clientproto = b"HTTP/2"
        refusal = self.headersReceived(length)
        self._streaming = False
        if refusal is not None:
            # The stream can't answer before its constructor returns: the
            # refusal is sent with the first body bytes (see _refuseBody), or
            # when the request ends.
            self._maxBody = 0
            self._refusal = refusal
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._maxBody is not None and self._received > self._maxBody:
            self._refuseBody()
            return
        stream = self.bodyStream
        if stream is not None:
            stream.dataReceived(data)
        elif self.content is not None:
            self.content.write(data)

    def _refuseBody(self) -> None:
        channel = self.channel
        if channel is None or self.finished:
            return
        channel.persistent = False
        if self.bodyStream is not None:
            self.bodyStream.stopStreaming()
        # HTTP/1.1 stops reading; an HTTP/2 stream stays refused (None would
        # mean its headers are still to come).
        self._maxBody = None if type(channel) is ProxyHTTPChannel else 0
        if not self.startedWriting and not self.finished:
            renderError(self, self._refusal or 413)
        elif type(channel) is ProxyHTTPChannel:
            channel.forceClose()
        else:
            channel.abortConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._streaming:
            stream = self.bodyStream
            if stream is not None:
                stream.finished()
            return
        if self.channel is None or self.finished:
            # Refused (413) or abandoned before the body was complete.
            return
        if self._refusal is not None:
            # An HTTP/2 request refused from its headers, without a body.
            renderError(self, self._refusal)
            return
        if self.connectTarget is not None:
            path = b"/"
        Request.requestReceived(self, command, path, version)

    def process(self) -> None:
        # Unlike twisted.web's, this sets no Date or Server header here: the
        # first write adds them unless the response has its own.
        site = self.channel.site
        self.site = site
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            resource = site.getResourceFor(self)
            self.render(resource)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self.channel is not None:
            passed = self.passedHeaders
            if passed is not None:
                if type(self.channel) is ProxyHTTPChannel:
                    self._writeHead(passed, data)
                    return
                # HTTP/2: through twisted.web's own header handling.
                self.passedHeaders = None
                for name, value in passed:
                    self.responseHeaders.addRawHeader(name, value)
            self._addOwnHeaders()
        Request.write(self, data)

    def _addOwnHeaders(self) -> None:
        headers = self.responseHeaders
        site = self.channel.site
        if not headers.hasHeader(b"date"):
            headers.setRawHeaders(b"date", [httpDate(site.reactor.seconds())])
        serverHeader = getattr(site, "serverHeader", None)
        if serverHeader and not headers.hasHeader(b"server"):
            headers.setRawHeaders(b"server", [serverHeader])
        hsts = getattr(site, "hstsHeader", None)
        if hsts is not None and self.channel.isSecure():
            headers.setRawHeaders(b"strict-transport-security", [hsts])

    def _writeHead(self, passed: list[tuple[bytes, bytes]], data: bytes) -> None:
        """
        Write the response head and the first body bytes in one go, with
        the backend's headers as they are (the pool validated them) and no
        round trip through a L{Headers} object.
        """
        self.startedWriting = 1
        code = self.code
        version = self.clientproto
        noBody = self.method == b"HEAD" or code in NO_BODY_CODES
        head = [version, b" %d " % (code,), self.code_message, b"\r\n"]
        hasLength = hasDate = hasServer = False
        for name, value in passed:
            first = name[0]
            if first in b"Cc":
                hasLength = hasLength or name.lower() == b"content-length"
            elif first in b"Dd":
                hasDate = hasDate or name.lower() == b"date"
            head += (name, b": ", value, b"\r\n")
        for name, values in self.responseHeaders.getAllRawHeaders():
            lower = name.lower()
            hasDate = hasDate or lower == b"date"
            hasServer = hasServer or lower == b"server"
            for value in values:
                head += (name, b": ", value, b"\r\n")
        site = self.channel.site
        if not hasDate:
            head += (b"Date: ", httpDate(site.reactor.seconds()), b"\r\n")
        serverHeader = getattr(site, "serverHeader", None)
        if serverHeader and not hasServer:
            head += (b"Server: ", serverHeader, b"\r\n")
        hsts = site.hstsHeader
        if hsts is not None and self.channel.isSecure():
            # The proxy's own policy, for every response over TLS.
            head += (b"Strict-Transport-Security: ", hsts, b"\r\n")
        if noBody:
            head.append(b"\r\n")
            self.channel.writeSequence(head)
            self.write = _discard  # type: ignore[method-assign]
            return
        if not hasLength and version == b"HTTP/1.1":
            self.chunked = 1
            head.append(b"Transfer-Encoding: chunked\r\n\r\n")
            if data:
                head += toChunk(data)
        else:
            head.append(b"\r\n")
            head.append(data)
        self.sentLength += len(data)
        self.channel.writeSequence(head)

    def connectionLost(self, reason: Failure) -> None:
        Request.connectionLost(self, reason)
        callback = self.onConnectionLost
        if callback is not None:
            self.onConnectionLost = None
            callback(reason)

    def finish(self) -> None:
        self.onConnectionLost = None
        if self._streaming and self.bodyStream is not None:
            if not self.bodyStream.complete and self.channel is not None:
                # The rest of the body is still on the wire: the connection
                # can't carry another request.
                self.channel.persistent = False
        Request.finish(self)


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


class ProxySite(Site):
    """
    The proxy's twisted.web site: L{ProxyRequest}s on L{ProxyHTTPChannel}s,
    the configured limits, and the access log.

    @ivar bodyPolicy: Called with each request once its headers are in;
        returns the largest body accepted and whether to buffer it. The
        service sets it from the routes; by default every request gets the
        server-wide settings.
    @ivar memoryBodyLimit: Buffered bodies up to this size stay in memory;
        larger or chunked ones go to a temporary file.
    @ivar connections: The open client connections.
    @ivar requestObserver: Called with each finished request (metrics and
        the admin page's recent errors), or L{None}.
    @ivar draining: Whether a graceful stop is under way.
    """

    requestFactory = ProxyRequest
    displayTracebacks = False
    noisy = False
    memoryBodyLimit = 1024 * 1024
    #: The C{Strict-Transport-Security} value added to responses over TLS,
    #: or L{None}.
    hstsHeader: bytes | None = None
    requestObserver: Callable[[ProxyRequest], object] | None = None
    draining = False

    def __init__(
        self,
        resource: IResource,
        config: ServerConfig,
        reactor: IProxyReactor,
        bodyPolicy: BodyPolicy | None = None,
    ) -> None:
        Site.__init__(
            self,
            resource,
            parsePOSTFormSubmission=False,
            timeout=config.idleTimeout or None,
            reactor=reactor,
        )
        self.config = config
        serverHeader = config.serverHeader
        self.serverHeader = serverHeader.encode() if serverHeader else None
        defaultPolicy = (config.maxBodySize, config.requestBuffering)
        self.bodyPolicy: BodyPolicy = bodyPolicy or (lambda request: defaultPolicy)
        self._trustedNetworks = parseNetworks(config.trustedProxies)
        guard = (config.headerTimeout, config.bodyTimeout, config.requestTimeout)
        self._requestGuard = guard if any(guard) else None
        self._accessLog: TextIO | None = None
        self._formatLine: Callable[[ProxyRequest], str] = (
            self._jsonLine if config.accessLogFormat == "json" else self._combinedLine
        )
        self.connections: set[_ChannelSwitcher] = set()
        self._drainCall: IDelayedCall | None = None

    def protocol(self) -> _ChannelSwitcher:
        # twisted.web's own factory does this with a plain HTTPChannel; the
        # wrapper switches to HTTP/2 when TLS negotiates it.
        channel = ProxyHTTPChannel()
        channel.maxHeaders = self.config.maxHeaders
        channel.totalHeadersSize = self.config.maxHeaderSize
        self._configureHardening(channel)
        return _ChannelSwitcher(channel)

    def _configureHardening(self, channel: ProxyHTTPChannel) -> None:
        """
        Give C{channel} the request limits, timeouts and trusted proxies of
        the configuration.
        """
        config = self.config
        channel.maxRequestLine = config.maxRequestLine
        # A longer line is refused by lineLengthExceeded, with its status.
        channel.MAX_LENGTH = max(config.maxRequestLine, config.maxHeaderSize)
        channel.trustedProxies = self._trustedNetworks
        channel.requestGuard = self._requestGuard

    def getContentFile(self, length: int | None) -> IO[bytes]:
        """
        Where a buffered request body is kept.
        """
        if length is not None and length <= self.memoryBodyLimit:
            return BytesIO()
        return tempfile.TemporaryFile()

    def startFactory(self) -> None:
        path = self.config.accessLog
        if path is not None and self._accessLog is None:
            if path == "-":
                self._accessLog = sys.__stdout__
            else:
                self._accessLog = open(path, "a", buffering=1, encoding="utf-8")
        Site.startFactory(self)

    def stopFactory(self) -> None:
        log, self._accessLog = self._accessLog, None
        if log is not None and log is not sys.__stdout__:
            log.close()
        Site.stopFactory(self)

    def reopenAccessLog(self) -> None:
        """
        Close and reopen the access log file (after it was rotated).
        """
        path = self.config.accessLog
        if path is None or path == "-":
            return
        old = self._accessLog
        self._accessLog = open(path, "a", buffering=1, encoding="utf-8")
        if old is not None:
            old.close()

    def log(self, request: ProxyRequest) -> None:  # type: ignore[override]
        observer = self.requestObserver
        if observer is not None:
            observer(request)
        accessLog = self._accessLog
        if accessLog is not None:
            try:
                accessLog.write(self._formatLine(request) + "\n")
            except (OSError, ValueError) as e:
                _log.error("Cannot write the access log: {error}", error=e)

    def _times(self, request: ProxyRequest) -> tuple[float, float | None]:
        started = request.startedAt
        elapsed = self.reactor.seconds() - started if started else 0.0
        return max(elapsed, 0.0), request.upstreamTime

    def _combinedLine(self, request: ProxyRequest) -> str:
        """
        The combined log format, then the request time and the upstream
        time in seconds ("-" when no backend answered), as nginx's
        C{$request_time $upstream_response_time}.
        """
        elapsed, upstream = self._times(request)
        line = combinedLogFormatter(self._logDateTime, request)
        upstreamText = "-" if upstream is None else f"{upstream:.3f}"
        return f"{line} {elapsed:.3f} {upstreamText}"

    def _jsonLine(self, request: ProxyRequest) -> str:
        """
        One JSON object per line (see docs/operations.rst for its fields).
        """
        elapsed, upstream = self._times(request)
        headers = request.requestHeaders
        route = request.route
        address = request.getClientAddress()
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "remote_addr": getattr(address, "host", "-"),
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "protocol": (request.clientproto or b"").decode("latin-1"),
            "status": request.code,
            "bytes_sent": request.sentLength,
            "host": (headers.getRawHeaders(b"host") or [b""])[0].decode("latin-1"),
            "referer": (headers.getRawHeaders(b"referer") or [b""])[0].decode(
                "latin-1"
            ),
            "user_agent": (headers.getRawHeaders(b"user-agent") or [b""])[0].decode(
                "latin-1"
            ),
            "route": getattr(route, "label", None),
            "upstream": request.upstreamServer,
            "request_time": round(elapsed, 6),
            "upstream_time": None if upstream is None else round(upstream, 6),
        }
        return json.dumps(record, separators=(",", ":"))

    def drain(self, timeout: float) -> Deferred[None]:
        """
        The graceful stop of the connections (the listeners are already
        closed): idle connections close now, busy ones after their
        response; past C{timeout} seconds the rest are cut.

        @return: A L{Deferred} that fires once every connection is closed.
        """
        self.draining = True
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + timeout

        def check() -> None:
            self._drainCall = None
            force = self.reactor.seconds() >= deadline
            if force and self.connections:
                _log.warn(
                    "Drain timeout: closing {count} busy connections",
                    count=len(self.connections),
                )
            for connection in list(self.connections):
                if connection.closeIfIdle(force):
                    # Closing may take a moment: stop counting it.
                    self.connections.discard(connection)
            if not self.connections:
                done.callback(None)
                return
            self._drainCall = self.reactor.callLater(0.05, check)

        check()
        return done
