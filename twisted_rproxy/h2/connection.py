"""
L{H2ServerConnection}: the proxy's HTTP/2 server protocol, one object per
connection, on the C{h2} library's state machine.

Each read goes through the L{FrameScanner} (flood bounds, and the checks
C{h2} does not make as RFC 9113 says) before C{h2} sees it; C{h2}'s events
go to the streams (L{H2StreamChannel}). What C{h2} queues is written once
per read or per reactor turn, after the streams handed it their heads and
bodies (L{H2StreamChannel.sendPending}): a response head with a small body
is one C{send}.

Every connection error ends in a C{GOAWAY} with its code, then the
connection is closed. A graceful stop (L{H2ServerConnection.closeIfIdle})
sends C{GOAWAY(NO_ERROR)} with the last stream taken, and closes once the
open streams are done.
"""

from __future__ import annotations

import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes, Settings
from twisted.internet.interfaces import IDelayedCall, IPushProducer, ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy._twisted import writeThrough
from twisted_rproxy.h2.frames import (
    GOAWAY_HEAD,
    PREFACE,
    FrameError,
    FrameScanner,
    errorCode,
    goAwayFrame,
    settingsFrame,
)
from twisted_rproxy.h2.limits import (
    ENHANCE_YOUR_CALM,
    INTERNAL_ERROR,
    NO_ERROR,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    H2Limits,
)
from twisted_rproxy.h2.stream import H2StreamChannel
from twisted_rproxy.hardening import bodyRateDeadline

_log = Logger()


@implementer(IPushProducer)
class H2ServerConnection(Protocol):
    """
    One HTTP/2 connection: feeds C{h2}, makes an L{H2StreamChannel} (and
    its request) per stream, writes what C{h2} queues once per read or
    turn, enforces L{H2Limits}, and stops gracefully (L{closeIfIdle}).

    @ivar h2: The C{h2} state machine.
    @ivar limits: What the connection accepts.
    @ivar site: The site whose requests the streams make.
    @ivar writePaused: Whether the transport asked for no more data for
        now (the streams keep their bodies, and pause their producers).
    @ivar streams: The open streams, by identifier.
    """

    # A TCP or TLS transport (ITransport declares neither producers nor
    # abortConnection).
    transport: Any
    writePaused = False
    _closed = False
    _inRead = False
    _flushCall: IDelayedCall | None = None
    _timer: IDelayedCall | None = None
    _timerAt = 0.0
    _goAwaySent = False
    _closing = False
    _lastStreamID = 2**31 - 1
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
        self._pending = b""
        self._prefix = b""
        reactor = site.reactor
        self.seconds = reactor.seconds
        self._callLater = reactor.callLater
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        h2 = self.h2 = H2Connection(config=config)
        # What h2 enforces: room beyond what is advertised, so that the
        # proxy refuses a stream past the limit itself (REFUSED_STREAM,
        # where h2 would end the connection) and answers a header list
        # past its size with 431; past these the client is a flood.
        hardHeaderList = 4 * limits.maxHeaderListSize + 4096
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: 2 * limits.maxConcurrentStreams
                + 16,
                SettingCodes.MAX_HEADER_LIST_SIZE: hardHeaderList,
                SettingCodes.INITIAL_WINDOW_SIZE: limits.initialWindowSize,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        h2.decoder.max_header_list_size = hardHeaderList
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
        h2 = self.h2
        h2.initiate_connection()
        # h2's SETTINGS would advertise its enforcement values: ours instead.
        h2.data_to_send()
        settings = [
            (SettingCodes.MAX_CONCURRENT_STREAMS, limits.maxConcurrentStreams),
            (SettingCodes.MAX_HEADER_LIST_SIZE, limits.maxHeaderListSize),
        ]
        if limits.initialWindowSize != 65535:
            settings.append(
                (SettingCodes.INITIAL_WINDOW_SIZE, limits.initialWindowSize)
            )
        increase = limits.connectionWindow - 65535
        if increase > 0:
            h2.increment_flow_control_window(increase)
        return settingsFrame(settings) + h2.data_to_send()

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._lastActivity = self.seconds()
        self._inRead = True
        try:
            self._receive(data)
        finally:
            self._inRead = False
        if not self._closed:
            self._flush()

    def _receive(self, data: bytes) -> None:
        head = b""
        expected = self._preface
        if expected is not None:
            n = min(len(expected), len(data))
            if data[:n] != expected[:n]:
                self._goAway(PROTOCOL_ERROR)
                return
            rest = expected[n:]
            if rest:
                self._preface = rest
                return
            self._preface = None
            self._prefix += self._serverPreface()
            head, data = PREFACE, data[n:]
        scanner = self._scanner
        try:
            feed = scanner.scan(data, self._lastActivity)
        except FrameError as e:
            _log.info(
                "HTTP/2: connection error {code} from {peer}: {why}",
                code=e.code,
                peer=self.getPeer(),
                why=str(e),
            )
            self._goAway(e.code)
            return
        if scanner.inBlock:
            self._armTimer(self.limits.headerTimeout)
        if head:
            feed = head + feed
        if feed:
            try:
                events = self.h2.receive_data(feed)
            except H2Error as e:
                self._h2Failed(e)
                return
            except Exception:
                _log.failure("HTTP/2: h2 failed on what a client sent")
                self._goAway(INTERNAL_ERROR)
                return
            self._dispatch(events)
        if scanner.peerGoingAway and not self.streams:
            self._closeWhenFlushed()

    def _dispatch(self, events: list[Any]) -> None:
        streams = self.streams
        for event in events:
            if self._closed:
                return
            kind = type(event)
            if kind is RequestReceived:
                self._requestReceived(event)
            elif kind is DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.receiveData(event.data, event.flow_controlled_length)
                elif event.flow_controlled_length:
                    # A stream refused or done: the connection's window.
                    self._acknowledge(event.flow_controlled_length, event.stream_id)
            elif kind is StreamEnded:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.receiveEnd()
            elif kind is StreamReset:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream.peerReset()
            elif kind is WindowUpdated:
                if event.stream_id:
                    stream = streams.get(event.stream_id)
                    if stream is not None and stream.hasPending:
                        self._dirty[stream] = None
                else:
                    self._wakePending()
            elif kind is RemoteSettingsChanged:
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    self._wakePending()
            elif kind is ConnectionTerminated:  # pragma: no cover
                # Taken out by _scan; h2 sends none itself.
                self._closeNow()

    def _acknowledge(self, length: int, streamID: int) -> None:
        try:
            self.h2.acknowledge_received_data(length, streamID)
        except H2Error:
            pass

    def _requestReceived(self, event: RequestReceived) -> None:
        streamID = event.stream_id
        headers = event.headers or []
        if self._goAwaySent and streamID > self._lastStreamID:
            # After our GOAWAY: the client retries it elsewhere.
            self._resetStream(streamID, REFUSED_STREAM)
            return
        if len(self.streams) >= self.limits.maxConcurrentStreams:
            self._resetStream(streamID, REFUSED_STREAM)
            if self._scanner.guard.resets.hit(self._lastActivity):
                self._goAway(ENHANCE_YOUR_CALM)
            return
        for name, _ in headers:
            if name[:1] != b":":
                break
            if name == b":protocol":
                # Extended CONNECT (RFC 8441: WebSocket over HTTP/2) is not
                # offered (no SETTINGS_ENABLE_CONNECT_PROTOCOL): a
                # malformed request (RFC 9113 section 8.1.1).
                self._resetStream(streamID, PROTOCOL_ERROR)
                return
        stream = H2StreamChannel(streamID, self)
        self.streams[streamID] = stream
        ended = event.stream_ended is not None
        try:
            stream.receiveHead(headers, ended)
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

    def _resetStream(self, streamID: int, code: int) -> None:
        try:
            self.h2.reset_stream(streamID, code)
        except H2Error:
            pass

    def _wakePending(self) -> None:
        for stream in self.streams.values():
            if stream.hasPending:
                self._dirty[stream] = None

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
        Let the streams with something to send hand it to C{h2}, then write
        all C{h2} queued (and the proxy's own frames before it) at once.
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
        data = self.h2.data_to_send()
        prefix = self._prefix
        if prefix:
            self._prefix = b""
            data = prefix + data
        if data:
            writeThrough(transport, data)
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
            data = self._prefix + self.h2.data_to_send()
            self._prefix = b""
            last = self.h2.highest_inbound_stream_id
            transport.write(data + goAwayFrame(last, code))
        self._closeNow()

    def _h2Failed(self, error: H2Error) -> None:
        """
        C{h2} found a connection error in what the client sent and queued
        its C{GOAWAY}: send it with the right code, and close.
        """
        code = errorCode(error)
        _log.debug("HTTP/2 connection error {code}: {error}", code=code, error=error)
        data = self._prefix + self.h2.data_to_send()
        self._prefix = b""
        if data[-17:-8] == GOAWAY_HEAD:
            data = data[:-4] + struct.pack(">I", code)
        else:
            data += goAwayFrame(self.h2.highest_inbound_stream_id, code)
        if self.transport is not None:
            self.transport.write(data)
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
            self._lastStreamID = self.h2.highest_inbound_stream_id
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
