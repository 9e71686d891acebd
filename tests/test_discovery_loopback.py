"""
Loopback tests of DNS discovery: a real DNS server (twisted.names, on a
loopback port, serving a zone the tests change) and backends (twisted.web
Sites) on 127.0.0.2, 127.0.0.3, ...; the proxy (L{ProxyService}) finds
them by C{dns} and C{srv} entries.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.web.server import Site

from tests.dnsserver import (
    DNSServer,
    NamedResource,
    ZoneAuthority,
    canListen,
    listenAll,
)
from tests.fixtures import LoopbackTestCase, asyncTest, sleep, url
from twisted_rproxy.config import (
    AdminConfig,
    Config,
    HealthCheckConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.config.discovery import DiscoveryConfig
from twisted_rproxy.service import ProxyService


class DiscoveryLoopbackTests(LoopbackTestCase):
    """
    Servers found by DNS serve, move and survive a DNS outage.
    """

    def setUp(self) -> None:
        super().setUp()
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            if not canListen(address):
                self.skipTest(f"{address} is not a loopback address here")
        self.zone = ZoneAuthority("test")
        self.dns = DNSServer(self.zone)
        self.dns.start()
        self.addCleanup(self.dns.stop)

    def startBackends(
        self, *addresses: str, delay: float = 0.0
    ) -> tuple[int, dict[str, NamedResource]]:
        """
        A backend on each of C{addresses}, all on one port.
        """
        resources = {a: NamedResource(a, delay) for a in addresses}
        sites = [(a, Site(resources[a])) for a in addresses]
        for _, site in sites:
            site.noisy = False
        port, ports = listenAll(sites)
        for listening in ports:
            self.addCleanup(listening.stopListening)
        return port, resources

    async def startDiscoveringProxy(
        self,
        *entries: DiscoveryConfig,
        admin: bool = False,
        **poolOptions: Any,
    ) -> tuple[ProxyService, int]:
        pool = PoolConfig(name="app", servers=(), discovery=entries, **poolOptions)
        config = Config(
            source="test",
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",),
                resolvers=(("127.0.0.1", self.dns.port),),
            ),
            pools={"app": pool},
            routes=(RouteConfig(path="/", pool="app"),),
            admin=(
                AdminConfig(listen=("tcp:0:interface=127.0.0.1",), metrics=False)
                if admin
                else None
            ),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        return service, int(listening[0].getHost().port)

    async def waitFor(self, condition: Any, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if condition():
                return
            await sleep(0.02)
        self.fail(f"not true within {timeout}s: {condition}")

    def serving(self, service: ProxyService) -> set[str]:
        return {s.url for s in service.pools["app"].status().servers if s.serving}

    async def fetch(self, port: int, count: int) -> list[bytes]:
        client = self.httpClient(maxPersistent=4)
        bodies = []
        for n in range(count):
            response = await client.get(url(port, f"/{n}"))
            self.assertEqual(response.code, 200)
            bodies.append(await response.content())
        return bodies

    @asyncTest
    async def test_discoversEveryAddress(self) -> None:
        """
        Every A record of a C{dns} entry's name is a server, and requests
        reach each of them.
        """
        port, backends = self.startBackends("127.0.0.2", "127.0.0.3")
        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=30)
        service, proxyPort = await self.startDiscoveringProxy(
            DiscoveryConfig(kind="dns", name="app.test", port=port, refresh=10.0)
        )
        await self.waitFor(lambda: len(self.serving(service)) == 2)
        self.assertEqual(
            self.serving(service),
            {f"http://127.0.0.2:{port}", f"http://127.0.0.3:{port}"},
        )
        bodies = await self.fetch(proxyPort, 10)
        self.assertEqual(set(bodies), {b"127.0.0.2", b"127.0.0.3"})
        self.assertEqual(backends["127.0.0.2"].requests, 5)
        (entry,) = service.pools["app"].status().discovery
        self.assertIsNone(entry.lastError)
        self.assertEqual(entry.failures, 0)
        # The next resolution: at the refresh, the records' TTL being longer.
        assert entry.nextResolution is not None and entry.lastSuccess is not None
        self.assertAlmostEqual(entry.nextResolution - entry.lastSuccess, 10.0, 0)

    @asyncTest
    async def test_removedUnderLoad(self) -> None:
        """
        Eight clients send requests (at most 300 each) while one of the
        two addresses leaves the zone, until 80 more are done after the
        proxy has let its server go. No request fails; once the proxy has
        seen the change, that backend gets no more requests and its
        server is forgotten once its requests in flight are done.
        """
        port, backends = self.startBackends("127.0.0.2", "127.0.0.3", delay=0.01)
        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
        service, proxyPort = await self.startDiscoveringProxy(
            DiscoveryConfig(kind="dns", name="app.test", port=port, refresh=5.0)
        )
        await self.waitFor(lambda: len(self.serving(service)) == 2)
        client = self.httpClient(maxPersistent=8)
        failures: list[object] = []
        done = [0]
        stopAt = [8 * 300]

        async def load(worker: int) -> None:
            for n in range(300):
                if done[0] >= stopAt[0]:
                    return
                try:
                    response = await client.get(url(proxyPort, f"/w{worker}/{n}"))
                    body = await response.content()
                except Exception as e:
                    failures.append(e)
                    continue
                if response.code != 200:
                    failures.append((response.code, body))
                done[0] += 1
                await sleep(0.01)

        running = gatherResults([Deferred.fromCoroutine(load(w)) for w in range(8)])
        await self.waitFor(lambda: done[0] >= 40)
        self.zone.setAddresses("app.test", ["127.0.0.2"], ttl=1)
        gone = f"http://127.0.0.3:{port}"
        pool = service.pools["app"]
        await self.waitFor(lambda: gone not in self.serving(service))
        # Its requests in flight finish; then it is forgotten.
        await self.waitFor(lambda: all(b.server.url != gone for b in pool.servers))
        seen = backends["127.0.0.3"].requests
        after = backends["127.0.0.2"].requests
        stopAt[0] = done[0] + 80
        await running
        self.assertGreaterEqual(done[0], stopAt[0], "the load ended before")
        self.assertEqual(failures, [])
        self.assertGreater(seen, 0)
        self.assertEqual(backends["127.0.0.3"].requests, seen)
        # Each of the eight clients may have had one request at the
        # remaining backend, not yet answered, when it was counted: those
        # are in "after" but not yet in "done".
        self.assertGreaterEqual(backends["127.0.0.2"].requests, after + 80 - 8)
        # Every request done reached a backend.
        self.assertGreaterEqual(backends["127.0.0.2"].requests + seen, done[0])

    @asyncTest
    async def test_keepsServingWhenDNSStops(self) -> None:
        """
        When the DNS server stops answering, the pool keeps the servers of
        the last good answer, and its status (and the admin's
        C{/status.json} and page) says that resolution fails.
        """
        port, backends = self.startBackends("127.0.0.2", "127.0.0.3")
        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
        service, proxyPort = await self.startDiscoveringProxy(
            DiscoveryConfig(kind="dns", name="app.test", port=port, refresh=1.0),
            admin=True,
        )
        await self.waitFor(lambda: len(self.serving(service)) == 2)
        await self.dns.stop()
        pool = service.pools["app"]
        await self.waitFor(lambda: pool.status().discovery[0].failures >= 1)
        (entry,) = pool.status().discovery
        self.assertIn("timed out", entry.lastError or "")
        self.assertEqual(len(entry.servers), 2)
        bodies = await self.fetch(proxyPort, 6)
        self.assertEqual(set(bodies), {b"127.0.0.2", b"127.0.0.3"})
        admin = service.admin
        assert admin is not None
        status: Any = json.loads(json.dumps(admin.status()))
        (shown,) = status["pools"][0]["discovery"]
        self.assertEqual(shown["entry"], f"dns app.test port {port}")
        self.assertIn("timed out", shown["lastError"])
        self.assertGreaterEqual(shown["failures"], 1)
        from twisted_rproxy.adminpage import renderPage

        page = renderPage(admin.status(), 0)
        self.assertIn("dns app.test port", page)
        self.assertIn("keeping the 2 servers of its last answer", page)

    @asyncTest
    async def test_firstResolutionFails(self) -> None:
        """
        A pool whose name does not resolve yet has no server: requests get
        503; resolution is retried, and once the name has records the
        pool serves.
        """
        port, backends = self.startBackends("127.0.0.2")
        service, proxyPort = await self.startDiscoveringProxy(
            DiscoveryConfig(kind="dns", name="late.test", port=port, refresh=30.0)
        )
        pool = service.pools["app"]
        await self.waitFor(lambda: pool.status().discovery[0].failures >= 1)
        self.assertIn("NXDOMAIN", pool.status().discovery[0].lastError or "")
        client = self.httpClient()
        response = await client.get(url(proxyPort))
        self.assertEqual(response.code, 503)
        await response.content()
        self.zone.setAddresses("late.test", ["127.0.0.2"])
        await self.waitFor(lambda: len(self.serving(service)) == 1)
        self.assertEqual(await self.fetch(proxyPort, 2), [b"127.0.0.2"] * 2)

    async def startSRVBackends(self) -> tuple[list[int], dict[str, NamedResource]]:
        resources = {}
        ports = []
        for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            resource = NamedResource(address)
            site = Site(resource)
            site.noisy = False
            listening = reactor.listenTCP(0, site, interface=address)
            self.addCleanup(listening.stopListening)
            resources[address] = resource
            ports.append(listening.getHost().port)
        return ports, resources

    @asyncTest
    async def test_srvWeightsAndPriorities(self) -> None:
        """
        An C{srv} entry's servers are the records' targets and ports, with
        their weights; the higher priority serves only when no server of
        the lowest is healthy.
        """
        ports, backends = await self.startSRVBackends()
        for n, address in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
            self.zone.setAddresses(f"b{n}.test", [address])
        self.zone.setServices(
            "_http._tcp.api.test",
            [
                (10, 3, ports[0], "b0.test"),
                (10, 1, ports[1], "b1.test"),
                (20, 5, ports[2], "b2.test"),
            ],
        )
        service, proxyPort = await self.startDiscoveringProxy(
            DiscoveryConfig(kind="srv", name="_http._tcp.api.test", refresh=5.0),
            health=HealthCheckConfig(
                path="/health", interval=0.1, timeout=0.1, rise=1, fall=1
            ),
        )
        pool = service.pools["app"]
        await self.waitFor(lambda: len(pool.servers) == 3)
        await self.waitFor(lambda: len(self.serving(service)) == 2)
        weights = {s.url: s.weight for s in pool.status().servers}
        self.assertEqual(
            weights,
            {
                f"http://127.0.0.2:{ports[0]}": 3,
                f"http://127.0.0.3:{ports[1]}": 1,
                f"http://127.0.0.4:{ports[2]}": 5,
            },
        )
        bodies = await self.fetch(proxyPort, 40)
        self.assertEqual(bodies.count(b"127.0.0.2"), 30)
        self.assertEqual(bodies.count(b"127.0.0.3"), 10)
        self.assertEqual(backends["127.0.0.4"].requests, 0)
        # Both servers of priority 10 fail their checks: priority 20 serves.
        backends["127.0.0.2"].healthy = backends["127.0.0.3"].healthy = False
        backup = f"http://127.0.0.4:{ports[2]}"
        await self.waitFor(lambda: self.serving(service) == {backup})
        self.assertEqual(await self.fetch(proxyPort, 4), [b"127.0.0.4"] * 4)
        # One of priority 10 is back: it alone serves again.
        backends["127.0.0.3"].healthy = True
        primary = f"http://127.0.0.3:{ports[1]}"
        await self.waitFor(lambda: self.serving(service) == {primary})
        self.assertEqual(await self.fetch(proxyPort, 4), [b"127.0.0.3"] * 4)

    @asyncTest
    async def test_ipv6Addresses(self) -> None:
        """
        AAAA records are servers too (on the IPv6 loopback, C{::1}).
        """
        if not canListen("::1"):
            self.skipTest("this machine has no IPv6 loopback (::1)")
        resource = NamedResource("::1")
        site = Site(resource)
        site.noisy = False
        listening = reactor.listenTCP(0, site, interface="::1")
        self.addCleanup(listening.stopListening)
        port = listening.getHost().port
        self.zone.setAddresses("six.test", ["::1"])
        service, proxyPort = await self.startDiscoveringProxy(
            DiscoveryConfig(kind="dns", name="six.test", port=port)
        )
        await self.waitFor(lambda: self.serving(service) == {f"http://[::1]:{port}"})
        self.assertEqual(await self.fetch(proxyPort, 2), [b"::1"] * 2)

    @asyncTest
    async def test_reload(self) -> None:
        """
        A reload that keeps a pool keeps its discovery; one that rebuilds
        the pool gives the new pool the servers found so far at once (not
        an empty pool until its first answer), and stops the old
        discovery.
        """
        port, backends = self.startBackends("127.0.0.2", "127.0.0.3")
        self.zone.setAddresses("app.test", ["127.0.0.2", "127.0.0.3"], ttl=30)
        entry = DiscoveryConfig(kind="dns", name="app.test", port=port, refresh=30.0)
        service, proxyPort = await self.startDiscoveringProxy(entry)
        await self.waitFor(lambda: len(self.serving(service)) == 2)
        first = service.discoveries["app"]
        service.reload(service.config)
        self.assertIs(service.discoveries["app"], first)
        changed = evolve(service.config.pools["app"], retries=2)
        service.reload(evolve(service.config, pools={"app": changed}))
        second = service.discoveries["app"]
        self.assertIsNot(second, first)
        self.assertFalse(first.running)
        self.assertEqual(len(self.serving(service)), 2)
        self.assertEqual(
            set(await self.fetch(proxyPort, 4)), {b"127.0.0.2", b"127.0.0.3"}
        )
