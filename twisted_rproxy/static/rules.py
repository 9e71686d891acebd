"""
The decisions of static file serving as plain functions of data: safe path
segments, content types, entity tags, HTTP dates, ranges and content
coding negotiation, the preconditions of a request, a file's C{Expires}.
Dates, entity tag matching, ranges and negotiation are general HTTP rules,
in L{twisted_rproxy.rules}; they are importable from here too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from twisted.web.http import datetimeToString

from twisted_rproxy.rules.dates import parseHTTPDate
from twisted_rproxy.rules.etags import etagMatches
from twisted_rproxy.rules.negotiation import chooseEncoding, parseAcceptEncoding
from twisted_rproxy.rules.ranges import MAX_RANGES, parseRange

__all__ = [
    "MAX_RANGES",
    "chooseEncoding",
    "contentTypeFor",
    "etagMatches",
    "makeETag",
    "parseAcceptEncoding",
    "parseHTTPDate",
    "parseRange",
    "safeSegmentName",
]

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


def preconditionFailed(
    ifMatch: bytes | None,
    ifUnmodifiedSince: bytes | None,
    ifNoneMatch: bytes | None,
    ifModifiedSince: bytes | None,
    etag: bytes,
    modified: int,
) -> int | None:
    """
    Evaluate the preconditions of a request on a file, in the order of RFC
    9110 section 13.2.2.

    @param ifMatch: The request's C{If-Match} (lines joined), or L{None};
        and so on for the next three.
    @param etag: The file's strong entity tag.
    @param modified: Its modification time, in seconds.
    @return: 412 or 304 if one fails, L{None} to go on.
    """
    if ifMatch is not None:
        if not etagMatches(ifMatch, etag, weak=False):
            return 412
    elif ifUnmodifiedSince is not None:
        since = parseHTTPDate(ifUnmodifiedSince)
        if since is not None and modified > since:
            return 412
    if ifNoneMatch is not None:
        if etagMatches(ifNoneMatch, etag, weak=True):
            return 304
    elif ifModifiedSince is not None:
        since = parseHTTPDate(ifModifiedSince)
        if since is not None and modified <= since:
            return 304
    return None
