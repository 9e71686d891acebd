"""
The balancing methods a pool may name, and what a hashing pool hashes
(C{[pools.NAME] balance} and C{hash_on}), parsed once, here.
"""

from __future__ import annotations

from attrs import frozen

_TOKEN = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)

#: The balancing methods a pool's C{balance} may name.
BALANCERS = ("round-robin", "least-requests", "random-two", "hash")


@frozen
class HashOn:
    """
    What a hashing pool hashes (C{[pools.NAME] hash_on}).

    @ivar source: C{"client"} (the client's IP address), C{"header"} or
        C{"cookie"}.
    @ivar name: The lowercased header or cookie name, or C{b""} for
        C{"client"}.
    """

    source: str
    name: bytes = b""


def parseHashOn(value: str) -> HashOn:
    """
    Parse a C{hash_on} value: C{"client"}, C{"header:NAME"} or
    C{"cookie:NAME"}.

    @raise ValueError: With the reason, when C{value} is none of these.
    """
    if value == "client":
        return HashOn("client")
    source, colon, name = value.partition(":")
    if not colon or source not in ("header", "cookie"):
        raise ValueError(
            f'invalid value {value!r} (expected "client", "header:NAME" or '
            '"cookie:NAME")'
        )
    name = name.strip()
    if not name or not all(c in _TOKEN for c in name):
        raise ValueError(f"invalid {source} name {name!r} in {value!r}")
    return HashOn(source, name.lower().encode("ascii"))
