"""
Tests for L{twisted_rproxy.static}: the pure decisions (ranges,
Accept-Encoding, entity tags, dates, types, path segments) without a
reactor, and L{StaticResource} over real HTTP on 127.0.0.1, both mounted in
a plain twisted.web L{Site} and behind the proxy's L{Router} and
L{ProxySite}.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.http import datetimeToString
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.fixtures import asyncTest
from tests.loopback import LOCALHOST, ParsedResponse, parseResponses, waitForQuiet
from twisted_rproxy.config import ServerConfig
from twisted_rproxy.rules.ranges import (
    assemble,
    ifRangeMatches,
    partialContent,
    requestedRanges,
)
from twisted_rproxy.server import ProxySite
from twisted_rproxy.static import (
    CHUNK_SIZE,
    MAX_RANGES,
    MIME_TYPES,
    StaticResource,
    chooseEncoding,
    contentTypeFor,
    etagMatches,
    parseAcceptEncoding,
    parseHTTPDate,
    parseRange,
    safeSegmentName,
)
from twisted_rproxy.tree import Route, Router

SECRET = b"TOPSECRET"

#: The global reactor, which the tests (never the code under test) use.
reactor: Any = _reactor


P = TypeVar("P", bound=Protocol)


def pattern(size: int) -> bytes:
    """
    C{size} bytes that differ from their neighbours, so that an offset
    mistake shows.
    """
    return bytes(i % 251 for i in range(size))


# Ranges


class ParseRangeTests(SynchronousTestCase):
    """
    Tests for L{parseRange}.
    """

    def test_single(self) -> None:
        """
        A closed range is returned as inclusive first and last positions.
        """
        self.assertEqual(parseRange(b"bytes=0-499", 1000), [(0, 499)])

    def test_open(self) -> None:
        """
        A range without a last position runs to the end.
        """
        self.assertEqual(parseRange(b"bytes=500-", 1000), [(500, 999)])

    def test_suffix(self) -> None:
        """
        A suffix range counts from the end; a longer one is the whole.
        """
        self.assertEqual(parseRange(b"bytes=-200", 1000), [(800, 999)])
        self.assertEqual(parseRange(b"bytes=-5000", 1000), [(0, 999)])

    def test_clampsLast(self) -> None:
        """
        A last position past the end is clamped.
        """
        self.assertEqual(parseRange(b"bytes=990-5000", 1000), [(990, 999)])

    def test_unsatisfiable(self) -> None:
        """
        Ranges starting at or past the end, and C{-0}, are unsatisfiable.
        """
        self.assertEqual(parseRange(b"bytes=1000-", 1000), [])
        self.assertEqual(parseRange(b"bytes=1000-2000, 3000-", 1000), [])
        self.assertEqual(parseRange(b"bytes=-0", 1000), [])
        self.assertEqual(parseRange(b"bytes=0-", 0), [])
        self.assertEqual(parseRange(b"bytes=-10", 0), [])

    def test_dropsUnsatisfiableMembers(self) -> None:
        """
        Satisfiable members are kept when others are not.
        """
        self.assertEqual(parseRange(b"bytes=2000-3000, 0-9", 1000), [(0, 9)])

    def test_malformedIgnored(self) -> None:
        """
        Malformed headers, other units and reversed ranges are ignored.
        """
        for header in [
            b"bytes=abc",
            b"bytes=5-2",
            b"items=0-1",
            b"bytes=",
            b"bytes=-",
            b"bytes 0-1",
            b"bytes=0-1-2",
            b"bytes=+1-2",
            b"bytes=0x1-2",
            b"bytes=1.5-2",
            b"bytes=0-1,x",
            b"=0-1",
            b"",
            b"bytes=\xff-1",
            b"bytes=0-1\n",
        ]:
            self.assertIsNone(parseRange(header, 1000), header)

    def test_syntaxLeniency(self) -> None:
        """
        The unit is case-insensitive; spaces and empty list members are
        allowed.
        """
        self.assertEqual(parseRange(b"Bytes = 0-1 , , 5 - 6 ,", 1000), [(0, 1), (5, 6)])

    def test_coalesces(self) -> None:
        """
        Overlapping and adjacent ranges are sorted and coalesced.
        """
        self.assertEqual(
            parseRange(b"bytes=50-99, 0-9, 5-20, 21-30, 100-100", 1000),
            [(0, 30), (50, 100)],
        )

    def test_tooManyRanges(self) -> None:
        """
        More than L{MAX_RANGES} ranges after coalescing are ignored, as many
        overlapping ones are served.
        """
        many = b",".join(b"%d-%d" % (i * 10, i * 10) for i in range(MAX_RANGES + 1))
        self.assertIsNone(parseRange(b"bytes=" + many, 1000))
        overlapping = b",".join(b"0-%d" % (i,) for i in range(100))
        self.assertEqual(parseRange(b"bytes=" + overlapping, 1000), [(0, 99)])
        self.assertIsNone(parseRange(b"bytes=" + b"0-1," * 300, 1000))

    def test_hugeNumbers(self) -> None:
        """
        Positions too long for an integer conversion are past any file.
        """
        huge = b"9" * 5000
        self.assertEqual(parseRange(b"bytes=" + huge + b"-", 1000), [])
        self.assertEqual(parseRange(b"bytes=0-" + huge, 1000), [(0, 999)])
        self.assertEqual(parseRange(b"bytes=-" + huge, 1000), [(0, 999)])

    @settings(max_examples=300, deadline=None)
    @given(
        size=st.integers(min_value=0, max_value=3000),
        specs=st.lists(
            st.tuples(
                st.sampled_from(["closed", "open", "suffix"]),
                st.integers(min_value=0, max_value=3500),
                st.integers(min_value=0, max_value=3500),
            ),
            min_size=1,
            max_size=24,
        ),
    )
    def test_matchesModel(self, size: int, specs: list[tuple[str, int, int]]) -> None:
        """
        The ranges cover exactly the bytes the specs ask for, sorted,
        disjoint and not touching, and slicing with them is byte-exact.
        """
        texts = []
        covered: set[int] = set()
        for kind, a, b in specs:
            if kind == "closed":
                first, last = min(a, b), max(a, b)
                texts.append(b"%d-%d" % (first, last))
                covered.update(range(first, min(last, size - 1) + 1))
            elif kind == "open":
                texts.append(b"%d-" % (a,))
                covered.update(range(a, size))
            else:
                texts.append(b"-%d" % (a,))
                covered.update(range(max(0, size - a), size) if a else ())
        result = parseRange(b"bytes=" + b", ".join(texts), size)
        if result is None:
            runs = 0
            previous = -2
            for position in sorted(covered):
                if position != previous + 1:
                    runs += 1
                previous = position
            self.assertGreater(runs, MAX_RANGES)
            return
        positions: list[int] = []
        for first, last in result:
            self.assertTrue(0 <= first <= last < size)
            positions.extend(range(first, last + 1))
        for (_, last), (first, _) in zip(result, result[1:], strict=False):
            self.assertGreater(first, last + 1)
        self.assertEqual(positions, sorted(covered))
        data = pattern(size)
        self.assertEqual(
            b"".join(data[first : last + 1] for first, last in result),
            bytes(data[p] for p in sorted(covered)),
        )

    @settings(max_examples=300, deadline=None)
    @given(header=st.binary(max_size=80), size=st.integers(0, 10**12))
    def test_neverRaises(self, header: bytes, size: int) -> None:
        """
        Any header gives L{None} or ranges inside the representation.
        """
        result = parseRange(b"bytes=" + header, size)
        if result is not None:
            self.assertLessEqual(len(result), MAX_RANGES)
            for first, last in result:
                self.assertTrue(0 <= first <= last < size)


class RangeServingTests(SynchronousTestCase):
    """
    Tests for the range serving that static files and the cache share:
    L{requestedRanges}, L{partialContent}, L{assemble}.
    """

    ETAG = b'"e1"'
    MODIFIED = 1_000_000

    def requested(
        self, ranges: list[bytes] | None, ifRange: list[bytes] | None = None
    ) -> list[tuple[int, int]] | None:
        return requestedRanges(ranges, ifRange, 100, self.ETAG, self.MODIFIED)

    def test_noRange(self) -> None:
        """
        Without a C{Range}, or with two C{Range} lines, the whole
        representation is served.
        """
        self.assertIsNone(self.requested(None))
        self.assertIsNone(self.requested([]))
        self.assertIsNone(self.requested([b"bytes=0-1", b"bytes=3-4"]))

    def test_ifRange(self) -> None:
        """
        C{If-Range} lets the range apply for the strong tag or the exact
        modification date only: not for a weak tag, another tag, a list,
        C{*}, another date or garbage.
        """
        self.assertEqual(self.requested([b"bytes=0-1"], [self.ETAG]), [(0, 1)])
        date = datetimeToString(self.MODIFIED)
        self.assertEqual(self.requested([b"bytes=0-1"], [date]), [(0, 1)])
        for condition in [
            b"W/" + self.ETAG,
            b'"other"',
            self.ETAG + b', "other"',
            b"*",
            datetimeToString(self.MODIFIED + 1),
            b"garbage",
        ]:
            self.assertIsNone(self.requested([b"bytes=0-1"], [condition]), condition)
        self.assertIsNone(self.requested([b"bytes=0-1"], [self.ETAG, b'"other"']))

    def test_ifRangeWithoutValidators(self) -> None:
        """
        A representation without an entity tag or a modification time
        matches no C{If-Range}.
        """
        self.assertFalse(ifRangeMatches(b'"e1"', None, None))
        self.assertFalse(ifRangeMatches(datetimeToString(0), None, None))
        self.assertFalse(ifRangeMatches(b'"e1"', b'W/"e1"', None))

    def test_single(self) -> None:
        """
        One range is served with its C{Content-Range}.
        """
        partial = partialContent([(10, 19)], 100, b"text/plain")
        self.assertEqual(partial.headers, [(b"Content-Range", b"bytes 10-19/100")])
        self.assertEqual((partial.pieces, partial.length), ([(10, 10)], 10))
        self.assertEqual(assemble(partial.pieces, pattern(100)), pattern(100)[10:20])

    def test_multipart(self) -> None:
        """
        Several ranges are a C{multipart/byteranges} body whose length is
        counted right; without a type, the parts have no C{Content-Type}.
        """
        data = pattern(100)
        partial = partialContent([(0, 1), (5, 6)], 100, b"text/plain", b"B")
        self.assertEqual(
            partial.headers, [(b"Content-Type", b"multipart/byteranges; boundary=B")]
        )
        body = assemble(partial.pieces, data)
        self.assertEqual(
            body,
            b"--B\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/100\r\n"
            b"\r\n" + data[0:2] + b"\r\n--B\r\nContent-Type: text/plain\r\n"
            b"Content-Range: bytes 5-6/100\r\n\r\n" + data[5:7] + b"\r\n--B--\r\n",
        )
        self.assertEqual(partial.length, len(body))
        untyped = partialContent([(0, 1), (5, 6)], 100, None, b"B")
        untypedBody = assemble(untyped.pieces, data)
        self.assertNotIn(b"Content-Type", untypedBody)
        self.assertEqual(untyped.length, len(untypedBody))


# Accept-Encoding


class AcceptEncodingTests(SynchronousTestCase):
    """
    Tests for L{parseAcceptEncoding} and L{chooseEncoding}.
    """

    def test_parse(self) -> None:
        """
        Codings are lowercased with their q-values; C{x-gzip} is C{gzip}.
        """
        self.assertEqual(
            parseAcceptEncoding(b"GZIP;q=0.5, br, identity;q=0, *;Q=0.001"),
            {"gzip": 0.5, "br": 1.0, "identity": 0.0, "*": 0.001},
        )
        self.assertEqual(parseAcceptEncoding(b"x-gzip"), {"gzip": 1.0})

    def test_parseSkipsInvalid(self) -> None:
        """
        Members with invalid q-values or codings are skipped.
        """
        self.assertEqual(
            parseAcceptEncoding(b"br;q=2, gzip;q=abc, deflate;q=0.1234, (x), zstd"),
            {"zstd": 1.0},
        )

    def test_brotliPreferred(self) -> None:
        """
        C{br} wins over C{gzip} at the same q-value, as browsers send them.
        """
        both = {"br", "gzip"}
        self.assertEqual(chooseEncoding(b"gzip, deflate, br", both), "br")
        self.assertEqual(chooseEncoding(b"gzip, deflate", both), "gzip")
        self.assertEqual(chooseEncoding(b"br", {"gzip"}), None)

    def test_qValues(self) -> None:
        """
        The highest q-value wins; q=0 refuses.
        """
        both = {"br", "gzip"}
        self.assertEqual(chooseEncoding(b"br;q=0.5, gzip", both), "gzip")
        self.assertEqual(chooseEncoding(b"br;q=0, gzip;q=0", both), None)
        self.assertEqual(chooseEncoding(b"br;q=0, gzip;q=0, identity;q=0", both), None)

    def test_star(self) -> None:
        """
        C{*} stands for the codings not named.
        """
        both = {"br", "gzip"}
        self.assertEqual(chooseEncoding(b"*", both), "br")
        self.assertEqual(chooseEncoding(b"*;q=0, gzip", both), "gzip")
        self.assertEqual(chooseEncoding(b"br;q=0, *", both), "gzip")

    def test_noHeader(self) -> None:
        """
        Without the header, or with an empty one, nothing is encoded.
        """
        self.assertIsNone(chooseEncoding(None, {"br", "gzip"}))
        self.assertIsNone(chooseEncoding(b"", {"br", "gzip"}))
        self.assertIsNone(chooseEncoding(b"gzip", set()))

    @settings(max_examples=200, deadline=None)
    @given(header=st.binary(max_size=60))
    def test_neverRaises(self, header: bytes) -> None:
        """
        Any header parses to q-values between 0 and 1.
        """
        for quality in parseAcceptEncoding(header).values():
            self.assertTrue(0.0 <= quality <= 1.0)
        self.assertIn(chooseEncoding(header, {"br", "gzip"}), ("br", "gzip", None))


# Entity tags, dates, types, segments


class ValidatorTests(SynchronousTestCase):
    """
    Tests for L{etagMatches} and L{parseHTTPDate}.
    """

    def test_etagWeakComparison(self) -> None:
        """
        The weak comparison ignores C{W/}; lists and C{*} match.
        """
        tag = b'"abc"'
        self.assertTrue(etagMatches(b'"abc"', tag, weak=True))
        self.assertTrue(etagMatches(b'W/"abc"', tag, weak=True))
        self.assertTrue(etagMatches(b'"x", W/"abc" ,"y"', tag, weak=True))
        self.assertTrue(etagMatches(b"*", tag, weak=True))
        self.assertFalse(etagMatches(b'"abcd"', tag, weak=True))
        self.assertFalse(etagMatches(b"abc", tag, weak=True))

    def test_etagStrongComparison(self) -> None:
        """
        The strong comparison never matches a weak tag.
        """
        tag = b'"abc"'
        self.assertTrue(etagMatches(b'"abc"', tag, weak=False))
        self.assertFalse(etagMatches(b'W/"abc"', tag, weak=False))

    def test_dates(self) -> None:
        """
        The three HTTP-date forms parse; anything else does not.
        """
        expected = 784111777
        self.assertEqual(parseHTTPDate(b"Sun, 06 Nov 1994 08:49:37 GMT"), expected)
        self.assertEqual(parseHTTPDate(b"Sunday, 06-Nov-94 08:49:37 GMT"), expected)
        self.assertEqual(parseHTTPDate(b"Sun Nov  6 08:49:37 1994"), expected)
        self.assertEqual(parseHTTPDate(datetimeToString(expected)), expected)
        for bad in [
            b"",
            b"yesterday",
            b"Sun, 06 Xyz 1994 08:49:37 GMT",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 25:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 CET",
            b"1994-11-06T08:49:37Z",
        ]:
            self.assertIsNone(parseHTTPDate(bad), bad)


class ContentTypeTests(SynchronousTestCase):
    """
    Tests for L{contentTypeFor} and L{MIME_TYPES}.
    """

    EXPECTED = {
        "a.html": "text/html; charset=utf-8",
        "a.htm": "text/html; charset=utf-8",
        "a.css": "text/css; charset=utf-8",
        "a.js": "text/javascript; charset=utf-8",
        "a.mjs": "text/javascript; charset=utf-8",
        "a.json": "application/json; charset=utf-8",
        "a.js.map": "application/json; charset=utf-8",
        "a.txt": "text/plain; charset=utf-8",
        "a.xml": "application/xml; charset=utf-8",
        "a.svg": "image/svg+xml",
        "a.png": "image/png",
        "a.jpg": "image/jpeg",
        "a.JPEG": "image/jpeg",
        "a.gif": "image/gif",
        "a.webp": "image/webp",
        "a.avif": "image/avif",
        "favicon.ico": "image/x-icon",
        "a.woff": "font/woff",
        "a.woff2": "font/woff2",
        "a.ttf": "font/ttf",
        "a.otf": "font/otf",
        "a.mp4": "video/mp4",
        "a.webm": "video/webm",
        "a.ogg": "audio/ogg",
        "a.ogv": "video/ogg",
        "a.oga": "audio/ogg",
        "a.mp3": "audio/mpeg",
        "a.wav": "audio/wav",
        "a.flac": "audio/flac",
        "a.m4a": "audio/mp4",
        "a.m4v": "video/mp4",
        "a.mov": "video/quicktime",
        "a.pdf": "application/pdf",
        "a.wasm": "application/wasm",
        "a.zip": "application/zip",
        "a.tar.gz": "application/gzip",
        "README": "application/octet-stream",
        "a.unknownext": "application/octet-stream",
        "dir.d/file": "application/octet-stream",
    }

    def test_table(self) -> None:
        """
        Every web, image, font, audio and video type is right.
        """
        for name, expected in self.EXPECTED.items():
            self.assertEqual(contentTypeFor(name), expected, name)

    def test_textTypesHaveCharset(self) -> None:
        """
        Every C{text/} type of the table says UTF-8.
        """
        for extension, value in MIME_TYPES.items():
            if value.startswith("text/"):
                self.assertTrue(value.endswith("; charset=utf-8"), extension)

    def test_overrides(self) -> None:
        """
        Given types win over the table, with compound extensions first.
        """
        overrides = {"js": "application/x-test", "tar.gz": "application/x-tgz"}
        self.assertEqual(contentTypeFor("a.js", overrides), "application/x-test")
        self.assertEqual(contentTypeFor("a.tar.gz", overrides), "application/x-tgz")
        self.assertEqual(contentTypeFor("a.gz", overrides), "application/gzip")


class SafeSegmentNameTests(SynchronousTestCase):
    """
    Tests for L{safeSegmentName}.
    """

    def test_ordinary(self) -> None:
        """
        Ordinary names, UTF-8 ones included, are accepted.
        """
        self.assertEqual(safeSegmentName(b"index.html"), "index.html")
        self.assertEqual(safeSegmentName("caf\u00e9.txt".encode()), "caf\u00e9.txt")
        self.assertEqual(safeSegmentName(b"a..b"), "a..b")

    def test_refused(self) -> None:
        """
        Everything that could leave a directory or name a hidden file is
        refused.
        """
        for segment in [
            b"",
            b".",
            b"..",
            b".env",
            b"a/b",
            b"..\\..",
            b"a\x00b",
            b"a\nb",
            b"\xc0\xae\xc0\xae",
            b"\xe0\x80\xae",
            b"\xed\xa0\x80",
            b"C:",
            b"c:windows",
        ]:
            self.assertIsNone(safeSegmentName(segment), segment)

    def test_hiddenAllowed(self) -> None:
        """
        C{allowHidden} lets hidden names through, never C{..}.
        """
        self.assertEqual(safeSegmentName(b".well-known", True), ".well-known")
        self.assertIsNone(safeSegmentName(b"..", True))
        self.assertIsNone(safeSegmentName(b".", True))

    def test_windows(self) -> None:
        """
        On Windows, colons, trailing dots and spaces and device names are
        refused too.
        """
        for segment in [b"ab:c", b"file.txt.", b"file.txt ", b"NUL", b"com1.txt"]:
            self.assertIsNone(safeSegmentName(segment, windows=True), segment)
            self.assertIsNotNone(safeSegmentName(segment, windows=False), segment)


# Loopback


class _Collector(Protocol):
    """
    Collects everything received until the connection closes.
    """

    transport: Any

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(b"".join(self.chunks))


class _Download(Protocol):
    """
    Receives one response and hashes its body as it arrives, keeping
    nothing of it.
    """

    transport: Any

    def __init__(self) -> None:
        self.head = b""
        self.status = 0
        self.length: int | None = None
        self.received = 0
        self.digest = hashlib.sha256()
        self.done: Deferred[_Download] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self.length is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.status = int(head.split(b" ", 2)[1])
            found = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            self.length = int(found.group(1)) if found else 0
        self.received += len(data)
        self.digest.update(data)
        if self.received >= self.length:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(self)


class _RecordingFile(io.FileIO):
    """
    A file that records the size of every read, and whether it was closed.
    """

    def __init__(self, fd: int, reads: list[int], files: list[_RecordingFile]) -> None:
        super().__init__(fd, "rb", closefd=True)
        self.reads = reads
        files.append(self)

    def read(self, size: int | None = -1) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)


class _RecordingResource(StaticResource):
    """
    A L{StaticResource} whose files record their reads.
    """

    def __init__(self, root: str, **options: Any) -> None:
        super().__init__(root, **options)
        self.reads: list[int] = []
        self.files: list[_RecordingFile] = []

    def openFile(self, path: str) -> Any:
        opened = super().openFile(path)
        fd = os.dup(opened.fileno())
        opened.close()
        return _RecordingFile(fd, self.reads, self.files)


def buildTree(base: str) -> str:
    """
    The served tree under C{base}/www, with secrets beside it.

    @return: The path of the served root.
    """
    www = os.path.join(base, "www")
    outside = os.path.join(base, "outside")
    for directory in [
        www,
        outside,
        os.path.join(www, "sub"),
        os.path.join(www, "files"),
        os.path.join(www, "files", "inner"),
        os.path.join(www, ".git"),
        os.path.join(www, "empty"),
    ]:
        os.makedirs(directory, exist_ok=True)
    files = {
        "outside.txt": SECRET + b" outside the root\n",
        "outside/secret.txt": SECRET + b" in a directory outside\n",
        "www/index.html": b"<h1>home</h1>\n",
        "www/hello.txt": b"hello world\n",
        "www/data.bin": pattern(10000),
        "www/sub/index.html": b"<h1>sub</h1>\n",
        "www/sub/page.html": b"<p>page</p>\n",
        "www/files/a.txt": b"a\n",
        "www/files/<b>&x.txt": b"escaped\n",
        "www/files/.hidden.txt": SECRET + b"\n",
        "www/.env": b"PASSWORD=" + SECRET + b"\n",
        "www/.git/config": b"[core] " + SECRET + b"\n",
        "www/app.js": b"console.log('identity');\n" * 10,
        "www/app.js.br": b"brotli bytes " * 7,
        "www/app.js.gz": b"gzip bytes " * 9,
        "www/style.css": b"body { color: red }\n" * 10,
        "www/style.css.gz": b"gzipped css " * 5,
        "www/photo.png": b"\x89PNG fake",
        "www/font.woff2": b"wOF2 fake",
        "www/clip.webm": b"webm fake",
        "www/page.htm": b"<p>htm</p>",
        "www/empty.txt": b"",
    }
    for name, content in files.items():
        with open(os.path.join(base, name), "wb") as f:
            f.write(content)
    os.symlink("/etc", os.path.join(www, "link-etc"))
    os.symlink(os.path.join(base, "outside.txt"), os.path.join(www, "link-secret"))
    os.symlink("../outside", os.path.join(www, "link-outside-dir"))
    os.symlink("hello.txt", os.path.join(www, "link-inside.txt"))
    os.mkfifo(os.path.join(www, "fifo.txt"))
    return www


#: Requests that try to leave the root or reach hidden files: each must get a
#: 404 that shows nothing of what it targets (nor whether it exists).
ATTACKS: Sequence[bytes] = [
    b"/../etc/passwd",
    b"/../outside.txt",
    b"/..%2f..%2fetc/passwd",
    b"/..%2F..%2Foutside.txt",
    b"/%2e%2e/%2e%2e/etc/passwd",
    b"/%2e%2e/outside.txt",
    b"/%2e%2e%2foutside.txt",
    b"/.%2e/outside.txt",
    b"/./../outside.txt",
    b"/sub/../../outside.txt",
    b"/sub%2f..%2f..%2foutside.txt",
    b"/../../../../../../../../etc/passwd",
    b"/..",
    b"/..\\..\\windows",
    b"/..\\outside.txt",
    b"/..%5c..%5coutside.txt",
    b"/%5cetc%5cpasswd",
    b"/%2fetc%2fpasswd",
    b"//etc/passwd",
    b"/sub//../../outside.txt",
    b"/%00",
    b"/a%00.txt",
    b"/hello.txt%00.html",
    b"/.git/config",
    b"/%2egit/config",
    b"/.env",
    b"/%2eenv",
    b"/files/.hidden.txt",
    b"/link-etc/passwd",
    b"/link-etc/",
    b"/link-secret",
    b"/link-outside-dir/secret.txt",
    b"/C:/Windows/win.ini",
    b"/c:%5cwindows%5cwin.ini",
    b"/%c0%ae%c0%ae/outside.txt",
    b"/%c0%ae%c0%ae%c0%afoutside.txt",
    b"/%e0%80%ae%e0%80%ae/outside.txt",
    b"/%252e%252e/outside.txt",
    b"/%252e%252e%252foutside.txt",
    b"/fifo.txt",
    b"/hello.txt/",
    b"/hello.txt/..",
]


async def connect(port: int, protocolClass: type[P]) -> P:
    """
    Connect a new C{protocolClass} to 127.0.0.1:C{port}.
    """
    endpoint = TCP4ClientEndpoint(reactor, LOCALHOST, port, timeout=5)
    protocol = await endpoint.connect(Factory.forProtocol(protocolClass))
    return cast(P, protocol)


class LoopbackMixin:
    """
    Serves a L{StaticResource} on 127.0.0.1 and talks raw HTTP/1.1 to it.
    """

    addCleanup: Callable[..., None]
    mktemp: Callable[[], str]

    def makeRoot(self) -> str:
        base = os.path.abspath(self.mktemp())
        os.makedirs(base)
        return buildTree(base)

    def listen(self, resource: Any, proxy: bool = False) -> int:
        """
        Serve C{resource} as the root of a plain L{Site}, or behind the
        proxy's router under C{/static/} in a L{ProxySite}.
        """
        self.addCleanup(lambda: Deferred.fromCoroutine(waitForQuiet(reactor)))
        if proxy:
            router = Router(
                [
                    Route(
                        path=b"/static/",
                        host=None,
                        resource=resource,
                        maxBodySize=1024,
                        requestBuffering=True,
                    )
                ]
            )
            factory: Site = ProxySite(router, ServerConfig(), reactor)
        else:
            factory = Site(resource)
        factory.noisy = False
        port = reactor.listenTCP(0, factory, interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    async def exchange(self, port: int, data: bytes, timeout: float = 10) -> bytes:
        """
        Send C{data}, and collect everything until the server closes.
        """
        protocol = await connect(port, _Collector)
        self.addCleanup(protocol.transport.abortConnection)
        protocol.transport.write(data)
        done = protocol.done
        done.addTimeout(timeout, reactor)
        received: bytes = await done
        return received

    async def fetch(
        self,
        port: int,
        target: bytes,
        headers: Sequence[tuple[bytes, bytes]] = (),
        method: bytes = b"GET",
    ) -> ParsedResponse:
        """
        One request on its own connection, and its response.
        """
        lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: localhost"]
        lines += [name + b": " + value for name, value in headers]
        lines += [b"Connection: close", b"", b""]
        received = await self.exchange(port, b"\r\n".join(lines))
        responses, rest = parseResponses(received, [method], closed=True)
        assert len(responses) == 1 and not rest, received[:500]
        return responses[0]


def header(response: ParsedResponse, name: bytes) -> bytes | None:
    values = response.header(name)
    assert len(values) <= 1, (name, values)
    return values[0] if values else None


class TraversalTests(LoopbackMixin, TestCase):
    """
    Nothing outside the root, and nothing hidden, is ever served.
    """

    async def assertRefused(self, port: int, prefix: bytes) -> None:
        for attack in ATTACKS:
            response = await self.fetch(port, prefix + attack)
            self.assertEqual(response.status, 404, attack)
            self.assertNotIn(SECRET, response.raw, attack)
            self.assertNotIn(b"root:", response.raw, attack)
            self.assertNotIn(b"hello world", response.body, attack)

    def test_enoughAttacks(self) -> None:
        """
        The list covers at least twenty ways out.
        """
        self.assertGreaterEqual(len(ATTACKS), 20)

    @asyncTest
    async def test_refusedAtSiteRoot(self) -> None:
        """
        Mounted at the root of a plain Site, every attack gets a 404.
        """
        port = self.listen(StaticResource(self.makeRoot()))
        await self.assertRefused(port, b"")
        # And the same tree serves what it should.
        response = await self.fetch(port, b"/hello.txt")
        self.assertEqual((response.status, response.body), (200, b"hello world\n"))

    @asyncTest
    async def test_refusedBehindRouter(self) -> None:
        """
        Behind the proxy's router under C{/static/}, every attack gets a
        404.
        """
        port = self.listen(StaticResource(self.makeRoot()), proxy=True)
        await self.assertRefused(port, b"/static")
        response = await self.fetch(port, b"/static/hello.txt")
        self.assertEqual((response.status, response.body), (200, b"hello world\n"))
        response = await self.fetch(port, b"/static/sub?x=1")
        self.assertEqual(response.status, 301)
        self.assertEqual(header(response, b"location"), b"/static/sub/?x=1")

    @asyncTest
    async def test_encodedSeparatorBeforeResource(self) -> None:
        """
        An encoded slash, backslash or NUL anywhere in the raw path is
        refused, even in segments the resources above consumed.
        """
        root = Resource()
        root.putChild(b"pre/fix", StaticResource(self.makeRoot()))
        root.putChild(b"pre", StaticResource(self.makeRoot()))
        port = self.listen(root)
        response = await self.fetch(port, b"/pre/hello.txt")
        self.assertEqual(response.status, 200)
        for target in [b"/pre%2Ffix/hello.txt", b"/pre%2ffix/hello.txt"]:
            response = await self.fetch(port, target)
            self.assertEqual(response.status, 404, target)

    @asyncTest
    async def test_absoluteFormTarget(self) -> None:
        """
        A request target in absolute form does not reach outside.
        """
        port = self.listen(StaticResource(self.makeRoot()))
        for target in [
            b"http://localhost/../outside.txt",
            b"http://localhost/%2e%2e/outside.txt",
            b"file:///etc/passwd",
        ]:
            response = await self.fetch(port, target)
            self.assertIn(response.status, (400, 404), target)
            self.assertNotIn(SECRET, response.raw)

    @asyncTest
    async def test_symlinkInside(self) -> None:
        """
        A symbolic link that stays in the root is followed.
        """
        port = self.listen(StaticResource(self.makeRoot()))
        response = await self.fetch(port, b"/link-inside.txt")
        self.assertEqual((response.status, response.body), (200, b"hello world\n"))
        self.assertEqual(
            header(response, b"content-type"), b"text/plain; charset=utf-8"
        )

    @asyncTest
    async def test_followSymlinksOutside(self) -> None:
        """
        With C{followSymlinksOutside}, links out of the root are followed,
        while C{..} is still refused.
        """
        port = self.listen(StaticResource(self.makeRoot(), followSymlinksOutside=True))
        response = await self.fetch(port, b"/link-outside-dir/secret.txt")
        self.assertEqual(response.status, 200)
        self.assertIn(SECRET, response.body)
        response = await self.fetch(port, b"/../outside.txt")
        self.assertEqual(response.status, 404)

    @asyncTest
    async def test_hiddenAllowed(self) -> None:
        """
        With C{allowHidden}, hidden names are served, and C{..} is not.
        """
        port = self.listen(StaticResource(self.makeRoot(), allowHidden=True))
        response = await self.fetch(port, b"/.git/config")
        self.assertEqual(response.status, 200)
        response = await self.fetch(port, b"/%2e%2e/outside.txt")
        self.assertEqual(response.status, 404)


class ServingTests(LoopbackMixin, TestCase):
    """
    Files, directories, methods, types and caching headers.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot()
        self.port = self.listen(StaticResource(self.root))

    @asyncTest
    async def test_file(self) -> None:
        """
        A file is served with its length, type and validators.
        """
        response = await self.fetch(self.port, b"/data.bin")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, pattern(10000))
        self.assertEqual(header(response, b"content-length"), b"10000")
        self.assertEqual(header(response, b"content-type"), b"application/octet-stream")
        self.assertEqual(header(response, b"accept-ranges"), b"bytes")
        info = os.stat(os.path.join(self.root, "data.bin"))
        self.assertEqual(
            header(response, b"etag"),
            b'"%x-%x-%x"' % (info.st_ino, info.st_mtime_ns, info.st_size),
        )
        self.assertEqual(
            header(response, b"last-modified"), datetimeToString(int(info.st_mtime))
        )
        self.assertIsNone(header(response, b"vary"))
        self.assertIsNone(header(response, b"cache-control"))

    @asyncTest
    async def test_emptyFile(self) -> None:
        """
        An empty file is a 200 with no body.
        """
        response = await self.fetch(self.port, b"/empty.txt")
        self.assertEqual((response.status, response.body), (200, b""))
        self.assertEqual(header(response, b"content-length"), b"0")

    @asyncTest
    async def test_contentTypes(self) -> None:
        """
        Served files carry the type of their extension.
        """
        for target, expected in [
            (b"/index.html", b"text/html; charset=utf-8"),
            (b"/page.htm", b"text/html; charset=utf-8"),
            (b"/app.js", b"text/javascript; charset=utf-8"),
            (b"/style.css", b"text/css; charset=utf-8"),
            (b"/photo.png", b"image/png"),
            (b"/font.woff2", b"font/woff2"),
            (b"/clip.webm", b"video/webm"),
        ]:
            response = await self.fetch(self.port, target)
            self.assertEqual(header(response, b"content-type"), expected, target)

    @asyncTest
    async def test_head(self) -> None:
        """
        HEAD gets the headers of GET and no body.
        """
        get = await self.fetch(self.port, b"/data.bin")
        head = await self.fetch(self.port, b"/data.bin", method=b"HEAD")
        self.assertEqual(head.status, 200)
        self.assertEqual(head.body, b"")
        for name in [b"content-length", b"content-type", b"etag", b"last-modified"]:
            self.assertEqual(header(head, name), header(get, name), name)
        raw = await self.exchange(
            self.port,
            b"HEAD /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        self.assertTrue(raw.endswith(b"\r\n\r\n"))

    @asyncTest
    async def test_methodNotAllowed(self) -> None:
        """
        Other methods than GET and HEAD get a 405 with C{Allow}.
        """
        for method in [b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]:
            response = await self.fetch(
                self.port, b"/hello.txt", [(b"Content-Length", b"0")], method
            )
            self.assertEqual(response.status, 405, method)
            self.assertEqual(header(response, b"allow"), b"GET, HEAD")

    @asyncTest
    async def test_index(self) -> None:
        """
        A directory is served by its C{index.html}.
        """
        response = await self.fetch(self.port, b"/")
        self.assertEqual((response.status, response.body), (200, b"<h1>home</h1>\n"))
        self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")
        response = await self.fetch(self.port, b"/sub/")
        self.assertEqual((response.status, response.body), (200, b"<h1>sub</h1>\n"))

    @asyncTest
    async def test_directoryRedirect(self) -> None:
        """
        A directory without its slash is redirected to it with a 301,
        keeping the query string.
        """
        response = await self.fetch(self.port, b"/sub?a=1&b=%2F")
        self.assertEqual(response.status, 301)
        self.assertEqual(header(response, b"location"), b"/sub/?a=1&b=%2F")
        response = await self.fetch(self.port, b"/files/inner")
        self.assertEqual(header(response, b"location"), b"/files/inner/")
        os.mkdir(os.path.join(self.root, "caf\u00e9"))
        response = await self.fetch(self.port, b"/caf%C3%A9")
        self.assertEqual(response.status, 301)
        self.assertEqual(header(response, b"location"), b"/caf%C3%A9/")
        response = await self.fetch(self.port, b"//sub")
        self.assertEqual(response.status, 404)

    @asyncTest
    async def test_fileWithSlash(self) -> None:
        """
        A file named with a trailing slash is not found.
        """
        response = await self.fetch(self.port, b"/hello.txt/")
        self.assertEqual(response.status, 404)

    @asyncTest
    async def test_notFoundPage(self) -> None:
        """
        A missing file gets the proxy's 404 page.
        """
        response = await self.fetch(self.port, b"/missing.txt")
        self.assertEqual(response.status, 404)
        self.assertIn(b"<h1>404 Not Found</h1>", response.body)
        self.assertEqual(header(response, b"cache-control"), b"no-store")

    @asyncTest
    async def test_listingOff(self) -> None:
        """
        Directories without an index are not listed by default.
        """
        for target in [b"/files/", b"/empty/"]:
            response = await self.fetch(self.port, target)
            self.assertEqual(response.status, 404, target)
            self.assertNotIn(b"a.txt", response.body)

    @asyncTest
    async def test_listingOn(self) -> None:
        """
        With C{listDirectories}, a listing links every visible entry, with
        names escaped, and leaves out hidden ones.
        """
        port = self.listen(StaticResource(self.root, listDirectories=True))
        response = await self.fetch(port, b"/files/")
        self.assertEqual(response.status, 200)
        self.assertEqual(header(response, b"content-type"), b"text/html; charset=utf-8")
        body = response.body
        self.assertIn(b'<a href="inner/">inner/</a>', body)
        self.assertIn(b'<a href="a.txt">a.txt</a>', body)
        self.assertIn(b'<a href="%3Cb%3E%26x.txt">&lt;b&gt;&amp;x.txt</a>', body)
        self.assertNotIn(b"<b>", body)
        self.assertNotIn(b"hidden", body)
        response = await self.fetch(port, b"/")
        self.assertEqual(response.body, b"<h1>home</h1>\n")
        response = await self.fetch(port, b"/")
        listing = await self.fetch(
            self.listen(StaticResource(self.root, listDirectories=True, index=())),
            b"/",
        )
        self.assertNotIn(b"link-etc", listing.body)
        self.assertNotIn(b"link-secret", listing.body)
        self.assertNotIn(b".env", listing.body)
        self.assertIn(b"link-inside.txt", listing.body)

    @asyncTest
    async def test_cacheControl(self) -> None:
        """
        The route's C{Cache-Control} applies unless the extension has its
        own; C{Expires} follows C{max-age} by the given clock.
        """
        clock = Clock()
        clock.advance(1_000_000)
        port = self.listen(
            StaticResource(
                self.root,
                cacheControl="public, max-age=600",
                cacheControlByExtension={".html": "no-cache", "woff2": "max-age=99"},
                reactor=clock,
            )
        )
        response = await self.fetch(port, b"/hello.txt")
        self.assertEqual(header(response, b"cache-control"), b"public, max-age=600")
        self.assertEqual(header(response, b"expires"), datetimeToString(1_000_600))
        response = await self.fetch(port, b"/index.html")
        self.assertEqual(header(response, b"cache-control"), b"no-cache")
        self.assertIsNone(header(response, b"expires"))
        response = await self.fetch(port, b"/font.woff2")
        self.assertEqual(header(response, b"cache-control"), b"max-age=99")
        self.assertEqual(header(response, b"expires"), datetimeToString(1_000_099))

    def test_badHeaderValues(self) -> None:
        """
        Header values that are not printable ASCII are refused at once.
        """
        self.assertRaises(ValueError, StaticResource, self.root, cacheControl="a\r\nb")
        self.assertRaises(
            ValueError, StaticResource, self.root, mimeTypes={"x": "text/\u00e9"}
        )
        self.assertRaises(ValueError, StaticResource, self.root, index=("../x",))

    @asyncTest
    async def test_mimeTypes(self) -> None:
        """
        Given types win over the built-in table.
        """
        port = self.listen(StaticResource(self.root, mimeTypes={".TXT": "text/x-test"}))
        response = await self.fetch(port, b"/hello.txt")
        self.assertEqual(header(response, b"content-type"), b"text/x-test")

    @asyncTest
    async def test_pipelined(self) -> None:
        """
        Several requests on one connection are answered in order.
        """
        data = (
            b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /data.bin HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n"
            b"HEAD /index.html HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /sub/page.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        received = await self.exchange(self.port, data)
        responses, rest = parseResponses(
            received, [b"GET", b"GET", b"HEAD", b"GET"], closed=True
        )
        self.assertEqual(
            [(r.status, r.body) for r in responses],
            [
                (200, b"hello world\n"),
                (206, pattern(10)),
                (200, b""),
                (200, b"<p>page</p>\n"),
            ],
        )
        self.assertEqual(rest, b"")


class ConditionalTests(LoopbackMixin, TestCase):
    """
    Validators and conditional requests.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot()
        self.port = self.listen(StaticResource(self.root, cacheControl="max-age=60"))

    async def validators(self) -> tuple[bytes, bytes]:
        response = await self.fetch(self.port, b"/hello.txt")
        etag, modified = header(response, b"etag"), header(response, b"last-modified")
        assert etag is not None and modified is not None
        return etag, modified

    def assertNotModified(self, response: ParsedResponse, etag: bytes) -> None:
        self.assertEqual(response.status, 304)
        self.assertEqual(response.body, b"")
        self.assertEqual(header(response, b"etag"), etag)
        self.assertIsNotNone(header(response, b"last-modified"))
        self.assertEqual(header(response, b"cache-control"), b"max-age=60")
        self.assertIsNone(header(response, b"content-length"))
        self.assertIsNone(header(response, b"transfer-encoding"))

    @asyncTest
    async def test_ifNoneMatch(self) -> None:
        """
        A matching C{If-None-Match} (one tag, a list, weak, C{*}) gets a 304
        with the validators and no body.
        """
        etag, _ = await self.validators()
        for value in [etag, b'"other", ' + etag, b"W/" + etag, b"*"]:
            for method in [b"GET", b"HEAD"]:
                response = await self.fetch(
                    self.port, b"/hello.txt", [(b"If-None-Match", value)], method
                )
                self.assertNotModified(response, etag)
        response = await self.fetch(
            self.port, b"/hello.txt", [(b"If-None-Match", b'"other"')]
        )
        self.assertEqual((response.status, response.body), (200, b"hello world\n"))

    @asyncTest
    async def test_ifModifiedSince(self) -> None:
        """
        C{If-Modified-Since} at or after the modification gets a 304; before
        it, or unparsable, the file.
        """
        etag, modified = await self.validators()
        response = await self.fetch(
            self.port, b"/hello.txt", [(b"If-Modified-Since", modified)]
        )
        self.assertNotModified(response, etag)
        earlier = datetimeToString(parseHTTPDate(modified) - 10)  # type: ignore[operator]
        for value in [earlier, b"garbage"]:
            response = await self.fetch(
                self.port, b"/hello.txt", [(b"If-Modified-Since", value)]
            )
            self.assertEqual(response.status, 200, value)

    @asyncTest
    async def test_ifNoneMatchWinsOverIfModifiedSince(self) -> None:
        """
        C{If-Modified-Since} is ignored when C{If-None-Match} is present.
        """
        _, modified = await self.validators()
        response = await self.fetch(
            self.port,
            b"/hello.txt",
            [(b"If-None-Match", b'"other"'), (b"If-Modified-Since", modified)],
        )
        self.assertEqual(response.status, 200)

    @asyncTest
    async def test_ifMatch(self) -> None:
        """
        A failing C{If-Match} or C{If-Unmodified-Since} gets a 412.
        """
        etag, modified = await self.validators()
        response = await self.fetch(self.port, b"/hello.txt", [(b"If-Match", etag)])
        self.assertEqual(response.status, 200)
        for name, value in [
            (b"If-Match", b'"other"'),
            (b"If-Match", b"W/" + etag),
            (b"If-Unmodified-Since", datetimeToString(1000)),
        ]:
            response = await self.fetch(self.port, b"/hello.txt", [(name, value)])
            self.assertEqual(response.status, 412, (name, value))

    @asyncTest
    async def test_changedFile(self) -> None:
        """
        Rewriting a file changes its entity tag.
        """
        etag, _ = await self.validators()
        path = os.path.join(self.root, "hello.txt")
        with open(path, "wb") as f:
            f.write(b"HELLO WORLD\n")
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1000))
        response = await self.fetch(
            self.port, b"/hello.txt", [(b"If-None-Match", etag)]
        )
        self.assertEqual((response.status, response.body), (200, b"HELLO WORLD\n"))
        self.assertNotEqual(header(response, b"etag"), etag)


def parseMultipart(response: ParsedResponse) -> list[tuple[bytes, bytes, bytes]]:
    """
    The parts of a C{multipart/byteranges} body: type, range and bytes.
    """
    contentType = header(response, b"content-type")
    assert contentType is not None
    match = re.fullmatch(rb"multipart/byteranges; boundary=([0-9a-f]+)", contentType)
    assert match is not None, contentType
    boundary = match.group(1)
    body = response.body
    assert body.startswith(b"--" + boundary + b"\r\n"), body[:100]
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n"), body[-100:]
    inner = body[len(boundary) + 4 : -(len(boundary) + 8)]
    parts = []
    for part in inner.split(b"\r\n--" + boundary + b"\r\n"):
        head, _, data = part.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n"))
        parts.append((fields[b"Content-Type"], fields[b"Content-Range"], data))
    return parts


class RangeTests(LoopbackMixin, TestCase):
    """
    Byte ranges over HTTP, checked byte for byte against the file.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot()
        self.port = self.listen(StaticResource(self.root))
        self.data = pattern(10000)

    async def ranged(
        self, value: bytes, extra: Sequence[tuple[bytes, bytes]] = ()
    ) -> ParsedResponse:
        return await self.fetch(self.port, b"/data.bin", [(b"Range", value), *extra])

    @asyncTest
    async def test_single(self) -> None:
        """
        One range is a 206 with its C{Content-Range} and bytes.
        """
        for value, first, last in [
            (b"bytes=0-0", 0, 0),
            (b"bytes=100-199", 100, 199),
            (b"bytes=9000-", 9000, 9999),
            (b"bytes=-500", 9500, 9999),
            (b"bytes=9990-20000", 9990, 9999),
            (b"bytes=0-", 0, 9999),
        ]:
            response = await self.ranged(value)
            self.assertEqual(response.status, 206, value)
            self.assertEqual(
                header(response, b"content-range"),
                b"bytes %d-%d/10000" % (first, last),
            )
            self.assertEqual(
                header(response, b"content-length"), b"%d" % (last - first + 1,)
            )
            self.assertEqual(response.body, self.data[first : last + 1], value)
            self.assertEqual(
                header(response, b"content-type"), b"application/octet-stream"
            )

    @asyncTest
    async def test_multiple(self) -> None:
        """
        Several ranges are a 206 C{multipart/byteranges} body whose parts
        hold the right bytes, with a correct C{Content-Length}.
        """
        response = await self.ranged(b"bytes=0-9, 5000-5099, -10, 20-29")
        self.assertEqual(response.status, 206)
        self.assertIsNone(header(response, b"content-range"))
        self.assertEqual(
            header(response, b"content-length"), b"%d" % len(response.body)
        )
        parts = parseMultipart(response)
        self.assertEqual(
            parts,
            [
                (b"application/octet-stream", b"bytes 0-9/10000", self.data[0:10]),
                (b"application/octet-stream", b"bytes 20-29/10000", self.data[20:30]),
                (
                    b"application/octet-stream",
                    b"bytes 5000-5099/10000",
                    self.data[5000:5100],
                ),
                (
                    b"application/octet-stream",
                    b"bytes 9990-9999/10000",
                    self.data[9990:],
                ),
            ],
        )
        other = await self.ranged(b"bytes=0-9, 5000-5099, -10, 20-29")
        self.assertNotEqual(
            header(response, b"content-type"), header(other, b"content-type")
        )

    @asyncTest
    async def test_overlappingCoalesced(self) -> None:
        """
        Overlapping ranges are served once, as one range.
        """
        response = await self.ranged(b"bytes=0-99, 50-149, 150-199")
        self.assertEqual(response.status, 206)
        self.assertEqual(header(response, b"content-range"), b"bytes 0-199/10000")
        self.assertEqual(response.body, self.data[:200])

    @asyncTest
    async def test_unsatisfiable(self) -> None:
        """
        Ranges past the end get a 416 with C{Content-Range: bytes */size}.
        """
        for value in [b"bytes=10000-", b"bytes=20000-30000", b"bytes=-0"]:
            response = await self.ranged(value)
            self.assertEqual(response.status, 416, value)
            self.assertEqual(header(response, b"content-range"), b"bytes */10000")

    @asyncTest
    async def test_malformedIgnored(self) -> None:
        """
        A malformed C{Range} or one with too many ranges gets the whole
        file.
        """
        many = b",".join(b"%d-%d" % (i * 10, i * 10) for i in range(MAX_RANGES + 1))
        for value in [b"bytes=abc", b"bytes=9-1", b"lines=1-2", b"bytes=" + many]:
            response = await self.ranged(value)
            self.assertEqual(response.status, 200, value)
            self.assertEqual(response.body, self.data)

    @asyncTest
    async def test_ifRange(self) -> None:
        """
        C{If-Range} honours the range only for the current strong tag or
        the exact modification date; otherwise the whole file is sent.
        """
        full = await self.fetch(self.port, b"/data.bin")
        etag, modified = header(full, b"etag"), header(full, b"last-modified")
        assert etag is not None and modified is not None
        for value, status in [
            (etag, 206),
            (modified, 206),
            (b'"stale"', 200),
            (b"W/" + etag, 200),
            (datetimeToString(1000), 200),
            (b"garbage", 200),
        ]:
            response = await self.ranged(b"bytes=10-19", [(b"If-Range", value)])
            self.assertEqual(response.status, status, value)
            expected = self.data[10:20] if status == 206 else self.data
            self.assertEqual(response.body, expected)

    @asyncTest
    async def test_headRange(self) -> None:
        """
        HEAD with a range gets the headers of the 206 and no body.
        """
        response = await self.fetch(
            self.port, b"/data.bin", [(b"Range", b"bytes=10-19")], b"HEAD"
        )
        self.assertEqual(response.status, 206)
        self.assertEqual(header(response, b"content-length"), b"10")
        self.assertEqual(response.body, b"")

    @asyncTest
    async def test_videoSequence(self) -> None:
        """
        A browser's video requests, C{bytes=0-} then a seek with
        C{bytes=1000000-}, on a 2 MB MP4 get 206s with the right bytes.
        """
        video = os.urandom(2 * 1024 * 1024)
        with open(os.path.join(self.root, "movie.mp4"), "wb") as f:
            f.write(video)
        size = len(video)
        for value, first in [(b"bytes=0-", 0), (b"bytes=1000000-", 1000000)]:
            response = await self.fetch(self.port, b"/movie.mp4", [(b"Range", value)])
            self.assertEqual(response.status, 206)
            self.assertEqual(header(response, b"content-type"), b"video/mp4")
            self.assertEqual(header(response, b"accept-ranges"), b"bytes")
            self.assertEqual(
                header(response, b"content-range"),
                b"bytes %d-%d/%d" % (first, size - 1, size),
            )
            self.assertEqual(
                header(response, b"content-length"), b"%d" % (size - first)
            )
            self.assertTrue(response.body == video[first:])


class PrecompressedTests(LoopbackMixin, TestCase):
    """
    Precompressed C{.br} and C{.gz} siblings.
    """

    def setUp(self) -> None:
        self.root = self.makeRoot()
        self.port = self.listen(StaticResource(self.root))

    def read(self, name: str) -> bytes:
        with open(os.path.join(self.root, name), "rb") as f:
            return f.read()

    async def get(self, target: bytes, acceptEncoding: bytes | None) -> ParsedResponse:
        headers = (
            [] if acceptEncoding is None else [(b"Accept-Encoding", acceptEncoding)]
        )
        return await self.fetch(self.port, target, headers)

    @asyncTest
    async def test_selection(self) -> None:
        """
        C{br} is preferred when accepted, C{gzip} otherwise, the file itself
        when neither is; C{Vary} is always there.
        """
        for acceptEncoding, coding, name in [
            (b"gzip, deflate, br", b"br", "app.js.br"),
            (b"br;q=1.0, gzip;q=0.8", b"br", "app.js.br"),
            (b"gzip, deflate", b"gzip", "app.js.gz"),
            (b"br;q=0, *", b"gzip", "app.js.gz"),
            (b"br;q=0, gzip;q=0", None, "app.js"),
            (b"identity", None, "app.js"),
            (None, None, "app.js"),
        ]:
            response = await self.get(b"/app.js", acceptEncoding)
            self.assertEqual(response.status, 200, acceptEncoding)
            self.assertEqual(header(response, b"content-encoding"), coding)
            self.assertEqual(response.body, self.read(name), acceptEncoding)
            self.assertEqual(header(response, b"vary"), b"Accept-Encoding")
            self.assertEqual(
                header(response, b"content-type"), b"text/javascript; charset=utf-8"
            )

    @asyncTest
    async def test_gzipOnly(self) -> None:
        """
        A file with only a C{.gz} sibling gets it even for a client that
        prefers C{br}.
        """
        response = await self.get(b"/style.css", b"br, gzip")
        self.assertEqual(header(response, b"content-encoding"), b"gzip")
        self.assertEqual(response.body, self.read("style.css.gz"))

    @asyncTest
    async def test_noSiblingNoVary(self) -> None:
        """
        A file without siblings has no C{Vary}.
        """
        response = await self.get(b"/hello.txt", b"gzip, br")
        self.assertIsNone(header(response, b"vary"))
        self.assertIsNone(header(response, b"content-encoding"))

    @asyncTest
    async def test_distinctETags(self) -> None:
        """
        Each representation has its own entity tag, and C{If-None-Match}
        compares with the one selected.
        """
        tags = {}
        for acceptEncoding in [b"br", b"gzip", None]:
            response = await self.get(b"/app.js", acceptEncoding)
            tags[acceptEncoding] = header(response, b"etag")
        self.assertEqual(len(set(tags.values())), 3)
        self.assertTrue(tags[b"br"].endswith(b'-br"'))  # type: ignore[union-attr]
        self.assertTrue(tags[b"gzip"].endswith(b'-gz"'))  # type: ignore[union-attr]
        etag = tags[b"br"]
        assert etag is not None
        response = await self.fetch(
            self.port,
            b"/app.js",
            [(b"Accept-Encoding", b"br"), (b"If-None-Match", etag)],
        )
        self.assertEqual(response.status, 304)
        self.assertEqual(header(response, b"vary"), b"Accept-Encoding")
        response = await self.fetch(
            self.port,
            b"/app.js",
            [(b"Accept-Encoding", b"gzip"), (b"If-None-Match", etag)],
        )
        self.assertEqual(response.status, 200)

    @asyncTest
    async def test_rangeOfEncoded(self) -> None:
        """
        Ranges apply to the encoded bytes.
        """
        encoded = self.read("app.js.br")
        response = await self.fetch(
            self.port,
            b"/app.js",
            [(b"Accept-Encoding", b"br"), (b"Range", b"bytes=5-14")],
        )
        self.assertEqual(response.status, 206)
        self.assertEqual(header(response, b"content-encoding"), b"br")
        self.assertEqual(
            header(response, b"content-range"), b"bytes 5-14/%d" % (len(encoded),)
        )
        self.assertEqual(response.body, encoded[5:15])

    @asyncTest
    async def test_siblingDirectly(self) -> None:
        """
        A sibling asked for by name is a plain file of its own type.
        """
        response = await self.get(b"/app.js.gz", b"gzip")
        self.assertEqual(header(response, b"content-type"), b"application/gzip")
        self.assertIsNone(header(response, b"content-encoding"))


class StreamingTests(LoopbackMixin, TestCase):
    """
    Bodies are streamed in bounded chunks and files are closed.
    """

    timeout = 60

    def setUp(self) -> None:
        self.root = self.makeRoot()
        self.resource = _RecordingResource(self.root)
        self.port = self.listen(self.resource)

    @asyncTest
    async def test_concurrentDownloads(self) -> None:
        """
        Fifty concurrent downloads of a 20 MB file complete byte-exact,
        never reading more than one chunk at a time, and close every file.
        """
        size = 20 * 1024 * 1024
        content = os.urandom(size)
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(content)
        expected = hashlib.sha256(content).hexdigest()
        del content
        downloads: list[_Download] = []
        for _ in range(50):
            download = await connect(self.port, _Download)
            self.addCleanup(download.transport.abortConnection)
            downloads.append(download)
        for download in downloads:
            download.transport.write(
                b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
        waiting = gatherResults([d.done for d in downloads])
        waiting.addTimeout(50, reactor)
        await waiting
        for download in downloads:
            self.assertEqual(download.status, 200)
            self.assertEqual(download.received, size)
            self.assertEqual(download.digest.hexdigest(), expected)
        self.assertEqual(len(self.resource.files), 50)
        self.assertTrue(all(0 < read <= CHUNK_SIZE for read in self.resource.reads))
        self.assertGreaterEqual(len(self.resource.reads), 50 * size // CHUNK_SIZE)
        await self.waitUntilClosed()

    async def waitUntilClosed(self) -> None:
        for _ in range(300):
            if all(f.closed for f in self.resource.files):
                return
            await deferLater(reactor, 0.01, lambda: None)
        self.fail("files left open")

    @asyncTest
    async def test_disconnectClosesFile(self) -> None:
        """
        A client that goes away mid-download has its file closed and no
        more read.
        """
        with open(os.path.join(self.root, "big.bin"), "wb") as f:
            f.write(b"x" * (32 * 1024 * 1024))
        download = await connect(self.port, _Download)
        download.transport.pauseProducing()
        download.transport.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(300):
            if self.resource.reads:
                break
            await deferLater(reactor, 0.01, lambda: None)
        await deferLater(reactor, 0.1, lambda: None)
        readsBefore = len(self.resource.reads)
        self.assertLess(readsBefore * CHUNK_SIZE, 32 * 1024 * 1024)
        download.transport.abortConnection()
        await download.done
        await self.waitUntilClosed()
        await deferLater(reactor, 0.1, lambda: None)
        self.assertLessEqual(len(self.resource.reads), readsBefore + 1)

    @asyncTest
    async def test_shrunkFileClosesConnection(self) -> None:
        """
        A file that gets shorter while it is sent ends the connection
        early, rather than hanging or sending other bytes, and is closed.
        """
        path = os.path.join(self.root, "big.bin")
        size = 32 * 1024 * 1024
        with open(path, "wb") as f:
            f.write(b"x" * size)
        download = await connect(self.port, _Download)
        download.transport.pauseProducing()
        download.transport.write(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(300):
            if self.resource.reads:
                break
            await deferLater(reactor, 0.01, lambda: None)
        await deferLater(reactor, 0.1, lambda: None)
        os.truncate(path, 0)
        download.transport.resumeProducing()
        waiting = download.done
        waiting.addTimeout(10, reactor)
        await waiting
        self.assertEqual(download.status, 200)
        self.assertLess(download.received, size)
        await self.waitUntilClosed()

    @asyncTest
    async def test_notModifiedAndHeadCloseFiles(self) -> None:
        """
        Responses without a body close the file they opened.
        """
        await self.fetch(self.port, b"/hello.txt", method=b"HEAD")
        await self.fetch(self.port, b"/hello.txt", [(b"If-None-Match", b"*")])
        await self.fetch(self.port, b"/data.bin", [(b"Range", b"bytes=99999-")])
        self.assertEqual(len(self.resource.files), 3)
        self.assertTrue(all(f.closed for f in self.resource.files))
        self.assertEqual(self.resource.reads, [])
