"""
Tests for the client-facing defences of L{twisted_rproxy.server} and
L{twisted_rproxy.proxy}: C{TRACE} refused, C{Connection: close} in a list,
bare LFs and chunk sizes refused at once, the minimum request body rate, and
the access log line of a request whose client left.

The unit tests run a whole L{ProxyService} on a memory reactor (see
L{tests.memory.Proxy}); the loopback tests run it on 127.0.0.1 in
front of a L{RecordingBackend}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import RecordedRequest, Reply, parseResponses
from tests.memory import Proxy
from twisted_rproxy._twisted import MalformedChunkedDataError
from twisted_rproxy.config import Config, PoolConfig, RouteConfig, ServerConfig
from twisted_rproxy.hardening import MAX_CHUNK_SIZE, bodyRateDeadline
from twisted_rproxy.server.channel import RequestGuard
from twisted_rproxy.server.chunked import StrictChunkedDecoder
from twisted_rproxy.service import ProxyService

_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _head(length: int, target: bytes = b"/up") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (
        target,
        length,
    )


class TraceTests(SynchronousTestCase):
    """
    C{TRACE} is answered 405 unless the route allows it.
    """

    def test_traceRefused(self) -> None:
        """
        A C{TRACE} gets the proxy's 405 page with an C{Allow} header, and no
        backend connection is even attempted.
        """
        proxy = Proxy()
        client, transport = proxy.client()
        client.dataReceived(
            b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: session=secret\r\n\r\n"
        )
        response = transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 405 "), response)
        self.assertIn(
            b"\r\nAllow: GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH\r\n", response
        )
        self.assertNotIn(b"secret", response)
        self.assertEqual(proxy.reactor.tcpClients, [])
        self.assertFalse(transport.disconnecting)

    def test_traceAllowedByRoute(self) -> None:
        """
        A route with C{allowTrace} forwards C{TRACE}.
        """
        proxy = Proxy(routes=(RouteConfig(path="/", pool="app", allowTrace=True),))
        client, transport = proxy.client()
        client.dataReceived(b"TRACE /t HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, backendTransport = proxy.acceptBackend()
        self.assertTrue(backendTransport.value().startswith(b"TRACE /t HTTP/1.1\r\n"))
        protocol.dataReceived(_RESPONSE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))


class PersistenceTests(SynchronousTestCase):
    """
    A C{close} token anywhere in the C{Connection} headers closes the
    client connection after the response.
    """

    def exchange(self, connection: list[bytes]) -> tuple[bytes, bool]:
        proxy = Proxy()
        client, transport = proxy.client()
        headers = b"".join(b"Connection: " + value + b"\r\n" for value in connection)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(_RESPONSE)
        return transport.value(), transport.disconnecting

    def test_closeInList(self) -> None:
        """
        C{close} among other tokens, in any case and spacing, in any of
        several headers, closes the connection, and the response says so.
        """
        for connection in (
            [b"close, x-foo"],
            [b"x-foo,close"],
            [b"Keep-Alive ,  CLOSE"],
            [b"x-foo", b"Close"],
            [b"close"],
        ):
            response, closed = self.exchange(connection)
            self.assertTrue(closed, connection)
            self.assertIn(b"\r\nConnection: close\r\n", response, connection)

    def test_noCloseToken(self) -> None:
        """
        Without a C{close} token (C{closed} or C{x-close} are not one) the
        connection stays open.
        """
        for connection in ([], [b"keep-alive"], [b"closed, x-close"]):
            response, closed = self.exchange(connection)
            self.assertFalse(closed, connection)
            self.assertNotIn(b"Connection: close", response, connection)

    def test_http10Closes(self) -> None:
        """
        An HTTP/1.0 connection closes after its response, as before.
        """
        proxy = Proxy()
        client, transport = proxy.client()
        client.dataReceived(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(_RESPONSE)
        self.assertTrue(transport.disconnecting)


class StrictChunkedDecoderTests(SynchronousTestCase):
    """
    L{StrictChunkedDecoder} refuses bare LFs and oversized chunk sizes as
    soon as they arrive.
    """

    def decoder(self, maxBody: int | None = None) -> tuple[Any, list[bytes], list[int]]:
        received: list[bytes] = []
        tooLarge: list[int] = []
        decoder = StrictChunkedDecoder(
            received.append, received.append, lambda: tooLarge.append(1)
        )
        decoder.maxBody = maxBody
        return decoder, received, tooLarge

    def test_validBody(self) -> None:
        """
        A valid body, in pieces, with leading zeros, extensions and a
        trailer, is decoded.
        """
        decoder, received, _ = self.decoder(maxBody=10)
        for piece in (b"0003;a=b\r", b"\nabc\r\n", b"2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"):
            decoder.dataReceived(piece)
        self.assertEqual(received, [b"abc", b"de", b""])
        self.assertEqual(decoder.state, "FINISHED")

    def test_bareLF(self) -> None:
        """
        A chunk-size line, the end of a chunk or a trailer line ended by a
        bare LF is refused when the LF arrives.
        """
        for data in (b"5\n", b"5;x\n", b"\n", b"5\r\nhello\n", b"0\r\nX-T: 1\n"):
            decoder, _, _ = self.decoder()
            self.assertRaises(MalformedChunkedDataError, decoder.dataReceived, data)

    def test_overflow(self) -> None:
        """
        A chunk size past 63 bits is refused, even without a body limit.
        """
        decoder, _, _ = self.decoder()
        size = b"%x\r\n" % (MAX_CHUNK_SIZE + 1,)
        self.assertRaises(MalformedChunkedDataError, decoder.dataReceived, size)
        decoder, _, tooLarge = self.decoder()
        decoder.dataReceived(b"%x\r\n" % (MAX_CHUNK_SIZE,))
        self.assertEqual(tooLarge, [])

    def test_pastBodyLimit(self) -> None:
        """
        A chunk size that takes the body past its limit calls C{tooLarge}
        before any of that chunk arrives; the sizes add up.
        """
        decoder, received, tooLarge = self.decoder(maxBody=10)
        decoder.dataReceived(b"6\r\nabcdef\r\n")
        self.assertEqual(tooLarge, [])
        self.assertRaises(MalformedChunkedDataError, decoder.dataReceived, b"5\r\n")
        self.assertEqual((received, tooLarge), ([b"abcdef"], [1]))


class BareLFTests(SynchronousTestCase):
    """
    The channel refuses a head line ended by a bare LF at once.
    """

    def test_headRefusedAtOnce(self) -> None:
        """
        A request line or header ended by a bare LF gets 400 and the
        connection closes, without waiting for a CRLF.
        """
        for data in (
            b"GET / HTTP/1.1\n",
            b"GET / HTTP/1.1\r\nHost: x\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n\n",
        ):
            proxy = Proxy()
            client, transport = proxy.client()
            client.dataReceived(data)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), data)
            self.assertTrue(transport.disconnecting, data)
            self.assertEqual(proxy.reactor.tcpClients, [])

    def test_crlfSplitAcrossReads(self) -> None:
        """
        A CRLF split between two reads is not a bare LF.
        """
        proxy = Proxy()
        client, transport = proxy.client()
        for piece in (b"GET / HTTP/1.1\r", b"\nHost: x\r", b"\n\r", b"\n"):
            client.dataReceived(piece)
        self.assertFalse(transport.disconnecting)
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(_RESPONSE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_chunkSizePastLimitAtOnce(self) -> None:
        """
        A chunk size past the route's body limit gets 413 before any of the
        chunk arrives, and the connection closes.
        """
        proxy = Proxy(maxBodySize=100)
        client, transport = proxy.client()
        client.dataReceived(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(proxy.reactor.tcpClients, [])


class BodyRateDeadlineTests(SynchronousTestCase):
    """
    L{bodyRateDeadline} is when a body falls below its rate.
    """

    def test_deadline(self) -> None:
        """
        The body keeps its rate for C{received / rate} seconds, never less
        than the grace period.
        """
        self.assertEqual(bodyRateDeadline(100.0, 0, 240, 5.0), 105.0)
        self.assertEqual(bodyRateDeadline(100.0, 240, 240, 5.0), 105.0)
        self.assertEqual(bodyRateDeadline(100.0, 2400, 240, 5.0), 110.0)
        self.assertEqual(bodyRateDeadline(100.0, 10, 10, 0.0), 101.0)

    def test_guardOffWhenAllZero(self) -> None:
        """
        A L{RequestGuard} of zeros is false (no timer at all); any limit
        makes it true.
        """
        self.assertFalse(RequestGuard())
        self.assertFalse(RequestGuard(minBodyRateGrace=5.0))
        self.assertTrue(RequestGuard(minBodyRate=1))
        self.assertTrue(RequestGuard(bodyTimeout=1.0))


class MinBodyRateTests(SynchronousTestCase):
    """
    A request body slower on average than C{minBodyRate} after
    C{minBodyRateGrace} gets 408, with one timer per connection.
    """

    def assertRefused(self, transport: Any) -> None:
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(transport.disconnecting)

    def test_trickleRefused(self) -> None:
        """
        With the defaults (240 bytes/s after 5 s, a 30 s body timeout), a
        body trickling a byte every 4 seconds gets 408 when the grace
        period ends; nothing reaches a backend.
        """
        proxy = Proxy()
        client, transport = proxy.client()
        client.dataReceived(_head(1000) + b"x")
        proxy.reactor.advance(4)
        client.dataReceived(b"x")
        proxy.reactor.advance(0.9)
        self.assertEqual(transport.value(), b"")
        proxy.reactor.advance(0.1)
        self.assertRefused(transport)
        self.assertEqual(proxy.reactor.tcpClients, [])

    def test_burstThenStall(self) -> None:
        """
        The rate is an average since the body started: 2400 bytes at once
        buy 10 seconds at 240 bytes/s, then a stall gets 408 (before the
        body timeout).
        """
        proxy = Proxy()
        client, transport = proxy.client()
        client.dataReceived(_head(10000) + b"x" * 2400)
        proxy.reactor.advance(9.9)
        self.assertFalse(transport.disconnecting)
        proxy.reactor.advance(0.1)
        self.assertRefused(transport)

    def test_fastEnoughBodyAccepted(self) -> None:
        """
        A body arriving at 300 bytes/s is accepted, and the guard needs no
        more timers for it than for a body sent at once.
        """
        proxy = Proxy()
        client, transport = proxy.client()
        client.dataReceived(_head(3000))
        timers = len(proxy.reactor.getDelayedCalls())
        for _ in range(100):
            client.dataReceived(b"x" * 30)
            proxy.reactor.advance(0.1)
            self.assertLessEqual(len(proxy.reactor.getDelayedCalls()), timers)
        self.assertFalse(transport.disconnecting)
        protocol, backendTransport = proxy.acceptBackend()
        self.assertTrue(backendTransport.value().endswith(b"x" * 3000))
        protocol.dataReceived(_RESPONSE)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "))

    def test_zeroDisables(self) -> None:
        """
        With C{minBodyRate = 0}, only the body timeout limits a body: a
        byte every 4 seconds goes on for as long as the client likes.
        """
        proxy = Proxy(minBodyRate=0)
        client, transport = proxy.client()
        client.dataReceived(_head(1000))
        for _ in range(30):
            client.dataReceived(b"x")
            proxy.reactor.advance(4)
        self.assertFalse(transport.disconnecting)
        proxy.reactor.advance(30)
        self.assertRefused(transport)

    def test_configuredRateAndGrace(self) -> None:
        """
        The rate and the grace period are the configuration's.
        """
        proxy = Proxy(minBodyRate=1000, minBodyRateGrace=1.0, bodyTimeout=0.0)
        client, transport = proxy.client()
        client.dataReceived(_head(100000) + b"x" * 500)
        proxy.reactor.advance(0.99)
        self.assertFalse(transport.disconnecting)
        proxy.reactor.advance(0.01)
        self.assertRefused(transport)

    def test_pausedBodyNotCounted(self) -> None:
        """
        While a streamed body is paused because no backend takes it, its
        rate is not checked; once resumed it is measured afresh, with a
        new grace period.
        """
        proxy = Proxy(
            requestBuffering=False,
            minBodyRate=10000,
            minBodyRateGrace=1.0,
            bodyTimeout=0.0,
        )
        client, transport = proxy.client()
        client.dataReceived(_head(200000) + b"x" * 70000)
        self.assertEqual(transport.producerState, "paused")
        proxy.reactor.advance(20)
        self.assertFalse(transport.disconnecting)
        _, backendTransport = proxy.acceptBackend()
        self.assertEqual(transport.producerState, "producing")
        proxy.reactor.advance(0.9)
        self.assertFalse(transport.disconnecting)
        proxy.reactor.advance(0.1)
        # The backend request is under way: closing is all that is left,
        # and the backend request goes with the client connection.
        self.assertTrue(transport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backendTransport.disconnecting)


class AbandonedRequestLogTests(SynchronousTestCase):
    """
    A request whose client leaves before its response has an access log
    line.
    """

    def proxyWithLog(self, accessLogFormat: str = "combined") -> tuple[Proxy, str]:
        path = os.path.abspath(self.mktemp())
        proxy = Proxy(accessLog=path, accessLogFormat=accessLogFormat)
        site = proxy.service.site
        site.startFactory()
        self.addCleanup(site.stopFactory)
        return proxy, path

    def lines(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def test_clientGoneWhileBackendWorks(self) -> None:
        """
        The line has status 499 and the time the request took; the backend
        request is abandoned.
        """
        proxy, path = self.proxyWithLog()
        proxy.reactor.advance(1000)
        client, _ = proxy.client()
        client.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        _, backendTransport = proxy.acceptBackend()
        proxy.reactor.advance(2.5)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(backendTransport.disconnecting)
        [line] = self.lines(path)
        self.assertIn('"GET /slow HTTP/1.1" 499 - ', line)
        self.assertTrue(line.endswith(" 2.500 -"), line)

    def test_clientGoneMidResponse(self) -> None:
        """
        When the response had started, the line has its status and the
        bytes sent.
        """
        proxy, path = self.proxyWithLog("json")
        client, _ = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        [line] = self.lines(path)
        self.assertIn('"status":200,"bytes_sent":3,', line)

    def test_finishedRequestLoggedOnce(self) -> None:
        """
        A request answered before the connection closes has one line.
        """
        proxy, path = self.proxyWithLog()
        client, _ = proxy.client()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(_RESPONSE)
        client.connectionLost(Failure(ConnectionDone()))
        [line] = self.lines(path)
        self.assertIn('"GET / HTTP/1.1" 200 2 ', line)

    def test_clientGoneBeforeProcessing(self) -> None:
        """
        A request whose body was still arriving was never processed: no
        line (its client's timeout or refusal is not the proxy's business).
        """
        proxy, path = self.proxyWithLog()
        client, _ = proxy.client()
        client.dataReceived(_head(10) + b"abc")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.lines(path), [])


class ClientSideLoopbackTests(LoopbackTestCase):
    """
    The same, through the real proxy on 127.0.0.1.
    """

    async def startConfigured(
        self,
        backendPort: int,
        server: dict[str, Any] | None = None,
        route: dict[str, Any] | None = None,
    ) -> int:
        """
        Run a L{ProxyService} with C{server} settings and one route with
        C{route} settings, in front of the backend on C{backendPort}.

        @return: The port the proxy listens on.
        """
        config = Config(
            source="test",
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",), **(server or {})
            ),
            pools={
                "app": PoolConfig(name="app", servers=(backendServer(backendPort),))
            },
            routes=(RouteConfig(path="/", pool="app", **(route or {})),),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        port: int = listening[0].getHost().port
        return port

    @asyncTest
    async def test_traceRefused(self) -> None:
        """
        A C{TRACE} with cookies gets 405 with C{Allow}; the backend sees
        nothing. A route with C{allow_trace} forwards it.
        """
        backend = await self.startBackend()
        port = await self.startConfigured(backend.portNumber)
        request = b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: s=secret\r\n\r\n"
        _, [response] = await self.rawExchange(port, request, timeout=5)
        self.assertEqual(response.status, 405)
        self.assertEqual(
            response.header(b"allow"), [b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"]
        )
        self.assertNotIn(b"secret", response.raw)
        await sleep(0.05)
        self.assertEqual(backend.requests, [])
        self.assertEqual(backend.accepted, 0)

        allowing = await self.startConfigured(
            backend.portNumber, route={"allowTrace": True}
        )
        _, [response] = await self.rawExchange(allowing, request, timeout=5)
        self.assertEqual(response.status, 200)
        self.assertEqual([r.method for r in backend.requests], [b"TRACE"])

    @asyncTest
    async def test_clientIPHeadersStripped(self) -> None:
        """
        From a client that is not a trusted proxy, the backend gets none of
        the client-IP headers; from a trusted one, it gets them as sent.
        """
        backend = await self.startBackend()
        spoofed = (
            b"X-Real-IP: 10.0.0.1\r\nTrue-Client-IP: 10.0.0.2\r\n"
            b"X-Client-IP: 10.0.0.3\r\nCF-Connecting-IP: 10.0.0.4\r\n"
            b"Fastly-Client-IP: 10.0.0.5\r\nX-Cluster-Client-IP: 10.0.0.6\r\n"
            b"X-Other: kept\r\n"
        )
        request = b"GET / HTTP/1.1\r\nHost: x\r\n" + spoofed + b"\r\n"
        port = await self.startConfigured(backend.portNumber)
        _, [response] = await self.rawExchange(port, request, timeout=5)
        self.assertEqual(response.status, 200)
        [seen] = backend.requests
        self.assertEqual(
            {n for n in seen.headerNames() if n.endswith(b"-ip")}, set(), seen.headers
        )
        self.assertEqual(seen.header(b"x-other"), [b"kept"])
        self.assertEqual(seen.header(b"x-forwarded-for"), [b"127.0.0.1"])

        trusting = await self.startConfigured(
            backend.portNumber, server={"trustedProxies": ("127.0.0.1/32",)}
        )
        _, [response] = await self.rawExchange(trusting, request, timeout=5)
        self.assertEqual(response.status, 200)
        seen = backend.requests[1]
        self.assertEqual(seen.header(b"x-real-ip"), [b"10.0.0.1"])
        self.assertEqual(seen.header(b"true-client-ip"), [b"10.0.0.2"])

    @asyncTest
    async def test_connectionCloseInList(self) -> None:
        """
        C{Connection: close, x-foo} closes the connection after the
        response; a request pipelined after it is not served.
        """
        backend = await self.startBackend()
        port = await self.startConfigured(backend.portNumber)
        client = await self.rawClient(port)
        client.write(
            b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close, x-foo\r\n\r\n"
            b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        received = await client.waitFor(lambda data: False, reactor, 5)
        self.assertTrue(client.closed)
        responses, _ = parseResponses(received, closed=True)
        self.assertEqual([r.status for r in responses], [200])
        self.assertEqual(responses[0].header(b"connection"), [b"close"])
        self.assertEqual([r.target for r in backend.requests], [b"/a"])

    @asyncTest
    async def test_slowBodyRefused(self) -> None:
        """
        A body trickling below C{min_body_rate} gets 408 once the grace
        period is over, long before the body timeout, and the connection
        closes; nothing reaches the backend.
        """
        backend = await self.startBackend()
        port = await self.startConfigured(
            backend.portNumber, server={"minBodyRate": 1000, "minBodyRateGrace": 0.3}
        )
        client = await self.rawClient(port)
        client.write(_head(1000))
        for _ in range(20):
            if client.closed:
                break
            client.write(b"x")
            await sleep(0.05)
        received = await client.waitFor(lambda data: False, reactor, 3)
        self.assertTrue(client.closed)
        responses, _ = parseResponses(received, closed=True)
        self.assertEqual([r.status for r in responses], [408])
        self.assertEqual(backend.requests, [])

    @asyncTest
    async def test_abandonedRequestLogged(self) -> None:
        """
        A client that leaves while the backend works on its request leaves
        a 499 line, with the time spent, in the access log.
        """
        seen: list[RecordedRequest] = []

        def hang(request: RecordedRequest) -> Reply:
            seen.append(request)
            return Reply(hang=True)

        backend = await self.startBackend(hang)
        path = os.path.abspath(self.mktemp())
        port = await self.startConfigured(
            backend.portNumber, server={"accessLog": path}
        )
        client = await self.rawClient(port)
        client.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(100):
            if seen:
                break
            await sleep(0.01)
        await sleep(0.2)
        client.transport.loseConnection()
        lines: list[str] = []
        for _ in range(200):
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            if lines:
                break
            await sleep(0.01)
        [line] = lines
        self.assertIn('"GET /slow HTTP/1.1" 499 - ', line)
        elapsed = float(line.split()[-2])
        self.assertGreaterEqual(elapsed, 0.2)
        self.assertLess(elapsed, 5.0)
        # The abandoned backend request is closed too.
        lost: list[Deferred[None]] = [c.lost for c in backend.connections]
        for _ in range(200):
            if all(d.called for d in lost):
                break
            await sleep(0.01)
        self.assertTrue(all(d.called for d in lost))
