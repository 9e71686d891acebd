"""
The health of a pool's servers in action: L{HealthChecker} sends the
active checks, L{OutlierDetector} ejects failing servers and brings them
back, L{SlowStart} ramps the weight of returning ones up. The arithmetic
they act on is L{twisted_rproxy.health}'s; what they need of the pool is
L{CheckedPool}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.health import (
    WEIGHT_SCALE,
    afterCheck,
    ejectionTime,
    mayEject,
    slowStartWeight,
    statusPasses,
)
from twisted_rproxy.pool.backend import MAINTENANCE, Backend
from twisted_rproxy.pool.dial import connectServer
from twisted_rproxy.rules.http1 import parseStatusLine

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConnector, IOpenSSLClientConnectionCreator

    from twisted_rproxy.config import BackendServer, HealthCheckConfig, OutlierConfig
    from twisted_rproxy.interfaces import IProxyReactor

__all__ = ["CheckedPool", "HealthChecker", "OutlierDetector", "SlowStart"]

_log = Logger()


class CheckedPool(TypingProtocol):
    """
    What the health checks need of their pool
    (L{twisted_rproxy.pool.BackendPool} provides it).
    """

    @property
    def name(self) -> str:
        """
        The pool's name, for the log.
        """

    @property
    def servers(self) -> Sequence[Backend]:
        """
        The pool's servers.
        """

    def healthChanged(self, cameBack: Backend | None = None) -> None:
        """
        A server's health changed (C{cameBack}: one that just became
        healthy again).
        """

    def tlsCreator(
        self, server: BackendServer
    ) -> IOpenSSLClientConnectionCreator | None:
        """
        The pool's TLS connection creator for C{server}, or L{None}.
        """


class SlowStart:
    """
    Ramps the weight of servers that just became healthy up to their full
    weight over C{duration} seconds, in ten steps.
    """

    def __init__(self, clock: IProxyReactor, pool: CheckedPool, duration: float):
        self._clock = clock
        self._pool = pool
        self._duration = duration
        self._ramping: dict[Backend, float] = {}
        self._call: IDelayedCall | None = None

    def begin(self, backend: Backend) -> None:
        """
        C{backend} became healthy: start it light.
        """
        if self._duration <= 0:
            return
        self._ramping[backend] = self._clock.seconds()
        backend.weight = slowStartWeight(backend.baseWeight, 0, self._duration)
        if self._call is None:
            self._call = self._clock.callLater(self._duration / 10, self._step)

    def _step(self) -> None:
        self._call = None
        now = self._clock.seconds()
        for backend, since in list(self._ramping.items()):
            backend.weight = slowStartWeight(
                backend.baseWeight, now - since, self._duration
            )
            if now - since >= self._duration:
                del self._ramping[backend]
        if self._ramping:
            self._call = self._clock.callLater(self._duration / 10, self._step)

    def reweigh(self, backend: Backend) -> None:
        """
        C{backend}'s full weight changed: its weight is the same share of
        the new one, if it is ramping up, else all of it.
        """
        since = self._ramping.get(backend)
        if since is None:
            backend.weight = backend.baseWeight * WEIGHT_SCALE
            return
        backend.weight = slowStartWeight(
            backend.baseWeight, self._clock.seconds() - since, self._duration
        )

    def forget(self, backend: Backend) -> None:
        """
        C{backend} left the pool: stop ramping it.
        """
        self._ramping.pop(backend, None)

    def stop(self) -> None:
        """
        Stop ramping; every server gets its full weight.
        """
        if self._call is not None:
            self._call.cancel()
            self._call = None
        for backend in self._ramping:
            backend.weight = backend.baseWeight * WEIGHT_SCALE
        self._ramping.clear()


class OutlierDetector:
    """
    Passive health: ejects a server whose requests failed
    C{consecutiveFailures} times in a row (refused or reset connections,
    timeouts, 5xx responses), for C{baseEjection} seconds times the number
    of its ejections in a row (at most C{maxEjection}); that count starts
    over once the server has gone C{maxEjection} without an ejection.
    """

    def __init__(
        self, clock: IProxyReactor, pool: CheckedPool, config: OutlierConfig
    ) -> None:
        self._clock = clock
        self._pool = pool
        self.config = config
        self._calls: dict[Backend, IDelayedCall] = {}
        self._returned: dict[Backend, float] = {}

    def failed(self, backend: Backend) -> None:
        """
        One more failure of C{backend} in a row (its C{errorStreak} is
        already counted).
        """
        config = self.config
        if (
            backend.ejected
            or backend.removed
            or backend.errorStreak < config.consecutiveFailures
        ):
            return
        servers = self._pool.servers
        ejected = sum(1 for s in servers if s.ejected)
        if not mayEject(ejected, len(servers), config.maxEjectedPercent):
            return
        now = self._clock.seconds()
        returned = self._returned.get(backend)
        if returned is not None and now - returned >= config.maxEjection:
            backend.ejections = 0
        backend.ejections += 1
        duration = ejectionTime(
            config.baseEjection, config.maxEjection, backend.ejections
        )
        backend.ejected = True
        backend.ejectedUntil = now + duration
        _log.warn(
            "Pool {pool}: server {url} ejected for {duration}s after "
            "{failures} failures in a row",
            pool=self._pool.name,
            url=backend.server.url,
            duration=duration,
            failures=backend.errorStreak,
        )
        self._calls[backend] = self._clock.callLater(duration, self._return, backend)
        self._pool.healthChanged()

    def _return(self, backend: Backend) -> None:
        del self._calls[backend]
        backend.ejected = False
        backend.ejectedUntil = None
        backend.errorStreak = 0
        self._returned[backend] = self._clock.seconds()
        _log.info(
            "Pool {pool}: server {url} back from ejection",
            pool=self._pool.name,
            url=backend.server.url,
        )
        self._pool.healthChanged(cameBack=backend)

    def forget(self, backend: Backend) -> None:
        """
        C{backend} left the pool: cancel its return.
        """
        call = self._calls.pop(backend, None)
        if call is not None and call.active():
            call.cancel()
        self._returned.pop(backend, None)

    def stop(self) -> None:
        """
        Cancel the pending returns.
        """
        for call in self._calls.values():
            call.cancel()
        self._calls.clear()


class _Probe(Protocol):
    """
    One health check: sends a GET, reads the status line, closes.
    """

    transport: Any

    def __init__(self, request: bytes, done: _CheckDone) -> None:
        self._request = request
        self._done = done
        self._buffer = b""

    def connectionMade(self) -> None:
        self._done.probe = self
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > 8192:
                self._finish(None)
            return
        self._finish(parseStatusLine(self._buffer[:end]))

    def _finish(self, status: int | None) -> None:
        self._done(status)
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._done.probe = None
        self._done(None)


class _CheckDone:
    """
    The end of one check, reported once: a status, or L{None} for a
    failure (refused, timed out, closed, not HTTP).
    """

    def __init__(self, checker: HealthChecker, backend: Backend) -> None:
        self.checker = checker
        self.backend = backend
        self.called = False
        self.probe: _Probe | None = None
        self.timeoutCall: IDelayedCall | None = None

    def __call__(self, status: int | None) -> None:
        if self.called:
            return
        self.called = True
        if self.timeoutCall is not None and self.timeoutCall.active():
            self.timeoutCall.cancel()
        self.timeoutCall = None
        self.checker._checked(self, status)

    def timedOut(self) -> None:
        self.timeoutCall = None
        probe = self.probe
        self(None)
        if probe is not None and probe.transport is not None:
            probe.transport.abortConnection()


class _ProbeFactory(ClientFactory):
    noisy = False

    def __init__(self, request: bytes, done: _CheckDone) -> None:
        self.request = request
        self.done = done

    def buildProtocol(self, addr: object) -> _Probe:
        return _Probe(self.request, self.done)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.done(None)


class HealthChecker:
    """
    Active health checks of one pool: every C{interval}, each server gets
    C{GET path} on a connection of its own (never one of the pool's); a
    status in C{statuses} within C{timeout} passes.

    Servers start up, so that a new pool serves at once; one that is down
    falls after C{fall} checks. A server in maintenance is not checked
    (L{stopServer}, L{startServer}).
    """

    def __init__(
        self, reactor: IProxyReactor, pool: CheckedPool, config: HealthCheckConfig
    ) -> None:
        self._reactor = reactor
        self._pool = pool
        self.config = config
        self._calls: dict[Backend, IDelayedCall] = {}
        self._checks: dict[Backend, _CheckDone] = {}
        self._running = False

    def start(self) -> None:
        """
        Start checking, the first round at once.
        """
        if self._running:
            return
        self._running = True
        for backend in self._pool.servers:
            self.startServer(backend)

    @property
    def running(self) -> bool:
        """
        Whether the checks are started.
        """
        return self._running

    def startServer(self, backend: Backend) -> None:
        """
        Check C{backend} (at once, then every C{interval}) if the checks
        run and it is not in maintenance nor checked already.
        """
        if (
            not self._running
            or backend.adminState == MAINTENANCE
            or backend.removed
            or backend in self._calls
            or backend in self._checks
        ):
            return
        self._calls[backend] = self._reactor.callLater(0, self._check, backend)

    def stopServer(self, backend: Backend) -> None:
        """
        Stop checking C{backend}, abandoning its check under way.
        """
        call = self._calls.pop(backend, None)
        if call is not None and call.active():
            call.cancel()
        check = self._checks.pop(backend, None)
        if check is not None:
            check.called = True
            if check.timeoutCall is not None and check.timeoutCall.active():
                check.timeoutCall.cancel()
            if check.probe is not None and check.probe.transport is not None:
                check.probe.transport.abortConnection()

    def forget(self, backend: Backend) -> None:
        """
        C{backend} left the pool: stop checking it.
        """
        self.stopServer(backend)

    def stop(self) -> None:
        """
        Stop checking and abandon the checks under way.
        """
        self._running = False
        for backend in list(self._calls) + list(self._checks):
            self.stopServer(backend)

    def _check(self, backend: Backend) -> None:
        self._calls.pop(backend, None)
        config = self.config
        server = backend.server
        request = (
            b"GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: twisted_rproxy "
            b"health check\r\nConnection: close\r\n\r\n"
            % (config.path.encode("ascii"), backend.hostPort)
        )
        done = _CheckDone(self, backend)
        self._checks[backend] = done
        done.timeoutCall = self._reactor.callLater(config.timeout, done.timedOut)
        factory = _ProbeFactory(request, done)
        creator = None
        if server.scheme == "https":
            # The pool's own (its TLS policy) when it has one.
            creator = self._pool.tlsCreator(server) or optionsForClientTLS(
                server.tlsServerName or server.host
            )
        # The same socket as the pool's requests: a unix one too.
        connectServer(self._reactor, server, factory, creator, config.timeout)

    def _checked(self, done: _CheckDone, status: int | None) -> None:
        backend = done.backend
        if self._checks.get(backend) is not done:
            return
        del self._checks[backend]
        config = self.config
        passed = status is not None and statusPasses(status, config.statuses)
        wasUp = backend.up
        backend.up, backend.checkStreak = afterCheck(
            wasUp, backend.checkStreak, passed, config.rise, config.fall
        )
        if backend.up != wasUp:
            _log.warn(
                "Pool {pool}: server {url} is {state} (health check: {result})",
                pool=self._pool.name,
                url=backend.server.url,
                state="up" if backend.up else "down",
                result=f"status {status}" if status is not None else "no answer",
            )
            self._pool.healthChanged(cameBack=backend if backend.up else None)
        if self._running:
            self._calls[backend] = self._reactor.callLater(
                config.interval, self._check, backend
            )
