"""
C{Cache-Control} fields (RFC 9111 section 5.2), parsed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from attrs import frozen


@frozen
class CacheControl:
    """
    The directives of C{Cache-Control} fields (RFC 9111 section 5.2).

    @ivar directives: Lowercased directive names to their argument (unquoted
        bytes) or L{None} for a directive without one.
    """

    directives: Mapping[bytes, bytes | None]

    def has(self, name: bytes) -> bool:
        """
        Whether the directive C{name} is present.
        """
        return name in self.directives

    def seconds(self, name: bytes) -> int | None:
        """
        The delta-seconds argument of C{name}: L{None} when absent or
        invalid (RFC 9111 section 1.2.2: a value that is not a non-negative
        integer is invalid; a huge one counts as 2**31).
        """
        value = self.directives.get(name)
        if value is None or not value.isdigit():
            return None
        return min(int(value), 2**31)

    def fieldNames(self, name: bytes) -> frozenset[bytes]:
        """
        The lowercased field names listed in the qualified form of C{name}
        (C{no-cache="Set-Cookie"}); empty for the unqualified form.
        """
        value = self.directives.get(name)
        if not value:
            return frozenset()
        return frozenset(part.strip(b" \t").lower() for part in value.split(b","))


_EMPTY = CacheControl({})


def parseCacheControl(values: Iterable[bytes]) -> CacheControl:
    """
    Parse C{Cache-Control} field values (RFC 9111 section 5.2).

    Directive names are case-insensitive; arguments may be tokens or
    quoted strings (whose commas do not split directives). When a
    directive repeats, the first occurrence wins.
    """
    directives: dict[bytes, bytes | None] = {}
    for value in values:
        position, end = 0, len(value)
        while position < end:
            comma = value.find(b",", position)
            equals = value.find(b"=", position)
            if equals != -1 and (comma == -1 or equals < comma):
                name = value[position:equals].strip(b" \t").lower()
                rest = equals + 1
                while rest < end and value[rest : rest + 1] in (b" ", b"\t"):
                    rest += 1
                if value[rest : rest + 1] == b'"':
                    close = value.find(b'"', rest + 1)
                    close = end if close == -1 else close
                    argument = value[rest + 1 : close]
                    comma = value.find(b",", close)
                else:
                    stop = end if comma == -1 else comma
                    argument = value[rest:stop].strip(b" \t")
                if name:
                    directives.setdefault(name, argument)
            else:
                stop = end if comma == -1 else comma
                name = value[position:stop].strip(b" \t").lower()
                if name:
                    directives.setdefault(name, None)
            if comma == -1:
                break
            position = comma + 1
    return CacheControl(directives) if directives else _EMPTY
