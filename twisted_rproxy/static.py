"""
Static files: L{StaticResource} serves one directory, in place of
L{twisted.web.static.File}, with what a reverse proxy in front of browsers
needs and nothing that could leak what lies outside the directory.

It refuses every way out of its root (C{..}, encoded slashes and
backslashes, NUL bytes, drive letters, overlong UTF-8, symbolic links that
leave the root) and hidden files with the same 404 page as a missing file;
answers conditional requests (C{If-None-Match}, C{If-Modified-Since},
C{If-Match}, C{If-Unmodified-Since}, C{If-Range}) from a strong ETag and the
modification time; serves single and multiple byte ranges; picks
precompressed C{.br} and C{.gz} siblings by the client's
C{Accept-Encoding}; and streams bodies in chunks of L{CHUNK_SIZE} bytes with
a pull producer, so that a file is never read whole into memory.

The decisions are pure functions of data, tested without a reactor:
L{parseRange}, L{parseAcceptEncoding}, L{chooseEncoding}, L{etagMatches},
L{parseHTTPDate}, L{contentTypeFor}, L{safeSegmentName}.

File reads are ordinary blocking reads in the reactor thread, as in
twisted.web's own L{File}: one chunk at a time, from the page cache for
files that are read often.
"""

from __future__ import annotations

import calendar
import html
import io
import os
import re
import secrets
import stat
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import BinaryIO, cast
from urllib.parse import quote

from twisted.internet.interfaces import IPullProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from twisted_rproxy.pages import errorBody, renderError

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_INDEX",
    "MAX_RANGES",
    "MIME_TYPES",
    "StaticResource",
    "chooseEncoding",
    "contentTypeFor",
    "etagMatches",
    "makeETag",
    "parseAcceptEncoding",
    "parseHTTPDate",
    "parseRange",
    "safeSegmentName",
]

_log = Logger()

CHUNK_SIZE = 64 * 1024
"""
The most bytes read from a file, and written to the client, at a time.
"""

MAX_RANGES = 16
"""
The most byte ranges served in one response, after overlapping and adjacent
ranges are coalesced.  A C{Range} header asking for more is ignored and the
whole file is served (200), as Apache does: a legitimate client gets what it
needs, and a request for thousands of tiny ranges costs no more than one for
the whole file.
"""

_MAX_RANGE_SPECS = 256
"""
A C{Range} header with more elements than this is ignored without being
parsed further.
"""

DEFAULT_INDEX = ("index.html",)
"""
The names of the file served for a directory, in order of preference.
"""

_DEFAULT_TYPE = "application/octet-stream"
_UTF8 = "; charset=utf-8"

MIME_TYPES: Mapping[str, str] = {
    # Web documents and code.
    "html": "text/html" + _UTF8,
    "htm": "text/html" + _UTF8,
    "xhtml": "application/xhtml+xml" + _UTF8,
    "css": "text/css" + _UTF8,
    "js": "text/javascript" + _UTF8,
    "mjs": "text/javascript" + _UTF8,
    "cjs": "text/javascript" + _UTF8,
    "json": "application/json" + _UTF8,
    "map": "application/json" + _UTF8,
    "jsonld": "application/ld+json" + _UTF8,
    "webmanifest": "application/manifest+json" + _UTF8,
    "txt": "text/plain" + _UTF8,
    "text": "text/plain" + _UTF8,
    "md": "text/markdown" + _UTF8,
    "csv": "text/csv" + _UTF8,
    "xml": "application/xml" + _UTF8,
    "rss": "application/rss+xml" + _UTF8,
    "atom": "application/atom+xml" + _UTF8,
    "vtt": "text/vtt" + _UTF8,
    "ics": "text/calendar" + _UTF8,
    "wasm": "application/wasm",
    # Images.
    "svg": "image/svg+xml",
    "png": "image/png",
    "apng": "image/apng",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "avif": "image/avif",
    "ico": "image/x-icon",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
    # Fonts.
    "woff": "font/woff",
    "woff2": "font/woff2",
    "ttf": "font/ttf",
    "otf": "font/otf",
    # Video.
    "mp4": "video/mp4",
    "m4v": "video/mp4",
    "webm": "video/webm",
    "ogv": "video/ogg",
    "mov": "video/quicktime",
    "mkv": "video/x-matroska",
    "mpeg": "video/mpeg",
    "mpg": "video/mpeg",
    "avi": "video/x-msvideo",
    "ts": "video/mp2t",
    "m3u8": "application/vnd.apple.mpegurl",
    # Audio.
    "ogg": "audio/ogg",
    "oga": "audio/ogg",
    "opus": "audio/ogg",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "flac": "audio/flac",
    "m4a": "audio/mp4",
    "aac": "audio/aac",
    "weba": "audio/webm",
    # Documents and archives.
    "pdf": "application/pdf",
    "zip": "application/zip",
    "gz": "application/gzip",
    "tgz": "application/gzip",
    "tar": "application/x-tar",
    "bz2": "application/x-bzip2",
    "xz": "application/x-xz",
    "7z": "application/x-7z-compressed",
}
"""
The built-in table of C{Content-Type} values by file extension (lowercase,
without the dot).  It does not depend on the machine's C{/etc/mime.types}:
the same file gets the same type everywhere.  Textual types carry
C{charset=utf-8}.
"""

# Precompressed siblings, in order of preference on equal q-values.
_SIBLINGS: Sequence[tuple[str, str]] = (("br", ".br"), ("gzip", ".gz"))
_ETAG_SUFFIX: Mapping[str, str] = {"br": "-br", "gzip": "-gz"}

_WINDOWS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(10)]
    + [f"lpt{i}" for i in range(10)]
)
_DRIVE = re.compile(r"[A-Za-z]:")
_RAW_FORBIDDEN = (b"\x00", b"\\", b"%00", b"%2f", b"%5c")
_UNSAFE_IN_LOCATION = re.compile(rb"[^\x21-\x7e]")


def safeSegmentName(
    segment: bytes, allowHidden: bool = False, windows: bool = os.name == "nt"
) -> str | None:
    """
    The file name one path segment names, if it is safe to join to a
    directory: L{None} for anything that could leave the directory or name
    something refused.

    Refused: the empty segment, C{.} and C{..}; hidden names (starting with
    C{.}) unless C{allowHidden}; anything holding C{/}, C{\\}, NUL or another
    control character (after percent-decoding, which twisted.web did to
    C{request.postpath} already); bytes that are not strict UTF-8 (overlong
    forms such as C{%c0%ae} among them); a leading drive letter (C{C:}).
    On Windows also any C{:} (drive letters, alternate data streams), a
    trailing dot or space, and device names such as C{NUL} or C{COM1}.

    @param segment: One percent-decoded path segment.
    @param allowHidden: Whether names starting with C{.} are allowed
        (C{.} and C{..} never are).
    @param windows: Whether to apply Windows' rules too.
    @return: The name, or L{None}.
    """
    if segment in (b"", b".", b".."):
        return None
    if segment.startswith(b".") and not allowHidden:
        return None
    if any(byte < 0x20 or byte == 0x7F or byte in b"/\\" for byte in segment):
        return None
    try:
        name = segment.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if _DRIVE.match(name):
        return None
    if windows:
        if ":" in name or name[-1] in ". ":
            return None
        if name.split(".", 1)[0].rstrip(" ").lower() in _WINDOWS_DEVICES:
            return None
    return name


def _extensionLookup(name: str, table: Mapping[str, str]) -> str | None:
    """
    The value of C{table} for the longest compound extension of C{name}
    (C{tar.gz} before C{gz}), if any.
    """
    parts = name.lower().split(".")
    for start in range(1, len(parts)):
        value = table.get(".".join(parts[start:]))
        if value is not None:
            return value
    return None


def _normalizeExtensions(table: Mapping[str, str] | None, what: str) -> dict[str, str]:
    """
    C{table} with its keys lowercased and without a leading dot, its values
    checked to be header-safe ASCII.

    @raise ValueError: For a value that cannot be a header value.
    """
    result: dict[str, str] = {}
    for key, value in (table or {}).items():
        _checkHeaderValue(value, what)
        result[key.lower().lstrip(".")] = value
    return result


def _checkHeaderValue(value: str, what: str) -> None:
    """
    @raise ValueError: If C{value} is not printable ASCII.
    """
    if not value.isascii() or not value.isprintable():
        raise ValueError(f"{what} must be printable ASCII: {value!r}")


def contentTypeFor(name: str, mimeTypes: Mapping[str, str] | None = None) -> str:
    """
    The C{Content-Type} of a file, from its name.

    @param name: The file name (or path).
    @param mimeTypes: Extra or overriding entries (lowercase extensions
        without the dot), looked up before L{MIME_TYPES}.
    @return: The type, C{application/octet-stream} when unknown.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if mimeTypes:
        found = _extensionLookup(base, mimeTypes)
        if found is not None:
            return found
    return _extensionLookup(base, MIME_TYPES) or _DEFAULT_TYPE


def makeETag(info: os.stat_result, suffix: str = "") -> bytes:
    """
    A strong entity tag for a file's content as it is now.

    It is made of the inode, the modification time in nanoseconds and the
    size: a file replaced by another of the same size and time (by a rename,
    as deployments do) gets a new inode, hence a new tag.  Several servers
    sharing one set of files through copies (not one file system) would
    each have their own tags; drop the inode there if that matters.

    @param info: The file's L{os.stat_result}.
    @param suffix: Distinguishes encoded representations (C{"-br"}).
    @return: The quoted tag, such as C{b'"2a1-17f3c2d1e0a4b800-1f4-br"'}.
    """
    return b'"%x-%x-%x%s"' % (
        info.st_ino,
        info.st_mtime_ns,
        info.st_size,
        suffix.encode("ascii"),
    )


_ETAG = re.compile(rb'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def etagMatches(header: bytes, etag: bytes, weak: bool) -> bool:
    """
    Whether an C{If-Match} or C{If-None-Match} value matches an entity tag.

    @param header: The field value: C{*} or a list of entity tags (several
        header lines joined with commas).
    @param etag: The current strong tag, quoted.
    @param weak: Use the weak comparison (C{If-None-Match}): C{W/"x"}
        matches C{"x"}.  Otherwise the strong one (C{If-Match},
        C{If-Range}): a weak tag matches nothing.
    @return: Whether any member matches.
    """
    stripped = header.strip(b" \t")
    if stripped == b"*":
        return True
    position = 0
    while position < len(stripped):
        if stripped[position : position + 1] in (b",", b" ", b"\t"):
            position += 1
            continue
        match = _ETAG.match(stripped, position)
        if match is None:
            return False
        isWeak, opaque = match.group(1), match.group(2)
        if opaque == etag and (weak or not isWeak):
            return True
        position = match.end()
    return False


_MONTHS = {
    name: number
    for number, name in enumerate(
        [b"jan", b"feb", b"mar", b"apr", b"may", b"jun"]
        + [b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"],
        start=1,
    )
}
_IMF_DATE = re.compile(
    rb"[A-Za-z]{3}, (\d\d) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT"
)
_RFC850_DATE = re.compile(
    rb"[A-Za-z]{6,9}, (\d\d)-([A-Za-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) GMT"
)
_ASCTIME_DATE = re.compile(
    rb"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})"
)


def parseHTTPDate(value: bytes) -> int | None:
    """
    Seconds since the epoch of an HTTP-date in any of the three forms of
    RFC 9110 section 5.6.7 (C{Sun, 06 Nov 1994 08:49:37 GMT}, the obsolete
    RFC 850 and asctime forms).

    @param value: The field value.
    @return: The time, or L{None} if C{value} is not a valid HTTP-date.
    """
    value = value.strip(b" \t")
    match = _IMF_DATE.fullmatch(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
        fullYear = int(year)
    else:
        match = _RFC850_DATE.fullmatch(value)
        if match is not None:
            day, month, year, hour, minute, second = match.groups()
            # RFC 9110: a two-digit year more than 50 years in the future
            # is in the past century.
            fullYear = 2000 + int(year)
            if fullYear > time.gmtime().tm_year + 50:
                fullYear -= 100
        else:
            match = _ASCTIME_DATE.fullmatch(value)
            if match is None:
                return None
            month, day, hour, minute, second, year = match.groups()
            fullYear = int(year)
    monthNumber = _MONTHS.get(month.lower())
    if monthNumber is None:
        return None
    fields = (int(day), int(hour), int(minute), int(second))
    if not (1 <= fields[0] <= 31 and fields[1] < 24 and fields[2] < 60):
        return None
    if fields[3] > 60:
        return None
    return calendar.timegm((fullYear, monthNumber, *fields, 0, 0, 0))


_RANGE_SPEC = re.compile(rb"[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*")
_HUGE = 2**63


def _position(digits: bytes) -> int:
    """
    The value of a run of ASCII digits; more than 18 of them count as a
    position past any file (Python refuses to convert very long ones).
    """
    return int(digits) if len(digits) <= 18 else _HUGE


def parseRange(header: bytes, size: int) -> list[tuple[int, int]] | None:
    """
    The byte ranges a C{Range} header asks of a representation of C{size}
    bytes (RFC 9110 section 14).

    Ranges are clamped to the representation (C{bytes=500-} and
    C{bytes=0-99999} on a 1000-byte file are C{(500, 999)} and
    C{(0, 999)}), suffix ranges count from its end (C{bytes=-500}), those
    that start at or past its end are dropped, and what is left is sorted
    and coalesced where ranges overlap or touch.

    @param header: The field value, such as C{b"bytes=0-499, -500"}.
    @param size: The length of the representation, in bytes.
    @return: L{None} when the header must be ignored (and the whole
        representation served): another unit than C{bytes}, invalid
        syntax, a range whose last position is before its first, more
        than L{MAX_RANGES} ranges after coalescing.  An empty list when no
        range is satisfiable (416).  Otherwise the ranges as C{(first,
        last)} byte positions, both inclusive as in C{Content-Range}.
    """
    unit, equals, rest = header.partition(b"=")
    if not equals or unit.strip(b" \t").lower() != b"bytes":
        return None
    elements = rest.split(b",")
    if len(elements) > _MAX_RANGE_SPECS:
        return None
    ranges: list[tuple[int, int]] = []
    specs = 0
    for element in elements:
        if not element.strip(b" \t"):
            # RFC 9110 section 5.6.1: empty list elements are allowed.
            continue
        specs += 1
        match = _RANGE_SPEC.fullmatch(element)
        if match is None:
            return None
        first, last = match.groups()
        if not first:
            if not last:
                return None
            suffix = _position(last)
            if suffix > 0 and size > 0:
                ranges.append((max(0, size - suffix), size - 1))
            continue
        start = _position(first)
        end = _position(last) if last else _HUGE
        if end < start:
            return None
        if start < size:
            ranges.append((start, min(end, size - 1)))
    if not specs:
        return None
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    if len(merged) > MAX_RANGES:
        return None
    return merged


_QVALUE = re.compile(rb"(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def parseAcceptEncoding(header: bytes) -> dict[str, float]:
    """
    The content codings of an C{Accept-Encoding} value with their
    q-values (RFC 9110 section 12.5.3).

    Codings are lowercased, C{x-gzip} is taken for C{gzip}; a member with
    an invalid coding or q-value is skipped; when a coding appears twice,
    the first counts.

    @param header: The field value (several header lines joined with
        commas), such as C{b"gzip;q=0.5, br, *;q=0"}.
    @return: Each coding (C{"*"} included) with its q-value, from 0 to 1.
    """
    result: dict[str, float] = {}
    for member in header.split(b","):
        coding, *parameters = member.split(b";")
        coding = coding.strip(b" \t").lower()
        if not coding:
            continue
        if _TOKEN.fullmatch(coding) is None:
            continue
        quality = 1.0
        valid = True
        for parameter in parameters:
            name, _, value = parameter.partition(b"=")
            if name.strip(b" \t").lower() != b"q":
                continue
            value = value.strip(b" \t")
            if _QVALUE.fullmatch(value) is None:
                valid = False
                break
            quality = float(value)
        if not valid:
            continue
        codingName = coding.decode("ascii")
        if codingName == "x-gzip":
            codingName = "gzip"
        result.setdefault(codingName, quality)
    return result


def chooseEncoding(header: bytes | None, available: Collection[str]) -> str | None:
    """
    The content coding to serve, among those a file has a precompressed
    sibling for.

    The acceptable codings are those with a q-value above 0, given by name
    or else by C{*}; the one with the highest q-value wins, C{br} before
    C{gzip} on a tie.  Without an acceptable one the file is served as it
    is, even when the client refuses C{identity} (RFC 9110 section 12.5.3
    allows it, and a 406 helps nobody).

    @param header: The C{Accept-Encoding} value, L{None} without one (no
        coding is then chosen: clients that can decode say so).
    @param available: The codings (C{"br"}, C{"gzip"}) there are siblings
        for.
    @return: The coding, or L{None} for the file itself.
    """
    if header is None or not available:
        return None
    accepted = parseAcceptEncoding(header)
    best: str | None = None
    bestQuality = 0.0
    for coding, _ in _SIBLINGS:
        if coding not in available:
            continue
        quality = accepted.get(coding, accepted.get("*", 0.0))
        if quality > bestQuality:
            best, bestQuality = coding, quality
    return best


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
_NO_EXPIRES = re.compile(r"\b(?:no-store|no-cache|private)\b", re.IGNORECASE)


def _expiresFor(cacheControl: str, now: float) -> bytes | None:
    """
    The C{Expires} value matching a C{Cache-Control} value's C{max-age}, for
    HTTP/1.0 caches; L{None} when it has none or forbids shared caching.
    """
    if _NO_EXPIRES.search(cacheControl):
        return None
    match = _MAX_AGE.search(cacheControl)
    if match is None or len(match.group(1)) > 10:
        return None
    result: bytes = datetimeToString(int(now) + int(match.group(1)))
    return result


def _header(request: IRequest, name: bytes) -> bytes | None:
    """
    A request header's lines joined with commas, L{None} without any.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return b", ".join(values)


def _renderPage(
    request: IRequest,
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    contentType: bytes = b"text/html; charset=utf-8",
) -> None:
    """
    Answer C{request} with a small page and finish it: the proxy's error
    page for C{status} (as L{renderError}), with C{headers} added, such as
    C{Allow} on a 405.
    """
    if body is None:
        body = errorBody(status)
    request.setResponseCode(status)
    responseHeaders = request.responseHeaders
    for name, _ in list(responseHeaders.getAllRawHeaders()):
        if name.lower() not in (b"date", b"server", b"connection"):
            responseHeaders.removeHeader(name)
    responseHeaders.setRawHeaders(b"content-type", [contentType])
    responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
    if status >= 400:
        responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    for name, value in headers:
        responseHeaders.setRawHeaders(name, [value])
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


_Piece = bytes | tuple[int, int]


@implementer(IPullProducer)
class _FileProducer:
    """
    Writes the pieces of a response body to a request, at most
    L{CHUNK_SIZE} bytes of the file at a time, then finishes the request.

    A piece is literal bytes (the parts' headers of a multipart body) or
    C{(offset, length)} of the file.  The file is closed when the body is
    written, when the client goes away, or when the file turns out shorter
    than it was (the connection is then closed: the response cannot be
    completed).
    """

    def __init__(
        self, request: Request, file: BinaryIO, pieces: list[_Piece], chunkSize: int
    ) -> None:
        self._request = request
        self._file: BinaryIO | None = file
        self._pieces = pieces
        self._chunkSize = chunkSize
        self._position = -1

    def start(self) -> None:
        """
        Register with the request and stream from the next reactor turns.
        """
        self._request.notifyFinish().addBoth(self._requestDone)
        self._request.registerProducer(self, False)

    def _requestDone(self, result: object) -> None:
        # Fired when the request is finished or its connection is lost; the
        # failure of a lost connection is handled here.
        self.stopProducing()

    def resumeProducing(self) -> None:
        file = self._file
        if file is None:
            return
        output: list[bytes] = []
        pieces = self._pieces
        while pieces:
            piece = pieces[0]
            if isinstance(piece, bytes):
                output.append(piece)
                del pieces[0]
                continue
            offset, length = piece
            wanted = min(length, self._chunkSize)
            try:
                if self._position != offset:
                    file.seek(offset)
                data = file.read(wanted)
            except OSError as e:
                _log.error("Cannot read a static file: {error}", error=e)
                data = b""
            if not data:
                self._abort()
                return
            self._position = offset + len(data)
            if len(data) == length:
                del pieces[0]
            else:
                pieces[0] = (offset + len(data), length - len(data))
            output.append(data)
            break
        if output:
            self._request.write(b"".join(output))
        if self._file is None:
            # Writing lost the connection.
            return
        if not pieces:
            self.stopProducing()
            self._request.unregisterProducer()
            self._request.finish()

    def _abort(self) -> None:
        """
        Give up a body that cannot be completed: the file got shorter.
        """
        _log.warn("A static file changed size while it was served")
        self.stopProducing()
        self._request.unregisterProducer()
        channel = getattr(self._request, "channel", None)
        if channel is not None:
            channel.loseConnection()

    def stopProducing(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


class StaticResource(Resource):
    """
    The files under one directory, served for GET and HEAD.

    It is a leaf: what is left of the path (C{request.postpath}) names the
    file, whichever resource handed the request over (the proxy's router
    after a route's prefix, or any twisted.web tree it is mounted in).

    Responses carry C{ETag}, C{Last-Modified}, C{Accept-Ranges: bytes} and
    the configured C{Cache-Control} (and C{Expires} from its C{max-age}).
    Everything refused, missing or hidden gets the same 404 page.

    @ivar root: The directory served, as given.
    @ivar index: The names of the file served for a directory.
    @ivar listDirectories: Whether a directory without an index file gets
        an HTML listing (otherwise 404).
    @ivar allowHidden: Whether names starting with C{.} are served.
    @ivar followSymlinksOutside: Whether symbolic links that lead out of
        the root are followed.
    @ivar cacheControl: The C{Cache-Control} of every file, or L{None}.
    @ivar cacheControlByExtension: C{Cache-Control} values by extension,
        before C{cacheControl}.
    @ivar mimeTypes: Content types by extension, before L{MIME_TYPES}.
    @ivar chunkSize: The most bytes read from a file at a time.
    """

    isLeaf = True

    chunkSize = CHUNK_SIZE

    def __init__(
        self,
        root: str,
        *,
        index: Sequence[str] = DEFAULT_INDEX,
        listDirectories: bool = False,
        allowHidden: bool = False,
        followSymlinksOutside: bool = False,
        cacheControl: str | None = None,
        cacheControlByExtension: Mapping[str, str] | None = None,
        mimeTypes: Mapping[str, str] | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param root: The directory to serve.
        @param index: The names of the file served for a directory, tried
            in order.
        @param listDirectories: List directories that have no index file.
        @param allowHidden: Serve names that start with C{.} (C{..} never).
        @param followSymlinksOutside: Follow symbolic links out of C{root}.
        @param cacheControl: The C{Cache-Control} value for every file.
        @param cacheControlByExtension: C{Cache-Control} values by file
            extension (C{"woff2"}, C{".html"}), which win over
            C{cacheControl}.
        @param mimeTypes: C{Content-Type} values by extension, which win
            over L{MIME_TYPES}.
        @param reactor: The clock C{Expires} is computed from; the system
            time when L{None}.
        @raise ValueError: For a header value that is not printable ASCII.
        """
        Resource.__init__(self)
        self.root = root
        self._realRoot = os.path.realpath(root)
        self._rootPrefix = (
            self._realRoot
            if self._realRoot.endswith(os.sep)
            else self._realRoot + os.sep
        )
        for name in index:
            if safeSegmentName(name.encode("utf-8"), allowHidden=True) is None:
                raise ValueError(f"not a file name for an index: {name!r}")
        self.index = tuple(index)
        self.listDirectories = listDirectories
        self.allowHidden = allowHidden
        self.followSymlinksOutside = followSymlinksOutside
        if cacheControl is not None:
            _checkHeaderValue(cacheControl, "cacheControl")
        self.cacheControl = cacheControl
        self.cacheControlByExtension = _normalizeExtensions(
            cacheControlByExtension, "cacheControlByExtension"
        )
        self.mimeTypes = _normalizeExtensions(mimeTypes, "mimeTypes")
        self._reactor = reactor

    def _now(self) -> float:
        if self._reactor is not None:
            return self._reactor.seconds()
        return time.time()

    def openFile(self, path: str) -> BinaryIO:
        """
        Open a file for reading, without following a symbolic link in its
        last component (C{path} is a resolved path already) and without
        blocking on a FIFO.

        @param path: The resolved path of the file.
        @return: The open file, unbuffered: each read is one system call.
        @raise OSError: If it cannot be opened.
        """
        flags = os.O_RDONLY
        for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):
            flags |= getattr(os, name, 0)
        fd = os.open(path, flags)
        return io.FileIO(fd, "rb", closefd=True)

    def _contained(self, path: str) -> str | None:
        """
        The real path of C{path} if it is under the root (or symbolic links
        may leave it), else L{None}.
        """
        real = os.path.realpath(path)
        if self.followSymlinksOutside:
            return real
        if real == self._realRoot or real.startswith(self._rootPrefix):
            return real
        return None

    def _regularFile(self, path: str) -> str | None:
        """
        The real path of C{path} if it is a regular file under the root.
        """
        real = self._contained(path)
        if real is None:
            return None
        try:
            info = os.stat(real)
        except (OSError, ValueError):
            return None
        return real if stat.S_ISREG(info.st_mode) else None

    def render(self, request: IRequest) -> object:
        """
        Answer a request for the file or directory C{request.postpath}
        names.

        @return: L{NOT_DONE_YET}: the response is written here or by a
            producer.
        """
        if request.method not in (b"GET", b"HEAD"):
            _renderPage(request, 405, [(b"allow", b"GET, HEAD")])
            return NOT_DONE_YET
        path = request.path
        lowered = path.lower()
        if not path.startswith(b"/") or any(bad in lowered for bad in _RAW_FORBIDDEN):
            renderError(request, 404)
            return NOT_DONE_YET
        segments = list(request.postpath)
        trailingSlash = bool(segments) and segments[-1] == b""
        if trailingSlash:
            segments.pop()
        names: list[str] = []
        for segment in segments:
            name = safeSegmentName(segment, self.allowHidden)
            if name is None:
                renderError(request, 404)
                return NOT_DONE_YET
            names.append(name)
        candidate = os.path.join(self._realRoot, *names)
        real = self._contained(candidate)
        try:
            info = os.stat(real) if real is not None else None
        except (OSError, ValueError):
            info = None
        if real is None or info is None:
            renderError(request, 404)
        elif stat.S_ISDIR(info.st_mode):
            if not trailingSlash:
                self._redirectToDirectory(request)
            else:
                self._renderDirectory(request, candidate, real)
        elif stat.S_ISREG(info.st_mode) and not trailingSlash:
            self._renderFile(request, candidate)
        else:
            renderError(request, 404)
        return NOT_DONE_YET

    def _redirectToDirectory(self, request: IRequest) -> None:
        """
        Send C{/dir} to C{/dir/} with a 301, keeping the query string.
        """
        # One leading slash: "//host/" would send the client to another site.
        location = b"/" + request.path.lstrip(b"/") + b"/"
        _, question, query = request.uri.partition(b"?")
        if question:
            location += b"?" + query
        location = _UNSAFE_IN_LOCATION.sub(
            lambda match: b"%%%02X" % (match.group()[0],), location
        )
        escaped = html.escape(location.decode("ascii")).encode("ascii")
        body = (
            b'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            b"<title>301 Moved Permanently</title></head>\n<body>"
            b'<h1>301 Moved Permanently</h1>\n<p><a href="%s">%s</a></p>'
            b"</body></html>\n" % (escaped, escaped)
        )
        _renderPage(request, 301, [(b"location", location)], body)

    def _renderDirectory(self, request: IRequest, candidate: str, real: str) -> None:
        """
        Serve a directory's index file, its listing, or a 404.
        """
        for name in self.index:
            indexPath = os.path.join(candidate, name)
            if self._regularFile(indexPath) is not None:
                self._renderFile(request, indexPath)
                return
        if not self.listDirectories:
            renderError(request, 404)
            return
        body = self._listing(request, real)
        if body is None:
            renderError(request, 404)
            return
        _renderPage(request, 200, [(b"cache-control", b"no-cache")], body)

    def _listing(self, request: IRequest, real: str) -> bytes | None:
        """
        A simple HTML listing of a directory: every entry that would be
        served, directories first marked with a slash.
        """
        entries: list[tuple[bool, str]] = []
        try:
            with os.scandir(real) as scan:
                for entry in scan:
                    name = entry.name
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        continue
                    if safeSegmentName(name.encode("utf-8"), self.allowHidden) is None:
                        continue
                    if self._contained(entry.path) is None:
                        continue
                    try:
                        isDirectory = entry.is_dir()
                        if not isDirectory and not entry.is_file():
                            continue
                    except OSError:
                        continue
                    entries.append((not isDirectory, name))
        except OSError:
            return None
        entries.sort()
        title = html.escape(request.path.decode("utf-8", "replace"))
        lines = [
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>Index of {title}</title></head>\n<body>"
            f"<h1>Index of {title}</h1>\n<ul>"
        ]
        for isFile, name in entries:
            slash = "" if isFile else "/"
            href = quote(name, safe="") + slash
            lines.append(
                f'<li><a href="{html.escape(href)}">{html.escape(name)}{slash}</a></li>'
            )
        lines.append("</ul></body></html>\n")
        return "\n".join(lines).encode("utf-8")

    def _renderFile(self, request: IRequest, candidate: str) -> None:
        """
        Serve a regular file, or its precompressed sibling, whole or in
        ranges, or a 304, 412 or 416 about it.

        @param candidate: The file's path under the root as the request
            names it (before symbolic links are resolved): its name gives
            the type, and siblings are found next to it.
        """
        siblings: dict[str, str] = {}
        for siblingCoding, extension in _SIBLINGS:
            sibling = self._regularFile(candidate + extension)
            if sibling is not None:
                siblings[siblingCoding] = sibling
        coding = chooseEncoding(_header(request, b"accept-encoding"), siblings)
        path: str | None = (
            siblings[coding] if coding is not None else self._contained(candidate)
        )
        try:
            if path is None:
                raise FileNotFoundError(candidate)
            file = self.openFile(path)
        except (OSError, ValueError):
            renderError(request, 404)
            return
        try:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FileNotFoundError(path)
        except OSError:
            file.close()
            renderError(request, 404)
            return
        if not self._respond(request, candidate, file, info, coding, bool(siblings)):
            file.close()

    def _respond(
        self,
        request: IRequest,
        candidate: str,
        file: BinaryIO,
        info: os.stat_result,
        coding: str | None,
        vary: bool,
    ) -> bool:
        """
        Write the response for an open file.

        @return: Whether a producer took the file over (otherwise the caller
            closes it).
        """
        size = info.st_size
        etag = makeETag(info, _ETAG_SUFFIX.get(coding or "", ""))
        modified = int(info.st_mtime)
        name = os.path.basename(candidate)
        contentType = contentTypeFor(name, self.mimeTypes).encode("ascii")
        validators: list[tuple[bytes, bytes]] = [
            (b"etag", etag),
            (b"last-modified", datetimeToString(modified)),
        ]
        cacheControl = (
            _extensionLookup(name, self.cacheControlByExtension) or self.cacheControl
        )
        if cacheControl is not None:
            validators.append((b"cache-control", cacheControl.encode("ascii")))
            expires = _expiresFor(cacheControl, self._now())
            if expires is not None:
                validators.append((b"expires", expires))
        if vary:
            validators.append((b"vary", b"Accept-Encoding"))

        failed = self._preconditionFailed(request, etag, modified)
        if failed is not None:
            if failed == 304:
                request.setResponseCode(304)
                for header, value in validators:
                    request.responseHeaders.setRawHeaders(header, [value])
                request.write(b"")
                request.finish()
            else:
                _renderPage(request, failed)
            return False

        headers = request.responseHeaders
        for header, value in validators:
            headers.setRawHeaders(header, [value])
        headers.setRawHeaders(b"accept-ranges", [b"bytes"])
        headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
        if coding is not None:
            headers.setRawHeaders(b"content-encoding", [coding.encode("ascii")])

        ranges = self._requestedRanges(request, etag, modified, size)
        pieces: list[_Piece]
        if ranges == []:
            _renderPage(
                request,
                416,
                [(b"content-range", b"bytes */%d" % (size,))]
                + ([(b"vary", b"Accept-Encoding")] if vary else []),
            )
            return False
        if ranges is None:
            headers.setRawHeaders(b"content-type", [contentType])
            pieces = [(0, size)]
            length = size
        elif len(ranges) == 1:
            first, last = ranges[0]
            request.setResponseCode(206)
            headers.setRawHeaders(b"content-type", [contentType])
            headers.setRawHeaders(
                b"content-range", [b"bytes %d-%d/%d" % (first, last, size)]
            )
            pieces = [(first, last - first + 1)]
            length = last - first + 1
        else:
            boundary = secrets.token_hex(16).encode("ascii")
            request.setResponseCode(206)
            headers.setRawHeaders(
                b"content-type", [b"multipart/byteranges; boundary=" + boundary]
            )
            pieces = []
            length = 0
            for number, (first, last) in enumerate(ranges):
                partHead = b"%s--%s\r\nContent-Type: %s\r\n" % (
                    b"\r\n" if number else b"",
                    boundary,
                    contentType,
                ) + b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (first, last, size)
                pieces += [partHead, (first, last - first + 1)]
                length += len(partHead) + last - first + 1
            closing = b"\r\n--%s--\r\n" % (boundary,)
            pieces.append(closing)
            length += len(closing)
        headers.setRawHeaders(b"content-length", [b"%d" % (length,)])
        if request.method == b"HEAD" or length == 0:
            request.write(b"")
            request.finish()
            return False
        if getattr(request, "_disconnected", False):
            return False
        # Any twisted.web request (ProxyRequest among them) is a Request:
        # IRequest does not declare the producer and notification methods.
        _FileProducer(cast(Request, request), file, pieces, self.chunkSize).start()
        return True

    def _preconditionFailed(
        self, request: IRequest, etag: bytes, modified: int
    ) -> int | None:
        """
        Evaluate the preconditions in the order of RFC 9110 section 13.2.2.

        @return: 412 or 304 if one fails, L{None} to go on.
        """
        ifMatch = _header(request, b"if-match")
        if ifMatch is not None:
            if not etagMatches(ifMatch, etag, weak=False):
                return 412
        else:
            ifUnmodifiedSince = _header(request, b"if-unmodified-since")
            if ifUnmodifiedSince is not None:
                since = parseHTTPDate(ifUnmodifiedSince)
                if since is not None and modified > since:
                    return 412
        ifNoneMatch = _header(request, b"if-none-match")
        if ifNoneMatch is not None:
            if etagMatches(ifNoneMatch, etag, weak=True):
                return 304
        else:
            ifModifiedSince = _header(request, b"if-modified-since")
            if ifModifiedSince is not None:
                since = parseHTTPDate(ifModifiedSince)
                if since is not None and modified <= since:
                    return 304
        return None

    def _requestedRanges(
        self, request: IRequest, etag: bytes, modified: int, size: int
    ) -> list[tuple[int, int]] | None:
        """
        The ranges to serve, as L{parseRange} returns them; L{None} (the
        whole file) without a single C{Range} header or when C{If-Range}
        does not match.
        """
        values = request.requestHeaders.getRawHeaders(b"range")
        if not values or len(values) > 1:
            return None
        ifRange = _header(request, b"if-range")
        if ifRange is not None:
            ifRange = ifRange.strip(b" \t")
            if ifRange.startswith((b'"', b"W/")):
                # One entity tag, compared strongly: a weak one never matches.
                if b"," in ifRange or not etagMatches(ifRange, etag, weak=False):
                    return None
            elif parseHTTPDate(ifRange) != modified:
                return None
        return parseRange(values[0], size)
