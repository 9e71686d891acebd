"""
Conformance of the proxy's HTTP/2 server to RFC 9113 (HTTP/2) and RFC 7541
(HPACK), in the cases an independent conformance suite found failing
(issue #15): raw frames sent by L{tests.h2client.RawH2} at the real
C{[[tls]]} listener (C{http2 = true}) of a L{ProxyService} in front of a
real backend on 127.0.0.1.

Each test's waits are bounded (L{tests.h2client.WAIT}): a server that
hangs instead of answering fails the test, it does not stall it.
"""

from __future__ import annotations

from hyperframe.frame import (
    GoAwayFrame,
    HeadersFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.fixtures import asyncTest
from tests.h2client import (
    COMPRESSION_ERROR,
    FRAME_SIZE_ERROR,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    NO_ERROR,
    PROTOCOL_ERROR,
    inThread,
)
from tests.h2frames import (
    RawH2Case,
    assertConnectionError,
    rawFrame,
    requestBlock,
)
from tests.loopback import RecordedRequest, Reply

#: The body of C{/hundred}: 100 bytes, to watch flow control at work.
HUNDRED = bytes(range(100))


def _reply(request: RecordedRequest) -> Reply:
    if request.target == b"/hundred":
        return Reply(body=HUNDRED)
    if request.target == b"/slow":
        return Reply(body=b"slow answer", delay=0.5)
    return Reply(body=request.target)


#: A literal header field without indexing whose name is the static
#: table's C{user-agent} (index 58: 4-bit prefix 15, then 43), before its
#: value's string (RFC 7541 section 6.2.2).
_USER_AGENT_LITERAL = b"\x0f\x2b"


def _withValue(encoded: bytes, huffman: bool = True) -> bytes:
    """
    A valid request block followed by a C{user-agent} literal whose value
    is the string C{encoded} (Huffman-coded or not), built by hand.
    """
    length = len(encoded)
    assert length < 127
    return (
        requestBlock("/")
        + _USER_AGENT_LITERAL
        + bytes([(0x80 if huffman else 0) | length])
        + encoded
    )


class H2ConformanceCase(RawH2Case):
    """
    A proxy with HTTP/2 over TLS in front of a backend answering
    L{_reply}.
    """

    async def start(self) -> int:
        self.backend = await self.startBackend(_reply)
        return await self.startH2Proxy(self.backend.portNumber)

    async def compressionError(self, block: bytes) -> None:
        """
        A request whose header block is C{block} is a connection error
        COMPRESSION_ERROR: GOAWAY, then the connection is closed; nothing
        reaches the backend.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                connection.sendFrames(
                    HeadersFrame(1, block, flags=["END_HEADERS", "END_STREAM"])
                )
                assertConnectionError(connection, COMPRESSION_ERROR)

        await inThread(scenario)
        self.assertEqual(self.backend.requests, [])


class PrefaceTests(H2ConformanceCase):
    """
    RFC 9113 section 3.4, the connection preface; section 5.4.1, connection
    errors.
    """

    @asyncTest
    async def test_sanity(self) -> None:
        """
        A valid preface and one GET through the raw client: a 200 with the
        backend's body (the raw client itself works).
        """
        port = await self.start()

        def scenario() -> tuple[int, bytes]:
            with self.raw(port) as connection:
                connection.handshake()
                connection.request(1, "/sanity")
                connection.untilEnded(1)
                return connection.status(1), connection.data.get(1, b"")

        self.assertEqual(await inThread(scenario), (200, b"/sanity"))

    @asyncTest
    async def test_invalidPreface(self) -> None:
        """
        RFC 9113 section 3.4: an invalid connection preface is a connection
        error PROTOCOL_ERROR: GOAWAY(PROTOCOL_ERROR), and the connection is
        closed.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.send(
                    b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + SettingsFrame(0).serialize()
                )
                assertConnectionError(connection, PROTOCOL_ERROR)

        await inThread(scenario)
        self.assertEqual(self.backend.requests, [])

    @asyncTest
    async def test_http1OnH2Connection(self) -> None:
        """
        RFC 9113 section 3.4: an HTTP/1.1 request where ALPN chose C{h2} is
        not a preface either: GOAWAY(PROTOCOL_ERROR) and close.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.send(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
                assertConnectionError(connection, PROTOCOL_ERROR)

        await inThread(scenario)
        self.assertEqual(self.backend.requests, [])

    @asyncTest
    async def test_closedAfterConnectionError(self) -> None:
        """
        RFC 9113 section 5.4.1: after the GOAWAY of a connection error (DATA
        on stream 0, section 6.1) the server closes the TCP connection
        itself; the client need not.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                connection.send(rawFrame(0x0, 0x0, 0, b"data on stream 0"))
                assertConnectionError(connection, PROTOCOL_ERROR)

        await inThread(scenario)

    @asyncTest
    async def test_closedAfterEvenStream(self) -> None:
        """
        RFC 9113 sections 5.1.1 and 5.4.1: HEADERS on an even stream (the
        server's to open) is a connection error PROTOCOL_ERROR: GOAWAY and
        close; nothing reaches the backend.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                connection.sendFrames(
                    HeadersFrame(
                        2, requestBlock("/even"), flags=["END_HEADERS", "END_STREAM"]
                    )
                )
                assertConnectionError(connection, PROTOCOL_ERROR)

        await inThread(scenario)
        self.assertEqual(self.backend.requests, [])


class SettingsTests(H2ConformanceCase):
    """
    RFC 9113 section 6.5, SETTINGS.
    """

    @asyncTest
    async def test_ackWithPayload(self) -> None:
        """
        SETTINGS with the ACK flag and a payload is a connection error
        FRAME_SIZE_ERROR: GOAWAY and close.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                # ACK flag (0x1) with one setting (MAX_CONCURRENT_STREAMS=100).
                connection.send(rawFrame(0x4, 0x1, 0, b"\x00\x03\x00\x00\x00\x64"))
                assertConnectionError(connection, FRAME_SIZE_ERROR)

        await inThread(scenario)

    @asyncTest
    async def test_lengthNotMultipleOfSix(self) -> None:
        """
        A SETTINGS payload whose length is not a multiple of 6 is a
        connection error FRAME_SIZE_ERROR: GOAWAY and close.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                connection.send(rawFrame(0x4, 0x0, 0, b"\x00\x03\x00\x00\x00"))
                assertConnectionError(connection, FRAME_SIZE_ERROR)

        await inThread(scenario)


class ClientGoAwayTests(H2ConformanceCase):
    """
    RFC 9113 sections 6.8 and 7: a GOAWAY from the client.
    """

    async def goAwayThenPing(self, errorCode: int) -> None:
        """
        With a request in flight (the backend answers after 0.5 s), the
        client sends GOAWAY(C{errorCode}, last stream 0) and a PING: the
        server answers the PING, finishes the open stream with the
        backend's response, and sends no GOAWAY of its own in answer.
        """
        port = await self.start()

        def scenario() -> tuple[list[object], int, bytes]:
            with self.raw(port) as connection:
                connection.handshake()
                connection.request(1, "/slow")
                connection.sendFrames(
                    GoAwayFrame(0, last_stream_id=0, error_code=errorCode)
                )
                connection.ping(b"still-on")
                connection.untilEnded(1)
                goAways = [f for f in connection.received if isinstance(f, GoAwayFrame)]
                return goAways, connection.status(1), connection.data.get(1, b"")

        goAways, status, body = await inThread(scenario)
        self.assertEqual(goAways, [])
        self.assertEqual((status, body), (200, b"slow answer"))
        self.assertEqual([r.target for r in self.backend.requests], [b"/slow"])

    @asyncTest
    async def test_knownErrorCode(self) -> None:
        """
        A client GOAWAY(NO_ERROR): the PING is answered, the open stream
        finishes, no GOAWAY is sent back.
        """
        await self.goAwayThenPing(NO_ERROR)

    @asyncTest
    async def test_unknownErrorCode(self) -> None:
        """
        A client GOAWAY with an error code RFC 9113 does not define (0xff,
        to be treated as INTERNAL_ERROR by section 7 but never answered):
        the PING is answered, the open stream finishes, no GOAWAY back.
        """
        await self.goAwayThenPing(0xFF)


class FlowControlTests(H2ConformanceCase):
    """
    RFC 9113 section 6.9.2, the initial flow-control window.
    """

    @asyncTest
    async def test_negativeWindow(self) -> None:
        """
        A stream with 10 bytes of window gets 10 bytes of its 100-byte body;
        SETTINGS_INITIAL_WINDOW_SIZE lowered from 10 to 0 makes its window
        -10: a WINDOW_UPDATE of 5 leaves it negative (no DATA), one of 45
        more makes it 40 (exactly 40 more bytes), and a large one lets the
        rest through.
        """
        port = await self.start()

        def scenario() -> list[int]:
            seen = []
            with self.raw(port) as connection:
                connection.handshake({INITIAL_WINDOW_SIZE: 10})
                connection.request(1, "/hundred")
                connection.framesUntil(lambda f: len(connection.data.get(1, b"")) >= 10)
                connection.ping(b"drained1")
                connection.quietFor(0.2)
                seen.append(len(connection.data[1]))
                connection.sendFrames(
                    SettingsFrame(0, settings={INITIAL_WINDOW_SIZE: 0})
                )
                connection.framesUntil(
                    lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags
                )
                connection.sendFrames(WindowUpdateFrame(1, window_increment=5))
                connection.ping(b"negative")
                connection.quietFor(0.3)
                seen.append(len(connection.data[1]))
                connection.sendFrames(WindowUpdateFrame(1, window_increment=45))
                connection.framesUntil(lambda f: len(connection.data[1]) >= 50)
                connection.ping(b"positive")
                connection.quietFor(0.3)
                seen.append(len(connection.data[1]))
                connection.sendFrames(WindowUpdateFrame(1, window_increment=1000))
                connection.untilEnded(1)
                seen.append(len(connection.data[1]))
                self.assertEqual(connection.data[1], HUNDRED)
                self.assertEqual(connection.status(1), 200)
                self.assertNotIn(1, connection.resets)
            return seen

        self.assertEqual(await inThread(scenario), [10, 10, 50, 100])


class HPACKTests(H2ConformanceCase):
    """
    RFC 9113 section 4.3 and RFC 7541: a header block that cannot be
    decoded is a connection error COMPRESSION_ERROR (GOAWAY and close),
    not a connection left hanging.
    """

    @asyncTest
    async def test_truncatedBlock(self) -> None:
        """
        RFC 9113 section 4.3: a literal whose string runs past the end of
        the block.
        """
        await self.compressionError(requestBlock("/") + _USER_AGENT_LITERAL + b"\x05ab")

    @asyncTest
    async def test_truncatedInteger(self) -> None:
        """
        RFC 7541 section 5.1: an integer whose continuation bytes are
        missing at the end of the block.
        """
        await self.compressionError(requestBlock("/") + b"\xff\x80")

    @asyncTest
    async def test_indexZero(self) -> None:
        """
        RFC 7541 section 6.1: the index 0 is a decoding error.
        """
        await self.compressionError(requestBlock("/") + b"\x80")

    @asyncTest
    async def test_indexOutOfRange(self) -> None:
        """
        RFC 7541 section 2.3.3: an index past the static table and the
        (empty) dynamic table (64) is a decoding error.
        """
        await self.compressionError(requestBlock("/") + b"\xc0")

    @asyncTest
    async def test_tableSizeUpdateAtEnd(self) -> None:
        """
        RFC 7541 section 4.2: a dynamic table size update after a header
        field (here, at the end of the block) is a decoding error.
        """
        await self.compressionError(requestBlock("/") + b"\x20")

    @asyncTest
    async def test_tableSizeUpdateTooLarge(self) -> None:
        """
        RFC 7541 sections 4.2 and 6.3: a dynamic table size update above
        the server's SETTINGS_HEADER_TABLE_SIZE is a decoding error.
        """
        port = await self.start()

        def scenario() -> None:
            with self.raw(port) as connection:
                connection.handshake()
                limit = connection.serverSettings.get(HEADER_TABLE_SIZE, 4096)
                connection.sendFrames(
                    HeadersFrame(
                        1,
                        _tableSizeUpdate(limit + 1) + requestBlock("/"),
                        flags=["END_HEADERS", "END_STREAM"],
                    )
                )
                assertConnectionError(connection, COMPRESSION_ERROR)

        await inThread(scenario)
        self.assertEqual(self.backend.requests, [])

    @asyncTest
    async def test_huffmanPaddingTooLong(self) -> None:
        """
        RFC 7541 section 5.2: Huffman padding longer than 7 bits (C{"a"},
        5 bits, then 11 bits of ones) is a decoding error.
        """
        await self.compressionError(_withValue(b"\x1f\xff"))

    @asyncTest
    async def test_huffmanPaddingNotOnes(self) -> None:
        """
        RFC 7541 section 5.2: Huffman padding that is not the most
        significant bits of EOS (zeros after C{"a"}) is a decoding error.
        """
        await self.compressionError(_withValue(b"\x18"))

    @asyncTest
    async def test_huffmanEOS(self) -> None:
        """
        RFC 7541 section 5.2: a Huffman string containing the EOS symbol
        (30 ones after C{"a"}) is a decoding error.
        """
        await self.compressionError(_withValue(b"\x1f\xff\xff\xff\xff"))

    @asyncTest
    async def test_validHuffmanAccepted(self) -> None:
        """
        The same hand-built literal with a valid Huffman value (C{"a"}, its
        padding all ones) is accepted: the request reaches the backend with
        C{User-Agent: a}, so the cases above fail for their one flaw.
        """
        port = await self.start()

        def scenario() -> int:
            with self.raw(port) as connection:
                connection.handshake()
                connection.sendFrames(
                    HeadersFrame(
                        1, _withValue(b"\x1f"), flags=["END_HEADERS", "END_STREAM"]
                    )
                )
                connection.untilEnded(1)
                return connection.status(1)

        self.assertEqual(await inThread(scenario), 200)
        self.assertEqual(self.backend.requests[0].header(b"user-agent"), [b"a"])


def _tableSizeUpdate(size: int) -> bytes:
    """
    A dynamic table size update to C{size} (RFC 7541 section 6.3: C{001}
    and a 5-bit prefix integer).
    """
    if size < 31:
        return bytes([0x20 | size])
    encoded = bytearray([0x20 | 31])
    size -= 31
    while size >= 128:
        encoded.append((size & 0x7F) | 0x80)
        size >>= 7
    encoded.append(size)
    return bytes(encoded)
