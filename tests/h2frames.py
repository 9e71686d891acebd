"""
The raw HTTP/2 client of the conformance and flood tests: L{RawH2} sends
frames built by hand (C{hyperframe}, C{hpack}, or raw bytes where those
refuse to build what a hostile peer sends) over a real TLS connection with
ALPN C{h2}, and reads the frames received back one by one, keeping each
stream's headers, data, end and reset.

Every read is bounded (L{tests.h2client.WAIT}): a wait that runs out is an
L{AssertionError}, so no test can hang on a server that says nothing.
"""

from __future__ import annotations

import select
import ssl
import struct
import time
from collections.abc import Callable, Iterable

import hpack
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

from tests.h2client import PREFACE, SERVER_NAME, WAIT, H2ProxyCase, connectTLS


def rawFrame(kind: int, flags: int, streamID: int, payload: bytes) -> bytes:
    """
    One frame's bytes, whatever its content: for frames that
    C{hyperframe} refuses to serialize.
    """
    header = struct.pack(">I", len(payload))[1:]
    return header + struct.pack(">BBI", kind, flags, streamID & 0x7FFFFFFF) + payload


def requestBlock(
    path: str = "/",
    method: str = "GET",
    extra: Iterable[tuple[str, str]] = (),
    encoder: hpack.Encoder | None = None,
) -> bytes:
    """
    A valid HPACK header block of a request for C{path}.
    """
    headers = [
        (":method", method),
        (":scheme", "https"),
        (":authority", SERVER_NAME),
        (":path", path),
        *extra,
    ]
    return bytes((encoder or hpack.Encoder()).encode(headers))


class ConnectionGone(Exception):
    """
    The connection was closed or reset while a frame was expected.
    """


class RawH2:
    """
    An HTTP/2 client connection that sends what it is told and records
    every frame it receives, in order.

    @ivar received: Every frame received so far.
    @ivar closed: Whether the server closed (or reset) the connection.
    @ivar serverSettings: The settings of the server's first SETTINGS frame.
    """

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buffer = b""
        self.received: list[Frame] = []
        self.closed = False
        self.serverSettings: dict[int, int] = {}
        #: The decoded response headers of each stream, in order received.
        self.headers: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        #: The DATA received on each stream.
        self.data: dict[int, bytes] = {}
        #: The streams the server ended (END_STREAM) or reset.
        self.ended: set[int] = set()
        #: The RST_STREAM error code of each stream the server reset.
        self.resets: dict[int, int] = {}
        self._unread: list[Frame] = []
        self._decoder = hpack.Decoder()
        self._block = b""

    @classmethod
    def connect(cls, port: int, caPath: str) -> RawH2:
        """
        Open a TLS connection with ALPN C{h2}; nothing sent yet.
        """
        return cls(connectTLS(port, caPath))

    def close(self) -> None:
        """
        Close the socket (not gracefully: no GOAWAY).
        """
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> RawH2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> bool:
        """
        Send C{data}; L{False} if the server has closed the connection
        (which a flood test expects at some point).
        """
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError):
            self.closed = True
            return False
        return True

    def sendFrames(self, *frames: Frame) -> bool:
        """
        Serialize and send C{frames} in one write.
        """
        return self.send(b"".join(f.serialize() for f in frames))

    def handshake(self, settings: dict[int, int] | None = None) -> None:
        """
        Send the preface and SETTINGS, read the server's SETTINGS and
        acknowledge them, and wait for the acknowledgement of ours.
        """
        self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
        acked = gotSettings = False
        deadline = time.monotonic() + WAIT
        others: list[Frame] = []
        while not (acked and gotSettings):
            frame = self.nextFrame(deadline - time.monotonic())
            if isinstance(frame, SettingsFrame):
                if "ACK" in frame.flags:
                    acked = True
                else:
                    gotSettings = True
                    self.serverSettings.update(frame.settings)
                    self.sendFrames(SettingsFrame(0, flags=["ACK"]))
            else:
                others.append(frame)
        # Read again by the caller (a WINDOW_UPDATE, say), in order.
        self._unread.extend(others)

    def request(
        self,
        streamID: int,
        path: str = "/",
        method: str = "GET",
        extra: Iterable[tuple[str, str]] = (),
        endStream: bool = True,
    ) -> None:
        """
        Send one request's HEADERS (with a fresh HPACK context: nothing is
        indexed, so any header block stands alone).
        """
        flags = ["END_HEADERS"] + (["END_STREAM"] if endStream else [])
        frame = HeadersFrame(streamID, requestBlock(path, method, extra), flags=flags)
        self.sendFrames(frame)

    def _fill(self, timeout: float) -> None:
        """
        Read once more from the socket, waiting at most C{timeout} seconds.
        """
        if self.closed:
            raise ConnectionGone()
        if self.sock.pending() == 0:
            ready, _, _ = select.select([self.sock], [], [], max(timeout, 0.0))
            if not ready:
                raise TimeoutError()
        try:
            data = self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            raise ConnectionGone()
        self.buffer += data

    def nextFrame(self, timeout: float = WAIT) -> Frame:
        """
        The next frame from the server.

        @raise ConnectionGone: If the connection ends first.
        @raise AssertionError: If none arrives within C{timeout} seconds.
        """
        if self._unread:
            return self._unread.pop(0)
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                if len(self.buffer) >= 9 + length:
                    frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                    self.buffer = self.buffer[9 + length :]
                    self.received.append(frame)
                    self._track(frame)
                    return frame
            try:
                self._fill(deadline - time.monotonic())
            except TimeoutError:
                raise AssertionError(
                    f"no frame within {timeout} s; received: {self.received!r}"
                ) from None

    def _track(self, frame: Frame) -> None:
        """
        Keep the state of each stream: headers, data, end and reset.
        """
        if isinstance(frame, (HeadersFrame, ContinuationFrame)):
            self._block += frame.data
            if "END_HEADERS" in frame.flags:
                block, self._block = self._block, b""
                decoded = self._decoder.decode(block, raw=True)
                self.headers.setdefault(frame.stream_id, []).append(
                    [(bytes(n), bytes(v)) for n, v in decoded]
                )
        elif isinstance(frame, DataFrame):
            self.data[frame.stream_id] = self.data.get(frame.stream_id, b"") + (
                frame.data
            )
        elif isinstance(frame, RstStreamFrame):
            self.resets[frame.stream_id] = frame.error_code
            self.ended.add(frame.stream_id)
        if isinstance(frame, (HeadersFrame, DataFrame)) and "END_STREAM" in (
            frame.flags
        ):
            self.ended.add(frame.stream_id)

    def status(self, streamID: int) -> int:
        """
        The final C{:status} received on C{streamID}, or 0 for none yet.
        """
        for block in self.headers.get(streamID, []):
            value = dict(block).get(b":status")
            if value is not None and not value.startswith(b"1"):
                return int(value)
        return 0

    def untilEnded(self, streamID: int, timeout: float = WAIT) -> list[Frame]:
        """
        Read until the server ends or resets C{streamID}; the frames read.
        """
        if streamID in self.ended:
            return []
        return self.framesUntil(lambda f: streamID in self.ended, timeout)

    def framesUntil(
        self, predicate: Callable[[Frame], bool], timeout: float = WAIT
    ) -> list[Frame]:
        """
        Read frames until one satisfies C{predicate}; all of them, that one
        last.

        @raise AssertionError: If the connection closes or the time runs
            out first.
        """
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frame = self.nextFrame(deadline - time.monotonic())
            except ConnectionGone:
                raise AssertionError(
                    f"connection closed while waiting; received {self.received!r}"
                ) from None
            frames.append(frame)
            if predicate(frame):
                return frames

    def ping(self, opaque: bytes = b"pingpong", timeout: float = WAIT) -> list[Frame]:
        """
        Send a PING and read until its acknowledgement: the frames read.
        Everything the server sent before answering is read then.
        """
        self.sendFrames(PingFrame(0, opaque_data=opaque))
        return self.framesUntil(
            lambda f: (
                isinstance(f, PingFrame)
                and "ACK" in f.flags
                and f.opaque_data == opaque
            ),
            timeout,
        )

    def quietFor(self, seconds: float) -> list[Frame]:
        """
        Read whatever arrives during C{seconds}; the frames read.
        """
        frames = []
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return frames
            try:
                frames.append(self.nextFrame(left))
            except (AssertionError, ConnectionGone):
                return frames

    def expectGoAway(self, timeout: float = WAIT) -> GoAwayFrame:
        """
        Read until a GOAWAY arrives; return it.

        @raise AssertionError: If the connection closes or the time runs
            out first.
        """
        frames = self.framesUntil(lambda f: isinstance(f, GoAwayFrame), timeout)
        goAway = frames[-1]
        assert isinstance(goAway, GoAwayFrame)
        return goAway

    def expectClosed(self, timeout: float = WAIT) -> list[Frame]:
        """
        Read until the server closes the connection; the frames read.

        @raise AssertionError: If it is still open after C{timeout} seconds.
        """
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                frames.append(self.nextFrame(deadline - time.monotonic()))
            except ConnectionGone:
                return frames
            except AssertionError:
                raise AssertionError(
                    f"the connection is still open after {timeout} s"
                ) from None


def assertConnectionError(
    connection: RawH2, code: int, timeout: float = WAIT
) -> GoAwayFrame:
    """
    The server answers with GOAWAY(C{code}) and closes the TCP connection
    (RFC 9113 section 5.4.1), without the client closing it.

    @raise AssertionError: Otherwise.
    """
    try:
        goAway = connection.expectGoAway(timeout)
    except AssertionError as e:
        raise AssertionError(f"expected GOAWAY({code:#x}): {e}") from None
    if goAway.error_code != code:
        raise AssertionError(
            f"GOAWAY error code {goAway.error_code:#x}, expected {code:#x}"
        )
    connection.expectClosed(timeout)
    return goAway


class RawH2Case(H2ProxyCase):
    """
    L{H2ProxyCase} with raw connections.
    """

    def raw(self, port: int) -> RawH2:
        """
        A L{RawH2} connection to C{port} (call in a thread; the caller
        closes it).
        """
        return RawH2.connect(port, self.files.caPath)
