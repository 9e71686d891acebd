"""
Tests for L{twisted_rproxy.workers}: the supervisor and its worker
processes, run as C{twistd -n rproxy} with C{workers = 2}.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionRefusedError

from tests.fixtures import (
    TWISTD,
    LoopbackTestCase,
    TwistdProcess,
    asyncTest,
    freePort,
    sleep,
    twistdEnvironment,
)
from tests.loopback import RecordedRequest, Reply, connectRaw


class WorkersTestCase(LoopbackTestCase):
    """
    Runs C{twistd -n rproxy} with workers.
    """

    async def startWorkers(self, text: str) -> tuple[TwistdProcess, Any]:
        """
        Run C{twistd -n rproxy} on the configuration C{text}, until two
        workers listen; stop it at clean-up (killed if it does not end).

        @return: The process protocol and its transport.
        """
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write(text)
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [sys.executable, "-c", TWISTD, "-n", "--pidfile=", "rproxy", "-c", path],
            env=twistdEnvironment(),
        )

        async def stop() -> None:
            if process.running:
                transport.signalProcess("TERM")
            try:
                await process.ended.addTimeout(30, reactor)
            except Exception:
                if process.running:
                    transport.signalProcess("KILL")
                await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        for _ in range(300):
            if len(re.findall(rb"Listening on", process.output)) >= 2:
                break
            if not process.running:
                break
            await sleep(0.1)
        self.assertEqual(
            len(re.findall(rb"Listening on", process.output)),
            2,
            process.output.decode(errors="replace"),
        )
        return process, transport


class SupervisorStopTests(WorkersTestCase):
    """
    SIGTERM to the supervisor: the workers drain, and the listeners close at
    once.
    """

    @asyncTest
    async def test_newConnectionRefusedDuringDrain(self) -> None:
        """
        While the workers drain a slow request after SIGTERM, a new
        connection is refused at once (the supervisor shut the listening
        socket down), well before C{drain_timeout}; the request in flight
        still gets its whole response, and nothing fails on the way.
        """

        def slow(request: RecordedRequest) -> Reply:
            return Reply(body=b"done slowly", delay=8.0)

        backend = await self.startBackend(slow)
        port = freePort()
        process, transport = await self.startWorkers(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            'workers = 2\ndrain_timeout = "30s"\n'
            f'[pools.app]\nservers = ["http://127.0.0.1:{backend.portNumber}"]\n'
            '[[routes]]\npool = "app"\n'
        )
        client = await self.rawClient(port)
        client.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(100):
            if backend.requests:
                break
            await sleep(0.05)
        self.assertEqual([r.target for r in backend.requests], [b"/slow"])

        transport.signalProcess("TERM")
        stoppedAt = reactor.seconds()
        refusedAt = None
        # Bounded well inside the slow request, which would end the drain
        # (and so the listening socket) by itself: 5 s on a loaded machine.
        for _ in range(100):
            try:
                probe = await connectRaw(reactor, port)
            except ConnectionRefusedError:
                refusedAt = reactor.seconds()
                break
            # Accepted (by a worker not yet stopped, or left in the queue of
            # a socket still open): not refused yet.
            probe.transport.abortConnection()
            await sleep(0.05)
        self.assertIsNotNone(
            refusedAt, "new connections were still accepted 5 seconds after SIGTERM"
        )
        assert refusedAt is not None
        self.assertLess(refusedAt - stoppedAt, 5.0)

        data = await client.waitFor(lambda d: d.endswith(b"done slowly"), reactor, 20)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        await process.ended.addTimeout(20, reactor)
        self.assertFalse(process.running)
        self.assertNotIn(b"Traceback", process.output, process.output.decode())


#: The most requests a test sends before both workers have had some.
_MOST_REQUESTS = 1200


class TotalsOverWorkersTests(WorkersTestCase):
    """
    With two workers, C{/metrics} and C{/status.json} (served by the first
    one) count every request of both, and keep counting through a
    worker's restart.
    """

    async def startProxy2(self) -> tuple[Any, int, int, TwistdProcess, Any]:
        """
        A backend, and C{twistd rproxy} with two workers and an admin
        listener in front of it.

        @return: The backend, the proxy's port, the admin port, the process
            and its transport.
        """
        backend = await self.startBackend()
        port, adminPort = freePort(), freePort()
        process, transport = await self.startWorkers(
            f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
            'workers = 2\ndrain_timeout = "5s"\n'
            f'[admin]\nlisten = ["tcp:{adminPort}:interface=127.0.0.1"]\n'
            f'[pools.app]\nservers = ["http://127.0.0.1:{backend.portNumber}"]\n'
            '[[routes]]\npool = "app"\n'
        )
        return backend, port, adminPort, process, transport

    async def admin(self, adminPort: int, target: bytes) -> bytes:
        """
        The body of C{target} on the admin listener (asserted 200).
        """
        for _ in range(100):
            try:
                _, responses = await self.rawExchange(
                    adminPort,
                    b"GET " + target + b" HTTP/1.1\r\nHost: admin\r\n"
                    b"Connection: close\r\n\r\n",
                )
                break
            except ConnectionRefusedError:
                # Worker 0 not listening yet (or being restarted).
                await sleep(0.1)
        [response] = responses
        self.assertEqual(response.status, 200, response.raw)
        body: bytes = response.body
        return body

    async def status(self, adminPort: int) -> dict[str, Any]:
        body = await self.admin(adminPort, b"/status.json")
        status: dict[str, Any] = json.loads(body)
        return status

    async def metrics(self, adminPort: int) -> dict[str, dict[str, float]]:
        """
        C{rproxy_requests_total} (under C{"total"}) and each worker's
        C{rproxy_worker_*} figures, as Prometheus parses them.
        """
        text = (await self.admin(adminPort, b"/metrics")).decode()
        found: dict[str, dict[str, float]] = {"total": {}}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "rproxy_requests_total":
                    self.assertNotIn("worker", sample.labels)
                    found["total"]["requests"] = (
                        found["total"].get("requests", 0) + sample.value
                    )
                elif sample.name.startswith("rproxy_worker_") and not (
                    sample.name.endswith("_created")
                ):
                    figures = found.setdefault(sample.labels["worker"], {})
                    name = sample.name[len("rproxy_worker_") :]
                    figures[name] = figures.get(name, 0) + sample.value
        return found

    async def send(self, port: int, count: int, start: int) -> None:
        """
        C{count} requests at once, each on a connection of its own (so that
        the kernel spreads them over the workers), each answered 200.
        """

        async def one(n: int) -> None:
            _, [response] = await self.rawExchange(
                port,
                b"GET /r%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % (n,),
            )
            self.assertEqual(response.status, 200)

        await gatherResults(
            [Deferred.fromCoroutine(one(start + n)) for n in range(count)]
        )

    async def sendUntilBothWorkers(self, port: int, adminPort: int) -> int:
        """
        Send requests in batches until the per-worker figures show both
        workers answered some.

        @return: How many requests were sent.
        """
        sent = 0
        while sent < _MOST_REQUESTS:
            await self.send(port, 40, sent)
            sent += 40
            workers = (await self.status(adminPort))["workers"]
            if len(workers) == 2 and all(w["requests"] > 0 for w in workers):
                return sent
        self.fail(f"{sent} requests did not reach both workers")

    @asyncTest
    async def test_metricsCountEveryRequest(self) -> None:
        """
        N requests spread over both workers (each worker's figures say it
        answered some): C{rproxy_requests_total} is N, the per-worker
        figures add up to N, and C{/status.json}'s totals say N too, as the
        backend does; once the proxy stops, its run directory is gone.
        """
        backend, port, adminPort, process, transport = await self.startProxy2()
        sent = await self.sendUntilBothWorkers(port, adminPort)
        self.assertEqual(len(backend.requests), sent)

        metrics = await self.metrics(adminPort)
        self.assertEqual(metrics["total"]["requests"], sent)
        self.assertEqual(sorted(metrics), ["0", "1", "total"])
        for worker in ("0", "1"):
            self.assertGreater(metrics[worker]["requests_total"], 0)
            self.assertEqual(metrics[worker]["up"], 1)
            self.assertEqual(metrics[worker]["starts_total"], 1)
        self.assertEqual(
            metrics["0"]["requests_total"] + metrics["1"]["requests_total"], sent
        )

        status = await self.status(adminPort)
        self.assertEqual(status["totals"]["requests"], sent)
        self.assertEqual(status["totals"]["statuses"], {"2xx": sent})
        self.assertEqual(status["totals"]["workers"], 2)
        workers = status["workers"]
        self.assertEqual([w["worker"] for w in workers], [0, 1])
        self.assertEqual([w["live"] for w in workers], [True, True])
        self.assertEqual(sum(w["requests"] for w in workers), sent)
        self.assertEqual(
            [w["requests"] for w in workers],
            [metrics["0"]["requests_total"], metrics["1"]["requests_total"]],
        )
        page = (await self.admin(adminPort, b"/")).decode()
        self.assertIn("<h2>Workers</h2>", page)
        self.assertIn(f'<div class="n">{sent}</div>', page)

        match = re.search(rb"their counts in (\S+)\)", process.output)
        assert match is not None, process.output
        directory = match.group(1).decode()
        self.assertTrue(os.path.isdir(directory))
        transport.signalProcess("TERM")
        await process.ended.addTimeout(30, reactor)
        self.assertFalse(os.path.exists(directory))
        self.assertNotIn(b"Traceback", process.output, process.output.decode())

    @asyncTest
    async def test_totalsKeptThroughRestart(self) -> None:
        """
        A worker killed (SIGKILL) and started again by the supervisor: the
        totals keep what it counted, it counts on from there, and the
        requests after the restart are added.
        """
        backend, port, adminPort, process, transport = await self.startProxy2()
        sent = await self.sendUntilBothWorkers(port, adminPort)
        before = (await self.status(adminPort))["workers"][1]
        # Its counts file is rewritten every second: the last one is whole.
        await sleep(1.5)
        os.kill(before["pid"], signal.SIGKILL)
        after = before
        for _ in range(300):
            await sleep(0.1)
            status = await self.status(adminPort)
            self.assertEqual(status["totals"]["requests"], sent)
            after = status["workers"][1]
            if after["live"] and after["pid"] != before["pid"]:
                break
        self.assertNotEqual(after["pid"], before["pid"], "worker 1 not restarted")
        self.assertEqual(after["starts"], 2)
        self.assertEqual(after["requests"], before["requests"])

        metrics = await self.metrics(adminPort)
        self.assertEqual(metrics["total"]["requests"], sent)
        self.assertEqual(metrics["1"]["starts_total"], 2)
        self.assertEqual(metrics["1"]["up"], 1)

        await self.send(port, 40, sent)
        sent += 40
        self.assertEqual(len(backend.requests), sent)
        metrics = await self.metrics(adminPort)
        self.assertEqual(metrics["total"]["requests"], sent)
        self.assertEqual(
            metrics["0"]["requests_total"] + metrics["1"]["requests_total"], sent
        )
        self.assertEqual((await self.status(adminPort))["totals"]["requests"], sent)
