"""
L{TimedHTTPChannel}: the clocks of a client connection, under
L{twisted_rproxy.server.ProxyHTTPChannel}: its idle timer, and the time
limits of receiving a request (L{RequestGuard}), the rate of its body
included.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rproxy._twisted import HTTPChannelBase
from twisted_rproxy.hardening import bodyRateDeadline

_log = Logger()


@frozen
class RequestGuard:
    """
    The time limits of receiving a request; 0 for none.

    @ivar headerTimeout: Seconds from a request's first byte to the end of
        its head.
    @ivar bodyTimeout: Seconds its body may go without a byte arriving.
    @ivar requestTimeout: Seconds from its first byte to the end of its
        body.
    @ivar minBodyRate: The slowest average rate, in bytes per second, of
        its body once C{minBodyRateGrace} has passed.
    @ivar minBodyRateGrace: Seconds the body has before its rate counts.
    """

    headerTimeout: float = 0.0
    bodyTimeout: float = 0.0
    requestTimeout: float = 0.0
    minBodyRate: float = 0.0
    minBodyRateGrace: float = 0.0

    def __bool__(self) -> bool:
        return bool(
            self.headerTimeout
            or self.bodyTimeout
            or self.requestTimeout
            or self.minBodyRate
        )


@implementer(IPushProducer)
class _BodyReader:
    """
    The client connection as the producer of a streamed request body:
    pausing it (while no backend takes the body) also stops the clock of
    the body's rate.
    """

    __slots__ = ("channel",)

    def __init__(self, channel: TimedHTTPChannel) -> None:
        self.channel = channel

    def pauseProducing(self) -> None:
        self.channel.pauseBody()

    def resumeProducing(self) -> None:
        self.channel.resumeBody()

    def stopProducing(self) -> None:
        transport = self.channel.transport
        if transport is not None:
            transport.stopProducing()


class IdleSweep:
    """
    The idle timer of a site's HTTP/1.1 connections: while any is open, one
    call every C{tick} seconds closes those idle past their period (see
    L{TimedHTTPChannel.setTimeout}).

    A timer of its own for each connection costs a heap insertion when it
    opens and a cancellation when it closes, for every connection a
    C{Connection: close} request makes; here a connection idles out up to
    C{tick} seconds late instead.

    @ivar connections: The connections, as the site keeps them.
    """

    def __init__(
        self,
        clock: IReactorTime,
        connections: Collection[TimedHTTPChannel],
        tick: float,
    ) -> None:
        self.clock = clock
        self.connections = connections
        self.tick = tick
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """
        Sweep in C{tick} seconds, unless a sweep is due already.
        """
        if self._call is None:
            self._call = self.clock.callLater(self.tick, self._sweep)

    def stop(self) -> None:
        """
        No more sweeps (the site stopped).
        """
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _sweep(self) -> None:
        self._call = None
        now = self.clock.seconds()
        for connection in list(self.connections):
            connection.checkIdle(now)
        if self.connections:
            self.start()


class TimedHTTPChannel(HTTPChannelBase):
    """
    An HTTP/1.1 channel with one idle timer, and the time limits of
    L{requestGuard} on each request it receives.

    A subclass starts the clock of a request (L{requestStart}) as its
    first bytes arrive, calls L{timeRequest} when a read left it
    incomplete and L{startBodyClock} when its body follows its head, and
    answers L{requestTooSlow}.

    @ivar seconds: The reactor's clock (its C{seconds}), once connected.
    @ivar connectedAt: When the connection was made.
    @ivar requestStart: When the request being received started, or
        L{None} between requests.
    @ivar closing: Whether the connection is closing: nothing more the
        client sends is read, and no timer is set.
    """

    # A TCP or TLS transport; ITransport does not declare abortConnection.
    transport: Any
    closing = False
    connectedAt = 0.0
    requestStart: float | None = None

    #: The time limits of receiving a request, or L{None} for none.
    requestGuard: RequestGuard | None = None

    # When the rate of the body being received is measured from (its start,
    # or the end of a pause), and how much of it had arrived then; None
    # while no body is being received.
    _bodyStart: float | None = None
    _bodyBase = 0
    _bodyPaused = False
    _guardCall: Any = None

    # The idle timeout. twisted.web's channel cancels its timer when a
    # request arrives and makes a new one when it is done: two heap
    # operations per request. Here one timer is kept, and checks the time of
    # the last activity when it fires.
    _idleCall: Any = None
    _idlePeriod: float | None = None
    _lastActivity = 0.0

    #: The site's sweep of idle connections, which this one is in; without
    #: one, the connection keeps a timer of its own.
    idleSweep: IdleSweep | None = None

    def connectionMade(self) -> None:
        self.seconds = self.factory.reactor.seconds
        self.connectedAt = self.seconds()
        HTTPChannelBase.connectionMade(self)

    def setTimeout(self, period: float | None) -> float | None:
        previous = self._idlePeriod
        self._idlePeriod = period
        # Twisted declares timeOut an int; a period may have a fraction.
        self.timeOut = period  # type: ignore[assignment]
        if period is not None:
            self._lastActivity = self.seconds()
            sweep = self.idleSweep
            if sweep is not None:
                sweep.start()
            elif self._idleCall is None:
                self._idleCall = self.callLater(period, self._checkIdle)
        return previous

    def checkIdle(self, now: float) -> None:
        """
        Time the connection out if it has been idle for its period at
        C{now} (the L{IdleSweep}'s check).
        """
        period = self._idlePeriod
        if period is not None and now - self._lastActivity >= period:
            self._idlePeriod = None
            self.timeoutConnection()

    def resetTimeout(self) -> None:
        if self._idlePeriod is not None:
            self._lastActivity = self.seconds()

    def _checkIdle(self) -> None:
        self._idleCall = None
        period = self._idlePeriod
        if period is None:
            return
        idle = self.seconds() - self._lastActivity
        if idle < period:
            self._idleCall = self.callLater(period - idle, self._checkIdle)
        else:
            self.timeoutConnection()

    def stopIdleTimer(self) -> None:
        """
        Cancel the idle timer for good (the connection is closed, or was
        handed over to HTTP/2 or to a tunnel), and the time limits of the
        request being received.
        """
        self._idlePeriod = None
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()
        self.stopRequestClock()
        self._cancelGuard()

    def stopRequestClock(self) -> None:
        """
        The request being received is in (or abandoned): its time limits
        no longer run.
        """
        self.requestStart = None
        self._bodyStart = None

    def _cancelGuard(self) -> None:
        guard, self._guardCall = self._guardCall, None
        if guard is not None and guard.active():
            guard.cancel()

    def requestTooSlow(self) -> None:
        """
        The request being received passed one of its time limits: close
        (a subclass answers it first).
        """
        self.closing = True
        self.transport.abortConnection()

    def timeRequest(self, guard: RequestGuard) -> None:
        """
        Time the request being received, unless it is already: its head must
        be in within the header timeout, its body must not stall past the
        body timeout nor fall below the minimum rate, and the whole must be
        in within the request timeout. One timer does it all, however the
        request trickles in.
        """
        if self._guardCall is None:
            self._scheduleGuard(guard)

    def _scheduleGuard(self, guard: RequestGuard) -> None:
        start = self.requestStart
        if start is None or self.closing:
            return
        deadline = None
        if self.line_mode:
            if guard.headerTimeout:
                deadline = start + guard.headerTimeout
        else:
            if guard.bodyTimeout:
                deadline = self._lastActivity + guard.bodyTimeout
            bodyStart = self._bodyStart
            if (
                guard.minBodyRate
                and bodyStart is not None
                and not self._bodyPaused
                and self.requests
            ):
                slow = bodyRateDeadline(
                    bodyStart,
                    self.requests[-1].bodyReceived - self._bodyBase,
                    guard.minBodyRate,
                    guard.minBodyRateGrace,
                )
                if deadline is None or slow < deadline:
                    deadline = slow
        requestTimeout = guard.requestTimeout
        if requestTimeout and (deadline is None or start + requestTimeout < deadline):
            deadline = start + requestTimeout
        if deadline is None:
            return
        delay = deadline - self.seconds()
        if delay <= 0:
            _log.debug("Request timed out while being received")
            self.requestTooSlow()
            return
        self._guardCall = self.callLater(delay, self._checkGuard)

    def _checkGuard(self) -> None:
        self._guardCall = None
        guard = self.requestGuard
        if guard is not None:
            self._scheduleGuard(guard)

    def startBodyClock(self) -> None:
        """
        The head of the request being received is in and its body follows:
        start the clock of its rate.
        """
        guard = self.requestGuard
        if guard is None or not guard.minBodyRate:
            return
        self._bodyStart = self.seconds()
        self._bodyBase = 0
        self._bodyPaused = False
        if self._guardCall is not None:
            # Timing the head (which came in pieces): time the body now.
            self._cancelGuard()

    def bodyProducer(self) -> IPushProducer:
        """
        The producer a streamed request body pauses while no backend takes
        it: the connection's transport, with the body's rate clock stopped
        while it is paused (the client is not slow, the backend is).
        """
        return _BodyReader(self)

    def pauseBody(self) -> None:
        """
        Stop reading the request body (see L{bodyProducer}).
        """
        self._bodyPaused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeBody(self) -> None:
        """
        Read the request body again; its rate is measured afresh, from now
        (see L{bodyProducer}).
        """
        self._bodyPaused = False
        if self._bodyStart is not None and self.requests:
            self._bodyStart = self.seconds()
            self._bodyBase = self.requests[-1].bodyReceived
            guard = self.requestGuard
            if guard is not None:
                self._cancelGuard()
                self._scheduleGuard(guard)
        if self.transport is not None:
            self.transport.resumeProducing()
