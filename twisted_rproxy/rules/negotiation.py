"""
Content negotiation (RFC 9110 section 12): C{Accept-Encoding} and the
choice of a content coding.
"""

from __future__ import annotations

import re
from collections.abc import Collection

#: Content codings in order of preference when q-values tie.
PREFERENCE = ("br", "gzip")

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
    for coding in PREFERENCE:
        if coding not in available:
            continue
        quality = accepted.get(coding, accepted.get("*", 0.0))
        if quality > bestQuality:
            best, bestQuality = coding, quality
    return best
