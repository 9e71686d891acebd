"""
Helpers for the loopback integration tests: a scriptable raw HTTP/1.1
backend that records what it receives, a raw client that collects bytes, a
small HTTP/1.1 response parser, and the clean-up that leaves the reactor
clean.

Everything listens and connects on 127.0.0.1 only.  The backend is a plain
L{Protocol}, not twisted.web, so that it can misbehave on purpose.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from attrs import define, field
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer

LOCALHOST = "127.0.0.1"


@define
class RecordedRequest:
    """
    One request as the backend received it.

    @ivar connectionId: The number of the backend connection it came on,
        counting from 1 in order of acceptance.
    @ivar chunked: Whether its body came with C{Transfer-Encoding: chunked}.
    @ivar answered: Whether the backend answered it (L{False} when a reply
        said to drop it).
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    connectionId: int
    chunked: bool = False
    answered: bool = True

    def header(self, name: bytes) -> list[bytes]:
        """
        Every value of the header C{name}, in order.
        """
        lower = name.lower()
        return [v for n, v in self.headers if n.lower() == lower]

    def headerNames(self) -> set[bytes]:
        """
        The lowercased names of every header.
        """
        return {n.lower() for n, _ in self.headers}


@define
class Reply:
    """
    What the backend does with one request.

    @ivar chunks: Send the body chunked, one chunk per item, written apart.
    @ivar untilClose: Send the body without C{Content-Length}, with
        C{Connection: close}, and close to end it.
    @ivar noBody: Send the headers as given (C{Content-Length} included if
        given) and no body: for HEAD, 204 and 304.
    @ivar bigBody: Stream this many bytes of a pattern with a
        C{Content-Length}.
    @ivar raw: Send these bytes instead of a response.
    @ivar delay: Seconds to wait before answering.
    @ivar closeAfter: Close the connection after the response.
    @ivar drop: Close the connection without answering.
    @ivar hang: Never answer.
    """

    status: int = 200
    reason: bytes = b"OK"
    headers: list[tuple[bytes, bytes]] = field(factory=list)
    body: bytes = b""
    chunks: list[bytes] | None = None
    untilClose: bool = False
    noBody: bool = False
    bigBody: int | None = None
    raw: bytes | None = None
    delay: float = 0.0
    closeAfter: bool = False
    drop: bool = False
    hang: bool = False


def echoReply(request: RecordedRequest) -> Reply:
    """
    The default handler: 200 with the request target as the body.
    """
    return Reply(body=request.target)


_PATTERN = bytes(range(256)) * 1024


@implementer(IPullProducer)
class _PatternProducer:
    """
    Writes C{size} bytes of a fixed pattern as fast as the transport takes
    them.
    """

    def __init__(self, transport: Any, size: int, done: Callable[[], None]) -> None:
        self.transport = transport
        self.left = size
        self.done = done

    def resumeProducing(self) -> None:
        if self.left <= 0:
            return
        data = _PATTERN[: min(self.left, len(_PATTERN))]
        self.left -= len(data)
        self.transport.write(data)
        if self.left <= 0:
            self.transport.unregisterProducer()
            self.done()

    def stopProducing(self) -> None:
        self.left = 0


class _BackendProtocol(Protocol):
    """
    One backend connection: parses requests, records them, answers them one
    at a time in order.
    """

    def __init__(self, factory: RecordingBackend, connectionId: int) -> None:
        self.factory = factory
        self.connectionId = connectionId
        self.buffer = b""
        self.queue: list[RecordedRequest] = []
        self.busy = False
        self.gone = False
        self.served = 0
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            request = self._parseOne()
            if request is None:
                break
            self.queue.append(request)
        self._next()

    def _parseOne(self) -> RecordedRequest | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = self.buffer[:end]
        rest = self.buffer[end + 4 :]
        lines = head.split(b"\r\n")
        method, target, version = lines[0].split(b" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
        lowered = {n.lower(): v for n, v in headers}
        chunked = b"chunked" in lowered.get(b"transfer-encoding", b"").lower()
        if chunked:
            body = b""
            position = 0
            while True:
                lineEnd = rest.find(b"\r\n", position)
                if lineEnd < 0:
                    return None
                size = int(rest[position:lineEnd].split(b";")[0], 16)
                start = lineEnd + 2
                if size == 0:
                    trailerEnd = rest.find(b"\r\n\r\n", lineEnd)
                    if trailerEnd < 0:
                        return None
                    rest = rest[trailerEnd + 4 :]
                    break
                if len(rest) < start + size + 2:
                    return None
                body += rest[start : start + size]
                position = start + size + 2
        else:
            length = int(lowered.get(b"content-length", b"0"))
            if len(rest) < length:
                return None
            body, rest = rest[:length], rest[length:]
        self.buffer = rest
        request = RecordedRequest(
            method, target, version, headers, body, self.connectionId, chunked
        )
        self.factory.requests.append(request)
        return request

    def _next(self) -> None:
        if self.busy or not self.queue or self.gone:
            return
        request = self.queue.pop(0)
        self.busy = True
        self.served += 1
        if self.factory.dropReused and self.served > 1:
            request.answered = False
            self.transport.loseConnection()
            return
        reply = self.factory.handler(request)
        if reply.drop:
            request.answered = False
            self.transport.loseConnection()
            return
        if reply.hang:
            return
        if reply.delay:
            self.factory.reactor.callLater(reply.delay, self._answer, request, reply)
        else:
            self._answer(request, reply)

    def _answer(self, request: RecordedRequest, reply: Reply) -> None:
        if self.gone:
            return
        write = self.transport.write
        if reply.raw is not None:
            write(reply.raw)
            self._finished(reply)
            return
        head = [b"HTTP/1.1 %d %s\r\n" % (reply.status, reply.reason)]
        headers = list(reply.headers)
        names = {n.lower() for n, _ in headers}
        if reply.chunks is not None:
            headers.append((b"Transfer-Encoding", b"chunked"))
        elif reply.untilClose:
            headers.append((b"Connection", b"close"))
        elif reply.bigBody is not None:
            headers.append((b"Content-Length", b"%d" % (reply.bigBody,)))
        elif not reply.noBody and b"content-length" not in names:
            headers.append((b"Content-Length", b"%d" % (len(reply.body),)))
        for name, value in headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"\r\n")
        write(b"".join(head))
        if reply.noBody or request.method == b"HEAD":
            self._finished(reply)
        elif reply.chunks is not None:
            self._writeChunks(list(reply.chunks), reply)
        elif reply.bigBody is not None:
            self.transport.registerProducer(
                _PatternProducer(
                    self.transport, reply.bigBody, lambda: self._finished(reply)
                ),
                False,
            )
        else:
            write(reply.body)
            if reply.untilClose:
                self.transport.loseConnection()
                return
            self._finished(reply)

    def _writeChunks(self, chunks: list[bytes], reply: Reply) -> None:
        if self.gone:
            return
        if not chunks:
            self.transport.write(b"0\r\n\r\n")
            self._finished(reply)
            return
        chunk = chunks.pop(0)
        self.transport.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # Written apart, so the proxy sees separate pieces.
        self.factory.reactor.callLater(0.01, self._writeChunks, chunks, reply)

    def _finished(self, reply: Reply) -> None:
        self.busy = False
        if reply.closeAfter:
            self.transport.loseConnection()
            return
        self._next()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        self.lost.callback(None)


class RecordingBackend(Factory):
    """
    A backend server that records every request and connection.

    @ivar handler: Called with each L{RecordedRequest}, returns its L{Reply}.
    @ivar requests: Every request received, in order of arrival.
    @ivar connections: Every connection accepted, in order.
    @ivar dropReused: Close a connection without answering when a second
        request arrives on it (a backend that closed a kept-alive connection
        just as the proxy reused it).
    """

    def __init__(
        self,
        reactor: Any,
        handler: Callable[[RecordedRequest], Reply] = echoReply,
    ) -> None:
        self.reactor = reactor
        self.handler = handler
        self.requests: list[RecordedRequest] = []
        self.connections: list[_BackendProtocol] = []
        self.dropReused = False
        self.port: IListeningPort | None = None
        self._ids = 0

    def buildProtocol(self, addr: object) -> _BackendProtocol:
        self._ids += 1
        return _BackendProtocol(self, self._ids)

    @property
    def accepted(self) -> int:
        """
        How many connections were accepted.
        """
        return len(self.connections)

    @property
    def portNumber(self) -> int:
        assert self.port is not None
        return int(self.port.getHost().port)

    async def start(self) -> RecordingBackend:
        """
        Listen on an ephemeral port of 127.0.0.1.
        """
        endpoint = TCP4ServerEndpoint(self.reactor, 0, interface=LOCALHOST)
        self.port = await endpoint.listen(self)
        return self

    def closeIdleConnections(self) -> None:
        """
        Close every open connection that carries no request, as a backend
        with a short keep-alive timeout does.
        """
        for connection in self.connections:
            if not connection.gone and not connection.busy and not connection.queue:
                connection.transport.loseConnection()

    async def stop(self) -> None:
        """
        Stop listening and close every connection.
        """
        if self.port is not None:
            port, self.port = self.port, None
            await port.stopListening()
        for connection in self.connections:
            if not connection.gone:
                connection.transport.abortConnection()
        for connection in self.connections:
            if not connection.gone:
                await connection.lost


class RawClient(Protocol):
    """
    A client connection that collects every byte it receives.
    """

    def __init__(self) -> None:
        self.received = b""
        self.closed = False
        self._waiting: list[tuple[Callable[[bytes], bool], Deferred[bytes]]] = []

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed = True
        self._check()

    def _check(self) -> None:
        for entry in list(self._waiting):
            predicate, d = entry
            if self.closed or predicate(self.received):
                self._waiting.remove(entry)
                d.callback(self.received)

    def waitFor(
        self, predicate: Callable[[bytes], bool], reactor: Any, timeout: float = 10.0
    ) -> Deferred[bytes]:
        """
        Fire with everything received once C{predicate} holds of it or the
        connection is closed; fail after C{timeout} seconds.
        """
        d: Deferred[bytes] = Deferred()
        if self.closed or predicate(self.received):
            d.callback(self.received)
            return d
        self._waiting.append((predicate, d))
        d.addTimeout(timeout, reactor)
        return d

    def write(self, data: bytes) -> None:
        self.transport.write(data)


async def connectRaw(reactor: Any, port: int) -> RawClient:
    """
    Open a raw TCP connection to 127.0.0.1:C{port}.
    """
    endpoint = TCP4ClientEndpoint(reactor, LOCALHOST, port, timeout=5)
    client: RawClient = await endpoint.connect(Factory.forProtocol(RawClient))
    return client


@define
class ParsedResponse:
    """
    One response as a client received it.
    """

    version: bytes
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes

    def header(self, name: bytes) -> list[bytes]:
        lower = name.lower()
        return [v for n, v in self.headers if n.lower() == lower]

    def headerNames(self) -> set[bytes]:
        return {n.lower() for n, _ in self.headers}


_STATUS_LINE = re.compile(rb"(HTTP/1\.[01]) (\d\d\d)")


def parseResponses(
    data: bytes, methods: list[bytes] | None = None, closed: bool = False
) -> tuple[list[ParsedResponse], bytes]:
    """
    Parse the complete responses at the start of C{data}.

    @param methods: The request methods, in order (HEAD responses have no
        body); GET when not given.
    @param closed: Whether the connection is closed, which completes a body
        delimited by the close.
    @return: The complete responses (1xx included) and the rest.
    """
    responses: list[ParsedResponse] = []
    methods = list(methods or [])
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        lines = data[:end].split(b"\r\n")
        match = _STATUS_LINE.match(lines[0])
        if match is None:
            raise ValueError(f"not a status line: {lines[0]!r}")
        version, status = match.group(1), int(match.group(2))
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
        lowered = {n.lower(): v for n, v in headers}
        rest = data[end + 4 :]
        final = status >= 200
        method = b"GET"
        if final:
            method = methods.pop(0) if methods else b"GET"
        if not final or method == b"HEAD" or status in (204, 304):
            body = b""
        elif b"chunked" in lowered.get(b"transfer-encoding", b"").lower():
            body = b""
            position = 0
            complete = False
            while True:
                lineEnd = rest.find(b"\r\n", position)
                if lineEnd < 0:
                    break
                size = int(rest[position:lineEnd].split(b";")[0], 16)
                start = lineEnd + 2
                if size == 0:
                    trailerEnd = rest.find(b"\r\n\r\n", lineEnd)
                    if trailerEnd < 0:
                        break
                    rest = rest[trailerEnd + 4 :]
                    complete = True
                    break
                if len(rest) < start + size + 2:
                    break
                body += rest[start : start + size]
                position = start + size + 2
            if not complete:
                break
        elif b"content-length" in lowered:
            length = int(lowered[b"content-length"])
            if len(rest) < length:
                break
            body, rest = rest[:length], rest[length:]
        else:
            if not closed:
                break
            body, rest = rest, b""
        raw = data[: len(data) - len(rest)]
        responses.append(ParsedResponse(version, status, headers, body, raw))
        data = rest
    return responses, data


def finalCount(
    predicateCount: int, methods: list[bytes] | None = None
) -> Callable[[bytes], bool]:
    """
    A L{RawClient.waitFor} predicate: C{predicateCount} final responses are
    complete.
    """

    def enough(data: bytes) -> bool:
        try:
            responses, _ = parseResponses(data, methods)
        except ValueError:
            return True
        return len([r for r in responses if r.status >= 200]) >= predicateCount

    return enough


def _openConnections(reactor: Any) -> list[Any]:
    selectables = set(reactor.getReaders()) | set(reactor.getWriters())
    return [s for s in selectables if isinstance(s, tcp.Connection)]


async def waitForQuiet(reactor: Any, timeout: float = 3.0) -> None:
    """
    Wait, a bounded time, until no TCP connection is left open in the
    reactor; then abort what is left and wait a moment more.

    Connections closed by one side take a reactor turn or two to be seen
    closed by the other; trial calls a connection left open a dirty reactor.
    """
    steps = int(timeout / 0.01)
    for _ in range(steps):
        if not _openConnections(reactor):
            return
        await deferLater(reactor, 0.01, lambda: None)
    for connection in _openConnections(reactor):
        connection.abortConnection()
    for _ in range(100):
        if not _openConnections(reactor):
            return
        await deferLater(reactor, 0.01, lambda: None)
