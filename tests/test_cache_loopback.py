"""
Loopback integration tests of the cache: the real L{ProxyService} with a
route cached, in front of a real L{RecordingBackend} that counts requests.
"""

from __future__ import annotations

from typing import Any

from attrs import evolve
from twisted.internet import reactor
from twisted.internet.defer import gatherResults

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import RecordedRequest, RecordingBackend, Reply
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.service import ProxyService


class CacheLoopbackTestCase(LoopbackTestCase):
    """
    Starts a proxy whose only route is cached.
    """

    async def startCachingProxy(self, backendPort: int, **cacheOptions: Any) -> int:
        cache = CacheConfig(name="main", statusHeader=True, **cacheOptions)
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app",
                    servers=(backendServer(backendPort),),
                    retries=0,
                )
            },
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={"main": cache},
        )
        self.service = ProxyService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        listening = await self.service.whenListening()
        port: int = listening[0].getHost().port
        return port

    async def get(
        self,
        port: int,
        path: str = "/",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[int, Any, bytes]:
        client = self.httpClient()
        response = await client.get(
            f"http://127.0.0.1:{port}{path}", headers=headers or {}
        )
        body = await response.content()
        return response.code, response.headers, body


def _status(headers: Any) -> bytes:
    values = headers.getRawHeaders(b"x-cache") or [b""]
    return bytes(values[0])


class CacheLoopbackTests(CacheLoopbackTestCase):
    """
    The cache in front of a backend that counts requests.
    """

    @asyncTest
    async def test_hit(self) -> None:
        """
        A fresh response is served from the cache: the backend sees one
        request for two client requests, and the second carries C{Age}.
        """
        backend = await self.startBackend(
            lambda r: Reply(headers=[(b"Cache-Control", b"max-age=60")], body=b"hello")
        )
        port = await self.startCachingProxy(backend.portNumber)
        code, headers, body = await self.get(port, "/a")
        self.assertEqual((code, body, _status(headers)), (200, b"hello", b"MISS"))
        code, headers, body = await self.get(port, "/a")
        self.assertEqual((code, body, _status(headers)), (200, b"hello", b"HIT"))
        self.assertIsNotNone(headers.getRawHeaders(b"age"))
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_noStore(self) -> None:
        """
        A C{no-store} response is fetched each time.
        """
        backend = await self.startBackend(
            lambda r: Reply(headers=[(b"Cache-Control", b"no-store")], body=b"x")
        )
        port = await self.startCachingProxy(backend.portNumber)
        for _ in range(3):
            code, headers, body = await self.get(port, "/a")
            self.assertEqual((code, body, _status(headers)), (200, b"x", b"MISS"))
        self.assertEqual(len(backend.requests), 3)

    @asyncTest
    async def test_vary(self) -> None:
        """
        Responses with C{Vary: Accept-Language} are stored per language.
        """

        def reply(request: RecordedRequest) -> Reply:
            language = (request.header(b"accept-language") or [b"none"])[0]
            return Reply(
                headers=[
                    (b"Cache-Control", b"max-age=60"),
                    (b"Vary", b"Accept-Language"),
                ],
                body=language,
            )

        backend = await self.startBackend(reply)
        port = await self.startCachingProxy(backend.portNumber)
        for language in [b"fr", b"de", b"fr", b"de"]:
            code, headers, body = await self.get(
                port, "/v", {b"Accept-Language": [language]}
            )
            self.assertEqual(body, language)
        self.assertEqual(len(backend.requests), 2)
        self.assertEqual(_status(headers), b"HIT")

    @asyncTest
    async def test_revalidation(self) -> None:
        """
        A stale response with an C{ETag} is revalidated with
        C{If-None-Match}; the backend's 304 refreshes it and the client
        gets the stored body.
        """

        def reply(request: RecordedRequest) -> Reply:
            if request.header(b"if-none-match") == [b'"v1"']:
                return Reply(
                    status=304,
                    reason=b"Not Modified",
                    headers=[(b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=60")],
                    noBody=True,
                )
            return Reply(
                headers=[(b"ETag", b'"v1"'), (b"Cache-Control", b"max-age=0")],
                body=b"body-v1",
            )

        backend = await self.startBackend(reply)
        port = await self.startCachingProxy(backend.portNumber)
        await self.get(port, "/r")
        code, headers, body = await self.get(port, "/r")
        self.assertEqual(
            (code, body, _status(headers)), (200, b"body-v1", b"REVALIDATED")
        )
        self.assertEqual(backend.requests[1].header(b"if-none-match"), [b'"v1"'])
        # Refreshed by the 304 (max-age=60 now): a plain hit.
        code, headers, body = await self.get(port, "/r")
        self.assertEqual((body, _status(headers)), (b"body-v1", b"HIT"))
        self.assertEqual(len(backend.requests), 2)
        # The client's own conditional request: 304 from the cache.
        code, headers, body = await self.get(port, "/r", {b"If-None-Match": [b'"v1"']})
        self.assertEqual((code, body), (304, b""))
        self.assertEqual(len(backend.requests), 2)

    @asyncTest
    async def test_staleWhileRevalidate(self) -> None:
        """
        Within C{stale-while-revalidate}, a stale response is served at
        once and refreshed in the background.
        """
        versions = iter([b"one", b"two", b"three"])

        def reply(request: RecordedRequest) -> Reply:
            return Reply(
                headers=[(b"Cache-Control", b"max-age=1, stale-while-revalidate=60")],
                body=next(versions),
            )

        backend = await self.startBackend(reply)
        port = await self.startCachingProxy(backend.portNumber)
        await self.get(port, "/s")
        await sleep(1.1)
        code, headers, body = await self.get(port, "/s")
        self.assertEqual((body, _status(headers)), (b"one", b"STALE"))
        for _ in range(100):
            if len(backend.requests) == 2:
                break
            await sleep(0.02)
        await sleep(0.05)
        code, headers, body = await self.get(port, "/s")
        self.assertEqual((body, _status(headers)), (b"two", b"HIT"))
        self.assertEqual(len(backend.requests), 2)

    @asyncTest
    async def test_staleIfErrorBackendDown(self) -> None:
        """
        With C{stale-if-error}, a stale response answers when the backend
        is stopped (connection refused) or answers 5xx.
        """
        failing = [False]

        def reply(request: RecordedRequest) -> Reply:
            if failing[0]:
                return Reply(status=503, reason=b"Unavailable", body=b"down")
            return Reply(
                headers=[(b"Cache-Control", b"max-age=1, stale-if-error=60")],
                body=b"kept",
            )

        backend = await self.startBackend(reply)
        port = await self.startCachingProxy(backend.portNumber)
        await self.get(port, "/e")
        await sleep(1.1)
        failing[0] = True
        code, headers, body = await self.get(port, "/e")
        self.assertEqual((code, body, _status(headers)), (200, b"kept", b"STALE"))
        await backend.stop()
        code, headers, body = await self.get(port, "/e")
        self.assertEqual((code, body, _status(headers)), (200, b"kept", b"STALE"))
        # Without stale-if-error in the request's reach: the error.
        code, headers, body = await self.get(
            port, "/e", {b"Cache-Control": [b"no-cache"]}
        )
        self.assertEqual(code, 502)

    @asyncTest
    async def test_coalescing(self) -> None:
        """
        100 concurrent misses for one URL send one request to the backend.
        """
        backend = await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"max-age=60")], body=b"once", delay=0.3
            )
        )
        port = await self.startCachingProxy(backend.portNumber)
        client = self.httpClient(maxPersistent=100)

        async def one() -> bytes:
            response = await client.get(f"http://127.0.0.1:{port}/c")
            body: bytes = await response.content()
            return body

        from twisted.internet.defer import Deferred

        bodies = await gatherResults(
            [Deferred.fromCoroutine(one()) for _ in range(100)]
        )
        self.assertEqual(bodies, [b"once"] * 100)
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_coalescingUncacheable(self) -> None:
        """
        When the coalesced response turns out uncacheable, the waiters go
        to the backend themselves.
        """
        backend = await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"private")], body=b"mine", delay=0.2
            )
        )
        port = await self.startCachingProxy(backend.portNumber)
        client = self.httpClient(maxPersistent=10)

        async def one() -> bytes:
            response = await client.get(f"http://127.0.0.1:{port}/p")
            body: bytes = await response.content()
            return body

        from twisted.internet.defer import Deferred

        bodies = await gatherResults([Deferred.fromCoroutine(one()) for _ in range(5)])
        self.assertEqual(bodies, [b"mine"] * 5)
        self.assertEqual(len(backend.requests), 5)

    @asyncTest
    async def test_invalidationAndPurge(self) -> None:
        """
        A successful POST invalidates the stored response of its URL; PURGE
        from a trusted address removes one, from others is refused.
        """
        backend = await self.startBackend(
            lambda r: Reply(headers=[(b"Cache-Control", b"max-age=60")], body=b"v")
        )
        port = await self.startCachingProxy(
            backend.portNumber, purgeFrom=("127.0.0.1/32",)
        )
        await self.get(port, "/i")
        await self.get(port, "/i")
        self.assertEqual(len(backend.requests), 1)
        client = self.httpClient()
        response = await client.post(f"http://127.0.0.1:{port}/i", data=b"x")
        await response.content()
        await self.get(port, "/i")
        self.assertEqual(len(backend.requests), 3)
        response = await client.request("PURGE", f"http://127.0.0.1:{port}/i")
        self.assertEqual(await response.content(), b'{"purged": 1}\n')
        code, headers, body = await self.get(port, "/i")
        self.assertEqual(_status(headers), b"MISS")

    @asyncTest
    async def test_purgeRefused(self) -> None:
        """
        PURGE from an address not in C{purge_from} is refused with 403.
        """
        backend = await self.startBackend()
        port = await self.startCachingProxy(backend.portNumber)
        client = self.httpClient()
        response = await client.request("PURGE", f"http://127.0.0.1:{port}/i")
        await response.content()
        self.assertEqual(response.code, 403)
        self.assertEqual(backend.requests, [])

    @asyncTest
    async def test_range(self) -> None:
        """
        A range of a stored response is served from it with 206.
        """
        backend = await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"max-age=60")], body=b"0123456789"
            )
        )
        port = await self.startCachingProxy(backend.portNumber)
        await self.get(port, "/g")
        code, headers, body = await self.get(port, "/g", {b"Range": [b"bytes=2-4"]})
        self.assertEqual((code, body), (206, b"234"))
        self.assertEqual(headers.getRawHeaders(b"content-range"), [b"bytes 2-4/10"])
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_tooLarge(self) -> None:
        """
        A response larger than C{maxObjectSize} passes through uncached.
        """
        backend = await self.startBackend(
            lambda r: Reply(headers=[(b"Cache-Control", b"max-age=60")], bigBody=5000)
        )
        port = await self.startCachingProxy(backend.portNumber, maxObjectSize=1000)
        for _ in range(2):
            code, headers, body = await self.get(port, "/big")
            self.assertEqual(len(body), 5000)
        self.assertEqual(len(backend.requests), 2)

    @asyncTest
    async def test_reloadKeepsStore(self) -> None:
        """
        A reload keeps the stored responses of a cache of the same name.
        """
        backend = await self.startBackend(
            lambda r: Reply(headers=[(b"Cache-Control", b"max-age=60")], body=b"k")
        )
        port = await self.startCachingProxy(backend.portNumber)
        await self.get(port, "/k")
        self.service.reload(evolve(self.service.config))
        code, headers, body = await self.get(port, "/k")
        self.assertEqual(_status(headers), b"HIT")
        self.assertEqual(len(backend.requests), 1)


__all__ = ["CacheLoopbackTests", "RecordingBackend"]
