"""
L{ChannelSwitcher}: the wrapper of a client connection that hands it to
HTTP/2 when TLS negotiated it, and answers a graceful stop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from twisted_rproxy._twisted import HTTPChannelSwitcher
from twisted_rproxy.server.channel import ProxyHTTPChannel


class ChannelSwitcher(HTTPChannelSwitcher):
    """
    twisted.web's wrapper that hands a TLS connection to HTTP/2 when ALPN
    chose it; this one also stops the HTTP/1.1 channel's idle timer then,
    and keeps the site's set of open connections.
    """

    def dataReceived(self, data: bytes) -> None:
        channel = self.channel
        HTTPChannelSwitcher.dataReceived(self, data)
        if self.channel is not channel and isinstance(channel, ProxyHTTPChannel):
            channel.stopIdleTimer()

    def makeConnection(self, transport: Any) -> None:
        # One set operation per connection, for a graceful stop. (The
        # wrapper passes makeConnection on to the channel: connectionMade is
        # never called on the wrapper itself.)
        site = self.factory
        if site is not None:
            site.connections.add(self)
        HTTPChannelSwitcher.makeConnection(self, transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        site = self.factory
        if site is not None:
            site.connections.discard(self)
        HTTPChannelSwitcher.connectionLost(self, reason)

    def isIdle(self) -> bool:
        """
        Whether the connection has nothing in progress.
        """
        channel = self.channel
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
        channel = self.channel
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
