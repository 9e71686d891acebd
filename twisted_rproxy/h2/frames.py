"""
HTTP/2 frames (RFC 9113 section 4 and 6): L{FrameScanner} reads the frames
a client sends, and the functions below build those the proxy sends.

The scanner checks what a frame's type, flags, length and stream say by
themselves (sizes, padding, frames that need stream 0 or another, the
order of a header block's HEADERS and CONTINUATION frames), runs the flood
counters (L{twisted_rproxy.h2.limits.FloodGuard}), joins a header block's
fragments, and takes the client's C{GOAWAY} out (the proxy then finishes
its open streams and still answers PINGs, RFC 9113 sections 6.8 and 7).
What a frame means for its stream is for the connection
(L{twisted_rproxy.h2.connection}).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from twisted_rproxy.h2.limits import (
    CONTINUATION,
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    FloodGuard,
    H2Limits,
)

#: The client connection preface (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: The largest frame the proxy accepts (its SETTINGS_MAX_FRAME_SIZE, the
#: default).
MAX_FRAME_SIZE = 16384

#: The PADDED and PRIORITY flags.
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

#: The types of frame that belong to a stream, and those of stream 0.
_STREAM_TYPES = frozenset([DATA, HEADERS, PRIORITY, RST_STREAM, CONTINUATION])
_CONNECTION_TYPES = frozenset([SETTINGS, PING, GOAWAY])

#: The payload length each of these types must have.
_FIXED_LENGTH = {PING: 8, RST_STREAM: 4, WINDOW_UPDATE: 4}

#: A frame as the scanner hands it on: its type, flags, stream, payload
#: (a DATA frame's and a header block's without padding nor priority),
#: and its length as flow control counts it (a DATA frame's), or for a
#: header block whether it names its own stream as its dependency (1).
Frame = tuple[int, int, int, bytes, int]


class FrameError(Exception):
    """
    What the client sent is a connection error.

    @ivar code: The C{GOAWAY}'s error code.
    """

    def __init__(self, code: int, why: str) -> None:
        Exception.__init__(self, why)
        self.code = code


def frameHead(length: int, kind: int, flags: int, streamID: int) -> bytes:
    """
    The nine bytes of a frame's header.
    """
    return struct.pack(">IBBI", length, kind, flags, streamID)[1:]


def goAwayFrame(lastStreamID: int, code: int) -> bytes:
    """
    A C{GOAWAY} frame without debug data.
    """
    return frameHead(8, GOAWAY, 0, 0) + struct.pack(
        ">II", lastStreamID & 0x7FFFFFFF, code
    )


def settingsFrame(settings: Sequence[tuple[int, int]]) -> bytes:
    """
    A C{SETTINGS} frame of C{(identifier, value)} pairs.
    """
    payload = b"".join(struct.pack(">HI", key, value) for key, value in settings)
    return frameHead(len(payload), SETTINGS, 0, 0) + payload


#: The acknowledgement of the client's SETTINGS.
SETTINGS_ACK = frameHead(0, SETTINGS, FLAG_ACK, 0)


def resetFrame(streamID: int, code: int) -> bytes:
    """
    An C{RST_STREAM} frame.
    """
    return frameHead(4, RST_STREAM, 0, streamID) + struct.pack(">I", code)


def windowUpdateFrame(streamID: int, increment: int) -> bytes:
    """
    A C{WINDOW_UPDATE} frame.
    """
    return frameHead(4, WINDOW_UPDATE, 0, streamID) + struct.pack(">I", increment)


def pingAck(payload: bytes) -> bytes:
    """
    The answer to a C{PING}.
    """
    return frameHead(8, PING, FLAG_ACK, 0) + payload


def headersFrames(
    streamID: int, block: bytes, endStream: bool, frameSize: int
) -> bytes:
    """
    A header block as a C{HEADERS} frame, and as many C{CONTINUATION}
    frames as the peer's largest frame size needs.
    """
    flags = FLAG_END_STREAM if endStream else 0
    size = len(block)
    if size <= frameSize:
        return frameHead(size, HEADERS, flags | FLAG_END_HEADERS, streamID) + block
    parts = [frameHead(frameSize, HEADERS, flags, streamID), block[:frameSize]]
    offset = frameSize
    while offset < size:
        piece = block[offset : offset + frameSize]
        offset += len(piece)
        last = FLAG_END_HEADERS if offset >= size else 0
        parts.append(frameHead(len(piece), CONTINUATION, last, streamID))
        parts.append(piece)
    return b"".join(parts)


def _unpad(payload: bytes, flags: int) -> bytes:
    if not flags & FLAG_PADDED:
        return payload
    if not payload:
        raise FrameError(FRAME_SIZE_ERROR, "padded frame without its pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise FrameError(PROTOCOL_ERROR, "padding as long as the frame")
    return payload[1 : len(payload) - pad]


class FrameScanner:
    """
    The frames of one connection, as they arrive, after its preface.

    @ivar peerGoingAway: Whether the client sent a C{GOAWAY}.
    @ivar inBlock: Whether a header block was started and not ended.
    @ivar blockStart: When it was started.
    """

    peerGoingAway = False
    inBlock = False
    blockStart = 0.0
    _started = False
    _blockStream = 0
    _blockFlags = 0
    _blockSelf = 0
    _blockFrames = 0
    _blockBytes = 0

    def __init__(self, limits: H2Limits) -> None:
        self.limits = limits
        self.guard = FloodGuard(limits)
        self._pending = b""
        self._block: list[bytes] = []

    def scan(self, data: bytes, now: float) -> list[Frame]:
        """
        Check and count the whole frames of the bytes received so far;
        keep the last, incomplete frame for the next read.

        @param data: The bytes just read.
        @param now: When.
        @return: The frames, header blocks whole, without C{GOAWAY}s,
            unknown types nor C{CONTINUATION}s.
        @raise FrameError: For a connection error.
        """
        pending = self._pending
        if pending:
            data = pending + data
        size = len(data)
        offset = 0
        frames: list[Frame] = []
        guard = self.guard
        while size - offset >= 9:
            length = int.from_bytes(data[offset : offset + 3], "big")
            if length > MAX_FRAME_SIZE:
                raise FrameError(FRAME_SIZE_ERROR, "frame too long")
            end = offset + 9 + length
            if end > size:
                break
            kind = data[offset + 3]
            flags = data[offset + 4]
            streamID = int.from_bytes(data[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = data[offset + 9 : end]
            offset = end
            if guard.frame(kind, flags, length, now):
                raise FrameError(ENHANCE_YOUR_CALM, f"flood of frames of type {kind}")
            if not self._started:
                if kind != SETTINGS or flags & FLAG_ACK:
                    raise FrameError(PROTOCOL_ERROR, "the preface's SETTINGS missing")
                self._started = True
            if self.inBlock:
                if kind != CONTINUATION or streamID != self._blockStream:
                    raise FrameError(PROTOCOL_ERROR, "a header block cut by a frame")
                self._continued(payload, flags, frames)
                continue
            if kind in _STREAM_TYPES:
                if not streamID:
                    raise FrameError(
                        PROTOCOL_ERROR, f"frame of type {kind} on stream 0"
                    )
            elif kind in _CONNECTION_TYPES and streamID:
                raise FrameError(PROTOCOL_ERROR, f"frame of type {kind} on a stream")
            fixed = _FIXED_LENGTH.get(kind)
            if fixed is not None and length != fixed:
                raise FrameError(FRAME_SIZE_ERROR, f"frame of type {kind} of {length}")
            if kind == DATA:
                frames.append((DATA, flags, streamID, _unpad(payload, flags), length))
            elif kind == HEADERS:
                self._headers(streamID, flags, payload, now, frames)
            elif kind == SETTINGS:
                if flags & FLAG_ACK and length:
                    raise FrameError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
                if length % 6:
                    raise FrameError(FRAME_SIZE_ERROR, "SETTINGS not of 6-byte entries")
                frames.append((SETTINGS, flags, 0, payload, 0))
            elif kind == GOAWAY:
                if length < 8:
                    raise FrameError(FRAME_SIZE_ERROR, "GOAWAY too short")
                self.peerGoingAway = True
            elif kind == CONTINUATION:
                raise FrameError(PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
            elif kind == PUSH_PROMISE:
                raise FrameError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
            elif kind <= CONTINUATION:
                frames.append((kind, flags, streamID, payload, length))
            # Unknown types are ignored (RFC 9113 section 5.5).
        self._pending = data[offset:] if offset < size else b""
        return frames

    def _headers(
        self, streamID: int, flags: int, payload: bytes, now: float, frames: list[Frame]
    ) -> None:
        fragment = _unpad(payload, flags)
        selfDependent = 0
        if flags & FLAG_PRIORITY:
            if len(fragment) < 5:
                raise FrameError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            dependency = int.from_bytes(fragment[:4], "big") & 0x7FFFFFFF
            selfDependent = int(dependency == streamID)
            fragment = fragment[5:]
        if flags & FLAG_END_HEADERS:
            frames.append((HEADERS, flags, streamID, fragment, selfDependent))
            return
        self.inBlock = True
        self.blockStart = now
        self._blockStream = streamID
        self._blockFlags = flags | FLAG_END_HEADERS
        self._blockSelf = selfDependent
        self._blockFrames = 0
        self._blockBytes = len(fragment)
        self._block = [fragment]

    def _continued(self, payload: bytes, flags: int, frames: list[Frame]) -> None:
        limits = self.limits
        self._blockFrames += 1
        self._blockBytes += len(payload)
        if (
            self._blockFrames > limits.maxContinuations
            or self._blockBytes > limits.maxHeaderBlock
        ):
            raise FrameError(ENHANCE_YOUR_CALM, "CONTINUATION flood")
        self._block.append(payload)
        if flags & FLAG_END_HEADERS:
            self.inBlock = False
            block = b"".join(self._block)
            self._block = []
            frames.append(
                (HEADERS, self._blockFlags, self._blockStream, block, self._blockSelf)
            )
