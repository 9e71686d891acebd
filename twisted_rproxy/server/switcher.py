"""
L{ChannelSwitcher}: the protocol of a client connection, which speaks
HTTP/1.1 (L{ProxyHTTPChannel}) unless the connection is HTTP/2: ALPN chose
C{h2} on TLS, or, on a plain listener with C{h2c}, the client's first bytes
are the HTTP/2 connection preface (prior knowledge, RFC 9113 section
3.3). It keeps the site's set of open connections, for a graceful stop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.h2.connection import H2ServerConnection
from twisted_rproxy.h2.frames import PREFACE
from twisted_rproxy.server.channel import ProxyHTTPChannel


@implementer(IProtocol)
class ChannelSwitcher:
    """
    A client connection: its HTTP/1.1 channel, or the
    L{H2ServerConnection} it switched to on its first bytes.

    The site sets C{factory}, C{site}, C{requestFactory}, C{timeOut} and
    C{callLater} on the protocol it builds: they go to the HTTP/1.1
    channel.

    @ivar channel: The protocol the connection speaks through now.
    @ivar h2c: Whether a plain connection may start with the HTTP/2
        preface.
    """

    _decided = False

    def __init__(self, channel: ProxyHTTPChannel, h2c: bool = False) -> None:
        self.channel: ProxyHTTPChannel | H2ServerConnection = channel
        self.http1 = channel
        self.h2c = h2c
        self._sniffed = b""

    # What twisted.web's factories set on the protocol they build.
    @property
    def factory(self) -> Any:
        return self.http1.factory

    @factory.setter
    def factory(self, value: Any) -> None:
        self.http1.factory = value

    @property
    def site(self) -> Any:
        return getattr(self.http1, "site", None)

    @site.setter
    def site(self, value: Any) -> None:
        self.http1.site = value  # type: ignore[attr-defined]

    @property
    def requestFactory(self) -> Any:
        return self.http1.requestFactory

    @requestFactory.setter
    def requestFactory(self, value: Any) -> None:
        self.http1.requestFactory = value

    @property
    def timeOut(self) -> Any:
        return self.http1.timeOut

    @timeOut.setter
    def timeOut(self, value: Any) -> None:
        self.http1.timeOut = value

    @property
    def callLater(self) -> Any:
        return self.http1.callLater

    @callLater.setter
    def callLater(self, value: Any) -> None:
        self.http1.callLater = value  # type: ignore[method-assign]

    @property
    def _channel(self) -> Any:
        # The name twisted.web's switcher had, which tests reach for.
        return self.channel

    @property
    def transport(self) -> Any:
        return self.channel.transport

    def makeConnection(self, transport: Any) -> None:
        # One set operation per connection, for a graceful stop.
        site = self.factory
        if site is not None:
            site.connections.add(self)
        self.channel.makeConnection(transport)

    def connectionMade(self) -> None:
        # Transports call makeConnection, which does what is needed.
        pass

    def dataReceived(self, data: bytes) -> None:
        if self._decided:
            self.channel.dataReceived(data)
            return
        transport = self.http1.transport
        negotiated = getattr(transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            self._switch(data)
            return
        if self.h2c and negotiated is None and not ISSLTransport.providedBy(transport):
            data = self._sniffed + data
            if PREFACE.startswith(data[: len(PREFACE)]):
                if len(data) < len(PREFACE):
                    # The start of the preface, or of a request: wait.
                    self._sniffed = data
                    return
                self._switch(data)
                return
            self._sniffed = b""
        self._decided = True
        self.channel.dataReceived(data)

    def _switch(self, data: bytes) -> None:
        """
        Hand the connection to HTTP/2, from C{data} on.
        """
        self._decided = True
        http1 = self.http1
        http1.stopIdleTimer()
        transport = http1.transport
        # The HTTP/1.1 channel registered itself with the transport.
        transport.unregisterProducer()
        connection = self.factory.buildHTTP2()
        self.channel = connection
        connection.makeConnection(transport)
        connection.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        site = self.factory
        if site is not None:
            site.connections.discard(self)
        self.channel.connectionLost(reason)

    def isIdle(self) -> bool:
        """
        Whether the connection has nothing in progress.
        """
        return self.channel.isIdle()

    def closeIfIdle(self, force: bool = False) -> bool:
        """
        Close the connection if it is idle (or at once, with C{force});
        else make it close once its response is done (HTTP/1.1) or its
        open streams are (HTTP/2, after a C{GOAWAY}).

        @return: Whether it was closed now.
        """
        channel = self.channel
        if isinstance(channel, H2ServerConnection):
            return channel.closeIfIdle(force)
        transport: Any = channel.transport
        if transport is None:
            return True
        if force:
            transport.abortConnection()
            return True
        if channel.isIdle():
            transport.loseConnection()
            return True
        # The response in progress (or to the request on its way) is the
        # last on this connection.
        channel.lastRequest()
        return False
