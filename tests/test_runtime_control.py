"""
Tests for the run-time control of a pool's servers: admin states (ready,
drain, maintenance), weight overrides and a changing server set
(L{twisted_rproxy.pool.BackendPool.setServerState}, C{setServerWeight},
C{updateServers}) on a memory reactor; and, on loopback, draining a
server through the admin listener under load.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import tempfile
from typing import Any
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fixtures import (
    LoopbackTestCase,
    asyncTest,
    backendServer,
    freePort,
    sleep,
    url,
)
from tests.loopback import RecordedRequest, Reply
from tests.test_health import aim, checks, probe, requestPorts
from tests.test_pool import OK, Harness, server
from tests.test_slots import lose, settle
from tests.test_workers import WorkersTestCase
from twisted_rproxy.admin import hashPassword
from twisted_rproxy.adminapi import RuntimeControl
from twisted_rproxy.config import (
    AdminConfig,
    BackendServer,
    Config,
    HealthCheckConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.health import WEIGHT_SCALE
from twisted_rproxy.messages import NoHealthyServers
from twisted_rproxy.pool import DRAIN, MAINTENANCE, READY, BackendPool
from twisted_rproxy.service import ProxyService
from twisted_rproxy.workercontrol import (
    ControlListener,
    askWorkers,
    controlSocketPath,
)


def portsOf(h: Harness, since: int = 0) -> list[int]:
    """
    The ports of the pool's own connection attempts from C{since} on.
    """
    return requestPorts(h)[since:]


class DrainTests(SynchronousTestCase):
    """
    A draining server takes no new request; those in flight finish; its
    connections close.
    """

    def test_noNewRequest(self) -> None:
        """
        Once drained, a server is given no new request: every one goes to
        the other server.
        """
        h = Harness(self, server(8001), server(8002))
        h.pool.setServerState(h.pool.servers[0], DRAIN)
        for _ in range(4):
            h.submit()
        self.assertEqual(portsOf(h), [8002] * 4)
        status = h.pool.status().servers[0]
        self.assertEqual((status.adminState, status.serving), ("drain", False))

    def test_inFlightFinishesThenCloses(self) -> None:
        """
        A request in flight on a server that is drained finishes, and its
        kept-alive connection is closed instead of kept.
        """
        h = Harness(self, server(8001), server(8002))
        aim(h, 0)
        recorder = h.submit()
        protocol, transport = h.accept()
        target = h.pool.servers[0]
        h.pool.setServerState(target, DRAIN)
        self.assertEqual(target.inFlight, 1)
        protocol.dataReceived(OK)
        self.assertTrue(recorder.finished)
        self.assertEqual(recorder.body, b"hello")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(target.idle, [])
        settle(h)
        self.assertEqual(target.openConnections, 0)
        h.pool.checkConsistency()

    def test_idleClosedAtOnce(self) -> None:
        """
        Draining a server closes its idle connections at once.
        """
        h = Harness(self, server(8001), server(8002))
        aim(h, 0)
        h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(OK)
        target = h.pool.servers[0]
        self.assertEqual(len(target.idle), 1)
        h.pool.setServerState(target, DRAIN)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((target.idle, target.closing), ([], 1))
        settle(h)
        self.assertEqual(h.pool.openConnections, 0)

    def test_queuedWaitsForReady(self) -> None:
        """
        A queued request is not given to a draining server whose slot
        frees, but to a ready one.
        """
        h = Harness(self, server(8001), server(8002), maxConnections=1)
        first, second, queued = h.submit(), h.submit(), h.submit()
        self.assertEqual(h.pool.pendingCount, 1)
        (p1, _), (p2, _) = h.accept(0), h.accept(1)
        h.pool.setServerState(h.pool.servers[0], DRAIN)
        p1.dataReceived(OK)
        self.assertTrue(first.finished)
        self.assertEqual(h.pool.pendingCount, 1)
        p2.dataReceived(OK)
        self.assertTrue(second.finished)
        self.assertEqual(h.pool.pendingCount, 0)
        self.assertEqual(queued.status, None)
        # It went over the ready server's kept-alive connection.
        p2.dataReceived(OK)
        self.assertTrue(queued.finished)
        self.assertEqual(portsOf(h), [8001, 8002])

    def test_retryNeverPicksDraining(self) -> None:
        """
        A request retried after a refused connection goes to a ready
        server, never to a draining one.
        """
        h = Harness(self, server(8001), server(8002), server(8003), retries=2)
        aim(h, 0)
        h.pool.setServerState(h.pool.servers[1], DRAIN)
        h.submit()
        h.refuse(0)
        self.assertEqual(portsOf(h), [8001, 8003])

    def test_staleConnectionGoesElsewhere(self) -> None:
        """
        A kept-alive connection of a draining server that the server closed
        as it was reused sends its request to a ready server.
        """
        h = Harness(self, server(8001), server(8002))
        aim(h, 0)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        recorder = h.submit()
        self.assertEqual(len(portsOf(h)), 1, "the idle connection was reused")
        h.pool.setServerState(h.pool.servers[0], DRAIN)
        lose(protocol)
        self.assertEqual(portsOf(h), [8001, 8002])
        other, _ = h.accept()
        other.dataReceived(OK)
        self.assertTrue(recorder.finished)
        h.pool.checkConsistency()

    def test_allDrainedRefused(self) -> None:
        """
        With every server draining, a request fails at once, saying why.
        """
        h = Harness(self, server(8001), server(8002))
        for backend in h.pool.servers:
            h.pool.setServerState(backend, DRAIN)
        recorder = h.submit()
        self.assertIsInstance(recorder.failure, NoHealthyServers)
        self.assertIn("draining or in maintenance", str(recorder.failure))

    def test_readyAgain(self) -> None:
        """
        A drained server set ready again takes requests, slow starting
        when the pool slow starts servers.
        """
        h = Harness(self, server(8001), server(8002), slowStart=10.0)
        target = h.pool.servers[0]
        h.pool.setServerState(target, DRAIN)
        h.pool.setServerState(target, READY)
        self.assertTrue(h.pool.status().servers[0].serving)
        self.assertEqual(target.weight, WEIGHT_SCALE // 10)
        h.reactor.advance(10)
        self.assertEqual(target.weight, WEIGHT_SCALE)
        for _ in range(4):
            h.submit()
        self.assertEqual(sorted(portsOf(h)), [8001, 8001, 8002, 8002])

    def test_unknownState(self) -> None:
        """
        A state other than ready, drain and maintenance is refused.
        """
        h = Harness(self)
        self.assertRaises(
            ValueError, h.pool.setServerState, h.pool.servers[0], "asleep"
        )
        self.assertEqual(h.pool.servers[0].adminState, READY)


class MaintenanceTests(SynchronousTestCase):
    """
    A server in maintenance drains and is not health checked.
    """

    def harness(self, **settings: Any) -> Harness:
        health = HealthCheckConfig(interval=5.0, timeout=1.0, rise=3, fall=2)
        h = Harness(self, server(8001), server(8002), health=health, **settings)
        h.pool.startHealthChecks()
        self.addCleanup(h.pool.close)
        return h

    def test_checksStop(self) -> None:
        """
        Maintenance stops a server's checks (one under way is abandoned);
        the other server's go on.
        """
        h = self.harness()
        h.reactor.advance(0)
        self.assertEqual(checks(h), [8001, 8002])
        _, transport = probe(h, 0)
        h.pool.setServerState(h.pool.servers[0], MAINTENANCE)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        probe(h, 1)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        for _ in range(3):
            h.reactor.advance(5)
            probe(h, -1)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertEqual(checks(h), [8001, 8002, 8002, 8002, 8002])
        status = h.pool.status().servers[0]
        self.assertEqual((status.adminState, status.checked), ("maintenance", False))
        self.assertTrue(h.pool.status().servers[1].checked)

    def test_readyWaitsForACheck(self) -> None:
        """
        Back from maintenance, a server is checked at once and takes
        requests when that one check passes (not C{rise} of them).
        """
        h = self.harness()
        h.reactor.advance(0)
        probe(h, 0)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        probe(h, 1)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        target = h.pool.servers[0]
        h.pool.setServerState(target, MAINTENANCE)
        h.pool.setServerState(target, READY)
        self.assertFalse(h.pool.status().servers[0].serving)
        h.submit()
        self.assertEqual(portsOf(h), [8002])
        h.reactor.advance(0)
        self.assertEqual(checks(h)[-1], 8001)
        probe(h, -1)[0].dataReceived(b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(target.up)
        self.assertTrue(h.pool.status().servers[0].serving)

    def test_readyFailingCheckStaysOut(self) -> None:
        """
        Back from maintenance, a server whose first check fails takes no
        request.
        """
        h = self.harness()
        h.reactor.advance(0)
        target = h.pool.servers[0]
        h.pool.setServerState(target, MAINTENANCE)
        h.pool.setServerState(target, READY)
        h.reactor.advance(0)
        h.refuse(-1)
        self.assertFalse(target.up)
        self.assertFalse(h.pool.status().servers[0].serving)

    def test_maintenanceWithoutChecks(self) -> None:
        """
        Without health checks, a server back from maintenance takes
        requests at once.
        """
        h = Harness(self, server(8001), server(8002))
        target = h.pool.servers[0]
        h.pool.setServerState(target, MAINTENANCE)
        h.submit()
        h.pool.setServerState(target, READY)
        h.submit()
        self.assertEqual(sorted(portsOf(h)), [8001, 8002])


class WeightTests(SynchronousTestCase):
    """
    A weight set at run time replaces the configured one.
    """

    def test_overrideShare(self) -> None:
        """
        A server given weight 3 beside one of weight 1 gets three requests
        of four; given back its configured weight, half.
        """
        h = Harness(self, server(8001), server(8002))
        target = h.pool.servers[0]
        h.pool.setServerWeight(target, 3)
        for _ in range(8):
            h.submit()
        self.assertEqual(portsOf(h).count(8001), 6)
        status = h.pool.status().servers[0]
        self.assertEqual((status.weight, status.weightOverride), (1, 3))
        self.assertEqual(status.effectiveWeight, 1.0)
        h.pool.setServerWeight(target, None)
        self.assertEqual(target.weight, WEIGHT_SCALE)
        for _ in range(8):
            h.submit()
        self.assertEqual(portsOf(h, 8).count(8001), 4)

    def test_slowStartRespectsOverride(self) -> None:
        """
        A server slow starting ramps up to its override: a weight set
        halfway through keeps the share of the ramp.
        """
        h = Harness(self, server(8001), server(8002), slowStart=10.0)
        target = h.pool.servers[0]
        h.pool.setServerState(target, DRAIN)
        h.pool.setServerState(target, READY)
        h.reactor.advance(5)
        self.assertEqual(target.weight, WEIGHT_SCALE // 2)
        h.pool.setServerWeight(target, 4)
        self.assertEqual(target.weight, 2 * WEIGHT_SCALE)
        h.reactor.advance(5)
        self.assertEqual(target.weight, 4 * WEIGHT_SCALE)

    def test_badWeight(self) -> None:
        """
        A weight below 1, or not an integer, is refused.
        """
        h = Harness(self)
        backend = h.pool.servers[0]
        for bad in (0, -1, 1.5, True, "2"):
            self.assertRaises(
                ValueError,
                h.pool.setServerWeight,
                backend,
                bad,  # type: ignore[arg-type]
            )
        self.assertIsNone(backend.weightOverride)

    def test_resetUndoesAll(self) -> None:
        """
        L{BackendPool.resetServers} (a reload) makes every server ready at
        its configured weight.
        """
        h = Harness(self, server(8001), server(8002, weight=2))
        first, second = h.pool.servers
        h.pool.setServerState(first, MAINTENANCE)
        h.pool.setServerWeight(second, 7)
        h.pool.resetServers()
        self.assertEqual(
            [(b.adminState, b.weightOverride, b.weight) for b in h.pool.servers],
            [(READY, None, WEIGHT_SCALE), (READY, None, 2 * WEIGHT_SCALE)],
        )
        self.assertTrue(all(s.serving for s in h.pool.status().servers))


class FindServerTests(SynchronousTestCase):
    """
    L{BackendPool.findServer} names a server by URL or index.
    """

    def test_byURLAndIndex(self) -> None:
        """
        The URL as shown, or the index from 0; anything else is L{None}.
        """
        h = Harness(self, server(8001), server(8002))
        first, second = h.pool.servers
        self.assertIs(h.pool.findServer("http://127.0.0.1:8002"), second)
        self.assertIs(h.pool.findServer("0"), first)
        self.assertIs(h.pool.findServer("1"), second)
        for unknown in ("2", "-1", "http://127.0.0.1:8003", "", "١"):
            self.assertIsNone(h.pool.findServer(unknown), unknown)


class UpdateServersTests(SynchronousTestCase):
    """
    L{BackendPool.updateServers} changes the server set: new servers join,
    those that left drain, the others stay as they are.
    """

    def test_joins(self) -> None:
        """
        A new server takes requests at once.
        """
        h = Harness(self, server(8001))
        h.pool.updateServers([server(8001), server(8002)])
        self.assertEqual([b.server.port for b in h.pool.servers], [8001, 8002])
        for _ in range(4):
            h.submit()
        self.assertEqual(sorted(portsOf(h)), [8001, 8001, 8002, 8002])

    def test_joinsWithSlowStartAndChecks(self) -> None:
        """
        In a pool that slow starts servers and checks them, a new server
        starts light and is checked at once.
        """
        health = HealthCheckConfig(interval=5.0, timeout=1.0)
        h = Harness(self, server(8001), health=health, slowStart=10.0)
        h.pool.startHealthChecks()
        self.addCleanup(h.pool.close)
        h.reactor.advance(0)
        h.pool.updateServers([server(8001), server(8002)])
        joined = h.pool.servers[1]
        self.assertEqual(joined.weight, WEIGHT_SCALE // 10)
        h.reactor.advance(0)
        self.assertEqual(checks(h), [8001, 8002])
        self.assertTrue(h.pool.status().servers[1].checked)

    def test_leavesAfterInFlight(self) -> None:
        """
        A server that left takes no new request; its request in flight
        finishes; it is shown draining until its last connection is gone,
        then forgotten.
        """
        h = Harness(self, server(8001), server(8002))
        aim(h, 0)
        recorder = h.submit()
        protocol, transport = h.accept()
        h.pool.updateServers([server(8002)])
        gone = h.pool.servers[0]
        status = h.pool.status().servers[0]
        self.assertEqual(
            (status.url, status.adminState, status.removed, status.serving),
            ("http://127.0.0.1:8001", "drain", True, False),
        )
        h.submit()
        self.assertEqual(portsOf(h), [8001, 8002])
        protocol.dataReceived(OK)
        self.assertTrue(recorder.finished)
        self.assertTrue(transport.disconnecting)
        self.assertIn(gone, h.pool.servers)
        h.pool.checkConsistency()
        settle(h)
        self.assertEqual([b.server.port for b in h.pool.servers], [8002])
        h.pool.checkConsistency()

    def test_leavesWithoutConnections(self) -> None:
        """
        A server that left with no connection is forgotten at once, its
        health checks stopped.
        """
        health = HealthCheckConfig(interval=5.0, timeout=1.0)
        h = Harness(self, server(8001), server(8002), health=health)
        h.pool.startHealthChecks()
        self.addCleanup(h.pool.close)
        h.pool.updateServers([server(8002)])
        self.assertEqual([b.server.port for b in h.pool.servers], [8002])
        h.reactor.advance(0)
        self.assertEqual(checks(h), [8002])

    def test_staysAsItWas(self) -> None:
        """
        A server still there keeps its counters, its idle connection and
        its admin state; a new weight is taken.
        """
        h = Harness(self, server(8001), server(8002))
        aim(h, 0)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        first, second = h.pool.servers
        h.pool.setServerState(second, DRAIN)
        h.pool.updateServers([server(8002), server(8001, weight=3)])
        self.assertEqual(h.pool.servers, [first, second])
        self.assertEqual((first.requests, len(first.idle)), (1, 1))
        self.assertEqual(first.weight, 3 * WEIGHT_SCALE)
        self.assertEqual(second.adminState, DRAIN)

    def test_sameServerOtherSpelling(self) -> None:
        """
        A URL spelled differently for the same scheme, host and port is
        the same server.
        """
        h = Harness(self, server(80))
        kept = h.pool.servers[0]
        other = BackendServer(
            url="http://127.0.0.1", scheme="http", host="127.0.0.1", port=80
        )
        h.pool.updateServers([other, other])
        self.assertEqual(h.pool.servers, [kept])
        self.assertEqual(kept.server.url, "http://127.0.0.1")

    def test_backBeforeGone(self) -> None:
        """
        A server that left and comes back before its last connection is
        gone is the same server again, taking requests.
        """
        h = Harness(self, server(8001), server(8002))
        aim(h, 0)
        h.submit()
        h.accept()
        backend = h.pool.servers[0]
        h.pool.updateServers([server(8002)])
        self.assertTrue(backend.removed)
        self.assertRaises(ValueError, h.pool.setServerState, backend, READY)
        h.pool.updateServers([server(8001), server(8002)])
        self.assertFalse(backend.removed)
        self.assertEqual(h.pool.servers[0], backend)
        self.assertTrue(h.pool.status().servers[0].serving)

    def test_empty(self) -> None:
        """
        An empty set drains every server: requests fail, saying why.
        """
        h = Harness(self, server(8001))
        h.pool.updateServers([])
        self.assertEqual(h.pool.servers, [])
        recorder = h.submit()
        self.assertIsInstance(recorder.failure, NoHealthyServers)
        self.assertIn("no server", str(recorder.failure))

    def test_closedPoolUnchanged(self) -> None:
        """
        A closed pool's server set does not change.
        """
        h = Harness(self, server(8001))
        h.pool.close()
        h.pool.updateServers([server(8002)])
        self.assertEqual([b.server.port for b in h.pool.servers], [8001])


def _memoryPool(*ports: int) -> BackendPool:
    config = PoolConfig(name="app", servers=tuple(server(p) for p in ports))
    return BackendPool(MemoryReactorClock(), config)  # type: ignore[arg-type]


class WorkerControlTests(TestCase):
    """
    A change made on worker 0's admin listener reaches the other workers
    through their control sockets (real UNIX sockets in a run directory).
    """

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="rp")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def worker(self, index: int) -> tuple[RuntimeControl, BackendPool]:
        pool = _memoryPool(8001, 8002)
        control = RuntimeControl(lambda: {"app": pool}, lambda: index)
        listener = ControlListener(reactor, self.directory, index, control.command)
        self.assertTrue(listener.start())
        self.addCleanup(listener.stop)

        def forward(command: dict[str, Any]) -> Deferred[dict[int, dict[str, Any]]]:
            return askWorkers(reactor, reactor, self.directory, index, command)

        control.forward = forward
        return control, pool

    @asyncTest
    async def test_changeReachesEveryWorker(self) -> None:
        """
        A drain posted to worker 0 is made by worker 1 too, and the answer
        says both made it.
        """
        first, firstPool = self.worker(0)
        _, secondPool = self.worker(1)
        code, answer = await first.post(
            ["app", "servers", "http://127.0.0.1:8002"],
            b'{"state": "drain", "weight": 2}',
            "ops",
            "127.0.0.1",
        )
        self.assertEqual(code, 200)
        self.assertEqual(
            answer["workers"],  # type: ignore[index]
            {"applied": [0, 1], "failed": {}},
        )
        for pool in (firstPool, secondPool):
            backend = pool.servers[1]
            self.assertEqual((backend.adminState, backend.weightOverride), (DRAIN, 2))
            self.assertEqual(pool.servers[0].adminState, READY)

    @asyncTest
    async def test_deadWorkerReported(self) -> None:
        """
        A worker whose socket no one answers on is named in a 502 answer;
        the others made the change.
        """
        first, firstPool = self.worker(0)
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(controlSocketPath(self.directory, 2))
        dead.close()
        code, answer = await first.post(
            ["app", "servers", "0"], b'{"state": "maintenance"}', None, "127.0.0.1"
        )
        self.assertEqual(code, 502)
        workers = answer["workers"]  # type: ignore[index]
        self.assertEqual(workers["applied"], [0])
        self.assertEqual(list(workers["failed"]), ["2"])
        self.assertEqual(firstPool.servers[0].adminState, MAINTENANCE)

    @asyncTest
    async def test_restartedWorkerAdopts(self) -> None:
        """
        A worker started again takes the changes in force from the
        others.
        """
        first, _ = self.worker(0)
        await first.post(["app", "servers", "1"], b'{"weight": 9}', None, "::1")
        pool = _memoryPool(8001, 8002)
        restarted = RuntimeControl(lambda: {"app": pool}, lambda: 1)
        answers = await askWorkers(
            reactor, reactor, self.directory, 1, {"command": "overrides"}
        )
        self.assertEqual(restarted.adopt(answers[0]["overrides"]), 1)
        self.assertEqual(pool.servers[1].weightOverride, 9)

    @asyncTest
    async def test_badCommands(self) -> None:
        """
        A command that is not JSON, unknown, or names no such server is
        answered with an error, and changes nothing.
        """
        _, pool = self.worker(1)
        answers = await askWorkers(
            reactor, reactor, self.directory, 0, {"command": "explode"}
        )
        self.assertFalse(answers[1]["ok"])
        answers = await askWorkers(
            reactor,
            reactor,
            self.directory,
            0,
            {"command": "change", "pool": "app", "server": "0", "change": {}},
        )
        self.assertFalse(answers[1]["ok"])
        self.assertEqual([b.adminState for b in pool.servers], [READY, READY])


def _slowReply(request: RecordedRequest) -> Reply:
    # Slow enough that requests are in flight when the drain comes.
    return Reply(body=request.target, delay=0.02)


class DrainUnderLoadTests(LoopbackTestCase):
    """
    Draining a server through the admin listener under load: no request
    fails, its requests in flight finish, then it gets none.
    """

    async def startProxyWithAdmin(self, *ports: int) -> tuple[ProxyService, int, int]:
        pool = PoolConfig(name="app", servers=tuple(backendServer(p) for p in ports))
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={"app": pool},
            routes=(RouteConfig(path="/", pool="app"),),
            admin=AdminConfig(
                listen=("tcp:0:interface=127.0.0.1",),
                users=(("ops", hashPassword("secret", iterations=1000)),),
                metrics=False,
            ),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        admin = service.admin
        assert admin is not None
        for _ in range(300):
            if admin._ports:
                break
            await sleep(0.01)
        return (
            service,
            int(listening[0].getHost().port),
            int(admin._ports[0].getHost().port),
        )

    @asyncTest
    async def test_drainUnderLoad(self) -> None:
        """
        Eight clients send 40 requests each; after a third of them, one of
        the two backends is drained on the admin listener. Every request
        succeeds; once its requests in flight are done, the drained backend
        gets no more and its connections are closed.
        """
        drained = await self.startBackend(_slowReply)
        other = await self.startBackend(_slowReply)
        service, port, adminPort = await self.startProxyWithAdmin(
            drained.portNumber, other.portNumber
        )
        client = self.httpClient(maxPersistent=8)
        failures: list[object] = []
        done = [0]
        auth = "Basic " + base64.b64encode(b"ops:secret").decode()

        async def load(worker: int) -> None:
            for n in range(40):
                try:
                    response = await client.get(url(port, f"/w{worker}/{n}"))
                    body = await response.content()
                except Exception as e:
                    failures.append(e)
                    continue
                if response.code != 200 or body != f"/w{worker}/{n}".encode():
                    failures.append((response.code, body))
                done[0] += 1

        running = [Deferred.fromCoroutine(load(w)) for w in range(8)]
        while done[0] < 8 * 40 // 3:
            await sleep(0.005)
        drainedURL = quote(f"http://127.0.0.1:{drained.portNumber}", safe="")
        refused = await client.post(
            url(adminPort, f"/pools/app/servers/{drainedURL}"),
            data=b'{"state": "drain"}',
            headers={"Content-Type": "application/json"},
        )
        self.assertEqual(refused.code, 401)
        await refused.content()
        response = await client.post(
            url(adminPort, f"/pools/app/servers/{drainedURL}"),
            data=b'{"state": "drain"}',
            headers={"Content-Type": "application/json", "Authorization": auth},
        )
        answer = json.loads(await response.content())
        self.assertEqual(response.code, 200, answer)
        self.assertEqual(answer["server"]["state"], "drain")
        backend = service.pools["app"].servers[0]
        for _ in range(500):
            if backend.inFlight == 0:
                break
            await sleep(0.01)
        self.assertEqual(backend.inFlight, 0)
        atDrain = len(drained.requests)
        otherAtDrain = len(other.requests)
        await gatherResults(running)
        self.assertEqual(failures, [])
        self.assertEqual(done[0], 8 * 40)
        self.assertGreater(atDrain, 0)
        self.assertEqual(len(drained.requests), atDrain)
        self.assertGreater(len(other.requests), otherAtDrain)
        self.assertEqual(len(drained.requests) + len(other.requests), 8 * 40)
        for _ in range(300):
            if all(c.gone for c in drained.connections):
                break
            await sleep(0.01)
        self.assertTrue(all(c.gone for c in drained.connections))
        servers = json.loads(
            await (
                await client.get(
                    url(adminPort, "/pools/app/servers"),
                    headers={"Authorization": auth},
                )
            ).content()
        )
        self.assertEqual(
            [(s["state"], s["in_flight"]) for s in servers],
            [("drain", 0), ("ready", 0)],
        )


class DrainOverWorkersTests(WorkersTestCase):
    """
    With two workers, a drain posted to the admin listener (worker 0's)
    is made by both, and by a worker started again after it.
    """

    async def post(self, adminPort: int, target: bytes, body: bytes) -> Any:
        _, [response] = await self.rawExchange(
            adminPort,
            b"POST " + target + b" HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body),
        )
        return response

    async def spread(self, port: int, count: int) -> None:
        """
        C{count} requests at once, each on a connection of its own, so
        that the kernel spreads them over the workers; each answered 200.
        """

        async def one(n: int) -> None:
            _, [response] = await self.rawExchange(
                port, b"GET /r%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % n
            )
            self.assertEqual(response.status, 200)

        await gatherResults([Deferred.fromCoroutine(one(n)) for n in range(count)])

    @asyncTest
    async def test_drainReachesWorkers(self) -> None:
        """
        A drained server gets no request from either worker, nor from
        worker 1 once it was killed and started again.
        """
        drained = await self.startBackend()
        other = await self.startBackend()
        port, adminPort = freePort(), freePort()
        process, _ = await self.startWorkers(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            'workers = 2\ndrain_timeout = "5s"\n'
            f'[admin]\nlisten = ["tcp:{adminPort}:interface=127.0.0.1"]\n'
            "metrics = false\n"
            "[pools.app]\nservers = ["
            f'"http://127.0.0.1:{drained.portNumber}", '
            f'"http://127.0.0.1:{other.portNumber}"]\n'
            '[[routes]]\npool = "app"\n'
        )
        for _ in range(100):
            try:
                response = await self.post(
                    adminPort, b"/pools/app/servers/0", b'{"state": "drain"}'
                )
                break
            except ConnectionRefusedError:
                await sleep(0.1)
        answer = json.loads(response.body)
        self.assertEqual(response.status, 200, answer)
        self.assertEqual(answer["workers"], {"applied": [0, 1], "failed": {}})
        await self.spread(port, 40)
        self.assertEqual(len(drained.requests), 0)
        self.assertEqual(len(other.requests), 40)

        _, [page] = await self.rawExchange(
            adminPort,
            b"GET /status.json HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        )
        [worker1] = [w for w in json.loads(page.body)["workers"] if w["worker"] == 1]
        os.kill(worker1["pid"], signal.SIGKILL)
        for _ in range(300):
            await sleep(0.1)
            if process.output.count(b"run-time changes of servers taken") >= 1:
                break
        self.assertIn(b"run-time changes of servers taken", process.output)
        await self.spread(port, 40)
        self.assertEqual(len(drained.requests), 0)
        self.assertEqual(len(other.requests), 80)
