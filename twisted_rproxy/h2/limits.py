"""
The limits of an HTTP/2 connection (L{H2Limits}) and the counters of the
known floods (L{FloodCounter}, L{FloodGuard}): plain data and arithmetic,
fed the frame types and times by L{twisted_rproxy.h2.connection}.

The floods are those of the HTTP/2 advisories: rapid reset
(CVE-2023-44487: streams opened and reset at once, each costing the server
a request), and SETTINGS, PING, empty DATA, PRIORITY and CONTINUATION
frames (CVE-2019-9512 to 9518, CVE-2024-27316): each cheap to send and
answered or buffered by the server. Past its bound a connection gets
C{GOAWAY(ENHANCE_YOUR_CALM)} and is closed.
"""

from __future__ import annotations

from attrs import define, field, frozen

#: HTTP/2 frame types (RFC 9113 section 6).
DATA = 0
HEADERS = 1
PRIORITY = 2
RST_STREAM = 3
SETTINGS = 4
PUSH_PROMISE = 5
PING = 6
GOAWAY = 7
WINDOW_UPDATE = 8
CONTINUATION = 9

#: The SETTINGS identifiers the proxy sends or reads (RFC 9113 section
#: 6.5.2).
SETTING_ENABLE_PUSH = 0x2
SETTING_MAX_CONCURRENT_STREAMS = 0x3
SETTING_INITIAL_WINDOW_SIZE = 0x4
SETTING_MAX_FRAME_SIZE = 0x5
SETTING_MAX_HEADER_LIST_SIZE = 0x6

#: Frame flags.
FLAG_ACK = 0x1
FLAG_END_STREAM = 0x1
FLAG_END_HEADERS = 0x4

#: The HTTP/2 error codes the connection sends (RFC 9113 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB


@frozen
class H2Limits:
    """
    What an HTTP/2 connection accepts of a client: the counterparts of the
    C{[server]} limits on HTTP/1.1, and the bounds of the floods.

    @ivar maxConcurrentStreams: Streams open at once
        (C{SETTINGS_MAX_CONCURRENT_STREAMS}); one more is refused with
        C{REFUSED_STREAM}.
    @ivar maxHeaderListSize: The largest header list of a request, as RFC
        9113 counts it (names, values and 32 bytes per field;
        C{SETTINGS_MAX_HEADER_LIST_SIZE}); past it the stream gets a 431.
    @ivar maxHeaders: The most header fields of a request (431 past it).
    @ivar maxRequestLine: The longest method and target (414 past it).
    @ivar initialWindowSize: The receive window of each stream
        (C{SETTINGS_INITIAL_WINDOW_SIZE}): how much of a request body the
        client may send ahead of the backend.
    @ivar idleTimeout: Seconds a connection without open streams is kept;
        0 for no limit.
    @ivar headerTimeout: Seconds a client has to send the connection
        preface, and to finish a header block once started; 0 for no
        limit.
    @ivar bodyTimeout: Seconds a request body may go without a byte while
        the proxy reads it; 0 for no limit.
    @ivar minBodyRate: The slowest average rate, in bytes per second, of a
        request body once C{minBodyRateGrace} has passed (as on HTTP/1.1,
        L{twisted_rproxy.hardening.bodyRateDeadline}); 0 for no limit. The
        time the body is paused by its backend does not count.
    @ivar minBodyRateGrace: Seconds a body has before its rate counts.
    @ivar floodPeriod: The seconds over which the frames of each flood are
        counted.
    @ivar maxResets: Streams the client may reset (or have refused) per
        period.
    @ivar maxSettings: SETTINGS frames (not acknowledgements) per period.
    @ivar maxPings: PING frames (not acknowledgements) per period.
    @ivar maxEmptyData: DATA frames without data nor C{END_STREAM} per
        period.
    @ivar maxPriority: PRIORITY frames per period.
    @ivar maxContinuations: CONTINUATION frames in one header block.
    """

    maxConcurrentStreams: int = 100
    maxHeaderListSize: int = 16384
    maxHeaders: int = 100
    maxRequestLine: int = 8192
    initialWindowSize: int = 65535
    idleTimeout: float = 60.0
    headerTimeout: float = 10.0
    bodyTimeout: float = 30.0
    minBodyRate: float = 0.0
    minBodyRateGrace: float = 0.0
    floodPeriod: float = 10.0
    maxResets: int = 200
    maxSettings: int = 50
    maxPings: int = 50
    maxEmptyData: int = 100
    maxPriority: int = 1000
    maxContinuations: int = 32

    @property
    def maxHeaderBlock(self) -> int:
        """
        The most bytes of one compressed header block (its HEADERS and
        CONTINUATION frames): Huffman coding never makes a field much
        longer than twice its size, so a block past this is a flood.
        """
        return 2 * self.maxHeaderListSize + 1024

    @property
    def connectionWindow(self) -> int:
        """
        The receive window of the connection: room for every stream's own
        window, so that one stream whose backend is slow (its window not
        reopened) does not stop the others; at most 16 MiB.
        """
        return min(self.maxConcurrentStreams * self.initialWindowSize, 2**24)


@define
class FloodCounter:
    """
    How many frames of one kind arrived in the current period.

    @ivar limit: How many are accepted per period.
    @ivar period: Its length in seconds.
    """

    limit: int
    period: float
    _count: int = 0
    _since: float = field(default=-1.0e18)

    def hit(self, now: float) -> bool:
        """
        Count one more frame, arrived at C{now}.

        @return: Whether the limit is passed.
        """
        if now - self._since >= self.period:
            self._since = now
            self._count = 0
        self._count += 1
        return self._count > self.limit


class FloodGuard:
    """
    The flood counters of one connection, by frame type.
    """

    def __init__(self, limits: H2Limits) -> None:
        period = limits.floodPeriod
        self.resets = FloodCounter(limits.maxResets, period)
        self._byType = {
            SETTINGS: FloodCounter(limits.maxSettings, period),
            PING: FloodCounter(limits.maxPings, period),
            DATA: FloodCounter(limits.maxEmptyData, period),
            PRIORITY: FloodCounter(limits.maxPriority, period),
            RST_STREAM: self.resets,
        }

    def frame(self, kind: int, flags: int, length: int, now: float) -> bool:
        """
        Count a frame the client sent, if it is of a kind that floods.

        @param kind: Its type.
        @param flags: Its flags.
        @param length: Its payload's length.
        @param now: When it arrived.
        @return: Whether the connection passed a bound.
        """
        if kind == DATA:
            if length or flags & FLAG_END_STREAM:
                return False
        elif kind in (SETTINGS, PING):
            if flags & FLAG_ACK:
                return False
        counter = self._byType.get(kind)
        return counter is not None and counter.hit(now)
