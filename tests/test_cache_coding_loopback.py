"""
Loopback test of the compressed variants a cache stores: the proxy from
L{makeService} on 127.0.0.1, a route with a memory cache and the
C{compress} filter in front of a real backend
(L{tests.loopback.RecordingBackend}), asked by a real HTTP client (treq)
and a raw one; the filter's compressors are counted.
"""

from __future__ import annotations

import gzip
import random

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer
from tests.loopback import RecordedRequest, Reply
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    FilterConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.plugins import compress
from twisted_rproxy.service import makeService

_WORDS = [b"proxy", b"twisted", b"reactor", b"deferred", b"<p>", b"</p>", b"\n"]
_rng = random.Random(18)
PAGE = b"<!doctype html>" + b" ".join(_rng.choice(_WORDS) for _ in range(6000))


def _page(request: RecordedRequest) -> Reply:
    return Reply(
        headers=[
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Cache-Control", b"max-age=300"),
            (b"ETag", b'"page-1"'),
        ],
        body=PAGE,
    )


def countCompressors(case: SynchronousTestCase) -> list[int]:
    """
    Count the gzip compressors the C{compress} filter makes, and the bytes
    they compress: C{[made, fed]}.
    """
    counts = [0, 0]

    class Counted(compress.GzipTransform):
        def __init__(self, level: int) -> None:
            counts[0] += 1
            super().__init__(level)

        def transform(self, data: bytes) -> bytes:
            counts[1] += len(data)
            return super().transform(data)

    case.patch(compress, "GzipTransform", Counted)
    return counts


class StoredCompressedLoopbackTests(LoopbackTestCase):
    """
    A hit of a compressible page is served from its stored gzip bytes.
    """

    @asyncTest
    async def test_hitServedCompressedWithoutCompressing(self) -> None:
        """
        The first request is compressed once and stored coded; the hits,
        whatever their spelling of C{Accept-Encoding}, are the stored
        bytes (with their length), and no compressor is made for them; a
        client without C{Accept-Encoding} gets the identity variant.
        """
        counts = countCompressors(self)
        backend = await self.startBackend(_page)
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backend.portNumber),)
                )
            },
            routes=(
                RouteConfig(path="/", pool="app", cache="main", filters=("gzip",)),
            ),
            caches={"main": CacheConfig(name="main", statusHeader=True)},
            filters={
                "gzip": FilterConfig(
                    name="gzip", plugin="compress", options={"encodings": ["gzip"]}
                )
            },
        )
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port

        def get(accept: bytes) -> bytes:
            head = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % (port,)
            return head + b"Accept-Encoding: " + accept + b"\r\n\r\n"

        _, [miss] = await self.rawExchange(port, get(b"gzip"))
        self.assertEqual(miss.header(b"x-cache"), [b"MISS"])
        self.assertEqual(miss.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(miss.body), PAGE)
        self.assertEqual(counts, [1, len(PAGE)])

        cache = service.router.routes[0].resource.resource
        [stored] = cache.store.get(b"GET http://127.0.0.1:%d/page" % (port,))
        self.assertEqual(stored.body, miss.body)
        self.assertLess(len(stored.body), len(PAGE) // 2)

        for accept in (b"gzip", b"gzip, deflate, br", b"deflate, gzip;q=0.5"):
            _, [hit] = await self.rawExchange(port, get(accept))
            self.assertEqual(hit.header(b"x-cache"), [b"HIT"], accept)
            self.assertEqual(hit.body, stored.body)
            self.assertEqual(hit.header(b"content-length"), [b"%d" % len(hit.body)])
            self.assertEqual(hit.header(b"etag"), [b'W/"page-1"'])
        self.assertEqual(counts, [1, len(PAGE)])

        # A real client that decodes what it asked for (treq asks for gzip).
        response = await self.httpClient().get(f"http://127.0.0.1:{port}/page")
        self.assertEqual(response.headers.getRawHeaders("x-cache"), ["HIT"])
        self.assertEqual(await response.content(), PAGE)
        self.assertEqual(counts, [1, len(PAGE)])

        request = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (port,)
        for label in (b"MISS", b"HIT"):
            _, [plain] = await self.rawExchange(port, request)
            self.assertEqual(plain.header(b"x-cache"), [label])
            self.assertEqual(plain.body, PAGE)
            self.assertEqual(plain.header(b"etag"), [b'"page-1"'])
            self.assertEqual(plain.header(b"content-encoding"), [])
        self.assertEqual(counts, [1, len(PAGE)])
        self.assertEqual(len(backend.requests), 2)
