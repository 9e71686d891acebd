"""
Tests of DNS discovery on a memory reactor: the arithmetic
(L{twisted_rproxy.discovery}), the driver
(L{twisted_rproxy.pool.discovery.ServerDiscovery}) with a resolver whose
answers the tests give, and the failover order of priorities in
L{twisted_rproxy.pool.BackendPool}. The loopback tests, with a real DNS
server, are in L{tests.test_discovery_loopback}.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import Any

from attrs import define
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names import error as dnserror
from twisted.trial.unittest import SynchronousTestCase

from tests.test_pool import Harness, server
from twisted_rproxy import tap
from twisted_rproxy.config import BackendServer, PoolConfig
from twisted_rproxy.config.discovery import DiscoveryConfig
from twisted_rproxy.discovery import (
    ServiceRecord,
    addressServers,
    failoverTier,
    refreshDelay,
    retryDelay,
    serverURL,
    serviceServers,
)
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.pool import discovery as driver
from twisted_rproxy.pool.discovery import ServerDiscovery, parseResolvConf

DNS = DiscoveryConfig(kind="dns", name="app.test", port=8000, refresh=10.0)
SRV = DiscoveryConfig(kind="srv", name="_http._tcp.api.test", refresh=10.0)


def a(name: str, address: str, ttl: int = 60) -> dns.RRHeader:
    return dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(address, ttl))


def aaaa(name: str, address: str, ttl: int = 60) -> dns.RRHeader:
    return dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(address, ttl))


def srv(
    name: str, priority: int, weight: int, port: int, target: str, ttl: int = 60
) -> dns.RRHeader:
    record = dns.Record_SRV(priority, weight, port, target, ttl)
    return dns.RRHeader(name, dns.SRV, dns.IN, ttl, record)


class FakeResolver:
    """
    Answers each query from C{answers}, by C{(type, name)}: records (the
    answer section), C{(answers, additional)}, an exception to fail with,
    or a L{Deferred} the test fires. Unknown names do not exist.
    """

    def __init__(self) -> None:
        self.answers: dict[tuple[int, str], Any] = {}
        self.queries: list[tuple[int, str]] = []

    def _answer(self, kind: int, name: str) -> Deferred[Any]:
        self.queries.append((kind, name))
        value = self.answers.get((kind, name), dnserror.DNSNameError())
        if isinstance(value, Deferred):
            return value
        if isinstance(value, Exception):
            return fail(value)
        if isinstance(value, tuple):
            return succeed((value[0], [], value[1]))
        return succeed((value, [], []))

    def lookupAddress(self, name: str, timeout: Sequence[int]) -> Deferred[Any]:
        return self._answer(dns.A, name)

    def lookupIPV6Address(self, name: str, timeout: Sequence[int]) -> Deferred[Any]:
        return self._answer(dns.AAAA, name)

    def lookupService(self, name: str, timeout: Sequence[int]) -> Deferred[Any]:
        return self._answer(dns.SRV, name)


def urls(pool: BackendPool) -> list[str]:
    return [b.server.url for b in pool.servers if not b.removed]


class ArithmeticTests(SynchronousTestCase):
    """
    Answers as servers, and when to ask again.
    """

    def test_addressServers(self) -> None:
        """
        One server per distinct valid address, IPv4 then IPv6 in numeric
        order, on the entry's port and with its weight.
        """
        entry = DiscoveryConfig(kind="dns", name="app.test", port=81, weight=3)
        servers = addressServers(
            entry, ["10.0.0.10", "fd00::1", "10.0.0.2", "10.0.0.2", "bogus"]
        )
        self.assertEqual(
            [s.url for s in servers],
            ["http://10.0.0.2:81", "http://10.0.0.10:81", "http://[fd00::1]:81"],
        )
        self.assertEqual(
            {(s.port, s.weight, s.priority) for s in servers}, {(81, 3, 0)}
        )
        self.assertEqual(servers[2].host, "fd00::1")

    def test_tlsServerName(self) -> None:
        """
        An https server found is verified against the entry's
        C{tls_server_name}, else the pool's (none of its own), else the
        name resolved.
        """
        https = DiscoveryConfig(kind="dns", name="app.test", port=443, scheme="https")
        (plain,) = addressServers(https, ["10.0.0.1"])
        self.assertEqual(
            (plain.url, plain.tlsServerName), ("https://10.0.0.1:443", "app.test")
        )
        (pooled,) = addressServers(https, ["10.0.0.1"], poolServerName="pool.test")
        self.assertIsNone(pooled.tlsServerName)
        named = DiscoveryConfig(
            kind="dns",
            name="app.test",
            port=443,
            scheme="https",
            tlsServerName="x.test",
        )
        (own,) = addressServers(named, ["10.0.0.1"], poolServerName="pool.test")
        self.assertEqual(own.tlsServerName, "x.test")
        (http,) = addressServers(DNS, ["10.0.0.1"])
        self.assertIsNone(http.tlsServerName)

    def test_serviceServers(self) -> None:
        """
        One server per SRV record on its target's first address, with its
        port and weight (0 counts as 1) and its priority as a rank; targets
        without an address, and C{"."}, are left out; two records of one
        address and port are one server.
        """
        records = [
            ServiceRecord(20, 5, 9002, "c.test"),
            ServiceRecord(10, 0, 9001, "b.test"),
            ServiceRecord(10, 3, 9000, "a.test"),
            ServiceRecord(10, 1, 9000, "a2.test"),
            ServiceRecord(5, 1, 9000, "gone.test"),
            ServiceRecord(1, 1, 9000, ""),
        ]
        addresses = {
            "a.test": ["10.0.0.1"],
            "a2.test": ["10.0.0.1"],
            "b.test": ["fd00::2", "10.0.0.2"],
            "c.test": ["10.0.0.3"],
        }
        servers = serviceServers(SRV, records, addresses)
        self.assertEqual(
            [(s.url, s.weight, s.priority) for s in servers],
            [
                ("http://10.0.0.1:9000", 3, 0),
                ("http://10.0.0.2:9001", 1, 0),
                ("http://10.0.0.3:9002", 5, 1),
            ],
        )

    def test_refreshDelay(self) -> None:
        """
        The refresh, or the shortest TTL when shorter, but at least 1s.
        """
        self.assertEqual(refreshDelay(10.0, [30, 60]), 10.0)
        self.assertEqual(refreshDelay(10.0, [30, 3]), 3.0)
        self.assertEqual(refreshDelay(10.0, [0]), 1.0)
        self.assertEqual(refreshDelay(10.0, []), 10.0)

    def test_retryDelay(self) -> None:
        """
        Failures are retried after 1, 2, 4... seconds, up to the refresh.
        """
        self.assertEqual([retryDelay(n, 5.0) for n in range(1, 6)], [1, 2, 4, 5, 5])
        self.assertEqual(retryDelay(200, 600.0), 600.0)

    def test_serverURL(self) -> None:
        """
        IPv6 hosts are bracketed in URLs.
        """
        self.assertEqual(serverURL("https", "::1", 8443), "https://[::1]:8443")

    def test_parseResolvConf(self) -> None:
        """
        The C{nameserver} lines of a resolv.conf, else 127.0.0.1.
        """
        text = "# x\nsearch example\nnameserver 10.0.0.53\nnameserver ::1\noptions x\n"
        self.assertEqual(parseResolvConf(text), [("10.0.0.53", 53), ("::1", 53)])
        self.assertEqual(parseResolvConf(""), [("127.0.0.1", 53)])


@define
class _Server:
    server: BackendServer
    up: bool = True
    ejected: bool = False


class FailoverTierTests(SynchronousTestCase):
    """
    L{failoverTier}: the lowest priority with a healthy server.
    """

    def test_tiers(self) -> None:
        """
        The servers of the lowest priority that has a healthy one; all of
        them when none is healthy.
        """
        primary = [_Server(server(8001)), _Server(server(8002))]
        backup = [_Server(BackendServer("http://b", "http", "b", 80, priority=1))]
        everyone = primary + backup
        self.assertEqual(failoverTier(everyone), primary)
        primary[0].up = False
        self.assertEqual(failoverTier(everyone), primary)
        primary[1].ejected = True
        self.assertEqual(failoverTier(everyone), backup)
        backup[0].up = False
        self.assertEqual(failoverTier(everyone), everyone)
        self.assertEqual(failoverTier([]), [])


class PoolPriorityTests(SynchronousTestCase):
    """
    A pool serves from its lowest priority with a healthy server.
    """

    def test_failover(self) -> None:
        """
        While a server of priority 0 is healthy, only those serve; when
        none is, those of priority 1 do (not a panic); when one is back,
        it alone serves again.
        """
        backup = BackendServer(
            "http://127.0.0.1:8003", "http", "127.0.0.1", 8003, priority=1
        )
        h = Harness(self, server(8001), server(8002), backup)
        pool = h.pool

        def serving() -> list[int]:
            return [s.server.port for s in pool._eligible]

        self.assertEqual(serving(), [8001, 8002])
        for backend in pool.servers[:2]:
            backend.up = False
        pool.healthChanged()
        self.assertEqual(serving(), [8003])
        self.assertFalse(pool.panic)
        self.assertEqual(
            [s.serving for s in pool.status().servers], [False, False, True]
        )
        pool.servers[1].up = True
        pool.healthChanged()
        self.assertEqual(serving(), [8002])
        # Nothing healthy anywhere: the panic uses every ready server.
        for backend in pool.servers:
            backend.up = False
        pool.healthChanged()
        self.assertTrue(pool.panic)
        self.assertEqual(serving(), [8001, 8002, 8003])


class DiscoveryTests(SynchronousTestCase):
    """
    L{ServerDiscovery} on a memory reactor with a L{FakeResolver}.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.resolver = FakeResolver()
        self.events: list[dict[str, Any]] = []
        self.patch(driver, "_log", Logger(observer=self.events.append))

    def discover(
        self,
        *entries: DiscoveryConfig,
        servers: tuple[BackendServer, ...] = (),
        previous: ServerDiscovery | None = None,
    ) -> tuple[BackendPool, ServerDiscovery]:
        config = PoolConfig(name="app", servers=servers, discovery=entries)
        pool = BackendPool(self.clock, config)  # type: ignore[arg-type]
        discovery = ServerDiscovery(
            self.clock,
            self.resolver,  # type: ignore[arg-type]
            pool,
            previous,
        )
        return pool, discovery

    def warnings(self) -> list[str]:
        from twisted.logger import LogLevel, formatEvent

        return [formatEvent(e) for e in self.events if e["log_level"] == LogLevel.warn]

    def setAddresses(self, *addresses: str, ttl: int = 60) -> None:
        self.resolver.answers[(dns.A, "app.test")] = [
            a("app.test", x, ttl) for x in addresses if ":" not in x
        ]
        self.resolver.answers[(dns.AAAA, "app.test")] = [
            aaaa("app.test", x, ttl) for x in addresses if ":" in x
        ]

    def test_resolvesAtStart(self) -> None:
        """
        At start, every A and AAAA record becomes a server, beside the
        pool's URL servers; the status says when and what.
        """
        self.setAddresses("10.0.0.1", "10.0.0.2", "fd00::1")
        pool, discovery = self.discover(DNS, servers=(server(8001),))
        self.assertIs(pool.discovery, discovery)
        self.assertEqual(urls(pool), ["http://127.0.0.1:8001"])
        self.clock.advance(5)
        discovery.start()
        self.assertEqual(
            urls(pool),
            [
                "http://127.0.0.1:8001",
                "http://10.0.0.1:8000",
                "http://10.0.0.2:8000",
                "http://[fd00::1]:8000",
            ],
        )
        (status,) = pool.status().discovery
        self.assertEqual(status.entry, "dns app.test port 8000")
        self.assertEqual((status.lastResolution, status.lastSuccess), (5, 5))
        self.assertEqual(status.nextResolution, 15)
        self.assertEqual((status.lastError, status.failures), (None, 0))
        self.assertEqual(len(status.servers), 3)

    def test_refreshAtTTL(self) -> None:
        """
        An entry is resolved again at its refresh, or at its records' TTL
        when that is shorter; a server that left the answer drains and is
        forgotten, a new one joins.
        """
        self.setAddresses("10.0.0.1", "10.0.0.2", ttl=3)
        pool, discovery = self.discover(DNS)
        discovery.start()
        self.assertEqual(len(self.resolver.queries), 2)
        self.setAddresses("10.0.0.2", "10.0.0.3", ttl=3)
        self.clock.advance(2.9)
        self.assertEqual(len(self.resolver.queries), 2)
        self.clock.advance(0.1)
        self.assertEqual(len(self.resolver.queries), 4)
        self.assertEqual(urls(pool), ["http://10.0.0.2:8000", "http://10.0.0.3:8000"])
        self.assertEqual(len(pool.servers), 2)

    def test_failureKeepsLastGood(self) -> None:
        """
        A failed resolution keeps the servers of the last good answer; it
        is logged once per streak of failures, shown in the status, and
        retried with backoff; an answer ends the streak.
        """
        self.setAddresses("10.0.0.1")
        pool, discovery = self.discover(DNS)
        discovery.start()
        for kind in (dns.A, dns.AAAA):
            self.resolver.answers[(kind, "app.test")] = dnserror.DNSServerError()
        self.clock.advance(10)
        self.assertEqual(urls(pool), ["http://10.0.0.1:8000"])
        (status,) = pool.status().discovery
        self.assertEqual(status.failures, 1)
        self.assertIn("SERVFAIL", status.lastError or "")
        self.assertEqual(status.servers, ("http://10.0.0.1:8000",))
        self.assertEqual(status.lastSuccess, 0)
        self.assertEqual(status.nextResolution, 11)
        self.clock.advance(1)
        self.assertEqual(pool.status().discovery[0].nextResolution, 13)
        (warning,) = self.warnings()
        self.assertIn("keeping the 1 servers of its last answer", warning)
        self.setAddresses("10.0.0.1", "10.0.0.5")
        self.clock.advance(2)
        self.assertEqual(urls(pool), ["http://10.0.0.1:8000", "http://10.0.0.5:8000"])
        status = pool.status().discovery[0]
        self.assertEqual((status.failures, status.lastError), (0, None))
        self.assertTrue(any("resolves again" in str(e) for e in self.events))

    def test_emptyAnswerKeepsLastGood(self) -> None:
        """
        A name that no longer exists, or has no address, keeps the last
        good servers too.
        """
        self.setAddresses("10.0.0.1")
        pool, discovery = self.discover(DNS)
        discovery.start()
        self.resolver.answers.clear()
        self.clock.advance(10)
        self.assertEqual(urls(pool), ["http://10.0.0.1:8000"])
        self.assertIn("NXDOMAIN", pool.status().discovery[0].lastError or "")
        self.setAddresses()
        self.clock.advance(10)
        self.assertEqual(urls(pool), ["http://10.0.0.1:8000"])
        self.assertEqual(
            pool.status().discovery[0].lastError, "the answer has no A or AAAA record"
        )

    def test_firstResolutionFails(self) -> None:
        """
        A pool whose first resolution fails has no server; it is retried
        after 1, 2, 4 seconds.
        """
        self.resolver.answers[(dns.A, "app.test")] = dnserror.DNSQueryTimeoutError(1)
        self.resolver.answers[(dns.AAAA, "app.test")] = dnserror.DNSQueryTimeoutError(1)
        pool, discovery = self.discover(DNS)
        discovery.start()
        self.assertEqual(pool.servers, [])
        self.assertEqual(pool.status().discovery[0].lastSuccess, None)
        times = []
        for _ in range(3):
            next = pool.status().discovery[0].nextResolution
            assert next is not None
            times.append(next)
            self.clock.advance(next - self.clock.seconds())
        self.assertEqual(times, [1, 3, 7])
        (warning,) = self.warnings()
        self.assertIn("the pool has no server from it yet", warning)
        self.assertIn("timed out", warning)

    def test_partialFailureKeepsFamily(self) -> None:
        """
        When only the AAAA query fails, the IPv4 servers follow the answer
        and the IPv6 ones of the last answer stay.
        """
        self.setAddresses("10.0.0.1", "fd00::1")
        pool, discovery = self.discover(DNS)
        discovery.start()
        self.setAddresses("10.0.0.2")
        self.resolver.answers[(dns.AAAA, "app.test")] = dnserror.DNSServerError()
        self.clock.advance(10)
        self.assertEqual(
            sorted(urls(pool)), ["http://10.0.0.2:8000", "http://[fd00::1]:8000"]
        )
        status = pool.status().discovery[0]
        self.assertEqual(status.failures, 0)
        self.assertIn("AAAA: the DNS server failed", status.lastError or "")

    def test_srv(self) -> None:
        """
        An C{srv} entry's targets are found in the additional records, or
        asked for.
        """
        self.resolver.answers[(dns.SRV, SRV.name)] = (
            [
                srv(SRV.name, 1, 2, 9000, "a.test"),
                srv(SRV.name, 2, 0, 9001, "b.test"),
            ],
            [a("a.test", "10.0.0.1")],
        )
        self.resolver.answers[(dns.A, "b.test")] = [a("b.test", "10.0.0.2", ttl=4)]
        self.resolver.answers[(dns.AAAA, "b.test")] = []
        pool, discovery = self.discover(SRV)
        discovery.start()
        self.assertEqual(
            [(b.server.url, b.server.weight, b.server.priority) for b in pool.servers],
            [("http://10.0.0.1:9000", 2, 0), ("http://10.0.0.2:9001", 1, 1)],
        )
        self.assertNotIn((dns.A, "a.test"), self.resolver.queries)
        self.assertEqual(pool.status().discovery[0].nextResolution, 4)
        # A target that cannot be resolved now: the last good set stays.
        self.resolver.answers[(dns.A, "b.test")] = dnserror.DNSServerError()
        self.clock.advance(4)
        self.assertEqual(len(urls(pool)), 2)
        self.assertIn("b.test", pool.status().discovery[0].lastError or "")

    def test_stop(self) -> None:
        """
        C{stop} cancels the next resolution, waits for the one under way,
        and ignores its answer.
        """
        pending: Deferred[Any] = Deferred()
        self.resolver.answers[(dns.A, "app.test")] = pending
        self.resolver.answers[(dns.AAAA, "app.test")] = []
        pool, discovery = self.discover(DNS)
        discovery.start()
        stopped = discovery.stop()
        self.assertNoResult(stopped)
        pending.callback(([a("app.test", "10.0.0.1")], [], []))
        self.successResultOf(stopped)
        self.assertEqual(pool.servers, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reloadKeepsServers(self) -> None:
        """
        The discovery of a pool that replaces another (a reload) starts
        with the servers the old one found, before its first answer.
        """
        self.setAddresses("10.0.0.1")
        _, old = self.discover(DNS)
        old.start()
        self.successResultOf(old.stop())
        self.resolver.answers[(dns.A, "app.test")] = Deferred()
        pool, new = self.discover(DNS, previous=old)
        new.start()
        self.assertEqual(urls(pool), ["http://10.0.0.1:8000"])

    def test_internalErrorIsAFailure(self) -> None:
        """
        An answer that cannot be read is a failed resolution, logged with
        its traceback; discovery goes on.
        """
        broken = dns.RRHeader("app.test", dns.A, dns.IN, 60, dns.Record_A("10.0.0.1"))
        broken.payload = None  # type: ignore[assignment]
        self.resolver.answers[(dns.A, "app.test")] = [broken]
        self.resolver.answers[(dns.AAAA, "app.test")] = []
        pool, discovery = self.discover(DNS)
        discovery.start()
        self.assertEqual(
            pool.status().discovery[0].lastError, "internal error (see the log)"
        )
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertTrue(any("log_failure" in e for e in self.events))
        self.setAddresses("10.0.0.1")
        self.clock.advance(1)
        self.assertEqual(urls(pool), ["http://10.0.0.1:8000"])


class CheckTests(SynchronousTestCase):
    """
    C{--check} validates discovery entries without resolving anything.
    """

    def setUp(self) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

        def noResolver(*args: object, **kwargs: object) -> None:
            raise AssertionError("--check made a resolver")

        self.patch(client, "Resolver", noResolver)
        self.patch(driver, "makeResolver", noResolver)

    def check(self, text: str) -> int:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text + '[[routes]]\npool = "app"\n')
        with self.assertRaises(SystemExit) as raised:
            tap.Options().parseOptions(["--check", "--config", path])
        code = raised.exception.code
        assert isinstance(code, int)
        return code

    def test_valid(self) -> None:
        """
        Names that do not resolve pass: C{--check} does not ask.
        """
        code = self.check(
            '[server]\nresolvers = ["192.0.2.53:53"]\n[pools.app]\nservers = ['
            '{ dns = "nothing.invalid", port = 80 },'
            '{ srv = "_http._tcp.nothing.invalid" }]\n'
        )
        self.assertEqual(code, 0, self.err.getvalue())
        self.assertIn("configuration OK", self.out.getvalue())

    def test_invalid(self) -> None:
        """
        A bad entry: status 1, the file, the key and the problem.
        """
        code = self.check(
            '[pools.app]\nservers = [{ dns = "a", port = 1, refresh = "0s" }]\n'
        )
        self.assertEqual(code, 1)
        self.assertIn(
            "pools.app.servers[0].refresh: must be greater than 0", self.err.getvalue()
        )


class FailureReasonTests(SynchronousTestCase):
    """
    What the pool's status says of a failed query: each DNS response code
    by name, so that an operator can tell a missing name from a broken
    server.
    """

    def test_responseCodes(self) -> None:
        from twisted.python.failure import Failure

        for kind, code in (
            (dnserror.DNSNameError, "NXDOMAIN"),
            (dnserror.DNSServerError, "SERVFAIL"),
            (dnserror.DNSQueryRefusedError, "REFUSED"),
            (dnserror.DNSFormatError, "FORMERR"),
            (dnserror.DNSNotImplementedError, "NOTIMP"),
        ):
            self.assertIn(code, driver._reason(Failure(kind())), kind)
        self.assertEqual(
            driver._reason(Failure(dnserror.DNSQueryTimeoutError(0))),
            "no answer (timed out)",
        )
