"""
Hostile and malformed requests, on raw sockets, against the real proxy in
front of a L{RecordingBackend} that records exactly what it received.

Each case of L{CASES} names the bytes sent (with pauses), the statuses the
client must get, and the request targets the backend must see before a
well-formed sentinel request sent after the hostile one; every
request the backend saw must also be unambiguous (one C{Host}, one way of
framing, no control characters). The cases become one test method each.
"""

from __future__ import annotations

from typing import Any

from attrs import field, frozen
from twisted.internet import reactor

from tests.fixtures import LoopbackTestCase, asyncTest, sleep
from tests.loopback import RecordedRequest, finalCount, parseResponses

#: A piece of a case: bytes to send, or seconds to wait.
Piece = bytes | float


@frozen
class Case:
    """
    One hostile request.

    @ivar name: The test method is C{test_<name>}.
    @ivar pieces: What the client sends, in order; a number is a pause.
    @ivar statuses: The final statuses the client gets, in order.
    @ivar seen: The targets the backend receives, in order.
    @ivar closed: Whether the proxy must close the connection.
    @ivar server: L{ServerConfig} settings of the proxy.
    @ivar bodies: The bodies the backend receives, if checked.
    """

    name: str
    pieces: tuple[Piece, ...]
    statuses: tuple[int, ...]
    seen: tuple[bytes, ...] = ()
    closed: bool = True
    server: dict[str, Any] = field(factory=dict)
    bodies: tuple[bytes, ...] | None = None


def _get(
    target: bytes = b"/", extra: bytes = b"", version: bytes = b"HTTP/1.1"
) -> bytes:
    return b"GET " + target + b" " + version + b"\r\nHost: x\r\n" + extra + b"\r\n"


def _post(headers: bytes, body: bytes) -> bytes:
    return b"POST /p HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


_FAST = {"headerTimeout": 0.3, "bodyTimeout": 0.3}

CASES = [
    # Framing: Content-Length and Transfer-Encoding.
    Case(
        "clAndTe",
        (_post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "teAndCl",
        (_post(b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", b"0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "clTwiceSame",
        (_post(b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),),
        (400,),
    ),
    Case(
        "clTwiceDifferent",
        (_post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),),
        (400,),
    ),
    Case("clList", (_post(b"Content-Length: 5, 5\r\n", b"hello"),), (400,)),
    Case("clPlusSign", (_post(b"Content-Length: +5\r\n", b"hello"),), (400,)),
    Case("clNegative", (_post(b"Content-Length: -1\r\n", b"hello"),), (400,)),
    Case("clHex", (_post(b"Content-Length: 0x5\r\n", b"hello"),), (400,)),
    Case("clInnerSpace", (_post(b"Content-Length: 5 5\r\n", b"hello"),), (400,)),
    Case("clEmpty", (_post(b"Content-Length: \r\n", b"hello"),), (400,)),
    Case(
        "clHuge", (_post(b"Content-Length: 99999999999999999999999\r\n", b"x"),), (413,)
    ),
    Case("clObsFold", (_post(b"Content-Length:\r\n 5\r\n", b"hello"),), (400,)),
    Case(
        "teIdentity",
        (_post(b"Transfer-Encoding: identity\r\nContent-Length: 5\r\n", b"hello"),),
        (400,),
    ),
    Case(
        "teGzipChunked",
        (_post(b"Transfer-Encoding: gzip, chunked\r\n", b"0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "teChunkedTwiceOneLine",
        (_post(b"Transfer-Encoding: chunked, chunked\r\n", b"0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "teChunkedTwoLines",
        (
            _post(
                b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
        ),
        (400,),
    ),
    Case(
        "teIdentityThenChunked",
        (
            _post(
                b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n",
                b"0\r\n\r\n",
            ),
        ),
        (400,),
    ),
    Case(
        "teUnknown", (_post(b"Transfer-Encoding: xchunked\r\n", b"0\r\n\r\n"),), (400,)
    ),
    Case(
        "teSpaceBeforeColon",
        (_post(b"Transfer-Encoding : chunked\r\n", b"0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "teObsFold",
        (_post(b"Transfer-Encoding:\r\n chunked\r\n", b"0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "teInHttp10",
        (b"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",),
        (400,),
    ),
    Case(
        "teUppercaseAccepted",
        (_post(b"Transfer-Encoding: CHUNKED\r\n", b"5\r\nhello\r\n0\r\n\r\n"),),
        (200,),
        (b"/p",),
        closed=False,
        bodies=(b"hello",),
    ),
    Case(
        "teTabAccepted",
        (_post(b"Transfer-Encoding:\tchunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),),
        (200,),
        (b"/p",),
        closed=False,
        bodies=(b"hello",),
    ),
    # Chunk sizes and chunk framing.
    Case(
        "chunkSizeHexPrefix",
        (_post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "chunkSizeNegative",
        (_post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "chunkSizePlus",
        (_post(b"Transfer-Encoding: chunked\r\n", b"+5\r\nhello\r\n0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "chunkSizeEmpty",
        (_post(b"Transfer-Encoding: chunked\r\n", b"\r\nhello\r\n0\r\n\r\n"),),
        (400,),
    ),
    # A chunk size that overflows, or past the body limit, and chunk lines
    # ended by LF alone, are refused at once (with the default timeouts, a
    # wait would end in a 408 long after the client's timeout here).
    Case(
        "chunkSizeOverflow",
        (
            _post(
                b"Transfer-Encoding: chunked\r\n",
                b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (400,),
    ),
    Case(
        "chunkSizeTwentyDigits",
        (_post(b"Transfer-Encoding: chunked\r\n", b"f" * 20 + b"\r\nhello"),),
        (400,),
    ),
    Case(
        "chunkSizeLeadingZeros",
        (
            _post(
                b"Transfer-Encoding: chunked\r\n",
                b"0" * 20 + b"5\r\nhello\r\n0\r\n\r\n",
            ),
        ),
        (200,),
        (b"/p",),
        closed=False,
        bodies=(b"hello",),
    ),
    Case(
        "chunkSizePastBodyLimit",
        (_post(b"Transfer-Encoding: chunked\r\n", b"ffff\r\nhello"),),
        (413,),
        server={"maxBodySize": 1000},
    ),
    Case(
        "chunkSizesTogetherPastBodyLimit",
        (
            _post(
                b"Transfer-Encoding: chunked\r\n",
                b"5\r\nhello\r\n3e8\r\nworld",
            ),
        ),
        (413,),
        server={"maxBodySize": 1000},
    ),
    Case(
        "chunkDataTooLong",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhelloXX\r\n0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "chunkBadExtension",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5;\x01\r\nhello\r\n0\r\n\r\n"),),
        (400,),
    ),
    Case(
        "chunkBareLF",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"),),
        (400,),
    ),
    Case(
        "chunkSizeLineBareLF",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5\n"),),
        (400,),
    ),
    Case(
        "chunkExtensionBareLF",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5;a=b\n"),),
        (400,),
    ),
    Case(
        "chunkDataBareLF",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\n"),),
        (400,),
    ),
    Case(
        "chunkTrailerBareLF",
        (_post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\n"),),
        (400,),
    ),
    Case(
        "chunkedWithTrailer",
        (
            _post(
                b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"
            ),
        ),
        (200,),
        (b"/p",),
        closed=False,
        bodies=(b"hello",),
    ),
    # Characters.
    Case("nulInHeaderValue", (_get(extra=b"X-A: a\x00b\r\n"),), (400,)),
    Case("nulInTarget", (b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("controlInHeaderValue", (_get(extra=b"X-A: a\x01b\r\n"),), (400,)),
    Case("escapeInHeaderValue", (_get(extra=b"X-A: a\x1bb\r\n"),), (400,)),
    Case("delInHeaderValue", (_get(extra=b"X-A: a\x7fb\r\n"),), (400,)),
    Case("bareCRInHeaderValue", (_get(extra=b"X-A: a\rb\r\n"),), (400,)),
    Case("bareLFLineEnds", (b"GET / HTTP/1.1\nHost: x\n\n\r\n\r\n",), (400,)),
    # A head whose lines end with LF alone is refused at once, not left to
    # the header timeout.
    Case("bareLFHeadOnly", (b"GET / HTTP/1.1\nHost: x\n\n",), (400,)),
    Case("bareLFEndsHead", (b"GET / HTTP/1.1\r\nHost: x\r\n\n",), (400,)),
    Case("bareLFEndsHeader", (b"GET / HTTP/1.1\r\nHost: x\n",), (400,)),
    Case(
        "bareLFAfterPipelined",
        (_get(b"/a") + b"GET /b HTTP/1.1\nHost: x\n\n",),
        (200, 400),
        (b"/a",),
    ),
    Case("bareCRLineEnds", (b"GET / HTTP/1.1\rHost: x\r\r\n\r\n",), (400,)),
    Case("bareLFInsideHeader", (_get(extra=b"X-A: a\nX-B: b\r\n"),), (400,)),
    Case("spaceInHeaderName", (_get(extra=b"X A: a\r\n"),), (400,)),
    Case("headerWithoutColon", (_get(extra=b"NoColonHere\r\n"),), (400,)),
    Case("emptyHeaderName", (_get(extra=b": a\r\n"),), (400,)),
    Case("headerNameNotToken", (_get(extra=b"X(A): a\r\n"),), (400,)),
    Case("headerNameUTF8", (_get(extra=b"X-\xc3\xa9: a\r\n"),), (400,)),
    Case("obsFold", (_get(extra=b"X-A: a\r\n b\r\n"),), (400,)),
    Case("obsFoldTab", (_get(extra=b"X-A: a\r\n\tb\r\n"),), (400,)),
    Case("firstHeaderIndented", (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",), (400,)),
    Case(
        "obsTextAccepted",
        (_get(extra=b"X-A: caf\xe9\r\n"),),
        (200,),
        (b"/",),
        closed=False,
    ),
    Case("spaceInTarget", (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("tabInRequestLine", (b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("doubleSpaceRequestLine", (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("lowercaseVersion", (b"GET / http/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("version20", (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",), (400,)),
    Case("version09", (b"GET /\r\n\r\n",), (400,)),
    Case("methodNotToken", (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("fragmentInTarget", (_get(b"/a#b"),), (400,)),
    # Host and the request target.
    Case("hostMissing", (b"GET / HTTP/1.1\r\n\r\n",), (400,)),
    Case(
        "hostMissingHttp10Accepted", (b"GET /ten HTTP/1.0\r\n\r\n",), (200,), (b"/ten",)
    ),
    Case("hostTwice", (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",), (400,)),
    Case("hostTwiceSame", (b"GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n",), (400,)),
    Case("hostList", (b"GET / HTTP/1.1\r\nHost: x, y\r\n\r\n",), (400,)),
    Case("hostWithSlash", (b"GET / HTTP/1.1\r\nHost: x/y\r\n\r\n",), (400,)),
    Case("hostWithUserinfo", (b"GET / HTTP/1.1\r\nHost: u@x\r\n\r\n",), (400,)),
    Case(
        "absoluteFormMatchingHost",
        (b"GET http://x/p?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",),
        (200,),
        (b"/p?q=1",),
        closed=False,
    ),
    Case(
        "absoluteFormNoPath",
        (b"GET http://X HTTP/1.1\r\nHost: x\r\n\r\n",),
        (200,),
        (b"/",),
        closed=False,
    ),
    Case(
        "absoluteFormOtherHost",
        (b"GET http://internal/admin HTTP/1.1\r\nHost: x\r\n\r\n",),
        (400,),
    ),
    Case(
        "absoluteFormUserinfo",
        (b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n",),
        (400,),
    ),
    Case(
        "absoluteFormOtherScheme",
        (b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",),
        (400,),
    ),
    Case("authorityFormGet", (b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("asteriskGet", (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",), (400,)),
    Case("connectRefused", (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",), (405,)),
    # Sizes.
    Case("requestLineTooLong", (_get(b"/" + b"a" * 9000),), (414,)),
    Case("requestLineWithoutEnd", (b"GET /" + b"a" * 20000,), (414,)),
    Case("headerTooLarge", (_get(extra=b"X-A: " + b"a" * 20000 + b"\r\n"),), (431,)),
    Case(
        "headersTooLargeTogether",
        (_get(extra=b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(20))),),
        (431,),
    ),
    Case(
        "tooManyHeaders",
        (_get(extra=b"".join(b"X-%d: a\r\n" % (i,) for i in range(150))),),
        (431,),
    ),
    Case("bodyTooLarge", (_post(b"Content-Length: 20000000\r\n", b"x"),), (413,)),
    # Slow clients.
    Case(
        "slowHeaders",
        (b"GET / HTTP/1.1\r\nHost: x\r\n", *(0.1, b"X-A: a\r\n") * 8),
        (408,),
        server=_FAST,
    ),
    Case("slowRequestLine", (b"GET /", 0.6), (408,), server=_FAST),
    Case(
        "slowBody",
        (_post(b"Content-Length: 10\r\n", b"hello"), 0.6),
        (408,),
        server=_FAST,
    ),
    Case(
        "requestTimeout",
        (_post(b"Content-Length: 10\r\n", b"h"), *(0.1, b"e") * 8),
        (408,),
        server={"requestTimeout": 0.4},
    ),
    Case(
        "slowButInTime",
        (b"GET /ok HTTP/1.1\r\n", 0.1, b"Host: x\r\n\r\n"),
        (200,),
        (b"/ok",),
        closed=False,
        server=_FAST,
    ),
    # Pipelining tricks.
    Case(
        "pipelinedTwo",
        (_get(b"/a") + _get(b"/b"),),
        (200, 200),
        (b"/a", b"/b"),
        closed=False,
    ),
    Case(
        "pipelinedAfterBody",
        (_post(b"Content-Length: 5\r\n", b"hello") + _get(b"/smuggled"),),
        (200, 200),
        (b"/p", b"/smuggled"),
        closed=False,
        bodies=(b"hello", b""),
    ),
    Case(
        "pipelinedAfterClose",
        (_get(b"/a", b"Connection: close\r\n") + _get(b"/b"),),
        (200,),
        (b"/a",),
    ),
    # Connection: close anywhere in the Connection headers' lists.
    Case(
        "connectionCloseInList",
        (_get(b"/a", b"Connection: close, x-foo\r\nX-Foo: 1\r\n") + _get(b"/b"),),
        (200,),
        (b"/a",),
    ),
    Case(
        "connectionCloseLastNoSpace",
        (_get(b"/a", b"Connection: keep-alive,CLOSE\r\n"),),
        (200,),
        (b"/a",),
    ),
    Case(
        "connectionCloseSecondHeader",
        (_get(b"/a", b"Connection: x-foo\r\nConnection:  Close \r\n"),),
        (200,),
        (b"/a",),
    ),
    Case(
        "connectionNotClose",
        (_get(b"/a", b"Connection: closed, x-close\r\n") + _get(b"/b"),),
        (200, 200),
        (b"/a", b"/b"),
        closed=False,
    ),
    Case(
        "pipelinedSecondMalformed",
        (
            _get(b"/a")
            + _post(
                b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"
            ),
        ),
        (200, 400),
        (b"/a",),
    ),
    Case(
        "pipelinedAfterChunked",
        (
            _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n")
            + _get(b"/next"),
        ),
        (200, 200),
        (b"/p", b"/next"),
        closed=False,
        bodies=(b"hello", b""),
    ),
    Case(
        "getWithSmuggledBody",
        (_get(b"/a", b"Content-Length: %d\r\n" % len(_get(b"/b"))) + _get(b"/b"),),
        (200,),
        (b"/a",),
        closed=False,
        bodies=(_get(b"/b"),),
    ),
]


_CONTROL = bytes(range(0x00, 0x09)) + bytes(range(0x0A, 0x20)) + b"\x7f"


class HostileRequestTests(LoopbackTestCase):
    """
    The cases of L{CASES}, one method each.
    """

    def assertUnambiguous(self, request: RecordedRequest) -> None:
        """
        What the backend received is one plain, normalized request.
        """
        names = [name.lower() for name, _ in request.headers]
        self.assertEqual(names.count(b"host"), 1, request)
        self.assertLessEqual(names.count(b"content-length"), 1, request)
        self.assertFalse(request.chunked and b"content-length" in names, request)
        self.assertLessEqual(names.count(b"transfer-encoding"), 1, request)
        self.assertTrue(request.target.startswith(b"/"), request)
        for name, value in request.headers:
            self.assertNotIn(b" ", name)
            self.assertEqual(value.translate(None, _CONTROL), value, request)

    async def runCase(self, case: Case) -> None:
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, server=case.server)
        client = await self.rawClient(port)
        for piece in case.pieces:
            if isinstance(piece, float):
                await sleep(piece)
            elif not client.closed:
                client.write(piece)
        received = await client.waitFor(finalCount(len(case.statuses)), reactor, 5)
        if case.closed:
            received = await client.waitFor(lambda data: False, reactor, 5)
        responses, _ = parseResponses(received, closed=client.closed)
        statuses = tuple(r.status for r in responses if r.status >= 200)
        self.assertEqual(statuses, case.statuses, received[:300])
        self.assertEqual(client.closed, case.closed)
        # Whatever the proxy forwarded from the hostile connection reaches
        # the backend before a request sent after it.
        forwarded = await self.requestsBeforeSentinel(port, backend)
        self.assertEqual(tuple(r.target for r in forwarded), case.seen)
        for request in forwarded:
            self.assertUnambiguous(request)
        if case.bodies is not None:
            self.assertEqual(tuple(r.body for r in forwarded), case.bodies)
        for response in responses:
            if response.status >= 400:
                # The proxy's own small page, not twisted.web's bare 400.
                self.assertIn(b"<h1>%d " % (response.status,), response.body)


def _makeTest(case: Case) -> Any:
    async def test(self: HostileRequestTests) -> None:
        await self.runCase(case)

    test.__name__ = f"test_{case.name}"
    test.__doc__ = f"Hostile request case {case.name!r}: {case.statuses}."
    return asyncTest(test)


for _case in CASES:
    setattr(HostileRequestTests, f"test_{_case.name}", _makeTest(_case))
del _case
