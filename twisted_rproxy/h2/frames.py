"""
L{FrameScanner}: what the proxy checks of the frames a client sends before
the C{h2} state machine sees them, and the few frames it builds itself
(L{goAwayFrame}, L{settingsFrame}).

The scanner reads only the nine-byte header of each frame. It runs the
flood counters (L{twisted_rproxy.h2.limits.FloodGuard}), and makes the
checks C{h2} does not make as RFC 9113 says: a SETTINGS acknowledgement
with a payload is a C{FRAME_SIZE_ERROR} (section 6.5; C{h2} says
C{PROTOCOL_ERROR}); a frame longer than the largest is refused from its
header, not once all of it arrived; and a client's C{GOAWAY} is checked
and taken out of what C{h2} is fed, since C{h2} would then stop sending,
where the RFC wants the open streams finished and PINGs answered (sections
6.8 and 7).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from h2.exceptions import H2Error, ProtocolError
from hpack.exceptions import HPACKError

from twisted_rproxy.h2.limits import (
    COMPRESSION_ERROR,
    CONTINUATION,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    PROTOCOL_ERROR,
    SETTINGS,
    FloodGuard,
    H2Limits,
)

#: The client connection preface (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: The largest frame the proxy accepts (its SETTINGS_MAX_FRAME_SIZE, the
#: default).
MAX_FRAME_SIZE = 16384

#: The header of a GOAWAY without debug data (what h2 queues for a
#: connection error, too: its last four bytes are then the error code).
GOAWAY_HEAD = b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"


class FrameError(Exception):
    """
    What the client sent is a connection error.

    @ivar code: The C{GOAWAY}'s error code.
    """

    def __init__(self, code: int, why: str) -> None:
        Exception.__init__(self, why)
        self.code = code


def goAwayFrame(lastStreamID: int, code: int) -> bytes:
    """
    A C{GOAWAY} frame, built here: sending one through C{h2} would stop
    it from sending anything after, open streams' responses included.
    """
    return GOAWAY_HEAD + struct.pack(">II", lastStreamID & 0x7FFFFFFF, code)


def settingsFrame(settings: Sequence[tuple[int, int]]) -> bytes:
    """
    A C{SETTINGS} frame of C{(identifier, value)} pairs.
    """
    payload = b"".join(struct.pack(">HI", key, value) for key, value in settings)
    return struct.pack(">I", len(payload))[1:] + b"\x04\x00\x00\x00\x00\x00" + payload


def errorCode(error: H2Error) -> int:
    """
    The code of the connection error C{h2} raised: its own, except for a
    header block that does not decode (C{h2} says C{PROTOCOL_ERROR}, RFC
    9113 section 4.3 and RFC 7541 C{COMPRESSION_ERROR}).
    """
    if type(error) is ProtocolError and isinstance(
        error.__cause__, (HPACKError, IndexError, TypeError, UnicodeDecodeError)
    ):
        return COMPRESSION_ERROR
    code = getattr(error, "error_code", None)
    return PROTOCOL_ERROR if code is None else int(code)


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
    _blockFrames = 0
    _blockBytes = 0

    def __init__(self, limits: H2Limits) -> None:
        self.limits = limits
        self.guard = FloodGuard(limits)
        self._pending = b""

    def scan(self, data: bytes, now: float) -> bytes:
        """
        Check and count the whole frames of the bytes received so far;
        keep the last, incomplete frame for the next read.

        @param data: The bytes just read.
        @param now: When.
        @return: The whole frames to feed C{h2}, without any C{GOAWAY}.
        @raise FrameError: For a connection error.
        """
        pending = self._pending
        if pending:
            data = pending + data
        size = len(data)
        offset = start = 0
        parts: list[bytes] | None = None
        guard = self.guard
        limits = self.limits
        while size - offset >= 9:
            length = int.from_bytes(data[offset : offset + 3], "big")
            if length > MAX_FRAME_SIZE:
                raise FrameError(FRAME_SIZE_ERROR, "frame too long")
            end = offset + 9 + length
            if end > size:
                break
            kind = data[offset + 3]
            flags = data[offset + 4]
            if kind == SETTINGS:
                if flags & FLAG_ACK and length:
                    raise FrameError(FRAME_SIZE_ERROR, "SETTINGS ack with a payload")
            elif kind == HEADERS:
                if not flags & FLAG_END_HEADERS:
                    self.inBlock = True
                    self.blockStart = now
                    self._blockFrames = 0
                    self._blockBytes = length
            elif kind == CONTINUATION:
                if self.inBlock:
                    self._blockFrames += 1
                    self._blockBytes += length
                    if (
                        self._blockFrames > limits.maxContinuations
                        or self._blockBytes > limits.maxHeaderBlock
                    ):
                        raise FrameError(ENHANCE_YOUR_CALM, "CONTINUATION flood")
                    if flags & FLAG_END_HEADERS:
                        self.inBlock = False
            elif kind == GOAWAY:
                streamID = int.from_bytes(data[offset + 5 : offset + 9], "big")
                if self.inBlock or streamID & 0x7FFFFFFF:
                    raise FrameError(PROTOCOL_ERROR, "misplaced GOAWAY")
                if length < 8:
                    raise FrameError(FRAME_SIZE_ERROR, "GOAWAY too short")
                if parts is None:
                    parts = []
                parts.append(data[start:offset])
                start = end
                self.peerGoingAway = True
            if guard.frame(kind, flags, length, now):
                raise FrameError(ENHANCE_YOUR_CALM, f"flood of frames of type {kind}")
            offset = end
        self._pending = data[offset:] if offset < size else b""
        if parts is None:
            return data if offset == size else data[:offset]
        parts.append(data[start:offset])
        return b"".join(parts)
