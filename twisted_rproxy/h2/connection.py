"""
L{H2ServerConnection}: the proxy's HTTP/2 server protocol (RFC 9113), one
object per connection.

Each read goes through the L{FrameScanner} (sizes, flood bounds, header
blocks joined); each frame then acts on the connection or its stream
(L{H2StreamChannel}): header blocks are decoded (L{Decoder}) and checked
(L{requestHead}), bodies counted against the windows, and what is queued
(answers to SETTINGS and PING, WINDOW_UPDATEs, the streams' heads and
bodies, L{H2StreamChannel.sendPending}) is written once per read or per
reactor turn: a response head with a small body is one C{send}.

What the client sent wrong is answered as RFC 9113 says: a stream error
with C{RST_STREAM} (the request, if any, is lost), a connection error with
C{GOAWAY} and its code, then the close. A graceful stop
(L{H2ServerConnection.closeIfIdle}) sends C{GOAWAY(NO_ERROR)} with the
last stream taken, and closes once the open streams are done.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy._twisted import writeThrough
from twisted_rproxy.h2.frames import (
    PREFACE,
    SETTINGS_ACK,
    FrameError,
    FrameScanner,
    frameHead,
    goAwayFrame,
    headersFrames,
    pingAck,
    resetFrame,
    settingsFrame,
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
    FRAME_SIZE_ERROR,
    HEADERS,
    INTERNAL_ERROR,
    NO_ERROR,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    STREAM_CLOSED,
    WINDOW_UPDATE,
    H2Limits,
)
from twisted_rproxy.h2.stream import H2StreamChannel
from twisted_rproxy.hardening import bodyRateDeadline

_log = Logger()

#: The largest flow-control window (RFC 9113 section 6.9.1).
MAX_WINDOW = 2**31 - 1

#: The SETTINGS identifiers the proxy reads (RFC 9113 section 6.5.2).
_ENABLE_PUSH = 0x2
_MAX_CONCURRENT_STREAMS = 0x3
_INITIAL_WINDOW_SIZE = 0x4
_MAX_FRAME_SIZE = 0x5
_MAX_HEADER_LIST_SIZE = 0x6

#: How many closed streams are remembered: the frames the client sent on a
#: stream the proxy reset, before it learnt of it, are ignored; a HEADERS
#: frame on another closed stream is a STREAM_CLOSED error, on a stream
#: never opened a PROTOCOL_ERROR.
_CLOSED_KEPT = 256


@implementer(IPushProducer)
class H2ServerConnection(Protocol):
    """
    One HTTP/2 connection: reads its frames, makes an L{H2StreamChannel}
    (and its request) per stream, writes what is queued once per read or
    turn, enforces L{H2Limits}, and stops gracefully (L{closeIfIdle}).

    @ivar limits: What the connection accepts.
    @ivar site: The site whose requests the streams make.
    @ivar writePaused: Whether the transport asked for no more data for
        now (the streams keep their bodies, and pause their producers).
    @ivar streams: The open streams, by identifier.
    @ivar sendWindow: The connection's window for what the proxy sends.
    @ivar maxFrameSize: The largest frame the client takes.
    """

    # A TCP or TLS transport (ITransport declares neither producers nor
    # abortConnection).
    transport: Any
    writePaused = False
    sendWindow = 65535
    maxFrameSize = 16384
    _closed = False
    _inRead = False
    _flushCall: IDelayedCall | None = None
    _timer: IDelayedCall | None = None
    _timerAt = 0.0
    _goAwaySent = False
    _closing = False
    _lastStreamID = MAX_WINDOW
    _highest = 0
    _initialWindow = 65535
    _settingsAcked = False
    _connectedAt = 0.0
    _peer: Any = None
    _host: Any = None
    _secure: bool | None = None

    def __init__(
        self,
        site: Any,
        limits: H2Limits,
        trustedProxies: tuple[Any, ...] = (),
    ) -> None:
        self.site = site
        self.limits = limits
        self.trustedProxies = trustedProxies
        self.streams: dict[int, H2StreamChannel] = {}
        self._dirty: dict[H2StreamChannel, None] = {}
        self._scanner = FrameScanner(limits)
        self._preface: bytes | None = PREFACE
        self._out: list[bytes] = []
        self._recent: dict[int, bool] = {}
        # Room beyond the advertised header list size, so that a list past
        # it is answered with 431; past this the client is a flood.
        self._decoder = Decoder(4096, 4 * limits.maxHeaderListSize + 4096)
        self._encoder = Encoder()
        self._recvWindow = self._connectionWindow = max(limits.connectionWindow, 65535)
        self._connAck = 0
        reactor = site.reactor
        self.seconds = reactor.seconds
        self._callLater = reactor.callLater
        self._lastActivity = self.seconds()

    # --- the protocol ------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.registerProducer(self, True)
        self._lastActivity = self._connectedAt = self.seconds()
        limits = self.limits
        first = [t for t in (limits.headerTimeout, limits.idleTimeout) if t > 0]
        if first:
            self._armTimer(min(first))

    def _serverPreface(self) -> bytes:
        """
        The proxy's SETTINGS (what is advertised), and the connection
        window's increase.
        """
        limits = self.limits
        settings = [
            (_MAX_CONCURRENT_STREAMS, limits.maxConcurrentStreams),
            (_MAX_HEADER_LIST_SIZE, limits.maxHeaderListSize),
        ]
        if limits.initialWindowSize != 65535:
            settings.append((_INITIAL_WINDOW_SIZE, limits.initialWindowSize))
        preface = settingsFrame(settings)
        increase = self._connectionWindow - 65535
        if increase > 0:
            preface += windowUpdateFrame(0, increase)
        return preface

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._lastActivity = self.seconds()
        self._inRead = True
        try:
            self._receive(data)
        except FrameError as e:
            _log.info(
                "HTTP/2: connection error {code} from {peer}: {why}",
                code=e.code,
                peer=self.getPeer(),
                why=str(e),
            )
            self._goAway(e.code)
        except Exception:
            _log.failure("HTTP/2: failed on what a client sent")
            self._goAway(INTERNAL_ERROR)
        finally:
            self._inRead = False
        if not self._closed:
            self._flush()

    def _receive(self, data: bytes) -> None:
        expected = self._preface
        if expected is not None:
            n = min(len(expected), len(data))
            if data[:n] != expected[:n]:
                raise FrameError(PROTOCOL_ERROR, "not the HTTP/2 preface")
            rest = expected[n:]
            if rest:
                self._preface = rest
                return
            self._preface = None
            self._out.append(self._serverPreface())
            data = data[n:]
        scanner = self._scanner
        frames = scanner.scan(data, self._lastActivity)
        if scanner.inBlock:
            self._armTimer(self.limits.headerTimeout)
        streams = self.streams
        for kind, flags, streamID, payload, extra in frames:
            if self._closed:
                return
            if kind == HEADERS:
                self._headersFrame(streamID, flags, payload, extra)
            elif kind == DATA:
                self._dataFrame(streamID, flags, payload, extra)
            elif kind == WINDOW_UPDATE:
                self._windowUpdate(streamID, payload)
            elif kind == RST_STREAM:
                stream = streams.get(streamID)
                if stream is not None:
                    stream.peerReset()
                elif streamID > self._highest:
                    raise FrameError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            elif kind == SETTINGS:
                self._settings(flags, payload)
            elif kind == PING:
                if not flags & FLAG_ACK:
                    self._out.append(pingAck(payload))
            elif kind == PRIORITY:
                if len(payload) != 5:
                    self._streamError(streamID, FRAME_SIZE_ERROR)
                elif int.from_bytes(payload[:4], "big") & MAX_WINDOW == streamID:
                    self._streamError(streamID, PROTOCOL_ERROR)
        if self._connAck >= self._connectionWindow // 2:
            self._recvWindow += self._connAck
            self._out.append(windowUpdateFrame(0, self._connAck))
            self._connAck = 0
        if scanner.peerGoingAway and not self.streams:
            self._closeWhenFlushed()

    # --- the frames ----------------------------------------------------------

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
            if stream.remoteClosed:
                self._streamError(streamID, STREAM_CLOSED)
            elif not ended or bad is not None or any(n[:1] == b":" for n, _ in fields):
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
        stream = H2StreamChannel(streamID, self)
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
            if key == _INITIAL_WINDOW_SIZE:
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
            elif key == _MAX_FRAME_SIZE:
                if not 16384 <= value <= 2**24 - 1:
                    raise FrameError(PROTOCOL_ERROR, f"max frame size {value}")
                self.maxFrameSize = value
            elif key == _ENABLE_PUSH and value > 1:
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

    # --- what the streams call ---------------------------------------------

    def _wakePending(self) -> None:
        for stream in self.streams.values():
            if stream.hasPending:
                self._dirty[stream] = None

    def streamChanged(self, stream: H2StreamChannel) -> None:
        self._dirty[stream] = None
        self.scheduleFlush()

    def scheduleFlush(self) -> None:
        if self._inRead or self._flushCall is not None or self._closed:
            return
        self._flushCall = self._callLater(0, self._flush)

    def streamDone(self, stream: H2StreamChannel) -> None:
        if self.streams.get(stream.streamID) is stream:
            del self.streams[stream.streamID]
            self._remember(stream.streamID, False)
        if not self.streams:
            self._lastActivity = self.seconds()
            if self._goAwaySent or self._scanner.peerGoingAway:
                self._closeWhenFlushed()
            elif self.limits.idleTimeout:
                self._armTimer(self.limits.idleTimeout)
        self.scheduleFlush()

    def getPeer(self) -> Any:
        peer = self._peer
        if peer is None and self.transport is not None:
            peer = self._peer = self.transport.getPeer()
        return peer

    def getHost(self) -> Any:
        host = self._host
        if host is None and self.transport is not None:
            host = self._host = self.transport.getHost()
        return host

    def isSecure(self) -> bool:
        secure = self._secure
        if secure is None:
            secure = self._secure = ISSLTransport.providedBy(self.transport)
        return secure

    # --- writing -------------------------------------------------------------

    def _flush(self) -> None:
        """
        Let the streams with something to send queue it, then write all
        that is queued at once.
        """
        call, self._flushCall = self._flushCall, None
        if call is not None and call.active():
            call.cancel()
        transport = self.transport
        if transport is None or self._closed:
            return
        dirty = self._dirty
        if dirty:
            self._dirty = {}
            for stream in dirty:
                stream.sendPending()
        out = self._out
        if out:
            self._out = []
            writeThrough(transport, out[0] if len(out) == 1 else b"".join(out))
        if self._closing and not self.streams:
            self._closeNow()

    def _closeWhenFlushed(self) -> None:
        self._closing = True
        self.scheduleFlush()

    def _closeNow(self) -> None:
        """
        Close the connection once what was written is sent.
        """
        if self._closed:
            return
        self._closed = True
        self._cancelTimers()
        transport = self.transport
        if transport is not None:
            transport.unregisterProducer()
            transport.loseConnection()

    def _goAway(self, code: int) -> None:
        """
        End the connection with C{GOAWAY(code)}: what was queued, the
        C{GOAWAY}, then the close.
        """
        if self._closed:
            return
        transport = self.transport
        if transport is not None:
            self._out.append(goAwayFrame(self._highest, code))
            data = b"".join(self._out)
            self._out = []
            transport.write(data)
        self._closeNow()

    # --- IPushProducer, for the transport ------------------------------------

    def pauseProducing(self) -> None:
        self.writePaused = True

    def resumeProducing(self) -> None:
        self.writePaused = False
        self._wakePending()
        if self._dirty:
            self.scheduleFlush()

    def stopProducing(self) -> None:
        self._closed = True

    # --- timeouts ------------------------------------------------------------

    def _armTimer(self, delay: float) -> None:
        """
        Make sure the timeouts are checked within C{delay} seconds.
        """
        if delay <= 0 or self._closed:
            return
        at = self.seconds() + delay
        timer = self._timer
        if timer is not None:
            if self._timerAt <= at and timer.active():
                return
            if timer.active():
                timer.cancel()
        self._timerAt = at
        self._timer = self._callLater(delay, self._checkTimeouts)

    def _checkTimeouts(self) -> None:
        self._timer = None
        if self._closed:
            return
        now = self.seconds()
        limits = self.limits
        deadlines: list[float] = []
        headerTimeout = limits.headerTimeout
        if headerTimeout and (self._preface is not None or self._scanner.inBlock):
            since = (
                self._connectedAt
                if self._preface is not None
                else self._scanner.blockStart
            )
            if now >= since + headerTimeout:
                self._goAway(
                    ENHANCE_YOUR_CALM if self._scanner.inBlock else PROTOCOL_ERROR
                )
                return
            deadlines.append(since + headerTimeout)
        if not self.streams and limits.idleTimeout:
            deadline = self._lastActivity + limits.idleTimeout
            if now >= deadline:
                self._goAway(NO_ERROR)
                return
            deadlines.append(deadline)
        bodyTimeout = limits.bodyTimeout
        minBodyRate = limits.minBodyRate
        if bodyTimeout or minBodyRate:
            for stream in list(self.streams.values()):
                if stream.receivingBody:
                    deadline = stream.lastData + bodyTimeout if bodyTimeout else None
                    if minBodyRate:
                        slow = bodyRateDeadline(
                            stream.bodyStart,
                            stream.bodyReceived,
                            minBodyRate,
                            limits.minBodyRateGrace,
                        )
                        if deadline is None or slow < deadline:
                            deadline = slow
                    assert deadline is not None
                    if now >= deadline:
                        stream.bodyTooSlow()
                    else:
                        deadlines.append(deadline)
                elif stream.awaitingBody:
                    # Paused by the backend: look again later.
                    deadlines.append(
                        now + (bodyTimeout or limits.minBodyRateGrace or 1.0)
                    )
            self._flush()
        if deadlines and not self._closed:
            self._armTimer(max(min(deadlines) - now, 0.001))

    def _cancelTimers(self) -> None:
        for call in (self._timer, self._flushCall):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._flushCall = None

    # --- graceful stop -------------------------------------------------------

    def isIdle(self) -> bool:
        """
        Whether no stream is open.
        """
        return not self.streams

    def closeIfIdle(self, force: bool = False) -> bool:
        """
        Stop the connection: at once when idle (or with C{force}); else send
        C{GOAWAY} with the last stream taken, and close once those streams
        are done.

        @return: Whether it was closed now.
        """
        transport = self.transport
        if transport is None or self._closed:
            return True
        if force:
            self._closed = True
            self._cancelTimers()
            transport.abortConnection()
            return True
        if not self.streams:
            self._goAway(NO_ERROR)
            return True
        if not self._goAwaySent:
            self._goAwaySent = True
            self._lastStreamID = self._highest
            self._flush()
            transport.write(goAwayFrame(self._lastStreamID, NO_ERROR))
        return False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._cancelTimers()
        streams = list(self.streams.values())
        self.streams.clear()
        self._dirty = {}
        for stream in streams:
            stream.connectionLost(reason)
