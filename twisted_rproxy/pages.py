"""
The proxy's own error pages: small, the same for every route, and saying
nothing about what stands behind the proxy.
"""

from __future__ import annotations

from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest

_TEMPLATE = (
    b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%d %s</title>"
    b"</head>\n<body><h1>%d %s</h1>\n<p>%s</p></body></html>\n"
)

_EXPLANATIONS = {
    400: b"The request could not be understood.",
    403: b"You are not allowed to access this resource.",
    404: b"Nothing is served at this address.",
    405: b"This method is not allowed here.",
    413: b"The request body is larger than this server accepts.",
    408: b"The request was not received in time.",
    414: b"The request target is longer than this server accepts.",
    429: b"Too many requests: please wait before trying again.",
    431: b"The request headers are larger than this server accepts.",
    500: b"The server met an error while handling the request.",
    502: b"The server could not get a valid response to handle this request.",
    503: b"The service is temporarily unable to handle this request.",
    504: b"The server did not get a response in time to handle this request.",
}


def errorBody(status: int) -> bytes:
    """
    The HTML page for an error status.

    @param status: An HTTP status code, 4xx or 5xx.
    @return: The page, as UTF-8 bytes.
    """
    phrase = RESPONSES.get(status, b"Error")
    explanation = _EXPLANATIONS.get(status, phrase + b".")
    return _TEMPLATE % (status, phrase, status, phrase, explanation)


def renderError(request: IRequest, status: int, retryAfter: int | None = None) -> None:
    """
    Answer C{request} with the proxy's page for C{status} and finish it.

    Headers set earlier for the response are dropped, so that nothing a
    backend sent leaks into the error page.

    @param request: The request to answer; it must not have started writing.
    @param status: The HTTP status code.
    @param retryAfter: Seconds for a C{Retry-After} header, if any.
    """
    body = errorBody(status)
    request.setResponseCode(status)
    headers = request.responseHeaders
    for name, _ in list(headers.getAllRawHeaders()):
        if name.lower() not in (b"date", b"server", b"connection"):
            headers.removeHeader(name)
    headers.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
    headers.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    if retryAfter is not None:
        headers.setRawHeaders(b"retry-after", [b"%d" % (retryAfter,)])
    if request.method != b"HEAD":
        request.write(body)
    request.finish()
