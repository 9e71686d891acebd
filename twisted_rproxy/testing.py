"""
Test doubles for filter authors and embedders, as C{treq.testing} is for
treq's users: drive filters and resources through the proxy's real HTTP/1.1
server code, in memory, without sockets and without the global reactor.

    >>> from twisted_rproxy.testing import CannedResource, FilterHarness
    >>> harness = FilterHarness([("tag", myFilter)],
    ...                         CannedResource(headers=[(b"X-A", b"1")],
    ...                                        chunks=[b"hello"]))
    >>> response = harness.request(b"GET", b"/x", [(b"Host", b"example.com")])
    >>> response.code, response.body
    (200, b'hello')

L{CannedResource} answers like a proxied backend (its headers take the
proxy's own fast path) and may stream its body in timed pieces on the
harness's clock, so that a test sees what left before the end.
L{HarnessResponse.disconnect} makes the client go away mid-request (the
filter's waiting L{Deferred} is cancelled, C{request.notifyFinish()}
fails). L{StubHTTPClient} stands in for the treq client a filter gets from
its environment (L{FilterHarness.environment}), answering with canned
L{StubResponse}s.

Defaults, all of them:

  - L{FilterHarness.request} sends C{GET /} with one header, C{Host:
    example.com}, from client C{10.0.0.1} port 40000 to C{127.0.0.1:8080},
    HTTP/1.1 on a new connection; a body (or a C{POST}, C{PUT},
    C{PATCH}) gets a C{Content-Length}.
  - The harness's clock (a L{MemoryReactorClock}) starts at
    C{1_700_000_000} (2023-11-14 22:13:20 UTC), so C{Date} headers are
    plausible; it only moves when the test advances it.
  - L{HarnessResponse.code} is C{0} until the head has arrived; C{headers}
    is empty and C{body} C{b""} then, and C{complete} false.
  - L{CannedResource} answers C{200} with no header and an empty body,
    written at once; with an C{interval} and a C{clock}, the first piece
    is written at once and each next one (then the end) C{interval}
    seconds later. Its C{requests} holds one C{(method, uri, headers,
    body)} tuple per request: C{bytes}, C{bytes}, a copy of the request's
    L{Headers} and the C{bytes} of the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.config import ServerConfig
from twisted_rproxy.filterenv import FilterEnvironment, buildConfiguredFilter
from twisted_rproxy.filters import FilterChain, findFilterFactory
from twisted_rproxy.interfaces import IProxyRequest
from twisted_rproxy.server import ProxySite

__all__ = [
    "CannedResource",
    "FilterHarness",
    "HarnessResponse",
    "StubHTTPClient",
    "StubResponse",
    "buildFilter",
]


def buildFilter(
    plugin: str,
    options: Mapping[str, object] | None = None,
    environment: FilterEnvironment | None = None,
) -> object:
    """
    Find the installed filter plugin C{plugin} the way the proxy does and
    build a filter from C{options}, as C{[filters.NAME]} would.

    @param environment: Given to a factory that takes one (see
        L{FilterHarness.environment}); without it such a factory is called
        with the options alone.
    @raise LookupError: If no such plugin is installed.
    @raise twisted_rproxy.filters.FilterOptionError: For a bad option.
    """
    factory = findFilterFactory(plugin)
    if environment is None:
        return factory.buildFilter(dict(options or {}))
    return buildConfiguredFilter(factory, dict(options or {}), environment)


class StubResponse:
    """
    A canned response of L{StubHTTPClient}, read as a treq response is.

    @ivar code: The status code.
    @ivar phrase: The reason phrase.
    @ivar headers: The response headers, a L{Headers}.
    @ivar body: The body.
    """

    def __init__(
        self,
        code: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = (),
        body: bytes = b"",
        phrase: bytes = b"",
    ) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = Headers()
        for name, value in headers:
            self.headers.addRawHeader(name, value)
        self.body = body

    @property
    def length(self) -> int:
        """
        The body's length.
        """
        return len(self.body)

    def content(self) -> Deferred[bytes]:
        """
        The body, as C{treq.content} gives it.
        """
        return succeed(self.body)

    def text(self, encoding: str = "utf-8") -> Deferred[str]:
        """
        The body decoded.
        """
        return succeed(self.body.decode(encoding))

    def json(self) -> Deferred[Any]:
        """
        The body parsed as JSON.
        """
        return succeed(json.loads(self.body))


class StubHTTPClient:
    """
    A stand-in for the C{treq.HTTPClient} a filter gets from
    C{environment.httpClient()}: the same C{request}, C{get}, C{head},
    C{post}, C{put}, C{patch} and C{delete} calls, answered with canned
    L{StubResponse}s, without a network.

    A request to a URL in C{responses} gets its response (a callable is
    called with the method, URL, headers and data and returns one); any
    other gets C{default} (a 404 by default). With C{hold} true, requests
    wait in L{waiting} until the test calls L{release}; cancelling a
    waiting request fails it as treq's would:
    C{ResponseNeverReceived([Failure(CancelledError())])}.

    @ivar requests: One C{(method, url, headers, data)} per request, in
        order: C{bytes}, C{str}, a L{Headers} and what was given as
        C{data} (or L{None}).
    @ivar waiting: The held requests not answered yet: their L{Deferred}s
        and the response each will get.
    """

    def __init__(
        self,
        responses: Mapping[str, Any] | None = None,
        default: StubResponse | None = None,
        hold: bool = False,
    ) -> None:
        self.responses = dict(responses or {})
        self.default = default if default is not None else StubResponse(404)
        self.hold = hold
        self.requests: list[tuple[bytes, str, Headers, object]] = []
        self.waiting: list[tuple[Deferred[StubResponse], StubResponse]] = []

    def request(
        self,
        method: str | bytes,
        url: str | bytes,
        headers: Any = None,
        data: object = None,
        **kwargs: object,
    ) -> Deferred[StubResponse]:
        """
        Record the request and answer it (or hold it).
        """
        rawMethod = method.encode("ascii") if isinstance(method, str) else method
        textURL = url.decode("ascii") if isinstance(url, bytes) else url
        sent = Headers()
        if isinstance(headers, Headers):
            sent = headers.copy()
        elif headers:
            for name, value in dict(headers).items():
                values = value if isinstance(value, list) else [value]
                for one in values:
                    sent.addRawHeader(_bytes(name), _bytes(one))
        self.requests.append((rawMethod.upper(), textURL, sent, data))
        answer = self.responses.get(textURL, self.default)
        if callable(answer):
            answer = answer(rawMethod.upper(), textURL, sent, data)
        if not self.hold:
            return succeed(answer)

        def cancel(waiting: Deferred[StubResponse]) -> None:
            self.waiting[:] = [w for w in self.waiting if w[0] is not waiting]
            waiting.errback(Failure(ResponseNeverReceived([Failure(CancelledError())])))

        waiting: Deferred[StubResponse] = Deferred(cancel)
        self.waiting.append((waiting, answer))
        return waiting

    def release(self) -> None:
        """
        Answer every held request.
        """
        waiting, self.waiting = self.waiting, []
        for deferred, answer in waiting:
            deferred.callback(answer)

    def get(self, url: str | bytes, **kwargs: Any) -> Deferred[StubResponse]:
        """
        C{request("GET", url, ...)}.
        """
        return self.request(b"GET", url, **kwargs)

    def head(self, url: str | bytes, **kwargs: Any) -> Deferred[StubResponse]:
        """
        C{request("HEAD", url, ...)}.
        """
        return self.request(b"HEAD", url, **kwargs)

    def post(self, url: str | bytes, **kwargs: Any) -> Deferred[StubResponse]:
        """
        C{request("POST", url, ...)}.
        """
        return self.request(b"POST", url, **kwargs)

    def put(self, url: str | bytes, **kwargs: Any) -> Deferred[StubResponse]:
        """
        C{request("PUT", url, ...)}.
        """
        return self.request(b"PUT", url, **kwargs)

    def patch(self, url: str | bytes, **kwargs: Any) -> Deferred[StubResponse]:
        """
        C{request("PATCH", url, ...)}.
        """
        return self.request(b"PATCH", url, **kwargs)

    def delete(self, url: str | bytes, **kwargs: Any) -> Deferred[StubResponse]:
        """
        C{request("DELETE", url, ...)}.
        """
        return self.request(b"DELETE", url, **kwargs)


def _bytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


class CannedResource(Resource):
    """
    Answers every request with the same response, as a backend behind the
    proxy would: the headers are passed on like a proxied response's.

    @ivar requests: The requests it answered, for assertions (method, URI,
        headers and body as it saw them).
    """

    isLeaf = True

    def __init__(
        self,
        code: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = (),
        chunks: Sequence[bytes] = (b"",),
        interval: float | None = None,
        clock: MemoryReactorClock | None = None,
    ) -> None:
        """
        @param code: The status code.
        @param headers: The response headers. Without a C{Content-Length},
            the body is sent chunked.
        @param chunks: The body, written one piece at a time.
        @param interval: With a C{clock}, seconds between two pieces (and
            before the end): the response stays open until the clock is
            advanced.
        @param clock: The clock that paces the pieces (a harness's
            C{reactor}).
        """
        super().__init__()  # type: ignore[no-untyped-call]  # python/mypy#16653
        self.code = code
        self.headers = list(headers)
        self.chunks = list(chunks)
        self.interval = interval
        self.clock = clock
        self.requests: list[tuple[bytes, bytes, Headers, bytes]] = []

    def render(self, request: IRequest) -> object:
        content = request.content
        body = content.read() if content is not None else b""
        self.requests.append(
            (request.method, request.uri, request.requestHeaders.copy(), body)
        )
        request.setResponseCode(self.code)
        if IProxyRequest.providedBy(request):
            # What the proxy does with a backend's headers.
            request.passedHeaders = list(self.headers)
        else:
            for name, value in self.headers:
                request.responseHeaders.addRawHeader(name, value)
        if self.interval is None or self.clock is None:
            for chunk in self.chunks:
                request.write(chunk)
            request.finish()
            return NOT_DONE_YET
        self._writeLater(request, list(self.chunks), self.clock, self.interval)
        return NOT_DONE_YET

    def _writeLater(
        self,
        request: IRequest,
        chunks: list[bytes],
        clock: MemoryReactorClock,
        interval: float,
    ) -> None:
        if requestGone(request):
            return
        if not chunks:
            request.finish()
            return
        request.write(chunks.pop(0))
        clock.callLater(interval, self._writeLater, request, chunks, clock, interval)


class HarnessResponse:
    """
    What one client connection of a L{FilterHarness} received so far; parsed
    each time it is read, so it follows a response as it streams.
    """

    def __init__(self, transport: StringTransport, channel: Any) -> None:
        self.transport = transport
        self.channel = channel

    @property
    def raw(self) -> bytes:
        """
        Every byte received.
        """
        return bytes(self.transport.value())

    def _parse(self) -> tuple[int, Headers, bytes, bool]:
        raw = self.raw
        end = raw.find(b"\r\n\r\n")
        if end < 0:
            return 0, Headers(), b"", False
        lines = raw[:end].split(b"\r\n")
        code = int(lines[0].split(b" ", 2)[1])
        headers = Headers()
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.addRawHeader(name, value.strip())
        rest = raw[end + 4 :]
        encoding = headers.getRawHeaders(b"transfer-encoding") or []
        if b"chunked" in b",".join(encoding).lower():
            body = b""
            while True:
                lineEnd = rest.find(b"\r\n")
                if lineEnd < 0:
                    return code, headers, body, False
                size = int(rest[:lineEnd].split(b";")[0], 16)
                if size == 0:
                    return code, headers, body, rest.find(b"\r\n\r\n") >= 0
                piece = rest[lineEnd + 2 : lineEnd + 2 + size]
                body += piece
                if len(piece) < size:
                    return code, headers, body, False
                rest = rest[lineEnd + 2 + size + 2 :]
        length = headers.getRawHeaders(b"content-length")
        if length is not None:
            return code, headers, rest, len(rest) >= int(length[0])
        return code, headers, rest, self.transport.disconnecting

    @property
    def code(self) -> int:
        """
        The status code, 0 before the head arrived.
        """
        return self._parse()[0]

    @property
    def headers(self) -> Headers:
        """
        The response headers, as received.
        """
        return self._parse()[1]

    @property
    def body(self) -> bytes:
        """
        The body received so far, de-chunked.
        """
        return self._parse()[2]

    @property
    def complete(self) -> bool:
        """
        Whether the whole response arrived.
        """
        return self._parse()[3]

    @property
    def closed(self) -> bool:
        """
        Whether the proxy closed (or aborted) the connection.
        """
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def header(self, name: bytes) -> list[bytes]:
        """
        Every value of the response header C{name}.
        """
        return list(self.headers.getRawHeaders(name) or [])

    def disconnect(self) -> None:
        """
        The client goes away: its connection is lost, whatever the response
        is doing. A request hook's waiting L{Deferred} is cancelled and
        C{request.notifyFinish()} fails, as with a real client.
        """
        if self.transport.disconnected:
            return
        self.transport.loseConnection()
        self.transport.disconnected = True
        self.channel.connectionLost(Failure(ConnectionDone("the client went away")))


class FilterHarness:
    """
    Runs filters in front of a resource on the proxy's real server code
    (L{ProxySite}, its HTTP/1.1 channel and request), in memory.

    @ivar reactor: The L{MemoryReactorClock} everything runs on; advance it
        to run timers (of L{CannedResource}, or a filter's own).
    @ivar chain: The L{FilterChain} under test.
    @ivar site: The site serving it.
    """

    def __init__(
        self,
        filters: Sequence[tuple[str, object]],
        resource: IResource | None = None,
        reactor: MemoryReactorClock | None = None,
        route: object = None,
    ) -> None:
        """
        @param filters: C{(name, filter)} pairs, in order.
        @param resource: What the filters stand in front of; by default a
            L{CannedResource} answering 200 with an empty body.
        @param reactor: The clock; by default a new L{MemoryReactorClock}.
        @param route: Given to hooks as C{context.route}.
        """
        if reactor is None:
            reactor = MemoryReactorClock()
            # A clock at 0 would date responses 1970.
            reactor.advance(1_700_000_000)
        self.reactor = reactor
        self.resource = resource if resource is not None else CannedResource()
        self.chain = FilterChain(self.resource, filters, self.reactor, route)
        # MemoryReactorClock has TCP, TLS, time and core: an IProxyReactor,
        # though it does not declare it.
        proxyReactor: Any = self.reactor
        self.site = ProxySite(self.chain, ServerConfig(), proxyReactor)

    def environment(
        self, name: str = "test", httpClient: object = None, workers: int = 1
    ) -> FilterEnvironment:
        """
        An environment on the harness's clock to build a filter in (with
        L{buildFilter}), as the proxy builds one, its C{httpClient()}
        answering with C{httpClient} (a L{StubHTTPClient}) when given.

        @param name: The filter's name.
        @param workers: The number of workers it is told of.
        """
        return FilterEnvironment(
            name, self.reactor, None, workers, stubClient=httpClient
        )

    def request(
        self,
        method: bytes = b"GET",
        uri: bytes = b"/",
        headers: Sequence[tuple[bytes, bytes]] = ((b"Host", b"example.com"),),
        body: bytes = b"",
        clientAddress: str = "10.0.0.1",
    ) -> HarnessResponse:
        """
        Send one request on a new client connection.

        @return: The connection's L{HarnessResponse}, complete unless
            something waits (a filter's L{Deferred}, a timer).
        """
        site: Any = self.site
        channel = site.buildProtocol(IPv4Address("TCP", clientAddress, 40000))
        transport = StringTransport(
            peerAddress=IPv4Address("TCP", clientAddress, 40000),
            hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        )
        channel.makeConnection(transport)
        lines = [method + b" " + uri + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in headers]
        if body or method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: %d" % (len(body),))
        channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        return HarnessResponse(transport, channel)
