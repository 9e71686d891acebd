"""
Tests for the slot bookkeeping of L{twisted_rproxy.pool}: every way an
exchange ends gives its connection slot back exactly once, so that a pool
with nothing in flight counts nothing in flight.

Each test ends an exchange one way, on a connection reused from the idle
list (where the slot leak of issue 12 was: a reused connection that the
backend closed kept its slot for good), and checks the counters after.
A hypothesis state machine drives random sequences of the same events and
checks the invariant after each step.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_pool import OK, Harness, Recorder, get, server
from twisted_rproxy.config import OutlierConfig
from twisted_rproxy.pool import (
    DRAIN,
    MAINTENANCE,
    READY,
    BackendConnection,
    BackendPool,
)

CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"

BIG_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"

ERROR = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n"
    b"Connection: close\r\n\r\ngone"
)


def settle(h: Harness) -> None:
    """
    Deliver C{connectionLost} to every connection whose transport was
    closed, as a reactor would on its next turn.
    """
    for protocol, transport in h.connections:
        if transport.disconnecting and not getattr(protocol, "_lostForTest", False):
            protocol._lostForTest = True  # type: ignore[attr-defined]
            protocol.connectionLost(Failure(ConnectionDone()))


def lose(protocol: BackendConnection, reason: Exception | None = None) -> None:
    """
    The backend closed C{protocol}'s connection (or it broke).
    """
    protocol._lostForTest = True  # type: ignore[attr-defined]
    protocol.connectionLost(Failure(reason or ConnectionDone()))


def assertAtRest(testCase: SynchronousTestCase, pool: BackendPool) -> None:
    """
    Nothing is in flight in C{pool}: no busy connection, no attempt, no
    queued request; every open connection is an idle one.
    """
    pool.checkConsistency()
    status = pool.status()
    testCase.assertEqual(status.pending, 0)
    for backend, serverStatus in zip(pool.servers, status.servers, strict=True):
        testCase.assertEqual(
            (backend.busy, backend.connecting, backend.inFlight, serverStatus.inFlight),
            (0, 0, 0, 0),
            repr(backend),
        )
        testCase.assertEqual(backend.closing, 0, repr(backend))
    testCase.assertEqual(pool.openConnections, sum(len(b.idle) for b in pool.servers))


def reusedConnection(
    h: Harness,
) -> tuple[BackendConnection, StringTransport, Recorder]:
    """
    Open a connection, finish one exchange on it, and start a second on
    it: the connection was taken from the idle list.
    """
    first = h.submit()
    protocol, transport = h.accept()
    protocol.dataReceived(OK)
    assert first.finished
    transport.clear()
    second = h.submit()
    assert h.attempts == 1, "the idle connection was not reused"
    assert h.pool.servers[0].busy == 1
    return protocol, transport, second


class RetirePathTests(SynchronousTestCase):
    """
    Each way an exchange on a reused connection ends gives the slot back.
    """

    def test_released(self) -> None:
        """
        A kept-alive response puts the connection back on the idle list.
        """
        h = Harness(self)
        protocol, transport, recorder = reusedConnection(h)
        protocol.dataReceived(OK)
        self.assertTrue(recorder.finished)
        assertAtRest(self, h.pool)
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_retiredByBackendClose(self) -> None:
        """
        A C{Connection: close} response on a reused connection frees the
        slot: this is the leak that wedged pools after about 256,000
        requests (nginx's C{keepalive_requests}).
        """
        h = Harness(self)
        protocol, transport, recorder = reusedConnection(h)
        protocol.dataReceived(CLOSE)
        self.assertTrue(recorder.finished)
        self.assertTrue(transport.disconnecting)
        settle(h)
        assertAtRest(self, h.pool)
        self.assertEqual(h.pool.openConnections, 0)

    def test_retiredConnectionsDoNotWedgeThePool(self) -> None:
        """
        A pool of one connection whose backend closes every second response
        keeps serving: each closed connection's slot is used again.
        """
        h = Harness(self, maxConnections=1)
        for i in range(20):
            recorder = h.submit()
            if h.attempts > len(h.connections):
                h.accept()
            protocol, transport = h.connections[-1]
            self.assertIsNone(recorder.failure, f"request {i}")
            protocol.dataReceived(CLOSE if i % 2 else OK)
            self.assertTrue(recorder.finished, f"request {i}")
            settle(h)
        assertAtRest(self, h.pool)

    def test_backendCrashMidResponse(self) -> None:
        """
        A reused connection that breaks mid-response frees its slot.
        """
        h = Harness(self)
        protocol, transport, recorder = reusedConnection(h)
        protocol.dataReceived(BIG_HEAD + b"half")
        lose(protocol, ConnectionLost())
        self.assertIsNotNone(recorder.failure)
        assertAtRest(self, h.pool)
        self.assertEqual(h.pool.openConnections, 0)

    def test_staleConnectionRetried(self) -> None:
        """
        A reused connection the backend had closed: the request goes to a
        fresh connection, and the dead one's slot is freed.
        """
        h = Harness(self)
        protocol, transport, recorder = reusedConnection(h)
        lose(protocol)
        self.assertEqual(h.attempts, 2)
        fresh, _ = h.accept()
        fresh.dataReceived(OK)
        self.assertTrue(recorder.finished)
        assertAtRest(self, h.pool)

    def test_staleConnectionRetriedAtTheLimit(self) -> None:
        """
        When a stale reused connection's request goes again on a fresh
        connection, that connection takes the dead one's slot: a request
        queued behind it waits, and the server stays within its limit.
        (Hypothesis's state machine found the slot given to the queued
        request first, and the retry dialled over the limit.)
        """
        h = Harness(self, maxConnections=1, retries=1)
        protocol, transport, recorder = reusedConnection(h)
        queued = h.submit()
        self.assertEqual(h.pool.pendingCount, 1)
        lose(protocol)
        h.pool.checkConsistency()
        backend = h.pool.servers[0]
        self.assertEqual((backend.connecting, h.pool.pendingCount), (1, 1))
        fresh, _ = h.accept()
        fresh.dataReceived(OK)
        self.assertTrue(recorder.finished)
        fresh.dataReceived(OK)
        self.assertTrue(queued.finished)
        settle(h)
        assertAtRest(self, h.pool)

    def test_readTimeout(self) -> None:
        """
        A reused connection whose backend stops answering frees its slot
        when the read times out.
        """
        h = Harness(self, readTimeout=5.0)
        protocol, transport, recorder = reusedConnection(h)
        h.reactor.advance(6)
        self.assertIsNotNone(recorder.failure)
        settle(h)
        assertAtRest(self, h.pool)

    def test_clientAbort(self) -> None:
        """
        The client leaving mid-response on a reused connection frees the
        slot (the connection is aborted).
        """
        h = Harness(self)
        first = h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(OK)
        self.assertTrue(first.finished)
        recorder = Recorder()
        exchange = h.pool.submit(get(), recorder)
        protocol.dataReceived(BIG_HEAD + b"half")
        exchange.cancel()
        self.assertTrue(transport.disconnecting)
        settle(h)
        assertAtRest(self, h.pool)

    def test_clientAbortWhileConnecting(self) -> None:
        """
        The client leaving while its connection is dialled: the new
        connection goes idle when it is made, and its slot is free.
        """
        h = Harness(self)
        exchange = h.pool.submit(get(), Recorder())
        exchange.cancel()
        h.accept()
        assertAtRest(self, h.pool)
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_malformedResponse(self) -> None:
        """
        A malformed response on a reused connection frees the slot.
        """
        h = Harness(self, retries=0)
        protocol, transport, recorder = reusedConnection(h)
        protocol.dataReceived(b"HTTP/1.1 2000 Nope\r\n\r\n")
        self.assertIsNotNone(recorder.failure)
        settle(h)
        assertAtRest(self, h.pool)

    def test_retryElsewhereOnServerError(self) -> None:
        """
        A 503 (closing its connection) on a reused connection is retried
        on the other server; both slots are free once the retry is
        answered.
        """
        h = Harness(self, server(8001), server(8002), maxConnections=4)
        first, second = h.submit(), h.submit()
        (p1, _), (p2, _) = h.accept(0), h.accept(1)
        p1.dataReceived(OK)
        p2.dataReceived(OK)
        self.assertTrue(first.finished and second.finished)
        recorder = h.submit()
        self.assertEqual(h.attempts, 2)
        busy = [b for b in h.pool.servers if b.busy]
        self.assertEqual(len(busy), 1)
        connection = p1 if busy[0] is h.pool.servers[0] else p2
        other = p2 if connection is p1 else p1
        connection.dataReceived(ERROR)
        other.dataReceived(OK)
        self.assertTrue(recorder.finished)
        self.assertEqual(recorder.status, 200)
        settle(h)
        assertAtRest(self, h.pool)

    def test_retryElsewhereOnConnectionRefused(self) -> None:
        """
        A refused connection attempt frees its slot; the request is
        answered by the other server.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit()
        h.refuse(0)
        self.assertEqual(h.attempts, 2)
        protocol, _ = h.accept(1)
        protocol.dataReceived(OK)
        self.assertTrue(recorder.finished)
        assertAtRest(self, h.pool)

    def test_poolReload(self) -> None:
        """
        A pool replaced on a reload frees the slots of the exchanges it
        was carrying as they finish, and its queued requests move.
        """
        h = Harness(self, maxConnections=1)
        protocol, transport, recorder = reusedConnection(h)
        queued = h.submit()
        self.assertEqual(h.pool.pendingCount, 1)
        successor = Harness(self)
        closed = h.pool.close(successor.pool)
        self.assertEqual(h.pool.pendingCount, 0)
        protocol.dataReceived(CLOSE)
        self.assertTrue(recorder.finished)
        settle(h)
        self.successResultOf(closed)
        assertAtRest(self, h.pool)
        self.assertEqual(h.pool.openConnections, 0)
        newProtocol, _ = successor.accept()
        newProtocol.dataReceived(OK)
        self.assertTrue(queued.finished)
        assertAtRest(self, successor.pool)

    def test_healthEjection(self) -> None:
        """
        A server ejected by passive health while it carries a request and
        keeps an idle connection: both slots are freed, and a returning
        server is counted as unloaded.
        """
        h = Harness(
            self,
            server(8001),
            server(8002),
            retries=0,
            outlier=OutlierConfig(consecutiveFailures=1, baseEjection=10.0),
        )
        a, b = h.submit(), h.submit()
        (p1, _), (p2, _) = h.accept(0), h.accept(1)
        p1.dataReceived(OK)
        p2.dataReceived(OK)
        self.assertTrue(a.finished and b.finished)
        # Round robin: the first server gets a reused connection (p1) and a
        # new one (p3), the second its reused one (p2).
        reused, other, fresh = h.submit(), h.submit(), h.submit()
        self.assertEqual(h.attempts, 3)
        p3, _ = h.accept(2)
        target = h.pool.servers[0]
        self.assertEqual(target.busy, 2)
        p1.dataReceived(ERROR)
        self.assertEqual(reused.status, 503)
        self.assertTrue(target.ejected)
        p3.dataReceived(OK)
        p2.dataReceived(OK)
        self.assertTrue(other.finished and fresh.finished)
        settle(h)
        assertAtRest(self, h.pool)
        h.reactor.advance(11)
        self.assertFalse(target.ejected)
        self.assertEqual(target.inFlight, 0)


class _PoolMachine(RuleBasedStateMachine):
    """
    Random sequences of submit / answer / close / break / abort / time out
    on a pool of two servers on a memory reactor, with servers drained,
    put in maintenance, made ready, removed and added on the way; after
    each step the bookkeeping is consistent and the counts match the
    exchanges still open.
    """

    def __init__(self) -> None:
        super().__init__()
        self.testCase = SynchronousTestCase()
        self.harness: Harness
        self.open: list[tuple[Any, Recorder]] = []
        self.accepted = 0
        self.members = {8001, 8002}

    @initialize(maxConnections=st.integers(1, 3), retries=st.integers(0, 1))
    def start(self, maxConnections: int, retries: int) -> None:
        self.harness = Harness(
            self.testCase,
            server(8001),
            server(8002),
            maxConnections=maxConnections,
            maxIdle=2,
            maxPending=4,
            readTimeout=5.0,
            pendingTimeout=3.0,
            retries=retries,
        )

    def _live(self) -> list[BackendConnection]:
        return [
            p
            for p, t in self.harness.connections
            if not getattr(p, "_lostForTest", False) and p._exchange is not None
        ]

    @rule(method=st.sampled_from([b"GET", b"POST"]))
    def submit(self, method: bytes) -> None:
        pool = self.harness.pool
        before = {backend: backend.requests for backend in pool.servers}
        recorder = Recorder()
        exchange = pool.submit(get(method=method), recorder)
        self.open.append((exchange, recorder))
        for backend, requests in before.items():
            if backend.requests > requests:
                # A new request goes to a ready server only.
                self.testCase.assertTrue(backend.accepting, repr(backend))

    @rule(data=st.data(), state=st.sampled_from([READY, DRAIN, MAINTENANCE]))
    def setState(self, data: st.DataObject, state: str) -> None:
        pool = self.harness.pool
        present = [b for b in pool.servers if not b.removed]
        if present:
            pool.setServerState(data.draw(st.sampled_from(present)), state)

    @rule(port=st.sampled_from([8001, 8002, 8003]))
    def toggleMember(self, port: int) -> None:
        """
        Server C{port} leaves the server set if it is in it, else joins.
        """
        self.members ^= {port}
        self.harness.pool.updateServers([server(p) for p in sorted(self.members)])

    @precondition(lambda self: self.harness.attempts > self.accepted)
    @rule(refuse=st.booleans())
    def dialled(self, refuse: bool) -> None:
        index = self.accepted
        self.accepted += 1
        if refuse:
            self.harness.refuse(index)
        else:
            host, port, factory, _, _ = self.harness.reactor.tcpClients[index]
            protocol = factory.buildProtocol(None)
            transport = StringTransport()
            self.harness.connections.append((protocol, transport))
            protocol.makeConnection(transport)

    @precondition(lambda self: bool(self._live()))
    @rule(
        data=st.data(),
        answer=st.sampled_from([OK, CLOSE, ERROR, BIG_HEAD + b"half", b"bad\r\n\r\n"]),
    )
    def answer(self, data: st.DataObject, answer: bytes) -> None:
        protocol = data.draw(st.sampled_from(self._live()))
        protocol.dataReceived(answer)

    @precondition(lambda self: bool(self.harness.connections))
    @rule(data=st.data())
    def backendCloses(self, data: st.DataObject) -> None:
        alive = [
            p
            for p, _ in self.harness.connections
            if not getattr(p, "_lostForTest", False)
        ]
        if alive:
            lose(data.draw(st.sampled_from(alive)), ConnectionLost())

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def clientAborts(self, data: st.DataObject) -> None:
        exchange, _ = data.draw(st.sampled_from(self.open))
        exchange.cancel()

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.0, 6.0, 40.0]))
    def time(self, seconds: float) -> None:
        self.harness.reactor.advance(seconds)

    @rule()
    def reactorTurn(self) -> None:
        settle(self.harness)

    @invariant()
    def consistent(self) -> None:
        """
        Every count is what the connections and exchanges say it is.
        """
        h = self.harness
        pool = h.pool
        pool.checkConsistency()
        self.open = [(e, r) for e, r in self.open if not e.done]
        undialled = [f for _, _, f, _, _ in h.reactor.tcpClients[self.accepted :]]
        self.testCase.assertEqual(
            {b.server.port for b in pool.servers if not b.removed}, self.members
        )
        for backend in pool.servers:
            live = [
                p
                for p, _ in h.connections
                if p.backend is backend and not getattr(p, "_lostForTest", False)
            ]
            carrying = [p for p in live if p._exchange is not None]
            self.testCase.assertEqual(backend.busy, len(carrying), repr(backend))
            self.testCase.assertEqual(
                backend.connecting,
                sum(1 for f in undialled if f.backend is backend),
                repr(backend),
            )
            for connection in backend.idle:
                self.testCase.assertIn(connection, live)
                self.testCase.assertIsNone(connection._exchange)
            if backend.removed:
                # Kept only while a connection of its own is open.
                self.testCase.assertGreater(backend.openConnections, 0)
        self.testCase.assertEqual(
            pool.pendingCount,
            sum(1 for e, _ in self.open if e.queuedCall is not None),
        )
        if not self.open and not undialled and not any(b.busy for b in pool.servers):
            # Nothing in flight: the admin page's counters say so.
            status = pool.status()
            self.testCase.assertEqual(status.pending, 0)
            self.testCase.assertEqual(
                [s.inFlight for s in status.servers], [0] * len(status.servers)
            )


_PoolMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)


class PoolStateMachineTests(_PoolMachine.TestCase):  # type: ignore[name-defined,misc]
    """
    The pool's bookkeeping holds under random sequences of events.
    """
