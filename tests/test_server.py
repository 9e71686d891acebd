"""
Tests for the client side (L{twisted_rproxy.server}) and the routing tree
(L{twisted_rproxy.tree}), through a whole L{ProxyService} on a memory
reactor: raw client bytes in, backend bytes out, and back.
"""

from __future__ import annotations

import os

from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyChannel
from zope.interface.verify import verifyObject

from tests.memory import Proxy, backend
from twisted_rproxy.config import PoolConfig, RouteConfig
from twisted_rproxy.interfaces import IProxyRequest, ITunnelChannel
from twisted_rproxy.server import ProxyHTTPChannel, ProxyRequest, httpDate

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: secret-backend/1.0\r\nX-Powered-By: PHP\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b"\r\nhello"
)


class ProxyingTests(SynchronousTestCase):
    """
    A request crosses the proxy, and its response comes back.
    """

    def test_forwardsRequestAndResponse(self) -> None:
        """
        The backend gets an HTTP/1.1 request with forwarding headers; the
        client gets status, headers and body, without the backend's
        identity.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Mine: 1\r\n\r\n"
        )
        protocol, transport = proxy.acceptBackend()
        self.assertEqual(
            transport.value(),
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-Mine: 1\r\n"
            b"X-Forwarded-For: 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: example.com\r\nVia: 1.1 twisted_rproxy\r\n\r\n",
        )
        protocol.dataReceived(RESPONSE)
        response = clientTransport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK\r\n"), response)
        self.assertTrue(response.endswith(b"\r\n\r\nhello"))
        self.assertIn(b"Content-Length: 5\r\n", response)
        self.assertIn(b"Content-Type: text/plain\r\n", response)
        self.assertIn(b"Date: ", response)
        for hidden in (b"secret-backend", b"PHP", b"Connection", b"Server"):
            self.assertNotIn(hidden, response)

    def test_clientKeepAliveAndBackendReuse(self) -> None:
        """
        Two requests on one client connection are both answered and share
        one backend connection.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, transport = proxy.acceptBackend()
        protocol.dataReceived(RESPONSE)
        client.dataReceived(b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.dataReceived(RESPONSE)
        self.assertEqual(clientTransport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        self.assertFalse(clientTransport.disconnecting)

    def test_pipelinedRequestsAnsweredInOrder(self) -> None:
        """
        Pipelined requests are answered one after the other, in order.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        protocol, transport = proxy.acceptBackend()
        self.assertNotIn(b"GET /2", transport.value())
        protocol.dataReceived(RESPONSE.replace(b"hello", b"one!!"))
        self.assertIn(b"GET /2", transport.value())
        protocol.dataReceived(RESPONSE.replace(b"hello", b"two!!"))
        body = clientTransport.value()
        self.assertLess(body.index(b"one!!"), body.index(b"two!!"))

    def test_chunkedBackendResponseRechunked(self) -> None:
        """
        A chunked backend response reaches an HTTP/1.1 client chunked, with
        the same content.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
        )
        protocol.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
        response = clientTransport.value()
        self.assertIn(b"Transfer-Encoding: chunked\r\n", response)
        self.assertTrue(response.endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))

    def test_http10ClientGetsWholeBody(self) -> None:
        """
        An HTTP/1.0 client gets the body unchunked and the connection is
        closed after it.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        protocol, transport = proxy.acceptBackend()
        self.assertIn(b"GET / HTTP/1.1\r\n", transport.value())
        self.assertIn(b"Via: 1.0 twisted_rproxy", transport.value())
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        response = clientTransport.value()
        self.assertTrue(response.startswith(b"HTTP/1.0 200 OK"))
        self.assertTrue(response.endswith(b"\r\n\r\nabc"))
        self.assertTrue(clientTransport.disconnecting)

    def test_headResponse(self) -> None:
        """
        A HEAD response keeps its Content-Length and has no body; the
        connection stays usable.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        response = clientTransport.value()
        self.assertIn(b"Content-Length: 1234\r\n", response)
        self.assertTrue(response.endswith(b"\r\n\r\n"))
        self.assertFalse(clientTransport.disconnecting)

    def test_notModified(self) -> None:
        """
        A 304 passes with its validators and no body.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(b'GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\n\r\n')
        protocol, transport = proxy.acceptBackend()
        self.assertIn(b'If-None-Match: "v1"', transport.value())
        protocol.dataReceived(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n\r\n')
        response = clientTransport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 304 Not Modified\r\n"))
        self.assertIn(b'ETag: "v1"', response)
        self.assertTrue(response.endswith(b"\r\n\r\n"))
        self.assertNotIn(b"Content-Type", response)

    def test_postBodyForwarded(self) -> None:
        """
        A buffered request body goes to the backend with its length; a
        chunked one is de-chunked.
        """
        proxy = Proxy()
        client, _ = proxy.client()
        client.dataReceived(
            b"POST /f HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: text/plain\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
        )
        _, transport = proxy.acceptBackend()
        wire = transport.value()
        self.assertNotIn(b"chunked", wire)
        self.assertTrue(wire.endswith(b"Content-Length: 7\r\n\r\nabcdefg"))

    def test_serverHeaderConfigured(self) -> None:
        """
        The proxy's own Server header is sent when configured, never the
        backend's.
        """
        proxy = Proxy(serverHeader="edge")
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(RESPONSE)
        self.assertIn(b"Server: edge\r\n", clientTransport.value())
        self.assertNotIn(b"secret-backend", clientTransport.value())


class ErrorTests(SynchronousTestCase):
    """
    Backend failures and refused requests get the proxy's own pages.
    """

    def assertErrorPage(self, response: bytes, status: bytes) -> None:
        self.assertTrue(response.startswith(b"HTTP/1.1 " + status), response[:80])
        self.assertIn(b"Content-Type: text/html; charset=utf-8", response)
        self.assertNotIn(b"127.0.0.1", response)
        self.assertNotIn(b"8001", response)

    def test_refusedIs502(self) -> None:
        """
        A backend that refuses connections gives a 502 page that names no
        address.
        """
        proxy = Proxy(
            pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)}
        )
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        factory = proxy.reactor.tcpClients[0][2]
        # The pool's factory never looks at the connector.
        factory.clientConnectionFailed(
            None,  # type: ignore[arg-type]
            Failure(ConnectionRefusedError()),
        )
        self.assertErrorPage(clientTransport.value(), b"502")
        self.assertFalse(clientTransport.disconnecting)

    def test_readTimeoutIs504(self) -> None:
        """
        A backend that does not answer within its read timeout gives 504.
        """
        proxy = Proxy(
            pools={
                "app": PoolConfig(name="app", servers=(backend(8001),), readTimeout=2.0)
            }
        )
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        proxy.acceptBackend()
        proxy.reactor.advance(3)
        self.assertErrorPage(clientTransport.value(), b"504")

    def test_backendErrorPageHidesBackendHeaders(self) -> None:
        """
        A backend that fails after sending its head leaves nothing of it in
        the answer: the client connection is closed instead of finishing a
        truncated response as if it were whole.
        """
        proxy = Proxy()
        client, clientTransport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(clientTransport.disconnecting)

    def test_oversizedBodyRefusedBeforeReading(self) -> None:
        """
        A Content-Length over the limit gets 413 at once, instead of a
        C{100 Continue}; nothing reaches a backend and the connection
        closes.
        """
        proxy = Proxy(maxBodySize=1000)
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        response = clientTransport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 413 "), response)
        self.assertNotIn(b"100 Continue", response)
        self.assertEqual(proxy.reactor.tcpClients, [])
        self.assertTrue(clientTransport.disconnecting)
        client.dataReceived(b"x" * 1001)

    def test_oversizedChunkedBodyRefused(self) -> None:
        """
        A chunked body that grows past the limit is refused with 413.
        """
        proxy = Proxy(maxBodySize=10)
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"8\r\n12345678\r\n8\r\n12345678\r\n"
        )
        self.assertTrue(clientTransport.value().startswith(b"HTTP/1.1 413 "))
        self.assertEqual(proxy.reactor.tcpClients, [])
        self.assertTrue(clientTransport.disconnecting)

    def test_routeBodyLimit(self) -> None:
        """
        A route's own body limit overrides the server's.
        """
        routes = (
            RouteConfig(path="/upload/", pool="app", maxBodySize=100),
            RouteConfig(path="/", pool="app"),
        )
        proxy = Proxy(routes=routes, maxBodySize=10)
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"POST /upload/x HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
        )
        client.dataReceived(b"y" * 50)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        client2, clientTransport2 = proxy.client()
        client2.dataReceived(
            b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n"
        )
        self.assertTrue(clientTransport2.value().startswith(b"HTTP/1.1 413 "))

    def test_clientGoneAbortsBackend(self) -> None:
        """
        When the client disconnects mid-response, the backend connection is
        aborted and not reused.
        """
        proxy = Proxy()
        client, _ = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, transport = proxy.acceptBackend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        pool = proxy.service.pools["app"]
        self.assertEqual((pool.servers[0].busy, pool.servers[0].idle), (0, []))


class IdleTimeoutTests(SynchronousTestCase):
    """
    Idle client connections are closed after C{idle_timeout}; busy ones
    are not.
    """

    def test_idleConnectionClosed(self) -> None:
        """
        A client that sends nothing for C{idleTimeout} seconds is
        disconnected, and only then.
        """
        self._assertIdlesOut(60.0, 59, 61)

    def _assertIdlesOut(self, timeout: float, stillOpen: float, closed: float) -> None:
        """
        A client connection to a proxy with C{idleTimeout=timeout} that
        sends nothing is open after C{stillOpen} seconds, closed after
        C{closed}.
        """
        proxy = Proxy(idleTimeout=timeout)
        _, transport = proxy.client()
        proxy.reactor.advance(stillOpen)
        self.assertFalse(transport.disconnecting)
        proxy.reactor.advance(closed - stillOpen)
        self.assertTrue(transport.disconnecting)

    def test_activityPostponesTimeout(self) -> None:
        """
        The timeout counts from the last bytes received, including those
        after a finished request.
        """
        proxy = Proxy(idleTimeout=60.0)
        client, transport = proxy.client()
        proxy.reactor.advance(50)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(RESPONSE)
        proxy.reactor.advance(30)
        self.assertFalse(transport.disconnecting)
        proxy.reactor.advance(31)
        self.assertTrue(transport.disconnecting)

    def test_noTimeoutWhileRequestInFlight(self) -> None:
        """
        A request waiting for a slow backend keeps its client connection,
        past the idle timeout.
        """
        pools = {
            "app": PoolConfig(name="app", servers=(backend(8001),), readTimeout=500.0)
        }
        proxy = Proxy(pools=pools, idleTimeout=60.0)
        client, transport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        proxy.reactor.advance(200)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(RESPONSE)
        self.assertIn(b"hello", transport.value())
        proxy.reactor.advance(61)
        self.assertTrue(transport.disconnecting)

    def test_closedConnectionLeavesNoTimer(self) -> None:
        """
        A closed client connection leaves no timer behind: the site's one
        sweep of idle connections stops at its next tick once none is
        open.
        """
        proxy = Proxy(idleTimeout=60.0)
        client, _ = proxy.client()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertLessEqual(len(proxy.reactor.getDelayedCalls()), 1)
        proxy.reactor.advance(1.0)
        self.assertEqual(proxy.reactor.getDelayedCalls(), [])

    def test_oneTimerForAllConnections(self) -> None:
        """
        However many connections are open, one call times them out, each
        within a second of its own idle period.
        """
        proxy = Proxy(idleTimeout=10.0)
        transports = [proxy.client()[1] for _ in range(20)]
        proxy.reactor.advance(5)
        late = [proxy.client()[1] for _ in range(5)]
        self.assertEqual(len(proxy.reactor.getDelayedCalls()), 1)
        proxy.reactor.advance(5)
        self.assertTrue(all(t.disconnecting for t in transports))
        self.assertFalse(any(t.disconnecting for t in late))
        proxy.reactor.advance(5)
        self.assertTrue(all(t.disconnecting for t in late))

    def test_shortTimeoutTicksFaster(self) -> None:
        """
        An idle timeout under four seconds is swept four times a period.
        """
        self._assertIdlesOut(2.0, 1.9, 2.4)


class StreamingTests(SynchronousTestCase):
    """
    Bodies stream with backpressure in both directions.
    """

    def test_slowClientPausesBackend(self) -> None:
        """
        When the client's transport is full, the backend connection stops
        reading; it resumes when the client drains.
        """
        proxy = Proxy()
        client, _ = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, transport = proxy.acceptBackend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        # What the client's transport does when its buffer is full:
        client.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        client.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_streamedUploadStartsBeforeBodyEnds(self) -> None:
        """
        With request buffering off, the backend request starts when the
        headers are in, and the body follows as it arrives.
        """
        proxy = Proxy(requestBuffering=False)
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc"
        )
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        protocol, transport = proxy.acceptBackend()
        self.assertTrue(transport.value().endswith(b"Content-Length: 6\r\n\r\nabc"))
        client.dataReceived(b"def")
        self.assertTrue(transport.value().endswith(b"abcdef"))
        protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(clientTransport.value().startswith(b"HTTP/1.1 201 Created"))
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"GET / HTTP/1.1", transport.value())

    def test_streamedChunkedUpload(self) -> None:
        """
        A chunked upload streams to the backend chunked.
        """
        proxy = Proxy(requestBuffering=False)
        client, _ = proxy.client()
        client.dataReceived(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n"
        )
        protocol, transport = proxy.acceptBackend()
        client.dataReceived(b"2\r\nde\r\n0\r\n\r\n")
        wire = transport.value()
        self.assertIn(b"Transfer-Encoding: chunked\r\n\r\n", wire)
        self.assertTrue(wire.endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"))

    def test_earlyAnswerToStreamedUploadClosesClient(self) -> None:
        """
        When the backend answers before the streamed body is all in, the
        client connection closes after the response (the rest of the body
        is still on the wire) and the backend connection is not reused.
        """
        proxy = Proxy(requestBuffering=False)
        client, clientTransport = proxy.client()
        client.dataReceived(
            b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"
        )
        protocol, transport = proxy.acceptBackend()
        protocol.dataReceived(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(clientTransport.value().startswith(b"HTTP/1.1 403 "))
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(transport.disconnecting)
        client.dataReceived(b"x" * 97)


class RoutingTests(SynchronousTestCase):
    """
    Requests are routed by host and path prefix.
    """

    def setUp(self) -> None:
        self.static = self.mktemp()
        os.makedirs(os.path.join(self.static, "css"))
        with open(os.path.join(self.static, "css", "a.css"), "wb") as f:
            f.write(b"body{}")
        self.pools = {
            name: PoolConfig(name=name, servers=(backend(port),))
            for name, port in (("app", 8001), ("api", 8002), ("admin", 8003))
        }

    def request(self, proxy: Proxy, line: bytes, host: bytes = b"example.com") -> bytes:
        client, transport = proxy.client()
        client.dataReceived(line + b"\r\nHost: " + host + b"\r\n\r\n")
        response: bytes = transport.value()
        return response

    def backendPort(self, proxy: Proxy) -> int:
        port: int = proxy.reactor.tcpClients[-1][1]
        return port

    def test_longestPrefixAndHostWin(self) -> None:
        """
        The most specific route takes the request: a host route beats a
        host-less one; the longest prefix wins; prefixes match whole
        segments.
        """
        routes = (
            RouteConfig(path="/", pool="app"),
            RouteConfig(path="/api", pool="api"),
            RouteConfig(path="/", pool="admin", host="admin.example.com"),
        )
        proxy = Proxy(routes=routes, pools=self.pools)
        self.request(proxy, b"GET /x HTTP/1.1")
        self.assertEqual(self.backendPort(proxy), 8001)
        self.request(proxy, b"GET /api/users HTTP/1.1")
        self.assertEqual(self.backendPort(proxy), 8002)
        self.request(proxy, b"GET /api HTTP/1.1")
        self.assertEqual(self.backendPort(proxy), 8002)
        self.request(proxy, b"GET /apix HTTP/1.1")
        self.assertEqual(self.backendPort(proxy), 8001)
        self.request(proxy, b"GET /api/x HTTP/1.1", b"ADMIN.example.com:8080")
        self.assertEqual(self.backendPort(proxy), 8003)

    def test_wildcardHost(self) -> None:
        """
        C{*.example.com} matches subdomains, not the bare domain.
        """
        routes = (
            RouteConfig(path="/", pool="app", host="example.com"),
            RouteConfig(path="/", pool="api", host="*.example.com"),
        )
        proxy = Proxy(routes=routes, pools=self.pools)
        self.request(proxy, b"GET / HTTP/1.1", b"a.b.example.com")
        self.assertEqual(self.backendPort(proxy), 8002)
        self.request(proxy, b"GET / HTTP/1.1", b"example.com")
        self.assertEqual(self.backendPort(proxy), 8001)

    def test_noRouteIs404(self) -> None:
        """
        A request no route takes gets the proxy's 404 page.
        """
        routes = (RouteConfig(path="/", pool="app", host="example.com"),)
        proxy = Proxy(routes=routes, pools=self.pools)
        response = self.request(proxy, b"GET / HTTP/1.1", b"other.example")
        self.assertTrue(response.startswith(b"HTTP/1.1 404 "))
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_stripPrefix(self) -> None:
        """
        With C{stripPrefix}, the backend sees the path below the prefix.
        """
        routes = (RouteConfig(path="/api/", pool="api", stripPrefix=True),)
        proxy = Proxy(routes=routes, pools=self.pools)
        self.request(proxy, b"GET /api/users?page=2 HTTP/1.1")
        _, transport = proxy.acceptBackend()
        self.assertTrue(transport.value().startswith(b"GET /users?page=2 HTTP/1.1"))

    def test_staticRoute(self) -> None:
        """
        A static route takes the requests below its prefix: no directory
        listing, no way out of the root, nothing sent to a backend. (Its
        files are served in the loopback tests: twisted.web's file producer
        needs a running reactor.)
        """
        routes = (
            RouteConfig(path="/static/", static=os.path.abspath(self.static)),
            RouteConfig(path="/", pool="app"),
        )
        proxy = Proxy(routes=routes, pools=self.pools)
        self.assertTrue(
            self.request(proxy, b"GET /static/css/b.css HTTP/1.1").startswith(
                b"HTTP/1.1 404 "
            )
        )
        self.assertTrue(
            self.request(proxy, b"GET /static/css/ HTTP/1.1").startswith(
                b"HTTP/1.1 404 "
            )
        )
        self.assertTrue(
            self.request(proxy, b"GET /static/../../etc/passwd HTTP/1.1").startswith(
                b"HTTP/1.1 404 "
            )
        )
        self.assertEqual(proxy.reactor.tcpClients, [])


class ChannelTests(SynchronousTestCase):
    """
    The site's channels: what twisted.web's factories would set, and the
    configured limits.
    """

    def test_builtBySite(self) -> None:
        """
        A channel the site builds has the site as its factory and site,
        makes L{ProxyRequest}s, times out on the site's reactor after the
        idle timeout, and has the configured limits.
        """
        proxy = Proxy(idleTimeout=30.0, maxHeaders=7, maxHeaderSize=4096, h2c=True)
        site = proxy.service.site
        channel = site.buildProtocol(None)
        self.assertIsInstance(channel, ProxyHTTPChannel)
        self.assertIs(channel.factory, site)
        self.assertIs(channel.site, site)
        self.assertIs(channel.requestFactory, ProxyRequest)
        self.assertEqual(channel.callLater, proxy.reactor.callLater)
        self.assertEqual(channel.timeOut, 30.0)
        self.assertIs(channel.idleSweep, site.idleSweep)
        self.assertEqual((channel.maxHeaders, channel.totalHeadersSize), (7, 4096))
        self.assertTrue(channel.h2c)

    def test_peerAccepted(self) -> None:
        """
        On a plain TCP connection, the channel's peer is the address the
        site was given for it; on another transport (behind a wrapper), the
        transport's.
        """
        import socket

        from twisted.internet.address import IPv4Address
        from twisted.internet.tcp import Server

        proxy = Proxy()
        accepted = IPv4Address("TCP", "192.0.2.7", 4321)
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        channel = proxy.service.site.buildProtocol(accepted)
        channel.transport = Server(
            ours, channel, ("192.0.2.7", 4321), None, 0, proxy.reactor
        )
        self.assertIs(channel.getPeer(), accepted)
        wrapped, transport = proxy.client()
        self.assertEqual(wrapped.getPeer(), transport.getPeer())

    def test_localAddress(self) -> None:
        """
        A channel's local address is its transport's, asked once.
        """
        proxy = Proxy()
        client, transport = proxy.client()
        host = client.getHost()
        self.assertEqual(host, transport.getHost())
        transport.getHost = lambda: 1 / 0  # type: ignore[method-assign]
        self.assertIs(client.getHost(), host)


class HTTPDateTests(SynchronousTestCase):
    """
    L{httpDate} formats RFC 9110 dates.
    """

    def test_format(self) -> None:
        """
        The IMF-fixdate of a time.
        """
        self.assertEqual(httpDate(784111777.5), b"Sun, 06 Nov 1994 08:49:37 GMT")
        self.assertEqual(httpDate(0), b"Thu, 01 Jan 1970 00:00:00 GMT")


class ProxyRequestContractTests(SynchronousTestCase):
    """
    L{ProxyRequest} provides L{IProxyRequest}, with every attribute it
    declares.
    """

    def test_onProxyChannel(self) -> None:
        """
        A request received on the proxy's channel, waiting on its backend,
        provides the interface; what no module set yet is L{None}.
        """
        proxy = Proxy()
        client, _ = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        channel = client
        self.assertIsInstance(channel, ProxyHTTPChannel)
        self.assertTrue(verifyObject(ITunnelChannel, channel))
        [request] = channel.requests
        self.assertTrue(verifyObject(IProxyRequest, request))
        self.assertIsNone(request.onBackendError)
        self.assertIsNone(request.cacheStatus)

    def test_onTestChannel(self) -> None:
        """
        A request built on twisted.web's test channel provides it too.
        """
        request = ProxyRequest(DummyChannel(), False)
        self.assertTrue(verifyObject(IProxyRequest, request))


class FormBodyTests(SynchronousTestCase):
    """
    A form in a POST body is the backend's: twisted.web does not parse it.
    """

    def test_malformedMultipartForwarded(self) -> None:
        """
        A buffered C{multipart/form-data} body that is not valid multipart
        reaches the backend as it is (twisted.web 24.7 would answer 400),
        and the request's C{args} hold only the query's.
        """
        proxy = Proxy()
        client, _ = proxy.client()
        body = b"not multipart at all"
        client.dataReceived(
            b"POST /form?a=1 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=zzz\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        [request] = client.requests
        self.assertEqual(request.args, {b"a": [b"1"]})
        _, transport = proxy.acceptBackend()
        self.assertTrue(transport.value().endswith(b"\r\n\r\n" + body))
