"""
Loopback tests of the C{compress} filter: a real L{ProxyService} on
127.0.0.1 with a route C{filters = ["gzip"]}, in front of real backends
(L{tests.loopback.RecordingBackend}) and a static directory, read by raw
clients so that the exact headers and framing on the wire are checked.
"""

from __future__ import annotations

import gzip
import os
import random
import time
import zlib
from typing import Any

import brotli
from twisted.internet import reactor

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import (
    ParsedResponse,
    RecordedRequest,
    Reply,
    finalCount,
    parseResponses,
)
from twisted_rproxy.config import (
    Config,
    FilterConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.service import ProxyService


def _html(size: int) -> bytes:
    """
    C{size} bytes of compressible but not trivial HTML.
    """
    words = [b"proxy", b"twisted", b"reactor", b"deferred", b"<p>", b"</p>", b"\n"]
    rng = random.Random(size)
    out = b"<!doctype html><title>t</title>\n"
    while len(out) < size:
        out += rng.choice(words) + b" "
    return out[:size]


PAGE = _html(20 * 1024)
PNG = b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(20 * 1024)


def _request(path: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n" % (method, path)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


def _pageReply(
    request: RecordedRequest,
    contentType: bytes = b"text/html; charset=utf-8",
    body: bytes = PAGE,
    extra: tuple[tuple[bytes, bytes], ...] = (),
    status: int = 200,
    reason: bytes = b"OK",
) -> Reply:
    headers = [(b"Content-Type", contentType), (b"ETag", b'"page-1"'), *extra]
    if request.method == b"HEAD":
        headers.append((b"Content-Length", b"%d" % (len(body),)))
        return Reply(status=status, reason=reason, headers=headers, noBody=True)
    return Reply(status=status, reason=reason, headers=headers, body=body)


class CompressLoopbackCase(LoopbackTestCase):
    """
    Runs a proxy whose routes carry the C{gzip} filter (the C{compress}
    plugin).
    """

    async def startCompressingProxy(
        self,
        backendPort: int | None = None,
        static: str | None = None,
        **options: object,
    ) -> int:
        """
        A L{ProxyService} with the C{compress} filter, as C{gzip}, on a pool
        route to C{backendPort} and/or a static route C{/files/} for
        C{static}.

        @return: The proxy's port.
        """
        pools = {}
        routes = []
        if static is not None:
            routes.append(RouteConfig(path="/files/", static=static, filters=("gzip",)))
        if backendPort is not None:
            pools["app"] = PoolConfig(name="app", servers=(backendServer(backendPort),))
            routes.append(RouteConfig(path="/", pool="app", filters=("gzip",)))
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools=pools,
            routes=tuple(routes),
            filters={
                "gzip": FilterConfig(name="gzip", plugin="compress", options=options)
            },
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        port: int = listening[0].getHost().port
        return port

    async def exchange(
        self, port: int, data: bytes, method: bytes = b"GET"
    ) -> ParsedResponse:
        """
        Send one request on a new connection; the one response.
        """
        _, responses = await self.rawExchange(port, data, methods=[method])
        self.assertEqual(len(responses), 1, responses)
        response: ParsedResponse = responses[0]
        return response

    def assertVaries(self, response: ParsedResponse) -> None:
        vary = b",".join(response.header(b"vary")).lower()
        self.assertIn(b"accept-encoding", vary)

    def assertUntouched(self, response: ParsedResponse, body: bytes) -> None:
        """
        The response is the backend's: no coding added, its length kept.
        """
        self.assertEqual(response.header(b"content-encoding"), [])
        self.assertEqual(response.header(b"content-length"), [b"%d" % (len(body),)])
        self.assertEqual(response.body, body)


class NegotiationTests(CompressLoopbackCase):
    """
    What the client accepts decides the coding of a compressible response.
    """

    @asyncTest
    async def test_gzip(self) -> None:
        """
        A 20 KiB HTML page asked for with C{Accept-Encoding: gzip} arrives
        gzip-encoded and chunked, decodes to the backend's bytes, varies with
        C{Accept-Encoding} and has a weak ETag.
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        response = await self.exchange(
            port, _request(b"/page", b"Accept-Encoding: gzip")
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.header(b"content-length"), [])
        self.assertEqual(response.header(b"transfer-encoding"), [b"chunked"])
        self.assertVaries(response)
        self.assertEqual(response.header(b"etag"), [b'W/"page-1"'])
        self.assertEqual(gzip.decompress(response.body), PAGE)
        self.assertLess(len(response.body), len(PAGE) // 2)
        self.assertEqual(backend.requests[0].header(b"accept-encoding"), [b"gzip"])

    @asyncTest
    async def test_brotli(self) -> None:
        """
        With C{Accept-Encoding: br} the page arrives brotli-encoded.
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        response = await self.exchange(port, _request(b"/page", b"Accept-Encoding: br"))
        self.assertEqual(response.header(b"content-encoding"), [b"br"])
        self.assertEqual(response.header(b"content-length"), [])
        self.assertVaries(response)
        self.assertEqual(brotli.decompress(response.body), PAGE)

    @asyncTest
    async def test_browserPrefersBrotli(self) -> None:
        """
        A browser's C{gzip, deflate, br} (all at q=1) gets brotli, the first
        offered coding; a q-value below gzip's gets gzip.
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        browser = await self.exchange(
            port, _request(b"/", b"Accept-Encoding: gzip, deflate, br")
        )
        self.assertEqual(browser.header(b"content-encoding"), [b"br"])
        weighted = await self.exchange(
            port, _request(b"/", b"Accept-Encoding: br;q=0.5, gzip")
        )
        self.assertEqual(weighted.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(gzip.decompress(weighted.body), PAGE)

    @asyncTest
    async def test_noAcceptEncoding(self) -> None:
        """
        Without C{Accept-Encoding} the page is sent as it is, with its
        length, but still varies with C{Accept-Encoding}.
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        response = await self.exchange(port, _request(b"/page"))
        self.assertUntouched(response, PAGE)
        self.assertVaries(response)
        self.assertEqual(response.header(b"etag"), [b'"page-1"'])

    @asyncTest
    async def test_identityRefusedAlone(self) -> None:
        """
        C{identity;q=0} alone accepts no coding the proxy offers: the page
        is sent as it is (not a 406).
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        response = await self.exchange(
            port, _request(b"/page", b"Accept-Encoding: identity;q=0")
        )
        self.assertEqual(response.status, 200)
        self.assertUntouched(response, PAGE)
        self.assertVaries(response)

    @asyncTest
    async def test_encodingsOption(self) -> None:
        """
        With C{encodings = ["gzip"]} a client accepting only brotli gets the
        page as it is.
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber, encodings=["gzip"])
        response = await self.exchange(port, _request(b"/page", b"Accept-Encoding: br"))
        self.assertUntouched(response, PAGE)
        self.assertVaries(response)


class UntouchedTests(CompressLoopbackCase):
    """
    Responses the filter must leave as the backend sent them.
    """

    async def fetchWith(self, handler: Any, *headers: bytes) -> ParsedResponse:
        backend = await self.startBackend(handler)
        port = await self.startCompressingProxy(backend.portNumber)
        return await self.exchange(
            port, _request(b"/x", b"Accept-Encoding: gzip, br", *headers)
        )

    @asyncTest
    async def test_image(self) -> None:
        """
        A PNG image is not compressed and gets no C{Vary}.
        """
        response = await self.fetchWith(
            lambda r: _pageReply(r, contentType=b"image/png", body=PNG)
        )
        self.assertUntouched(response, PNG)
        self.assertEqual(response.header(b"vary"), [])

    @asyncTest
    async def test_partialContent(self) -> None:
        """
        A 206 keeps its bytes, its C{Content-Range} and its length.
        """
        part = PAGE[100:1100]
        response = await self.fetchWith(
            lambda r: _pageReply(
                r,
                body=part,
                status=206,
                reason=b"Partial Content",
                extra=((b"Content-Range", b"bytes 100-1099/%d" % (len(PAGE),)),),
            ),
            b"Range: bytes=100-1099",
        )
        self.assertEqual(response.status, 206)
        self.assertUntouched(response, part)
        self.assertEqual(
            response.header(b"content-range"), [b"bytes 100-1099/%d" % (len(PAGE),)]
        )

    @asyncTest
    async def test_alreadyEncoded(self) -> None:
        """
        A body the backend encoded already is passed on once, not twice.
        """
        encoded = gzip.compress(PAGE)
        response = await self.fetchWith(
            lambda r: _pageReply(
                r, body=encoded, extra=((b"Content-Encoding", b"gzip"),)
            )
        )
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.header(b"content-length"), [b"%d" % (len(encoded),)])
        self.assertEqual(gzip.decompress(response.body), PAGE)
        self.assertEqual(response.header(b"etag"), [b'"page-1"'])

    @asyncTest
    async def test_noTransform(self) -> None:
        """
        C{Cache-Control: no-transform} keeps the body as it is.
        """
        response = await self.fetchWith(
            lambda r: _pageReply(
                r, extra=((b"Cache-Control", b"public, no-transform"),)
            )
        )
        self.assertUntouched(response, PAGE)
        self.assertEqual(response.header(b"etag"), [b'"page-1"'])


class HeadTests(CompressLoopbackCase):
    """
    A HEAD response says what the GET response would.
    """

    @asyncTest
    async def test_headLikeGet(self) -> None:
        """
        HEAD gets the same coding, C{Vary} and weak ETag as GET, no
        C{Content-Length} (that of the uncompressed body would be wrong),
        and no body; the connection stays usable for a GET after it.
        """
        backend = await self.startBackend(_pageReply)
        port = await self.startCompressingProxy(backend.portNumber)
        client = await self.rawClient(port)
        client.write(
            _request(b"/page", b"Accept-Encoding: gzip", method=b"HEAD")
            + _request(b"/page", b"Accept-Encoding: gzip")
        )
        methods = [b"HEAD", b"GET"]
        received = await client.waitFor(finalCount(2, methods), reactor, 10)
        responses, rest = parseResponses(received, list(methods))
        self.assertEqual(len(responses), 2, received[:2000])
        self.assertEqual(rest, b"")
        head, get = responses
        self.assertEqual(head.body, b"")
        for name in (b"content-encoding", b"vary", b"etag", b"content-type"):
            self.assertEqual(head.header(name), get.header(name), name)
        self.assertEqual(head.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(head.header(b"content-length"), [])
        self.assertEqual(gzip.decompress(get.body), PAGE)


class StreamingTests(CompressLoopbackCase):
    """
    A compressed body streams: each piece leaves when it arrives.
    """

    @asyncTest
    async def test_firstPieceBeforeLast(self) -> None:
        """
        Of a chunked text response sent in 3 pieces 0.3 s apart, the client
        receives and decompresses the first piece while the backend still
        holds the last.
        """
        pieces = [_html(4000 + n) for n in range(3)]
        sentAt: list[float] = []
        # The backend is played by hand below, on the connection it accepted:
        # the test, not a timer of the backend's, knows when each piece left.
        backend = await self.startBackend(lambda request: Reply(hang=True))
        port = await self.startCompressingProxy(backend.portNumber)
        client = await self.rawClient(port)
        client.write(_request(b"/stream", b"Accept-Encoding: gzip"))

        # Wait for the request to reach the backend, then play the backend.
        for _ in range(500):
            if backend.requests:
                break
            await sleep(0.01)
        self.assertTrue(backend.requests, "the request never reached the backend")
        transport = backend.connections[-1].transport

        def send(index: int) -> None:
            chunk = pieces[index]
            if index == 0:
                transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
            transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            if index == len(pieces) - 1:
                transport.write(b"0\r\n\r\n")
            sentAt.append(time.monotonic())

        for index in range(len(pieces)):
            reactor.callLater(0.3 * index, send, index)

        decoder = zlib.decompressobj(31)

        def firstPieceDecodes(data: bytes) -> bool:
            body = _chunkedPrefix(data)
            if body is None:
                return False
            return zlib.decompressobj(31).decompress(body).startswith(pieces[0])

        await client.waitFor(firstPieceDecodes, reactor, 5)
        arrived = time.monotonic()
        lastSent = len(sentAt) == len(pieces)
        self.assertFalse(
            lastSent,
            f"the first piece arrived only after the last was sent "
            f"({arrived - sentAt[0]:.2f} s after the first)",
        )

        def complete(data: bytes) -> bool:
            responses, _ = parseResponses(data)
            return bool(responses)

        received = await client.waitFor(complete, reactor, 5)
        (response,), _ = parseResponses(received)
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(decoder.decompress(response.body), b"".join(pieces))
        self.assertTrue(decoder.eof)
        # Reply(hang=True) left the backend's protocol busy for good.
        transport.loseConnection()


def _chunkedPrefix(data: bytes) -> bytes | None:
    """
    The body bytes of the complete chunks of a chunked response received so
    far, or L{None} before the head is complete.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    rest = data[end + 4 :]
    body = b""
    position = 0
    while True:
        lineEnd = rest.find(b"\r\n", position)
        if lineEnd < 0:
            return body
        size = int(rest[position:lineEnd].split(b";")[0], 16)
        start = lineEnd + 2
        if size == 0 or len(rest) < start + size + 2:
            return body
        body += rest[start : start + size]
        position = start + size + 2


class StaticTests(CompressLoopbackCase):
    """
    The filter compresses what a static route serves as well.
    """

    @asyncTest
    async def test_staticTextCompressed(self) -> None:
        """
        A CSS file under a static route with the filter arrives
        gzip-encoded and decodes to the file; a PNG beside it does not.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        css = b"".join(
            b".c%d { color: #%06x; margin: 0 auto; }\n" % (n, n) for n in range(600)
        )
        with open(os.path.join(directory, "site.css"), "wb") as f:
            f.write(css)
        with open(os.path.join(directory, "photo.png"), "wb") as f:
            f.write(PNG)
        port = await self.startCompressingProxy(static=directory)
        response = await self.exchange(
            port, _request(b"/files/site.css", b"Accept-Encoding: gzip")
        )
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.header(b"content-length"), [])
        self.assertVaries(response)
        self.assertEqual(gzip.decompress(response.body), css)
        [etag] = response.header(b"etag")
        self.assertTrue(etag.startswith(b'W/"'), etag)
        image = await self.exchange(
            port, _request(b"/files/photo.png", b"Accept-Encoding: gzip")
        )
        self.assertUntouched(image, PNG)

    @asyncTest
    async def test_precompressedSiblingServedAsIs(self) -> None:
        """
        A precompressed C{.gz} sibling is served as it is, not compressed
        again.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        css = b"body { color: black; }\n" * 400
        siblingBytes = gzip.compress(css, 9)
        with open(os.path.join(directory, "site.css"), "wb") as f:
            f.write(css)
        with open(os.path.join(directory, "site.css.gz"), "wb") as f:
            f.write(siblingBytes)
        port = await self.startCompressingProxy(static=directory)
        response = await self.exchange(
            port, _request(b"/files/site.css", b"Accept-Encoding: gzip")
        )
        self.assertEqual(response.header(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.body, siblingBytes)
        self.assertEqual(
            response.header(b"content-length"), [b"%d" % (len(siblingBytes),)]
        )
        self.assertEqual(
            b",".join(response.header(b"vary")).lower().count(b"accept-encoding"), 1
        )
