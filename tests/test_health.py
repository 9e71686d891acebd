"""
Tests for L{twisted_rproxy.health} and the pool's use of it: active checks,
outlier ejection, panic, slow start, retries and their budget, on a memory
reactor.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.test_pool import OK, Harness, get, server
from twisted_rproxy.config import HealthCheckConfig, OutlierConfig, RetryBudgetConfig
from twisted_rproxy.health import (
    WEIGHT_SCALE,
    RetryBudget,
    afterCheck,
    ejectionTime,
    mayEject,
    slowStartWeight,
)
from twisted_rproxy.interfaces import IBalancer
from twisted_rproxy.pool import (
    Backend,
    BackendConnection,
    BackendUnavailable,
    NoHealthyServers,
    RoundRobinBalancer,
)

ERROR = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops"


class PureTests(SynchronousTestCase):
    """
    The decisions, as functions of data.
    """

    @given(st.lists(st.booleans(), max_size=40), st.integers(1, 4), st.integers(1, 4))
    def test_afterCheckThresholds(
        self, results: list[bool], rise: int, fall: int
    ) -> None:
        """
        A server changes state exactly when the last C{rise} (or C{fall})
        results since its last change all went against it.
        """
        up, streak = True, 0
        changedAt = 0
        for index, passed in enumerate(results):
            wasUp = up
            up, streak = afterCheck(up, streak, passed, rise, fall)
            if up != wasUp:
                needed = rise if up else fall
                recent = results[max(changedAt, index + 1 - needed) : index + 1]
                self.assertEqual(recent, [up] * needed)
                changedAt = index + 1
            else:
                self.assertLess(streak, rise if not up else fall)

    def test_ejectionGrows(self) -> None:
        """
        Each ejection in a row lasts longer, up to the maximum.
        """
        self.assertEqual(
            [ejectionTime(10, 35, n) for n in (1, 2, 3, 4)], [10, 20, 30, 35]
        )

    def test_mayEject(self) -> None:
        """
        At most the given share of servers is ejected, but always one.
        """
        self.assertTrue(mayEject(0, 1, 10))
        self.assertTrue(mayEject(1, 4, 50))
        self.assertFalse(mayEject(2, 4, 50))
        self.assertFalse(mayEject(1, 10, 10))

    def test_slowStartWeight(self) -> None:
        """
        The weight ramps from a tenth to the whole over the duration.
        """
        full = 2 * WEIGHT_SCALE
        self.assertEqual(slowStartWeight(2, 0, 10), full // 10)
        self.assertEqual(slowStartWeight(2, 5, 10), full // 2)
        self.assertEqual(slowStartWeight(2, 10, 10), full)
        self.assertEqual(slowStartWeight(2, 0, 0), full)


class RetryBudgetTests(SynchronousTestCase):
    """
    L{RetryBudget} allows a minimum plus a share of the requests per window.
    """

    def test_minimumThenPercent(self) -> None:
        """
        With no requests, the minimum; with 100 requests at 20%, 20 more.
        """
        budget = RetryBudget(20, 3, 10)
        self.assertEqual([budget.allow(0, 0) for _ in range(4)], [True] * 3 + [False])
        self.assertEqual(sum(budget.allow(1, 100) for _ in range(30)), 20)
        self.assertEqual(budget.refused, 11)

    def test_windowCarriesRate(self) -> None:
        """
        A new window starts with the last window's request rate, not with
        nothing; a long quiet time averages it down.
        """
        budget = RetryBudget(10, 0, 10)
        self.assertTrue(budget.allow(0, 0) is False)
        self.assertEqual(sum(budget.allow(10, 100) for _ in range(20)), 10)
        budget = RetryBudget(10, 0, 10)
        budget.allow(0, 0)
        # 100 requests over 100 s: 10 per window, so 1 retry.
        self.assertEqual(sum(budget.allow(100, 100) for _ in range(20)), 1)


def probe(h: Harness, index: int = -1) -> tuple[Any, StringTransport]:
    """
    Complete the health check connection attempt C{index}.
    """
    host, port, factory, timeout, bindAddress = h.reactor.tcpClients[index]
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def checks(h: Harness) -> list[int]:
    """
    The ports of the health check attempts so far.
    """
    return [
        port
        for _, port, factory, _, _ in h.reactor.tcpClients
        if type(factory).__name__ == "_ProbeFactory"
    ]


class ActiveCheckTests(SynchronousTestCase):
    """
    L{HealthChecker} takes servers down and brings them up.
    """

    def harness(self, **health: Any) -> Harness:
        config = HealthCheckConfig(**{"interval": 5.0, "timeout": 1.0, **health})
        h = Harness(self, server(8001), server(8002), health=config)
        h.pool.startHealthChecks()
        self.addCleanup(h.pool.close)
        return h

    def test_checkRequest(self) -> None:
        """
        A check GETs the path with the server's Host, on its own connection.
        """
        h = self.harness(path="/healthz")
        h.reactor.advance(0)
        self.assertEqual(checks(h), [8001, 8002])
        _, transport = probe(h, 0)
        self.assertEqual(
            transport.value(),
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8001\r\nUser-Agent: "
            b"twisted_rproxy health check\r\nConnection: close\r\n\r\n",
        )

    def test_fallAndRise(self) -> None:
        """
        After C{fall} failed checks a server takes no requests; after
        C{rise} passed ones it takes them again.
        """
        h = self.harness(rise=2, fall=2)
        down = h.pool.servers[0]
        for _ in range(2):
            h.reactor.advance(0 if not h.reactor.tcpClients else 5)
            h.refuse(-2)
            probe(h, -1)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertFalse(down.up)
        self.assertEqual(h.pool.status().servers[0].state, "down")
        for _ in range(4):
            h.submit()
        self.assertEqual(requestPorts(h), [8002] * 4)
        for expected in (False, True):
            h.reactor.advance(5)
            probe(h, -2)[0].dataReceived(b"HTTP/1.1 204 No Content\r\n")
            probe(h, -1)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
            self.assertEqual(down.up, expected)
        self.assertTrue(h.pool.status().servers[0].serving)

    def test_badStatusAndTimeoutFail(self) -> None:
        """
        A status outside C{statuses}, or no answer within the timeout,
        fails a check.
        """
        h = self.harness(fall=2, statuses=((200, 299),))
        h.reactor.advance(0)
        probe(h, 0)[0].dataReceived(b"HTTP/1.1 301 Moved\r\n")
        h.refuse(1)
        h.reactor.advance(5)
        _, transport = probe(h, -2)
        h.refuse(-1)
        h.reactor.advance(1)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.assertFalse(h.pool.servers[0].up)

    def test_stopsOnClose(self) -> None:
        """
        Closing the pool stops the checks: nothing is left scheduled.
        """
        h = self.harness()
        h.reactor.advance(0)
        h.pool.close()
        self.assertEqual([c for c in h.reactor.getDelayedCalls() if c.active()], [])


@implementer(IBalancer)
class _Aim:
    """
    Picks one server while it is offered, else the first offered.
    """

    def __init__(self, target: Backend) -> None:
        self.target = target

    def pick(self, servers: list[Backend], request: object) -> Backend | None:
        if self.target in servers:
            return self.target
        return servers[0] if servers else None


def aim(h: Harness, index: int) -> None:
    """
    Send the next requests of C{h}'s pool to its server C{index}.
    """
    h.pool._balancer = _Aim(h.pool.servers[index])


def requestPorts(h: Harness) -> list[int]:
    """
    The ports of the pool's connection attempts (not the health checks).
    """
    return [
        port
        for _, port, factory, _, _ in h.reactor.tcpClients
        if type(factory).__name__ != "_ProbeFactory"
    ]


def respond(h: Harness, data: bytes) -> BackendConnection:
    """
    Answer the request just sent with C{data}: on the connection attempt
    not yet completed, else on the reused connection carrying it.
    """
    if len(requestPorts(h)) > len(h.connections):
        protocol, _ = h.accept()
    else:
        protocol = next(p for p, _ in h.connections if p._exchange is not None)
    protocol.dataReceived(data)
    return protocol


class OutlierTests(SynchronousTestCase):
    """
    Passive health: consecutive failures eject a server for a while.
    """

    def harness(self, servers: int = 2, **settings: Any) -> Harness:
        return Harness(
            self,
            *[server(8001 + i) for i in range(servers)],
            outlier=OutlierConfig(
                consecutiveFailures=3, baseEjection=10, maxEjection=25
            ),
            retryStatuses=(),
            retries=0,
            **settings,
        )

    def failOn(self, h: Harness, backend: int, times: int) -> None:
        aim(h, backend)
        for _ in range(times):
            h.submit()
            respond(h, ERROR)
        h.pool._balancer = RoundRobinBalancer()

    def test_consecutive5xxEject(self) -> None:
        """
        Three 5xx in a row eject the server for the base time; then it
        serves again.
        """
        h = self.harness()
        self.failOn(h, 0, 3)
        status = h.pool.status().servers[0]
        self.assertEqual((status.state, status.serving), ("ejected", False))
        for _ in range(3):
            h.submit()
            protocol, _ = h.accept()
            self.assertEqual(h.reactor.tcpClients[-1][1], 8002)
            protocol.dataReceived(OK)
        h.reactor.advance(10)
        self.assertEqual(h.pool.status().servers[0].state, "healthy")

    def test_successResetsStreak(self) -> None:
        """
        A good response between failures starts the count over.
        """
        h = self.harness()
        self.failOn(h, 0, 2)
        aim(h, 0)
        h.submit()
        h.connections[0][0].dataReceived(OK)
        self.failOn(h, 0, 2)
        self.assertFalse(h.pool.servers[0].ejected)

    def test_ejectionGrowsInARow(self) -> None:
        """
        The second ejection in a row lasts twice the base time.
        """
        h = self.harness()
        self.failOn(h, 0, 3)
        h.reactor.advance(10)
        self.failOn(h, 0, 3)
        self.assertEqual(h.pool.servers[0].ejectedUntil, h.reactor.seconds() + 20)

    def test_connectFailuresEject(self) -> None:
        """
        Refused connections count as failures too.
        """
        h = self.harness()
        aim(h, 0)
        for _ in range(3):
            recorder = h.submit()
            h.refuse()
            self.assertIsInstance(recorder.failure, BackendUnavailable)
        self.assertTrue(h.pool.servers[0].ejected)

    def test_maxEjectedPercent(self) -> None:
        """
        With C{max_ejected_percent} 50, only one of two servers is ejected.
        """
        h = self.harness()
        self.failOn(h, 0, 3)
        self.failOn(h, 1, 3)
        self.assertEqual([s.ejected for s in h.pool.servers], [True, False])


class PanicTests(SynchronousTestCase):
    """
    Below the panic threshold, every server serves; at 0, none does.
    """

    def test_panicUsesAll(self) -> None:
        """
        With the only healthy server of two down, the pool panics and uses
        both.
        """
        h = Harness(self, server(8001), server(8002), panicThreshold=50)
        h.pool.servers[0].up = False
        h.pool.healthChanged()
        self.assertFalse(h.pool.panic)
        h.pool.servers[1].up = False
        h.pool.healthChanged()
        self.assertTrue(h.pool.status().panic)
        h.submit()
        h.submit()
        self.assertEqual([c[1] for c in h.reactor.tcpClients], [8001, 8002])

    def test_noPanicNoServer(self) -> None:
        """
        With a threshold of 0 and no healthy server, requests fail with 503.
        """
        h = Harness(self, server(8001), panicThreshold=0)
        h.pool.servers[0].up = False
        h.pool.healthChanged()
        recorder = h.submit()
        self.assertIsInstance(recorder.failure, NoHealthyServers)
        self.assertEqual(recorder.failure.status, 503)  # type: ignore[union-attr]


class SlowStartTests(SynchronousTestCase):
    """
    A server back from ejection ramps up its weight.
    """

    def test_rampAfterEjection(self) -> None:
        """
        Back from an ejection, the server starts at a tenth of its weight
        and reaches all of it after C{slow_start}.
        """
        h = Harness(
            self,
            server(8001),
            server(8002),
            outlier=OutlierConfig(consecutiveFailures=1, baseEjection=5),
            slowStart=20.0,
            retryStatuses=(),
        )
        backend = h.pool.servers[0]
        aim(h, 0)
        h.submit()
        respond(h, ERROR)
        self.assertTrue(backend.ejected)
        h.reactor.advance(5)
        self.assertEqual(backend.weight, WEIGHT_SCALE // 10)
        self.assertAlmostEqual(h.pool.status().servers[0].effectiveWeight, 0.0625)
        h.reactor.advance(10)
        self.assertEqual(backend.weight, WEIGHT_SCALE // 2)
        h.reactor.advance(10)
        self.assertEqual(backend.weight, WEIGHT_SCALE)
        ramping = [c for c in h.reactor.getDelayedCalls() if "SlowStart" in repr(c)]
        self.assertEqual(ramping, [])


class RetryTests(SynchronousTestCase):
    """
    Idempotent requests are retried on another server when the first
    failed before any response byte was passed on.
    """

    def test_closedWithoutAnswerRetriedElsewhere(self) -> None:
        """
        A GET whose new connection closes unanswered goes to the other
        server, and its response arrives.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit()
        protocol, _ = h.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.reactor.tcpClients[-1][1], 8002)
        respond(h, OK)
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))
        self.assertEqual(h.pool.status().retries, 1)

    def test_postNotRetried(self) -> None:
        """
        A POST whose body was sent is never sent again.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit(get(method=b"POST", body=b"x"))
        protocol, _ = h.accept()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.attempts, 1)
        self.assertIsInstance(recorder.failure, BackendUnavailable)

    def test_5xxRetriedAndDrained(self) -> None:
        """
        A GET answered with a status of C{retryStatuses} is retried on the
        other server; the first connection reads the error body away and is
        kept for the next request.
        """
        h = Harness(self, server(8001), server(8002), retryStatuses=(500,))
        recorder = h.submit()
        first = respond(h, ERROR)
        respond(h, OK)
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))
        self.assertEqual(h.pool.servers[0].idle, [first])

    def test_5xxNotRetriedWithoutStatus(self) -> None:
        """
        A status outside C{retryStatuses} reaches the client.
        """
        h = Harness(self, server(8001), server(8002), retryStatuses=(503,))
        recorder = h.submit()
        respond(h, ERROR)
        self.assertEqual((recorder.status, recorder.body), (500, b"oops"))

    def test_budgetBoundsRetries(self) -> None:
        """
        Past the retry budget, failures reach the client instead of being
        retried; the refusals are counted.
        """
        h = Harness(
            self,
            server(8001),
            server(8002),
            retryBudget=RetryBudgetConfig(percent=0, minRetries=1),
        )
        aim(h, 0)
        first = h.submit()
        h.refuse()
        h.accept()[0].dataReceived(OK)
        self.assertEqual(first.status, 200)
        second = h.submit()
        h.refuse()
        self.assertIsInstance(second.failure, BackendUnavailable)
        status = h.pool.status()
        self.assertEqual((status.retries, status.retriesRefused), (1, 1))

    def test_refusedEverywhereFails(self) -> None:
        """
        When every server refuses, the request fails (once per server at
        most).
        """
        h = Harness(self, server(8001), server(8002), retries=5)
        recorder = h.submit()
        h.refuse(reason=ConnectionRefusedError())
        h.refuse(reason=ConnectionRefusedError())
        self.assertEqual(h.attempts, 2)
        self.assertIsInstance(recorder.failure, BackendUnavailable)


class StatusTests(SynchronousTestCase):
    """
    L{BackendPool.status} reports the pool and its servers.
    """

    def test_counts(self) -> None:
        """
        In-flight, idle and request counts per server, totals per pool.
        """
        h = Harness(self, server(8001), server(8002, weight=3))
        h.submit()
        status = h.pool.status()
        self.assertEqual(
            (status.name, status.balance, status.requests, status.panic),
            ("app", "round-robin", 1, False),
        )
        self.assertEqual(
            [
                (s.url, s.weight, s.inFlight, s.requests, s.state)
                for s in status.servers
            ],
            [
                ("http://127.0.0.1:8001", 1, 0, 0, "healthy"),
                ("http://127.0.0.1:8002", 3, 1, 1, "healthy"),
            ],
        )
        h.accept()[0].dataReceived(OK)
        self.assertEqual(h.pool.status().servers[1].idleConnections, 1)
