"""
Tests for the cache's C{Cache-Status} member (RFC 9211), beside
C{X-Cache}, with C{status_header = true}; and for stale responses served
per C{stale-if-error} when the backend closes without answering (RFC
5861 section 4).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import ParsedResponse, RecordedRequest, Reply
from tests.memory import Proxy, backend, responsesOf
from twisted_rproxy.cache.flight import UNCACHEABLE_TTL
from twisted_rproxy.cache.status import cacheStatusMember
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.rules.structured import Token, parseList
from twisted_rproxy.service import ProxyService


def _get(target: bytes = b"/a", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: example.test\r\n" + extra + b"\r\n"


def _answer(
    headers: bytes = b"Cache-Control: max-age=60\r\n",
    body: bytes = b"body",
    status: bytes = b"200 OK",
) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % (len(body),)
        + body
    )


def _members(response: ParsedResponse) -> list[Any]:
    """
    The C{Cache-Status} of a response, parsed as the RFC 8941 List it must
    be.
    """
    return parseList(response.header(b"cache-status"))


def _ours(response: ParsedResponse) -> dict[str, Any]:
    """
    The parameters of the last member, which must be this cache's.
    """
    members = _members(response)
    name, parameters = members[-1]
    assert name == Token("main"), members
    return dict(parameters)


class _Proxy(Proxy):
    def __init__(self, statusHeader: bool = True, **options: Any) -> None:
        super().__init__(
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)},
            caches={
                "main": CacheConfig(name="main", statusHeader=statusHeader, **options)
            },
        )

    def fetch(self, data: bytes, answer: bytes) -> ParsedResponse:
        return _one(self.roundTrip(data, answer))

    def get(self, data: bytes) -> list[ParsedResponse]:
        transport: StringTransport = self.exchange(data)[1]
        return responsesOf(transport)


def _one(transport: StringTransport) -> ParsedResponse:
    responses = responsesOf(transport)
    if len(responses) != 1:
        raise AssertionError(f"not one response: {transport.value()!r}")
    return responses[0]


class MemberTests(SynchronousTestCase):
    """
    L{cacheStatusMember} writes RFC 9211 members as RFC 8941 Items.
    """

    def test_parameters(self) -> None:
        """
        Section 2: the name, then each parameter given, in the RFC's
        order; C{stored} and C{collapsed} only with C{fwd} (sections 2.5,
        2.6); C{ttl} rounded down so that a stale response's is negative.
        """
        self.assertEqual(cacheStatusMember(b"c", hit=True, ttl=9.5), b"c; hit; ttl=9")
        self.assertEqual(
            cacheStatusMember(b"c", fwd=b"stale", fwdStatus=304, ttl=-0.5),
            b"c; fwd=stale; fwd-status=304; ttl=-1",
        )
        self.assertEqual(
            cacheStatusMember(b"c", fwd=b"uri-miss", stored=True, collapsed=False),
            b"c; fwd=uri-miss; stored; collapsed=?0",
        )
        self.assertEqual(cacheStatusMember(b"c", stored=True, collapsed=True), b"c")
        self.assertEqual(
            parseList(cacheStatusMember(b'"my cache"', hit=True, detail=b"x-y")),
            [("my cache", {"hit": True, "detail": Token("x-y")})],
        )


class CacheStatusTests(SynchronousTestCase):
    """
    What the cache says of each request, on a memory proxy.
    """

    def test_missStoredThenHit(self) -> None:
        """
        A cold miss went forward (section 2.2: C{fwd=miss}; the cache sends
        C{vary-miss} when it held the URI under other variants) and was
        C{stored}, fresh for its C{max-age}; the next
        request is a C{hit} with the C{ttl} left. C{X-Cache} stays.
        """
        proxy = _Proxy()
        first = proxy.fetch(_get(), _answer())
        self.assertEqual(
            _ours(first), {"fwd": Token("miss"), "stored": True, "ttl": 60}
        )
        self.assertEqual(first.header(b"x-cache"), [b"MISS"])
        proxy.reactor.advance(15)
        [second] = proxy.get(_get())
        self.assertEqual(_ours(second), {"hit": True, "ttl": 45})
        self.assertEqual(second.header(b"x-cache"), [b"HIT"])
        self.assertEqual(second.header(b"cache-status"), [b"main; hit; ttl=45"])

    def test_appendedToBackend(self) -> None:
        """
        The backend's own C{Cache-Status} comes first, this cache's last
        (section 2: the list grows towards the client), on a miss and on
        a hit (whose stored header is the backend's).
        """
        proxy = _Proxy()
        first = proxy.fetch(
            _get(),
            _answer(b"Cache-Control: max-age=60\r\nCache-Status: origin; fwd=miss\r\n"),
        )
        self.assertEqual(
            [name for name, _ in _members(first)], [Token("origin"), Token("main")]
        )
        [second] = proxy.get(_get())
        self.assertEqual(
            [name for name, _ in _members(second)], [Token("origin"), Token("main")]
        )
        self.assertEqual(_ours(second)["hit"], True)

    def test_notStored(self) -> None:
        """
        A response that may not be stored says so: no C{stored}, no
        C{ttl}.
        """
        proxy = _Proxy()
        response = proxy.fetch(_get(), _answer(b"Cache-Control: no-store\r\n"))
        self.assertEqual(_ours(response), {"fwd": Token("miss")})

    def test_varyMiss(self) -> None:
        """
        Section 2.2: stored responses for the URI, none for these request
        headers: C{vary-miss}.
        """
        proxy = _Proxy()
        proxy.fetch(
            _get(extra=b"Accept-Language: en\r\n"),
            _answer(b"Cache-Control: max-age=60\r\nVary: Accept-Language\r\n"),
        )
        response = proxy.fetch(
            _get(extra=b"Accept-Language: fr\r\n"),
            _answer(b"Cache-Control: max-age=60\r\nVary: Accept-Language\r\n"),
        )
        self.assertEqual(_ours(response)["fwd"], Token("vary-miss"))

    def test_revalidated(self) -> None:
        """
        A stale response revalidated with a 304: C{fwd=stale;
        fwd-status=304}, and its new C{ttl}.
        """
        proxy = _Proxy()
        proxy.fetch(_get(), _answer(b'Cache-Control: max-age=10\r\nETag: "v"\r\n'))
        proxy.reactor.advance(20)
        response = proxy.fetch(
            _get(),
            b'HTTP/1.1 304 Not Modified\r\nETag: "v"\r\n'
            b"Cache-Control: max-age=30\r\n\r\n",
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(
            _ours(response), {"fwd": Token("stale"), "fwd-status": 304, "ttl": 30}
        )
        self.assertEqual(response.header(b"x-cache"), [b"REVALIDATED"])

    def test_staleReplaced(self) -> None:
        """
        A stale response replaced by a new 200: C{fwd=stale; stored}.
        """
        proxy = _Proxy()
        proxy.fetch(_get(), _answer(b'Cache-Control: max-age=10\r\nETag: "v"\r\n'))
        proxy.reactor.advance(20)
        response = proxy.fetch(_get(), _answer(b"Cache-Control: max-age=30\r\n"))
        self.assertEqual(
            _ours(response), {"fwd": Token("stale"), "stored": True, "ttl": 30}
        )

    def test_request(self) -> None:
        """
        Section 2.2: a fresh response the request's own C{no-cache} did not
        let the cache use: C{fwd=request}.
        """
        proxy = _Proxy()
        proxy.fetch(_get(), _answer(b'Cache-Control: max-age=60\r\nETag: "v"\r\n'))
        response = proxy.fetch(
            _get(extra=b"Cache-Control: no-cache\r\n"),
            b'HTTP/1.1 304 Not Modified\r\nETag: "v"\r\n\r\n',
        )
        self.assertEqual(_ours(response)["fwd"], Token("request"))
        self.assertEqual(_ours(response)["fwd-status"], 304)

    def test_method(self) -> None:
        """
        Section 2.2: a method the cache does not serve: C{fwd=method}.
        """
        proxy = _Proxy()
        response = proxy.fetch(
            b"POST /a HTTP/1.1\r\nHost: example.test\r\nContent-Length: 0\r\n\r\n",
            _answer(b"", b"posted"),
        )
        self.assertEqual(_ours(response), {"fwd": Token("method")})
        self.assertEqual(response.header(b"x-cache"), [b"BYPASS"])

    def test_passedAfterBackend(self) -> None:
        """
        A response passed through uncaptured (a C{HEAD} miss) has the
        member after the backend's own too.
        """
        proxy = _Proxy()
        transport = proxy.roundTrip(
            b"HEAD /a HTTP/1.1\r\nHost: example.test\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nCache-Status: origin; hit\r\n"
            b"Content-Length: 4\r\n\r\n",
        )
        [response] = responsesOf(transport, [b"HEAD"])
        self.assertEqual(
            [name for name, _ in _members(response)], [Token("origin"), Token("main")]
        )
        self.assertEqual(_ours(response), {"fwd": Token("miss")})

    def test_staleWhileRevalidate(self) -> None:
        """
        A stale response served while refreshed in the background is a hit
        with a negative C{ttl}.
        """
        proxy = _Proxy()
        proxy.fetch(
            _get(), _answer(b"Cache-Control: max-age=10, stale-while-revalidate=60\r\n")
        )
        proxy.reactor.advance(15)
        [response] = proxy.get(_get())
        self.assertEqual(
            _ours(response),
            {"hit": True, "ttl": -5, "detail": Token("stale-while-revalidate")},
        )

    def test_collapsed(self) -> None:
        """
        Section 2.6: a request that waited for another's backend request
        and was answered by its response went forward C{collapsed}.
        """
        proxy = _Proxy()
        snapshot = proxy.snapshot()
        _, first = proxy.exchange(_get())
        _, second = proxy.exchange(_get())
        proxy.backendSince(snapshot).dataReceived(_answer())
        firstResponse, secondResponse = _one(first), _one(second)
        self.assertEqual(_ours(firstResponse)["stored"], True)
        self.assertEqual(
            _ours(secondResponse),
            {"fwd": Token("miss"), "collapsed": True, "ttl": 60},
        )

    def test_collapsedInVain(self) -> None:
        """
        A waiter whose awaited response was not storable goes forward
        itself: C{collapsed=?0}.
        """
        proxy = _Proxy()
        snapshot = proxy.snapshot()
        _, first = proxy.exchange(_get())
        _, second = proxy.exchange(_get())
        protocol = proxy.backendSince(snapshot)
        protocol.dataReceived(_answer(b"Cache-Control: private\r\n"))
        self.assertEqual(_ours(_one(first)), {"fwd": Token("miss")})
        self.assertEqual(responsesOf(second), [])
        # The waiter's own request, on the kept-alive connection.
        protocol.dataReceived(_answer(b"Cache-Control: private\r\n"))
        self.assertEqual(
            _ours(_one(second)), {"fwd": Token("miss"), "collapsed": False}
        )

    def test_uncacheableNotCoalesced(self) -> None:
        """
        Once a key's response could not be stored, its misses no longer
        wait for one another (hit-for-miss) for C{UNCACHEABLE_TTL} seconds:
        each goes to the backend at once; after that they are coalesced
        again.
        """
        proxy = _Proxy()
        proxy.fetch(_get(), _answer(b"Cache-Control: private\r\n"))
        snapshot = proxy.snapshot()
        proxy.exchange(_get())
        first = proxy.backendSince(snapshot)
        snapshot = proxy.snapshot()
        proxy.exchange(_get())
        proxy.backendSince(snapshot)
        first.dataReceived(_answer(b"Cache-Control: private\r\n"))
        proxy.reactor.advance(UNCACHEABLE_TTL)
        snapshot = proxy.snapshot()
        proxy.exchange(_get())
        proxy.backendSince(snapshot)
        snapshot = proxy.snapshot()
        _, waiting = proxy.exchange(_get())
        self.assertRaises(AssertionError, proxy.backendSince, snapshot)
        self.assertEqual(responsesOf(waiting), [])

    def test_off(self) -> None:
        """
        Without C{status_header}, neither header is sent.
        """
        proxy = _Proxy(statusHeader=False)
        first = proxy.fetch(_get(), _answer())
        [second] = proxy.get(_get())
        for response in (first, second):
            self.assertEqual(response.header(b"cache-status"), [])
            self.assertEqual(response.header(b"x-cache"), [])

    def test_quotedName(self) -> None:
        """
        A cache name that is not a Token is sent as a String.
        """
        proxy = Proxy(
            routes=(RouteConfig(path="/", pool="app", cache="1st"),),
            pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)},
            caches={"1st": CacheConfig(name="1st", statusHeader=True)},
        )
        response = _one(proxy.roundTrip(_get(), _answer()))
        self.assertEqual(_members(response)[-1][0], "1st")
        self.assertNotIsInstance(_members(response)[-1][0], Token)


class StatusLoopbackTests(LoopbackTestCase):
    """
    The real proxy, a real backend: C{Cache-Status} over HTTP/1.1, and
    stale responses when the backend hangs up.
    """

    async def startCachingProxy(self, port: int, **options: Any) -> int:
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={"app": PoolConfig(name="app", servers=(backendServer(port),))},
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={"main": CacheConfig(name="main", statusHeader=True, **options)},
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        proxyPort: int = listening[0].getHost().port
        return proxyPort

    async def get(
        self, port: int, path: str, headers: dict[bytes, list[bytes]] | None = None
    ) -> tuple[int, Any, bytes]:
        client = self.httpClient()
        response = await client.get(
            f"http://127.0.0.1:{port}{path}", headers=headers or {}
        )
        body = await response.content()
        return response.code, response.headers, body

    @asyncTest
    async def test_missThenHit(self) -> None:
        """
        Through the real proxy: the backend's member, then this cache's.
        """
        backendSite = await self.startBackend(
            lambda r: Reply(
                headers=[
                    (b"Cache-Control", b"max-age=60"),
                    (b"Cache-Status", b'"Origin"; fwd=miss'),
                ],
                body=b"x",
            )
        )
        port = await self.startCachingProxy(backendSite.portNumber)
        _, headers, _ = await self.get(port, "/a")
        members = parseList(headers.getRawHeaders(b"cache-status"))
        self.assertEqual([m[0] for m in members], ["Origin", Token("main")])
        self.assertEqual(members[-1][1]["fwd"], Token("miss"))
        self.assertTrue(members[-1][1]["stored"])
        _, headers, _ = await self.get(port, "/a")
        members = parseList(headers.getRawHeaders(b"cache-status"))
        self.assertEqual(members[-1][1]["hit"], True)
        self.assertEqual(len(backendSite.requests), 1)

    @asyncTest
    async def test_staleIfErrorBackendCloses(self) -> None:
        """
        RFC 5861 section 4: within C{stale-if-error}, a stale response
        answers when the backend accepts the request and closes the
        connection without answering; past the window (or with the
        client's C{no-cache}) the client gets the proxy's 502.
        """
        dropping = [False]

        def reply(request: RecordedRequest) -> Reply:
            if dropping[0]:
                return Reply(drop=True)
            return Reply(
                headers=[(b"Cache-Control", b"max-age=1, stale-if-error=60")],
                body=b"kept",
            )

        backendSite = await self.startBackend(reply)
        port = await self.startCachingProxy(backendSite.portNumber)
        code, _, body = await self.get(port, "/e")
        self.assertEqual((code, body), (200, b"kept"))
        await sleep(1.1)
        dropping[0] = True
        code, headers, body = await self.get(port, "/e")
        self.assertEqual((code, body), (200, b"kept"))
        self.assertEqual(headers.getRawHeaders(b"x-cache"), [b"STALE"])
        [(_, parameters)] = parseList(headers.getRawHeaders(b"cache-status"))
        self.assertEqual(parameters["fwd"], Token("stale"))
        self.assertEqual(parameters["fwd-status"], 502)
        self.assertEqual(parameters["detail"], Token("stale-if-error"))
        self.assertLess(parameters["ttl"], 0)
        self.assertGreater(len(backendSite.requests), 1)
        code, _, _ = await self.get(port, "/e", {b"Cache-Control": [b"no-cache"]})
        self.assertEqual(code, 502)
