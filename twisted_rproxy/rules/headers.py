"""
Header rules of HTTP/1.1 connections (RFC 9110 section 7.6.1): which
headers describe one connection rather than the message, and the names a
C{Connection} header lists.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Headers that describe one connection, not the message (RFC 9110 section
#: 7.6.1), and never cross the proxy in either direction; C{Expect} and the
#: framing headers are the proxy's own business with each side.
HOP_BY_HOP = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    ]
)


_NO_TOKENS: frozenset[bytes] = frozenset()

# The values nearly every Connection header has, answered without parsing
# (each connection: close request reads it twice).
_COMMON_TOKENS: dict[bytes, frozenset[bytes]] = {
    value: frozenset([value.lower()])
    for value in (
        b"close",
        b"Close",
        b"keep-alive",
        b"Keep-Alive",
        b"upgrade",
        b"Upgrade",
    )
}


def connectionTokens(values: Sequence[bytes] | None) -> frozenset[bytes]:
    """
    The lowercased header names listed in C{Connection} header values.
    """
    if not values:
        return _NO_TOKENS
    if len(values) == 1:
        common = _COMMON_TOKENS.get(values[0])
        if common is not None:
            return common
    return frozenset(
        token.strip(b" \t").lower() for value in values for token in value.split(b",")
    )
