"""
TLS: the server side of C{[[tls]]} listeners (certificates chosen by SNI,
Mozilla's protocol profiles, ALPN for HTTP/2, certificate reload without
dropping connections) and the client side of C{https://} backends
(verification, SNI, client certificates).

Everything is built on pyOpenSSL contexts and Twisted's TLS transport
(L{twisted.protocols.tls.TLSMemoryBIOFactory}); no cryptography of our own.
The choice of a certificate for a server name is a pure function
(L{chooseCertificate}), as is the reading of certificate files
(L{loadCertificate}), so that C{--check} reports the same errors the
listeners would meet.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IReactorTime,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from twisted_rproxy.config import (
    BackendServer,
    CertificateConfig,
    Config,
    ConfigError,
    PoolConfig,
    TLSConfig,
)
from twisted_rproxy.pages import renderError

__all__ = [
    "CertificateError",
    "HTTPSRedirect",
    "LoadedCertificate",
    "ServerTLS",
    "backendConnectionCreators",
    "checkTLSFiles",
    "chooseCertificate",
    "clientCertificateSubject",
    "describeTLSFailure",
    "loadCertificate",
]

_log = Logger()

#: Mozilla's "intermediate" TLS 1.2 cipher suites (server side TLS guide,
#: version 5.7), strongest first. The DHE suites of the guide are left out:
#: without DH parameters OpenSSL would not use them anyway, and ECDHE is
#: what every client of the profile speaks.
INTERMEDIATE_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
#: The TLS 1.3 suites of both profiles.
TLS13_CIPHERS = (
    b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)
#: The key exchange groups of both profiles.
CURVES = b"X25519:prime256v1:secp384r1"

#: OpenSSL's SSL_OP_PRIORITIZE_CHACHA (not exported by pyOpenSSL): with
#: server preference, still pick ChaCha20 for clients that prefer it (those
#: without AES hardware).
_OP_PRIORITIZE_CHACHA = 0x00200000

_SESSION_ID = b"twisted_rproxy"


#: The private key types OpenSSL serves certificates with.
_PrivateKey = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)


class CertificateError(Exception):
    """
    A certificate or key file that cannot be used; the message says which
    file and why.
    """


@frozen
class LoadedCertificate:
    """
    One certificate, read and checked, ready to serve.

    @ivar config: Where it was read from.
    @ivar names: The lowercased DNS names (wildcards like C{*.example.com}
        included) and IP addresses it is valid for.
    @ivar notBefore: When it becomes valid (UTC).
    @ivar notAfter: When it expires (UTC).
    @ivar certificate: The leaf certificate.
    @ivar chain: The intermediate certificates that follow it in its file.
    @ivar key: Its private key.
    """

    config: CertificateConfig
    names: tuple[str, ...]
    notBefore: datetime.datetime
    notAfter: datetime.datetime
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: _PrivateKey


def _readFile(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(
            f"cannot read the {what} file {path!r}: {e.strerror or e}"
        ) from None


def _loadCertificates(path: str, data: bytes, what: str) -> list[x509.Certificate]:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateError(f"no PEM certificate in the {what} file {path!r}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(
            f"invalid PEM certificate in the {what} file {path!r}: {e}"
        ) from None


def certificateNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The names a certificate is valid for: its subject alternative names
    (DNS names lowercased, IP addresses as text), or its common name when it
    has none.
    """
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        san = None
    names: list[str] = []
    if san is not None:
        names += [
            name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName)
        ]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if not names:
        for attribute in certificate.subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        ):
            value = attribute.value
            if isinstance(value, str):
                names.append(value.lower().rstrip("."))
    return tuple(names)


def loadCertificate(config: CertificateConfig) -> LoadedCertificate:
    """
    Read a certificate, its chain and its key, and check that they belong
    together.

    @raise CertificateError: If a file is missing or unreadable, holds no
        certificate or key, the key is encrypted, or the key is not the
        certificate's.
    """
    certificateData = _readFile(config.certificate, "certificate")
    certificates = _loadCertificates(config.certificate, certificateData, "certificate")
    keyData = (
        certificateData
        if config.key == config.certificate
        else _readFile(config.key, "key")
    )
    if b"PRIVATE KEY-----" not in keyData:
        where = "certificate" if config.key == config.certificate else "key"
        raise CertificateError(
            f"no PEM private key in the {where} file {config.key!r} "
            '(give the key with { certificate = "c.pem", key = "k.pem" } '
            "if it is in a file of its own)"
        )
    try:
        key = serialization.load_pem_private_key(keyData, password=None)
    except TypeError:
        raise CertificateError(
            f"the private key in {config.key!r} is encrypted; give an "
            "unencrypted key (readable by the proxy's user only)"
        ) from None
    except ValueError as e:
        raise CertificateError(f"invalid private key in {config.key!r}: {e}") from None
    leaf = certificates[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(
        der, spki
    ):
        raise CertificateError(
            f"the private key in {config.key!r} does not match the certificate "
            f"in {config.certificate!r}"
        )
    if not isinstance(
        key,
        (
            rsa.RSAPrivateKey,
            ec.EllipticCurvePrivateKey,
            ed25519.Ed25519PrivateKey,
            ed448.Ed448PrivateKey,
            dsa.DSAPrivateKey,
        ),
    ):
        raise CertificateError(
            f"unsupported private key type in {config.key!r}: {type(key).__name__}"
        )
    return LoadedCertificate(
        config=config,
        names=certificateNames(leaf),
        notBefore=leaf.not_valid_before_utc,
        notAfter=leaf.not_valid_after_utc,
        certificate=leaf,
        chain=tuple(certificates[1:]),
        key=key,
    )


def certificateWarnings(
    certificate: LoadedCertificate, now: datetime.datetime
) -> list[str]:
    """
    What is worth a warning about a usable certificate: that it expired, or
    is not valid yet.
    """
    path = certificate.config.certificate
    if certificate.notAfter <= now:
        return [
            f"the certificate in {path!r} expired on {certificate.notAfter:%Y-%m-%d}"
        ]
    if certificate.notBefore > now:
        return [
            f"the certificate in {path!r} is not valid before "
            f"{certificate.notBefore:%Y-%m-%d %H:%M} UTC"
        ]
    return []


def chooseCertificate(
    serverName: str | None, byName: Mapping[str, int], default: int = 0
) -> int:
    """
    Which certificate answers a TLS client.

    An exact name wins over a wildcard; a wildcard C{*.example.com} covers
    one label (C{a.example.com}, not C{example.com} nor C{a.b.example.com});
    a client without SNI, or with a name no certificate holds, gets the
    default.

    @param serverName: The client's SNI name, if it sent one.
    @param byName: The index of a certificate for each name it holds.
    @param default: The index of the default certificate.
    """
    if not serverName:
        return default
    name = serverName.lower().rstrip(".")
    found = byName.get(name)
    if found is not None:
        return found
    _, dot, parent = name.partition(".")
    if dot:
        found = byName.get("*." + parent)
        if found is not None:
            return found
    return default


def namesIndex(certificates: Sequence[LoadedCertificate]) -> dict[str, int]:
    """
    The index of the first certificate holding each name.
    """
    byName: dict[str, int] = {}
    for index, certificate in enumerate(certificates):
        for name in certificate.names:
            byName.setdefault(name, index)
    return byName


def _selectProtocol(offered: list[bytes], ours: Sequence[bytes]) -> bytes:
    for protocol in ours:
        if protocol in offered:
            return protocol
    # No overlap: go on without ALPN rather than fail the handshake.
    return SSL.NO_OVERLAPPING_PROTOCOLS  # type: ignore[return-value]


def _loadClientCA(path: str) -> list[x509.Certificate]:
    data = _readFile(path, "client CA")
    return _loadCertificates(path, data, "client CA")


def serverContext(
    config: TLSConfig,
    certificate: LoadedCertificate,
    clientCA: Sequence[x509.Certificate] = (),
) -> SSL.Context:
    """
    A pyOpenSSL server context for one certificate of a C{[[tls]]} group,
    with the group's profile and ALPN protocols.
    """
    context = SSL.Context(SSL.TLS_METHOD)
    options = (
        SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        # Mozilla: tickets whose key never rotates would undo forward secrecy.
        | SSL.OP_NO_TICKET
        | SSL.OP_SINGLE_ECDH_USE
    )
    if config.protocols == "modern":
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
    else:
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_cipher_list(INTERMEDIATE_CIPHERS)
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE | _OP_PRIORITIZE_CHACHA
    context.set_tls13_ciphersuites(TLS13_CIPHERS)
    context.set_options(options)
    _setCurves(context)
    context.set_session_id(_SESSION_ID)
    context.use_certificate(certificate.certificate)
    for extra in certificate.chain:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(certificate.key)
    context.check_privatekey()
    protocols = (b"h2", b"http/1.1") if config.http2 else (b"http/1.1",)
    context.set_alpn_select_callback(
        lambda connection, offered: _selectProtocol(offered, protocols)
    )
    if clientCA:
        store = context.get_cert_store()
        assert store is not None
        for ca in clientCA:
            store.add_cert(crypto.X509.from_cryptography(ca))
            # The names clients are told to pick a certificate by.
            context.add_client_ca(ca)
        context.set_verify(
            SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
            lambda connection, cert, errno, depth, ok: bool(ok),
        )
    return context


def _setCurves(context: SSL.Context) -> None:
    # pyOpenSSL offers no public way to list the key exchange groups; its
    # own binding does (OpenSSL's defaults include groups outside Mozilla's
    # profiles, such as X448 and finite-field ones).
    try:
        from OpenSSL._util import lib

        setCurves = lib.SSL_CTX_set1_curves_list
        raw = context._context
    except (ImportError, AttributeError):  # pragma: no cover
        return
    if not setCurves(raw, CURVES):  # pragma: no cover
        _log.warn(
            "Cannot restrict the TLS key exchange groups to {curves}", curves=CURVES
        )


@frozen
class _Served:
    """
    The certificates a L{ServerTLS} serves now, and their contexts.
    """

    certificates: tuple[LoadedCertificate, ...]
    contexts: tuple[SSL.Context, ...]
    byName: Mapping[str, int]


def _fileStamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The server side of one C{[[tls]]} group: makes the TLS connection of
    each accepted client, with the certificate its SNI name asks for.

    Every new connection takes the contexts current at that moment, so that
    L{reload} changes what new handshakes see and leaves established
    connections as they are.

    @ivar config: The group's configuration.
    """

    def __init__(self, config: TLSConfig) -> None:
        """
        Read every certificate of C{config}.

        @raise CertificateError: If one cannot be used.
        """
        self.config = config
        clientCA = _loadClientCA(config.clientCA) if config.clientCA else []
        certificates = tuple(loadCertificate(c) for c in config.certificates)
        self._served = self._serve(certificates, clientCA)
        self._stamps = self._currentStamps()
        self._watcher: LoopingCall | None = None

    @property
    def certificates(self) -> tuple[LoadedCertificate, ...]:
        """
        The certificates served now, in configuration order.
        """
        return self._served.certificates

    def _serve(
        self,
        certificates: tuple[LoadedCertificate, ...],
        clientCA: Sequence[x509.Certificate],
    ) -> _Served:
        contexts = tuple(serverContext(self.config, c, clientCA) for c in certificates)
        for context in contexts:
            context.set_tlsext_servername_callback(self._serverNameReceived)
        return _Served(certificates, contexts, namesIndex(certificates))

    def _serverNameReceived(self, connection: SSL.Connection) -> None:
        served = self._served
        raw = connection.get_servername()
        name = raw.decode("ascii", "replace") if raw else None
        context = served.contexts[chooseCertificate(name, served.byName)]
        if connection.get_context() is not context:
            connection.set_context(context)

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        The TLS connection of a newly accepted client, on the default
        certificate's context until its SNI name is known.
        """
        return SSL.Connection(self._served.contexts[0], None)

    def _paths(self) -> list[str]:
        paths = []
        for certificate in self.config.certificates:
            paths.append(certificate.certificate)
            if certificate.key != certificate.certificate:
                paths.append(certificate.key)
        if self.config.clientCA:
            paths.append(self.config.clientCA)
        return paths

    def _currentStamps(self) -> dict[str, tuple[int, int] | None]:
        return {path: _fileStamp(path) for path in self._paths()}

    def reload(self) -> bool:
        """
        Read the certificate files again.  A certificate whose files cannot
        be used now is reported in the log and stays as it was; the others
        are replaced for new handshakes.

        @return: Whether every file was read.
        """
        self._stamps = self._currentStamps()
        complete = True
        old = self._served
        clientCA: Sequence[x509.Certificate] = []
        if self.config.clientCA:
            try:
                clientCA = _loadClientCA(self.config.clientCA)
            except CertificateError as e:
                _log.error(
                    "TLS reload: {error}; keeping the certificates in service",
                    error=str(e),
                )
                return False
        certificates = []
        for index, config in enumerate(self.config.certificates):
            try:
                certificates.append(loadCertificate(config))
            except CertificateError as e:
                complete = False
                _log.error(
                    "TLS reload: {error}; keeping the certificate in service",
                    error=str(e),
                )
                certificates.append(old.certificates[index])
        self._served = self._serve(tuple(certificates), clientCA)
        _log.info(
            "TLS certificates reloaded for {listen}",
            listen=", ".join(self.config.listen),
        )
        return complete

    def reloadIfChanged(self) -> bool | None:
        """
        L{reload} if a certificate file changed since it was last read.

        @return: L{None} if nothing changed, else what L{reload} returned.
        """
        if self._currentStamps() == self._stamps:
            return None
        return self.reload()

    def startWatching(self, clock: IReactorTime) -> None:
        """
        Check the files every C{watchInterval} seconds, if configured.
        """
        interval = self.config.watchInterval
        if interval is None or self._watcher is not None:
            return
        watcher = self._watcher = LoopingCall(self.reloadIfChanged)
        watcher.clock = clock
        watcher.start(interval, now=False).addErrback(
            lambda f: _log.failure("Certificate watching failed", f)
        )

    def stopWatching(self) -> None:
        """
        Stop checking the files.
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.running:
            watcher.stop()


def checkTLSFiles(config: Config, now: datetime.datetime | None = None) -> list[str]:
    """
    Read every certificate, key and CA file a configuration names, as
    C{--check} and start-up do.

    @param now: The time expiry is judged at (UTC); the current time if
        L{None}.
    @return: Warnings (expired, or not yet valid, certificates).
    @raise ConfigError: For the first file that cannot be used, naming
        its key.
    """
    if now is None:
        now = datetime.datetime.now(datetime.timezone.utc)
    source = config.source
    warnings: list[str] = []
    for index, group in enumerate(config.tls):
        for position, certificateConfig in enumerate(group.certificates):
            key = f"tls[{index}].certificates[{position}]"
            try:
                certificate = loadCertificate(certificateConfig)
            except CertificateError as e:
                raise ConfigError(source, key, str(e)) from None
            warnings += [f"{key}: {w}" for w in certificateWarnings(certificate, now)]
        if group.clientCA:
            try:
                _loadClientCA(group.clientCA)
            except CertificateError as e:
                raise ConfigError(source, f"tls[{index}].client_ca", str(e)) from None
    for name, pool in config.pools.items():
        prefix = f"pools.{name}"
        if pool.tlsCA is not None:
            try:
                _loadCertificates(pool.tlsCA, _readFile(pool.tlsCA, "CA"), "CA")
            except CertificateError as e:
                raise ConfigError(source, f"{prefix}.tls_ca", str(e)) from None
        if pool.tlsClientCertificate is not None:
            key = f"{prefix}.tls_client_certificate"
            try:
                certificate = loadCertificate(pool.tlsClientCertificate)
            except CertificateError as e:
                raise ConfigError(source, key, str(e)) from None
            warnings += [f"{key}: {w}" for w in certificateWarnings(certificate, now)]
    return warnings


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


def backendConnectionCreators(
    pool: PoolConfig,
) -> dict[BackendServer, IOpenSSLClientConnectionCreator]:
    """
    The TLS connection creator of each C{https} server of a pool, made once
    when the pool is built.

    Certificates are verified with service-identity against the server's
    host (or C{tls_server_name}), trusting C{tls_ca} or the system trust
    store; C{tls_verify = false} turns that off, with a warning in the log.

    @raise CertificateError: If C{tls_ca} or C{tls_client_certificate}
        cannot be used.
    """
    servers = [s for s in pool.servers if s.scheme == "https"]
    if not servers:
        return {}
    clientCertificate: PrivateCertificate | None = None
    if pool.tlsClientCertificate is not None:
        loaded = loadCertificate(pool.tlsClientCertificate)
        clientCertificate = PrivateCertificate.fromCertificateAndKeyPair(
            Certificate(crypto.X509.from_cryptography(loaded.certificate)),
            KeyPair(crypto.PKey.from_cryptography_key(loaded.key)),
        )
    creators: dict[BackendServer, IOpenSSLClientConnectionCreator] = {}
    if not pool.tlsVerify:
        _log.warn(
            "Pool {pool}: TLS certificates of its https servers are NOT "
            "verified (tls_verify = false): anyone on the path can "
            "impersonate them",
            pool=pool.name,
        )
        options: dict[str, Any] = {"verify": False}
        if clientCertificate is not None:
            options["privateKey"] = clientCertificate.privateKey.original
            options["certificate"] = clientCertificate.original
        context = CertificateOptions(**options).getContext()
        for server in servers:
            name = pool.tlsServerName or server.host
            sni = None if _isAddress(name) else name.encode("idna")
            creators[server] = _UnverifiedClientTLS(context, sni)
        return creators
    if pool.tlsCA is not None:
        cas = _loadCertificates(pool.tlsCA, _readFile(pool.tlsCA, "CA"), "CA")
        trustRoot: Any = trustRootFromCertificates(
            [Certificate(crypto.X509.from_cryptography(ca)) for ca in cas]
        )
    else:
        trustRoot = platformTrust()
    for server in servers:
        creators[server] = optionsForClientTLS(
            pool.tlsServerName or server.host,
            trustRoot=trustRoot,
            clientCertificate=clientCertificate,
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
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None)
    # An HTTP/2 stream's connection is one level further.
    if transport is None:
        transport = getattr(getattr(channel, "_conn", None), "transport", None)
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
