"""
The proxy's HTTP/2 server against the known HTTP/2 floods and over its
limits (issue #15): rapid reset (CVE-2023-44487), SETTINGS, PING, empty
DATA and CONTINUATION floods, more concurrent streams than advertised, a
header list over the limit and a request body over the route's limit.

Raw frames from L{tests.h2client.RawH2} at the real C{[[tls]]} listener of
a L{ProxyService} in front of a real backend on 127.0.0.1.  A flood must
end in GOAWAY and a closed connection, after a bounded amount of work and
memory: each test sends a bounded amount and fails, rather than hangs, if
the server never stops it.
"""

from __future__ import annotations

from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.fixtures import asyncTest
from tests.h2client import (
    CANCEL,
    ENHANCE_YOUR_CALM,
    MAX_CONCURRENT_STREAMS,
    NO_ERROR,
    REFUSED_STREAM,
    H2Request,
    inThread,
)
from tests.h2frames import RawH2, RawH2Case, assertConnectionError, requestBlock
from tests.loopback import RecordedRequest, Reply
from twisted_rproxy.config import RouteConfig

#: How many frames a flood sends at most: far past any sane bound.
FLOOD = 20000

#: How many HEADERS + RST_STREAM pairs the rapid reset sends.
RAPID_RESETS = 1000


def _reply(request: RecordedRequest) -> Reply:
    if request.target.startswith(b"/slow"):
        return Reply(body=b"late", delay=0.2)
    return Reply(body=request.target)


def _sendBatches(connection: RawH2, frames: list[bytes], batch: int = 500) -> int:
    """
    Send C{frames} in writes of C{batch} frames until all are sent or the
    server closes; how many were sent.
    """
    for start in range(0, len(frames), batch):
        if not connection.send(b"".join(frames[start : start + batch])):
            return start
    return len(frames)


class FloodCase(RawH2Case):
    """
    A proxy with HTTP/2 over TLS in front of a backend answering
    L{_reply}.
    """

    async def start(self, **server: object) -> int:
        self.backend = await self.startBackend(_reply)
        return await self.startH2Proxy(self.backend.portNumber, server=dict(server))

    async def assertStillServing(self, port: int) -> None:
        """
        A new HTTP/2 connection gets its answer: the flood cost one
        connection, not the proxy.
        """
        [response] = await self.exchange(port, H2Request("/after"))
        self.assertEqual((response.status, response.body), (200, b"/after"))

    async def flood(self, port: int, frames: list[bytes], code: int) -> None:
        """
        After the handshake, send C{frames} (without reading): the server
        ends the connection with GOAWAY(C{code}) and closes it.
        """

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                _sendBatches(connection, frames)
                assertConnectionError(connection, code)

        await inThread(scenario)
        await self.assertStillServing(port)


class FloodTests(FloodCase):
    """
    Each flood ends in GOAWAY(ENHANCE_YOUR_CALM) and a closed connection.
    """

    @asyncTest
    async def test_rapidReset(self) -> None:
        """
        CVE-2023-44487: 1000 requests each cancelled at once (HEADERS then
        RST_STREAM) get GOAWAY(ENHANCE_YOUR_CALM) and a closed connection,
        and at most a few of them reach the backend (a bound on work, not
        one backend request per stream).
        """
        port = await self.start()
        frames = []
        for index in range(RAPID_RESETS):
            streamID = 2 * index + 1
            frames.append(
                HeadersFrame(
                    streamID,
                    requestBlock(f"/slow/{index}"),
                    flags=["END_HEADERS", "END_STREAM"],
                ).serialize()
                + RstStreamFrame(streamID, error_code=CANCEL).serialize()
            )
        await self.flood(port, frames, ENHANCE_YOUR_CALM)
        reached = [r for r in self.backend.requests if r.target != b"/after"]
        self.assertLess(len(reached), RAPID_RESETS // 4, "one backend request each")

    @asyncTest
    async def test_settingsFlood(self) -> None:
        """
        20000 SETTINGS frames, each to be acknowledged, sent without
        reading the acknowledgements.
        """
        port = await self.start()
        frame = SettingsFrame(0).serialize()
        await self.flood(port, [frame] * FLOOD, ENHANCE_YOUR_CALM)

    @asyncTest
    async def test_pingFlood(self) -> None:
        """
        20000 PINGs, each to be answered, sent without reading the answers.
        """
        port = await self.start()
        frame = PingFrame(0, opaque_data=b"floodfld").serialize()
        await self.flood(port, [frame] * FLOOD, ENHANCE_YOUR_CALM)

    @asyncTest
    async def test_emptyDataFlood(self) -> None:
        """
        20000 empty DATA frames (no END_STREAM) on an open request: work for
        the server, no progress.
        """
        port = await self.start()
        opening = HeadersFrame(
            1,
            requestBlock("/upload", "POST"),
            flags=["END_HEADERS"],
        ).serialize()
        frame = DataFrame(1, b"").serialize()
        await self.flood(port, [opening] + [frame] * FLOOD, ENHANCE_YOUR_CALM)
        self.assertEqual(
            [r.target for r in self.backend.requests if r.target != b"/after"], []
        )

    async def continuationFlood(self, payload: bytes, frames: int) -> None:
        """
        HEADERS without END_HEADERS, then up to C{frames} CONTINUATION
        frames of C{payload}, never ending the block: the server sends
        GOAWAY (with an error code) and closes before the client is done,
        having buffered at most a bounded part of it.
        """
        port = await self.start()
        header = HeadersFrame(1, requestBlock("/c"), flags=[]).serialize()
        frame = ContinuationFrame(1, payload).serialize()

        def scenario() -> tuple[int, int]:
            with self.raw(port) as connection:
                connection.handshake()
                connection.send(header)
                sent = 0
                goAway = None
                while sent < frames and goAway is None:
                    if not connection.send(frame * 64):
                        break
                    sent += 64
                    for received in connection.quietFor(0.001):
                        if received.type == 0x7:
                            goAway = received
                if goAway is None:
                    goAway = connection.expectGoAway()
                connection.expectClosed()
                return sent, goAway.error_code

        sent, code = await inThread(scenario)
        self.assertLess(sent, frames, "the server let the whole flood in")
        self.assertNotEqual(code, NO_ERROR)
        self.assertEqual(self.backend.requests, [])
        await self.assertStillServing(port)

    @asyncTest
    async def test_continuationFlood(self) -> None:
        """
        CONTINUATION frames of 1 KiB of header fields each, 64 MiB at most
        if let in: the server gives up within a bounded amount.
        """
        field = b"\x00\x05x-pad\x7f\xe9\x06" + b"p" * 1000
        await self.continuationFlood(field, 64 * 1024)

    @asyncTest
    async def test_emptyContinuationFlood(self) -> None:
        """
        Empty CONTINUATION frames, 200000 at most: no memory, only work,
        and the server still gives up.
        """
        await self.continuationFlood(b"", 200000)


class LimitTests(FloodCase):
    """
    The limits of HTTP/1.1 hold over HTTP/2.
    """

    @asyncTest
    async def test_concurrentStreams(self) -> None:
        """
        The server advertises SETTINGS_MAX_CONCURRENT_STREAMS; with that
        many requests open (bodies not sent yet), one more stream is
        refused with RST_STREAM(REFUSED_STREAM), and the open ones are not
        touched.
        """
        port = await self.start()

        def scenario() -> tuple[int, dict[int, int]]:
            with self.raw(port) as connection:
                connection.handshake()
                limit = connection.serverSettings.get(MAX_CONCURRENT_STREAMS)
                assert limit is not None, "no SETTINGS_MAX_CONCURRENT_STREAMS"
                assert 0 < limit <= 1000, limit
                for index in range(limit + 1):
                    connection.request(2 * index + 1, "/open", "POST", endStream=False)
                refused = 2 * limit + 1
                connection.untilEnded(refused)
                connection.ping()
                return limit, dict(connection.resets)

        limit, resets = await inThread(scenario)
        self.assertEqual(resets, {2 * limit + 1: REFUSED_STREAM})

    async def assertHeadersRefused(self, extra: list[tuple[str, str]]) -> None:
        """
        A request with the headers C{extra} is refused, with a 431, a
        RST_STREAM or a GOAWAY as the protocol does; the backend sees
        nothing.
        """
        port = await self.start()

        def scenario() -> str:
            with self.raw(port) as connection:
                connection.handshake()
                block = requestBlock("/big", extra=extra)
                pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
                frames = [HeadersFrame(1, pieces[0], flags=[])]
                frames += [ContinuationFrame(1, p) for p in pieces[1:]]
                frames[-1].flags.add("END_HEADERS")
                frames[0].flags.add("END_STREAM")
                connection.sendFrames(*frames)
                try:
                    connection.framesUntil(
                        lambda f: 1 in connection.ended or f.type == 0x7
                    )
                except AssertionError:
                    if connection.closed:
                        return "closed"
                    raise
                if connection.status(1):
                    return str(connection.status(1))
                return "reset" if 1 in connection.resets else "goaway"

        outcome = await inThread(scenario)
        self.assertIn(outcome, {"431", "reset", "goaway", "closed"})
        self.assertEqual(self.backend.requests, [])

    @asyncTest
    async def test_headerListTooLarge(self) -> None:
        """
        A 20 KiB header (C{max_header_size} is 16 KiB) is refused.
        """
        await self.assertHeadersRefused([("x-big", "b" * 20000)])

    @asyncTest
    async def test_tooManyHeaders(self) -> None:
        """
        150 headers (C{max_headers} is 100) are refused.
        """
        await self.assertHeadersRefused([(f"x-h{n}", "v") for n in range(150)])

    async def startLimited(self, buffering: bool) -> int:
        self.backend = await self.startBackend(_reply)
        route = RouteConfig(
            path="/", pool="app", maxBodySize=1000, requestBuffering=buffering
        )
        return await self.startH2Proxy(self.backend.portNumber, routes=[route])

    @asyncTest
    async def test_declaredBodyOverRouteLimit(self) -> None:
        """
        A body declared larger than the route's C{max_body_size} (1000) by
        its C{content-length} gets a 413; the backend sees nothing; a body
        within the limit on the same route passes.
        """
        port = await self.startLimited(buffering=True)
        big, small = await self.exchange(
            port,
            H2Request("/big", "POST", [("content-length", "5000")], b"x" * 5000),
            H2Request("/small", "POST", [("content-length", "10")], b"y" * 10),
        )
        self.assertEqual(big.status, 413)
        self.assertEqual((small.status, small.body), (200, b"/small"))
        self.assertEqual(
            [(r.target, r.body) for r in self.backend.requests],
            [(b"/small", b"y" * 10)],
        )

    @asyncTest
    async def test_undeclaredBodyOverRouteLimit(self) -> None:
        """
        A body without C{content-length} that grows past the route's limit
        gets a 413 or its stream reset; the backend sees nothing of it.
        """
        port = await self.startLimited(buffering=True)
        [big] = await self.exchange(port, H2Request("/big", "POST", [], b"x" * 5000))
        self.assertTrue(big.status == 413 or big.reset is not None, big)
        self.assertEqual(self.backend.requests, [])

    @asyncTest
    async def test_streamedBodyOverRouteLimit(self) -> None:
        """
        With C{request_buffering = false}, a body without C{content-length}
        past the limit is cut: the client gets a 413 or a reset, and the
        backend never gets a whole 5000-byte body.
        """
        port = await self.startLimited(buffering=False)
        [big] = await self.exchange(port, H2Request("/big", "POST", [], b"x" * 5000))
        self.assertTrue(big.status in (413, 502) or big.reset is not None, big)
        self.assertEqual([r for r in self.backend.requests if len(r.body) >= 5000], [])
