"""
An HTTP/2 header block as the parts of an HTTP/1.1 request head
(L{RequestHead}), a response head as the fields of a C{HEADERS} frame
(L{responseFields}): functions of data, for L{twisted_rproxy.h2.stream}.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from attrs import frozen

#: Header fields of HTTP/1.1 connections that HTTP/2 forbids (RFC 9113
#: section 8.2.2): never sent in a response.
CONNECTION_HEADERS = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    ]
)


@frozen
class RequestHead:
    """
    A request's header block.

    @ivar method: C{:method} (empty if missing: refused by h2 first).
    @ivar target: C{:path}, or C{:authority} for a C{CONNECT}.
    @ivar fields: The header fields by name, C{Host} made from
        C{:authority}, C{Cookie} fields joined into one (RFC 9113 section
        8.2.3).
    @ivar size: The header list's size as RFC 9113 counts it (32 bytes a
        field beyond its name and value).
    @ivar count: How many header fields (pseudo-header fields aside).
    """

    method: bytes
    target: bytes
    fields: dict[bytes, list[bytes]]
    size: int
    count: int

    def length(self, ended: bool) -> int | None:
        """
        The body's length: 0 if the block ended the stream, that of
        C{Content-Length} if given, else L{None}.
        """
        if ended:
            return 0
        lengths = self.fields.get(b"content-length")
        if lengths is not None and lengths[0].isdigit():
            return int(lengths[0])
        return None


def requestHead(headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """
    Read a header block as C{h2} decoded and validated it (lowercase
    names, pseudo-header fields first).
    """
    method = target = authority = None
    fields: dict[bytes, list[bytes]] = {}
    size = count = 0
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                target = value
            elif name == b":authority":
                authority = value
            continue
        count += 1
        values = fields.get(name)
        if values is None:
            fields[name] = [value]
        else:
            values.append(value)
    cookies = fields.get(b"cookie")
    if cookies is not None and len(cookies) > 1:
        fields[b"cookie"] = [b"; ".join(cookies)]
    if authority is not None:
        fields[b"host"] = [authority]
    if target is None:
        target = authority or b""
    return RequestHead(method or b"", target, fields, size, count)


def responseFields(
    status: bytes, fields: Iterable[tuple[bytes, Sequence[bytes]]]
) -> list[tuple[bytes, bytes]]:
    """
    The fields of a response's C{HEADERS} frame: C{:status}, then each
    header with its name lowercased, those HTTP/2 forbids left out.

    @param fields: C{(name, values)} pairs, as
        C{Headers.getAllRawHeaders} gives them.
    """
    head = [(b":status", status)]
    for name, values in fields:
        lower = name.lower()
        if lower not in CONNECTION_HEADERS:
            for value in values:
                head.append((lower, value))
    return head

