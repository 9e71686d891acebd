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


#: The pseudo-header fields of a request (C{:protocol}, of extended
#: CONNECT, is not offered).
_REQUEST_PSEUDO = frozenset([b":method", b":path", b":authority", b":scheme"])


@frozen
class RequestHead:
    """
    A request's header block.

    @ivar method: C{:method}.
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


class MalformedRequest(Exception):
    """
    A request's header block is not that of a valid request (RFC 9113
    section 8.1.1): a stream error C{PROTOCOL_ERROR}.
    """


def requestHead(headers: Iterable[tuple[bytes, bytes]]) -> RequestHead:
    """
    Read and check a request's header block, as decoded (names and values
    were checked by L{twisted_rproxy.h2.hpack}).

    @raise MalformedRequest: For pseudo-header fields missing, repeated,
        unknown (C{:protocol}, of extended CONNECT, included: it is not
        offered) or after a regular field; and for fields of HTTP/1.1
        connections (RFC 9113 section 8.2.2).
    """
    pseudo: dict[bytes, bytes] = {}
    fields: dict[bytes, list[bytes]] = {}
    size = count = 0
    for name, value in headers:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if count:
                raise MalformedRequest("a pseudo-header field after a regular one")
            if name not in _REQUEST_PSEUDO:
                raise MalformedRequest(f"pseudo-header field {name[:32]!r}")
            if name in pseudo:
                raise MalformedRequest(f"{name.decode('ascii')} repeated")
            pseudo[name] = value
            continue
        count += 1
        if name in CONNECTION_HEADERS or (
            name == b"te" and value.strip().lower() != b"trailers"
        ):
            raise MalformedRequest(f"connection-specific field {name!r}")
        values = fields.get(name)
        if values is None:
            fields[name] = [value]
        else:
            values.append(value)
    method = pseudo.get(b":method")
    target = pseudo.get(b":path")
    authority = pseudo.get(b":authority")
    scheme = pseudo.get(b":scheme")
    if method is None:
        raise MalformedRequest(":method missing")
    if method == b"CONNECT":
        if authority is None or scheme is not None or target is not None:
            raise MalformedRequest(
                "CONNECT without :authority, or with :scheme or :path"
            )
    elif scheme is None or not target:
        raise MalformedRequest(":scheme or :path missing")
    cookies = fields.get(b"cookie")
    if cookies is not None and len(cookies) > 1:
        fields[b"cookie"] = [b"; ".join(cookies)]
    if authority is not None:
        fields[b"host"] = [authority]
    if target is None:
        target = authority or b""
    return RequestHead(method, target, fields, size, count)


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
