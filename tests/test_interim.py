"""
Tests for interim (1xx) responses from a backend: the backend connection
passes them on as they arrive (L{twisted_rproxy.pool.connection}), within
its caps; the proxy writes them to HTTP/1.1 clients and HTTP/2 streams
(L{twisted_rproxy.proxy}, L{twisted_rproxy.server.ProxyRequest.writeInterim})
and never to HTTP/1.0 ones; a cache stores only the final response.

Unit tests run on a memory reactor with string transports; loopback tests
run the real L{ProxyService} in front of a backend that writes its 103 raw,
with a raw socket client over HTTP/1.1 and an C{h2} client over TLS.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests import memory
from tests.fixtures import LoopbackTestCase, asyncTest, backendServer
from tests.loopback import LOCALHOST, finalCount, parseResponses
from tests.memory import Proxy, responsesOf
from tests.test_pool import OK, Harness, Recorder, get
from tests.test_tls import _clientContext, _Files, connectTLS
from twisted_rproxy.config import (
    CacheConfig,
    CertificateConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TLSConfig,
)
from twisted_rproxy.interfaces import IInterimReceiver, IResponseReceiver
from twisted_rproxy.pool import BackendProtocolError
from twisted_rproxy.pool.connection import (
    MAX_INTERIM_BYTES,
    MAX_INTERIM_FORWARDED,
    MAX_INTERIM_RESPONSES,
)
from twisted_rproxy.service import ProxyService

EARLY_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
    b"Link: </app.js>; rel=preload; as=script\r\n\r\n"
)

#: A 103 with hop-by-hop headers and one the proxy hides.
HOP_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
    b"Connection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n"
    b"Server: secret-backend\r\n\r\n"
)

FINAL = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    b"Cache-Control: max-age=60\r\n\r\nhello"
)


@implementer(IResponseReceiver, IInterimReceiver)
class InterimRecorder(Recorder):
    """
    Records what a pool reports of one exchange, interim responses and the
    order of events included.
    """

    def __init__(self) -> None:
        super().__init__()
        self.interims: list[tuple[int, bytes, list[tuple[bytes, bytes]]]] = []
        self.events: list[str] = []

    def interimResponse(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        self.interims.append((status, reason, headers))
        self.events.append("interim")

    def responseStarted(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        connection: Any,
    ) -> None:
        super().responseStarted(status, reason, headers, connection)
        self.events.append("final")


class ConnectionInterimTests(SynchronousTestCase):
    """
    The backend connection passes interim responses to a receiver that
    takes them, as they arrive, within its caps.
    """

    def exchange(self) -> tuple[Harness, InterimRecorder, Any, Any]:
        # No retry: a failed exchange is reported at once.
        h = Harness(self, retries=0)
        recorder = InterimRecorder()
        h.pool.submit(get(), recorder)
        protocol, transport = h.accept()
        return h, recorder, protocol, transport

    def test_receiverProvidesInterface(self) -> None:
        """
        The test receiver provides both interfaces, as the proxy's does.
        """
        self.assertTrue(verifyObject(IInterimReceiver, InterimRecorder()))

    def test_passedOnAsTheyArrive(self) -> None:
        """
        A 103 is passed on, with its status, reason and headers, as soon as
        its head is in, before the final response; a 102 too; the final
        response's headers are its own.
        """
        h, recorder, protocol, _ = self.exchange()
        protocol.dataReceived(b"HTTP/1.1 102 Processing\r\n\r\n")
        self.assertEqual(recorder.interims, [(102, b"Processing", [])])
        protocol.dataReceived(EARLY_HINTS[:30])
        self.assertEqual(len(recorder.interims), 1)
        protocol.dataReceived(EARLY_HINTS[30:])
        self.assertEqual(
            recorder.interims[1],
            (
                103,
                b"Early Hints",
                [
                    (b"Link", b"</style.css>; rel=preload; as=style"),
                    (b"Link", b"</app.js>; rel=preload; as=script"),
                ],
            ),
        )
        self.assertIsNone(recorder.status)
        protocol.dataReceived(OK)
        self.assertEqual(recorder.events, ["interim", "interim", "final"])
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))
        self.assertNotIn(b"link", [n.lower() for n, _ in recorder.headers])
        self.assertTrue(recorder.finished)
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_continueNotPassedOn(self) -> None:
        """
        A backend's C{100 Continue} is dropped (the proxy answers a client's
        C{Expect} itself); what follows is passed on.
        """
        _, recorder, protocol, _ = self.exchange()
        protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS + OK)
        self.assertEqual([s for s, _, _ in recorder.interims], [103])
        self.assertEqual(recorder.status, 200)

    def test_plainReceiverSkipsThem(self) -> None:
        """
        A receiver that does not provide L{IInterimReceiver} gets the final
        response only.
        """
        h = Harness(self)
        recorder = Recorder()
        h.pool.submit(get(), recorder)
        protocol, _ = h.accept()
        protocol.dataReceived(EARLY_HINTS + OK)
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))

    def test_countCapped(self) -> None:
        """
        Past L{MAX_INTERIM_FORWARDED} interim responses, the rest are read
        and dropped; the final response is passed on, the connection kept.
        """
        h, recorder, protocol, transport = self.exchange()
        protocol.dataReceived(EARLY_HINTS * (MAX_INTERIM_FORWARDED + 5) + OK)
        self.assertEqual(len(recorder.interims), MAX_INTERIM_FORWARDED)
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_capIsPerExchange(self) -> None:
        """
        The next exchange on a kept-alive connection starts its own count.
        """
        h, first, protocol, _ = self.exchange()
        protocol.dataReceived(EARLY_HINTS * MAX_INTERIM_FORWARDED + OK)
        second = InterimRecorder()
        h.pool.submit(get(), second)
        self.assertEqual(len(h.reactor.tcpClients), 1)
        protocol.dataReceived(EARLY_HINTS * 2 + OK)
        self.assertEqual(len(first.interims), MAX_INTERIM_FORWARDED)
        self.assertEqual(len(second.interims), 2)
        self.assertEqual(second.status, 200)

    def test_bytesCapped(self) -> None:
        """
        Interim heads past L{MAX_INTERIM_BYTES} in all are dropped, however
        few they are.
        """
        _, recorder, protocol, _ = self.exchange()
        big = b"x" * (MAX_INTERIM_BYTES // 2 - 100)
        hint = b"HTTP/1.1 103 Early Hints\r\nLink: <" + big + b">\r\n\r\n"
        protocol.dataReceived(hint * 3 + OK)
        self.assertEqual(len(recorder.interims), 2)
        self.assertEqual(recorder.status, 200)

    def test_floodFails(self) -> None:
        """
        More than L{MAX_INTERIM_RESPONSES} interim responses for one request,
        in one read or many, fail it as a protocol error (a 502) and close
        the connection; nothing more is passed on.
        """
        for pieces in (1, MAX_INTERIM_RESPONSES + 1):
            h, recorder, protocol, transport = self.exchange()
            flood = b"HTTP/1.1 102 Processing\r\n\r\n" * (MAX_INTERIM_RESPONSES + 1)
            size = len(flood) // pieces
            for start in range(0, len(flood), size):
                protocol.dataReceived(flood[start : start + size])
            protocol.dataReceived(OK)
            self.assertIsInstance(recorder.failure, BackendProtocolError)
            assert isinstance(recorder.failure, BackendProtocolError)
            self.assertEqual(recorder.failure.status, 502)
            self.assertIsNone(recorder.status)
            self.assertEqual(len(recorder.interims), MAX_INTERIM_FORWARDED)
            self.assertTrue(transport.disconnecting or transport.disconnected)
            self.assertEqual(h.pool.servers[0].idle, [])


class _Client:
    """
    A memory client of a memory L{Proxy}, closed at the test's end.
    """

    def __init__(self, case: SynchronousTestCase, proxy: Proxy) -> None:
        self.protocol, self.transport = proxy.client()
        case.addCleanup(self.protocol.connectionLost, Failure(ConnectionDone()))


class ProxyInterimTests(SynchronousTestCase):
    """
    The whole proxy on a memory reactor writes interim responses to its
    HTTP/1.1 clients as they arrive.
    """

    def test_http11(self) -> None:
        """
        An HTTP/1.1 client gets the 103 at once, before the backend sent
        its final response, then the final response, without the hints'
        headers.
        """
        proxy = Proxy()
        client = _Client(self, proxy)
        client.protocol.dataReceived(b"GET /page HTTP/1.1\r\nHost: example.com\r\n\r\n")
        backend, _ = proxy.acceptBackend()
        backend.dataReceived(EARLY_HINTS)
        self.assertEqual(
            client.transport.value(),
            b"HTTP/1.1 103 Early Hints\r\n"
            b"Link: </style.css>; rel=preload; as=style\r\n"
            b"Link: </app.js>; rel=preload; as=script\r\n\r\n",
        )
        backend.dataReceived(FINAL)
        hints, final = responsesOf(client.transport)
        self.assertEqual((hints.status, final.status), (103, 200))
        self.assertEqual(final.body, b"hello")
        self.assertEqual(final.header(b"link"), [])

    def test_hopByHopRemoved(self) -> None:
        """
        The interim response's hop-by-hop headers, those its C{Connection}
        names and the proxy's hidden ones are not passed on.
        """
        proxy = Proxy()
        client = _Client(self, proxy)
        client.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        backend, _ = proxy.acceptBackend()
        backend.dataReceived(HOP_HINTS + FINAL)
        hints, final = responsesOf(client.transport)
        self.assertEqual(hints.headers, [(b"Link", b"</a.css>; rel=preload")])
        self.assertEqual(final.status, 200)

    def test_processingAndUnknown(self) -> None:
        """
        A 102 and an unregistered 1xx are passed on too, in order, with a
        reason phrase when the backend gave none.
        """
        proxy = Proxy()
        client = _Client(self, proxy)
        client.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        backend, _ = proxy.acceptBackend()
        backend.dataReceived(
            b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 150\r\nX-A: 1\r\n\r\n" + FINAL
        )
        data = client.transport.value()
        self.assertTrue(
            data.startswith(
                b"HTTP/1.1 102 Processing\r\n\r\n"
                b"HTTP/1.1 150 Informational\r\nX-A: 1\r\n\r\nHTTP/1.1 200 OK\r\n"
            ),
            data,
        )

    def test_http10Dropped(self) -> None:
        """
        An HTTP/1.0 client never gets an interim response (RFC 9110
        section 15.2), only the final one.
        """
        proxy = Proxy()
        client = _Client(self, proxy)
        client.protocol.dataReceived(b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n")
        backend, _ = proxy.acceptBackend()
        backend.dataReceived(EARLY_HINTS + b"HTTP/1.1 102 Processing\r\n\r\n")
        self.assertEqual(client.transport.value(), b"")
        backend.dataReceived(FINAL)
        [final] = responsesOf(client.transport)
        self.assertEqual((final.version, final.status), (b"HTTP/1.0", 200))

    def test_continueOnce(self) -> None:
        """
        A client sending C{Expect: 100-continue} gets the proxy's own
        C{100 Continue} once; the backend's is not passed on.
        """
        proxy = Proxy()
        client = _Client(self, proxy)
        client.protocol.dataReceived(
            b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 2\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        client.protocol.dataReceived(b"hi")
        backend, _ = proxy.acceptBackend()
        backend.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + FINAL)
        data = client.transport.value()
        self.assertEqual(data.count(b"100 Continue"), 1, data)
        self.assertEqual([r.status for r in responsesOf(client.transport)], [100, 200])

    def test_floodAnswered502(self) -> None:
        """
        A backend flooding interim responses gets the client a 502 after
        at most L{MAX_INTERIM_FORWARDED} of them.
        """
        # No retry: the failed exchange is answered at once.
        servers = (memory.backend(8001),)
        proxy = Proxy(pools={"app": PoolConfig(name="app", servers=servers, retries=0)})
        client = _Client(self, proxy)
        client.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        server, _ = proxy.acceptBackend()
        server.dataReceived(EARLY_HINTS * (MAX_INTERIM_RESPONSES + 1))
        responses = responsesOf(client.transport)
        self.assertEqual(
            [r.status for r in responses], [103] * MAX_INTERIM_FORWARDED + [502]
        )

    def test_cacheStoresFinalOnly(self) -> None:
        """
        On a cached route, the miss gets the 103 and the final response; the
        hit that follows is the final response alone, without the hints'
        headers, and the backend is asked once.
        """
        proxy = Proxy(
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={"main": CacheConfig(name="main")},
        )
        first = _Client(self, proxy)
        first.protocol.dataReceived(b"GET /c HTTP/1.1\r\nHost: example.com\r\n\r\n")
        backend, backendTransport = proxy.acceptBackend()
        backend.dataReceived(EARLY_HINTS + FINAL)
        self.assertEqual([r.status for r in responsesOf(first.transport)], [103, 200])
        second = _Client(self, proxy)
        second.protocol.dataReceived(b"GET /c HTTP/1.1\r\nHost: example.com\r\n\r\n")
        [hit] = responsesOf(second.transport)
        self.assertEqual((hit.status, hit.body), (200, b"hello"))
        self.assertEqual(hit.header(b"link"), [])
        self.assertEqual(backendTransport.value().count(b"GET /c "), 1)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)


# --- loopback ----------------------------------------------------------------


class _HintsProtocol(Protocol):
    """
    A backend connection that answers each request with the factory's raw
    interim bytes at once, then its final response, at once or when the
    test releases it.
    """

    # A TCP transport (abortConnection included).
    transport: Any

    def __init__(self, factory: HintsBackend) -> None:
        self.factory = factory
        self.buffer = b""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.factory.requests.append(head)
            self.transport.write(self.factory.interim)
            if self.factory.hold:
                self.factory.held.append(self)
            else:
                self.transport.write(self.factory.final)

    def release(self) -> None:
        if self.transport is not None:
            self.transport.write(self.factory.final)


class HintsBackend(Factory):
    """
    A raw backend on 127.0.0.1 that writes interim responses before its
    final ones.

    @ivar hold: Whether the final response waits for L{release}.
    """

    def __init__(self, interim: bytes, final: bytes = FINAL, hold: bool = False):
        self.interim = interim
        self.final = final
        self.hold = hold
        self.held: list[_HintsProtocol] = []
        self.requests: list[bytes] = []
        self.connections: list[_HintsProtocol] = []
        self.port: Any = None

    def buildProtocol(self, addr: object) -> _HintsProtocol:
        return _HintsProtocol(self)

    def release(self) -> None:
        """
        Send the final response of every request held.
        """
        held, self.held = self.held, []
        for protocol in held:
            protocol.release()

    async def start(self, case: LoopbackTestCase) -> int:
        self.port = await TCP4ServerEndpoint(reactor, 0, interface=LOCALHOST).listen(
            self
        )
        case.addCleanup(self.stop)
        return int(self.port.getHost().port)

    def stop(self) -> Deferred[None] | None:
        for connection in self.connections:
            if connection.transport is not None:
                connection.transport.abortConnection()
        if self.port is not None:
            port, self.port = self.port, None
            stopped: Deferred[None] = port.stopListening()
            return stopped
        return None


def _config(backendPort: int, cached: bool = False, **extra: Any) -> Config:
    return Config(
        source="test",
        server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
        pools={
            "app": PoolConfig(
                name="app", servers=(backendServer(backendPort),), retries=0
            )
        },
        routes=(RouteConfig(path="/", pool="app", cache="main" if cached else None),),
        caches={"main": CacheConfig(name="main")} if cached else {},
        **extra,
    )


class InterimLoopbackTests(LoopbackTestCase):
    """
    The real proxy on 127.0.0.1 passes a raw backend's interim responses to
    real clients over HTTP/1.1 and HTTP/2.
    """

    async def startService(self, config: Config) -> list[int]:
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        return [p.getHost().port for p in await service.whenListening()]

    @asyncTest
    async def test_http11BeforeFinal(self) -> None:
        """
        A raw HTTP/1.1 client reads the 103 while the backend still holds
        its final response, then the 200, over one kept-alive connection.
        """
        backend = HintsBackend(HOP_HINTS, hold=True)
        [port] = await self.startService(_config(await backend.start(self)))
        client = await self.rawClient(port)
        client.write(b"GET /page HTTP/1.1\r\nHost: example.com\r\n\r\n")
        received = await client.waitFor(lambda d: b"\r\n\r\n" in d, reactor)
        self.assertEqual(
            received,
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
        )
        self.assertEqual(len(backend.held), 1)
        backend.release()
        received = await client.waitFor(finalCount(1), reactor)
        responses, rest = parseResponses(received)
        self.assertEqual([r.status for r in responses], [103, 200])
        self.assertEqual((responses[1].body, rest), (b"hello", b""))
        self.assertEqual(responses[1].header(b"link"), [])
        self.assertFalse(client.closed)

    @asyncTest
    async def test_http11ProcessingThenHints(self) -> None:
        """
        A 102 then a 103 reach the client in order, before the 200.
        """
        backend = HintsBackend(b"HTTP/1.1 102 Processing\r\n\r\n" + EARLY_HINTS)
        [port] = await self.startService(_config(await backend.start(self)))
        _, responses = await self.rawExchange(
            port, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual([r.status for r in responses], [102, 103, 200])
        self.assertEqual(len(responses[1].header(b"link")), 2)

    @asyncTest
    async def test_http10Client(self) -> None:
        """
        An HTTP/1.0 client gets the final response only.
        """
        backend = HintsBackend(EARLY_HINTS)
        [port] = await self.startService(_config(await backend.start(self)))
        client, responses = await self.rawExchange(
            port, b"GET / HTTP/1.0\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual(
            [(r.version, r.status) for r in responses], [(b"HTTP/1.0", 200)]
        )
        self.assertNotIn(b" 103 ", client.received)

    @asyncTest
    async def test_cachedRouteStoresFinalOnly(self) -> None:
        """
        Through a cached route, the miss gets the 103 and the 200; the hit
        is the stored 200 alone, the backend asked once.
        """
        backend = HintsBackend(EARLY_HINTS)
        [port] = await self.startService(
            _config(await backend.start(self), cached=True)
        )
        request = b"GET /cached HTTP/1.1\r\nHost: example.com\r\n\r\n"
        _, miss = await self.rawExchange(port, request)
        self.assertEqual([r.status for r in miss], [103, 200])
        client, hit = await self.rawExchange(port, request)
        self.assertEqual([(r.status, r.body) for r in hit], [(200, b"hello")])
        self.assertEqual(hit[0].header(b"link"), [])
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_http2(self) -> None:
        """
        Over TLS with C{http2 = true}, an C{h2} client gets the 103 as an
        informational HEADERS frame that does not end the stream, while the
        backend holds its final response; then the 200 and its body on the
        same stream, without the hints' headers.
        """
        files = _Files(self)
        certificate = files.leaf("site.pem", "example.com")
        backend = HintsBackend(HOP_HINTS, hold=True)
        backendPort = await backend.start(self)
        tls = TLSConfig(
            listen=("tcp:0:interface=127.0.0.1",),
            certificates=(CertificateConfig(certificate, certificate),),
            http2=True,
        )
        [_, port] = await self.startService(_config(backendPort, tls=(tls,)))

        def exchange() -> list[tuple[str, Any]]:
            context = _clientContext(files.caPath, alpn=["h2", "http/1.1"])
            with connectTLS(port, "example.com", context) as sock:
                assert sock.selected_alpn_protocol() == "h2"
                return _h2Get(sock, backend.release)

        events = await deferToThread(exchange)
        kinds = [kind for kind, _ in events]
        self.assertEqual(kinds, ["interim", "released", "final", "data", "end"])
        interim = dict(events[0][1])
        self.assertEqual(interim[b":status"], b"103")
        self.assertEqual(interim[b"link"], b"</a.css>; rel=preload")
        for hidden in (b"connection", b"x-hop", b"keep-alive", b"server"):
            self.assertNotIn(hidden, interim)
        final = dict(events[2][1])
        self.assertEqual(final[b":status"], b"200")
        self.assertNotIn(b"link", final)
        self.assertEqual(events[3][1], b"hello")


def _h2Get(sock: Any, release: Any) -> list[tuple[str, Any]]:
    """
    One HTTP/2 GET on an open TLS socket (blocking, for a thread): the
    events of its stream, in order; once the interim head is in, C{release}
    runs in the reactor thread (recorded as C{"released"}).
    """
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True)
    )
    connection.initiate_connection()
    streamID = connection.get_next_available_stream_id()
    connection.send_headers(
        streamID,
        [
            (":method", "GET"),
            (":path", "/page"),
            (":scheme", "https"),
            (":authority", "example.com"),
        ],
        end_stream=True,
    )
    sock.sendall(connection.data_to_send())
    events: list[tuple[str, Any]] = []
    body = b""
    for _ in range(1000):
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"connection closed: {events!r}")
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.InformationalResponseReceived):
                events.append(
                    ("interim", [(bytes(n), bytes(v)) for n, v in event.headers or ()])
                )
                reactor.callFromThread(release)  # type: ignore[attr-defined]
                events.append(("released", None))
            elif isinstance(event, h2.events.ResponseReceived):
                events.append(
                    ("final", [(bytes(n), bytes(v)) for n, v in event.headers or ()])
                )
            elif isinstance(event, h2.events.DataReceived):
                body += event.data or b""
                connection.acknowledge_received_data(
                    event.flow_controlled_length or 0, streamID
                )
            elif isinstance(event, h2.events.StreamEnded):
                events += [("data", body), ("end", None)]
                return events
            elif isinstance(event, h2.events.StreamReset):
                raise AssertionError(f"stream reset: {events!r}")
        pending = connection.data_to_send()
        if pending:
            sock.sendall(pending)
    raise AssertionError("no end of stream")
