"""
Tunnels: WebSocket (and other C{Upgrade}) connections and C{CONNECT}
requests, carried to a backend of the route's pool as two-way byte streams.

A request that asks for an upgrade the route allows gets a connection of
its own to a backend (not a pooled one: it will never carry another
request). The request goes out with its C{Connection: Upgrade} and
C{Upgrade} headers, which the proxy otherwise strips as hop-by-hop; if the
backend answers C{101 Switching Protocols} (or C{2xx} to a C{CONNECT}), the
client connection stops speaking HTTP and the bytes flow both ways, with
backpressure each way and an idle timeout. Any other answer is passed to
the client and ends the connection.

The route's filters run before the proxy resource, so the same access
rules apply to tunnels as to the route's other requests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.pages import reasonPhrase, renderError
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.rules.http1 import (
    MAX_RESPONSE_HEAD,
    ResponseHead,
    ResponseParser,
    formatAuthority,
    formatRequestHead,
)

_log = Logger()

#: The largest backend response head accepted on a tunnel: the same as on a
#: pooled connection.
MAX_HEAD = MAX_RESPONSE_HEAD


def upgradeRequested(method: bytes, headers: Any) -> bytes | None:
    """
    The protocol a request asks to upgrade to, lowercased, if it asks for
    one: an C{Upgrade} header, and C{upgrade} among the C{Connection}
    options.

    @param headers: The request's L{twisted.web.http_headers.Headers}.
    """
    upgrade = headers.getRawHeaders(b"upgrade")
    if not upgrade:
        return None
    tokens = b",".join(headers.getRawHeaders(b"connection") or ()).lower()
    if b"upgrade" not in [token.strip(b" \t") for token in tokens.split(b",")]:
        return None
    return bytes(upgrade[0].strip(b" \t").lower())


def tunnelHead(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    upgrade: bytes | None,
) -> bytes:
    """
    The request head sent to the backend for a tunnel.

    @param headers: The forwarded headers (hop-by-hop ones already
        removed).
    @param upgrade: The C{Upgrade} value to ask for, or L{None} for a
        C{CONNECT}.
    """
    if upgrade is not None:
        headers = [*headers, (b"Connection", b"Upgrade"), (b"Upgrade", upgrade)]
    return formatRequestHead(method, target, headers)


class _FirstHead:
    """
    Keeps the head a L{ResponseParser} reports (the last one), for
    L{parseResponseHead}.
    """

    head: ResponseHead | None = None

    def interimHead(self, head: ResponseHead) -> None:
        self.head = head

    def responseHead(self, head: ResponseHead) -> Callable[[bytes], None]:
        self.head = head
        return self.bodyData

    def bodyData(self, data: bytes) -> None:
        pass

    def responseEnd(self, keepAlive: bool) -> None:
        pass

    def protocolError(self, reason: str) -> None:
        pass


def parseResponseHead(
    head: bytes,
) -> tuple[int, bytes, list[tuple[bytes, bytes]]] | None:
    """
    Parse a backend response head (up to and with its final blank line),
    by the rules of L{ResponseParser}.

    @return: The status, reason and headers, or L{None} if it is malformed.
    """
    first = _FirstHead()
    parser = ResponseParser(first, allowSwitch=True)
    parser.expect(b"GET")
    parser.feed(head)
    if first.head is None:
        return None
    return first.head.status, first.head.reason, first.head.headers


class _Side(Protocol):
    """
    One end of a tunnel: what it receives goes to the other end.
    """

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.fromClient(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tunnel.clientLost()


class _BackendSide(Protocol):
    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def connectionMade(self) -> None:
        self.tunnel.backendConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.tunnel.fromBackend(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.tunnel.backendLost()


class _BackendFactory(ClientFactory):
    noisy = False

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    def buildProtocol(self, addr: object) -> _BackendSide:
        return _BackendSide(self.tunnel)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.tunnel.backendFailed(reason)


class Tunnel:
    """
    One client connection tunnelled to a backend.

    @ivar request: The client's request (a L{twisted_rproxy.server.ProxyRequest}
        on an HTTP/1.1 channel).
    @ivar upgrade: The protocol asked for, or L{None} for a C{CONNECT}.
    """

    def __init__(
        self,
        reactor: IProxyReactor,
        request: Any,
        pool: BackendPool,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        upgrade: bytes | None,
        idleTimeout: float,
        hideHeaders: frozenset[bytes] = frozenset(),
        hostFromBackend: bool = False,
    ) -> None:
        self.reactor = reactor
        self.request = request
        self.pool = pool
        self.target = target
        self.headers = headers
        self.upgrade = upgrade
        self.idleTimeout = idleTimeout
        self.hideHeaders = hideHeaders
        self.hostFromBackend = hostFromBackend
        self.site = request.channel.site
        self._backend: _BackendSide | None = None
        self._client: Any = None
        self._parser = ResponseParser(self, allowSwitch=True)
        self._open = False
        self._responseOnly = False
        self._remaining: int | None = None
        self._lastActivity = reactor.seconds()
        self._idleCall: IDelayedCall | None = None
        self._done = False
        self._server: Any = None

    def start(self) -> None:
        """
        Connect to a backend; the client gets 503 if none is serving.
        """
        self._server = self.pool.connectTunnel(_BackendFactory(self))
        if self._server is None:
            renderError(self.request, 503, 1)
            return
        self.request.upstreamStarted = self.reactor.seconds()
        self.request.onConnectionLost = self._clientGoneEarly

    def _clientGoneEarly(self, reason: Failure) -> None:
        self._done = True
        backend = self._backend
        if backend is not None and backend.transport is not None:
            backend.transport.abortConnection()  # type: ignore[attr-defined]

    # The backend's side.

    def backendConnected(self, backend: _BackendSide) -> None:
        if self._done:
            backend.transport.abortConnection()  # type: ignore[union-attr]
            return
        self._backend = backend
        headers = self.headers
        if self.hostFromBackend:
            server = self._server
            host = formatAuthority(server.host, server.port, server.scheme)
            headers = [(b"Host", host), *headers]
        method = b"CONNECT" if self.upgrade is None else self.request.method
        self._parser.expect(method)
        assert backend.transport is not None
        backend.transport.write(tunnelHead(method, self.target, headers, self.upgrade))

    def backendFailed(self, reason: Failure) -> None:
        if self._done:
            return
        self._done = True
        _log.info("Tunnel: cannot connect to a backend: {reason}", reason=reason.value)
        self.request.onConnectionLost = None
        if not self.request.finished and self.request.channel is not None:
            renderError(self.request, 502)

    def fromBackend(self, data: bytes) -> None:
        self._lastActivity = self.reactor.seconds()
        if self._open:
            self._toClient(data)
            return
        self._parser.feed(data)

    # What the parser reports of the backend's answer (ResponseEvents): the
    # final head only, as the parser is detached there.

    def interimHead(self, head: ResponseHead) -> None:
        """
        A 1xx other than 101: the real answer follows.
        """

    def responseHead(self, head: ResponseHead) -> Callable[[bytes], None]:
        """
        The backend's answer: a switch opens the tunnel, anything else goes
        to the client as it is (the parser is detached: the body is not
        parsed).
        """
        rest = self._parser.detach()
        self._responseHead(head, rest)
        return self._toClient

    def responseEnd(self, keepAlive: bool) -> None:
        """
        Never called: the parser is detached at the final head.
        """

    def protocolError(self, reason: str) -> None:
        """
        The backend's answer is malformed: the client gets 502.
        """
        _log.info("Tunnel: malformed response from the backend: {why}", why=reason)
        self._badResponse()

    def _badResponse(self) -> None:
        self._done = True
        backend = self._backend
        if backend is not None and backend.transport is not None:
            backend.transport.abortConnection()  # type: ignore[attr-defined]
        self.request.onConnectionLost = None
        if not self.request.finished and self.request.channel is not None:
            renderError(self.request, 502)

    def _responseHead(self, head: ResponseHead, rest: bytes) -> None:
        status, reason, headers = head.status, head.reason, head.headers
        request = self.request
        request.onConnectionLost = None
        started = request.upstreamStarted
        if started is not None:
            request.upstreamTime = self.reactor.seconds() - started
        request.upstreamServer = self._server.url
        channel = request.channel
        if channel is None or self._done:
            self._closeBackend()
            return
        switched = (status == 101 and self.upgrade is not None) or (
            self.upgrade is None and 200 <= status < 300
        )
        request.code = status
        request.code_message = reason or reasonPhrase(status)
        lines = [b"HTTP/1.1 %d " % (status,), request.code_message, b"\r\n"]
        hidden = self.hideHeaders | {
            b"connection",
            b"keep-alive",
            b"proxy-connection",
            b"upgrade",
        }
        if not switched:
            self._remaining = head.contentLength
        for name, value in headers:
            if name.lower() in hidden:
                continue
            lines += (name, b": ", value, b"\r\n")
        if switched and self.upgrade is not None:
            upgrade = [v for n, v in headers if n.lower() == b"upgrade"]
            lines += (
                b"Connection: Upgrade\r\nUpgrade: ",
                upgrade[0] if upgrade else self.upgrade,
                b"\r\n",
            )
        elif not switched:
            lines.append(b"Connection: close\r\n")
            self._responseOnly = True
        lines.append(b"\r\n")
        buffered = channel.switchToTunnel(_Side(self))
        client = self._client = channel.transport
        # The HTTP channel let go: each transport now pauses the other when
        # its own buffer fills.
        client.unregisterProducer()
        backendTransport: Any = self._backend.transport if self._backend else None
        if backendTransport is None:
            client.loseConnection()
            return
        client.registerProducer(backendTransport, True)
        backendTransport.registerProducer(client, True)
        client.resumeProducing()
        self._open = True
        request.startedWriting = 1
        client.write(b"".join(lines))
        if rest:
            self._toClient(rest)
        if buffered and not self._responseOnly:
            backendTransport.write(buffered)
        self._scheduleIdleCheck()

    def _toClient(self, data: bytes) -> None:
        client = self._client
        if client is None:
            return
        request = self.request
        if self._responseOnly and self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
            request.sentLength += len(data)
            client.write(data)
            if self._remaining <= 0:
                client.loseConnection()
                self._closeBackend()
            return
        request.sentLength += len(data)
        client.write(data)

    def backendLost(self) -> None:
        self._backend = None
        if not self._open:
            if not self._done:
                # Closed before it answered.
                self._badResponse()
            return
        if self._client is not None:
            self._client.loseConnection()
        self._finished()

    def _closeBackend(self) -> None:
        backend = self._backend
        if backend is not None and backend.transport is not None:
            backend.transport.loseConnection()

    # The client's side.

    def fromClient(self, data: bytes) -> None:
        self._lastActivity = self.reactor.seconds()
        if self._responseOnly:
            return
        backend = self._backend
        if backend is not None and backend.transport is not None:
            backend.transport.write(data)

    def clientLost(self) -> None:
        self._client = None
        self._closeBackend()
        self._finished()

    # Both.

    def _finished(self) -> None:
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()
        if self._done or not self._open:
            self._done = True
            return
        self._done = True
        # The access log line and the metrics of a tunnel come when it
        # closes.
        self.site.log(self.request)

    def _scheduleIdleCheck(self) -> None:
        self._idleCall = self.reactor.callLater(self.idleTimeout, self._checkIdle)

    def _checkIdle(self) -> None:
        self._idleCall = None
        idle = self.reactor.seconds() - self._lastActivity
        if idle < self.idleTimeout:
            self._idleCall = self.reactor.callLater(
                self.idleTimeout - idle, self._checkIdle
            )
            return
        _log.info("Tunnel idle for {seconds}s: closed", seconds=self.idleTimeout)
        if self._client is not None:
            self._client.loseConnection()
        self._closeBackend()
