"""
C{Cache-Control} fields (RFC 9111 section 5.2), parsed; and the targeted
fields that replace them for a cache (RFC 9213: C{CDN-Cache-Control}).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from attrs import frozen

from twisted_rproxy.rules.structured import (
    StructuredFieldError,
    Token,
    parseDictionary,
)

__all__ = [
    "CacheControl",
    "directivesFor",
    "freshnessHeaders",
    "parseCacheControl",
    "parseTargeted",
]


@frozen
class CacheControl:
    """
    The directives of C{Cache-Control} fields (RFC 9111 section 5.2).

    @ivar directives: Lowercased directive names to their argument (unquoted
        bytes) or L{None} for a directive without one.
    @ivar field: The lowercased name of the field the directives were taken
        from, once chosen among a cache's targeted fields and
        C{Cache-Control} (L{directivesFor}); L{None} when parsed from
        C{Cache-Control} without asking.
    """

    directives: Mapping[bytes, bytes | None]
    field: bytes | None = None

    @property
    def targeted(self) -> bool:
        """
        Whether the directives come from a targeted field (RFC 9213), so
        that C{Cache-Control} and C{Expires} do not count.
        """
        return self.field is not None and self.field != b"cache-control"

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


#: RFC 9213 section 2.2: the directives whose value is delta-seconds, an
#: Integer in a targeted field.
_INTEGER_DIRECTIVES = frozenset(
    ["max-age", "s-maxage", "stale-while-revalidate", "stale-if-error"]
)
#: Directives that are always Boolean true.
_BOOLEAN_DIRECTIVES = frozenset(
    [
        "no-store",
        "must-revalidate",
        "proxy-revalidate",
        "public",
        "immutable",
        "no-transform",
        "must-understand",
    ]
)
#: Directives that are Boolean true or a String of field names.
_FIELDS_DIRECTIVES = frozenset(["no-cache", "private"])


def parseTargeted(values: list[bytes]) -> CacheControl | None:
    """
    The directives of a targeted field (RFC 9213 section 2.2): a Dictionary
    Structured Field (RFC 8941) whose members are cache directives.

    A member whose value is of the wrong type for its directive (C{max-age}
    not a non-negative Integer, C{no-store} not Boolean true, C{no-cache}
    neither true nor a String) is ignored; members' parameters are.

    @param values: The field lines of the field.
    @return: The directives, or L{None} when the field is empty or does not
        parse (section 2.2: then it is as if absent).
    """
    try:
        dictionary = parseDictionary(values)
    except StructuredFieldError:
        return None
    if not dictionary:
        return None
    directives: dict[bytes, bytes | None] = {}
    for name, (value, _) in dictionary.items():
        argument: bytes | None
        if name in _INTEGER_DIRECTIVES:
            if type(value) is not int or value < 0:
                continue
            argument = b"%d" % (value,)
        elif value is True:
            argument = None
        elif value is False or name in _BOOLEAN_DIRECTIVES:
            continue
        elif isinstance(value, str):
            if name in _FIELDS_DIRECTIVES and isinstance(value, Token):
                continue
            argument = value.encode("ascii")
        elif name in _FIELDS_DIRECTIVES:
            continue
        elif isinstance(value, (int, float)):
            argument = repr(value).encode("ascii")
        else:
            # A Byte Sequence or an Inner List for an extension directive
            # this cache does not know: present, its value unused.
            argument = None
        directives[name.encode("ascii")] = argument
    return CacheControl(directives)


def directivesFor(
    headers: Iterable[tuple[bytes, bytes]], targeted: Sequence[bytes]
) -> CacheControl:
    """
    The cache directives of a response for a cache whose target list is
    C{targeted} (RFC 9213 section 2.1): those of the first targeted field
    (in list order) that is present with a valid, non-empty value; else
    those of C{Cache-Control}.

    @param headers: The response's header fields.
    @param targeted: The lowercased names of the targeted fields, most
        specific first; empty for C{Cache-Control} alone.
    @return: The directives, with the field they come from as C{field}.
    """
    found: dict[bytes, list[bytes]] = {}
    cacheControl: list[bytes] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"cache-control":
            cacheControl.append(value)
        elif lower in targeted:
            found.setdefault(lower, []).append(value)
    for name in targeted:
        values = found.get(name)
        if values:
            directives = parseTargeted(values)
            if directives is not None:
                return CacheControl(directives.directives, name)
    return CacheControl(parseCacheControl(cacheControl).directives, b"cache-control")


def freshnessHeaders(
    headers: Sequence[tuple[bytes, bytes]], directives: CacheControl
) -> Sequence[tuple[bytes, bytes]]:
    """
    The headers that decide a response's freshness along with
    C{directives}: without C{Expires} when the directives come from a
    targeted field (RFC 9213 section 2.1: the cache then ignores
    C{Cache-Control} and C{Expires}).
    """
    if not directives.targeted:
        return headers
    return [(name, value) for name, value in headers if name.lower() != b"expires"]
