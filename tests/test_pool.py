"""
Tests for L{twisted_rproxy.pool}: connection bookkeeping, the HTTP/1.1
response parser, timeouts, retries and balancing, on a memory reactor.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_rproxy.config import BackendServer, PoolConfig
from twisted_rproxy.interfaces import IBalancer, IResponseReceiver
from twisted_rproxy.pool import (
    BackendConnection,
    BackendPool,
    BackendProtocolError,
    BackendRequest,
    BackendTimeout,
    BackendUnavailable,
    PoolClosed,
    PoolOverloaded,
    RequestBodyStream,
    RoundRobinBalancer,
)


def server(port: int = 8001, weight: int = 1, host: str = "127.0.0.1") -> BackendServer:
    return BackendServer(
        url=f"http://{host}:{port}", scheme="http", host=host, port=port, weight=weight
    )


def makePool(
    reactor: MemoryReactorClock, *servers: BackendServer, **settings: Any
) -> BackendPool:
    config = PoolConfig(name="app", servers=servers or (server(),), **settings)
    return BackendPool(reactor, config)  # type: ignore[arg-type]


def get(
    target: bytes = b"/", method: bytes = b"GET", body: bytes = b""
) -> BackendRequest:
    return BackendRequest(method, target, [(b"Host", b"example.com")], body, len(body))


@implementer(IResponseReceiver)
class Recorder:
    """
    Records what a pool reports about one exchange.
    """

    def __init__(self) -> None:
        self.status: int | None = None
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.chunks: list[bytes] = []
        self.finished = False
        self.failure: Exception | None = None
        self.producer: Any = None

    def responseStarted(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        connection: Any,
    ) -> None:
        self.status, self.reason, self.headers = status, reason, headers
        self.producer = connection

    def responseData(self, data: bytes) -> None:
        self.body += data
        self.chunks.append(data)

    def responseFinished(self) -> None:
        self.finished = True

    def requestFailed(self, reason: Exception) -> None:  # type: ignore[override]
        self.failure = reason


class Harness:
    """
    A pool on a memory reactor, and the backend connections it opened.
    """

    def __init__(
        self, testCase: SynchronousTestCase, *servers: BackendServer, **settings: Any
    ):
        self.reactor = MemoryReactorClock()
        self.pool = makePool(self.reactor, *servers, **settings)
        self.connections: list[tuple[BackendConnection, StringTransport]] = []

    def submit(self, request: BackendRequest | None = None) -> Recorder:
        recorder = Recorder()
        self.pool.submit(request or get(), recorder)
        return recorder

    @property
    def attempts(self) -> int:
        return len(self.reactor.tcpClients)

    def accept(self, index: int = -1) -> tuple[BackendConnection, StringTransport]:
        """
        Complete connection attempt C{index}.
        """
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(None)
        assert isinstance(protocol, BackendConnection)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return protocol, transport

    def refuse(self, index: int = -1, reason: Exception | None = None) -> None:
        host, port, factory, timeout, bindAddress = self.reactor.tcpClients[index]
        # The pool's factory never looks at the connector.
        factory.clientConnectionFailed(
            None,  # type: ignore[arg-type]
            Failure(reason or ConnectionRefusedError()),
        )


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: backend\r\n\r\nhello"


class ConnectionReuseTests(SynchronousTestCase):
    """
    Connections are kept alive and reused.
    """

    def test_sendsHTTP11RequestWithoutConnectionClose(self) -> None:
        """
        The request goes out as HTTP/1.1 with its headers and no
        C{Connection: close}.
        """
        h = Harness(self)
        h.submit(get(b"/path?q=1"))
        _, transport = h.accept()
        self.assertEqual(
            transport.value(),
            b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
        )

    def test_reusesIdleConnection(self) -> None:
        """
        A second request after the first completed goes over the same
        connection, without a new connection attempt.
        """
        h = Harness(self)
        first = h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(OK)
        self.assertTrue(first.finished)
        self.assertEqual(first.body, b"hello")
        transport.clear()
        second = h.submit(get(b"/again"))
        self.assertEqual(h.attempts, 1)
        self.assertTrue(transport.value().startswith(b"GET /again HTTP/1.1\r\n"))
        protocol.dataReceived(OK)
        self.assertTrue(second.finished)

    def test_connectionCloseResponseNotReused(self) -> None:
        """
        A response with C{Connection: close} closes its connection; the next
        request opens a new one.
        """
        h = Harness(self)
        h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        )
        self.assertTrue(transport.disconnecting)
        h.submit()
        self.assertEqual(h.attempts, 2)

    def test_http10ResponseNotReused(self) -> None:
        """
        An HTTP/1.0 response without keep-alive closes its connection.
        """
        h = Harness(self)
        h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(transport.disconnecting)

    def test_maxIdleBound(self) -> None:
        """
        Past C{maxIdle} idle connections per server, released connections
        are closed.
        """
        h = Harness(self, maxIdle=1)
        a, b = h.submit(), h.submit()
        (p1, t1), (p2, t2) = h.accept(0), h.accept(1)
        p1.dataReceived(OK)
        p2.dataReceived(OK)
        self.assertTrue(a.finished and b.finished)
        self.assertFalse(t1.disconnecting)
        self.assertTrue(t2.disconnecting)
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_idleConnectionsExpire(self) -> None:
        """
        An idle connection is closed once it was idle for C{idleTimeout}.
        """
        h = Harness(self, idleTimeout=10.0)
        h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(OK)
        h.reactor.advance(6)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(10)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.pool.servers[0].idle, [])
        self.assertEqual(h.reactor.getDelayedCalls(), [])

    def test_idleConnectionClosedByBackend(self) -> None:
        """
        An idle connection the backend closes leaves the idle list.
        """
        h = Harness(self)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.pool.servers[0].idle, [])
        h.submit()
        self.assertEqual(h.attempts, 2)


class LimitTests(SynchronousTestCase):
    """
    Connections per server are bounded; requests wait in a bounded queue.
    """

    def test_queuesAtConnectionLimit(self) -> None:
        """
        At C{maxConnections}, a request waits and then takes the first
        connection released.
        """
        h = Harness(self, maxConnections=1)
        first, second = h.submit(), h.submit(get(b"/second"))
        self.assertEqual(h.attempts, 1)
        self.assertEqual(h.pool.pendingCount, 1)
        protocol, transport = h.accept()
        transport.clear()
        protocol.dataReceived(OK)
        self.assertTrue(first.finished)
        self.assertEqual(h.pool.pendingCount, 0)
        self.assertTrue(transport.value().startswith(b"GET /second "))
        protocol.dataReceived(OK)
        self.assertTrue(second.finished)

    def test_queueFull(self) -> None:
        """
        Past C{maxPending} queued requests, a request fails at once with
        L{PoolOverloaded} (503).
        """
        h = Harness(self, maxConnections=1, maxPending=1)
        h.submit()
        queued = h.submit()
        refused = h.submit()
        self.assertIsNone(queued.failure)
        self.assertIsInstance(refused.failure, PoolOverloaded)
        self.assertEqual(refused.failure.status, 503)  # type: ignore[union-attr]

    def test_pendingTimeout(self) -> None:
        """
        A request that waits longer than C{pendingTimeout} fails with 503.
        """
        h = Harness(self, maxConnections=1, pendingTimeout=2.0)
        h.submit()
        queued = h.submit()
        h.reactor.advance(2.5)
        self.assertIsInstance(queued.failure, PoolOverloaded)
        self.assertEqual(h.pool.pendingCount, 0)

    def test_cancelQueued(self) -> None:
        """
        Cancelling a queued request removes it from the queue.
        """
        h = Harness(self, maxConnections=1)
        h.submit()
        recorder = Recorder()
        handle = h.pool.submit(get(), recorder)
        handle.cancel()
        self.assertEqual(h.pool.pendingCount, 0)
        self.assertIsNone(recorder.failure)


class FailureTests(SynchronousTestCase):
    """
    Failures become the right L{BackendError}, and nothing leaks.
    """

    def test_connectionRefused(self) -> None:
        """
        A refused connection is L{BackendUnavailable}, a 502.
        """
        h = Harness(self, retries=0)
        recorder = h.submit()
        h.refuse()
        self.assertIsInstance(recorder.failure, BackendUnavailable)
        self.assertEqual(recorder.failure.status, 502)  # type: ignore[union-attr]
        self.assertEqual(h.pool.servers[0].connecting, 0)

    def test_connectTimeout(self) -> None:
        """
        A connection attempt that times out is L{BackendTimeout}, a 504.
        """
        h = Harness(self, retries=0, connectTimeout=3.0)
        recorder = h.submit()
        self.assertEqual(h.reactor.tcpClients[0][3], 3.0)
        h.refuse(reason=TimeoutError())
        self.assertIsInstance(recorder.failure, BackendTimeout)
        self.assertEqual(recorder.failure.status, 504)  # type: ignore[union-attr]

    def test_connectFailureTriesAnotherServer(self) -> None:
        """
        When a connection can't be made, the request goes to another server:
        nothing was sent yet.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit()
        h.refuse(0)
        self.assertEqual(h.attempts, 2)
        self.assertEqual(h.reactor.tcpClients[1][1], 8002)
        protocol, _ = h.accept(1)
        protocol.dataReceived(OK)
        self.assertTrue(recorder.finished)

    def test_readTimeout(self) -> None:
        """
        A backend that sends nothing for C{readTimeout} seconds fails the
        request with L{BackendTimeout} and its connection is aborted.
        """
        h = Harness(self, readTimeout=5.0)
        recorder = h.submit()
        protocol, transport = h.accept()
        h.reactor.advance(4)
        self.assertIsNone(recorder.failure)
        h.reactor.advance(2)
        self.assertIsInstance(recorder.failure, BackendTimeout)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.pool.servers[0].busy, 0)

    def test_readTimeoutCountsFromLastRead(self) -> None:
        """
        The read timeout is between reads: a slow but steady body does not
        time out.
        """
        h = Harness(self, readTimeout=5.0)
        recorder = h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        for _ in range(10):
            h.reactor.advance(3)
            protocol.dataReceived(b"x")
        self.assertTrue(recorder.finished)
        self.assertIsNone(recorder.failure)

    def test_noReadTimeoutWhilePausedByClient(self) -> None:
        """
        While the client side holds the backend paused, the read timeout
        does not fire: the slow party is the client.
        """
        h = Harness(self, readTimeout=5.0)
        recorder = h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
        recorder.producer.pauseProducing()
        h.reactor.advance(30)
        self.assertIsNone(recorder.failure)
        recorder.producer.resumeProducing()
        protocol.dataReceived(b"x" * 10)
        self.assertTrue(recorder.finished)

    def test_retriesIdempotentRequestOnStaleConnection(self) -> None:
        """
        When the backend closed a kept-alive connection just as it was
        reused, a GET is sent again on a fresh connection.
        """
        h = Harness(self)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        recorder = h.submit(get(b"/again"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(recorder.failure)
        self.assertEqual(h.attempts, 2)
        fresh, transport = h.accept()
        self.assertTrue(transport.value().startswith(b"GET /again "))
        fresh.dataReceived(OK)
        self.assertTrue(recorder.finished)

    def test_neverRetriesPost(self) -> None:
        """
        A POST whose connection closed before any response is not sent
        again: it fails with 502.
        """
        h = Harness(self)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        recorder = h.submit(get(b"/form", b"POST", b"a=1"))
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(recorder.failure, BackendUnavailable)
        self.assertEqual(h.attempts, 1)

    def test_closedMidResponse(self) -> None:
        """
        A backend that closes in the middle of a sized body fails the
        exchange after its start.
        """
        h = Harness(self)
        recorder = h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(recorder.status, 200)
        self.assertIsInstance(recorder.failure, BackendProtocolError)
        self.assertFalse(recorder.finished)

    def test_cancelMidResponseAbortsConnection(self) -> None:
        """
        When the client goes away mid-response, the backend connection is
        closed (it is somewhere in a body) and not reused.
        """
        h = Harness(self)
        recorder = Recorder()
        handle = h.pool.submit(get(), recorder)
        protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        handle.cancel()
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(h.pool.servers[0].busy, 0)
        self.assertEqual(h.pool.servers[0].idle, [])

    def test_closeFailsQueuedAndClosesIdle(self) -> None:
        """
        Closing the pool fails queued requests, closes idle connections and
        fires when every connection is gone.
        """
        h = Harness(self, maxConnections=1)
        first, queued = h.submit(), h.submit()
        protocol, transport = h.accept()
        done = h.pool.close()
        self.assertIsInstance(queued.failure, PoolClosed)
        self.assertNoResult(done)
        protocol.dataReceived(OK)
        self.assertTrue(first.finished)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(done)
        refused = h.submit()
        self.assertIsInstance(refused.failure, PoolClosed)


def respond(
    h: Harness, *pieces: bytes, request: BackendRequest | None = None
) -> Recorder:
    recorder = h.submit(request)
    protocol, _ = h.accept()
    for piece in pieces:
        protocol.dataReceived(piece)
    return recorder


class ResponseParsingTests(SynchronousTestCase):
    """
    The response parser frames bodies as RFC 9112 section 6 says and
    refuses malformed responses.
    """

    def test_headersParsed(self) -> None:
        """
        Status, reason and headers (values stripped, order and duplicates
        kept) are reported.
        """
        h = Harness(self)
        recorder = respond(
            h,
            b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nX-Sp:  v w  \r\n"
            b"Set-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(recorder.status, 201)
        self.assertEqual(recorder.reason, b"Created")
        self.assertEqual(
            recorder.headers,
            [
                (b"Set-Cookie", b"a=1"),
                (b"X-Sp", b"v w"),
                (b"Set-Cookie", b"b=2"),
                (b"Content-Length", b"0"),
            ],
        )
        self.assertTrue(recorder.finished)

    def test_headArrivingByteByByte(self) -> None:
        """
        A response head split anywhere is parsed the same.
        """
        h = Harness(self)
        recorder = respond(h, *[OK[i : i + 1] for i in range(len(OK))])
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))

    def test_chunkedBodyDecoded(self) -> None:
        """
        A chunked body is decoded (extensions and trailers dropped) and the
        connection is reused afterwards.
        """
        h = Harness(self)
        recorder = respond(
            h,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n",
        )
        self.assertEqual(recorder.body, b"hello, world")
        self.assertTrue(recorder.finished)
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    @given(st.lists(st.binary(min_size=1, max_size=40), max_size=8), st.data())
    def test_chunkedAnySplit(self, chunks: list[bytes], data: st.DataObject) -> None:
        """
        However the chunked stream is cut into reads, the body is the same.
        """
        wire = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire += b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        cuts = sorted(
            data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=10, unique=True))
        )
        pieces = [
            wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)
        ]
        h = Harness(self)
        recorder = respond(h, *pieces)
        self.assertEqual(recorder.body, b"".join(chunks))
        self.assertTrue(recorder.finished)

    def test_bodyUntilClose(self) -> None:
        """
        Without Content-Length or chunking, the body ends with the
        connection, which is not reused.
        """
        h = Harness(self)
        recorder = h.submit()
        protocol, transport = h.accept()
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nsome ")
        protocol.dataReceived(b"data")
        self.assertFalse(recorder.finished)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(recorder.body, b"some data")
        self.assertTrue(recorder.finished)
        self.assertIsNone(recorder.failure)
        self.assertEqual(h.pool.servers[0].busy, 0)

    def test_headResponseHasNoBody(self) -> None:
        """
        The response to HEAD has no body whatever its Content-Length says.
        """
        h = Harness(self)
        recorder = respond(
            h,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            request=get(method=b"HEAD"),
        )
        self.assertTrue(recorder.finished)
        self.assertEqual(recorder.body, b"")
        self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_204And304HaveNoBody(self) -> None:
        """
        204 and 304 responses end with their head.
        """
        for status in (b"204 No Content", b"304 Not Modified"):
            h = Harness(self)
            recorder = respond(h, b"HTTP/1.1 " + status + b'\r\nETag: "x"\r\n\r\n')
            self.assertTrue(recorder.finished)
            self.assertEqual(len(h.pool.servers[0].idle), 1)

    def test_interimResponsesSkipped(self) -> None:
        """
        1xx interim responses are skipped; the final response is reported.
        """
        h = Harness(self)
        recorder = respond(
            h,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
            b"Link: </a.css>\r\n\r\n" + OK,
        )
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))

    def test_extraBytesAfterBodyPreventReuse(self) -> None:
        """
        Bytes after a complete response, unasked for, make the connection
        untrustworthy: it is not reused.
        """
        h = Harness(self)
        recorder = respond(h, OK + b"HTTP/1.1 200 OK\r\n")
        self.assertTrue(recorder.finished)
        self.assertEqual(h.pool.servers[0].idle, [])

    def test_malformedResponses(self) -> None:
        """
        Malformed or ambiguous responses fail with L{BackendProtocolError}
        (502) and their connection is closed.
        """
        bad = [
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n folded\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\nC: d\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\rC: d\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\x00c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000,
            # Over the limit with its end in the same read.
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 70000 + b"\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(1000))
            + b"Content-Length: 0\r\n\r\n",
        ]
        for response in bad:
            h = Harness(self)
            recorder = respond(h, response)
            self.assertIsInstance(recorder.failure, BackendProtocolError, response[:60])
            self.assertTrue(h.connections[0][1].disconnecting)
            self.assertEqual(h.pool.servers[0].busy, 0)

    def test_sameContentLengthTwiceAccepted(self) -> None:
        """
        Repeated identical Content-Length values are one length (RFC 9110
        section 8.6).
        """
        h = Harness(self)
        recorder = respond(h, b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi")
        self.assertEqual(recorder.body, b"hi")


class RequestBodyTests(SynchronousTestCase):
    """
    Request bodies are framed for the backend.
    """

    def test_bufferedBody(self) -> None:
        """
        A buffered body goes with its Content-Length.
        """
        h = Harness(self)
        h.submit(get(b"/f", b"POST", b"a=1&b=2"))
        _, transport = h.accept()
        self.assertTrue(transport.value().endswith(b"Content-Length: 7\r\n\r\na=1&b=2"))

    def test_emptyPostHasContentLength(self) -> None:
        """
        A POST without a body still says C{Content-Length: 0}.
        """
        h = Harness(self)
        h.submit(get(b"/f", b"POST"))
        _, transport = h.accept()
        self.assertIn(b"Content-Length: 0\r\n", transport.value())

    def test_streamedChunkedBody(self) -> None:
        """
        A streamed body of unknown length is sent chunked as it arrives;
        data that came before the connection was ready is held, and the
        client is paused while too much is held.
        """
        client = StringTransport()
        stream = RequestBodyStream(None, client)
        stream.dataReceived(b"a" * 70000)
        self.assertEqual(client.producerState, "paused")
        h = Harness(self)
        h.submit(BackendRequest(b"PUT", b"/u", [], None, 0, stream))
        _, transport = h.accept()
        self.assertEqual(client.producerState, "producing")
        stream.dataReceived(b"bc")
        stream.finished()
        wire = transport.value()
        self.assertIn(b"Transfer-Encoding: chunked\r\n\r\n", wire)
        self.assertTrue(
            wire.endswith(b"%x\r\n%s\r\n2\r\nbc\r\n0\r\n\r\n" % (70000, b"a" * 70000))
        )

    def test_streamedSizedBody(self) -> None:
        """
        A streamed body with a Content-Length is sent as is.
        """
        client = StringTransport()
        stream = RequestBodyStream(4, client)
        h = Harness(self)
        h.submit(BackendRequest(b"PUT", b"/u", [], None, 0, stream))
        _, transport = h.accept()
        stream.dataReceived(b"ab")
        stream.dataReceived(b"cd")
        stream.finished()
        self.assertTrue(transport.value().endswith(b"Content-Length: 4\r\n\r\nabcd"))

    def test_hostFromBackend(self) -> None:
        """
        With C{hostFromBackend}, the chosen server's authority is the
        C{Host}.
        """
        h = Harness(self, server(8123))
        h.submit(BackendRequest(b"GET", b"/", [], b"", 0, None, hostFromBackend=True))
        _, transport = h.accept()
        self.assertIn(b"\r\nHost: 127.0.0.1:8123\r\n", transport.value())


class RoundRobinTests(SynchronousTestCase):
    """
    L{RoundRobinBalancer} spreads requests by weight, smoothly.
    """

    class FakeServer:
        def __init__(self, name: str, weight: int) -> None:
            self.name, self.weight, self.available = name, weight, True

    def test_providesIBalancer(self) -> None:
        """
        It is an L{IBalancer}.
        """
        self.assertTrue(verifyObject(IBalancer, RoundRobinBalancer()))

    def test_smoothWeighted(self) -> None:
        """
        Weights 5, 1, 1 give the nginx sequence: the heavy server's turns
        are spread, not bunched.
        """
        servers = [self.FakeServer(n, w) for n, w in (("a", 5), ("b", 1), ("c", 1))]
        balancer = RoundRobinBalancer()
        picks = "".join(balancer.pick(servers, None).name for _ in range(7))  # type: ignore[arg-type, union-attr]
        self.assertEqual(picks, "aabacaa")

    @given(st.lists(st.integers(1, 10), min_size=1, max_size=6))
    def test_distributionMatchesWeights(self, weights: list[int]) -> None:
        """
        Over a whole cycle each server gets exactly its weight.
        """
        servers = [self.FakeServer(str(i), w) for i, w in enumerate(weights)]
        balancer = RoundRobinBalancer()
        counts = Counter(
            balancer.pick(servers, None).name  # type: ignore[arg-type, union-attr]
            for _ in range(sum(weights) * 3)
        )
        self.assertEqual(counts, {str(i): w * 3 for i, w in enumerate(weights)})

    def test_skipsUnavailable(self) -> None:
        """
        A server at its limit is skipped; none available gives L{None}.
        """
        servers = [self.FakeServer("a", 1), self.FakeServer("b", 1)]
        servers[0].available = False
        balancer = RoundRobinBalancer()
        self.assertEqual({balancer.pick(servers, None).name for _ in range(4)}, {"b"})  # type: ignore[arg-type, union-attr]
        servers[1].available = False
        self.assertIsNone(balancer.pick(servers, None))  # type: ignore[arg-type]

    def test_poolSpreadsOverServers(self) -> None:
        """
        A pool of two servers opens connections to both in turn.
        """
        h = Harness(self, server(8001), server(8002))
        h.submit()
        h.submit()
        self.assertEqual([c[1] for c in h.reactor.tcpClients], [8001, 8002])


SERVER_ERROR = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\ngone"


class RetryDecisionTests(SynchronousTestCase):
    """
    The connection reports what happened to its exchange; the
    L{twisted_rproxy.pool.Backend} decides whether the request is retried.
    """

    def test_serverErrorRetriedElsewhere(self) -> None:
        """
        A 503 to a GET goes to the other server; the first connection
        drops the rest of the 503 and stays usable.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit()
        protocol, _ = h.accept(0)
        protocol.dataReceived(SERVER_ERROR[:20])
        protocol.dataReceived(SERVER_ERROR[20:])
        self.assertIsNone(recorder.status)
        self.assertEqual(h.attempts, 2)
        self.assertEqual(h.reactor.tcpClients[1][1], 8002)
        self.assertEqual(len(h.pool.servers[0].idle), 1)
        other, _ = h.accept(1)
        other.dataReceived(OK)
        self.assertEqual((recorder.status, recorder.body), (200, b"hello"))
        self.assertEqual(h.pool.retryCount, 1)

    def test_serverErrorNotRetried(self) -> None:
        """
        A 503 to a POST, or a status not in C{retryStatuses}, goes to the
        client, and counts as a failure of the server.
        """
        for request, response in [
            (get(b"/", b"POST", b"x"), SERVER_ERROR),
            (get(), SERVER_ERROR.replace(b"503", b"500")),
        ]:
            h = Harness(self, server(8001), server(8002))
            recorder = h.submit(request)
            protocol, _ = h.accept(0)
            protocol.dataReceived(response)
            self.assertIn(recorder.status, (500, 503))
            self.assertTrue(recorder.finished)
            self.assertEqual(h.attempts, 1)
            self.assertEqual(h.pool.servers[0].failures, 1)

    def test_serverErrorWithoutRetryLeft(self) -> None:
        """
        With C{retries = 0}, a 503 goes to the client.
        """
        h = Harness(self, server(8001), server(8002), retries=0)
        recorder = h.submit()
        protocol, _ = h.accept(0)
        protocol.dataReceived(SERVER_ERROR)
        self.assertEqual(recorder.status, 503)
        self.assertEqual(h.attempts, 1)

    def test_malformedHeadRetriedElsewhere(self) -> None:
        """
        A malformed head, before anything reached the client, sends a GET
        to the other server.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit()
        protocol, transport = h.accept(0)
        protocol.dataReceived(b"HTTP/1.1 2000 Nope\r\n\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(h.attempts, 2)
        other, _ = h.accept(1)
        other.dataReceived(OK)
        self.assertTrue(recorder.finished)
        self.assertIsNone(recorder.failure)

    def test_malformedBodyNotRetried(self) -> None:
        """
        A malformed chunked body, after the head reached the client,
        fails the exchange.
        """
        h = Harness(self, server(8001), server(8002))
        recorder = h.submit()
        protocol, _ = h.accept(0)
        protocol.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        )
        self.assertEqual(recorder.status, 200)
        self.assertIsInstance(recorder.failure, BackendProtocolError)
        self.assertEqual(h.attempts, 1)

    def test_staleConnectionNotRetriedWhenClosed(self) -> None:
        """
        A kept-alive connection closed as it is reused, once the pool is
        shut down: the request fails rather than dialling again.
        """
        h = Harness(self)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        recorder = h.submit()
        h.pool.close()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(recorder.failure, BackendUnavailable)
        self.assertEqual(h.attempts, 1)

    def test_staleConnectionRetriesOnce(self) -> None:
        """
        A stale connection uses up a retry: with none left, the request
        fails.
        """
        h = Harness(self, retries=0)
        h.submit()
        protocol, _ = h.accept()
        protocol.dataReceived(OK)
        recorder = h.submit()
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertIsInstance(recorder.failure, BackendUnavailable)
        self.assertEqual(h.attempts, 1)

    def test_hostFromBackendIPv6(self) -> None:
        """
        An IPv6 server's authority is in brackets in the C{Host}.
        """
        h = Harness(self, server(8123, host="::1"))
        h.submit(BackendRequest(b"GET", b"/", [], b"", 0, None, hostFromBackend=True))
        _, transport = h.accept()
        self.assertIn(b"\r\nHost: [::1]:8123\r\n", transport.value())
