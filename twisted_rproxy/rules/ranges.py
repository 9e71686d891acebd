"""
Byte ranges (RFC 9110 section 14): the ranges a C{Range} header asks of a
representation, checked and coalesced.
"""

from __future__ import annotations

import re

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
