"""
The proxy's own error pages: small, the same for every route, and saying
nothing about what stands behind the proxy.
"""

from __future__ import annotations

from twisted.web.http import RESPONSES
from twisted.web.iweb import IRequest

#: The reason phrases of the registered statuses: the IANA HTTP status
#: code registry's (RFC 9110 and the RFCs it names), which Twisted's
#: L{RESPONSES <twisted.web.http.RESPONSES>} partly lacks (429, 431...) or
#: spells as RFC 2616 did ("Request Time-out"); and nginx's 499, which
#: access logs show.
_PHRASES = {
    100: b"Continue",
    101: b"Switching Protocols",
    102: b"Processing",
    103: b"Early Hints",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    203: b"Non-Authoritative Information",
    204: b"No Content",
    205: b"Reset Content",
    206: b"Partial Content",
    207: b"Multi-Status",
    208: b"Already Reported",
    226: b"IM Used",
    300: b"Multiple Choices",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    305: b"Use Proxy",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    402: b"Payment Required",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    409: b"Conflict",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    415: b"Unsupported Media Type",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    422: b"Unprocessable Content",
    423: b"Locked",
    424: b"Failed Dependency",
    425: b"Too Early",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    506: b"Variant Also Negotiates",
    507: b"Insufficient Storage",
    508: b"Loop Detected",
    510: b"Not Extended",
    511: b"Network Authentication Required",
}

#: The phrase of an unregistered status: its class's name (RFC 9110
#: section 15), as a client that does not know the code reads it.
_CLASS_PHRASES = {
    1: b"Informational",
    2: b"Successful",
    3: b"Redirection",
    4: b"Client Error",
    5: b"Server Error",
}

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


def reasonPhrase(status: int) -> bytes:
    """
    The reason phrase of C{status}, for the status lines and pages the
    proxy writes itself: the registered one, else Twisted's, else that of
    the status's class: for a status from 100 to 599, never Twisted's
    C{"Unknown Status"}.

    @param status: An HTTP status code, 100 to 599.
    """
    phrase = _PHRASES.get(status) or RESPONSES.get(status)
    if phrase is None:
        phrase = _CLASS_PHRASES.get(status // 100, b"Unknown Status")
    return phrase


def setStatus(request: IRequest, status: int) -> None:
    """
    Set the status of the response to C{request}, with its
    L{reasonPhrase}.

    @param request: A request whose response has not started.
    @param status: An HTTP status code.
    """
    request.setResponseCode(status, reasonPhrase(status))


def errorBody(status: int) -> bytes:
    """
    The HTML page for an error status.

    @param status: An HTTP status code, 4xx or 5xx.
    @return: The page, as UTF-8 bytes.
    """
    phrase = reasonPhrase(status)
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
    setStatus(request, status)
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
