"""
Loopback integration tests: the real proxy (L{ProxyService}, and C{twistd
rproxy} in a subprocess) on 127.0.0.1, in front of real backend servers
(L{tests.loopback.RecordingBackend}), with real clients (treq, and raw
sockets for exact wire checks).

Their shared fixtures are in L{tests.fixtures}.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.internet.utils import getProcessOutputAndValue

from tests.fixtures import (
    TWISTD,
    LoopbackTestCase,
    TwistdProcess,
    asyncTest,
    backendServer,
    freePort,
    sleep,
    twistdEnvironment,
    url,
)
from tests.loopback import (
    LOCALHOST,
    RecordedRequest,
    Reply,
    finalCount,
    parseResponses,
)
from twisted_rproxy.config import (
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.service import ProxyService


class PassThroughTests(LoopbackTestCase):
    """
    Status, headers and bodies cross the proxy unchanged, except what a
    proxy must change.
    """

    @asyncTest
    async def test_statusHeadersAndBodyPassThrough(self) -> None:
        """
        A 200, a backend's 404 and a 201 answering a POST reach the client
        with their status, headers and body.
        """

        def handler(request: RecordedRequest) -> Reply:
            if request.target == b"/missing":
                return Reply(
                    404, b"Not Found", [(b"X-Reason", b"gone")], b"no such thing"
                )
            if request.method == b"POST":
                return Reply(
                    201,
                    b"Created",
                    [
                        (b"Location", b"/items/7"),
                        (b"Content-Type", b"application/json"),
                    ],
                    b'{"got": "' + request.body + b'"}',
                )
            return Reply(
                200,
                b"OK",
                [
                    (b"Content-Type", b"text/plain"),
                    (b"Set-Cookie", b"a=1"),
                    (b"Set-Cookie", b"b=2"),
                    (b"X-Custom", b"kept"),
                ],
                b"hello world",
            )

        backend = await self.startBackend(handler)
        port = await self.startProxy(backend.portNumber)
        client = self.httpClient()

        response = await client.get(url(port, "/hello"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"hello world")
        headers = response.headers
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"text/plain"])
        self.assertEqual(headers.getRawHeaders(b"set-cookie"), [b"a=1", b"b=2"])
        self.assertEqual(headers.getRawHeaders(b"x-custom"), [b"kept"])

        response = await client.get(url(port, "/missing"))
        self.assertEqual(response.code, 404)
        self.assertEqual(await response.content(), b"no such thing")
        self.assertEqual(response.headers.getRawHeaders(b"x-reason"), [b"gone"])

        response = await client.post(url(port, "/items"), data=b"abc")
        self.assertEqual(response.code, 201)
        self.assertEqual(response.phrase, b"Created")
        self.assertEqual(await response.content(), b'{"got": "abc"}')
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/items/7"])
        self.assertEqual(
            [(r.method, r.target, r.body) for r in backend.requests],
            [
                (b"GET", b"/hello", b""),
                (b"GET", b"/missing", b""),
                (b"POST", b"/items", b"abc"),
            ],
        )

    @asyncTest
    async def test_hopByHopAndIdentityHeadersRemoved(self) -> None:
        """
        Hop-by-hop headers, and those named in C{Connection}, cross in
        neither direction; the backend's C{Server} and C{X-Powered-By} are
        not shown to the client.
        """

        def handler(request: RecordedRequest) -> Reply:
            return Reply(
                headers=[
                    (b"Connection", b"X-Back-Secret"),
                    (b"X-Back-Secret", b"s"),
                    (b"Keep-Alive", b"timeout=5"),
                    (b"Upgrade", b"foo/1"),
                    (b"Server", b"SecretBackend/1.0"),
                    (b"X-Powered-By", b"PHP/5.0"),
                    (b"X-Custom", b"kept"),
                ],
                body=b"ok",
            )

        backend = await self.startBackend(handler)
        port = await self.startProxy(backend.portNumber)
        _, responses = await self.rawExchange(
            port,
            b"GET /hop HTTP/1.1\r\n"
            b"Host: example.test\r\n"
            b"Connection: close, X-Secret\r\n"
            b"X-Secret: s\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"TE: trailers\r\n"
            b"Upgrade: foo/1\r\n"
            b"X-Custom: c\r\n"
            b"\r\n",
        )
        [response] = responses
        self.assertEqual((response.status, response.body), (200, b"ok"))
        names = response.headerNames()
        for hidden in (b"x-back-secret", b"keep-alive", b"upgrade", b"x-powered-by"):
            self.assertNotIn(hidden, names)
        self.assertNotIn(b"SecretBackend", response.raw)
        self.assertNotIn(b"PHP", response.raw)
        self.assertNotIn(
            b"x-back-secret", b" ".join(response.header(b"connection")).lower()
        )
        self.assertEqual(response.header(b"x-custom"), [b"kept"])

        [request] = backend.requests
        received = request.headerNames()
        for hidden in (b"x-secret", b"keep-alive", b"te", b"upgrade"):
            self.assertNotIn(hidden, received)
        self.assertEqual(request.header(b"x-custom"), [b"c"])
        self.assertNotIn(b"close", b" ".join(request.header(b"connection")).lower())
        self.assertEqual(request.version, b"HTTP/1.1")

    @asyncTest
    async def test_forwardingHeaders(self) -> None:
        """
        The backend gets the client's C{Host}, C{X-Forwarded-For} (a
        client's own value replaced), C{X-Forwarded-Proto},
        C{X-Forwarded-Host} and C{Via}.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber)
        _, [response] = await self.rawExchange(
            port,
            b"GET /fwd HTTP/1.1\r\nHost: example.test:8080\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\n\r\n",
        )
        self.assertEqual(response.status, 200)
        [request] = backend.requests
        self.assertEqual(request.header(b"host"), [b"example.test:8080"])
        self.assertEqual(request.header(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(request.header(b"x-forwarded-proto"), [b"http"])
        self.assertEqual(request.header(b"x-forwarded-host"), [b"example.test:8080"])
        self.assertEqual(request.header(b"via"), [b"1.1 twisted_rproxy"])

    @asyncTest
    async def test_hostHeaderBackend(self) -> None:
        """
        With C{hostHeader="backend"} the backend sees its own host:port as
        C{Host}, once.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, hostHeader="backend")
        response = await self.httpClient().get(
            url(port, "/h"), headers={b"Host": b"example.test"}
        )
        self.assertEqual(response.code, 200)
        await response.content()
        [request] = backend.requests
        self.assertEqual(
            request.header(b"host"), [b"127.0.0.1:%d" % (backend.portNumber,)]
        )
        self.assertEqual(request.header(b"x-forwarded-host"), [b"example.test"])


class KeepAliveTests(LoopbackTestCase):
    """
    Backend connections are kept alive and reused; pipelined requests are
    answered in order.
    """

    @asyncTest
    async def test_sequentialRequestsReuseOneConnection(self) -> None:
        """
        50 sequential requests on one client connection travel over one
        backend connection, each as HTTP/1.1 without C{Connection: close}.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber)
        client = self.httpClient()
        for i in range(50):
            response = await client.get(url(port, f"/seq/{i}"))
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), f"/seq/{i}".encode())
        self.assertEqual(len(backend.requests), 50)
        self.assertEqual(backend.accepted, 1)
        for request in backend.requests:
            self.assertEqual(request.version, b"HTTP/1.1")
            self.assertNotIn(b"close", b" ".join(request.header(b"connection")).lower())

    @asyncTest
    async def test_concurrentClientsBoundedConnections(self) -> None:
        """
        10 concurrent clients making 20 requests each use at most 10
        backend connections.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber)

        async def oneClient(n: int) -> None:
            client = self.httpClient()
            for i in range(20):
                response = await client.get(url(port, f"/c{n}/{i}"))
                self.assertEqual(await response.content(), f"/c{n}/{i}".encode())

        await gatherResults([Deferred.fromCoroutine(oneClient(n)) for n in range(10)])
        self.assertEqual(len(backend.requests), 200)
        self.assertLessEqual(backend.accepted, 10)

    @asyncTest
    async def test_pipelinedRequestsAnsweredInOrder(self) -> None:
        """
        Five GETs pipelined in one write get five responses, in order, even
        when the first is the slowest.
        """

        def handler(request: RecordedRequest) -> Reply:
            delay = 0.2 if request.target == b"/p0" else 0.0
            return Reply(body=request.target, delay=delay)

        backend = await self.startBackend(handler)
        port = await self.startProxy(backend.portNumber)
        data = b"".join(
            b"GET /p%d HTTP/1.1\r\nHost: x\r\n\r\n" % (i,) for i in range(5)
        )
        client, responses = await self.rawExchange(port, data, responses=5)
        self.assertEqual(
            [(r.status, r.body) for r in responses],
            [(200, b"/p%d" % (i,)) for i in range(5)],
        )
        self.assertFalse(client.closed)


class BackendFailureTests(LoopbackTestCase):
    """
    A backend that is down, slow or broken gets the client the proxy's own
    502 or 504 page, which says nothing about the backend.
    """

    def assertNothingRevealed(self, body: bytes, port: int) -> None:
        self.assertNotIn(b"127.0.0.1", body)
        self.assertNotIn(str(port).encode(), body)

    @asyncTest
    async def test_closedPortIs502(self) -> None:
        """
        Nothing listening on the backend port: 502, without the backend's
        address in the page.
        """
        backendPort = freePort()
        port = await self.startProxy(backendPort, connectTimeout=2.0)
        response = await self.httpClient().get(url(port, "/"))
        body = await response.content()
        self.assertEqual(response.code, 502)
        self.assertNothingRevealed(body, backendPort)
        self.assertNothingRevealed(
            b" ".join(v for _, vs in response.headers.getAllRawHeaders() for v in vs),
            backendPort,
        )

    @asyncTest
    async def test_silentBackendIs504(self) -> None:
        """
        A backend that accepts but never answers: 504 after C{readTimeout}.
        """
        backend = await self.startBackend(lambda request: Reply(hang=True))
        port = await self.startProxy(backend.portNumber, readTimeout=0.5)
        started = reactor.seconds()
        response = await self.httpClient().get(url(port, "/"))
        body = await response.content()
        self.assertEqual(response.code, 504)
        self.assertLess(reactor.seconds() - started, 5)
        self.assertNothingRevealed(body, backend.portNumber)

    @asyncTest
    async def test_garbageResponseIs502(self) -> None:
        """
        A backend answering with a malformed status line: 502.
        """
        backend = await self.startBackend(
            lambda request: Reply(raw=b"HTTP/1.1 abc\r\n\r\n")
        )
        port = await self.startProxy(backend.portNumber)
        response = await self.httpClient().get(url(port, "/"))
        body = await response.content()
        self.assertEqual(response.code, 502)
        self.assertNotIn(b"abc", body)
        self.assertNothingRevealed(body, backend.portNumber)

    @asyncTest
    async def test_closedWithoutAnswerIs502(self) -> None:
        """
        A backend that closes a fresh connection without answering: 502.
        """
        backend = await self.startBackend(lambda request: Reply(drop=True))
        port = await self.startProxy(backend.portNumber)
        response = await self.httpClient().get(url(port, "/"))
        body = await response.content()
        self.assertEqual(response.code, 502)
        self.assertNothingRevealed(body, backend.portNumber)

    @asyncTest
    async def test_truncatedResponseIsNotCompleted(self) -> None:
        """
        A backend that closes halfway through a sized body: the client's
        connection is closed too, and it never gets a complete response.
        """
        backend = await self.startBackend(
            lambda request: Reply(
                raw=b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 500,
                closeAfter=True,
            )
        )
        port = await self.startProxy(backend.portNumber)
        client = await self.rawClient(port)
        client.write(b"GET /cut HTTP/1.1\r\nHost: x\r\n\r\n")
        received = await client.waitFor(lambda data: False, reactor, 5)
        self.assertTrue(client.closed)
        responses, _ = parseResponses(received)
        self.assertEqual(responses, [])


class BodyLimitTests(LoopbackTestCase):
    """
    Bodies over C{maxBodySize} are refused with 413 and never reach the
    backend.
    """

    @asyncTest
    async def test_contentLengthOverLimitRefusedBeforeBody(self) -> None:
        """
        A C{Content-Length} over the limit, with C{Expect: 100-continue}, is
        answered 413 from the headers alone, without C{100 Continue}.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, server={"maxBodySize": 1000})
        client, responses = await self.rawExchange(
            port,
            b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
            b"Expect: 100-continue\r\n\r\n",
        )
        self.assertEqual([r.status for r in responses], [413])
        self.assertNotIn(b"100 Continue", client.received)
        self.assertEqual(backend.requests, [])

    @asyncTest
    async def test_chunkedBodyOverLimitRefused(self) -> None:
        """
        A chunked body that grows past the limit is cut with 413.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, server={"maxBodySize": 1000})
        client = await self.rawClient(port)
        client.write(
            b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(3):
            await sleep(0.02)
            if client.closed:
                break
            client.write(b"258\r\n" + b"x" * 600 + b"\r\n")
        if not client.closed:
            client.write(b"0\r\n\r\n")
        received = await client.waitFor(finalCount(1), reactor)
        responses, _ = parseResponses(received, closed=client.closed)
        self.assertEqual([r.status for r in responses], [413])
        self.assertEqual(await self.requestsBeforeSentinel(port, backend), [])


class RequestBodyTests(LoopbackTestCase):
    """
    Request bodies reach the backend intact, buffered or streamed.
    """

    @asyncTest
    async def test_largeBufferedUpload(self) -> None:
        """
        A 5 MB upload arrives whole, with its C{Content-Length}.
        """
        backend = await self.startBackend(
            lambda r: Reply(body=hashlib.sha256(r.body).hexdigest().encode())
        )
        port = await self.startProxy(backend.portNumber)
        data = os.urandom(5 * 1024 * 1024)
        response = await self.httpClient().post(url(port, "/upload"), data=data)
        self.assertEqual(response.code, 200)
        digest = hashlib.sha256(data).hexdigest().encode()
        self.assertEqual(await response.content(), digest)
        [request] = backend.requests
        self.assertEqual(request.header(b"content-length"), [b"%d" % (len(data),)])
        self.assertFalse(request.chunked)
        self.assertEqual(hashlib.sha256(request.body).hexdigest().encode(), digest)

    async def sendChunked(self, port: int, pieces: list[bytes]) -> Any:
        client = await self.rawClient(port)
        client.write(
            b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for piece in pieces:
            client.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await sleep(0.02)
        client.write(b"0\r\n\r\n")
        received = await client.waitFor(finalCount(1), reactor)
        responses, _ = parseResponses(received, closed=client.closed)
        return responses

    @asyncTest
    async def test_chunkedBodyBuffered(self) -> None:
        """
        A chunked request body, buffered, reaches the backend whole with a
        C{Content-Length}.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber)
        pieces = [os.urandom(n) for n in (10, 3000, 70000, 1)]
        [response] = await self.sendChunked(port, pieces)
        self.assertEqual(response.status, 200)
        [request] = backend.requests
        self.assertEqual(request.body, b"".join(pieces))
        self.assertFalse(request.chunked)
        self.assertEqual(
            request.header(b"content-length"), [b"%d" % (len(request.body),)]
        )

    @asyncTest
    async def test_chunkedBodyStreamed(self) -> None:
        """
        With C{requestBuffering=False}, a chunked request body reaches the
        backend chunked, with the same bytes.
        """
        backend = await self.startBackend()
        port = await self.startProxy(
            backend.portNumber, server={"requestBuffering": False}
        )
        pieces = [os.urandom(n) for n in (10, 3000, 70000, 1)]
        [response] = await self.sendChunked(port, pieces)
        self.assertEqual(response.status, 200)
        [request] = backend.requests
        self.assertEqual(request.body, b"".join(pieces))
        self.assertTrue(request.chunked)
        self.assertEqual(request.header(b"content-length"), [])

    @asyncTest
    async def test_streamedUploadWithContentLength(self) -> None:
        """
        With C{requestBuffering=False}, a body sent in pieces with a
        C{Content-Length} arrives whole with that length.
        """
        backend = await self.startBackend()
        port = await self.startProxy(
            backend.portNumber, server={"requestBuffering": False}
        )
        data = os.urandom(300000)
        client = await self.rawClient(port)
        client.write(
            b"PUT /s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (len(data),)
        )
        for i in range(0, len(data), 100000):
            await sleep(0.05)
            client.write(data[i : i + 100000])
        received = await client.waitFor(finalCount(1), reactor)
        [response], _ = parseResponses(received)
        self.assertEqual(response.status, 200)
        [request] = backend.requests
        self.assertEqual(request.header(b"content-length"), [b"300000"])
        self.assertEqual(request.body, data)

    @asyncTest
    async def test_expectContinue(self) -> None:
        """
        C{Expect: 100-continue} gets C{100 Continue}, then, once the body is
        sent, the final response.
        """
        backend = await self.startBackend(lambda r: Reply(body=b"got " + r.body))
        port = await self.startProxy(backend.portNumber)
        client = await self.rawClient(port)
        client.write(
            b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        received = await client.waitFor(lambda data: b"\r\n\r\n" in data, reactor, 5)
        self.assertTrue(received.startswith(b"HTTP/1.1 100 Continue\r\n"), received)
        self.assertEqual(backend.requests, [])
        client.write(b"hello world")
        received = await client.waitFor(finalCount(1), reactor)
        responses, _ = parseResponses(received)
        self.assertEqual([r.status for r in responses], [100, 200])
        self.assertEqual(responses[1].body, b"got hello world")
        self.assertEqual(backend.requests[0].header(b"expect"), [])


class ResponseFramingTests(LoopbackTestCase):
    """
    Responses reach the client whole, however the backend frames them.
    """

    @asyncTest
    async def test_chunkedResponse(self) -> None:
        """
        A response sent in several chunks reaches the client intact.
        """
        chunks = [os.urandom(n) for n in (1, 1000, 70000, 5)]
        backend = await self.startBackend(lambda r: Reply(chunks=chunks))
        port = await self.startProxy(backend.portNumber)
        response = await self.httpClient().get(url(port, "/c"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"".join(chunks))

    @asyncTest
    async def test_http10ClientGetsUnchunkedBody(self) -> None:
        """
        An HTTP/1.0 client gets a chunked backend response without chunked
        framing, whole.
        """
        chunks = [b"a" * 100, b"b" * 20000, b"c"]
        backend = await self.startBackend(lambda r: Reply(chunks=chunks))
        port = await self.startProxy(backend.portNumber)
        client = await self.rawClient(port)
        client.write(b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n")
        # Without chunked framing, only the close can end the body.
        received = await client.waitFor(lambda data: False, reactor, 5)
        self.assertTrue(client.closed)
        [response], rest = parseResponses(received, closed=True)
        self.assertEqual(rest, b"")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"transfer-encoding"), [])
        self.assertEqual(response.body, b"".join(chunks))
        self.assertEqual(backend.requests[0].version, b"HTTP/1.1")

    @asyncTest
    async def test_headThenGet(self) -> None:
        """
        HEAD gets the headers, the backend's C{Content-Length} included, and
        no body; the connection then carries a GET.
        """

        def handler(request: RecordedRequest) -> Reply:
            if request.method == b"HEAD":
                return Reply(headers=[(b"Content-Length", b"1234")], noBody=True)
            return Reply(body=b"after head")

        backend = await self.startBackend(handler)
        port = await self.startProxy(backend.portNumber)
        client = await self.rawClient(port)
        client.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.waitFor(finalCount(1, [b"HEAD"]), reactor)
        client.write(b"GET /g HTTP/1.1\r\nHost: x\r\n\r\n")
        received = await client.waitFor(finalCount(2, [b"HEAD", b"GET"]), reactor)
        responses, rest = parseResponses(received, [b"HEAD", b"GET"])
        self.assertEqual([r.status for r in responses], [200, 200])
        self.assertEqual(responses[0].header(b"content-length"), [b"1234"])
        self.assertEqual(responses[0].body, b"")
        self.assertEqual(responses[1].body, b"after head")
        self.assertEqual(rest, b"")
        self.assertFalse(client.closed)

    @asyncTest
    async def test_noContentAndNotModifiedKeepConnection(self) -> None:
        """
        204 and 304 come without a body, and both the client's and the
        backend's connections carry the next request.
        """

        def handler(request: RecordedRequest) -> Reply:
            if request.target == b"/204":
                return Reply(204, b"No Content", noBody=True)
            if request.target == b"/304":
                return Reply(304, b"Not Modified", [(b"ETag", b'"v1"')], noBody=True)
            return Reply(body=b"fine")

        backend = await self.startBackend(handler)
        port = await self.startProxy(backend.portNumber)
        client = await self.rawClient(port)
        for count, target in enumerate([b"/204", b"/304", b"/ok"], 1):
            client.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % (target,))
            await client.waitFor(finalCount(count), reactor)
        responses, rest = parseResponses(client.received)
        self.assertEqual(
            [(r.status, r.body) for r in responses],
            [(204, b""), (304, b""), (200, b"fine")],
        )
        self.assertEqual(responses[1].header(b"etag"), [b'"v1"'])
        self.assertEqual(rest, b"")
        self.assertFalse(client.closed)
        self.assertEqual(backend.accepted, 1)

    @asyncTest
    async def test_closeDelimitedResponse(self) -> None:
        """
        A response without C{Content-Length}, ended by the backend closing
        the connection, is delivered whole.
        """
        body = os.urandom(200000)
        backend = await self.startBackend(lambda r: Reply(body=body, untilClose=True))
        port = await self.startProxy(backend.portNumber)
        response = await self.httpClient().get(url(port, "/close"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), body)


class BackendClosingTests(LoopbackTestCase):
    """
    A backend closing kept-alive connections costs the client nothing, and
    never makes a non-idempotent request happen twice.
    """

    @asyncTest
    async def test_backendClosedIdleConnection(self) -> None:
        """
        After the backend closes its idle connection, the next GET still
        succeeds.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber)
        client = self.httpClient()
        response = await client.get(url(port, "/1"))
        self.assertEqual(await response.content(), b"/1")
        backend.closeIdleConnections()
        for _ in range(100):
            if all(c.gone for c in backend.connections):
                break
            await sleep(0.01)
        await sleep(0.05)
        response = await client.get(url(port, "/2"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"/2")

    @asyncTest
    async def test_getRetriedWhenReusedConnectionCloses(self) -> None:
        """
        A GET sent on a kept-alive connection that the backend closes
        without answering is retried on a fresh connection.
        """
        backend = await self.startBackend()
        backend.dropReused = True
        port = await self.startProxy(backend.portNumber)
        client = self.httpClient()
        response = await client.get(url(port, "/1"))
        self.assertEqual(await response.content(), b"/1")
        response = await client.get(url(port, "/2"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"/2")
        self.assertEqual(backend.accepted, 2)

    @asyncTest
    async def test_postNotRepeatedWhenReusedConnectionCloses(self) -> None:
        """
        A POST on a kept-alive connection that the backend closes without
        answering is not sent again: the backend sees it at most once.
        """
        backend = await self.startBackend()
        backend.dropReused = True
        port = await self.startProxy(backend.portNumber)
        client = self.httpClient()
        response = await client.get(url(port, "/1"))
        self.assertEqual(await response.content(), b"/1")
        response = await client.post(url(port, "/order"), data=b"buy one")
        await response.content()
        self.assertIn(response.code, (200, 502))
        posts = [r for r in backend.requests if r.method == b"POST"]
        self.assertLessEqual(len(posts), 1)


class TwistdTests(LoopbackTestCase):
    """
    The real C{twistd rproxy} command.
    """

    async def runTwistd(self, *arguments: str) -> tuple[bytes, bytes, int]:
        directory = self.mktemp()
        os.makedirs(directory)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-c", TWISTD, "rproxy", *arguments],
            env=twistdEnvironment(),
            path=directory,
            reactor=reactor,
        )
        return out, err, code

    def writeConfig(self, text: str) -> str:
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    @asyncTest
    async def test_checkGoodConfig(self) -> None:
        """
        C{--check} on a good file exits 0 and says so.
        """
        path = self.writeConfig(
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
            '[[routes]]\npool = "app"\n'
        )
        out, err, code = await self.runTwistd("--check", "--config", path)
        self.assertEqual(code, 0, out + err)
        self.assertIn(b"configuration OK", out)

    @asyncTest
    async def test_checkBadConfig(self) -> None:
        """
        C{--check} on a bad file exits 1 with one message naming the file
        and the key, without a traceback.
        """
        path = self.writeConfig(
            '[pools.app]\nservers = ["ftp://127.0.0.1:8001"]\n'
            '[[routes]]\npool = "app"\n'
        )
        out, err, code = await self.runTwistd("--check", "--config", path)
        self.assertEqual(code, 1, out + err)
        self.assertIn(path.encode(), err)
        self.assertIn(b"pools.app.servers[0]", err)
        self.assertNotIn(b"Traceback", out + err)

    @asyncTest
    async def test_badBackendScheme(self) -> None:
        """
        C{--backend ftp://x} exits 1 with a message naming the option and
        the scheme.
        """
        out, err, code = await self.runTwistd(
            "--listen", "tcp:0:interface=127.0.0.1", "--backend", "ftp://x"
        )
        self.assertEqual(code, 1, out + err)
        self.assertIn(b"--backend", err)
        self.assertIn(b"ftp", err)
        self.assertNotIn(b"Traceback", out + err)

    async def startTwistd(self, backendPort: int) -> tuple[TwistdProcess, int]:
        """
        Run C{twistd -n rproxy} in front of the backend; stop it with
        SIGTERM at clean-up.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        process = TwistdProcess()
        reactor.spawnProcess(
            process,
            sys.executable,
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "rproxy",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--backend",
                f"http://127.0.0.1:{backendPort}",
            ],
            env=twistdEnvironment(),
            path=directory,
        )

        async def stop() -> None:
            if process.running:
                process.transport.signalProcess("TERM")
                try:
                    await process.ended.addTimeout(10, reactor)
                except Exception:
                    process.transport.signalProcess("KILL")
                    await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        port = await process.listening.addTimeout(30, reactor)
        return process, port

    @asyncTest
    async def test_twistdProxiesAndStopsOnSIGTERM(self) -> None:
        """
        C{twistd -n rproxy --listen ... --backend ...} proxies a GET, and
        exits on SIGTERM.
        """
        backend = await self.startBackend()
        process, port = await self.startTwistd(backend.portNumber)
        client = self.httpClient()
        response = await client.get(url(port, "/through/twistd"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"/through/twistd")
        self.assertEqual(backend.requests[0].header(b"x-forwarded-for"), [b"127.0.0.1"])
        process.transport.signalProcess("TERM")
        reason = await process.ended.addTimeout(10, reactor)
        self.assertIsInstance(reason, (ProcessDone, ProcessTerminated))
        self.assertIn(getattr(reason, "exitCode", None), (0, None), process.output)
        if isinstance(reason, ProcessTerminated):
            self.assertIn(reason.signal, (None, signal.SIGTERM))

    @asyncTest
    async def test_largeResponseStreamedWithBoundedMemory(self) -> None:
        """
        A 300 MB response through C{twistd rproxy} to a client that is slow
        at first arrives byte for byte, while the proxy's resident memory
        grows by less than 30 MB.
        """
        size = 300 * 1000 * 1000

        def handler(request: RecordedRequest) -> Reply:
            if request.target == b"/big":
                return Reply(bigBody=size)
            return Reply(body=b"warm")

        backend = await self.startBackend(handler)
        process, port = await self.startTwistd(backend.portNumber)
        pid = process.transport.pid

        def rss() -> int:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            raise AssertionError("no VmRSS")

        client = self.httpClient()
        response = await client.get(url(port, "/warm"))
        self.assertEqual(await response.content(), b"warm")
        await sleep(0.2)
        baseline = rss()
        samples = [baseline]
        sampler = LoopingCall(lambda: samples.append(rss()))
        sampler.start(0.05)

        def stopSampling() -> None:
            if sampler.running:
                sampler.stop()

        self.addCleanup(stopSampling)

        downloader = _CountingDownload()
        endpoint = TCP4ClientEndpoint(reactor, LOCALHOST, port)
        protocol = await endpoint.connect(Factory.forProtocol(lambda: downloader))
        self.addCleanup(lambda: protocol.transport.abortConnection())
        protocol.transport.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        protocol.transport.pauseProducing()
        await sleep(1.0)
        samples.append(rss())
        protocol.transport.resumeProducing()
        await downloader.done.addTimeout(30, reactor)
        stopSampling()
        samples.append(rss())
        self.assertEqual(downloader.status, 200)
        self.assertEqual(downloader.bodyBytes, size)
        growth = max(samples) - baseline
        self.assertLess(growth, 30 * 1024 * 1024, f"RSS grew by {growth} bytes")

    test_largeResponseStreamedWithBoundedMemory.timeout = 60  # type: ignore[attr-defined]


class _CountingDownload(Protocol):
    """
    Reads one response with a C{Content-Length}, counting the body's bytes
    without keeping them.
    """

    def __init__(self) -> None:
        self.head = b""
        self.status = 0
        self.bodyBytes = 0
        self.length: int | None = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.length is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            self.status = int(head.split(b" ", 2)[1])
            match = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            self.length = int(match.group(1)) if match else -1
        self.bodyBytes += len(data)
        if self.length >= 0 and self.bodyBytes >= self.length and not self.done.called:
            self.done.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.callback(None)


class EmbeddingTests(LoopbackTestCase):
    """
    The proxy's pieces mounted in an application's own twisted.web tree, and
    static routes, with real sockets.
    """

    async def listenSite(self, root: Any) -> int:
        from twisted.web.server import Site

        site = Site(root)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    @asyncTest
    async def test_proxyResourceInPlainSite(self) -> None:
        """
        A L{ProxyResource} mounted under C{/api} of a plain twisted.web Site
        forwards below the prefix, beside the application's own pages.
        """
        from twisted.web.resource import Resource
        from twisted.web.static import Data

        from twisted_rproxy import BackendPool, ProxyResource

        backend = await self.startBackend()
        pool = BackendPool(
            reactor,
            PoolConfig(name="api", servers=(backendServer(backend.portNumber),)),
        )
        self.addCleanup(pool.close)
        root = Resource()
        root.putChild(b"", Data(b"home page", "text/plain"))
        root.putChild(b"api", ProxyResource(pool, stripPrefix=b"/api"))
        port = await self.listenSite(root)
        client = self.httpClient()
        response = await client.get(f"http://127.0.0.1:{port}/api/users?x=1")
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertEqual(backend.requests[-1].target, b"/users?x=1")
        self.assertEqual(
            backend.requests[-1].header(b"x-forwarded-for"), [b"127.0.0.1"]
        )
        home = await client.get(f"http://127.0.0.1:{port}/")
        self.assertEqual(await home.content(), b"home page")
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_staticRouteServesFiles(self) -> None:
        """
        A static route serves its directory's files below its prefix, with
        ranges, while other paths go to the pool.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        payload = bytes(range(256)) * 40
        with open(os.path.join(directory, "data.bin"), "wb") as f:
            f.write(payload)
        backend = await self.startBackend()
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backend.portNumber),)
                )
            },
            routes=(
                RouteConfig(path="/files/", static=directory),
                RouteConfig(path="/", pool="app"),
            ),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        client = self.httpClient()
        whole = await client.get(f"http://127.0.0.1:{port}/files/data.bin")
        self.assertEqual(whole.code, 200)
        self.assertEqual(await whole.content(), payload)
        part = await client.get(
            f"http://127.0.0.1:{port}/files/data.bin",
            headers={"Range": "bytes=100-199"},
        )
        self.assertEqual(part.code, 206)
        self.assertEqual(await part.content(), payload[100:200])
        other = await client.get(f"http://127.0.0.1:{port}/elsewhere")
        self.assertEqual(other.code, 200)
        await other.content()
        self.assertEqual([r.target for r in backend.requests], [b"/elsewhere"])
