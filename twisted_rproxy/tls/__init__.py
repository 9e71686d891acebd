"""
TLS: the server side of C{[[tls]]} listeners (certificates chosen by SNI,
Mozilla's protocol profiles, ALPN for HTTP/2, certificate reload without
dropping connections) and the client side of C{https://} backends
(verification, SNI, client certificates).

Everything is built on pyOpenSSL contexts and Twisted's TLS transport
(L{twisted.protocols.tls.TLSMemoryBIOFactory}); no cryptography of our own.
The modules, each importing only those before it:

  - L{certificates <twisted_rproxy.tls.certificates>}: reading and checking
    certificate and key files (L{loadCertificate}, L{checkTLSFiles}, for
    C{--check} and start-up alike);
  - L{ocspcheck <twisted_rproxy.tls.ocspcheck>}: OCSP decisions (whether a
    responder's answer may be stapled, L{checkResponse}; when to fetch
    again);
  - L{ocsp <twisted_rproxy.tls.ocsp>}: OCSP stapling (L{OCSPStapler}:
    responses fetched, cached, refreshed and stapled to handshakes);
  - L{server <twisted_rproxy.tls.server>}: the listeners' contexts, the
    choice of a certificate by SNI (L{chooseCertificate}), ALPN, reload
    (L{ServerTLS});
  - L{client <twisted_rproxy.tls.client>}: https backends
    (L{backendConnectionCreators}, L{describeTLSFailure});
  - L{web <twisted_rproxy.tls.web>}: the redirect to https
    (L{HTTPSRedirect}) and the client certificate of a request
    (L{clientCertificateSubject}).

This package re-exports their public names.
"""

from __future__ import annotations

from twisted_rproxy.tls.certificates import (
    CertificateError,
    LoadedCertificate,
    certificateNames,
    certificateWarnings,
    checkTLSFiles,
    loadCertificate,
)
from twisted_rproxy.tls.client import backendConnectionCreators, describeTLSFailure
from twisted_rproxy.tls.ocsp import OCSPStapler
from twisted_rproxy.tls.ocspcheck import OCSPStatus, checkResponse
from twisted_rproxy.tls.server import (
    CURVES,
    INTERMEDIATE_CIPHERS,
    TLS13_CIPHERS,
    ServerTLS,
    chooseCertificate,
    namesIndex,
    serverContext,
)
from twisted_rproxy.tls.web import HTTPSRedirect, clientCertificateSubject

__all__ = [
    "CURVES",
    "INTERMEDIATE_CIPHERS",
    "TLS13_CIPHERS",
    "CertificateError",
    "HTTPSRedirect",
    "LoadedCertificate",
    "OCSPStapler",
    "OCSPStatus",
    "ServerTLS",
    "backendConnectionCreators",
    "certificateNames",
    "certificateWarnings",
    "checkResponse",
    "checkTLSFiles",
    "chooseCertificate",
    "clientCertificateSubject",
    "describeTLSFailure",
    "loadCertificate",
    "namesIndex",
    "serverContext",
]
