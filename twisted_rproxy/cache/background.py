"""
The request of a background revalidation (stale-while-revalidate): a copy
of a client's request that the cache sends to its child on its own
(L{_BackgroundRequest}), on a channel that stands for no connection
(L{_BackgroundChannel}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.web.server import Request

__all__ = ["CONDITIONAL"]

#: Request headers that make a response depend on the client's own state;
#: replaced by the cache's validators when it revalidates.
CONDITIONAL = (b"if-none-match", b"if-modified-since", b"range", b"if-range")


class _BackgroundChannel:
    """
    Stands for a client connection in a background revalidation: there is
    none, and aborting means the response is abandoned.

    @ivar onAbort: Called when the response is aborted, or L{None}.
    """

    # What twisted.web's Request reads of its channel's site.
    _parsePOSTFormSubmission = False

    def __init__(self) -> None:
        self.transport = self
        self.site = self
        self.onAbort: Callable[[], object] | None = None

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 0)

    getHost = getPeer

    def isSecure(self) -> bool:
        return False

    def abortConnection(self) -> None:
        if self.onAbort is not None:
            self.onAbort()

    loseConnection = abortConnection

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


class _BackgroundRequest(Request):
    """
    A copy of a client's request that the cache sends to its child on its
    own, to refresh a stale response (stale-while-revalidate): what is
    written to it goes nowhere but the cache.
    """

    def __init__(self, original: Any) -> None:
        channel = _BackgroundChannel()
        Request.__init__(self, channel)
        self.backgroundChannel = channel
        self.method = b"GET"
        self.uri = original.uri
        self.path = original.path
        self.clientproto = original.clientproto
        self.prepath = list(original.prepath)
        self.postpath = list(original.postpath)
        self.client = original.getClientAddress()
        self._secure = bool(original.isSecure())
        self.content = None
        self.args = {}
        for name, values in original.requestHeaders.getAllRawHeaders():
            if name.lower() not in CONDITIONAL:
                self.requestHeaders.setRawHeaders(name, list(values))

    def isSecure(self) -> bool:
        return self._secure

    def write(self, data: bytes) -> None:
        # So that a response cut short is aborted, not finished as an
        # error page (see ProxyResource).
        self.startedWriting = 1

    def finish(self) -> None:
        self.finished = 1

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass
