"""
The fence (L{twisted_rproxy._twisted}): each private Twisted or pyOpenSSL
name it relies on still means what it did. A failure here names the
installed version: the fence function must change for it (and the oldest
and newest supported releases be run again: tox -e tests-oldest,tests-newest).
"""

from __future__ import annotations

import socket
import warnings
from typing import Any

from twisted.internet import abstract, tcp
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web import http
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from twisted_rproxy import _twisted
from twisted_rproxy._twisted import TWISTED_VERSION


def _changed(what: str) -> str:
    return f"Twisted {TWISTED_VERSION} changed {what}: update twisted_rproxy._twisted"


class RequestTests(SynchronousTestCase):
    """
    What the fence reads of twisted.web's L{Request}.
    """

    def test_requestGone(self) -> None:
        request = Request(DummyChannel())
        message = _changed("Request._disconnected")
        self.assertFalse(_twisted.requestGone(request), message)
        request.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(_twisted.requestGone(request), message)

    def test_otherRequest(self) -> None:
        """
        A request-like object without the attribute is connected.
        """
        self.assertFalse(_twisted.requestGone(object()))

    def test_hasContentEncoder(self) -> None:
        """
        A request under an L{EncodingResourceWrapper} that chose gzip has
        an encoder; a plain one has none.
        """
        from twisted.web.resource import EncodingResourceWrapper, Resource
        from twisted.web.server import GzipEncoderFactory
        from twisted.web.server import Request as ServerRequest
        from twisted.web.test.requesthelper import DummyRequest

        message = _changed("server.Request._encoder")
        plain = ServerRequest(DummyChannel())
        self.assertFalse(_twisted.hasContentEncoder(plain), message)
        request = DummyRequest([b""])
        request.requestHeaders.setRawHeaders(b"accept-encoding", [b"gzip"])
        wrapper = EncodingResourceWrapper(Resource(), [GzipEncoderFactory()])
        encoder = wrapper.getEncoder(request)
        self.assertIsNotNone(encoder, message)
        plain._encoder = encoder  # type: ignore[attr-defined]
        self.assertTrue(_twisted.hasContentEncoder(plain), message)


# --- twisted.web.http.HTTPChannel -----------------------------------------


class _Channel(_twisted.HTTPChannelBase):
    """
    A channel that records what the fence tells of it as a request arrives.
    """

    def __init__(self) -> None:
        _twisted.HTTPChannelBase.__init__(self)
        self.requestFactory = http.Request
        # No idle timer on the global reactor.
        self.timeOut = None
        self.seen: list[object] = []
        self.badRequests: list[tuple[bool, bool, bool]] = []
        self.decoders: list[object] = []
        self.target: bytes | None = None

    def allHeadersReceived(self) -> None:
        self.seen.append(self.requestLine())
        self.seen.append(self.awaitingRequestLine())
        if self.target is not None:
            self.setRequestTarget(self.target)
        self.decoders.append(
            self.replaceChunkedDecoder(lambda data, end: _Decoder(data, end))
        )
        _twisted.HTTPChannelBase.allHeadersReceived(self)

    def respondToBadRequest(self) -> None:
        self.badRequests.append(
            (self.awaitingRequestLine(), self.headTooLarge(), self.tooManyHeaders())
        )
        _twisted.HTTPChannelBase.respondToBadRequest(self)


class _Decoder(_twisted.ChunkedDecoder):
    """
    A decoder that records the chunk sizes and refuses those past 100.
    """

    def __init__(self, data: Any, end: Any) -> None:
        _twisted.ChunkedDecoder.__init__(self, data, end)
        self.sizes: list[int] = []

    def checkChunkSize(self, length: int) -> None:
        self.sizes.append(length)
        if length > 100:
            raise _twisted.MalformedChunkedDataError("too large")


def _connected(channel: http.HTTPChannel) -> StringTransport:
    transport = StringTransport()
    channel.makeConnection(transport)
    return transport


class HTTPChannelTests(SynchronousTestCase):
    """
    What L{_twisted.HTTPChannelBase} reads and changes of twisted.web's
    L{http.HTTPChannel}.
    """

    def test_requestLine(self) -> None:
        """
        The request line is known once the head is in; the target can be
        changed before the request is received.
        """
        channel = _Channel()
        channel.target = b"/changed"
        _connected(channel)
        self.assertTrue(channel.awaitingRequestLine(), _changed("__first_line"))
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(
            channel.seen,
            [(b"GET", b"/x", b"HTTP/1.1"), False],
            _changed("HTTPChannel._command/_path/_version/__first_line"),
        )
        self.assertEqual(
            channel.requests[0].uri, b"/changed", _changed("HTTPChannel._path")
        )

    def test_handlingAndBuffered(self) -> None:
        """
        Once a request is received whole, the channel handles it, and holds
        what the client sends next; the line being received is readable.
        """
        channel = _Channel()
        _connected(channel)
        message = _changed("HTTPChannel._handlingRequest/_dataBuffer")
        self.assertFalse(channel.handlingRequest, message)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\nnext bytes")
        self.assertTrue(channel.handlingRequest, message)
        self.assertEqual(channel.takeBufferedData(), b"next bytes", message)
        self.assertEqual(channel.takeBufferedData(), b"", message)
        channel.handlingRequest = False
        self.assertFalse(channel.handlingRequest, message)
        other = _Channel()
        _connected(other)
        other.dataReceived(b"GET /par")
        self.assertEqual(
            other.bufferedLine(), b"GET /par", _changed("LineReceiver._buffer")
        )

    def test_send100Continue(self) -> None:
        """
        The interim response is written to the transport.
        """
        channel = _Channel()
        transport = _connected(channel)
        channel.send100Continue()
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 100 Continue\r\n\r\n",
            _changed("HTTPChannel._send100Continue"),
        )

    def test_badRequest(self) -> None:
        """
        twisted.web's answer to a malformed request goes through
        C{respondToBadRequest}, which knows which limit was passed.
        """
        message = _changed("HTTPChannel._respondToBadRequestAndDisconnect")
        channel = _Channel()
        transport = _connected(channel)
        channel.dataReceived(b"GET /x HTTP/1.1\r\nBad Header\r\n\r\n")
        self.assertEqual(channel.badRequests, [(False, False, False)], message)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), message)
        sizes = _Channel()
        sizes.totalHeadersSize = 20
        _connected(sizes)
        sizes.dataReceived(b"GET /" + b"x" * 30 + b" HTTP/1.1\r\n")
        self.assertEqual(
            sizes.badRequests,
            [(True, True, False)],
            _changed("HTTPChannel._receivedHeaderSize/__first_line"),
        )
        count = _Channel()
        count.maxHeaders = 1
        _connected(count)
        count.dataReceived(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n")
        self.assertEqual(
            count.badRequests,
            [(False, False, True)],
            _changed("HTTPChannel._receivedHeaderCount"),
        )

    def test_replaceChunkedDecoder(self) -> None:
        """
        A chunked body is decoded by the decoder put in its place, which
        sees each chunk size; a body with a length keeps twisted.web's.
        """
        message = _changed("HTTPChannel._transferDecoder/_ChunkedTransferDecoder")
        channel = _Channel()
        _connected(channel)
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        [decoder] = channel.decoders
        self.assertIsInstance(decoder, _Decoder, message)
        self.assertEqual(getattr(decoder, "sizes", None), [3, 0], message)
        self.assertEqual(channel.requests[0].content.read(), b"abc", message)
        plain = _Channel()
        _connected(plain)
        plain.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n")
        self.assertEqual(plain.decoders, [None], message)


class ChunkedDecoderTests(SynchronousTestCase):
    """
    What L{_twisted.ChunkedDecoder} overrides of twisted.web's private
    chunked decoder.
    """

    def test_internals(self) -> None:
        """
        The states the decoder overrides and the buffer it reads are still
        twisted.web's.
        """
        for name in (
            "_dataReceived_CHUNK_LENGTH",
            "_dataReceived_CRLF",
            "_dataReceived_TRAILER",
            "dataReceived",
        ):
            self.assertTrue(
                callable(getattr(http._ChunkedTransferDecoder, name, None)),
                _changed(f"_ChunkedTransferDecoder.{name}"),
            )
        decoder = http._ChunkedTransferDecoder(lambda data: None, lambda rest: None)
        message = _changed("_ChunkedTransferDecoder.state/_buffer")
        self.assertEqual(decoder.state, "CHUNK_LENGTH", message)
        self.assertIsInstance(decoder._buffer, bytearray, message)
        self.assertTrue(
            issubclass(_twisted.MalformedChunkedDataError, Exception), message
        )

    def test_decodes(self) -> None:
        """
        A body in pieces, with an extension and a trailer, is decoded; each
        chunk size is checked once, before the chunk.
        """
        received: list[bytes] = []
        decoder = _Decoder(received.append, received.append)
        for piece in (b"0003;a=b\r", b"\nabc\r\n", b"2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"):
            decoder.dataReceived(piece)
        message = _changed("_ChunkedTransferDecoder")
        self.assertEqual(received, [b"abc", b"de", b""], message)
        self.assertEqual(decoder.sizes, [3, 2, 0], message)
        self.assertEqual(decoder.state, "FINISHED", message)

    def test_refuses(self) -> None:
        """
        A bare LF in each state, and a size C{checkChunkSize} refuses, raise
        L{_twisted.MalformedChunkedDataError} as soon as they arrive.
        """
        for data in (b"5\n", b"\n", b"5\r\nhello\n", b"0\r\nX-T: 1\n", b"65\r\n"):
            decoder = _Decoder(lambda data: None, lambda rest: None)
            self.assertRaises(
                _twisted.MalformedChunkedDataError,
                decoder.dataReceived,
                data,
            )


class _Reactor:
    def addWriter(self, writer: object) -> None:
        pass

    def removeWriter(self, writer: object) -> None:
        pass


class WriteBatchedTests(SynchronousTestCase):
    """
    L{_twisted.writeBatched} queues a plain TCP transport's writes where
    Twisted's C{write} does, without watching the socket, and sends each
    transport's queue once the reactor's turn is over;
    L{_twisted.closeWhenWritten} closes without a turn.
    """

    def test_privateQueue(self) -> None:
        """
        What the module relies on of Twisted's transports.
        """
        for kind in (tcp.Server, tcp.Client):
            self.assertTrue(
                issubclass(kind, abstract.FileDescriptor),
                _changed(f"{kind.__name__}'s base class"),
            )
            self.assertIs(kind._aborting, False, _changed("Connection._aborting"))
        transport = abstract.FileDescriptor(reactor=_Reactor())  # type: ignore[arg-type]
        message = _changed("FileDescriptor.dataBuffer/_tempDataBuffer")
        self.assertFalse(transport.dataBuffer, message)
        self.assertEqual(transport._tempDataBuffer, [], message)
        self.assertEqual((transport._tempDataLen, transport.offset), (0, 0), message)
        self.assertFalse(transport.producerPaused, message)
        transport.connected = True
        transport.write(b"queued")
        self.assertEqual(transport._tempDataBuffer, [b"queued"], message)
        self.assertEqual(transport._tempDataLen, 6, message)
        self.assertTrue(
            callable(transport._maybePauseProducer),
            _changed("FileDescriptor._maybePauseProducer"),
        )

    def _connection(self) -> tuple[Any, socket.socket, list[Failure]]:
        ours, theirs = socket.socketpair()
        theirs.setblocking(False)
        self.addCleanup(theirs.close)
        self.addCleanup(ours.close)
        lost: list[Failure] = []
        protocol = Protocol()
        protocol.connectionLost = lost.append  # type: ignore[method-assign,assignment]
        transport = tcp.Server(
            ours, protocol, ("127.0.0.1", 1), None, 0, self.clock  # type: ignore[arg-type]
        )
        protocol.makeConnection(transport)
        transport.startReading()
        return transport, theirs, lost

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()

    def _received(self, peer: socket.socket) -> bytes:
        try:
            return peer.recv(1 << 20)
        except BlockingIOError:
            return b"(nothing)"

    def test_sentOnceTheTurnIsOver(self) -> None:
        """
        The writes of a turn are sent, in order, by one call at the start
        of the next; the socket is never watched for them.
        """
        first, firstPeer, _ = self._connection()
        second, secondPeer, _ = self._connection()
        _twisted.writeBatched(first, b"head ")
        _twisted.writeBatched(second, b"other")
        _twisted.writeBatched(first, b"body")
        self.assertEqual(self._received(firstPeer), b"(nothing)")
        self.assertEqual(self.clock.writers, set())
        self.clock.advance(0)
        self.assertEqual(self._received(firstPeer), b"head body")
        self.assertEqual(self._received(secondPeer), b"other")
        self.assertEqual((first._tempDataBuffer, first._tempDataLen), ([], 0))
        self.assertEqual(self.clock.writers, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_ownWriteAfter(self) -> None:
        """
        A write through the transport's own C{write} after a batched one
        goes after it.
        """
        transport, peer, _ = self._connection()
        _twisted.writeBatched(transport, b"first ")
        transport.write(b"second")
        self.clock.advance(0)
        self.assertEqual(self._received(peer), b"first second")

    def test_queuedBefore(self) -> None:
        """
        A transport with a queue of its own (from an earlier turn) gets an
        ordinary write, after that queue.
        """
        transport, peer, _ = self._connection()
        transport.write(b"earlier ")
        _twisted.writeBatched(transport, b"later")
        self.assertEqual(transport._tempDataBuffer, [b"earlier ", b"later"])
        self.assertIn(transport, self.clock.writers)

    def test_partialSend(self) -> None:
        """
        What the socket does not take stays queued, the socket watched, as
        after the transport's own C{write}.
        """
        transport, peer, _ = self._connection()
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"x" * (4 << 20)
        _twisted.writeBatched(transport, data)
        self.clock.advance(0)
        self.assertIn(transport, self.clock.writers)
        self.assertEqual(transport.dataBuffer, data)
        self.assertGreater(transport.offset, 0)
        self.assertLess(transport.offset, len(data))

    def test_pastBufferSize(self) -> None:
        """
        A write that takes the queue past the transport's buffer size is
        sent at once, as much as the socket takes; what follows it that
        turn queues behind the rest, in the transport's own order.
        """
        transport, peer, _ = self._connection()
        transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"x" * (transport.bufferSize * 4)
        _twisted.writeBatched(transport, data)
        self.assertNotEqual(self._received(peer), b"(nothing)")
        self.assertIn(transport, self.clock.writers)
        _twisted.writeBatched(transport, b"tail")
        self.assertIs(transport.dataBuffer, data)
        self.assertEqual(transport._tempDataBuffer, [b"tail"])
        self.clock.advance(0)
        self.assertEqual(transport._tempDataBuffer, [b"tail"])

    def test_closeWhenWritten(self) -> None:
        """
        A transport closed after a batched write is closed once it is sent:
        the peer reads all of it, then the end; nothing more is read.
        """
        transport, peer, lost = self._connection()
        _twisted.writeBatched(transport, b"response")
        _twisted.closeWhenWritten(transport)
        self.assertTrue(transport.disconnecting)
        self.assertNotIn(transport, self.clock.readers)
        self.assertEqual(lost, [])
        self.clock.advance(0)
        self.assertEqual(len(lost), 1)
        lost[0].trap(ConnectionDone)
        self.assertEqual(peer.recv(100), b"response")
        self.assertEqual(peer.recv(100), b"")

    def test_closeNothingQueued(self) -> None:
        """
        With nothing queued, the transport closes at once.
        """
        transport, peer, lost = self._connection()
        _twisted.closeWhenWritten(transport)
        self.assertEqual(len(lost), 1, _changed("FileDescriptor.connectionLost"))
        lost[0].trap(ConnectionDone)
        self.assertEqual(peer.recv(100), b"")
        self.assertEqual((self.clock.readers, self.clock.writers), (set(), set()))

    def test_closeWithoutShutdown(self) -> None:
        """
        A transport closed here closes its socket without shutting it down
        first (Twisted's C{_shouldShutdown}, read by C{_closeSocket}); the
        peer still reads everything written, then the end.
        """
        transport, peer, lost = self._connection()
        calls: list[str] = []
        transport.socket = _Recording(transport.socket, calls)
        self.assertTrue(transport._shouldShutdown, _changed("tcp._SocketCloser"))
        _twisted.writeBatched(transport, b"response")
        _twisted.closeWhenWritten(transport)
        self.clock.advance(0)
        self.assertEqual(calls, ["close"], _changed("tcp._SocketCloser._closeSocket"))
        self.assertEqual(len(lost), 1)
        self.assertEqual(peer.recv(100), b"response")
        self.assertEqual(peer.recv(100), b"")

    def test_closeOwnQueue(self) -> None:
        """
        With a queue of the transport's own, it closes as its
        C{loseConnection} does, once that is written.
        """
        transport, peer, lost = self._connection()
        transport.write(b"queued")
        _twisted.closeWhenWritten(transport)
        self.assertEqual(lost, [])
        self.assertTrue(transport.disconnecting)
        self.assertIn(transport, self.clock.writers)

    def test_producerKeepsItOpen(self) -> None:
        """
        With a producer registered, the transport's own C{loseConnection}
        decides.
        """
        transport, peer, lost = self._connection()
        transport.registerProducer(StringTransport(), True)
        _twisted.closeWhenWritten(transport)
        self.assertEqual(lost, [])

    def test_pullProducerAskedForMore(self) -> None:
        """
        Once the queue is sent, a pull producer is asked for more, as the
        transport's C{doWrite} would.
        """
        transport, peer, _ = self._connection()
        asked = []
        producer = StringTransport()
        producer.resumeProducing = lambda: asked.append(True)  # type: ignore[method-assign]
        transport.registerProducer(producer, False)
        # Registering a pull producer asks it for its first piece.
        del asked[:]
        _twisted.writeBatched(transport, b"piece")
        self.clock.advance(0)
        self.assertEqual(asked, [True])

    def test_cancelledTurn(self) -> None:
        """
        If the call sending a batch was cancelled (a reactor stopping, as
        trial's between tests), the next write schedules another, and the
        batch is sent whole.
        """
        transport, peer, _ = self._connection()
        _twisted.writeBatched(transport, b"first ")
        [call] = self.clock.getDelayedCalls()
        call.cancel()
        _twisted.writeBatched(transport, b"second")
        self.clock.advance(0)
        self.assertEqual(self._received(peer), b"first second")

    def test_producerFails(self) -> None:
        """
        A producer failing when asked for more aborts its connection; the
        other transports of the batch are sent.
        """
        failing, failingPeer, lost = self._connection()
        other, otherPeer, _ = self._connection()
        producer = StringTransport()
        transport = failing
        transport.registerProducer(producer, False)
        producer.resumeProducing = lambda: 1 / 0  # type: ignore[method-assign]
        _twisted.writeBatched(failing, b"piece")
        _twisted.writeBatched(other, b"other")
        self.clock.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self._received(otherPeer), b"other")
        self.assertTrue(failing._aborting)

    def test_aborted(self) -> None:
        """
        A transport aborted before the end of the turn sends nothing more.
        """
        transport, peer, lost = self._connection()
        _twisted.writeBatched(transport, b"never")
        transport.abortConnection()
        self.clock.advance(0)
        self.assertEqual(len(lost), 1)
        self.assertIn(self._received(peer), (b"", b"(nothing)"))

    def test_otherTransport(self) -> None:
        """
        A transport that is not plain TCP gets an ordinary write, and an
        ordinary C{loseConnection}.
        """
        transport = StringTransport()
        _twisted.writeBatched(transport, b"data")
        self.assertEqual(transport.value(), b"data")
        _twisted.closeWhenWritten(transport)
        self.assertTrue(transport.disconnecting)


# --- The epoll reactor's dispatch -----------------------------------------


class _Reader:
    """
    One end of a socket pair, as a reactor's reader: it records the legacy
    log's C{system} of each C{doRead}, and its end.
    """

    def __init__(self, prefix: str = "reader,1,127.0.0.1") -> None:
        self.socket, self.peer = socket.socketpair()
        self.socket.setblocking(False)
        self.prefix = prefix
        self.systems: list[str] = []
        self.lost: list[Failure] = []

    def close(self) -> None:
        self.socket.close()
        self.peer.close()

    def fileno(self) -> int:
        return self.socket.fileno()

    def logPrefix(self) -> str:
        return self.prefix

    def doRead(self) -> ConnectionDone | None:
        from twisted.python import context, log

        self.systems.append(context.get(log.ILogContext)["system"])
        if not self.socket.recv(100):
            return ConnectionDone()
        return None

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class DispatchLeanlyTests(SynchronousTestCase):
    """
    L{_twisted.dispatchLeanly} makes an epoll reactor dispatch each event
    as its own C{doPoll} does, in the same log context.
    """

    def setUp(self) -> None:
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:
            raise SkipTest("No epoll here") from None
        self.reactor = EPollReactor()
        self.addCleanup(self._closeReactor)

    def _closeReactor(self) -> None:
        self.reactor._poller.close()
        waker = self.reactor.waker
        if waker is not None:
            waker.connectionLost(None)

    def _reader(self, prefix: str = "reader,1,127.0.0.1") -> _Reader:
        reader = _Reader(prefix)
        self.addCleanup(reader.close)
        self.reactor.addReader(reader)
        self.addCleanup(self.reactor.removeReader, reader)
        reader.peer.send(b"ready")
        return reader

    def test_twistedDoPoll(self) -> None:
        """
        What L{_twisted._doPoll} does in place of Twisted's C{doPoll}: the
        same poll of the same private attributes, and C{callWithLogger}
        around each event.
        """
        import inspect

        from twisted.internet.epollreactor import EPollReactor
        from twisted.python import log

        message = _changed("EPollReactor.doPoll")
        source = inspect.getsource(EPollReactor.doPoll)
        for line in (
            "l = self._poller.poll(timeout, len(self._selectables))",
            "if err.errno == errno.EINTR:",
            "_drdw = self._doReadOrWrite",
            "selectable = self._selectables[fd]",
            "log.callWithLogger(selectable, _drdw, selectable, fd, event)",
        ):
            self.assertIn(line, source, message)
        self.assertIs(EPollReactor.doIteration, EPollReactor.doPoll, message)
        callWithLogger = inspect.getsource(log.callWithLogger)
        self.assertIn('callWithContext({"system": lp}', callWithLogger, message)

    def test_sameContext(self) -> None:
        """
        Each event runs with the selectable's C{logPrefix()} as the legacy
        log's C{system}; after it, the context is as it was.
        """
        from twisted.python import context, log

        self.assertTrue(_twisted.dispatchLeanly(self.reactor))
        first = self._reader("first,1,127.0.0.1")
        second = self._reader("second,2,127.0.0.1")
        before = context.get(log.ILogContext)
        self.reactor.doIteration(0)
        self.assertEqual(first.systems, ["first,1,127.0.0.1"])
        self.assertEqual(second.systems, ["second,2,127.0.0.1"])
        self.assertEqual(context.get(log.ILogContext), before)

    def test_disconnected(self) -> None:
        """
        An event the reactor makes a disconnection of is one still.
        """
        _twisted.dispatchLeanly(self.reactor)
        reader = self._reader()
        reader.peer.close()
        self.reactor.doIteration(0)
        self.reactor.doIteration(0)
        self.assertEqual(len(reader.lost), 1)
        reader.lost[0].trap(ConnectionDone)

    def test_escaping(self) -> None:
        """
        An exception that escapes an event is logged, with the
        selectable's C{logPrefix()} as its C{system}; the next event is
        dispatched.
        """
        from twisted.python import log

        events: list[dict[str, Any]] = []
        log.addObserver(events.append)
        self.addCleanup(log.removeObserver, events.append)
        _twisted.dispatchLeanly(self.reactor)
        first = self._reader("first,1,127.0.0.1")
        second = self._reader("second,2,127.0.0.1")
        dispatch = self.reactor._doReadOrWrite

        def failing(selectable: Any, fd: int, event: int) -> None:
            if selectable is first:
                raise ZeroDivisionError("failing")
            dispatch(selectable, fd, event)

        self.reactor._doReadOrWrite = failing
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(
            [event["system"] for event in events if event.get("isError")],
            ["first,1,127.0.0.1"],
        )
        self.assertEqual(second.systems, ["second,2,127.0.0.1"])

    def test_buggyLogPrefix(self) -> None:
        """
        A selectable whose C{logPrefix} fails is logged, and its event
        dispatched, as C{callWithLogger} does.
        """
        _twisted.dispatchLeanly(self.reactor)
        reader = self._reader()
        reader.logPrefix = lambda: 1 / 0  # type: ignore[method-assign]
        self.reactor.doIteration(0)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(reader.systems, ["(buggy logPrefix method)"])

    def test_onlyOnce(self) -> None:
        """
        Neither a reactor whose dispatch was replaced already nor another
        kind of reactor is changed.
        """
        self.assertTrue(_twisted.dispatchLeanly(self.reactor))
        self.assertFalse(_twisted.dispatchLeanly(self.reactor))
        self.assertFalse(_twisted.dispatchLeanly(MemoryReactorClock()))


# --- TLS --------------------------------------------------------------------


def _opensslChanged(what: str) -> str:
    return (
        f"pyOpenSSL {_twisted.OPENSSL_VERSION} changed {what}: update "
        "twisted_rproxy._twisted"
    )


def _certificate() -> tuple[Any, Any]:
    """
    A certificate for example.com and its key, as cryptography objects.
    """
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    leaf = trustme.CA().issue_cert("example.com")
    certificate = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(
        leaf.private_key_pem.bytes(), password=None
    )
    return certificate, key


def _handshake(server: Any, client: Any) -> bool:
    """
    Whether a TLS handshake between pyOpenSSL contexts C{server} and
    C{client} succeeds, in memory.
    """
    from OpenSSL import SSL

    serverSide = SSL.Connection(server, None)
    serverSide.set_accept_state()
    clientSide = SSL.Connection(client, None)
    clientSide.set_connect_state()
    done: set[Any] = set()
    for _ in range(20):
        for side in (clientSide, serverSide):
            try:
                side.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return False
            else:
                done.add(side)
        if len(done) == 2:
            return True
        for source, sink in ((clientSide, serverSide), (serverSide, clientSide)):
            try:
                sink.bio_write(source.bio_read(65536))
            except SSL.WantReadError:
                pass
    return False


class OpenSSLTests(SynchronousTestCase):
    """
    What the fence does with pyOpenSSL's binding, and what Twisted's
    C{CertificateOptions} does with cryptography objects.
    """

    def _serverContext(self, groups: bytes) -> Any:
        from OpenSSL import SSL

        certificate, key = _certificate()
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(certificate)
        context.use_privatekey(key)
        self.assertTrue(
            _twisted.setKeyExchangeGroups(context, groups),
            _opensslChanged("OpenSSL._util.lib.SSL_CTX_set1_curves_list"),
        )
        return context

    def test_keyExchangeGroups(self) -> None:
        """
        A server restricted to some groups refuses a client offering only
        others, and accepts one offering one of them.
        """
        from OpenSSL import SSL

        message = _opensslChanged("Context._context/SSL_CTX_set1_curves_list")
        server = self._serverContext(b"X25519")
        other = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.assertTrue(_twisted.setKeyExchangeGroups(other, b"secp384r1"), message)
        self.assertFalse(_handshake(server, other), message)
        server = self._serverContext(b"X25519")
        same = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.assertTrue(_twisted.setKeyExchangeGroups(same, b"X25519"), message)
        self.assertTrue(_handshake(server, same), message)

    def test_unknownGroup(self) -> None:
        """
        A list OpenSSL refuses is reported.
        """
        from OpenSSL import SSL

        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        self.assertFalse(
            _twisted.setKeyExchangeGroups(context, b"no-such-group"),
            _opensslChanged("SSL_CTX_set1_curves_list's result"),
        )

    def test_certificateOptions(self) -> None:
        """
        C{CertificateOptions} serves a cryptography certificate and key,
        without pyOpenSSL's deprecation of its own X509 and PKey.
        """
        from OpenSSL import SSL
        from twisted.internet.ssl import CertificateOptions

        certificate, key = _certificate()
        message = _changed("what CertificateOptions does with privateKey/certificate")
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "error", message="Passing pyOpenSSL", category=DeprecationWarning
            )
            options = CertificateOptions(
                **_twisted.certificateOptions(certificate, key)
            )
            context = options.getContext()
        served = SSL.Connection(context, None).get_certificate()
        assert served is not None, message
        self.assertEqual(served.to_cryptography(), certificate, message)


# --- other ------------------------------------------------------------------


class ConnectionTransportTests(SynchronousTestCase):
    """
    Where L{_twisted.connectionTransport} finds a request's transport.
    """

    def test_http1(self) -> None:
        """
        An HTTP/1.1 request's transport is its channel's.
        """
        channel = DummyChannel()
        request = Request(channel)
        self.assertIs(_twisted.connectionTransport(request), channel.transport)

    def test_http2(self) -> None:
        """
        An HTTP/2 request's transport is its stream's connection's.
        """
        from twisted.web import http
        from twisted.web._http2 import H2Connection, H2Stream

        connection = H2Connection()
        transport = StringTransport()
        connection.transport = transport
        requests: list[http.Request] = []

        def requestFactory(channel: object, queued: bool) -> http.Request:
            request = http.Request(channel, queued)
            requests.append(request)
            return request

        H2Stream(
            1,
            connection,
            [(b":method", b"GET"), (b":path", b"/")],
            requestFactory,
            None,
            None,
        )
        self.assertIs(
            _twisted.connectionTransport(requests[0]),
            transport,
            _changed("H2Stream.transport/_conn"),
        )

    def test_noChannel(self) -> None:
        """
        Something without a channel has no transport.
        """
        self.assertIsNone(_twisted.connectionTransport(object()))


class ProxyHeaderWrapperTests(SynchronousTestCase):
    """
    What L{_twisted.ProxyHeaderWrapper} reads of Twisted's PROXY protocol
    wrapper.
    """

    def _wrapper(self) -> tuple[Any, StringTransport, list[bytes]]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.protocol import Factory, Protocol
        from twisted.protocols.policies import WrappingFactory

        received: list[bytes] = []

        class Receiver(Protocol):
            def dataReceived(self, data: bytes) -> None:
                received.append(data)

        factory = WrappingFactory(Factory.forProtocol(Receiver))
        wrapper = _twisted.ProxyHeaderWrapper(factory, Receiver())
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", "192.0.2.1", 4000)
        )
        wrapper.makeConnection(transport)
        return wrapper, transport, received

    def test_header(self) -> None:
        """
        Once the header is read, the peer is the one it names and what
        follows it reaches the wrapped protocol.
        """
        message = _changed("HAProxyProtocolWrapper (haproxy._wrapper, _proxyInfo)")
        wrapper, transport, received = self._wrapper()
        self.assertFalse(wrapper.proxyHeaderReceived, message)
        wrapper.dataReceived(b"PROXY TCP4 198.51.100.7 192.0.2.9 5000 80\r\n")
        self.assertTrue(wrapper.proxyHeaderReceived, message)
        self.assertEqual(wrapper.getPeer().host, "198.51.100.7", message)
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(received, [b"GET / HTTP/1.1\r\n"], message)
        self.assertFalse(transport.disconnecting, message)

    def test_noHeader(self) -> None:
        """
        A connection that does not start with a header is closed.
        """
        wrapper, transport, received = self._wrapper()
        wrapper.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        message = _changed("HAProxyProtocolWrapper without a header")
        self.assertFalse(wrapper.proxyHeaderReceived, message)
        self.assertTrue(transport.disconnecting, message)
        self.assertEqual(received, [], message)


class _Recording:
    """
    A socket, recording its C{shutdown} and C{close} calls in C{calls}.
    """

    def __init__(self, socket: socket.socket, calls: list[str]) -> None:
        self._socket = socket
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._socket, name)

    def shutdown(self, how: int) -> None:
        self.calls.append("shutdown")
        self._socket.shutdown(how)

    def close(self) -> None:
        self.calls.append("close")
        self._socket.close()


class LocalAddressTests(SynchronousTestCase):
    """
    L{_twisted.localAddress} asks the socket of the first connection of a
    port bound to one address, and of every connection of a port bound to
    a wildcard: it reads a TCP connection's port (C{tcp.Server.server}) and
    that port's C{interface}.
    """

    def _accepted(self, interface: str) -> tuple[Any, Any]:
        from twisted.internet.protocol import Factory

        reactor = MemoryReactorClock()
        port = tcp.Port(
            0, Factory.forProtocol(Protocol), interface=interface, reactor=reactor
        )
        port.startListening()
        self.addCleanup(port.socket.close)
        listening = port.getHost()
        client = socket.create_connection(("127.0.0.1", listening.port))
        self.addCleanup(client.close)
        server, address = port.socket.accept()
        self.addCleanup(server.close)
        transport = tcp.Server(
            server, Protocol(), address, port, 0, reactor  # type: ignore[arg-type]
        )
        self.assertIs(transport.server, port, _changed("tcp.Server.server"))
        self.assertEqual(port.interface, interface, _changed("tcp.Port.interface"))
        return port, transport

    def test_boundToOne(self) -> None:
        """
        A connection of a port bound to one address gets the address of
        the first connection: the socket is asked once.
        """
        port, transport = self._accepted("127.0.0.1")
        known: dict[Any, Any] = {}
        first = _twisted.localAddress(transport, known)
        self.assertEqual(first, transport.getHost())
        self.assertEqual(first.port, port.getHost().port)
        self.assertEqual(known, {port: first})
        transport.getHost = lambda: 1 / 0  # type: ignore[method-assign]
        self.assertIs(_twisted.localAddress(transport, known), first)

    def test_wildcard(self) -> None:
        """
        A port bound to a wildcard address takes connections on any of the
        host's addresses: each connection's socket is asked.
        """
        port, transport = self._accepted("0.0.0.0")
        known: dict[Any, Any] = {}
        self.assertEqual(
            _twisted.localAddress(transport, known).host, "127.0.0.1"
        )
        self.assertEqual(known, {})

    def test_otherTransport(self) -> None:
        """
        Another transport is asked for its C{getHost}.
        """
        transport = StringTransport()
        known: dict[Any, Any] = {}
        self.assertEqual(_twisted.localAddress(transport, known), transport.getHost())
        self.assertEqual(known, {})


class _Socket:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def shutdown(self, how: int) -> None:
        self.calls.append("shutdown")

    def close(self) -> None:
        self.calls.append("close")


class CloseWithoutShutdownTests(SynchronousTestCase):
    """
    What L{_twisted.closeWithoutShutdown} changes of Twisted's TCP port:
    C{_shouldShutdown}, read when it closes its socket.
    """

    def _close(self, port: tcp.Port) -> list[str]:
        socket = _Socket()
        port.socket = socket
        port._closeSocket(True)
        return socket.calls

    def test_closeWithoutShutdown(self) -> None:
        from twisted.internet.protocol import Factory

        message = _changed("tcp.Port._shouldShutdown/_closeSocket")
        self.assertEqual(
            self._close(tcp.Port(0, Factory())), ["shutdown", "close"], message
        )
        port = tcp.Port(0, Factory())
        _twisted.closeWithoutShutdown(port)
        self.assertEqual(self._close(port), ["close"], message)

    def test_otherPort(self) -> None:
        """
        A port without the attribute is left as it is.
        """
        port = object()
        _twisted.closeWithoutShutdown(port)
        self.assertFalse(hasattr(port, "_shouldShutdown"))
