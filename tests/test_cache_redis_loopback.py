"""
Loopback integration tests of the shared cache store: two real
L{ProxyService}s with C{store = "redis"} on one real C{redis-server} of the
test's own (L{tests.redis.RedisServer}) and one recording backend.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import RecordedRequest, Reply
from tests.redis import RedisServer
from twisted_rproxy.cache import RedisStore
from twisted_rproxy.cache.redisstore import BODY_PIECE, VALIDATOR_RETENTION
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    StateConfig,
)
from twisted_rproxy.service import ProxyService
from twisted_rproxy.state import StateUnavailable

_HOST = {b"Host": [b"shared.test"]}


def _status(headers: Any) -> bytes:
    values = headers.getRawHeaders(b"x-cache") or [b""]
    return bytes(values[0])


class TwoProxiesTests(LoopbackTestCase):
    """
    Two L{ProxyService}s with a cache in the same Redis, in front of one
    backend.
    """

    timeout = 90

    def setUp(self) -> None:
        super().setUp()
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanUp)

    async def startPair(
        self, backendPort: int, **cacheOptions: Any
    ) -> tuple[ProxyService, int, ProxyService, int]:
        a, portA = await self.startShared(backendPort, **cacheOptions)
        b, portB = await self.startShared(backendPort, **cacheOptions)
        return a, portA, b, portB

    async def startShared(
        self, backendPort: int, **cacheOptions: Any
    ) -> tuple[ProxyService, int]:
        options: dict[str, Any] = {
            "statusHeader": True,
            "purgeFrom": ("127.0.0.1/32",),
            "store": "redis",
            **cacheOptions,
        }
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backendPort),), retries=0
                )
            },
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={"main": CacheConfig(name="main", **options)},
            state=StateConfig.fromURL(self.redis.url, timeout=0.5),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        state = service.sharedState
        assert state is not None
        for _ in range(100):
            try:
                await state.execute("PING")
                break
            except StateUnavailable:
                await sleep(0.05)
        port: int = listening[0].getHost().port
        return service, port

    async def request(
        self,
        port: int,
        path: str = "/",
        method: str = "GET",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> tuple[int, Any, bytes]:
        client = self.httpClient()
        response = await client.request(
            method,
            f"http://127.0.0.1:{port}{path}",
            headers={**_HOST, **(headers or {})},
        )
        body = await response.content()
        return response.code, response.headers, body

    def redisKeys(self, kind: str) -> list[bytes]:
        keys = self.redis.command("KEYS", f"rproxy:cache:main:{kind}:*")
        assert isinstance(keys, list)
        return sorted(keys)

    async def until(self, check: Any, seconds: float = 5.0) -> None:
        """
        Wait until C{check()} is true, at most C{seconds}.
        """
        for _ in range(int(seconds / 0.02)):
            if check():
                return
            await sleep(0.02)
        self.fail(f"not true within {seconds} s: {check}")

    async def cached(self, backend: Any, body: bytes = b"shared") -> Any:
        return await self.startBackend(
            lambda r: Reply(headers=[(b"Cache-Control", b"max-age=60")], body=body)
        )

    @asyncTest
    async def test_storedByOneHitAtOther(self) -> None:
        """
        A response stored by one proxy is a hit at the other: the backend
        sees one request.
        """
        backend = await self.cached(None)
        _, portA, _, portB = await self.startPair(backend.portNumber)
        code, headers, body = await self.request(portA, "/a")
        self.assertEqual((code, body, _status(headers)), (200, b"shared", b"MISS"))
        code, headers, body = await self.request(portB, "/a")
        self.assertEqual((code, body, _status(headers)), (200, b"shared", b"HIT"))
        self.assertIsNotNone(headers.getRawHeaders(b"age"))
        code, headers, body = await self.request(portA, "/a", "HEAD")
        self.assertEqual((code, body, _status(headers)), (200, b"", b"HIT"))
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_purgeEmptiesBoth(self) -> None:
        """
        A PURGE at one proxy (exact, or by prefix) removes what both see;
        a POST at one invalidates its URL for both.
        """
        backend = await self.cached(None)
        a, portA, b, portB = await self.startPair(backend.portNumber)
        for path in ("/img/1", "/img/2", "/other", "/post"):
            await self.request(portA, path)
            code, headers, _ = await self.request(portB, path)
            self.assertEqual(_status(headers), b"HIT")
        code, _, body = await self.request(portB, "/img/*", "PURGE")
        self.assertEqual((code, json.loads(body)), (200, {"purged": 2}))
        code, _, body = await self.request(portA, "/other", "PURGE")
        self.assertEqual(json.loads(body), {"purged": 1})
        for port in (portA, portB):
            for path in ("/img/1", "/img/2", "/other"):
                _, headers, _ = await self.request(port, path)
                self.assertEqual(_status(headers), b"MISS" if port == portA else b"HIT")
        await self.request(portA, "/post", "POST")
        _, headers, _ = await self.request(portB, "/post")
        self.assertEqual(_status(headers), b"MISS")
        # The index holds the keys stored, and no more (the last MISS is
        # stored after its response went).
        await self.until(
            lambda: self.redis.command("ZCARD", "rproxy:cache:main:index") == 4
        )

    @asyncTest
    async def test_vary(self) -> None:
        """
        The variants of one URL stored by either proxy serve both.
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
        _, portA, _, portB = await self.startPair(backend.portNumber)
        for port, language, status in (
            (portA, b"fr", b"MISS"),
            (portB, b"de", b"MISS"),
            (portB, b"fr", b"HIT"),
            (portA, b"de", b"HIT"),
        ):
            _, headers, body = await self.request(
                port, "/v", headers={b"Accept-Language": [language]}
            )
            self.assertEqual((body, _status(headers)), (language, status))
        self.assertEqual(len(backend.requests), 2)
        self.assertEqual(len(self.redisKeys("b")), 2)
        self.assertEqual(len(self.redisKeys("k")), 1)

    @asyncTest
    async def test_ttls(self) -> None:
        """
        Entries expire when of no further use: freshness plus the stale
        allowance, plus the validator retention when they have one;
        responses not to be stored leave nothing.
        """
        control = {
            "/fresh": [(b"Cache-Control", b"max-age=60, stale-while-revalidate=30")],
            "/error": [(b"Cache-Control", b"max-age=60, stale-if-error=120")],
            "/etag": [(b"Cache-Control", b"max-age=60"), (b"ETag", b'"v"')],
            "/must": [
                (b"Cache-Control", b"max-age=60, must-revalidate, stale-if-error=99")
            ],
            "/none": [(b"Cache-Control", b"no-store")],
        }
        backend = await self.startBackend(
            lambda r: Reply(headers=control[r.target.decode()], body=b"x")
        )
        expected = {
            "/fresh": 90.0,
            "/error": 180.0,
            "/etag": 60.0 + VALIDATOR_RETENTION,
            "/must": 60.0,
        }
        _, port = await self.startShared(backend.portNumber)
        seen: set[bytes] = set()
        for path, seconds in expected.items():
            await self.request(port, path)
            await self.until(lambda: len(self.redisKeys("b")) == len(seen) + 1)
            (body,) = set(self.redisKeys("b")) - seen
            seen.add(body)
            pttl = self.redis.command("PTTL", body)
            assert isinstance(pttl, int)
            self.assertTrue(
                seconds * 1000 - 3000 < pttl <= seconds * 1000, (path, pttl)
            )
            key = hashlib.sha1(f"GET http://shared.test{path}".encode()).hexdigest()
            heads = self.redis.command("PTTL", f"rproxy:cache:main:k:{key}")
            assert isinstance(heads, int)
            self.assertTrue(abs(heads - pttl) < 1000, (path, heads, pttl))
        await self.request(port, "/none")
        await self.request(port, "/fresh")
        self.assertEqual(len(self.redisKeys("b")), 4)

    @asyncTest
    async def test_revalidationAcrossProxies(self) -> None:
        """
        A stale entry stored by one proxy is revalidated by the other; the
        304 refreshes the entry in Redis, a hit at the first.
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
        _, portA, _, portB = await self.startPair(backend.portNumber)
        await self.request(portA, "/r")
        _, headers, body = await self.request(portB, "/r")
        self.assertEqual((body, _status(headers)), (b"body-v1", b"REVALIDATED"))
        self.assertEqual(backend.requests[1].header(b"if-none-match"), [b'"v1"'])
        for _ in range(50):
            _, headers, body = await self.request(portA, "/r")
            if _status(headers) == b"HIT":
                break
            await sleep(0.02)
        self.assertEqual((body, _status(headers)), (b"body-v1", b"HIT"))

    @asyncTest
    async def test_largeBody(self) -> None:
        """
        A body larger than a piece is written in pieces and read back
        whole; one larger than C{max_object_size} is not stored.
        """
        size = 3 * BODY_PIECE + 17
        backend = await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"max-age=60")],
                bigBody=size if r.target == b"/big" else 4 * BODY_PIECE + 1,
            )
        )
        _, portA, _, portB = await self.startPair(
            backend.portNumber, maxObjectSize=4 * BODY_PIECE, maxSize=8 * BODY_PIECE
        )
        _, _, first = await self.request(portA, "/big")
        _, headers, second = await self.request(portB, "/big")
        self.assertEqual((len(second), _status(headers)), (size, b"HIT"))
        self.assertEqual(first, second)
        self.assertEqual(self.redisKeys("tmp"), [])
        await self.request(portA, "/huge")
        _, headers, body = await self.request(portB, "/huge")
        self.assertEqual((len(body), _status(headers)), (4 * BODY_PIECE + 1, b"MISS"))

    @asyncTest
    async def test_coalescingAcrossProxies(self) -> None:
        """
        Concurrent misses for a cold key, split over both proxies, make
        one backend request; every client gets the response.
        """
        backend = await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"max-age=60")], body=b"once", delay=0.4
            )
        )
        _, portA, _, portB = await self.startPair(backend.portNumber)
        client = self.httpClient(maxPersistent=20)

        async def one(port: int) -> bytes:
            response = await client.get(f"http://127.0.0.1:{port}/c", headers=_HOST)
            body: bytes = await response.content()
            return body

        bodies = await gatherResults(
            [Deferred.fromCoroutine(one((portA, portB)[i % 2])) for i in range(20)]
        )
        self.assertEqual(bodies, [b"once"] * 20)
        self.assertEqual(len(backend.requests), 1)
        self.assertEqual(self.redisKeys("lock"), [])

    @asyncTest
    async def test_localLayer(self) -> None:
        """
        With C{local_size}, a hit is answered in-process; a PURGE at the
        other proxy is seen within C{local_ttl}.
        """
        backend = await self.cached(None)
        a, portA, _, portB = await self.startPair(
            backend.portNumber, localSize=1 << 20, localTTL=0.3
        )
        store = a.cacheStores["main"]
        assert isinstance(store, RedisStore)
        await self.request(portA, "/l")
        await self.request(portA, "/l")
        _, headers, _ = await self.request(portA, "/l")
        self.assertEqual(_status(headers), b"HIT")
        self.assertGreaterEqual(store.stats["local"], 1)
        _, _, body = await self.request(portB, "/l", "PURGE")
        self.assertEqual(json.loads(body), {"purged": 1})
        await sleep(0.35)
        _, headers, _ = await self.request(portA, "/l")
        self.assertEqual(_status(headers), b"MISS")

    @asyncTest
    async def test_redisStopped(self) -> None:
        """
        With Redis stopped, both proxies answer every request from the
        backend (no 5xx; a PURGE says 503); once it is back, sharing
        resumes by itself.
        """
        backend = await self.cached(None)
        _, portA, _, portB = await self.startPair(backend.portNumber)
        await self.request(portA, "/s")
        self.redis.stop()
        for port in (portA, portB, portA, portB):
            code, headers, body = await self.request(port, "/s")
            self.assertEqual((code, body), (200, b"shared"))
            self.assertEqual(_status(headers), b"MISS")
        code, _, _ = await self.request(portA, "/s", "PURGE")
        self.assertEqual(code, 503)
        seen = len(backend.requests)
        self.assertEqual(seen, 5)
        self.redis.start()
        for _ in range(200):
            code, headers, _ = await self.request(portA, "/back")
            self.assertEqual(code, 200)
            code, headers, _ = await self.request(portB, "/back")
            self.assertEqual(code, 200)
            if _status(headers) == b"HIT":
                break
            await sleep(0.1)
        self.assertEqual(_status(headers), b"HIT")

    @asyncTest
    async def test_redisHung(self) -> None:
        """
        With Redis hung (stopped by a signal), requests are still answered
        from the backend, each after at most a few state timeouts.
        """
        backend = await self.cached(None)
        _, portA, _, portB = await self.startPair(backend.portNumber)
        await self.request(portA, "/h")
        self.redis.pause()
        try:
            for port in (portA, portB, portA):
                code, _, body = await self.request(port, "/h")
                self.assertEqual((code, body), (200, b"shared"))
        finally:
            self.redis.resume()
