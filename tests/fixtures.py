"""
Shared fixtures of the loopback tests: L{LoopbackTestCase} (backends, the
proxy and clients on 127.0.0.1, stopped in order, with a tear-down check
that every backend pool is back at rest), L{asyncTest}, and the helpers
that run C{twistd} in a subprocess.

The lower-level pieces (the recording backend, the raw client, the
response parser) are in L{tests.loopback}.
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.loopback import (
    LOCALHOST,
    RawClient,
    RecordedRequest,
    RecordingBackend,
    Reply,
    connectRaw,
    echoReply,
    finalCount,
    parseResponses,
    waitForQuiet,
)
from twisted_rproxy.config import (
    BackendServer,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.service import ProxyService

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Runs twistd in the current interpreter: C{python -m twisted} is C{twist}.
TWISTD = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)


#: The target of the well-formed request that
#: L{LoopbackTestCase.requestsBeforeSentinel} sends.
SENTINEL_TARGET = b"/.sentinel"


def asyncTest(
    method: Callable[[Any], Coroutine[Any, Any, None]],
) -> Callable[[Any], Deferred[None]]:
    """
    Run an C{async def} test method as a L{Deferred}, for trial and pytest
    alike.
    """

    @functools.wraps(method)
    def run(self: Any) -> Deferred[None]:
        return Deferred.fromCoroutine(method(self))

    return run


async def sleep(seconds: float) -> None:
    """
    Wait C{seconds} on the global reactor.
    """
    await deferLater(reactor, seconds, lambda: None)


def freePort() -> int:
    """
    A port on 127.0.0.1 that nothing listens on.
    """
    s = socket.socket()
    s.bind((LOCALHOST, 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def backendServer(port: int) -> BackendServer:
    """
    The L{BackendServer} of an HTTP backend on 127.0.0.1:C{port}.
    """
    return BackendServer(
        url=f"http://{LOCALHOST}:{port}", scheme="http", host=LOCALHOST, port=port
    )


class LoopbackTestCase(TestCase):
    """
    Starts backends, the proxy and clients, and stops them all in order:
    clients, then the proxy, then the backends, then waits until no
    connection is left open.
    """

    def setUp(self) -> None:
        self._clientPools: list[HTTPConnectionPool] = []
        # Registered first, so run last: once every client, proxy and
        # backend is gone, every pool the test made is back at rest.
        self._backendPools: list[BackendPool] = []
        self.addCleanup(self._assertPoolsAtRest)
        originalInit = BackendPool.__init__

        def recordingInit(pool: BackendPool, *args: Any, **kwargs: Any) -> None:
            originalInit(pool, *args, **kwargs)
            self._backendPools.append(pool)

        self.patch(BackendPool, "__init__", recordingInit)
        # Cleanups run last-added first: these two run after everything.  A
        # response whose body a failed test never read returns its
        # connection to the client pool late: close the pools once more.
        self.addCleanup(self._closeClientPools)
        self.addCleanup(lambda: Deferred.fromCoroutine(waitForQuiet(reactor)))

    async def _poolsAtRest(self, timeout: float = 3.0) -> None:
        for _ in range(int(timeout / 0.01)):
            if all(p.pendingCount == 0 and p.inFlight == 0 for p in self._backendPools):
                return
            await sleep(0.01)

    def _assertPoolsAtRest(self) -> Deferred[None]:
        """
        Every backend pool used is at rest: nothing in flight or queued,
        and its bookkeeping consistent (a slot not given back would wedge
        a long-running pool).
        """

        async def check() -> None:
            await self._poolsAtRest()
            for pool in self._backendPools:
                pool.checkConsistency()
                status = pool.status()
                self.assertEqual(status.pending, 0, f"{pool!r}: requests queued")
                self.assertEqual(
                    [s.inFlight for s in status.servers],
                    [0] * len(status.servers),
                    f"{pool!r}: requests left in flight",
                )

        return Deferred.fromCoroutine(check())

    def _closeClientPools(self) -> Deferred[object]:
        return gatherResults(
            [pool.closeCachedConnections() for pool in self._clientPools]
        )

    async def startBackend(
        self, handler: Callable[[RecordedRequest], Reply] = echoReply
    ) -> RecordingBackend:
        backend = RecordingBackend(reactor, handler)
        await backend.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(backend.stop()))
        return backend

    async def startProxy(
        self,
        *ports: int,
        server: dict[str, Any] | None = None,
        **poolOptions: Any,
    ) -> int:
        """
        Run a L{ProxyService} in front of the backends on C{ports}.

        @return: The port the proxy listens on.
        """
        pool = PoolConfig(
            name="app", servers=tuple(backendServer(p) for p in ports), **poolOptions
        )
        config = Config(
            source="test",
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",), **(server or {})
            ),
            pools={"app": pool},
            routes=(RouteConfig(path="/", pool="app"),),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        port: int = listening[0].getHost().port
        return port

    def httpClient(self, maxPersistent: int = 2) -> HTTPClient:
        """
        A treq client with its own persistent connection pool.
        """
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = maxPersistent
        self._clientPools.append(pool)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(Agent(reactor, pool=pool))

    async def rawClient(self, port: int) -> RawClient:
        client = await connectRaw(reactor, port)

        def close() -> None:
            if not client.closed:
                client.transport.abortConnection()

        self.addCleanup(close)
        return client

    async def rawExchange(
        self,
        port: int,
        data: bytes,
        responses: int = 1,
        methods: list[bytes] | None = None,
        timeout: float = 10.0,
    ) -> tuple[RawClient, list[Any]]:
        """
        Send C{data} on a new raw connection and parse the responses once
        C{responses} final ones are complete (or the connection closed).
        """
        client = await self.rawClient(port)
        client.write(data)
        received = await client.waitFor(
            finalCount(responses, methods), reactor, timeout
        )
        parsed, _ = parseResponses(received, methods, closed=client.closed)
        return client, parsed

    async def requestsBeforeSentinel(
        self, port: int, backend: RecordingBackend, timeout: float = 5.0
    ) -> list[RecordedRequest]:
        """
        Send a well-formed GET of L{SENTINEL_TARGET} to the proxy on C{port},
        on a new connection, wait until C{backend} has recorded it, and
        return what the backend received before it.

        A check that nothing more reached the backend then cannot pass
        because the backend was slow or never reached: once the sentinel is
        recorded, the proxy has had its turn to forward anything it had
        parsed before.

        @raise AssertionError: If the sentinel does not reach the backend
            within C{timeout} seconds, or something reaches it after the
            sentinel.
        """
        client = await self.rawClient(port)
        client.write(
            b"GET " + SENTINEL_TARGET + b" HTTP/1.1\r\nHost: sentinel.test\r\n"
            b"Connection: close\r\n\r\n"
        )
        for _ in range(int(timeout / 0.01)):
            if any(r.target == SENTINEL_TARGET for r in backend.requests):
                break
            await sleep(0.01)
        await client.waitFor(finalCount(1), reactor, timeout)
        targets = [r.target for r in backend.requests]
        self.assertEqual(
            targets.count(SENTINEL_TARGET),
            1,
            f"the sentinel did not reach the backend once: {targets!r}",
        )
        self.assertEqual(
            targets[-1], SENTINEL_TARGET, f"requests after the sentinel: {targets!r}"
        )
        return backend.requests[:-1]


def url(port: int, path: str = "/") -> str:
    """
    The URL of C{path} on 127.0.0.1:C{port}.
    """
    return f"http://{LOCALHOST}:{port}{path}"


class TwistdProcess(ProcessProtocol):
    """
    A C{twistd rproxy} subprocess: its output, the port it listens on, and
    its end.
    """

    def __init__(self) -> None:
        self.output = b""
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[Any] = Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data
        match = re.search(rb"Listening on IPv4Address\(.*?port=(\d+)\)", self.output)
        if match and not self.listening.called:
            self.listening.callback(int(match.group(1)))

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        self.running = False
        if not self.listening.called:
            self.listening.errback(reason)
        self.ended.callback(reason.value)


def twistdEnvironment() -> dict[str, str]:
    """
    The environment of a C{twistd} subprocess: this checkout importable.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env
