"""
Bodies stream over HTTP/2 as over HTTP/1.1, with backpressure both ways
(issue #15), and cleartext HTTP/2 with prior knowledge (C{h2c = true}).

The real L{ProxyService} with a C{[[tls]]} listener (C{http2 = true}) on
127.0.0.1, in front of backends written here as plain protocols so that
they can stop reading, or count what they could write.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
from hyperframe.frame import WindowUpdateFrame
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests.fixtures import asyncTest, backendServer, sleep
from tests.h2client import (
    SERVER_NAME,
    WAIT,
    H2Request,
    connectTLS,
    h2Exchange,
    inThread,
)
from tests.h2frames import RawH2, RawH2Case
from tests.loopback import LOCALHOST
from twisted_rproxy.config import RouteConfig, parseConfig
from twisted_rproxy.service import makeService

MIB = 1 << 20

#: The upload of the streaming tests.
UPLOAD = 20 * MIB

#: The upload of the slow-backend test: more than the socket buffers between
#: the proxy and a backend that stopped reading can hold.
SLOW_UPLOAD = 32 * MIB

#: The download of the slow-client test.
DOWNLOAD = 48 * MIB


class _Sink(Protocol):
    """
    A backend connection that reads a request, noting when the first body
    byte arrives, and answers C{200 ok} once C{Content-Length} bytes (or
    the last chunk) are in.  With C{factory.paused}, it stops reading once
    the head is in, until the test resumes it.
    """

    def __init__(self, factory: _SinkFactory) -> None:
        self.factory = factory
        self.head = b""
        self.length: int | None = None
        self.body = 0
        self.tail = b""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        if self.length is None and b"\r\n\r\n" not in self.head:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.head, _, data = self.head.partition(b"\r\n\r\n")
            for line in self.head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.length = int(value)
            if self.factory.paused:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
        if data and self.factory.firstBodyAt is None:
            self.factory.firstBodyAt = time.monotonic()
        self.body += len(data)
        self.factory.received += len(data)
        self.tail = (self.tail + data)[-5:]
        if (self.length is not None and self.body >= self.length) or (
            self.length is None and self.tail == b"0\r\n\r\n"
        ):
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )


class _SinkFactory(Factory):
    def __init__(self, paused: bool = False) -> None:
        self.paused = paused
        self.connections: list[_Sink] = []
        self.firstBodyAt: float | None = None
        self.received = 0

    def buildProtocol(self, addr: object) -> _Sink:
        return _Sink(self)

    def resume(self) -> None:
        for connection in self.connections:
            connection.transport.resumeProducing()  # type: ignore[attr-defined]


@implementer(IPullProducer)
class _CountingProducer:
    """
    Writes C{size} bytes as fast as the transport takes them, counting.
    """

    def __init__(self, transport: Any, size: int) -> None:
        self.transport = transport
        self.left = size
        self.written = 0

    def resumeProducing(self) -> None:
        if self.left <= 0:
            return
        data = b"d" * min(self.left, 65536)
        self.left -= len(data)
        self.written += len(data)
        self.transport.write(data)
        if self.left <= 0:
            self.transport.unregisterProducer()

    def stopProducing(self) -> None:
        self.left = 0


class _Source(Protocol):
    """
    A backend connection that answers any request with C{DOWNLOAD} bytes,
    written only as fast as the proxy reads them.
    """

    producer: _CountingProducer | None = None

    def __init__(self, factory: _SourceFactory) -> None:
        self.factory = factory
        self.head = b""

    def dataReceived(self, data: bytes) -> None:
        self.head += data
        if self.producer is None and b"\r\n\r\n" in self.head:
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (DOWNLOAD,)
            )
            self.producer = _CountingProducer(self.transport, DOWNLOAD)
            self.factory.producers.append(self.producer)
            self.transport.registerProducer(self.producer, False)  # type: ignore[attr-defined]


class _SourceFactory(Factory):
    def __init__(self) -> None:
        self.producers: list[_CountingProducer] = []
        self.connections: list[_Source] = []

    def buildProtocol(self, addr: object) -> _Source:
        source = _Source(self)
        self.connections.append(source)
        return source


class StreamingCase(RawH2Case):
    """
    Starts the plain-protocol backends of this module, and the proxy with
    streamed request bodies.
    """

    async def listenBackend(self, factory: Factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface=LOCALHOST).listen(factory)
        self.addCleanup(port.stopListening)

        def closeAll() -> None:
            for connection in getattr(factory, "connections", []):
                if connection.transport is not None:
                    connection.transport.abortConnection()

        self.addCleanup(closeAll)
        number: int = port.getHost().port
        return number

    async def startStreamingProxy(self, backendPort: int) -> int:
        route = RouteConfig(path="/", pool="app", requestBuffering=False)
        return await self.startH2Proxy(
            backendPort, server={"maxBodySize": 256 * MIB}, routes=[route]
        )


class UploadTests(StreamingCase):
    """
    Request bodies over HTTP/2 stream to the backend, with backpressure.
    """

    @asyncTest
    async def test_uploadStreams(self) -> None:
        """
        A 20 MiB upload (C{request_buffering = false}) reaches the backend
        while the client is still sending it: the backend sees its first
        bytes before the client sent its last; the whole of it arrives.
        """
        sink = _SinkFactory()
        port = await self.startStreamingProxy(await self.listenBackend(sink))
        [response] = await self.exchange(
            port,
            H2Request(
                "/upload", "POST", [("content-length", str(UPLOAD))], b"u" * UPLOAD
            ),
            timeout=60,
        )
        self.assertEqual((response.status, response.body), (200, b"ok"))
        self.assertEqual(sink.received, UPLOAD)
        assert sink.firstBodyAt is not None and response.bodySentAt is not None
        self.assertLess(sink.firstBodyAt, response.bodySentAt)

    @asyncTest
    async def test_slowBackendClosesWindow(self) -> None:
        """
        A backend that stops reading stops the client: its send window stays
        at 0 with much of a 32 MiB upload unsent; once the backend reads
        again the rest flows and the request completes.
        """
        sink = _SinkFactory(paused=True)
        port = await self.startStreamingProxy(await self.listenBackend(sink))
        tls = await inThread(connectTLS, port, self.files.caPath)
        self.addCleanup(tls.close)
        connection = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        connection.initiate_connection()
        headers = [
            (":method", "POST"),
            (":path", "/upload"),
            (":scheme", "https"),
            (":authority", SERVER_NAME),
            ("content-length", str(SLOW_UPLOAD)),
        ]
        connection.send_headers(1, headers)
        progress = {"sent": 0, "status": 0}

        def pump(stall: float, untilResponse: bool) -> tuple[int, int]:
            """
            Send as the windows allow, reading what comes, until nothing
            could be sent for C{stall} seconds (or, with C{untilResponse},
            until the response head arrives); the bytes sent and the
            stream's window then.
            """
            last = time.monotonic()
            deadline = last + 60
            tls.settimeout(0.05)
            while time.monotonic() < deadline:
                if untilResponse and progress["status"]:
                    break
                window = connection.local_flow_control_window(1)
                size = min(
                    window,
                    connection.max_outbound_frame_size,
                    SLOW_UPLOAD - progress["sent"],
                )
                if size > 0:
                    final = progress["sent"] + size == SLOW_UPLOAD
                    connection.send_data(1, b"u" * size, end_stream=final)
                    progress["sent"] += size
                    last = time.monotonic()
                elif time.monotonic() - last > stall:
                    break
                tls.sendall(connection.data_to_send())
                # Block only when there is nothing to send.
                wait = 0.0 if size > 0 else 0.05
                if not tls.pending() and not select.select([tls], [], [], wait)[0]:
                    continue
                try:
                    data = tls.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                if not data:
                    raise AssertionError("the proxy closed the connection")
                for event in connection.receive_data(data):
                    if isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream reset: {event}")
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = dict(event.headers or ())
                        progress["status"] = int(headers[b":status"])
                tls.sendall(connection.data_to_send())
            return progress["sent"], connection.local_flow_control_window(1)

        sent, window = await inThread(pump, 1.0, False)
        self.assertLess(sent, SLOW_UPLOAD * 3 // 4, "the client was never held back")
        self.assertEqual(window, 0)
        self.assertEqual(progress["status"], 0)
        reactor.callLater(0, sink.resume)
        await inThread(pump, 30.0, True)
        self.assertEqual(progress["status"], 200)
        self.assertEqual(progress["sent"], SLOW_UPLOAD)
        self.assertEqual(sink.received, SLOW_UPLOAD)


class DownloadTests(StreamingCase):
    """
    A slow HTTP/2 client holds the backend back, as an HTTP/1.1 one does.
    """

    @asyncTest
    async def test_slowClientPausesBackend(self) -> None:
        """
        A client that never opens its window past the initial 64 KiB: the
        proxy stops reading the backend, which could write far less than the
        48 MiB it offers; once the client opens its windows, all of it
        arrives.
        """
        source = _SourceFactory()
        port = await self.startStreamingProxy(await self.listenBackend(source))

        def start() -> RawH2:
            connection = self.raw(port)
            connection.handshake()
            connection.request(1, "/download")
            return connection

        connection: RawH2 = await inThread(start)
        self.addCleanup(connection.close)
        written = -1
        for _ in range(100):
            await sleep(0.1)
            now = sum(p.written for p in source.producers)
            if now == written and now > 0:
                break
            written = now
        self.assertTrue(source.producers, "the request never reached the backend")
        self.assertLess(written, DOWNLOAD // 2, "the backend was never held back")

        def drain() -> int:
            connection.sendFrames(
                WindowUpdateFrame(0, window_increment=2**31 - 1 - 65535),
                WindowUpdateFrame(1, window_increment=2**31 - 1 - 65535),
            )
            connection.untilEnded(1, timeout=60)
            return len(connection.data.get(1, b""))

        self.assertEqual(await inThread(drain), DOWNLOAD)
        self.assertEqual(connection.status(1), 200)


class CleartextTests(RawH2Case):
    """
    C{h2c = true} on C{[server]}: HTTP/2 with prior knowledge on a plain
    listener, beside HTTP/1.1.
    """

    async def startCleartext(self) -> int:
        backend = await self.startBackend()
        config = parseConfig(
            {
                "server": {"listen": [f"tcp:0:interface={LOCALHOST}"], "h2c": True},
                "pools": {"app": {"servers": [backendServer(backend.portNumber).url]}},
                "routes": [{"path": "/", "pool": "app"}],
            },
            "test.toml",
            "/",
        )
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port: int = (await service.whenListening())[0].getHost().port
        return port

    @asyncTest
    async def test_priorKnowledge(self) -> None:
        """
        A plain connection that starts with the HTTP/2 preface speaks
        HTTP/2: two requests on it are answered on their streams.
        """
        port = await self.startCleartext()

        def exchange() -> list[Any]:
            sock = socket.create_connection((LOCALHOST, port), timeout=WAIT)
            with sock:
                return h2Exchange(
                    port,
                    "",
                    [
                        H2Request("/one", authority="example.com", scheme="http"),
                        H2Request("/two", authority="example.com", scheme="http"),
                    ],
                    sock=sock,
                )

        one, two = await inThread(exchange)
        self.assertEqual((one.status, one.body), (200, b"/one"))
        self.assertEqual((two.status, two.body), (200, b"/two"))

    @asyncTest
    async def test_http1Still(self) -> None:
        """
        The same listener still answers HTTP/1.1.
        """
        port = await self.startCleartext()
        _, [response] = await self.rawExchange(
            port, b"GET /plain HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual((response.status, response.body), (200, b"/plain"))
