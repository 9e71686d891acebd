"""
Tests for L{twisted_rproxy.rules.http1}: the response parser on its own
(bytes in, events out), the request-head writer and the authority
formatter.
"""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.rules.http1 import (
    MAX_CHUNK_HEADER,
    MAX_RESPONSE_HEAD,
    Framing,
    ResponseHead,
    ResponseParser,
    formatAuthority,
    formatRequestHead,
)

Event = tuple[str, object]


class Events:
    """
    Records what a parser reports, as C{(kind, value)} pairs.
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.onHead: Callable[[], object] | None = None
        self.onData: Callable[[], object] | None = None
        self.onEnd: Callable[[], object] | None = None

    def interimHead(self, head: ResponseHead) -> None:
        self.events.append(("interim", head))

    def responseHead(self, head: ResponseHead) -> Callable[[bytes], None]:
        self.events.append(("head", head))
        if self.onHead is not None:
            self.onHead()
        return self.bodyData

    def bodyData(self, data: bytes) -> None:
        self.events.append(("data", data))
        if self.onData is not None:
            self.onData()

    def responseEnd(self, keepAlive: bool) -> None:
        self.events.append(("end", keepAlive))
        if self.onEnd is not None:
            self.onEnd()

    def protocolError(self, reason: str) -> None:
        self.events.append(("error", reason))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]

    def heads(self) -> list[ResponseHead]:
        return [value for kind, value in self.events if kind == "head"]  # type: ignore[misc]

    def body(self) -> bytes:
        return b"".join(value for kind, value in self.events if kind == "data")  # type: ignore[misc]

    def merged(self) -> list[Event]:
        """
        The events with consecutive body pieces joined: what does not
        depend on how the bytes were cut.
        """
        out: list[Event] = []
        for kind, value in self.events:
            if kind == "data" and out and out[-1][0] == "data":
                out[-1] = ("data", out[-1][1] + value)  # type: ignore[operator]
            else:
                out.append((kind, value))
        return out


def parse(
    *pieces: bytes, method: bytes = b"GET", allowSwitch: bool = False
) -> tuple[ResponseParser, Events]:
    events = Events()
    parser = ResponseParser(events, allowSwitch=allowSwitch)
    parser.expect(method)
    for piece in pieces:
        parser.feed(piece)
    return parser, events


class FramingTests(SynchronousTestCase):
    """
    Each response is framed as RFC 9112 section 6.3 says, and reported
    head, body, end.
    """

    def test_contentLength(self) -> None:
        """
        A sized body ends after its length; the connection may be reused.
        """
        parser, events = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"
        )
        self.assertEqual(events.kinds(), ["head", "data", "data", "end"])
        (head,) = events.heads()
        self.assertEqual(
            head,
            ResponseHead(
                200, b"OK", [(b"Content-Length", b"5")], Framing.LENGTH, 5, True
            ),
        )
        self.assertEqual(events.body(), b"hello")
        self.assertEqual(events.events[-1], ("end", True))
        self.assertFalse(parser.bodyBuffered)

    def test_bodyBuffered(self) -> None:
        """
        C{bodyBuffered} says whether the whole body came with the head.
        """
        parser, events = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertTrue(parser.bodyBuffered)
        self.assertTrue(parser.headReceived)

    def test_headersParsed(self) -> None:
        """
        Values are stripped of surrounding blanks; order and duplicates are
        kept; an empty reason is allowed.
        """
        _, events = parse(
            b"HTTP/1.1 201\r\nSet-Cookie: a=1\r\nX-Sp: \t v w \t\r\n"
            b"Set-Cookie: b=2\r\nEmpty:\r\nContent-Length: 0\r\n\r\n"
        )
        (head,) = events.heads()
        self.assertEqual((head.status, head.reason), (201, b""))
        self.assertEqual(
            head.headers,
            [
                (b"Set-Cookie", b"a=1"),
                (b"X-Sp", b"v w"),
                (b"Set-Cookie", b"b=2"),
                (b"Empty", b""),
                (b"Content-Length", b"0"),
            ],
        )
        self.assertEqual(head.framing, Framing.NONE)
        self.assertEqual(events.kinds(), ["head", "end"])

    def test_chunked(self) -> None:
        """
        A chunked body is decoded, extensions and trailers dropped.
        """
        _, events = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n7 \r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        self.assertEqual(events.heads()[0].framing, Framing.CHUNKED)
        self.assertEqual(events.body(), b"hello, world")
        self.assertEqual(events.events[-1], ("end", True))

    def test_untilClose(self) -> None:
        """
        Without a length or chunking, the body runs until the connection
        closes, which L{ResponseParser.feedEOF} says completed it; the
        connection is not reused.
        """
        for response in [
            b"HTTP/1.1 200 OK\r\n\r\nsome ",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nsome ",
        ]:
            parser, events = parse(response, b"data")
            head = events.heads()[0]
            self.assertEqual(
                (head.framing, head.keepAlive), (Framing.UNTIL_CLOSE, False)
            )
            self.assertEqual(events.body(), b"some data")
            self.assertNotIn("end", events.kinds())
            self.assertTrue(parser.feedEOF())

    def test_feedEOFCutsShort(self) -> None:
        """
        A close in a sized body, or before the head, does not complete the
        response.
        """
        parser, _ = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.assertFalse(parser.feedEOF())
        parser, _ = parse(b"HTTP/1.1 200")
        self.assertFalse(parser.feedEOF())
        self.assertFalse(parser.headReceived)

    def test_noBody(self) -> None:
        """
        The response to HEAD, a 204 and a 304 end with their head, whatever
        their Content-Length says.
        """
        cases = [
            (b"HEAD", b"200 OK\r\nContent-Length: 1000"),
            (b"GET", b"204 No Content\r\nContent-Length: 10"),
            (b"GET", b'304 Not Modified\r\nETag: "x"'),
        ]
        for method, head in cases:
            parser, events = parse(b"HTTP/1.1 " + head + b"\r\n\r\n", method=method)
            self.assertEqual(events.kinds(), ["head", "end"], head)
            self.assertEqual(events.heads()[0].framing, Framing.NONE)
            self.assertEqual(events.events[-1], ("end", True))
            self.assertTrue(parser.bodyBuffered)

    def test_interimResponses(self) -> None:
        """
        1xx heads are reported as interim; the final head follows.
        """
        _, events = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
            b"Link: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        )
        self.assertEqual(events.kinds(), ["interim", "interim", "head", "data", "end"])
        interim = events.events[1][1]
        assert isinstance(interim, ResponseHead)
        self.assertEqual(
            (interim.status, interim.headers), (103, [(b"Link", b"</a.css>")])
        )

    def test_keepAlive(self) -> None:
        """
        HTTP/1.1 keeps the connection unless C{Connection: close}; HTTP/1.0
        only with C{Connection: keep-alive}.
        """
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 0", True),
            (b"HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0", False),
            (b"HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 0", False),
            (b"HTTP/1.0 200 OK\r\nContent-Length: 0", False),
            (b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0", True),
        ]
        for head, keepAlive in cases:
            _, events = parse(head + b"\r\n\r\n")
            self.assertEqual(events.heads()[0].keepAlive, keepAlive, head)
            self.assertEqual(events.events[-1], ("end", keepAlive), head)

    def test_bytesAfterResponse(self) -> None:
        """
        Bytes after a complete response, unasked for, make the connection
        not reusable; they are not reported.
        """
        for response in [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiJUNK",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nJUNK",
            b"HTTP/1.1 204 No Content\r\n\r\nJUNK",
        ]:
            _, events = parse(response)
            self.assertEqual(events.events[-1], ("end", False), response)
            self.assertNotIn(b"JUNK", events.body())

    def test_sameContentLengthTwice(self) -> None:
        """
        Repeated identical Content-Length values are one length (RFC 9110
        section 8.6).
        """
        _, events = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertEqual(events.heads()[0].contentLength, 2)
        self.assertEqual(events.body(), b"hi")

    def test_nextResponse(self) -> None:
        """
        After L{ResponseParser.expect}, the same parser reads the next
        response; it may be called from C{responseEnd}.
        """
        response = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"
        events = Events()
        parser = ResponseParser(events)
        events.onEnd = lambda: parser.expect(b"GET")
        parser.expect(b"GET")
        parser.feed(response)
        parser.feed(response)
        self.assertEqual(events.kinds(), ["head", "data", "end"] * 2)


class SwitchTests(SynchronousTestCase):
    """
    A protocol switch is a final head for a tunnel's parser and an error
    for a pooled connection's.
    """

    def test_switchAllowed(self) -> None:
        """
        A 101 is a final head with L{Framing.SWITCH}; L{ResponseParser.detach}
        gives the bytes after it, and nothing more is reported.
        """
        parser, events = parse(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00",
            allowSwitch=True,
        )
        self.assertEqual(events.kinds(), ["head"])
        self.assertEqual(events.heads()[0].framing, Framing.SWITCH)
        self.assertEqual(events.heads()[0].keepAlive, False)
        parser.feed(b"more")
        self.assertEqual(parser.detach(), b"\x81\x00more")
        parser.feed(b"after")
        self.assertEqual(events.kinds(), ["head"])

    def test_connectSuccessSwitches(self) -> None:
        """
        A 2xx to CONNECT is a switch (RFC 9110 section 9.3.6); a 4xx is an
        ordinary response.
        """
        _, events = parse(
            b"HTTP/1.1 200 OK\r\n\r\nTLS", method=b"CONNECT", allowSwitch=True
        )
        self.assertEqual(events.heads()[0].framing, Framing.SWITCH)
        _, events = parse(
            b"HTTP/1.1 403 No\r\nContent-Length: 1\r\n\r\nx",
            method=b"CONNECT",
            allowSwitch=True,
        )
        self.assertEqual(events.heads()[0].framing, Framing.LENGTH)

    def test_switchRefused(self) -> None:
        """
        Without C{allowSwitch}, a 101 (or a 2xx to CONNECT) is a protocol
        error.
        """
        _, events = parse(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n")
        self.assertEqual(events.events, [("error", "unexpected protocol switch")])
        _, events = parse(b"HTTP/1.1 200 OK\r\n\r\n", method=b"CONNECT")
        self.assertEqual(events.events, [("error", "unexpected protocol switch")])


class DetachTests(SynchronousTestCase):
    """
    A receiver that detaches the parser hears nothing more.
    """

    def test_detachInHead(self) -> None:
        """
        Detached as the head is reported, the parser reports no body and
        gives back the bytes after the head.
        """
        events = Events()
        parser = ResponseParser(events)
        rest: list[bytes] = []
        events.onHead = lambda: rest.append(parser.detach())
        parser.expect(b"GET")
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
        parser.feed(b"lo")
        self.assertEqual(events.kinds(), ["head"])
        self.assertEqual(rest, [b"hel"])

    def test_detachInBody(self) -> None:
        """
        Detached in the middle of a chunked body, the parser reports no
        more chunks and no end.
        """
        events = Events()
        parser = ResponseParser(events)
        events.onData = parser.detach
        parser.expect(b"GET")
        parser.feed(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n1\r\nb\r\n0\r\n\r\n"
        )
        self.assertEqual(events.kinds(), ["head", "data"])

    def test_detachInNoBodyHead(self) -> None:
        """
        Detached as a body-less head is reported, the parser reports no end.
        """
        events = Events()
        parser = ResponseParser(events)
        events.onHead = parser.detach
        parser.expect(b"GET")
        parser.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(events.kinds(), ["head"])


BIG_HEAD = b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * MAX_RESPONSE_HEAD


class ErrorTests(SynchronousTestCase):
    """
    Malformed or ambiguous responses are protocol errors, with the reason
    the log line gives; the parser then stops.
    """

    def assertError(self, reason: str, *pieces: bytes, method: bytes = b"GET") -> None:
        parser, events = parse(*pieces, method=method)
        self.assertEqual(events.events[-1], ("error", reason), pieces[0][:60])
        self.assertEqual(events.kinds().count("error"), 1)
        # Stopped: nothing more is reported.
        count = len(events.events)
        parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(len(events.events), count)

    def test_badStatusLine(self) -> None:
        """
        A status line that is not C{HTTP/1.x NNN reason} is refused.
        """
        for head in [
            b"HTTP/1.1 2000 OK",
            b"HTTP/1.1 099 Low",
            b"HTTP/2 200 OK",
            b"HTTP/1.2 200 OK",
            b"ICY 200 OK",
            b"HTTP/1.1  200 OK",
            b"HTTP/1.1 200 OK\nX: y",
        ]:
            self.assertError("bad status line", head + b"\r\n\r\n")

    def test_malformedHead(self) -> None:
        """
        A header line that is not a token, a colon and a value, an
        obsolete fold, a bare CR or LF, or a NUL is refused.
        """
        for head in [
            b"Bad Header: x",
            b"NoColon",
            b": novalue",
            b"A: b\r\n folded",
            b"A: b\nC: d",
            b"A: b\rC: d",
            b"A: b\x00c",
        ]:
            self.assertError(
                "malformed response head", b"HTTP/1.1 200 OK\r\n" + head + b"\r\n\r\n"
            )

    def test_badContentLength(self) -> None:
        """
        Conflicting, negative, hexadecimal or empty lengths are refused.
        """
        for value in [b"5\r\nContent-Length: 6", b"5, 6", b"-1", b"0x10", b"", b"1 2"]:
            self.assertError(
                "bad Content-Length",
                b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n",
            )

    def test_lengthAndChunked(self) -> None:
        """
        Both Content-Length and Transfer-Encoding: refused (request
        smuggling).
        """
        self.assertError(
            "both Transfer-Encoding and Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
        )

    def test_badChunks(self) -> None:
        """
        A chunk size that is not hexadecimal (or too long), data longer
        than its size, and a chunk-size line that does not end are
        refused.
        """
        start = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        self.assertError("bad chunk size", start + b"zz\r\n")
        self.assertError("bad chunk size", start + b"\r\n")
        self.assertError("bad chunk size", start + b"-1\r\n")
        self.assertError("bad chunk size", start + b"1" * 17 + b"\r\n")
        self.assertError("chunk data longer than its size", start + b"2\r\nabc\r\n")
        self.assertError(
            "chunk header too long", start, b"1;" + b"x" * MAX_CHUNK_HEADER
        )

    def test_headTooLarge(self) -> None:
        """
        A head over L{MAX_RESPONSE_HEAD} is refused however its bytes
        arrive: at once, with its end, or in pieces.
        """
        self.assertError("response head too large", BIG_HEAD)
        self.assertError("response head too large", BIG_HEAD + b"\r\n\r\n")
        pieces = [BIG_HEAD[i : i + 4096] for i in range(0, len(BIG_HEAD), 4096)]
        self.assertError("response head too large", *pieces)

    def test_headAtTheLimit(self) -> None:
        """
        A head of exactly L{MAX_RESPONSE_HEAD} bytes is accepted.
        """
        start = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX: "
        head = start + b"a" * (MAX_RESPONSE_HEAD - len(start))
        _, events = parse(head + b"\r\n\r\n")
        self.assertEqual(events.kinds(), ["head", "end"])

    def test_dataWithoutRequest(self) -> None:
        """
        Bytes before any request was sent are an error.
        """
        events = Events()
        ResponseParser(events).feed(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(events.events, [("error", "data without a request")])


# A token for header names, a value without CR, LF, NUL or blanks at its ends.
_names = st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,12}\Z")
_values = st.from_regex(rb"\A([!-~]([ !-~]{0,20}[!-~])?)?\Z")


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, bytes, Framing]:
    """
    A valid response, its decoded body and its framing.
    """
    status = draw(st.sampled_from([200, 201, 203, 206, 404, 500, 503]))
    headers = [
        (name, value)
        for name, value in draw(st.lists(st.tuples(_names, _values), max_size=5))
        if name.lower() not in (b"content-length", b"transfer-encoding", b"connection")
    ]
    body = draw(st.binary(max_size=300))
    framing = draw(st.sampled_from([Framing.LENGTH, Framing.CHUNKED]))
    interim = draw(st.booleans())
    wire = b"HTTP/1.1 100 Continue\r\n\r\n" if interim else b""
    wire += b"HTTP/1.1 %d Reason here\r\n" % (status,)
    wire += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    if framing is Framing.LENGTH:
        wire += b"Content-Length: %d\r\n\r\n" % (len(body),) + body
        if not body:
            framing = Framing.NONE
    else:
        wire += b"Transfer-Encoding: chunked\r\n\r\n"
        sizes = draw(st.lists(st.integers(1, 64), max_size=10))
        rest = body
        for size in sizes:
            if not rest:
                break
            piece, rest = rest[:size], rest[size:]
            wire += b"%x\r\n%s\r\n" % (len(piece), piece)
        if rest:
            wire += b"%X;ext=1\r\n%s\r\n" % (len(rest), rest)
        wire += b"0\r\n"
        if draw(st.booleans()):
            wire += b"Trailer-Field: t\r\n"
        wire += b"\r\n"
    return wire, body, framing


class AnySplitTests(SynchronousTestCase):
    """
    However a response is cut into reads, the parser reports the same.
    """

    @given(responses(), st.data())
    def test_sameEventsWhateverTheSplit(
        self, response: tuple[bytes, bytes, Framing], data: st.DataObject
    ) -> None:
        """
        Arbitrary cuts give the same events (body pieces joined) as one
        read, and the body is what was sent.
        """
        wire, body, framing = response
        cuts = sorted(
            data.draw(st.lists(st.integers(1, len(wire) - 1), max_size=20, unique=True))
        )
        pieces = [
            wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)
        ]
        _, whole = parse(wire)
        _, split = parse(*pieces)
        self.assertEqual(split.merged(), whole.merged())
        self.assertEqual(whole.body(), body)
        self.assertEqual(whole.heads()[0].framing, framing)
        self.assertEqual(whole.events[-1], ("end", True))

    @given(st.binary(max_size=200), st.data())
    def test_garbageNeverRaises(self, garbage: bytes, data: st.DataObject) -> None:
        """
        Arbitrary bytes, however cut, give events or an error, never an
        exception, and at most one error.
        """
        cut = data.draw(st.integers(0, len(garbage)))
        _, events = parse(b"HTTP/1.1 200 OK\r\n" + garbage[:cut], garbage[cut:])
        self.assertLessEqual(events.kinds().count("error"), 1)


class RequestHeadTests(SynchronousTestCase):
    """
    L{formatRequestHead} writes an HTTP/1.1 request head.
    """

    def test_plain(self) -> None:
        """
        Request line, headers in order, blank line.
        """
        self.assertEqual(
            formatRequestHead(b"GET", b"/a?b", [(b"Host", b"x"), (b"A", b"1")]),
            b"GET /a?b HTTP/1.1\r\nHost: x\r\nA: 1\r\n\r\n",
        )

    def test_hostFirst(self) -> None:
        """
        A given C{host} is the first header.
        """
        self.assertEqual(
            formatRequestHead(b"GET", b"/", [(b"A", b"1")], host=b"[::1]:8080"),
            b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nA: 1\r\n\r\n",
        )

    def test_bodyFraming(self) -> None:
        """
        A Content-Length, or chunking, is the last header.
        """
        self.assertEqual(
            formatRequestHead(b"POST", b"/", [(b"A", b"1")], contentLength=0),
            b"POST / HTTP/1.1\r\nA: 1\r\nContent-Length: 0\r\n\r\n",
        )
        self.assertEqual(
            formatRequestHead(b"PUT", b"/", [], chunked=True),
            b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        )


class AuthorityTests(SynchronousTestCase):
    """
    L{formatAuthority} names a server as a C{Host} header does.
    """

    def test_defaultPortOmitted(self) -> None:
        """
        The scheme's default port is left out; any other is written.
        """
        self.assertEqual(formatAuthority("example.com", 80, "http"), b"example.com")
        self.assertEqual(formatAuthority("example.com", 443, "https"), b"example.com")
        self.assertEqual(
            formatAuthority("example.com", 443, "http"), b"example.com:443"
        )
        self.assertEqual(formatAuthority("example.com", 80, "https"), b"example.com:80")
        self.assertEqual(formatAuthority("127.0.0.1", 8001), b"127.0.0.1:8001")

    def test_ipv6Bracketed(self) -> None:
        """
        An IPv6 address is in brackets, given with them or not, with or
        without a port; a zone's C{%} is escaped (RFC 6874).
        """
        self.assertEqual(formatAuthority("::1", 8001, "http"), b"[::1]:8001")
        self.assertEqual(formatAuthority("::1", 443, "https"), b"[::1]")
        self.assertEqual(formatAuthority("[::1]", 80, "http"), b"[::1]")
        self.assertEqual(
            formatAuthority("fe80::1%eth0", 8080, "http"), b"[fe80::1%25eth0]:8080"
        )

    def test_idna(self) -> None:
        """
        A name that is not ASCII is written in its IDNA form, with or
        without a port.
        """
        self.assertEqual(
            formatAuthority("bücher.example", 80, "http"), b"xn--bcher-kva.example"
        )
        self.assertEqual(
            formatAuthority("bücher.example", 8080, "http"),
            b"xn--bcher-kva.example:8080",
        )
