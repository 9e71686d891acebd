"""
The built-in C{error_pages} filter: replaces the body of a backend's
error responses (5xx by default) with the proxy's own page, so that stack
traces and server banners from inside never reach a client.

Configuration::

    [filters.hide-errors]
    plugin = "error_pages"
    statuses = [500, 502, 503, 504]   # default: every 5xx

The status stays the backend's; its headers, but for C{Date},
C{Retry-After} and C{Set-Cookie}, are replaced by the page's.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.plugin import IPlugin
from twisted.web.http import NO_BODY_CODES
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.filteroptions import FilterOptions
from twisted_rproxy.filters import RequestContext, ResponseHead
from twisted_rproxy.interfaces import IBodyTransform, IFilterFactory, IResponseFilter
from twisted_rproxy.pages import errorBody

_KEPT = frozenset([b"date", b"retry-after", b"set-cookie"])


@implementer(IBodyTransform)
class _ReplacedBody:
    """
    Drops the backend's body and sends the page instead.
    """

    def __init__(self, page: bytes) -> None:
        self.page = page

    def transform(self, data: bytes) -> bytes:
        return b""

    def flush(self) -> bytes:
        return self.page


@implementer(IResponseFilter)
class ErrorPagesFilter:
    """
    Replaces the bodies of responses whose status is in C{statuses}.
    """

    def __init__(self, statuses: frozenset[int] | None) -> None:
        self.statuses = statuses

    def replaces(self, code: int) -> bool:
        """
        Whether a response of status C{code} gets the proxy's page.
        """
        if self.statuses is None:
            return 500 <= code <= 599
        return code in self.statuses

    def filterResponse(
        self, request: IRequest, context: RequestContext, head: ResponseHead
    ) -> IBodyTransform | None:
        if not self.replaces(head.code) or head.code in NO_BODY_CODES:
            return None
        headers = head.headers
        for name, _ in list(headers.getAllRawHeaders()):
            if name.lower() not in _KEPT:
                headers.removeHeader(name)
        headers.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        return _ReplacedBody(errorBody(head.code))


@implementer(IPlugin, IFilterFactory)
class ErrorPagesFactory:
    """
    The C{error_pages} filter plugin.
    """

    name = "error_pages"

    def buildFilter(self, options: Mapping[str, object]) -> ErrorPagesFilter:
        read = FilterOptions(options)
        read.checkKeys(["statuses"])
        if not read.has("statuses"):
            return ErrorPagesFilter(None)
        statuses = read.integerList("statuses", (), 400, 599, allowEmpty=False)
        return ErrorPagesFilter(frozenset(statuses))


#: What getPlugins finds.
errorPages = ErrorPagesFactory()
