"""
Loopback tests of a proxy that keeps serving: backends that close kept-alive
connections, clients that leave mid-response, response heads over the limit
however they arrive. The pools' counters are checked at rest after each
test (L{LoopbackTestCase} does it in its tear-down).
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol

from tests.fixtures import LoopbackTestCase, asyncTest, sleep
from tests.loopback import LOCALHOST, RecordedRequest, Reply

#: A response head of about 117 KB, over the 64 KiB limit.
HUGE_HEADERS = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 100) for i in range(1000))

GET = b"GET /%d HTTP/1.1\r\nHost: example\r\n\r\n"


class SlotLeakTests(LoopbackTestCase):
    """
    A pool whose connections end in every possible way keeps all of its
    connection slots.
    """

    @asyncTest
    async def test_backendClosingReusedConnections(self) -> None:
        """
        A backend that says C{Connection: close} on every other response (as
        nginx does at its C{keepalive_requests}) does not wedge a pool of two
        connections: each request of a long keep-alive run is answered.
        """
        count = [0]

        def handler(request: RecordedRequest) -> Reply:
            count[0] += 1
            if count[0] % 2 == 0:
                return Reply(
                    body=b"closing",
                    headers=[(b"Connection", b"close")],
                    closeAfter=True,
                )
            return Reply(body=b"kept")

        backend = await self.startBackend(handler)
        port = await self.startProxy(
            backend.portNumber, maxConnections=2, pendingTimeout=1.0
        )
        client = await self.rawClient(port)
        for i in range(30):
            client.received = b""
            client.write(GET % (i,))
            data = await client.waitFor(
                lambda d: d.endswith(b"kept") or d.endswith(b"closing"), reactor, 5
            )
            self.assertTrue(data.startswith(b"HTTP/1.1 200 "), (i, data[:60]))
        self.assertEqual(len(backend.requests), 30)

    @asyncTest
    async def test_clientsLeavingMidResponse(self) -> None:
        """
        Clients that leave in the middle of large responses on reused
        backend connections give the slots back: the pool serves after.
        """
        backend = await self.startBackend(
            lambda request: (
                Reply(bigBody=4 << 20)
                if request.target == b"/big"
                else Reply(body=b"small")
            )
        )
        port = await self.startProxy(
            backend.portNumber, maxConnections=2, pendingTimeout=1.0
        )
        for _ in range(6):
            # A warm kept-alive connection, then a download abandoned on it.
            client = await self.rawClient(port)
            client.write(GET.replace(b"%d", b"warm"))
            await client.waitFor(lambda d: d.endswith(b"small"), reactor, 5)
            client.write(b"GET /big HTTP/1.1\r\nHost: example\r\n\r\n")
            await client.waitFor(lambda d: len(d) > 100_000, reactor, 5)
            client.transport.abortConnection()
        await sleep(0.1)
        _, responses = await self.rawExchange(port, GET.replace(b"%d", b"after"))
        self.assertEqual(responses[0].status, 200)
        self.assertEqual(responses[0].body, b"small")


class _TwoPieces(Protocol):
    """
    Answers every request with C{factory.response}, written in two pieces
    a moment apart: the first just under 64 KiB, so that the proxy sees the
    end of the head in the same read that takes it over the limit.
    """

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            response = self.factory.response  # type: ignore[attr-defined]
            self.transport.write(response[:60000])
            reactor.callLater(0.05, self.transport.write, response[60000:])


class ResponseHeadLimitTests(LoopbackTestCase):
    """
    The limit on a backend's response head holds however its bytes arrive.
    """

    async def startTwoPieceBackend(self, response: bytes) -> int:
        factory = Factory.forProtocol(_TwoPieces)
        factory.response = response  # type: ignore[attr-defined]
        listening = await TCP4ServerEndpoint(reactor, 0, interface=LOCALHOST).listen(
            factory
        )
        self.addCleanup(listening.stopListening)
        port: int = listening.getHost().port
        return port

    @asyncTest
    async def test_hugeHeadInOneRead(self) -> None:
        """
        120 KB of response headers whose end arrives in the read that
        crosses the limit get a 502, and none of them reach the client.
        """
        raw = b"HTTP/1.1 200 OK\r\n" + HUGE_HEADERS + b"Content-Length: 2\r\n\r\nok"
        backend = await self.startTwoPieceBackend(raw)
        port = await self.startProxy(backend, retries=0)
        client, responses = await self.rawExchange(port, GET % (1,))
        self.assertEqual(responses[0].status, 502)
        self.assertNotIn(b"x-filler-1", responses[0].headerNames())

    @asyncTest
    async def test_hugeTunnelHeadInOneRead(self) -> None:
        """
        The same limit holds for the response to an upgrade (a WebSocket
        handshake): 502.
        """
        raw = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\n" + HUGE_HEADERS + b"\r\n"
        )
        backend = await self.startTwoPieceBackend(raw)
        port = await self.startProxy(backend)
        client, responses = await self.rawExchange(
            port,
            b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        self.assertEqual(responses[0].status, 502)
        self.assertNotIn(b"x-filler-1", client.received.lower())
