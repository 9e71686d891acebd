"""
Tests for L{twisted_rproxy.workers}: the supervisor and its worker
processes, run as C{twistd -n rproxy} with C{workers = 2}.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
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


class SupervisorStopTests(LoopbackTestCase):
    """
    SIGTERM to the supervisor: the workers drain, and the listeners close at
    once.
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
