"""
Entity tags (RFC 9110 section 8.8.3): matching an C{If-None-Match} or
C{If-Match} list against one tag.
"""

from __future__ import annotations

import re

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
