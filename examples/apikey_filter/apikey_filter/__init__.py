"""
An API-key check and a response-header stamp: an example of a third-party
filter package for twisted_rproxy.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Mapping

from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.filters import (
    FilterOptionError,
    FilterResponse,
    RequestContext,
    ResponseHead,
)
from twisted_rproxy.interfaces import IFilterFactory, IRequestFilter, IResponseFilter

__all__ = ["ApiKeyFactory", "ApiKeyFilter", "StampFactory", "StampFilter"]

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def _headerName(options: Mapping[str, object], default: str) -> bytes:
    name = options.get("header", default)
    if not isinstance(name, str) or not _TOKEN.match(name):
        raise FilterOptionError("header", f"invalid header name {name!r}")
    return name.encode("ascii")


def _checkKeys(options: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    for key in options:
        if key not in allowed:
            raise FilterOptionError(
                key, f"unknown key (expected one of {', '.join(allowed)})"
            )


@implementer(IRequestFilter)
class ApiKeyFilter:
    """
    Lets a request pass only with one of the keys in its header, which is
    then removed, so that the backend never sees it.
    """

    def __init__(self, keys: list[bytes], header: bytes) -> None:
        self.keys = keys
        self.header = header

    def filterRequest(
        self, request: IRequest, context: RequestContext
    ) -> FilterResponse | None:
        values = request.requestHeaders.getRawHeaders(self.header) or []
        given = values[0] if len(values) == 1 else b""
        # Compared in constant time, against every key.
        matched = [hmac.compare_digest(given, key) for key in self.keys]
        if not given or not any(matched):
            return FilterResponse(
                401,
                [(b"Content-Type", b"text/plain"), (b"WWW-Authenticate", b"ApiKey")],
                b"A valid API key is required.\n",
            )
        request.requestHeaders.removeHeader(self.header)
        context.data["apikey.index"] = matched.index(True)
        return None


@implementer(IPlugin, IFilterFactory)
class ApiKeyFactory:
    """
    The C{apikey} plugin: C{keys = ["..."]}, C{header = "X-API-Key"}.
    """

    name = "apikey"

    def buildFilter(self, options: Mapping[str, object]) -> ApiKeyFilter:
        _checkKeys(options, ("keys", "header"))
        keys = options.get("keys")
        if not isinstance(keys, list) or not keys:
            raise FilterOptionError("keys", "is required: a list of API keys")
        for index, key in enumerate(keys):
            if not isinstance(key, str) or not key.isascii() or not key.strip():
                raise FilterOptionError(
                    f"keys[{index}]", "expected a non-empty ASCII string"
                )
        return ApiKeyFilter(
            [key.encode("ascii") for key in keys], _headerName(options, "X-API-Key")
        )


@implementer(IResponseFilter)
class StampFilter:
    """
    Adds one header to every response.
    """

    def __init__(self, header: bytes, value: bytes) -> None:
        self.header = header
        self.value = value

    def filterResponse(
        self, request: IRequest, context: RequestContext, head: ResponseHead
    ) -> None:
        head.headers.setRawHeaders(self.header, [self.value])


@implementer(IPlugin, IFilterFactory)
class StampFactory:
    """
    The C{stamp} plugin: C{header = "X-Stamp"}, C{value = "..."}.
    """

    name = "stamp"

    def buildFilter(self, options: Mapping[str, object]) -> StampFilter:
        _checkKeys(options, ("header", "value"))
        value = options.get("value")
        if not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise FilterOptionError("value", "is required: printable ASCII text")
        return StampFilter(_headerName(options, "X-Stamp"), value.encode("ascii"))
