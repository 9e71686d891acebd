"""
The client-facing endpoint: the L{ProxySite}, its HTTP/1.1 channel and
request class, body size limits, request-body streaming and the access log.

twisted.web reads a request's whole body before it calls C{render}. The
proxy needs two things it does not offer: refusing an oversized body from
its C{Content-Length} before reading it (413), and forwarding a body while
it arrives (C{request_buffering = false}). L{ProxyHTTPChannel} asks the
request what to do once the headers are in, and L{ProxyRequest} either
buffers the body (in memory, or in a temporary file past
L{ProxySite.memoryBodyLimit}) or starts processing at once and streams it.

The package, each module importing only those before it: L{timeouts} (the
idle timer and the time limits of receiving a request), L{chunked} (the
decoder of chunked bodies), L{channel} (the connection's protocol: the
HTTP/1.1 channel, its head checks and refusals, and the hand-over to
HTTP/2), L{request} (the request), and L{site} (the site and its access
log).
"""

from __future__ import annotations

from twisted_rproxy.server.channel import ProxyHTTPChannel
from twisted_rproxy.server.request import BodyPolicy, ProxyRequest, httpDate
from twisted_rproxy.server.site import ProxySite
from twisted_rproxy.server.timeouts import RequestGuard

__all__ = [
    "BodyPolicy",
    "ProxyHTTPChannel",
    "ProxyRequest",
    "ProxySite",
    "RequestGuard",
    "httpDate",
]
