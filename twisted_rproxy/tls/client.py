"""
The client side of C{https://} backends: one TLS connection creator per
server of a pool, verifying the server's certificate with service-identity
against its name (or not, with C{tls_verify = false}), sending SNI and, if
configured, a client certificate; and the few words the log says when such a
handshake fails.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy import _twisted
from twisted_rproxy.config import BackendServer, PoolConfig
from twisted_rproxy.tls.certificates import (
    CertificateError,
    loadCertificate,
    loadCertificates,
    readFile,
)

__all__ = ["backendConnectionCreators", "describeTLSFailure", "serverName"]

_log = Logger()


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedClientTLS:
    """
    TLS to a backend whose certificate is not checked (C{tls_verify =
    false}): encryption without authentication, still with SNI.
    """

    def __init__(self, context: SSL.Context, serverName: bytes | None) -> None:
        self._context = context
        self._serverName = serverName

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._serverName is not None:
            connection.set_tlsext_host_name(self._serverName)
        return connection


def _isAddress(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def serverName(pool: PoolConfig, server: BackendServer) -> str | None:
    """
    The name an C{https} server of C{pool} is verified against and sent by
    SNI: the server entry's C{tls_server_name}, else the pool's, else its
    host; L{None} for a unix-socket server that has neither (its socket
    path is no name).
    """
    name = server.tlsServerName or pool.tlsServerName
    if name is not None:
        return name
    return None if server.socketPath is not None else server.host


def backendConnectionCreators(
    pool: PoolConfig,
) -> dict[BackendServer, IOpenSSLClientConnectionCreator]:
    """
    The TLS connection creator of each C{https} server of a pool, made once
    when the pool is built.

    Certificates are verified with service-identity against the server's
    name (L{serverName}), trusting C{tls_ca} or the system trust store;
    C{tls_verify = false} turns that off, with a warning in the log.

    @raise CertificateError: If C{tls_ca} or C{tls_client_certificate}
        cannot be used, or a unix-socket server would be verified without a
        name (the configuration's checks refuse that first).
    """
    servers = [s for s in pool.servers if s.scheme == "https"]
    if not servers:
        return {}
    if pool.tlsVerify:
        for server in servers:
            if serverName(pool, server) is None:
                raise CertificateError(
                    f"pool {pool.name}: {server.url} is https over a unix "
                    "socket: its tls_server_name is needed to verify its "
                    "certificate"
                )
    # The client certificate goes to Twisted's CertificateOptions as
    # cryptography objects: pyOpenSSL deprecates its own PKey and X509 there.
    clientCertificate: dict[str, Any] = {}
    if pool.tlsClientCertificate is not None:
        loaded = loadCertificate(pool.tlsClientCertificate)
        clientCertificate = _twisted.certificateOptions(loaded.certificate, loaded.key)
    creators: dict[BackendServer, IOpenSSLClientConnectionCreator] = {}
    if not pool.tlsVerify:
        _log.warn(
            "Pool {pool}: TLS certificates of its https servers are NOT "
            "verified (tls_verify = false): anyone on the path can "
            "impersonate them",
            pool=pool.name,
        )
        context = CertificateOptions(verify=False, **clientCertificate).getContext()
        for server in servers:
            name = serverName(pool, server)
            sni = None if name is None or _isAddress(name) else name.encode("idna")
            creators[server] = _UnverifiedClientTLS(context, sni)
        return creators
    if pool.tlsCA is not None:
        cas = loadCertificates(pool.tlsCA, readFile(pool.tlsCA, "CA"), "CA")
        trustRoot: Any = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(ca)) for ca in cas]
        )
    else:
        trustRoot = platformTrust()
    for server in servers:
        name = serverName(pool, server)
        assert name is not None  # Checked above.
        creators[server] = optionsForClientTLS(
            name,
            trustRoot=trustRoot,
            extraCertificateOptions=dict(clientCertificate),
        )
    return creators


def describeTLSFailure(reason: Failure) -> str | None:
    """
    Why a TLS connection to a backend failed, in a few words for the log;
    L{None} if C{reason} is not a TLS failure.
    """
    if reason.check(VerificationError):
        return f"TLS certificate does not match the server name ({reason.value})"
    if reason.check(SSL.Error):
        args = reason.value.args if reason.value is not None else ()
        details: Iterable[Any] = args[0] if args else []
        texts = []
        for detail in details:
            if isinstance(detail, tuple) and detail:
                texts.append(str(detail[-1]))
            else:
                texts.append(str(detail))
        return "TLS handshake failed: " + ("; ".join(texts) or "unknown error")
    return None
