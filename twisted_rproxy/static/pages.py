"""
The small pages that static file serving writes itself: an error page with
headers of its own (L{_renderPage}), the redirect of C{/dir} to C{/dir/},
and a directory's listing.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from urllib.parse import quote

from twisted.web.iweb import IRequest

from twisted_rproxy.pages import errorBody, setStatus


def _header(request: IRequest, name: bytes) -> bytes | None:
    """
    A request header's lines joined with commas, L{None} without any.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return b", ".join(values)


def _renderPage(
    request: IRequest,
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    contentType: bytes = b"text/html; charset=utf-8",
) -> None:
    """
    Answer C{request} with a small page and finish it: the proxy's error
    page for C{status} (as L{renderError<twisted_rproxy.pages.renderError>}),
    with C{headers} added, such as C{Allow} on a 405.
    """
    if body is None:
        body = errorBody(status)
    setStatus(request, status)
    responseHeaders = request.responseHeaders
    for name, _ in list(responseHeaders.getAllRawHeaders()):
        if name.lower() not in (b"date", b"server", b"connection"):
            responseHeaders.removeHeader(name)
    responseHeaders.setRawHeaders(b"content-type", [contentType])
    responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
    if status >= 400:
        responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    for name, value in headers:
        responseHeaders.setRawHeaders(name, [value])
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


def redirectBody(location: bytes) -> bytes:
    """
    The page of a 301 to C{location} (printable ASCII already).
    """
    escaped = html.escape(location.decode("ascii")).encode("ascii")
    return (
        b'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        b"<title>301 Moved Permanently</title></head>\n<body>"
        b'<h1>301 Moved Permanently</h1>\n<p><a href="%s">%s</a></p>'
        b"</body></html>\n" % (escaped, escaped)
    )


def listingBody(path: bytes, entries: Sequence[tuple[bool, str]]) -> bytes:
    """
    A simple HTML listing of a directory.

    @param path: The directory's path, as the request names it.
    @param entries: C{(isFile, name)} of each entry, in order; directories
        are marked with a slash.
    """
    title = html.escape(path.decode("utf-8", "replace"))
    lines = [
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>Index of {title}</title></head>\n<body>"
        f"<h1>Index of {title}</h1>\n<ul>"
    ]
    for isFile, name in entries:
        slash = "" if isFile else "/"
        href = quote(name, safe="") + slash
        lines.append(
            f'<li><a href="{html.escape(href)}">{html.escape(name)}{slash}</a></li>'
        )
    lines.append("</ul></body></html>\n")
    return "\n".join(lines).encode("utf-8")
