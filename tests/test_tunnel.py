"""
Tests for the tunnels of L{twisted_rproxy.upgrade}, through a whole
L{ProxyService} on a memory reactor: a client's upgrade request in, the
backend's side answered by hand, bytes relayed both ways, and the idle
timeout run on the reactor's clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.memory import Proxy, responsesOf
from twisted_rproxy.config import RouteConfig

_UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)

_SWITCHED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)


class TunnelTests(SynchronousTestCase):
    """
    An upgrade request gets a backend connection of its own; once the
    backend switches protocols, bytes flow both ways until either side
    closes or the tunnel is idle too long.
    """

    def open(
        self, proxy: Proxy, request: bytes = _UPGRADE
    ) -> tuple[Any, StringTransport, Any, StringTransport]:
        """
        Send C{request} on a new client connection and accept the backend
        connection the tunnel opens.
        """
        client, clientTransport = proxy.exchange(request)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        backend, backendTransport = proxy.acceptBackend()
        return client, clientTransport, backend, backendTransport

    def test_upgradeRequestForwarded(self) -> None:
        """
        The backend gets the request with its C{Connection: Upgrade} and
        C{Upgrade} headers, which the proxy strips from other requests, and
        the forwarding headers.
        """
        proxy = Proxy()
        _, clientTransport, _, backendTransport = self.open(proxy)
        sent = backendTransport.value()
        self.assertTrue(sent.startswith(b"GET /chat HTTP/1.1\r\n"), sent)
        self.assertTrue(sent.endswith(b"\r\n\r\n"), sent)
        self.assertIn(b"Connection: Upgrade\r\n", sent)
        self.assertIn(b"Upgrade: websocket\r\n", sent)
        self.assertIn(
            b"\r\nsec-websocket-key: dghlihnhbxbszsbub25jzq==\r\n", sent.lower()
        )
        self.assertIn(b"X-Forwarded-For: 192.0.2.7\r\n", sent)
        self.assertEqual(clientTransport.value(), b"")

    def test_switchedAndRelayedBothWays(self) -> None:
        """
        The backend's 101 reaches the client with its C{Upgrade}; bytes the
        backend sends after it, and later, reach the client; bytes the
        client sends reach the backend, unchanged.
        """
        proxy = Proxy()
        client, clientTransport, backend, backendTransport = self.open(proxy)
        backend.dataReceived(_SWITCHED + b"\x81\x02hi")
        head, _, rest = clientTransport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 Switching Protocols"), head)
        self.assertIn(b"\r\nUpgrade: websocket", head)
        self.assertIn(b"\r\nConnection: Upgrade", head)
        self.assertIn(b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
        self.assertEqual(rest, b"\x81\x02hi")
        backendTransport.clear()
        client.dataReceived(b"\x81\x85mask!GET / HTTP/1.1\r\n")
        self.assertEqual(backendTransport.value(), b"\x81\x85mask!GET / HTTP/1.1\r\n")
        clientTransport.clear()
        backend.dataReceived(b"\x00" * 70000)
        self.assertEqual(clientTransport.value(), b"\x00" * 70000)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_clientCloseClosesBackend(self) -> None:
        """
        When the client goes, the tunnel closes the backend connection.
        """
        proxy = Proxy()
        client, _, backend, backendTransport = self.open(proxy)
        backend.dataReceived(_SWITCHED)
        self.assertFalse(backendTransport.disconnecting)
        client.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(backendTransport.disconnecting)

    def test_backendCloseClosesClient(self) -> None:
        """
        When the backend goes, the tunnel closes the client connection.
        """
        proxy = Proxy()
        _, clientTransport, backend, _ = self.open(proxy)
        backend.dataReceived(_SWITCHED)
        self.assertFalse(clientTransport.disconnecting)
        backend.connectionLost(Failure(ConnectionRefusedError()))
        self.assertTrue(clientTransport.disconnecting)

    def test_idleTimeout(self) -> None:
        """
        A tunnel with no bytes either way for C{tunnelIdleTimeout} is
        closed on both sides; traffic postpones the timeout.
        """
        proxy = Proxy(tunnelIdleTimeout=10.0)
        client, clientTransport, backend, backendTransport = self.open(proxy)
        backend.dataReceived(_SWITCHED)
        proxy.reactor.advance(6)
        client.dataReceived(b"ping")
        proxy.reactor.advance(6)
        backend.dataReceived(b"pong")
        proxy.reactor.advance(9)
        self.assertFalse(clientTransport.disconnecting)
        self.assertFalse(backendTransport.disconnecting)
        proxy.reactor.advance(1.5)
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(backendTransport.disconnecting)

    def test_backendRefusingIs502(self) -> None:
        """
        A backend that refuses the tunnel's connection gets the client the
        proxy's 502 page, which names no address.
        """
        proxy = Proxy()
        _, clientTransport = proxy.exchange(_UPGRADE)
        factory = proxy.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        [response] = responsesOf(clientTransport)
        self.assertEqual(response.status, 502)
        self.assertNotIn(b"127.0.0.1", response.raw)
        self.assertNotIn(b"8001", response.raw)

    def test_backendClosingBeforeAnswerIs502(self) -> None:
        """
        A backend that closes the tunnel's connection without answering
        gets the client a 502.
        """
        proxy = Proxy()
        _, clientTransport, backend, _ = self.open(proxy)
        backend.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual([r.status for r in responsesOf(clientTransport)], [502])

    def test_malformedAnswerIs502(self) -> None:
        """
        A backend answering the upgrade with something that is not an HTTP
        response head gets the client a 502, and its connection is cut.
        """
        proxy = Proxy()
        _, clientTransport, backend, backendTransport = self.open(proxy)
        backend.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        self.assertEqual([r.status for r in responsesOf(clientTransport)], [502])
        self.assertTrue(backendTransport.disconnecting or backendTransport.disconnected)

    def test_refusedUpgradePassedOnAndClosed(self) -> None:
        """
        A backend that answers the upgrade with a plain response (no 101):
        the client gets that response, then the connection closes; what
        the client sends is not relayed.
        """
        proxy = Proxy()
        client, clientTransport, backend, backendTransport = self.open(proxy)
        backend.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")
        [response] = responsesOf(clientTransport)
        self.assertEqual((response.status, response.body), (403, b"nope"))
        self.assertIn(b"close", b" ".join(response.header(b"connection")).lower())
        self.assertEqual(response.header(b"upgrade"), [])
        self.assertTrue(clientTransport.disconnecting)
        backendTransport.clear()
        client.dataReceived(b"more")
        self.assertEqual(backendTransport.value(), b"")

    def test_websocketOffForwardsPlainRequest(self) -> None:
        """
        On a route with C{websocket} off, an upgrade request is an ordinary
        request: it goes to the pool without its C{Upgrade}.
        """
        proxy = Proxy(routes=(RouteConfig(path="/", pool="app", websocket=False),))
        _, _, _, backendTransport = self.open(proxy)
        sent = backendTransport.value()
        self.assertTrue(sent.startswith(b"GET /chat HTTP/1.1\r\n"), sent)
        self.assertNotIn(b"Upgrade: websocket", sent)
