"""
L{ConnectionState}: what one HTTP/2 connection knows of its streams and
windows, and what each frame the client sends does to them (RFC 9113
sections 5 and 6); and what the streams queue (heads, bodies, resets, window
updates) for the connection to write.

The Twisted side (transport, reads and writes, timeouts, C{GOAWAY}s,
graceful stop) is L{twisted_rproxy.h2.connection.H2ServerConnection}, which
is one.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod

from twisted.logger import Logger

from twisted_rproxy.h2.frames import (
    SETTINGS_ACK,
    FrameError,
    FrameScanner,
    frameHead,
    headersFrames,
    resetFrame,
    windowUpdateFrame,
)
from twisted_rproxy.h2.head import MalformedRequest, requestHead
from twisted_rproxy.h2.hpack import Decoder, Encoder, FieldError, HPACKError
from twisted_rproxy.h2.limits import (
    COMPRESSION_ERROR,
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FLAG_END_STREAM,
    FLOW_CONTROL_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    SETTING_ENABLE_PUSH,
    SETTING_INITIAL_WINDOW_SIZE,
    SETTING_MAX_FRAME_SIZE,
    STREAM_CLOSED,
    H2Limits,
)
from twisted_rproxy.h2.stream import H2StreamChannel

_log = Logger()

#: The largest flow-control window (RFC 9113 section 6.9.1).
MAX_WINDOW = 2**31 - 1

#: How many closed streams are remembered: the frames the client sent on a
#: stream the proxy reset, before it learnt of it, are ignored; a HEADERS
#: frame on another closed stream is a STREAM_CLOSED error, on a stream
#: never opened a PROTOCOL_ERROR.
_CLOSED_KEPT = 256


class ConnectionState(ABC):
    """
    The streams and windows of one connection, and the frames it queues.

    @ivar limits: What the connection accepts.
    @ivar streams: The open streams, by identifier.
    @ivar sendWindow: The connection's window for what the proxy sends.
    @ivar maxFrameSize: The largest frame the client takes.
    """

    sendWindow = 65535
    maxFrameSize = 16384
    _closed = False
    _goAwaySent = False
    _lastStreamID = MAX_WINDOW
    _highest = 0
    _initialWindow = 65535
    _settingsAcked = False
    _lastActivity = 0.0

    def __init__(self, limits: H2Limits) -> None:
        self.limits = limits
        self.streams: dict[int, H2StreamChannel] = {}
        self._dirty: dict[H2StreamChannel, None] = {}
        self._scanner = FrameScanner(limits)
        self._out: list[bytes] = []
        self._recent: dict[int, bool] = {}
        # Room beyond the advertised header list size, so that a list past
        # it is answered with 431; past this the client is a flood.
        self._decoder = Decoder(4096, 4 * limits.maxHeaderListSize + 4096)
        self._encoder = Encoder()
        self._recvWindow = self._connectionWindow = max(limits.connectionWindow, 65535)
        self._connAck = 0

    # What the connection (the Twisted side) provides.

    @abstractmethod
    def scheduleFlush(self) -> None:
        """
        Write what is queued at the end of this turn.
        """

    @abstractmethod
    def _armTimer(self, delay: float) -> None:
        """
        Make sure the timeouts are checked within C{delay} seconds.
        """

    def _wakePending(self) -> None:
        for stream in self.streams.values():
            if stream.hasPending:
                self._dirty[stream] = None

    # --- the frames ------------------------------------------------------------

    def _headersFrame(
        self, streamID: int, flags: int, block: bytes, selfDependent: int
    ) -> None:
        bad: Exception | None = None
        try:
            fields = self._decoder.decode(block)
        except HPACKError as e:
            raise FrameError(COMPRESSION_ERROR, str(e)) from None
        except FieldError as e:
            fields = []
            bad = e
        ended = bool(flags & FLAG_END_STREAM)
        stream = self.streams.get(streamID)
        if stream is not None:
            # Trailers: taken as the request's end (their fields are not
            # forwarded).
            declared = stream.declaredLength
            if stream.remoteClosed:
                self._streamError(streamID, STREAM_CLOSED)
            elif (
                not ended
                or bad is not None
                or any(n[:1] == b":" for n, _ in fields)
                or (declared is not None and declared != stream.receivedLength)
            ):
                self._streamError(streamID, PROTOCOL_ERROR)
            else:
                self._remoteEnd(stream)
            return
        if streamID <= self._highest:
            resetByProxy = self._recent.get(streamID)
            if resetByProxy:
                return
            if resetByProxy is None:
                raise FrameError(PROTOCOL_ERROR, "a stream identifier going back")
            raise FrameError(STREAM_CLOSED, "HEADERS on a closed stream")
        if not streamID & 1:
            raise FrameError(PROTOCOL_ERROR, "a stream of even identifier")
        self._highest = streamID
        if self._goAwaySent and streamID > self._lastStreamID:
            # After our GOAWAY: the client retries it elsewhere.
            self.resetStream(streamID, REFUSED_STREAM)
            return
        if bad is None and not selfDependent:
            try:
                head = requestHead(fields)
            except MalformedRequest as e:
                bad = e
        if bad is not None or selfDependent:
            _log.debug(
                "HTTP/2: malformed request on stream {id}: {why}", id=streamID, why=bad
            )
            self.resetStream(streamID, PROTOCOL_ERROR)
            return
        if len(self.streams) >= self.limits.maxConcurrentStreams:
            self.resetStream(streamID, REFUSED_STREAM)
            if self._scanner.guard.resets.hit(self._lastActivity):
                raise FrameError(ENHANCE_YOUR_CALM, "streams refused")
            return
        stream = H2StreamChannel(streamID, self)  # type: ignore[arg-type]
        stream.sendWindow = self._initialWindow
        stream.recvWindow = self._streamWindow()
        stream.remoteClosed = ended
        stream.declaredLength = head.length(ended)
        self.streams[streamID] = stream
        try:
            stream.receiveHead(head, ended)
        except Exception:
            _log.failure("HTTP/2: the request of stream {id} failed", id=streamID)
            stream.abortConnection()
            return
        if not ended:
            limits = self.limits
            if limits.bodyTimeout:
                self._armTimer(limits.bodyTimeout)
            if limits.minBodyRate:
                self._armTimer(limits.minBodyRateGrace)

    def _streamWindow(self) -> int:
        """
        What a new stream may receive: the advertised window, or the
        default while the client may not have read the proxy's SETTINGS.
        """
        window = self.limits.initialWindowSize
        return window if self._settingsAcked else max(window, 65535)

    def _dataFrame(self, streamID: int, flags: int, data: bytes, length: int) -> None:
        if length:
            self._recvWindow -= length
            if self._recvWindow < 0:
                raise FrameError(FLOW_CONTROL_ERROR, "past the connection's window")
            # Given back at once: each stream's own window holds its body
            # back.
            self._connAck += length
        stream = self.streams.get(streamID)
        if stream is None:
            if streamID > self._highest:
                raise FrameError(PROTOCOL_ERROR, "DATA on an idle stream")
            if not self._recent.get(streamID):
                self.resetStream(streamID, STREAM_CLOSED)
            return
        if stream.remoteClosed:
            self._streamError(streamID, STREAM_CLOSED)
            return
        stream.recvWindow -= length
        if stream.recvWindow < 0:
            self._streamError(streamID, FLOW_CONTROL_ERROR)
            return
        received = stream.receivedLength = stream.receivedLength + len(data)
        declared = stream.declaredLength
        ended = flags & FLAG_END_STREAM
        if declared is not None and (
            received > declared or (ended and received != declared)
        ):
            # RFC 9113 section 8.1.1: a body of another length than
            # declared is malformed.
            self._streamError(streamID, PROTOCOL_ERROR)
            return
        if ended:
            stream.remoteClosed = True
        if length:
            stream.receiveData(data, length)
        if ended:
            stream.receiveEnd()

    def _remoteEnd(self, stream: H2StreamChannel) -> None:
        stream.remoteClosed = True
        stream.receiveEnd()

    def _windowUpdate(self, streamID: int, payload: bytes) -> None:
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if not streamID:
            if not increment:
                raise FrameError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.sendWindow += increment
            if self.sendWindow > MAX_WINDOW:
                raise FrameError(FLOW_CONTROL_ERROR, "connection window too large")
            self._wakePending()
            return
        stream = self.streams.get(streamID)
        if stream is None:
            if streamID > self._highest:
                raise FrameError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if not increment:
            self._streamError(streamID, PROTOCOL_ERROR)
            return
        stream.sendWindow += increment
        if stream.sendWindow > MAX_WINDOW:
            self._streamError(streamID, FLOW_CONTROL_ERROR)
        elif stream.hasPending:
            self._dirty[stream] = None

    def _settings(self, flags: int, payload: bytes) -> None:
        if flags & FLAG_ACK:
            self._settingsAcked = True
            return
        for offset in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, offset)
            if key == SETTING_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise FrameError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self._initialWindow
                self._initialWindow = value
                for stream in self.streams.values():
                    # RFC 9113 section 6.9.2: windows may go negative.
                    stream.sendWindow += delta
                    if stream.sendWindow > MAX_WINDOW:
                        raise FrameError(FLOW_CONTROL_ERROR, "a window too large")
                self._wakePending()
            elif key == SETTING_MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise FrameError(PROTOCOL_ERROR, f"max frame size {value}")
                self.maxFrameSize = value
            elif key == SETTING_ENABLE_PUSH and value > 1:
                raise FrameError(PROTOCOL_ERROR, f"enable push {value}")
            # The header table's size needs nothing: the encoder has no
            # dynamic table. The others do not concern a server.
        self._out.append(SETTINGS_ACK)

    def _streamError(self, streamID: int, code: int) -> None:
        """
        Reset a stream for what the client sent on it.
        """
        stream = self.streams.get(streamID)
        if stream is not None:
            stream.abortConnection(code)
        else:
            self.resetStream(streamID, code)

    # --- what the streams call ---------------------------------------------

    def sendHeaders(
        self, stream: H2StreamChannel, fields: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        """
        Queue a stream's header block.
        """
        block = self._encoder.encode(fields)
        self._out.append(headersFrames(stream.streamID, block, end, self.maxFrameSize))

    def sendData(self, stream: H2StreamChannel, data: bytes, end: bool) -> None:
        """
        Queue a C{DATA} frame of a stream (within its windows, and the
        peer's frame size: the stream sees to it, L{window}).
        """
        size = len(data)
        self._out.append(
            frameHead(size, DATA, FLAG_END_STREAM if end else 0, stream.streamID)
        )
        if size:
            self._out.append(data)
            self.sendWindow -= size
            stream.sendWindow -= size

    def window(self, stream: H2StreamChannel) -> int:
        """
        How much of a stream's body may be sent now.
        """
        return min(self.sendWindow, stream.sendWindow)

    def resetStream(self, streamID: int, code: int) -> None:
        """
        Queue an C{RST_STREAM}; what the client sent on the stream before
        it learnt of it is ignored.
        """
        self._out.append(resetFrame(streamID, code))
        self._remember(streamID, True)

    def _remember(self, streamID: int, resetByProxy: bool) -> None:
        recent = self._recent
        if recent.get(streamID):
            return
        recent[streamID] = resetByProxy
        if len(recent) > _CLOSED_KEPT:
            del recent[next(iter(recent))]

    def acknowledge(self, stream: H2StreamChannel, length: int) -> None:
        """
        A stream's request body took C{length} more bytes: open its window
        by as much, in a C{WINDOW_UPDATE} once half of it is to give back.
        """
        if stream.remoteClosed or self._closed:
            return
        pending = stream.unacknowledged = stream.unacknowledged + length
        if pending >= self.limits.initialWindowSize // 2:
            stream.unacknowledged = 0
            stream.recvWindow += pending
            self._out.append(windowUpdateFrame(stream.streamID, pending))
            self.scheduleFlush()
