"""
Request hardening: the checks that make what reaches a backend a single,
unambiguous request, as plain functions of the request head.

twisted.web's L{HTTPChannel} already refuses (with a bare 400) a
C{Content-Length} that is not digits, two framing headers
(C{Content-Length} twice, or with C{Transfer-Encoding}), a transfer coding
other than C{chunked} (or C{identity}), bad chunk sizes, NUL, CR or LF in a
header value, header names that are not tokens, and request lines that are
not C{METHOD SP target SP HTTP/1.x}. What it lets through and these checks
refuse: folded header lines (obs-fold) and other control characters
(L{BAD_LINE}, once per line), and, once per request (L{checkHead}), a
missing or repeated C{Host}, a C{Host} that is not a host name, an
absolute-form target whose authority differs from C{Host}, other target
forms, fragments, C{Transfer-Encoding} in HTTP/1.0 or other than one
C{chunked}, and request lines past their limit (414).  The channel
(L{twisted_rproxy.server.channel}) adds what needs the parser's state:
lines ended by a bare LF, and chunk sizes past L{MAX_CHUNK_SIZE} or the
body limit, are refused as soon as they arrive.
"""

from __future__ import annotations

import re

from twisted.web.http_headers import Headers

from twisted_rproxy.pages import errorBody, reasonPhrase

#: A request or header line with a control character (HTAB aside) or that
#: starts with white space (obs-fold, RFC 9112 section 5.2: a proxy must
#: refuse it or replace it, and folding rules differ between parsers).
BAD_LINE = re.compile(rb"\A[ \t]|[\x00-\x08\x0a-\x1f\x7f]")

#: The largest chunk size accepted in a chunked request body: what a
#: signed 64-bit parser holds (a backend's may overflow past it, and no
#: body limit comes near it).
MAX_CHUNK_SIZE = 2**63 - 1

# RFC 3986 reg-name, IPv4 or [IPv6], with an optional port.
_HOST = re.compile(
    rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?\Z"
)


def checkHead(
    command: bytes,
    target: bytes,
    version: bytes,
    headers: Headers,
    maxRequestLine: int,
) -> tuple[int, bytes]:
    """
    Check a request head that twisted.web parsed.

    @param command: The method.
    @param target: The request target.
    @param version: C{b"HTTP/1.0"} or C{b"HTTP/1.1"}.
    @param headers: The request headers.
    @param maxRequestLine: The longest request line accepted.
    @return: C{(0, target)} to go on with C{target} (an absolute-form target
        becomes origin-form), or C{(status, b"")} to refuse the request.
    """
    if len(command) + len(target) + 10 > maxRequestLine:
        return 414, b""
    hosts = headers.getRawHeaders(b"host")
    if hosts is None:
        if version != b"HTTP/1.0":
            return 400, b""
    elif len(hosts) != 1 or _HOST.match(hosts[0]) is None:
        return 400, b""
    codings = headers.getRawHeaders(b"transfer-encoding")
    if codings is not None and (
        version == b"HTTP/1.0" or len(codings) != 1 or codings[0].lower() != b"chunked"
    ):
        return 400, b""
    if b"#" in target:
        return 400, b""
    if target[:1] == b"/":
        return 0, target
    if target == b"*":
        return (0, target) if command == b"OPTIONS" else (400, b"")
    if command == b"CONNECT":
        # Authority-form: the CONNECT support decides (405 when off).
        return 0, target
    lower = target[:8].lower()
    if lower.startswith(b"http://"):
        rest = target[7:]
    elif lower.startswith(b"https://"):
        rest = target[8:]
    else:
        return 400, b""
    slash = rest.find(b"/")
    query = rest.find(b"?")
    end = min(i for i in (slash, query, len(rest)) if i >= 0)
    authority, path = rest[:end], rest[end:]
    if not authority or b"@" in authority or _HOST.match(authority) is None:
        return 400, b""
    if hosts is not None and hosts[0].lower() != authority.lower():
        # RFC 9112 section 3.2.2 lets the target win; a proxy in front of
        # other parsers must not let the two disagree.
        return 400, b""
    if not path.startswith(b"/"):
        path = b"/" + path
    return 0, path


def bodyRateDeadline(start: float, received: int, rate: float, grace: float) -> float:
    """
    When a request body falls below its minimum rate, as Kestrel's
    C{MinRequestBodyDataRate}: the average rate since C{start}, checked
    once C{grace} seconds have passed.

    With C{received} bytes in, the body keeps its rate until
    C{received / rate} seconds after C{start}; it is too slow once that
    time (and the grace period) is past and no more has arrived. One timer
    then checks a body however it trickles in, instead of one per read.

    @param start: When the body started (or its rate was last reset).
    @param received: The body bytes received since C{start}.
    @param rate: The minimum rate in bytes per second, greater than 0.
    @param grace: The seconds after C{start} the rate is not checked.
    @return: The time past which the body is too slow, unless more of it
        arrives before.
    """
    return start + max(grace, received / rate)


def refusal(status: int, serverHeader: bytes | None = None) -> bytes:
    """
    A whole response refusing a request the channel could not parse: the
    proxy's small page, then the connection closes.
    """
    body = errorBody(status)
    head = b"HTTP/1.1 %d %s\r\n" % (status, reasonPhrase(status))
    if serverHeader:
        head += b"Server: " + serverHeader + b"\r\n"
    return (
        head
        + b"Content-Type: text/html; charset=utf-8\r\nCache-Control: no-store\r\n"
        + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % (len(body),)
        + body
    )
