"""
Tests for the compressed variants a cache stores
(L{twisted_rproxy.cache.coding}): a route with a cache and the C{compress}
filter, in a whole L{ProxyService} on a memory reactor, with the filter's
compressors counted.
"""

from __future__ import annotations

import gzip
from typing import Any

import brotli
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface import implementer

from tests.loopback import ParsedResponse
from tests.memory import Proxy, backend, responsesOf
from twisted_rproxy.cache.keys import CODING, requestPairs, variantKey
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    FilterConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.interfaces import IRequestFilter, IResponseFilter
from twisted_rproxy.plugins import compress
from twisted_rproxy.plugins.compress import CompressFilter, CompressionPolicy
from twisted_rproxy.service import ProxyService
from twisted_rproxy.tree import storedCoder

_PAGE = b"<!doctype html><p>" + b"a compressible page of words " * 200

_SPELLINGS = [
    b"gzip",
    b"gzip, deflate",
    b"GZIP",
    b"deflate, gzip;q=0.9",
    b"gzip;q=1.0, identity; q=0.5, *;q=0",
    b"x-gzip",
]


class Counted:
    """
    Counts the compressors the C{compress} filter makes, and the bytes
    they are given.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.made = 0
        self.fed = 0
        counter = self

        class Gzip(compress.GzipTransform):
            def __init__(self, level: int) -> None:
                counter.made += 1
                super().__init__(level)

            def transform(self, data: bytes) -> bytes:
                counter.fed += len(data)
                return super().transform(data)

        class Brotli(compress.BrotliTransform):
            def __init__(self, quality: int) -> None:
                counter.made += 1
                super().__init__(quality)

            def transform(self, data: bytes) -> bytes:
                counter.fed += len(data)
                return super().transform(data)

        case.patch(compress, "GzipTransform", Gzip)
        case.patch(compress, "BrotliTransform", Brotli)


def _response(
    body: bytes = _PAGE,
    contentType: bytes = b"text/html; charset=utf-8",
    cacheControl: bytes = b"max-age=60",
    extra: bytes = b"",
) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: " + contentType + b"\r\n"
        b"Cache-Control: " + cacheControl + b'\r\nETag: "v1"\r\n' + extra + b""
        b"Content-Length: %d\r\n\r\n" % (len(body),) + body
    )


def _get(accept: bytes | None = b"gzip", extra: bytes = b"") -> bytes:
    head = b"GET /page HTTP/1.1\r\nHost: example.test\r\n"
    if accept is not None:
        head += b"Accept-Encoding: " + accept + b"\r\n"
    return head + extra + b"\r\n"


class CodingProxy(Proxy):
    """
    A memory proxy whose route has a cache C{main} (with C{X-Cache}) and
    the filters C{filters} (C{gzip} is the C{compress} plugin, C{tag} the
    C{headers} one adding a response header).
    """

    def __init__(self, filters: tuple[str, ...] = ("gzip",)) -> None:
        self.reactor = MemoryReactorClock()
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0",)),
            pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)},
            routes=(RouteConfig(path="/", pool="app", cache="main", filters=filters),),
            caches={"main": CacheConfig(name="main", statusHeader=True)},
            filters={
                "gzip": FilterConfig(name="gzip", plugin="compress", options={}),
                "tag": FilterConfig(
                    name="tag",
                    plugin="headers",
                    options={"response": {"set": {"X-Tag": "t"}}},
                ),
            },
        )
        self.service = ProxyService(config, self.reactor)  # type: ignore[arg-type]
        self.backends: list[tuple[Any, StringTransport]] = []

    @property
    def cache(self) -> Any:
        resource = self.service.router.routes[0].resource
        return resource.resource

    def get(self, data: bytes) -> ParsedResponse:
        _, transport = self.exchange(data)
        return _only(transport)

    def fetch(self, data: bytes, answer: bytes = _response()) -> ParsedResponse:
        return _only(self.roundTrip(data, answer))

    def backendRequests(self) -> bytes:
        return b"".join(transport.value() for _, transport in self.backends)

    def stored(self) -> list[Any]:
        entries: list[Any] = self.cache.store.get(b"GET http://example.test/page")
        return entries


def _only(transport: StringTransport) -> ParsedResponse:
    responses = responsesOf(transport)
    if len(responses) != 1:
        raise AssertionError(f"not one response: {transport.value()!r}")
    return responses[0]


class StoredCompressedTests(SynchronousTestCase):
    """
    A response is compressed once, as it enters the cache; hits are served
    from the stored coded bytes.
    """

    def test_hitIsNotCompressed(self) -> None:
        """
        The miss is compressed (one compressor, fed the page once) and
        stored as the gzip variant; the hit is the stored bytes, with their
        exact length, and no compressor is made for it.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        miss = proxy.fetch(_get())
        self.assertEqual(miss.header(b"x-cache"), [b"MISS"])
        self.assertEqual(miss.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(miss.body), _PAGE)
        self.assertEqual((counted.made, counted.fed), (1, len(_PAGE)))
        [entry] = proxy.stored()
        self.assertEqual(entry.body, miss.body)
        self.assertIn((b"Content-Encoding", b"gzip"), entry.headers)
        hit = proxy.get(_get())
        self.assertEqual(hit.header(b"x-cache"), [b"HIT"])
        self.assertEqual(hit.body, miss.body)
        self.assertEqual(hit.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(hit.header(b"content-length"), [b"%d" % (len(hit.body),)])
        self.assertEqual(hit.header(b"vary"), [b"Accept-Encoding"])
        self.assertEqual((counted.made, counted.fed), (1, len(_PAGE)))
        self.assertEqual(proxy.backendRequests().count(b"GET /page "), 1)

    def test_spellingsShareOneVariant(self) -> None:
        """
        Every spelling of C{Accept-Encoding} that negotiates gzip selects
        the one stored gzip variant: one backend request, one entry.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        proxy.fetch(_get(b"gzip, deflate"))
        for accept in _SPELLINGS:
            hit = proxy.get(_get(accept))
            self.assertEqual(hit.header(b"x-cache"), [b"HIT"], accept)
            self.assertEqual(gzip.decompress(hit.body), _PAGE)
        self.assertEqual(len(proxy.stored()), 1)
        self.assertEqual(counted.made, 1)
        self.assertEqual(proxy.backendRequests().count(b"GET /page "), 1)

    def test_oneVariantPerCoding(self) -> None:
        """
        gzip, br and identity are three variants, each fetched once and
        then hit, whatever the header's spelling.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        clients = [
            (b"gzip", b"gzip", gzip.decompress),
            (b"gzip, deflate, br", b"br", brotli.decompress),
            (None, None, bytes),
        ]
        for accept, coding, decode in clients:
            miss = proxy.fetch(_get(accept))
            self.assertEqual(miss.header(b"x-cache"), [b"MISS"], accept)
            self.assertEqual(
                miss.header(b"content-encoding"), [coding] if coding else []
            )
            self.assertEqual(decode(miss.body), _PAGE)
        self.assertEqual(counted.made, 2)
        for accept, coding, decode in clients + [
            (b"br;q=1, gzip;q=0.5", b"br", brotli.decompress),
            (b"identity", None, bytes),
            (b"compress, deflate", None, bytes),
        ]:
            hit = proxy.get(_get(accept))
            self.assertEqual(hit.header(b"x-cache"), [b"HIT"], accept)
            self.assertEqual(
                hit.header(b"content-encoding"), [coding] if coding else []
            )
            self.assertEqual(decode(hit.body), _PAGE)
        self.assertEqual(counted.made, 2)
        self.assertEqual(len(proxy.stored()), 3)
        self.assertEqual(proxy.backendRequests().count(b"GET /page "), 3)

    def test_identityVariantKeepsItsHead(self) -> None:
        """
        The identity variant is the backend's response: its strong tag,
        its length, and ranges answered from it; a range asked by a client
        that accepts gzip is answered from it too.
        """
        proxy = CodingProxy()
        plain = proxy.fetch(_get(None))
        self.assertEqual(plain.header(b"etag"), [b'"v1"'])
        self.assertEqual(plain.header(b"content-length"), [b"%d" % (len(_PAGE),)])
        self.assertEqual(plain.header(b"vary"), [b"Accept-Encoding"])
        ranged = proxy.get(_get(b"gzip", b"Range: bytes=0-9\r\n"))
        self.assertEqual(ranged.status, 206)
        self.assertEqual(ranged.body, _PAGE[:10])
        self.assertEqual(ranged.header(b"content-encoding"), [])

    def test_codedTagIsWeak(self) -> None:
        """
        The gzip variant's tag is the weak form of the identity one's; a
        client's conditional request with it is answered 304 from the
        store.
        """
        proxy = CodingProxy()
        miss = proxy.fetch(_get())
        self.assertEqual(miss.header(b"etag"), [b'W/"v1"'])
        self.assertEqual(proxy.get(_get()).header(b"etag"), [b'W/"v1"'])
        answer = proxy.get(_get(b"gzip", b'If-None-Match: W/"v1"\r\n'))
        self.assertEqual((answer.status, answer.body), (304, b""))
        self.assertEqual(answer.header(b"etag"), [b'W/"v1"'])
        self.assertEqual(answer.header(b"x-cache"), [b"HIT"])

    def test_revalidatedCodedVariant(self) -> None:
        """
        A stale gzip variant is revalidated with both tags; the backend's
        304 (with the identity tag) refreshes it, and the client gets the
        stored coded bytes, compressed by nobody; its tag stays weak.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        miss = proxy.fetch(_get(), _response(cacheControl=b"max-age=10"))
        proxy.reactor.advance(11)
        revalidated = proxy.fetch(
            _get(),
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n'
            b"Cache-Control: max-age=10\r\n\r\n",
        )
        self.assertIn(b'If-None-Match: "v1", W/"v1"\r\n', proxy.backendRequests())
        self.assertEqual(revalidated.header(b"x-cache"), [b"REVALIDATED"])
        self.assertEqual(revalidated.body, miss.body)
        self.assertEqual(revalidated.header(b"etag"), [b'W/"v1"'])
        self.assertEqual(counted.made, 1)
        hit = proxy.get(_get())
        self.assertEqual(hit.header(b"x-cache"), [b"HIT"])
        self.assertEqual(hit.header(b"etag"), [b'W/"v1"'])

    def test_changedOnRevalidation(self) -> None:
        """
        A stale variant the backend replaces (a 200) is compressed and
        stored anew.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        proxy.fetch(_get(), _response(cacheControl=b"max-age=10"))
        proxy.reactor.advance(11)
        changed = proxy.fetch(_get(), _response(_PAGE + b"more", b"text/html"))
        self.assertEqual(gzip.decompress(changed.body), _PAGE + b"more")
        hit = proxy.get(_get())
        self.assertEqual(hit.header(b"x-cache"), [b"HIT"])
        self.assertEqual(gzip.decompress(hit.body), _PAGE + b"more")
        self.assertEqual(counted.made, 2)


class LeftAloneTests(SynchronousTestCase):
    """
    What the compressor does not code is stored as it is, once for every
    client.
    """

    def test_incompressibleTypeIsOneEntry(self) -> None:
        """
        An image is stored once, served to every client as it is, and
        gets no C{Vary}.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        png = b"\x89PNG" + bytes(range(256)) * 8
        proxy.fetch(_get(), _response(png, b"image/png"))
        for accept in (b"gzip", b"br", None):
            hit = proxy.get(_get(accept))
            self.assertEqual((hit.header(b"x-cache"), hit.body), ([b"HIT"], png))
            self.assertEqual(hit.header(b"vary"), [])
        self.assertEqual(counted.made, 0)

    def test_backendCodedLeftAlone(self) -> None:
        """
        A response the backend compressed itself is passed and stored as
        it is, by its C{Vary} as the backend wrote it.
        """
        counted = Counted(self)
        proxy = CodingProxy()
        body = gzip.compress(_PAGE)
        extra = b"Content-Encoding: gzip\r\nVary: Accept-Encoding\r\n"
        miss = proxy.fetch(_get(), _response(body, extra=extra))
        self.assertEqual(miss.body, body)
        self.assertEqual(proxy.get(_get()).header(b"x-cache"), [b"HIT"])
        self.assertEqual(counted.made, 0)
        [entry] = proxy.stored()
        self.assertNotIn(CODING, entry.varyOn)

    def test_notStoredCompressedOnce(self) -> None:
        """
        A response that is not stored is compressed once on its way (by
        the cache's compressor; the filter sees it coded already).
        """
        counted = Counted(self)
        proxy = CodingProxy()
        for _ in range(2):
            miss = proxy.fetch(_get(), _response(cacheControl=b"no-store"))
            self.assertEqual(gzip.decompress(miss.body), _PAGE)
        self.assertEqual(counted.made, 2)
        self.assertEqual(proxy.stored(), [])


class FilterOrderTests(SynchronousTestCase):
    """
    Which C{compress} filter stores coded variants, so that the other
    filters see what they would without it.
    """

    def test_innerResponseFilterFallsBack(self) -> None:
        """
        With a filter with a response hook listed after C{compress}, the
        cache stores the identity response (that filter sees it, as
        without the cache's compressor) and each hit is compressed.
        """
        counted = Counted(self)
        proxy = CodingProxy(("gzip", "tag"))
        self.assertIsNone(proxy.cache.coder)
        proxy.fetch(_get())
        hit = proxy.get(_get())
        self.assertEqual(hit.header(b"x-cache"), [b"HIT"])
        self.assertEqual(hit.header(b"x-tag"), [b"t"])
        self.assertEqual(gzip.decompress(hit.body), _PAGE)
        self.assertEqual(counted.made, 2)

    def test_outerFilterSeesCoded(self) -> None:
        """
        A filter listed before C{compress} sees (and changes) the coded
        variant on a hit, as it sees a compressed response without the
        cache.
        """
        counted = Counted(self)
        proxy = CodingProxy(("tag", "gzip"))
        self.assertIsNotNone(proxy.cache.coder)
        proxy.fetch(_get())
        hit = proxy.get(_get())
        self.assertEqual(hit.header(b"x-tag"), [b"t"])
        self.assertEqual(hit.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(counted.made, 1)

    def test_storedCoder(self) -> None:
        """
        The one C{compress} filter of a route is its cache's coder unless
        a filter with a response hook is listed after it; filters with
        request hooks only do not matter.
        """

        @implementer(IRequestFilter)
        class Requests:
            def filterRequest(self, request: object, context: object) -> None:
                return None

        @implementer(IResponseFilter)
        class Responses:
            def filterResponse(self, *args: object) -> None:
                return None

        gz = CompressFilter(CompressionPolicy())
        self.assertIs(storedCoder([("gz", gz), ("r", Requests())])[0], gz)
        self.assertIs(storedCoder([("s", Responses()), ("gz", gz)])[0], gz)
        coder, why = storedCoder([("gz", gz), ("s", Responses())])
        self.assertIsNone(coder)
        self.assertIn("'s'", why)
        self.assertEqual(storedCoder([("r", Requests())]), (None, ""))
        self.assertEqual(storedCoder([("a", gz), ("b", gz)])[0], None)


class VariantKeyTests(SynchronousTestCase):
    """
    The secondary key of a response stored by coding.
    """

    def test_codingStandsForTheHeader(self) -> None:
        """
        With L{CODING} among the names, the negotiated coding is the key's
        part, after the other names' values.
        """
        pairs = [(b"accept-encoding", b"gzip, br"), (b"accept-language", b"fr")]
        self.assertEqual(
            variantKey([CODING, b"accept-language"], pairs, lambda _: b"br"),
            b"accept-language=fr\n:coding=br",
        )
        self.assertEqual(
            variantKey([CODING], pairs, lambda _: b"gzip"), b":coding=gzip"
        )

    def test_nothingToNegotiateWith(self) -> None:
        """
        Without a negotiation (a cache without its compressor, after a
        reload), a response stored by coding selects nothing.
        """
        self.assertIsNone(variantKey([CODING], [], None))
        self.assertEqual(
            variantKey([b"accept-encoding"], [], None), b"accept-encoding!"
        )

    def test_requestPairs(self) -> None:
        """
        (The pairs are those of the request, names lowercased.)
        """

        class Request:
            requestHeaders = Headers({b"Accept-Encoding": [b"gzip"]})

        self.assertEqual(
            requestPairs(Request()),  # type: ignore[arg-type]
            [(b"accept-encoding", b"gzip")],
        )


class ClientGoneTests(SynchronousTestCase):
    """
    A client that goes during a miss releases what the miss held: the
    capture (watching the request's C{onConnectionLost}) and the proxy's
    exchange (which set it first) both hear of it.
    """

    def test_goneBeforeTheHead(self) -> None:
        """
        The client goes while the backend has not answered: the flight of
        its key lands (the next request goes to the backend at once, not
        after C{coalesce_wait}), the backend connection is dropped, and
        nothing is stored.
        """
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        proxy = CodingProxy()
        snapshot = proxy.snapshot()
        protocol, _ = proxy.exchange(_get())
        backendProtocol = proxy.backendSince(snapshot)
        cache = proxy.cache
        key = b"GET http://example.test/page"
        self.assertIn(key, cache._flights)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertNotIn(key, cache._flights)
        self.assertTrue(proxy.backends[-1][1].disconnecting)
        backendProtocol.dataReceived(_response())
        self.assertEqual(proxy.stored(), [])
        again = proxy.fetch(_get())
        self.assertEqual(again.header(b"x-cache"), [b"MISS"])
        self.assertEqual(gzip.decompress(again.body), _PAGE)
