"""
The decisions of static file serving as plain functions of data: safe path
segments, content types, entity tags, HTTP dates, ranges and content
coding negotiation (also used by the cache and the compress filter).
"""

from __future__ import annotations

import calendar
import os
import re
import time
from collections.abc import Collection, Mapping, Sequence

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
