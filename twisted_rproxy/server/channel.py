"""
L{ProxyHTTPChannel}: the protocol of a client connection. It speaks
HTTP/1.1, letting its request refuse or stream the body once the headers
are in, with the checks of the request head and the proxy's answers to
what it refuses; it hands the connection to HTTP/2 (L{H2ServerConnection})
when TLS negotiated C{h2}, or, on a plain listener with C{h2c}, when the
client's first bytes are the HTTP/2 connection preface (prior knowledge,
RFC 9113 section 3.3).
"""

from __future__ import annotations

from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.tcp import Server
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.server import Request
from zope.interface import implementer

from twisted_rproxy._twisted import localAddress, writeBatched
from twisted_rproxy.h2.connection import H2ServerConnection
from twisted_rproxy.h2.frames import PREFACE
from twisted_rproxy.hardening import BAD_LINE, checkHead, refusal
from twisted_rproxy.interfaces import ITunnelChannel
from twisted_rproxy.pages import renderError
from twisted_rproxy.policies import resolveClient
from twisted_rproxy.rules.headers import connectionTokens
from twisted_rproxy.server.chunked import StrictChunkedDecoder
from twisted_rproxy.server.timeouts import RequestGuard, TimedHTTPChannel

__all__ = ["ChannelRequest", "ProxyHTTPChannel", "RequestGuard"]


class ChannelRequest(TypingProtocol):
    """
    What L{ProxyHTTPChannel} asks of its requests, beyond twisted.web's
    (L{twisted_rproxy.server.ProxyRequest} provides it; the site hands the
    channel its request factory).
    """

    requestHeaders: Headers
    client: object
    peerHost: str | None
    startedWriting: int
    #: Whether the body is forwarded as it arrives (processing started).
    streaming: bool
    lostStatus: int | None

    @property
    def maxBody(self) -> int | None:
        """
        The largest body accepted, once the headers are in.
        """

    @property
    def bodyReceived(self) -> int:
        """
        How many body bytes have arrived.
        """

    def headersReceived(self, length: int | None) -> int | None:
        """
        Decide how to take the body: L{None} to go on, or the status to
        refuse the request with.
        """

    def refuseBody(self) -> None:
        """
        Refuse the body, past its limit.
        """


def _closeAfterThis(request: Request, version: bytes) -> bool:
    """
    The C{checkPersistence} of a connection that closes after the current
    request (see L{ProxyHTTPChannel.lastRequest}): the response says so.
    """
    request.responseHeaders.setRawHeaders(b"connection", [b"close"])
    return False


@implementer(ITunnelChannel)
class ProxyHTTPChannel(TimedHTTPChannel):
    """
    A client connection: an HTTP/1.1 channel that lets its request refuse
    or stream the body once the headers are in (see
    L{ProxyRequest.headersReceived}) and hands the connection to a tunnel
    (L{ITunnelChannel}), or to HTTP/2 on its first bytes.

    While it is connected it is in its site's C{connections} (when the site
    has them), for a graceful stop.

    @ivar h2c: Whether a plain connection may start with the HTTP/2
        preface.
    @ivar http2: The HTTP/2 connection this one switched to, or L{None}.
    """

    #: The longest request line accepted (414 past it).
    maxRequestLine = 8192
    #: The trusted proxies' networks, when any: their forwarding headers
    #: name the client (see L{twisted_rproxy.policies.realClient}).
    trustedProxies: tuple[Any, ...] = ()
    _host: object = None
    _peer: object = None
    #: The address the site built the channel for (L{ProxySite.buildProtocol}).
    acceptedFrom: object = None
    _secure: bool | None = None

    #: The protocol that took the connection over (an upgraded tunnel), or
    #: L{None} while it speaks HTTP.
    tunnel: Protocol | None = None

    h2c = False
    http2: H2ServerConnection | None = None
    _served = False
    _sniffed = b""
    _connections: set[ProxyHTTPChannel] | None = None

    def connectionMade(self) -> None:
        TimedHTTPChannel.connectionMade(self)
        connections = getattr(self.factory, "connections", None)
        if connections is not None:
            # One set operation per connection, for a graceful stop.
            connections.add(self)
            self._connections = connections
        secure = self._secure = ISSLTransport.providedBy(self.transport)
        if secure or self.h2c:
            # The first bytes may be HTTP/2's (an instance attribute, until
            # they are in: a plain HTTP/1.1 connection never looks).
            self.dataReceived = self._firstData  # type: ignore[method-assign]

    def _firstData(self, data: bytes) -> None:
        """
        The first bytes of the connection: HTTP/2 if TLS negotiated it, or
        if they are the preface of a plain connection with C{h2c}; else
        HTTP/1.1.
        """
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            self._switch(data)
            return
        if self.h2c and negotiated is None and not self._secure:
            data = self._sniffed + data
            if PREFACE.startswith(data[: len(PREFACE)]):
                if len(data) < len(PREFACE):
                    # The start of the preface, or of a request: wait.
                    self._sniffed = data
                    return
                self._switch(data)
                return
            self._sniffed = b""
        del self.dataReceived
        self.dataReceived(data)

    def _switch(self, data: bytes) -> None:
        """
        Hand the connection to HTTP/2, from C{data} on.
        """
        self.stopIdleTimer()
        transport = self.transport
        # The HTTP/1.1 channel registered itself with the transport.
        transport.unregisterProducer()
        connection = self.factory.buildHTTP2()
        self.http2 = connection
        self.dataReceived = connection.dataReceived  # type: ignore[method-assign]
        connection.makeConnection(transport)
        connection.dataReceived(data)

    def isIdle(self) -> bool:
        """
        Whether no request is in progress (nor a tunnel open, nor an
        HTTP/2 stream): closing the connection now loses nothing.

        A connection just accepted whose first request is still on its way
        is not idle: closing it would lose that request (for up to 2
        seconds; after that it is taken as a speculative connection).
        """
        http2 = self.http2
        if http2 is not None:
            return http2.isIdle()
        if self.requests or self.tunnel is not None:
            return False
        return self._served or self.seconds() - self.connectedAt > 2.0

    def closeIfIdle(self, force: bool = False) -> bool:
        """
        Close the connection if it is idle (or at once, with C{force});
        else make it close once its response is done (HTTP/1.1) or its
        open streams are (HTTP/2, after a C{GOAWAY}).

        @return: Whether it was closed now.
        """
        http2 = self.http2
        if http2 is not None:
            return http2.closeIfIdle(force)
        transport = self.transport
        if transport is None:
            return True
        if force:
            transport.abortConnection()
            return True
        if self.isIdle():
            transport.loseConnection()
            return True
        # The response in progress (or to the request on its way) is the
        # last on this connection.
        self.lastRequest()
        return False

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

    def switchToTunnel(self, protocol: Any) -> bytes:
        """
        Hand the connection over to C{protocol} (after a C{101} or a
        C{CONNECT}): from now on it gets every byte the client sends and
        the connection's end; HTTP parsing and the idle timer stop.

        @param protocol: An L{IProtocol} provider (L{ITunnelChannel} types
            it as any object).
        @return: Bytes the client sent after the request, already read.
        """
        self.stopIdleTimer()
        self.tunnel = protocol
        self.persistent = False
        buffered = self.takeBufferedData()
        # Instance attributes: the channel's own methods stay untouched for
        # every other connection (twisted.web's websocket does the same).
        self.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
        return buffered

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        connections = self._connections
        if connections is not None:
            connections.discard(self)
        http2 = self.http2
        if http2 is not None:
            http2.connectionLost(reason)
            return
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.connectionLost(reason)
            return
        HTTPChannel.connectionLost(self, reason)
        self.stopIdleTimer()

    def getHost(self) -> object:
        # Asked for every request; the answer is the connection's (and, on
        # a listener bound to one address, the listener's).
        host = self._host
        if host is None:
            known = getattr(self.factory, "localAddresses", None)
            if known is None:
                host = HTTPChannel.getHost(self)
            else:
                host = localAddress(self.transport, known)
            self._host = host
        return host

    def getPeer(self) -> object:
        # Asked for every request too (and by the access rules). A plain
        # TCP connection's is the address the site was given for it (the
        # transport would make another of the same); behind a wrapper (the
        # PROXY protocol, a listener's policies) the transport says.
        peer = self._peer
        if peer is None:
            accepted = self.acceptedFrom
            if accepted is not None and type(self.transport) is Server:
                peer = accepted
            else:
                peer = HTTPChannel.getPeer(self)
            self._peer = peer
        return peer

    def isSecure(self) -> bool:
        # twisted.web adapts the transport to ISSLTransport (a registry
        # lookup); the TLS transport provides it, as connectionMade found.
        secure = self._secure
        if secure is None:
            secure = self._secure = ISSLTransport.providedBy(self.transport)
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
        command, path, version = self.requestLine()
        status, target = checkHead(
            command,
            path,
            version,
            request.requestHeaders,
            self.maxRequestLine,
        )
        if status:
            self._refuse(status)
            return
        self.setRequestTarget(target)
        if version == b"HTTP/1.0" and not request.requestHeaders.hasHeader(b"host"):
            # Forwarded as HTTP/1.1, which must have a Host: the address
            # the client connected to.
            local: Any = self.getHost()
            request.requestHeaders.setRawHeaders(
                b"host", [b"%s:%d" % (str(local.host).encode(), local.port)]
            )
        trusted = self.trustedProxies
        if trusted:
            resolveClient(request, trusted)
        request.method = command
        request.uri = target
        request.clientproto = version
        self.persistent = self.checkPersistence(request, version)
        refused = request.headersReceived(self.length)
        if refused is not None:
            self.persistent = False
            self.handlingRequest = True
            self.setTimeout(None)
            renderError(request, refused)
            self.closing = True
            return
        if self.length != 0:
            self._bodyStarted(request)
        request.gotLength(self.length)
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if (
            expect
            and expect[0].lower() == b"100-continue"
            and version == b"HTTP/1.1"
            and not request.startedWriting
        ):
            self.send100Continue()

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        guard = self.requestGuard
        if guard is None:
            HTTPChannel.dataReceived(self, data)
            self._refuseBareLF()
            return
        if self.requestStart is None and not self.handlingRequest:
            self.requestStart = self.seconds()
        HTTPChannel.dataReceived(self, data)
        self._refuseBareLF()
        # Most requests arrive whole in one read: no timer for those.
        if self.requestStart is not None and not self.closing:
            self.timeRequest(guard)

    def _refuseBareLF(self) -> None:
        """
        Refuse a request line or header line ended by a bare LF, as soon as
        it is in: twisted.web would wait for a CRLF that may never come.

        Every complete line was taken out of the buffer at its CRLF, so any
        LF left in the buffer is a bare one. (One inside a complete line is
        refused by L{lineReceived}.)
        """
        if self.line_mode and not self.closing and b"\n" in self.bufferedLine():
            self._refuse(400)

    def lineReceived(self, line: bytes) -> None:
        if BAD_LINE.search(line) is None:
            HTTPChannel.lineReceived(self, line)
        else:
            self._refuse(400)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One line longer than the largest head accepted.
        self._refuse(414 if self.awaitingRequestLine() else 431)

    def respondToBadRequest(self) -> None:
        # twisted.web's answer to every problem it finds: say which.
        status = 400
        if self.headTooLarge():
            status = 414 if self.awaitingRequestLine() else 431
        elif self.tooManyHeaders():
            status = 431
        self._refuse(status)

    def requestTooSlow(self) -> None:
        self._refuse(408)

    def _refuse(self, status: int) -> None:
        """
        Refuse what the client sent with C{status} and close: nothing of it
        reaches a backend, and nothing after it is read.
        """
        if self.closing:
            return
        request = self.requests[-1] if self.requests else None
        if request is not None and (request.startedWriting or request.streaming):
            # A response (or a backend request) is under way: only closing
            # is left (and the access log says why).
            request.lostStatus = status
            self.forceClose()
            return
        serverHeader = getattr(self.factory, "serverHeader", None)
        self.transport.write(refusal(status, serverHeader))
        self.persistent = False
        self.closing = True
        HTTPChannel.loseConnection(self)

    def _bodyStarted(self, request: ChannelRequest) -> None:
        """
        The head of C{request} is in and its body follows: make the chunked
        decoder a strict one, and start the clock of its rate.
        """
        decoder = self.replaceChunkedDecoder(self._strictDecoder)
        if decoder is not None:
            decoder.maxBody = request.maxBody
        self.startBodyClock()

    def _strictDecoder(
        self, dataCallback: Any, finishCallback: Any
    ) -> StrictChunkedDecoder:
        return StrictChunkedDecoder(dataCallback, finishCallback, self._chunkTooLarge)

    def _chunkTooLarge(self) -> None:
        """
        A chunk size takes the request body past its limit: refuse it now
        (413), before any of that chunk arrives.
        """
        if self.requests:
            self.requests[-1].refuseBody()
        self.closing = True

    def allContentReceived(self) -> None:
        self.stopRequestClock()
        if self.closing or not self.requests:
            return
        HTTPChannel.allContentReceived(self)

    def loseConnection(self) -> None:
        self.closing = True
        super().loseConnection()

    def write(self, data: bytes) -> None:
        writeBatched(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        writeBatched(self.transport, b"".join(iovec))

    def forceClose(self) -> None:
        """
        Close now, whatever is in flight: a response can't be completed.
        """
        self.closing = True
        if self.transport is not None:
            self.transport.abortConnection()
