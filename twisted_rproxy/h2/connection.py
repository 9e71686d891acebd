"""
L{H2ServerConnection}: the proxy's HTTP/2 server protocol (RFC 9113), one
object per connection.

Each read goes through the L{FrameScanner} (sizes, flood bounds, header
blocks joined); each frame then acts on the connection or its stream
(L{ConnectionState}: header blocks decoded and checked, bodies counted
against the windows, streams made), and what is queued
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

from typing import Any

from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy._twisted import writeBatched
from twisted_rproxy.h2.frames import (
    PREFACE,
    FrameError,
    goAwayFrame,
    pingAck,
    settingsFrame,
    windowUpdateFrame,
)
from twisted_rproxy.h2.limits import (
    DATA,
    ENHANCE_YOUR_CALM,
    FLAG_ACK,
    FRAME_SIZE_ERROR,
    HEADERS,
    INTERNAL_ERROR,
    NO_ERROR,
    PING,
    PRIORITY,
    PROTOCOL_ERROR,
    RST_STREAM,
    SETTING_INITIAL_WINDOW_SIZE,
    SETTING_MAX_CONCURRENT_STREAMS,
    SETTING_MAX_HEADER_LIST_SIZE,
    SETTINGS,
    WINDOW_UPDATE,
    H2Limits,
)
from twisted_rproxy.h2.state import MAX_WINDOW, ConnectionState
from twisted_rproxy.h2.stream import H2StreamChannel
from twisted_rproxy.hardening import bodyRateDeadline

_log = Logger()


@implementer(IPushProducer)
class H2ServerConnection(ConnectionState, Protocol):
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
    _inRead = False
    _flushCall: IDelayedCall | None = None
    _timer: IDelayedCall | None = None
    _timerAt = 0.0
    _closing = False
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
        ConnectionState.__init__(self, limits)
        self.site = site
        self.trustedProxies = trustedProxies
        self._preface: bytes | None = PREFACE
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
            (SETTING_MAX_CONCURRENT_STREAMS, limits.maxConcurrentStreams),
            (SETTING_MAX_HEADER_LIST_SIZE, limits.maxHeaderListSize),
        ]
        if limits.initialWindowSize != 65535:
            settings.append((SETTING_INITIAL_WINDOW_SIZE, limits.initialWindowSize))
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

    # --- what the streams call ---------------------------------------------

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
            writeBatched(transport, out[0] if len(out) == 1 else b"".join(out))
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
                    due = stream.lastData + bodyTimeout if bodyTimeout else None
                    if minBodyRate:
                        slow = bodyRateDeadline(
                            stream.bodyStart,
                            stream.bodyReceived,
                            minBodyRate,
                            limits.minBodyRateGrace,
                        )
                        if due is None or slow < due:
                            due = slow
                    assert due is not None
                    if now >= due:
                        stream.bodyTooSlow()
                    else:
                        deadlines.append(due)
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
