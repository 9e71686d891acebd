"""
Tests for L{twisted_rproxy.policies}: access lists, the client address
behind trusted proxies, rate tables, the listener policy factory, and the
built-in C{access}, C{rate_limit} and C{error_pages} filters.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest

from tests.fixtures import LoopbackTestCase, asyncTest
from tests.loopback import finalCount, parseResponses
from twisted_rproxy.config import ListenerConfig, ServerConfig
from twisted_rproxy.filters import (
    FilterOptionError,
    FilterResponse,
    RequestContext,
    ResponseHead,
)
from twisted_rproxy.hardening import checkHead
from twisted_rproxy.plugins.access import access
from twisted_rproxy.plugins.errorpages import errorPages
from twisted_rproxy.plugins.ratelimit import rateLimit
from twisted_rproxy.policies import (
    AccessList,
    ListenerPolicy,
    ListenerPolicyFactory,
    RateTable,
    forwardedFor,
    listenerPolicy,
    parseNetworks,
    realClient,
)


class AccessListTests(SynchronousTestCase):
    """
    L{AccessList} decides by allow and deny networks, IPv4 and IPv6.
    """

    def test_denyWins(self) -> None:
        """
        A denied address inside an allowed network is refused.
        """
        rules = AccessList(["10.0.0.0/8"], ["10.6.6.0/24"])
        self.assertTrue(rules.allows("10.1.2.3"))
        self.assertFalse(rules.allows("10.6.6.7"))
        self.assertFalse(rules.allows("192.0.2.1"))

    def test_ipv6AndMapped(self) -> None:
        """
        IPv6 networks match IPv6 addresses; IPv4-mapped addresses match
        IPv4 rules.
        """
        rules = AccessList(["2001:db8::/32", "192.0.2.0/24"])
        self.assertTrue(rules.allows("2001:db8::5"))
        self.assertFalse(rules.allows("2001:db9::5"))
        self.assertTrue(rules.allows("::ffff:192.0.2.9"))

    def test_denyOnly(self) -> None:
        """
        With no allow list, everything not denied passes, non-IP peers too.
        """
        rules = AccessList((), ["192.0.2.1"])
        self.assertFalse(rules.allows("192.0.2.1"))
        self.assertTrue(rules.allows("192.0.2.2"))
        self.assertTrue(rules.allows(""))
        self.assertFalse(AccessList(["192.0.2.0/24"]).allows("not-an-ip"))


class RealClientTests(SynchronousTestCase):
    """
    L{realClient} believes forwarding headers from trusted proxies only.
    """

    trusted = parseNetworks(["10.0.0.0/8"])

    def test_untrustedPeer(self) -> None:
        """
        From an untrusted peer, the header is ignored.
        """
        self.assertEqual(
            realClient("192.0.2.1", ["1.2.3.4"], self.trusted), "192.0.2.1"
        )

    def test_trustedChain(self) -> None:
        """
        The first untrusted address from the right is the client; what an
        untrusted hop wrote further left is not believed.
        """
        chain = ["6.6.6.6", "198.51.100.7", "10.0.0.3"]
        self.assertEqual(realClient("10.0.0.2", chain, self.trusted), "198.51.100.7")

    def test_forwardedHeader(self) -> None:
        """
        C{Forwarded} C{for=} nodes are read, IPv6 in brackets and ports
        dropped; C{unknown} stops the walk.
        """
        nodes = forwardedFor(
            [b'for=192.0.2.60;proto=http, for="[2001:db8::1]:4711"', b"for=unknown"]
        )
        self.assertEqual(nodes, ["192.0.2.60", "2001:db8::1", "unknown"])
        self.assertEqual(realClient("10.0.0.1", nodes, self.trusted), "10.0.0.1")
        self.assertEqual(realClient("10.0.0.1", nodes[:2], self.trusted), "2001:db8::1")


class RateTableTests(SynchronousTestCase):
    """
    L{RateTable}'s token buckets, in deterministic time.
    """

    def test_burstThenRate(self) -> None:
        """
        A burst passes at once, the next request is refused until a token
        is back, at the rate.
        """
        table = RateTable(rate=2, burst=3, maxKeys=10)
        self.assertEqual([table.take("a", 0.0) for _ in range(3)], [0.0] * 3)
        self.assertIsNone(table.take("a", 0.0))
        self.assertAlmostEqual(table.retryAfter("a", 0.0), 0.5)
        self.assertIsNone(table.take("a", 0.4))
        self.assertEqual(table.take("a", 0.5), 0.0)
        self.assertEqual(table.take("b", 0.5), 0.0)

    def test_delay(self) -> None:
        """
        With a C{maxDelay}, requests past the burst wait their turn, up to
        it, then are refused.
        """
        table = RateTable(rate=10, burst=1, maxKeys=10)
        self.assertEqual(table.take("a", 0.0, 0.25), 0.0)
        self.assertAlmostEqual(table.take("a", 0.0, 0.25) or 0, 0.1)
        self.assertAlmostEqual(table.take("a", 0.0, 0.25) or 0, 0.2)
        self.assertIsNone(table.take("a", 0.0, 0.25))

    def test_memoryBounded(self) -> None:
        """
        100,000 distinct keys leave at most C{maxKeys} buckets; the least
        recently used are forgotten.
        """
        table = RateTable(rate=1, burst=1, maxKeys=1000)
        table.take("keep", 0.0)
        for i in range(100_000):
            table.take(f"client-{i}", 0.0)
            if i % 500 == 0:
                # "keep" stays recent.
                self.assertIsNone(table.take("keep", 0.0))
        self.assertEqual(len(table), 1000)
        self.assertIsNone(table.take("keep", 0.0))
        self.assertEqual(table.take("client-0", 0.0), 0.0)


class _Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.factory.received.append(data)  # type: ignore[attr-defined]


def _factory() -> Any:
    factory = Factory.forProtocol(_Echo)
    factory.received = []  # type: ignore[attr-defined]
    return factory


class ListenerPolicyFactoryTests(SynchronousTestCase):
    """
    L{ListenerPolicyFactory} closes refused connections before the wrapped
    factory sees them.
    """

    def connect(self, factory: ListenerPolicyFactory, host: str) -> Any:
        protocol = factory.buildProtocol(IPv4Address("TCP", host, 1234))
        if protocol is not None:
            protocol.makeConnection(StringTransport())
        return protocol

    def test_accessRefusedAtAccept(self) -> None:
        """
        A denied address gets no protocol: the port closes the socket.
        """
        policy = ListenerPolicy((AccessList((), ["192.0.2.0/24"]),))
        factory = ListenerPolicyFactory(_factory(), policy)
        self.assertIsNone(self.connect(factory, "192.0.2.5"))
        self.assertIsNotNone(self.connect(factory, "198.51.100.5"))

    def test_connectionLimit(self) -> None:
        """
        Past C{maxConnectionsPerClient} open connections from one address,
        more are refused, until one closes; other addresses are not
        affected.
        """
        factory = ListenerPolicyFactory(_factory(), ListenerPolicy((), 2))
        first = self.connect(factory, "192.0.2.1")
        self.assertIsNotNone(self.connect(factory, "192.0.2.1"))
        self.assertIsNone(self.connect(factory, "192.0.2.1"))
        self.assertIsNotNone(self.connect(factory, "192.0.2.2"))
        first.connectionLost(None)
        self.assertIsNotNone(self.connect(factory, "192.0.2.1"))
        self.assertEqual(factory.counts, {"192.0.2.1": 2, "192.0.2.2": 1})

    def test_proxyProtocolV1(self) -> None:
        """
        With the PROXY protocol, the header's source address is the one
        checked; nothing reaches the wrapped protocol from a refused one.
        """
        wrapped = _factory()
        policy = ListenerPolicy((AccessList((), ["203.0.113.9"]),), 0, True)
        factory = ListenerPolicyFactory(wrapped, policy)
        good = self.connect(factory, "10.0.0.1")
        good.dataReceived(b"PROXY TCP4 198.51.100.1 10.0.0.1 5555 80\r\nGET /")
        self.assertEqual(good.getPeer().host, "198.51.100.1")
        self.assertEqual(wrapped.received, [b"GET /"])
        bad = self.connect(factory, "10.0.0.1")
        bad.dataReceived(b"PROXY TCP4 203.0.113.9 10.0.0.1 5555 80\r\nGET /")
        self.assertTrue(bad.transport.disconnecting or bad.transport.disconnected)
        self.assertEqual(wrapped.received, [b"GET /"])

    def test_proxyProtocolV2(self) -> None:
        """
        A PROXY protocol v2 header gives the client's address too.
        """
        wrapped = _factory()
        factory = ListenerPolicyFactory(wrapped, ListenerPolicy((), 1, True))
        header = (
            b"\r\n\r\n\x00\r\nQUIT\n"
            + b"\x21\x11"
            + struct.pack("!H", 12)
            + bytes([198, 51, 100, 2, 10, 0, 0, 1])
            + struct.pack("!HH", 5555, 80)
        )
        protocol = self.connect(factory, "10.0.0.1")
        protocol.dataReceived(header + b"hello")
        self.assertEqual(protocol.getPeer().host, "198.51.100.2")
        self.assertEqual(wrapped.received, [b"hello"])
        self.assertEqual(factory.counts, {"198.51.100.2": 1})

    def test_listenerPolicyCombines(self) -> None:
        """
        C{[server]} and a listener's own table both apply.
        """
        server = ServerConfig(
            deny=("192.0.2.0/24",),
            maxConnectionsPerClient=5,
            listeners={
                "tcp:81": ListenerConfig(allow=("10.0.0.0/8",), proxyProtocol=True)
            },
        )
        policy = listenerPolicy(server, "tcp:81")
        self.assertTrue(policy.proxyProtocol)
        self.assertEqual(policy.maxConnectionsPerClient, 5)
        self.assertTrue(policy.allows("10.1.1.1"))
        self.assertFalse(policy.allows("198.51.100.1"))
        self.assertFalse(bool(listenerPolicy(ServerConfig(), "tcp:80")))


def _context(clock: Any, client: str = "192.0.2.1") -> RequestContext:
    return RequestContext(DummyRequest([b""]), clock, None, client)


class FilterPluginTests(SynchronousTestCase):
    """
    The built-in C{access}, C{rate_limit} and C{error_pages} filters.
    """

    def test_accessFilter(self) -> None:
        """
        A client outside the route's allow list is answered 403.
        """
        f = access.buildFilter({"allow": ["10.0.0.0/8"]})
        clock = MemoryReactorClock()
        request = DummyRequest([b""])
        self.assertIsNone(f.filterRequest(request, _context(clock, "10.2.3.4")))
        answer = f.filterRequest(request, _context(clock, "192.0.2.1"))
        assert isinstance(answer, FilterResponse)
        self.assertEqual(answer.code, 403)
        self.assertRaises(FilterOptionError, access.buildFilter, {"allow": ["x"]})

    def test_rateLimit429(self) -> None:
        """
        Past the burst, a client gets 429 with C{Retry-After}; another
        client, or the same one later, passes.
        """
        f = rateLimit.buildFilter({"rate": 1, "burst": 2})
        clock = MemoryReactorClock()
        request = DummyRequest([b""])
        self.assertIsNone(f.filterRequest(request, _context(clock)))
        self.assertIsNone(f.filterRequest(request, _context(clock)))
        answer = f.filterRequest(request, _context(clock))
        self.assertEqual(answer.code, 429)
        self.assertIn((b"Retry-After", b"1"), answer.headers)
        self.assertIsNone(f.filterRequest(request, _context(clock, "192.0.2.2")))
        clock.advance(1)
        self.assertIsNone(f.filterRequest(request, _context(clock)))

    def test_rateLimitByHeaderWithDelay(self) -> None:
        """
        Keyed by a header, with a delay: the request past the burst waits
        for its token instead of being refused.
        """
        f = rateLimit.buildFilter(
            {"rate": 2, "burst": 1, "key": "header:X-Api-Key", "delay": "1s"}
        )
        clock = MemoryReactorClock()
        request = DummyRequest([b""])
        request.requestHeaders = Headers({b"x-api-key": [b"k1"]})
        self.assertIsNone(f.filterRequest(request, _context(clock)))
        waiting = f.filterRequest(request, _context(clock, "192.0.2.9"))
        self.assertNoResult(waiting)
        clock.advance(0.5)
        self.assertIsNone(self.successResultOf(waiting))

    def test_rateLimitOptions(self) -> None:
        """
        Bad options are refused, each naming itself.
        """
        for options, option in [
            ({}, "rate"),
            ({"rate": 0}, "rate"),
            ({"rate": 1, "burst": 0}, "burst"),
            ({"rate": 1, "key": "cookie"}, "key"),
            ({"rate": 1, "delay": "soon"}, "delay"),
            ({"rate": 1, "nope": 1}, "nope"),
        ]:
            with self.assertRaises(FilterOptionError) as caught:
                rateLimit.buildFilter(options)
            self.assertEqual(caught.exception.option, option)

    def test_errorPages(self) -> None:
        """
        A backend 5xx body is replaced by the proxy's page; its headers
        but for a few go.
        """
        f = errorPages.buildFilter({})
        head = ResponseHead(
            500,
            b"Internal Server Error",
            Headers({b"x-debug": [b"trace"], b"retry-after": [b"3"]}),
        )
        transform = f.filterResponse(DummyRequest([b""]), None, head)  # type: ignore[arg-type]
        assert transform is not None
        self.assertEqual(transform.transform(b"Traceback..."), b"")
        self.assertIn(b"<h1>500 ", transform.flush())
        self.assertFalse(head.headers.hasHeader(b"x-debug"))
        self.assertTrue(head.headers.hasHeader(b"retry-after"))
        ok = ResponseHead(200, b"OK", Headers())
        self.assertIsNone(f.filterResponse(DummyRequest([b""]), None, ok))  # type: ignore[arg-type]


class CheckHeadTests(SynchronousTestCase):
    """
    L{checkHead} on its own.
    """

    def test_absoluteFormNormalized(self) -> None:
        """
        An absolute-form target agreeing with C{Host} becomes origin-form.
        """
        headers = Headers({b"host": [b"Example.com:80"]})
        self.assertEqual(
            checkHead(b"GET", b"http://example.com:80?q", b"HTTP/1.1", headers, 8192),
            (0, b"/?q"),
        )


class RateLimitLoopbackTests(LoopbackTestCase):
    """
    The C{rate_limit} filter and the connection limit on the real proxy.
    """

    @asyncTest
    async def test_rateLimitedOverLoopback(self) -> None:
        """
        With a burst of 2, the third request at once is answered 429 and
        never reaches the backend.
        """
        from tests.fixtures import backendServer
        from twisted_rproxy.config import Config, FilterConfig, PoolConfig, RouteConfig
        from twisted_rproxy.service import ProxyService

        backend = await self.startBackend()
        config = Config(
            source="test",
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",), maxConnectionsPerClient=1
            ),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backend.portNumber),)
                )
            },
            routes=(RouteConfig(path="/", pool="app", filters=("limit",)),),
            filters={
                "limit": FilterConfig("limit", "rate_limit", {"rate": 0.1, "burst": 2})
            },
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        request = b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n"
        client = await self.rawClient(port)
        client.write(request % 1 + request % 2 + request % 3)
        received = await client.waitFor(finalCount(3), reactor, 5)
        responses, _ = parseResponses(received)
        self.assertEqual([r.status for r in responses], [200, 200, 429])
        self.assertEqual(responses[2].header(b"retry-after"), [b"10"])
        self.assertEqual([r.target for r in backend.requests], [b"/1", b"/2"])
        # A second connection from the same address is over the limit of 1.
        second = await self.rawClient(port)
        await second.waitFor(lambda data: False, reactor, 5)
        self.assertTrue(second.closed)
        self.assertEqual(second.received, b"")
