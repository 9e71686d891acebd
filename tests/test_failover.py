"""
Loopback tests of load balancing, health and failover: the real proxy
(L{ProxyService} on 127.0.0.1) in front of several real backends, one of
which dies and comes back while another answers 500s; and reloading the
pools of a running service.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import (
    LoopbackTestCase,
    asyncTest,
    backendServer,
    sleep,
    url,
)
from tests.loopback import LOCALHOST, RecordedRequest, RecordingBackend, Reply
from twisted_rproxy import tap
from twisted_rproxy.config import (
    Config,
    HealthCheckConfig,
    OutlierConfig,
    PoolConfig,
    RetryBudgetConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.service import ProxyService


def served(backend: RecordingBackend) -> int:
    """
    How many requests other than health checks C{backend} received.
    """
    return len([r for r in backend.requests if r.target != b"/health"])


class FailoverTests(LoopbackTestCase):
    """
    Three backends behind the proxy: one killed and restarted, one failing.
    """

    @asyncTest
    async def test_zeroFailedRequests(self) -> None:
        """
        Under a bounded load of GETs from 10 clients, one backend is killed
        (and later restarted on its port) and another answers 500s: every
        client request succeeds, and the restarted backend gets traffic
        again once its health checks pass.
        """
        failing = False

        def flaky(request: RecordedRequest) -> Reply:
            if failing:
                return Reply(status=500, reason=b"Oops", body=b"broken")
            return Reply(body=request.target)

        steady = await self.startBackend()
        dying = await self.startBackend()
        erring = await self.startBackend(flaky)
        dyingPort = dying.portNumber
        port = await self.startProxy(
            steady.portNumber,
            dyingPort,
            erring.portNumber,
            health=HealthCheckConfig(
                path="/health", interval=0.1, timeout=0.1, rise=2, fall=2
            ),
            outlier=OutlierConfig(
                consecutiveFailures=3, baseEjection=0.3, maxEjection=0.5
            ),
            retries=3,
            retryStatuses=(500, 502, 503, 504),
            retryBudget=RetryBudgetConfig(percent=50, minRetries=50),
            panicThreshold=30,
        )
        restarted: list[RecordingBackend] = []
        done = 0
        failures: list[str] = []

        async def phase() -> None:
            nonlocal failing
            if done == 100:
                await dying.stop()
            elif done == 200:
                failing = True
            elif done == 300:
                backend = RecordingBackend(reactor)
                endpoint = TCP4ServerEndpoint(reactor, dyingPort, interface=LOCALHOST)
                backend.port = await endpoint.listen(backend)
                self.addCleanup(backend.stop)
                restarted.append(backend)

        async def client(number: int) -> None:
            nonlocal done
            http = self.httpClient()
            for i in range(60):
                path = f"/c{number}/r{i}"
                response = await http.get(url(port, path))
                body = await response.content()
                if response.code != 200 or body != path.encode():
                    failures.append(f"{path}: {response.code} {body[:40]!r}")
                done += 1
                await phase()
                await sleep(0.02)

        clients = [Deferred.fromCoroutine(client(n)) for n in range(10)]
        await gatherResults(clients).addTimeout(60, reactor)
        self.assertEqual(failures, [])
        self.assertEqual(done, 600)
        self.assertGreater(served(dying), 0)
        self.assertEqual(len(restarted), 1)
        self.assertGreater(served(restarted[0]), 0)
        self.assertGreater(served(erring), 0)


class ReloadTests(LoopbackTestCase):
    """
    L{ProxyService.reload} changes the backends of a running proxy.
    """

    def config(self, *ports: int) -> Config:
        return Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=tuple(backendServer(p) for p in ports)
                )
            },
            routes=(RouteConfig(path="/", pool="app"),),
        )

    @asyncTest
    async def test_reloadSwapsBackends(self) -> None:
        """
        After a reload, new requests go to the new backend; a request in
        flight on the old pool finishes there; a pool whose configuration
        did not change is kept.
        """
        old = await self.startBackend(lambda r: Reply(body=b"old", delay=0.3))
        new = await self.startBackend(lambda r: Reply(body=b"new"))
        service = ProxyService(self.config(old.portNumber), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        http = self.httpClient()
        inFlight = http.get(url(port))
        await sleep(0.1)
        oldPool = service.pools["app"]
        service.reload(self.config(new.portNumber))
        response = await http.get(url(port))
        self.assertEqual(await response.content(), b"new")
        response = await inFlight
        self.assertEqual(await response.content(), b"old")
        self.assertTrue(oldPool.status().closed)
        kept = service.pools["app"]
        service.reload(self.config(new.portNumber))
        self.assertIs(service.pools["app"], kept)


class ReloadSignalTests(SynchronousTestCase):
    """
    What SIGHUP runs with a configuration file (L{tap._reload}).
    """

    class Service:
        def __init__(self) -> None:
            self.calls: list[object] = []

        def reload(self, config: Config) -> None:
            self.calls.append(config)

        def reloadCertificates(self) -> bool:
            self.calls.append("certificates")
            return True

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_goodFileReloads(self) -> None:
        """
        A valid file is loaded and given to L{ProxyService.reload}.
        """
        service = self.Service()
        path = self.write(
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\nbalance = "hash"\n'
            '[[routes]]\npool = "app"\n'
        )
        tap._reload(service, path)  # type: ignore[arg-type]
        [config] = service.calls
        assert isinstance(config, Config)
        self.assertEqual(config.pools["app"].balance, "hash")

    def test_badFileKeepsRunning(self) -> None:
        """
        A file with a mistake is logged; the running configuration stays
        (only the certificates are read again).
        """
        service = self.Service()
        path = self.write(
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\nbalance = "x"\n'
        )
        tap._reload(service, path)  # type: ignore[arg-type]
        self.assertEqual(service.calls, ["certificates"])
