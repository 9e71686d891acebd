"""
Byte ranges (RFC 9110 section 14): the ranges a C{Range} header asks of a
representation, checked and coalesced (L{parseRange}); whether C{If-Range}
lets them apply (L{ifRangeMatches}); which a request gets
(L{requestedRanges}); and the head fields and body of the 206 that serves
them, one range or a C{multipart/byteranges} body (L{partialContent}).

Static files and the cache both serve ranges with these: the first streams
the pieces of the body from a file, the second slices a stored body
(L{assemble}).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import NamedTuple

from twisted_rproxy.rules.dates import parseHTTPDate
from twisted_rproxy.rules.etags import etagMatches

__all__ = [
    "MAX_RANGES",
    "PartialContent",
    "Piece",
    "assemble",
    "ifRangeMatches",
    "parseRange",
    "partialContent",
    "requestedRanges",
    "unsatisfiedRange",
]

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


def ifRangeMatches(
    condition: bytes, etag: bytes | None, lastModified: int | None
) -> bool:
    """
    Whether an C{If-Range} value lets the C{Range} of its request apply
    (RFC 9110 section 13.1.5).

    An entity tag (starting with a double quote or C{W/}) matches only the
    representation's own strong tag, by the strong comparison: a weak tag
    never matches, nor does a list of tags. Anything else is taken as an
    HTTP-date, which matches only the exact C{Last-Modified} time.

    @param condition: The field value (several lines joined with commas).
    @param etag: The representation's entity tag, quoted (C{W/} if weak),
        or L{None} without one.
    @param lastModified: Its modification time in seconds since the epoch,
        or L{None} without one.
    """
    condition = condition.strip(b" \t")
    if condition.startswith((b'"', b"W/")):
        return (
            b"," not in condition
            and etag is not None
            and etagMatches(condition, etag.strip(b" \t"), weak=False)
        )
    return lastModified is not None and parseHTTPDate(condition) == lastModified


def requestedRanges(
    rangeValues: Sequence[bytes] | None,
    ifRangeValues: Sequence[bytes] | None,
    size: int,
    etag: bytes | None,
    lastModified: int | None,
) -> list[tuple[int, int]] | None:
    """
    The ranges a request gets of a representation, as L{parseRange} returns
    them: L{None} (the whole representation, 200) without a C{Range}, with
    more than one C{Range} line, or when its C{If-Range} does not match
    (L{ifRangeMatches}); an empty list when none is satisfiable (416).

    @param rangeValues: The request's C{Range} lines.
    @param ifRangeValues: Its C{If-Range} lines.
    @param size: The representation's length in bytes.
    @param etag: Its entity tag (see L{ifRangeMatches}).
    @param lastModified: Its modification time (see L{ifRangeMatches}).
    """
    if not rangeValues or len(rangeValues) > 1:
        return None
    if ifRangeValues and not ifRangeMatches(
        b", ".join(ifRangeValues), etag, lastModified
    ):
        return None
    return parseRange(rangeValues[0], size)


Piece = bytes | tuple[int, int]
"""
A piece of a body: literal bytes (the parts' heads of a multipart body), or
C{(offset, length)} of the representation.
"""


class PartialContent(NamedTuple):
    """
    What a 206 serving byte ranges is made of.

    @ivar headers: The head fields it sets, in place of the
        representation's C{Content-Length} (and, for several ranges, its
        C{Content-Type}): C{Content-Range} for one range, a
        C{multipart/byteranges} C{Content-Type} for several.
    @ivar pieces: The body, in order.
    @ivar length: The body's length, its C{Content-Length}.
    """

    headers: list[tuple[bytes, bytes]]
    pieces: list[Piece]
    length: int


def partialContent(
    ranges: Sequence[tuple[int, int]],
    size: int,
    contentType: bytes | None,
    boundary: bytes | None = None,
) -> PartialContent:
    """
    The 206 that serves C{ranges} of a representation (RFC 9110 section
    14.6): one range as it is, several as a C{multipart/byteranges} body
    whose parts carry the representation's C{Content-Type} and their
    C{Content-Range}.

    @param ranges: At least one range, as L{parseRange} returns them.
    @param size: The representation's length.
    @param contentType: Its C{Content-Type}, or L{None} without one.
    @param boundary: The multipart boundary; a random one when L{None}.
    """
    if len(ranges) == 1:
        first, last = ranges[0]
        return PartialContent(
            [(b"Content-Range", b"bytes %d-%d/%d" % (first, last, size))],
            [(first, last - first + 1)],
            last - first + 1,
        )
    if boundary is None:
        boundary = secrets.token_hex(16).encode("ascii")
    typeLine = b"Content-Type: %s\r\n" % (contentType,) if contentType else b""
    pieces: list[Piece] = []
    length = 0
    for number, (first, last) in enumerate(ranges):
        partHead = (
            b"%s--%s\r\n" % (b"\r\n" if number else b"", boundary)
            + typeLine
            + b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (first, last, size)
        )
        pieces += [partHead, (first, last - first + 1)]
        length += len(partHead) + last - first + 1
    closing = b"\r\n--%s--\r\n" % (boundary,)
    pieces.append(closing)
    length += len(closing)
    return PartialContent(
        [(b"Content-Type", b"multipart/byteranges; boundary=" + boundary)],
        pieces,
        length,
    )


def unsatisfiedRange(size: int) -> tuple[bytes, bytes]:
    """
    The C{Content-Range} field of a 416 about a representation of C{size}
    bytes (RFC 9110 section 14.4).
    """
    return (b"Content-Range", b"bytes */%d" % (size,))


def assemble(pieces: Sequence[Piece], content: bytes) -> bytes:
    """
    A body of L{partialContent} pieces, cut from the whole C{content}.
    """
    return b"".join(
        piece if isinstance(piece, bytes) else content[piece[0] : piece[0] + piece[1]]
        for piece in pieces
    )
