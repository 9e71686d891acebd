"""
What the HTTP side needs of TLS: the redirect of plain-HTTP listeners to
https (C{redirect_http}), and the subject of the client certificate a
request came with (C{client_ca}), for filters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy import _twisted
from twisted_rproxy.pages import renderError

__all__ = ["HTTPSRedirect", "clientCertificateSubject"]


class HTTPSRedirect(Resource):
    """
    Answers every request with a redirect to the same URL over https (for
    the plain-HTTP listeners when C{redirect_http = true}).

    @ivar port: The https port put in the redirect, or L{None} for 443 (the
        default, left out of the URL).
    """

    isLeaf = True

    def __init__(self, port: int | None = None) -> None:
        Resource.__init__(self)
        self.port = port

    def render(self, request: IRequest) -> bytes | int:
        host = request.getHeader(b"host")
        name = b""
        if host:
            name = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host
        if not name or not all(33 <= c < 127 and c not in b"/\\?#@" for c in name):
            renderError(request, 400)
            return NOT_DONE_YET
        port = self.port
        authority = name if port in (None, 443) else b"%s:%d" % (name, port)
        uri: bytes = request.uri
        if not uri.startswith(b"/"):
            uri = b"/" + uri
        request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"location", b"https://" + authority + uri)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Moved to https\n"


def clientCertificateSubject(request: IRequest) -> str | None:
    """
    The subject of the client certificate verified on C{request}'s
    connection (C{client_ca}), as an RFC 4514 string such as
    C{"CN=alice,O=Example"}, or L{None}.  For filters deciding on who the
    client is.
    """
    transport = _twisted.connectionTransport(request)
    getPeerCertificate: Callable[[], Any] | None = getattr(
        transport, "getPeerCertificate", None
    )
    if getPeerCertificate is None:
        return None
    certificate = getPeerCertificate()
    if certificate is None:
        return None
    subject: str = certificate.to_cryptography().subject.rfc4514_string()
    return subject
