"""
Tests for L{twisted_rproxy.h2}: the proxy's HTTP/2 server protocol, driven
by an C{h2} client (and raw frames, built with hyperframe) over string
transports and a memory clock.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)
from twisted.internet.interfaces import IPushProducer, ISSLTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import directlyProvides, implementer

from twisted_rproxy.config import ServerConfig
from twisted_rproxy.h2 import H2Limits, H2ServerConnection
from twisted_rproxy.h2.frames import PREFACE, FrameError, FrameScanner
from twisted_rproxy.h2.limits import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FRAME_SIZE_ERROR,
    HEADERS,
    NO_ERROR,
    PING,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    SETTINGS,
    FloodCounter,
)
from twisted_rproxy.server import ProxySite

_GET = [
    (b":method", b"GET"),
    (b":path", b"/hello"),
    (b":scheme", b"https"),
    (b":authority", b"example.com"),
]


def _post(path: bytes = b"/echo", length: int | None = None) -> list[Any]:
    headers = [
        (b":method", b"POST"),
        (b":path", path),
        (b":scheme", b"https"),
        (b":authority", b"example.com"),
    ]
    if length is not None:
        headers.append((b"content-length", b"%d" % (length,)))
    return headers


class _CountingTransport(StringTransport):
    """
    A string transport that counts its writes.
    """

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        StringTransport.write(self, data)


@implementer(IPushProducer)
class _Producer:
    paused = False
    stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


class _App(Resource):
    """
    The resources the tests ask for.
    """

    isLeaf = True

    def __init__(self, clock: MemoryReactorClock) -> None:
        Resource.__init__(self)
        self.clock = clock
        self.requests: list[Any] = []
        self.producer = _Producer()
        self.bodies: list[bytes] = []

    def render(self, request: Any) -> Any:
        self.requests.append(request)
        path = request.path
        if path == b"/later":
            # A backend's answer, a reactor turn later.
            def answer() -> None:
                request.setHeader(b"content-type", b"text/plain")
                request.write(b"late")
                request.finish()

            self.clock.callLater(1, answer)
            return NOT_DONE_YET
        if path == b"/small":
            for _ in range(10):
                request.write(b"x" * 10)
            request.finish()
            return NOT_DONE_YET
        if path == b"/big":
            request.registerProducer(self.producer, True)
            request.write(b"b" * 100000)
            return NOT_DONE_YET
        if path == b"/hold":
            return NOT_DONE_YET
        if path == b"/stream":
            stream = request.bodyStream
            stream.startStreaming(self.bodies.append, lambda: request.finish())
            return NOT_DONE_YET
        if path == b"/interim":
            request.writeInterim(103, b"Early Hints", [(b"Link", b"</a>")])
            return b"final"
        if path == b"/echo":
            return request.content.read()
        if path == b"/hsts":
            request.setHeader(b"strict-transport-security", b"max-age=5")
            request.setHeader(b"server", b"app")
            return b"hsts"
        return b"hello " + path


class _Harness:
    """
    One connection of a L{ProxySite}'s HTTP/2 protocol, and an C{h2}
    client on the other end.
    """

    def __init__(
        self,
        test: SynchronousTestCase,
        limits: H2Limits | None = None,
        streaming: bool = False,
        **config: Any,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.app = _App(self.clock)
        self.site = ProxySite(
            self.app,
            ServerConfig(**config),
            self.clock,  # type: ignore[arg-type]
            (lambda request: (1000000, not streaming)),
        )
        if limits is not None:
            self.site.h2Limits = limits
        self.server: H2ServerConnection = self.site.buildHTTP2()
        self.transport = _CountingTransport()
        self.server.makeConnection(self.transport)
        test.addCleanup(self.close)
        self.client = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.client.initiate_connection()
        self.events: list[Any] = []

    def close(self) -> None:
        if not self.server._closed:
            self.server.connectionLost()

    def send(self, data: bytes | None = None) -> list[Any]:
        """
        Send what the client queued (or C{data}), run the reactor's
        pending calls, and read what the server answered.
        """
        if data is None:
            data = self.client.data_to_send()
        self.server.dataReceived(data)
        return self.read()

    def read(self) -> list[Any]:
        self.clock.advance(0)
        data = self.transport.value()
        self.transport.clear()
        if not data:
            return []
        events = self.client.receive_data(data)
        self.events += events
        pending = self.client.data_to_send()
        if pending and not self.transport.disconnecting:
            self.server.dataReceived(pending)
            self.clock.advance(0)
        return events

    def rawFrames(self) -> list[Frame]:
        """
        The frames the server wrote, read raw.
        """
        data = self.transport.value()
        self.transport.clear()
        frames = []
        while len(data) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(data[:9]))
            frame.parse_body(memoryview(data[9 : 9 + length]))
            frames.append(frame)
            data = data[9 + length :]
        return frames

    def start(self) -> None:
        """
        Exchange the prefaces.
        """
        self.send()

    def request(
        self, headers: list[Any], body: bytes | None = None, end: bool = True
    ) -> int:
        streamID: int = self.client.get_next_available_stream_id()
        self.client.send_headers(streamID, headers, end_stream=end and body is None)
        if body is not None:
            self.sendBody(streamID, body, end)
        return streamID

    def sendBody(self, streamID: int, body: bytes, end: bool = False) -> None:
        size = self.client.max_outbound_frame_size
        for start in range(0, len(body), size):
            piece = body[start : start + size]
            last = start + size >= len(body)
            self.client.send_data(streamID, piece, end_stream=end and last)

    def response(self, streamID: int) -> tuple[dict[bytes, bytes], bytes, bool]:
        head: dict[bytes, bytes] = {}
        body = b""
        ended = False
        for event in self.events:
            if getattr(event, "stream_id", None) != streamID:
                continue
            if isinstance(event, h2.events.ResponseReceived):
                head = dict(event.headers)
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                self.client.acknowledge_received_data(
                    event.flow_controlled_length, streamID
                )
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
        return head, body, ended

    def goAway(self) -> Any:
        for event in self.events:
            if isinstance(event, h2.events.ConnectionTerminated):
                return event
        return None


class RequestResponseTests(SynchronousTestCase):
    """
    Requests and responses over L{H2ServerConnection}.
    """

    def test_get(self) -> None:
        """
        A GET is answered on its stream, with the proxy's Date header.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request(_GET)
        harness.send()
        head, body, ended = harness.response(streamID)
        self.assertEqual(head[b":status"], b"200")
        self.assertIn(b"date", head)
        self.assertEqual((body, ended), (b"hello /hello", True))
        request = harness.app.requests[0]
        self.assertEqual(request.clientproto, b"HTTP/2")
        self.assertEqual(
            request.requestHeaders.getRawHeaders(b"host"), [b"example.com"]
        )

    def test_prefaceAnsweredWithSettings(self) -> None:
        """
        The server's preface is its SETTINGS: the concurrent streams and
        header list size it accepts.
        """
        harness = _Harness(self, maxHeaderSize=4000)
        harness.server.dataReceived(harness.client.data_to_send())
        settings = harness.rawFrames()[0]
        assert isinstance(settings, SettingsFrame)
        self.assertEqual(settings.settings[SettingsFrame.MAX_CONCURRENT_STREAMS], 100)
        self.assertEqual(settings.settings[SettingsFrame.MAX_HEADER_LIST_SIZE], 4000)

    def test_proxyHeadersReplaceTheResource(self) -> None:
        """
        Over TLS the site's C{Strict-Transport-Security} replaces one the
        resource set (sent once), as over HTTP/1.1; a C{Server} it set is
        kept.
        """
        harness = _Harness(self)
        harness.site.hstsHeader = b"max-age=100"
        directlyProvides(harness.transport, ISSLTransport)
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/hsts"), *_GET[2:]])
        harness.send()
        [response] = [
            e for e in harness.events if isinstance(e, h2.events.ResponseReceived)
        ]
        self.assertEqual(
            [v for n, v in response.headers if n == b"strict-transport-security"],
            [b"max-age=100"],
        )
        self.assertEqual([v for n, v in response.headers if n == b"server"], [b"app"])
        self.assertEqual(len([n for n, v in response.headers if n == b"date"]), 1)
        self.assertEqual(harness.response(streamID)[1], b"hsts")

    def test_headAndSmallBodyInOneWrite(self) -> None:
        """
        A response written a turn later goes out in one transport write:
        its HEADERS and DATA frames and its end.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/later"), *_GET[2:]])
        harness.send()
        before = harness.transport.writes
        harness.clock.advance(1)
        self.assertEqual(harness.transport.writes, before + 1)
        harness.read()
        head, body, ended = harness.response(streamID)
        self.assertEqual((head[b":status"], body, ended), (b"200", b"late", True))

    def test_smallWritesCoalesced(self) -> None:
        """
        Writes of one turn become one DATA frame.
        """
        harness = _Harness(self)
        harness.start()
        harness.request([*_GET[:1], (b":path", b"/small"), *_GET[2:]])
        harness.server.dataReceived(harness.client.data_to_send())
        data = [f for f in harness.rawFrames() if isinstance(f, DataFrame)]
        self.assertEqual([len(f.data) for f in data], [100])
        self.assertIn("END_STREAM", data[0].flags)

    def test_bufferedBody(self) -> None:
        """
        A request body is buffered for the resource by default.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request(_post(length=5), b"hello")
        harness.send()
        self.assertEqual(harness.response(streamID)[1], b"hello")

    def test_bodyTooLarge(self) -> None:
        """
        A body past the limit, from its Content-Length, gets 413 before
        any of it is read.
        """
        harness = _Harness(self)
        harness.site.bodyPolicy = lambda request: (10, True)
        harness.start()
        streamID = harness.request(_post(length=100), b"x" * 100)
        harness.send()
        self.assertEqual(harness.response(streamID)[0][b":status"], b"413")
        self.assertEqual(harness.app.requests, [])

    def test_interim(self) -> None:
        """
        An interim response is a HEADERS frame before the final head.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/interim"), *_GET[2:]])
        harness.send()
        [early] = [
            e
            for e in harness.events
            if isinstance(e, h2.events.InformationalResponseReceived)
        ]
        self.assertEqual(early.headers, [(b":status", b"103"), (b"link", b"</a>")])
        self.assertEqual(harness.response(streamID)[1], b"final")

    def test_extendedConnectRefused(self) -> None:
        """
        Extended CONNECT (WebSocket over HTTP/2) is not offered: the stream
        is reset with PROTOCOL_ERROR, the connection stays.
        """
        harness = _Harness(self)
        harness.start()
        block = harness.client.encoder.encode(
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":path", b"/ws"),
                (b":authority", b"example.com"),
            ]
        )
        frame = HeadersFrame(1, block, flags=["END_HEADERS"])
        harness.server.dataReceived(frame.serialize())
        frames = harness.rawFrames()
        [reset] = [f for f in frames if isinstance(f, RstStreamFrame)]
        self.assertEqual(reset.error_code, PROTOCOL_ERROR)
        self.assertFalse(harness.transport.disconnecting)


class FlowControlTests(SynchronousTestCase):
    """
    Windows and backpressure in both directions.
    """

    def test_slowClientPausesProducer(self) -> None:
        """
        When the stream's send window is spent, the response's producer is
        paused; the client's WINDOW_UPDATE resumes the DATA and, once all
        is sent, the producer.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/big"), *_GET[2:]])
        harness.send()
        producer = harness.app.producer
        self.assertTrue(producer.paused)
        received = sum(
            len(e.data) for e in harness.events if isinstance(e, h2.events.DataReceived)
        )
        self.assertEqual(received, 65535)
        harness.client.increment_flow_control_window(100000)
        harness.client.increment_flow_control_window(100000, streamID)
        harness.send()
        received = sum(
            len(e.data) for e in harness.events if isinstance(e, h2.events.DataReceived)
        )
        self.assertEqual(received, 100000)
        self.assertFalse(producer.paused)

    def test_negativeWindow(self) -> None:
        """
        A SETTINGS_INITIAL_WINDOW_SIZE change that makes a stream's window
        negative is tracked: DATA resumes once WINDOW_UPDATEs make it
        positive again (RFC 9113 section 6.9.2).
        """
        harness = _Harness(self)
        harness.client.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 16}
        )
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/big"), *_GET[2:]])
        harness.send()
        harness.client.update_settings(
            {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        )
        harness.send()
        harness.client.increment_flow_control_window(16, streamID)
        harness.send()
        sizes = [
            len(e.data) for e in harness.events if isinstance(e, h2.events.DataReceived)
        ]
        self.assertEqual(sizes, [16])
        harness.client.increment_flow_control_window(10, streamID)
        harness.send()
        sizes = [
            len(e.data) for e in harness.events if isinstance(e, h2.events.DataReceived)
        ]
        self.assertEqual(sizes, [16, 10])

    def test_streamedBodyBackpressure(self) -> None:
        """
        A streamed request body reaches the backend as it arrives; while
        the backend is paused the client's window is not reopened, and it
        is once the backend reads again.
        """
        harness = _Harness(self, streaming=True)
        harness.start()
        streamID = harness.request(_post(b"/stream"), end=False)
        harness.send()
        stream = harness.app.requests[0].bodyStream
        harness.sendBody(streamID, b"a" * 30000)
        harness.send()
        self.assertEqual(b"".join(harness.app.bodies), b"a" * 30000)
        stream.pauseProducing()
        harness.sendBody(streamID, b"b" * 35535)
        harness.send()
        self.assertEqual(harness.client.local_flow_control_window(streamID), 0)
        stream.resumeProducing()
        harness.read()
        self.assertGreater(harness.client.local_flow_control_window(streamID), 0)
        harness.client.send_data(streamID, b"c", end_stream=True)
        harness.send()
        self.assertEqual(len(b"".join(harness.app.bodies)), 65536)
        self.assertTrue(harness.response(streamID)[2])


class ConformanceTests(SynchronousTestCase):
    """
    The connection errors of RFC 9113 and RFC 7541.
    """

    def assertGoAway(self, harness: _Harness, code: int) -> None:
        frames = harness.rawFrames()
        goAways = [f for f in frames if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goAways], [code])
        self.assertTrue(harness.transport.disconnecting)

    def test_invalidPreface(self) -> None:
        """
        An invalid preface gets GOAWAY(PROTOCOL_ERROR), first, and the
        connection is closed.
        """
        harness = _Harness(self)
        harness.server.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        frames = harness.rawFrames()
        self.assertIsInstance(frames[0], GoAwayFrame)
        self.assertEqual(frames[0].error_code, PROTOCOL_ERROR)
        self.assertTrue(harness.transport.disconnecting)

    def test_settingsAckWithPayload(self) -> None:
        """
        A SETTINGS acknowledgement with a payload: FRAME_SIZE_ERROR.
        """
        harness = _Harness(self)
        harness.start()
        frame = SettingsFrame(0)
        frame.flags.add("ACK")
        payload = SettingsFrame(0, settings={1: 4096}).serialize()[9:]
        raw = frame.serialize()
        raw = len(payload).to_bytes(3, "big") + raw[3:] + payload
        harness.server.dataReceived(raw)
        self.assertGoAway(harness, FRAME_SIZE_ERROR)

    def test_compressionError(self) -> None:
        """
        A header block that does not decode (index 0): COMPRESSION_ERROR.
        """
        harness = _Harness(self)
        harness.start()
        harness.server.dataReceived(
            HeadersFrame(1, b"\x80", flags=["END_HEADERS", "END_STREAM"]).serialize()
        )
        self.assertGoAway(harness, COMPRESSION_ERROR)

    def test_clientGoAway(self) -> None:
        """
        After the client's GOAWAY the server still answers PING and
        finishes the open stream, sends no GOAWAY of its own, then closes.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/later"), *_GET[2:]])
        harness.send()
        harness.server.dataReceived(
            GoAwayFrame(0, last_stream_id=0, error_code=0xFF).serialize()
            + PingFrame(0, b"12345678").serialize()
        )
        frames = harness.rawFrames()
        self.assertEqual([type(f) for f in frames], [PingFrame])
        self.assertIn("ACK", frames[0].flags)
        self.assertFalse(harness.transport.disconnecting)
        harness.clock.advance(1)
        frames = harness.rawFrames()
        self.assertNotIn(GoAwayFrame, [type(f) for f in frames])
        data = [f for f in frames if isinstance(f, DataFrame)]
        self.assertEqual(data[-1].data, b"late")
        self.assertEqual(data[-1].stream_id, streamID)
        self.assertTrue(harness.transport.disconnecting)

    def test_frameTooLarge(self) -> None:
        """
        A frame longer than SETTINGS_MAX_FRAME_SIZE is refused from its
        header: FRAME_SIZE_ERROR.
        """
        harness = _Harness(self)
        harness.start()
        harness.server.dataReceived(b"\x00\x50\x00\x00\x00\x00\x00\x00\x01")
        self.assertGoAway(harness, FRAME_SIZE_ERROR)


class LimitTests(SynchronousTestCase):
    """
    The limits and the flood defences.
    """

    def assertCalm(self, harness: _Harness, data: bytes) -> None:
        harness.server.dataReceived(data)
        goAways = [f for f in harness.rawFrames() if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goAways], [ENHANCE_YOUR_CALM])
        self.assertTrue(harness.transport.disconnecting)

    def test_concurrentStreams(self) -> None:
        """
        A stream past SETTINGS_MAX_CONCURRENT_STREAMS is refused with
        REFUSED_STREAM; the others go on.
        """
        harness = _Harness(self, H2Limits(maxConcurrentStreams=2))
        harness.start()
        hold = [*_GET[:1], (b":path", b"/hold"), *_GET[2:]]
        for _ in range(2):
            harness.request(hold)
        # A third, past what the client was told.
        block = harness.client.encoder.encode(hold)
        third = HeadersFrame(5, block, flags=["END_HEADERS", "END_STREAM"])
        harness.server.dataReceived(harness.client.data_to_send() + third.serialize())
        resets = [f for f in harness.rawFrames() if isinstance(f, RstStreamFrame)]
        self.assertEqual(
            [(f.stream_id, f.error_code) for f in resets], [(5, REFUSED_STREAM)]
        )
        self.assertEqual(len(harness.app.requests), 2)
        self.assertFalse(harness.transport.disconnecting)

    def test_rapidReset(self) -> None:
        """
        Streams opened and reset at once past the bound (CVE-2023-44487):
        GOAWAY(ENHANCE_YOUR_CALM).
        """
        harness = _Harness(self, H2Limits(maxResets=10))
        harness.start()
        block = harness.client.encoder.encode(_GET)
        data = b""
        for i in range(12):
            streamID = 2 * i + 1
            data += HeadersFrame(
                streamID, block, flags=["END_HEADERS", "END_STREAM"]
            ).serialize()
            data += RstStreamFrame(streamID, error_code=8).serialize()
        self.assertCalm(harness, data)

    def test_pingFlood(self) -> None:
        """
        PINGs past the bound: GOAWAY(ENHANCE_YOUR_CALM).
        """
        harness = _Harness(self, H2Limits(maxPings=5))
        harness.start()
        self.assertCalm(harness, PingFrame(0, b"12345678").serialize() * 6)

    def test_settingsFlood(self) -> None:
        """
        SETTINGS frames past the bound: GOAWAY(ENHANCE_YOUR_CALM).
        """
        harness = _Harness(self, H2Limits(maxSettings=5))
        harness.start()
        self.assertCalm(harness, SettingsFrame(0).serialize() * 6)

    def test_emptyDataFlood(self) -> None:
        """
        Empty DATA frames past the bound: GOAWAY(ENHANCE_YOUR_CALM).
        """
        harness = _Harness(self, H2Limits(maxEmptyData=5), streaming=True)
        harness.start()
        harness.request(_post(b"/hold"), end=False)
        harness.send()
        self.assertCalm(harness, DataFrame(1, b"").serialize() * 6)

    def test_continuationFlood(self) -> None:
        """
        CONTINUATION frames past the bound in one header block:
        GOAWAY(ENHANCE_YOUR_CALM).
        """
        harness = _Harness(self, H2Limits(maxContinuations=4))
        harness.start()
        data = HeadersFrame(1, b"").serialize()
        data += ContinuationFrame(1, b"").serialize() * 5
        self.assertCalm(harness, data)

    def test_headerListTooLarge(self) -> None:
        """
        A header list past max_header_size gets 431 on its stream.
        """
        harness = _Harness(self, maxHeaderSize=200)
        harness.start()
        streamID = harness.request([*_GET, (b"x-big", b"v" * 300)])
        harness.send()
        self.assertEqual(harness.response(streamID)[0][b":status"], b"431")
        self.assertEqual(harness.app.requests, [])

    def test_idleTimeout(self) -> None:
        """
        A connection without streams is closed after the idle timeout,
        with GOAWAY(NO_ERROR).
        """
        harness = _Harness(self, idleTimeout=5.0)
        harness.start()
        harness.clock.advance(4)
        self.assertFalse(harness.transport.disconnecting)
        harness.clock.advance(2)
        goAways = [f for f in harness.rawFrames() if isinstance(f, GoAwayFrame)]
        self.assertEqual([f.error_code for f in goAways], [NO_ERROR])
        self.assertTrue(harness.transport.disconnecting)

    def test_prefaceTimeout(self) -> None:
        """
        A client that does not send its preface within the header timeout
        is closed.
        """
        harness = _Harness(self, headerTimeout=3.0)
        harness.server.dataReceived(PREFACE[:5])
        harness.clock.advance(4)
        self.assertTrue(harness.transport.disconnecting)

    def test_bodyTimeout(self) -> None:
        """
        A request body that stalls past the body timeout gets 408.
        """
        harness = _Harness(self, bodyTimeout=5.0)
        harness.start()
        streamID = harness.request(_post(length=10), b"abc", end=False)
        harness.send()
        harness.clock.advance(6)
        harness.read()
        self.assertEqual(harness.response(streamID)[0][b":status"], b"408")

    def test_minBodyRate(self) -> None:
        """
        A request body that trickles in below C{min_body_rate} (once its
        grace period is over) gets 408, as over HTTP/1.1, though bytes
        keep coming within the body timeout.
        """
        harness = _Harness(
            self, bodyTimeout=30.0, minBodyRate=100, minBodyRateGrace=2.0
        )
        harness.start()
        streamID = harness.request(_post(length=10000), b"x" * 100, end=False)
        harness.send()
        harness.clock.advance(1.5)
        harness.client.send_data(streamID, b"x" * 50)
        harness.send()
        self.assertEqual(harness.response(streamID)[0], {})
        harness.clock.advance(1.0)
        harness.read()
        self.assertEqual(harness.response(streamID)[0][b":status"], b"408")

    def test_minBodyRateKeptUp(self) -> None:
        """
        A body arriving at least at C{min_body_rate} is not refused.
        """
        harness = _Harness(
            self, bodyTimeout=30.0, minBodyRate=100, minBodyRateGrace=2.0
        )
        harness.start()
        streamID = harness.request(_post(length=10000), b"x" * 100, end=False)
        harness.send()
        for _ in range(8):
            harness.clock.advance(0.5)
            harness.client.send_data(streamID, b"x" * 100)
            harness.send()
        self.assertEqual(harness.response(streamID)[0], {})

    def test_gracefulStop(self) -> None:
        """
        A graceful stop sends GOAWAY(NO_ERROR) with the last stream taken,
        finishes that stream, refuses newer ones, then closes.
        """
        harness = _Harness(self)
        harness.start()
        streamID = harness.request([*_GET[:1], (b":path", b"/later"), *_GET[2:]])
        harness.send()
        self.assertFalse(harness.server.closeIfIdle())
        [goAway] = [f for f in harness.rawFrames() if isinstance(f, GoAwayFrame)]
        self.assertEqual((goAway.last_stream_id, goAway.error_code), (streamID, 0))
        harness.request(_GET)
        harness.server.dataReceived(harness.client.data_to_send())
        resets = [f for f in harness.rawFrames() if isinstance(f, RstStreamFrame)]
        self.assertEqual([f.error_code for f in resets], [REFUSED_STREAM])
        harness.clock.advance(1)
        data = [f for f in harness.rawFrames() if isinstance(f, DataFrame)]
        self.assertEqual(data[-1].data, b"late")
        self.assertTrue(harness.transport.disconnecting)

    def test_floodCounter(self) -> None:
        """
        A L{FloodCounter} passes its limit within a period, and starts
        again in the next.
        """
        counter = FloodCounter(2, 10.0)
        self.assertEqual([counter.hit(0.0) for _ in range(3)], [False, False, True])
        self.assertFalse(counter.hit(10.0))

    def test_scannerKeepsIncompleteFrame(self) -> None:
        """
        L{FrameScanner} hands on whole frames only, and takes a GOAWAY out.
        """
        scanner = FrameScanner(H2Limits())
        settings = SettingsFrame(0).serialize()
        ping = PingFrame(0, b"12345678").serialize()
        goAway = GoAwayFrame(0, last_stream_id=0).serialize()
        pingFrame = (PING, 0, 0, b"12345678", 8)
        self.assertEqual(
            scanner.scan(settings + ping + goAway + ping[:5], 0.0),
            [(SETTINGS, 0, 0, b"", 0), pingFrame],
        )
        self.assertTrue(scanner.peerGoingAway)
        self.assertEqual(scanner.scan(ping[5:], 0.0), [pingFrame])

    def test_scannerJoinsHeaderBlock(self) -> None:
        """
        A header block's fragments come out as one HEADERS frame, without
        its padding and priority; a frame between them is a connection
        error.
        """
        scanner = FrameScanner(H2Limits())
        scanner.scan(SettingsFrame(0).serialize(), 0.0)
        headers = HeadersFrame(1, b"ab", flags=["PADDED", "PRIORITY"], pad_length=3)
        headers.depends_on = 1
        continued = ContinuationFrame(1, b"cd", flags=["END_HEADERS"])
        self.assertEqual(
            scanner.scan(headers.serialize() + continued.serialize(), 0.0),
            [(HEADERS, 0x2C, 1, b"abcd", 1)],
        )
        self.assertTrue(not scanner.inBlock)
        scanner.scan(HeadersFrame(3, b"ab").serialize(), 0.0)
        self.assertTrue(scanner.inBlock)
        with self.assertRaises(FrameError) as caught:
            scanner.scan(PingFrame(0, b"12345678").serialize(), 0.0)
        self.assertEqual(caught.exception.code, PROTOCOL_ERROR)


class SwitchTests(SynchronousTestCase):
    """
    L{twisted_rproxy.server.ProxyHTTPChannel} with C{h2c}.
    """

    def _connection(self, h2c: bool) -> tuple[Any, StringTransport]:
        clock = MemoryReactorClock()
        site = ProxySite(_App(clock), ServerConfig(h2c=h2c), clock)  # type: ignore[arg-type]
        protocol = site.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost)
        return protocol, transport

    def test_priorKnowledge(self) -> None:
        """
        With C{h2c}, a plain connection that starts with the preface (in
        pieces) speaks HTTP/2.
        """
        protocol, transport = self._connection(True)
        protocol.dataReceived(PREFACE[:10])
        protocol.dataReceived(PREFACE[10:] + SettingsFrame(0).serialize())
        self.assertIsInstance(protocol.http2, H2ServerConnection)
        self.assertIsInstance(
            Frame.parse_frame_header(memoryview(transport.value()[:9]))[0],
            SettingsFrame,
        )

    def test_http1Stays(self) -> None:
        """
        With C{h2c}, an HTTP/1.1 request stays HTTP/1.1; without it, the
        preface is not HTTP/2.
        """
        protocol, transport = self._connection(True)
        protocol.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIsNone(protocol.http2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200"))
        protocol, transport = self._connection(False)
        protocol.dataReceived(PREFACE)
        self.assertIsNone(protocol.http2)


class ConfigTests(SynchronousTestCase):
    """
    The C{[server] h2c} key.
    """

    def test_h2c(self) -> None:
        """
        C{h2c} is a boolean, off by default; anything else names the key.
        """
        from twisted_rproxy.config import ConfigError, parseConfig

        def parse(server: dict[str, Any]) -> Any:
            return parseConfig(
                {"server": server, "routes": [{"path": "/", "static": "."}]},
                "rproxy.toml",
                ".",
            )

        self.assertFalse(parse({}).server.h2c)
        self.assertTrue(parse({"h2c": True}).server.h2c)
        with self.assertRaises(ConfigError) as caught:
            parse({"h2c": "yes"})
        self.assertIn("server.h2c", str(caught.exception))
        self.assertIn("rproxy.toml", str(caught.exception))
