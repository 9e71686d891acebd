"""
Behaviour parity of HTTP/2 with HTTP/1.1 (issue #15): the existing
loopback tests of filters, the cache, compression and static files run
again, unchanged, with an HTTP/2 client over TLS in place of their HTTP/1.1
client.

Each class here subclasses an existing test class with L{OverHTTP2} (or
L{StaticOverHTTP2}), which serves the test's own configuration on a
C{[[tls]]} listener with C{http2 = true} and sends the test's requests as
HTTP/2 streams (L{tests.h2client.h2Exchange}).  Only the tests that check
HTTP/1.1 framing itself (C{Transfer-Encoding}, pipelining on the wire) get
an HTTP/2 counterpart written here.

The test modules are imported as modules so that their HTTP/1.1 classes
are not collected a second time from this one.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.http_headers import Headers

from tests import (
    test_cache_loopback,
    test_compress_loopback,
    test_filters_loopback,
    test_static,
)
from tests.fixtures import asyncTest
from tests.h2client import (
    H2Request,
    H2Response,
    TLSFiles,
    h2Exchange,
    inThread,
    servedOverTLS,
)
from tests.loopback import LOCALHOST, ParsedResponse, waitForQuiet
from twisted_rproxy import service
from twisted_rproxy.config import Config, ServerConfig
from twisted_rproxy.server import ProxySite
from twisted_rproxy.tls import ServerTLS
from twisted_rproxy.tree import Route, Router

#: HTTP/1.1 connection-specific headers, which HTTP/2 forbids (RFC 9113
#: section 8.2.2): dropped when an HTTP/1.1 request is sent as HTTP/2.
_CONNECTION_HEADERS = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"transfer-encoding",
    b"upgrade",
}


def parseHTTP1Requests(data: bytes) -> list[H2Request]:
    """
    The requests of C{data}, HTTP/1.1 request heads (and bodies of a
    C{Content-Length}) one after the other, as HTTP/2 requests: C{Host}
    becomes C{:authority}, connection-specific headers are dropped.
    """
    requests = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        method, target, _ = lines[0].split(b" ", 2)
        request = H2Request(target.decode(), method.decode())
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            if name == b"host":
                request.authority = value.decode()
            elif name not in _CONNECTION_HEADERS:
                if name == b"content-length":
                    length = int(value)
                request.headers.append((name.decode(), value.decode("latin-1")))
        request.body, data = data[:length], data[length:]
        requests.append(request)
    return requests


def asParsed(response: H2Response) -> ParsedResponse:
    """
    An HTTP/2 response as the HTTP/1.1 tests' L{ParsedResponse}.
    """
    return ParsedResponse(
        b"HTTP/2", response.status, response.headers, response.body, b""
    )


class _TreqResponse:
    """
    What the cache tests use of a treq response, from an HTTP/2 one.
    """

    def __init__(self, response: H2Response) -> None:
        self.code = response.status
        self.headers = Headers()
        for name, value in response.headers:
            self.headers.addRawHeader(name, value)
        self._body = response.body

    def content(self) -> Deferred[bytes]:
        return succeed(self._body)


class _H2TreqClient:
    """
    The part of treq's C{HTTPClient} the cache tests use, over HTTP/2: each
    request on its own HTTP/2 connection.
    """

    def __init__(self, caPath: str) -> None:
        self.caPath = caPath

    def request(
        self,
        method: str,
        url: str,
        data: bytes | None = None,
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Deferred[_TreqResponse]:
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        fields = [
            (name.decode().lower(), value.decode())
            for name, values in (headers or {}).items()
            for value in values
        ]
        if data:
            fields.append(("content-length", str(len(data))))
        request = H2Request(target, method, fields, data or b"")
        assert parts.port is not None
        waiting: Deferred[list[H2Response]] = inThread(
            h2Exchange, parts.port, self.caPath, [request]
        )
        return waiting.addCallback(lambda responses: _TreqResponse(responses[0]))

    def get(
        self, url: str, headers: dict[bytes, list[bytes]] | None = None
    ) -> Deferred[_TreqResponse]:
        return self.request("GET", url, headers=headers)

    def post(
        self,
        url: str,
        data: bytes = b"",
        headers: dict[bytes, list[bytes]] | None = None,
    ) -> Deferred[_TreqResponse]:
        return self.request("POST", url, data=data, headers=headers)


class OverHTTP2:
    """
    Runs a L{tests.fixtures.LoopbackTestCase} subclass's tests over HTTP/2:
    the proxy services its tests make (by C{ProxyService} or
    C{makeService} in the modules of C{serviceModules}) listen with TLS and
    HTTP/2 only, and its clients (C{rawExchange}, C{httpClient}) speak
    HTTP/2.

    @cvar serviceModules: The test modules whose C{ProxyService} and
        C{makeService} names are patched for the test's duration.
    """

    serviceModules: Sequence[ModuleType] = ()
    patch: Any
    addCleanup: Any

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.files = TLSFiles(self)  # type: ignore[arg-type]
        files = self.files

        def proxyService(config: Config, reactor: Any) -> service.ProxyService:
            return service.ProxyService(servedOverTLS(config, files), reactor)

        def makeService(config: Config, reactor: Any) -> service.ProxyService:
            return service.makeService(servedOverTLS(config, files), reactor)

        for module in self.serviceModules:
            if hasattr(module, "ProxyService"):
                self.patch(module, "ProxyService", proxyService)
            if hasattr(module, "makeService"):
                self.patch(module, "makeService", makeService)

    async def rawExchange(
        self,
        port: int,
        data: bytes,
        responses: int = 1,
        methods: list[bytes] | None = None,
        timeout: float = 10.0,
    ) -> tuple[None, list[ParsedResponse]]:
        """
        The HTTP/1.1 requests of C{data} sent as streams of one HTTP/2
        connection; their responses.
        """
        answered: list[H2Response] = await inThread(
            h2Exchange, port, self.files.caPath, parseHTTP1Requests(data), timeout
        )
        return None, [asParsed(r) for r in answered]

    def httpClient(self, maxPersistent: int = 2) -> _H2TreqClient:
        return _H2TreqClient(self.files.caPath)


class H2HeadFramingTests(OverHTTP2, test_filters_loopback.HeadFramingTests):
    """
    L{test_filters_loopback.HeadFramingTests} over HTTP/2: a HEAD through a
    transforming filter is framed as its GET.
    """

    serviceModules = (test_filters_loopback,)


class H2CacheLoopbackTests(OverHTTP2, test_cache_loopback.CacheLoopbackTests):
    """
    L{test_cache_loopback.CacheLoopbackTests} over HTTP/2: hits, Vary,
    revalidation, stale responses, coalescing, purges and ranges.
    """

    serviceModules = (test_cache_loopback,)


class H2NegotiationTests(OverHTTP2, test_compress_loopback.NegotiationTests):
    """
    L{test_compress_loopback.NegotiationTests} over HTTP/2.
    """

    serviceModules = (test_compress_loopback,)

    @asyncTest
    async def test_gzip(self) -> None:
        """
        A 20 KiB HTML page asked for with C{accept-encoding: gzip} arrives
        gzip-encoded, framed by HTTP/2 alone (no C{content-length} of the
        uncompressed page, no C{transfer-encoding}), decodes to the
        backend's bytes, varies with C{accept-encoding}, has a weak ETag.
        """
        backend = await self.startBackend(test_compress_loopback._pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        response = await self.exchange(
            port, test_compress_loopback._request(b"/page", b"Accept-Encoding: gzip")
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.header(b"content-length"), [])
        self.assertEqual(response.header(b"transfer-encoding"), [])
        self.assertVaries(response)
        self.assertEqual(response.header(b"etag"), [b'W/"page-1"'])
        self.assertEqual(gzip.decompress(response.body), test_compress_loopback.PAGE)
        self.assertEqual(backend.requests[0].header(b"accept-encoding"), [b"gzip"])


class H2UntouchedTests(OverHTTP2, test_compress_loopback.UntouchedTests):
    """
    L{test_compress_loopback.UntouchedTests} over HTTP/2.
    """

    serviceModules = (test_compress_loopback,)


class H2CompressHeadTests(OverHTTP2, test_compress_loopback.HeadTests):
    """
    L{test_compress_loopback.HeadTests} over HTTP/2.
    """

    serviceModules = (test_compress_loopback,)

    @asyncTest
    async def test_headLikeGet(self) -> None:
        """
        HEAD and GET on two streams of one connection: the HEAD gets the
        GET's coding, C{vary}, weak ETag and type, no C{content-length}
        and no body.
        """
        backend = await self.startBackend(test_compress_loopback._pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        _, (head, get) = await self.rawExchange(
            port,
            test_compress_loopback._request(
                b"/page", b"Accept-Encoding: gzip", method=b"HEAD"
            )
            + test_compress_loopback._request(b"/page", b"Accept-Encoding: gzip"),
        )
        self.assertEqual((head.status, head.body), (200, b""))
        for name in (b"content-encoding", b"vary", b"etag", b"content-type"):
            self.assertEqual(head.header(name), get.header(name), name)
        self.assertEqual(head.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(head.header(b"content-length"), [])
        self.assertEqual(gzip.decompress(get.body), test_compress_loopback.PAGE)


class H2CompressStaticTests(OverHTTP2, test_compress_loopback.StaticTests):
    """
    L{test_compress_loopback.StaticTests} over HTTP/2: static files compressed.
    """

    serviceModules = (test_compress_loopback,)


class StaticOverHTTP2:
    """
    Runs a L{test_static.LoopbackMixin} test class over HTTP/2: the
    resource is served by the proxy's own L{ProxySite} behind TLS (the
    C{[[tls]]} listener's factory, with HTTP/2), and C{fetch} is an
    HTTP/2 request.
    """

    addCleanup: Any

    def listen(self, resource: Any, proxy: bool = False) -> int:
        self.addCleanup(lambda: Deferred.fromCoroutine(waitForQuiet(reactor)))
        files = TLSFiles(self)  # type: ignore[arg-type]
        self.caPath = files.caPath
        route = Route(
            path=b"/static/" if proxy else b"/",
            host=None,
            resource=resource,
            maxBodySize=1024,
            requestBuffering=True,
        )
        site = ProxySite(Router([route]), ServerConfig(), reactor)
        site.noisy = False
        factory = TLSMemoryBIOFactory(ServerTLS(files.tlsConfig()), False, site)
        port = reactor.listenTCP(0, factory, interface=LOCALHOST)  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    async def fetchAll(
        self, port: int, requests: Sequence[H2Request]
    ) -> list[ParsedResponse]:
        """
        C{requests} on one HTTP/2 connection; their responses.
        """
        answered: list[H2Response] = await inThread(
            h2Exchange, port, self.caPath, list(requests)
        )
        return [asParsed(r) for r in answered]

    async def fetch(
        self,
        port: int,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        method: bytes = b"GET",
    ) -> ParsedResponse:
        fields = [(n.decode().lower(), v.decode("latin-1")) for n, v in headers]
        request = H2Request(
            target.decode(), method.decode(), fields, authority="localhost"
        )
        [response] = await self.fetchAll(port, [request])
        return response


class H2StaticServingTests(StaticOverHTTP2, test_static.ServingTests):
    """
    L{test_static.ServingTests} over HTTP/2.
    """

    @asyncTest
    async def test_head(self) -> None:
        """
        A HEAD gets the GET's length, type and validators, and no body.
        """
        get = await self.fetch(self.port, b"/data.bin")
        head = await self.fetch(self.port, b"/data.bin", method=b"HEAD")
        self.assertEqual((head.status, head.body), (200, b""))
        for name in [b"content-length", b"content-type", b"etag", b"last-modified"]:
            self.assertEqual(
                test_static.header(head, name), test_static.header(get, name), name
            )

    @asyncTest
    async def test_pipelined(self) -> None:
        """
        Several requests on one connection, as concurrent streams, are each
        answered on their own stream.
        """
        responses = await self.fetchAll(
            self.port,
            [
                H2Request("/hello.txt"),
                H2Request("/data.bin", headers=[("range", "bytes=0-9")]),
                H2Request("/index.html", "HEAD"),
                H2Request("/sub/page.html"),
            ],
        )
        self.assertEqual(
            [(r.status, r.body) for r in responses],
            [
                (200, b"hello world\n"),
                (206, test_static.pattern(10)),
                (200, b""),
                (200, b"<p>page</p>\n"),
            ],
        )


class H2StaticConditionalTests(StaticOverHTTP2, test_static.ConditionalTests):
    """
    L{test_static.ConditionalTests} over HTTP/2.
    """


class H2StaticRangeTests(StaticOverHTTP2, test_static.RangeTests):
    """
    L{test_static.RangeTests} over HTTP/2.
    """
