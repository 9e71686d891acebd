"""
The built-in C{headers} filter: set, add, remove and rename request and
response headers, with values templated from the request.

Configuration::

    [filters.tag]
    plugin = "headers"
    request.set = { "X-Client" = "{client}", "X-Route" = "{route}" }
    request.remove = ["Cookie"]
    response.set = { "Strict-Transport-Security" = "max-age=31536000" }
    response.rename = { "X-Backend-Id" = "X-Served-By" }

For each of C{request} and C{response}, the operations run in the order
C{remove}, C{rename}, C{set}, C{add}. Templates (in C{set} and C{add})
replace C{{method}}, C{{path}} (the target without the query), C{{uri}},
C{{query}}, C{{host}}, C{{scheme}}, C{{client}}, C{{route}} (the route's
path prefix) and C{{header:NAME}} (the request's header NAME, first value,
or nothing); C{{{}} and C{}}} are literal braces. Response templates see
the request as the client sent it, before any request change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from attrs import frozen
from twisted.plugin import IPlugin
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.filters import (
    FilterOptionError,
    RequestContext,
    ResponseHead,
)
from twisted_rproxy.interfaces import IFilterFactory, IRequestFilter, IResponseFilter

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*\Z")
_FIELD = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_OPERATIONS = ("remove", "rename", "set", "add")
_SIMPLE_FIELDS = ("method", "path", "uri", "query", "host", "scheme", "client", "route")

#: One piece of a template: literal bytes, or a function of the request.
_Piece = bytes | Callable[[IRequest, RequestContext], bytes]


def _firstHeader(request: IRequest, name: bytes) -> bytes:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0] if values else b""


def _routePath(context: RequestContext) -> bytes:
    path = getattr(context.route, "path", None)
    return path.encode("ascii") if isinstance(path, str) else b""


_FIELDS: Mapping[str, Callable[[IRequest, RequestContext], bytes]] = {
    "method": lambda r, c: r.method,
    "path": lambda r, c: r.uri.split(b"?", 1)[0],
    "uri": lambda r, c: r.uri,
    "query": lambda r, c: r.uri.partition(b"?")[2],
    "host": lambda r, c: _firstHeader(r, b"host"),
    "scheme": lambda r, c: b"https" if r.isSecure() else b"http",
    "client": lambda r, c: c.clientAddress.encode("ascii"),
    "route": lambda r, c: _routePath(c),
}


def _headerField(name: bytes) -> Callable[[IRequest, RequestContext], bytes]:
    return lambda request, context: _firstHeader(request, name)


@frozen
class Template:
    """
    A header value with fields replaced from the request.
    """

    pieces: tuple[_Piece, ...]

    @classmethod
    def parse(cls, text: str, option: str) -> Template:
        """
        @raise FilterOptionError: For an unknown field or a lone brace.
        """
        pieces: list[_Piece] = []
        position = 0
        for match in _FIELD.finditer(text):
            pieces.append(text[position : match.start()].encode("latin-1"))
            position = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                pieces.append(token[0].encode())
                continue
            name = match.group(1)
            if name is None:
                raise FilterOptionError(
                    option, f"lone {token!r} in {text!r} (write {token * 2} for one)"
                )
            if name.startswith("header:") and _TOKEN.match(name[7:]):
                pieces.append(_headerField(name[7:].lower().encode("ascii")))
            elif name in _FIELDS:
                pieces.append(_FIELDS[name])
            else:
                known = ", ".join("{" + f + "}" for f in _SIMPLE_FIELDS)
                raise FilterOptionError(
                    option,
                    f"unknown field {{{name}}} in {text!r} (known: {known}, "
                    "{header:NAME})",
                )
        pieces.append(text[position:].encode("latin-1"))
        return cls(tuple(p for p in pieces if p != b""))

    def render(self, request: IRequest, context: RequestContext) -> bytes:
        """
        The value for C{request}; line breaks from the request are removed.
        """
        out = []
        for piece in self.pieces:
            if isinstance(piece, bytes):
                out.append(piece)
            else:
                out.append(
                    piece(request, context).replace(b"\r", b"").replace(b"\n", b"")
                )
        return b"".join(out)


@frozen
class HeaderRules:
    """
    The header operations for one direction.
    """

    remove: tuple[bytes, ...] = ()
    rename: tuple[tuple[bytes, bytes], ...] = ()
    set: tuple[tuple[bytes, Template], ...] = ()
    add: tuple[tuple[bytes, Template], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.remove or self.rename or self.set or self.add)

    def apply(
        self, headers: Headers, request: IRequest, context: RequestContext
    ) -> None:
        """
        Change C{headers} in place.
        """
        for name in self.remove:
            headers.removeHeader(name)
        for old, new in self.rename:
            values = headers.getRawHeaders(old)
            if values is not None:
                headers.removeHeader(old)
                headers.setRawHeaders(new, values)
        for name, template in self.set:
            headers.setRawHeaders(name, [template.render(request, context)])
        for name, template in self.add:
            headers.addRawHeader(name, template.render(request, context))


def _headerName(name: object, option: str) -> bytes:
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise FilterOptionError(option, f"invalid header name {name!r}")
    return name.encode("ascii")


def _template(value: object, option: str) -> Template:
    if not isinstance(value, str):
        raise FilterOptionError(
            option, f"expected a string, got {type(value).__name__}"
        )
    if not _VALUE.match(value) or not value.isprintable() and "\t" not in value:
        raise FilterOptionError(option, f"invalid header value {value!r}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise FilterOptionError(
            option, f"header value {value!r} is not Latin-1 text"
        ) from None
    return Template.parse(value, option)


def _table(value: object, option: str) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise FilterOptionError(option, f"expected a table, got {type(value).__name__}")
    return value


def parseRules(value: object, option: str) -> HeaderRules:
    """
    Parse C{request} or C{response}: a table of C{remove} (a list of
    names), C{rename} (a table old = new), C{set} and C{add} (tables
    name = template).

    @raise FilterOptionError: Naming the dotted option at fault.
    """
    table = _table(value, option)
    for key in table:
        if key not in _OPERATIONS:
            raise FilterOptionError(
                f"{option}.{key}",
                f"unknown key (expected one of {', '.join(_OPERATIONS)})",
            )
    remove = table.get("remove", [])
    if not isinstance(remove, Sequence) or isinstance(remove, str):
        raise FilterOptionError(f"{option}.remove", "expected a list of header names")
    removed = tuple(
        _headerName(name, f"{option}.remove[{i}]").lower()
        for i, name in enumerate(remove)
    )
    renamed = tuple(
        (
            _headerName(old, f"{option}.rename"),
            _headerName(new, f"{option}.rename.{old}"),
        )
        for old, new in _table(table.get("rename", {}), f"{option}.rename").items()
    )
    sets = tuple(
        (_headerName(name, f"{option}.set"), _template(v, f"{option}.set.{name}"))
        for name, v in _table(table.get("set", {}), f"{option}.set").items()
    )
    adds = tuple(
        (_headerName(name, f"{option}.add"), _template(v, f"{option}.add.{name}"))
        for name, v in _table(table.get("add", {}), f"{option}.add").items()
    )
    return HeaderRules(removed, renamed, sets, adds)


@implementer(IRequestFilter, IResponseFilter)
class HeadersFilter:
    """
    Applies its request rules to each request's headers and its response
    rules to each response's.
    """

    def __init__(self, request: HeaderRules, response: HeaderRules) -> None:
        self.request = request
        self.response = response

    def filterRequest(self, request: IRequest, context: RequestContext) -> None:
        if self.response and self.request:
            # The response templates see the request as the client sent it.
            context.data["headers.original"] = request.requestHeaders.copy()
        self.request.apply(request.requestHeaders, request, context)

    def filterResponse(
        self, request: IRequest, context: RequestContext, head: ResponseHead
    ) -> None:
        original = context.data.get("headers.original")
        if isinstance(original, Headers) and self.request:
            changed = request.requestHeaders
            request.requestHeaders = original
            try:
                self.response.apply(head.headers, request, context)
            finally:
                request.requestHeaders = changed
            return
        self.response.apply(head.headers, request, context)


@implementer(IPlugin, IFilterFactory)
class HeadersFactory:
    """
    The C{headers} filter plugin.
    """

    name = "headers"

    def buildFilter(self, options: Mapping[str, object]) -> HeadersFilter:
        for key in options:
            if key not in ("request", "response"):
                raise FilterOptionError(
                    key, "unknown key (expected request or response)"
                )
        request = parseRules(options.get("request", {}), "request")
        response = parseRules(options.get("response", {}), "response")
        if not request and not response:
            raise FilterOptionError(
                "", "has nothing to do: give request or response header rules"
            )
        return HeadersFilter(request, response)


#: What getPlugins finds.
headers = HeadersFactory()
