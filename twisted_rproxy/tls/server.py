"""
The server side of C{[[tls]]} listeners: one pyOpenSSL context per
certificate with Mozilla's protocol profiles and ALPN for HTTP/2, the
certificate chosen by the client's SNI name, and certificate reload (on
demand or by watching the files) without dropping connections.

The choice of a certificate for a server name is a pure function
(L{chooseCertificate}); L{ServerTLS} is what Twisted's TLS transport
(L{twisted.protocols.tls.TLSMemoryBIOFactory}) asks for each accepted
connection.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Mapping, Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from twisted_rproxy import _twisted
from twisted_rproxy.config import CertificateConfig, TLSConfig
from twisted_rproxy.tls.certificates import (
    CertificateError,
    LoadedCertificate,
    PrivateKey,
    certificateNames,
    loadCertificate,
    loadClientCA,
)
from twisted_rproxy.tls.ocsp import OCSPStapler

__all__ = [
    "ACME_TLS_1",
    "CURVES",
    "ChallengeCertificates",
    "INTERMEDIATE_CIPHERS",
    "TLS13_CIPHERS",
    "ServerTLS",
    "chooseCertificate",
    "namesIndex",
    "serverContext",
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

#: The ALPN protocol of the ACME TLS-ALPN-01 challenge (RFC 8737).
ACME_TLS_1 = b"acme-tls/1"

#: Gives the TLS-ALPN-01 certificate and key for a client's SNI name while
#: a challenge for it is under way, else L{None}.
ChallengeCertificates = Callable[
    [str | None], "tuple[x509.Certificate, PrivateKey] | None"
]


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


def serverContext(
    config: TLSConfig,
    certificate: LoadedCertificate,
    clientCA: Sequence[x509.Certificate] = (),
    selectProtocol: Callable[[SSL.Connection, list[bytes]], bytes] | None = None,
) -> SSL.Context:
    """
    A pyOpenSSL server context for one certificate of a C{[[tls]]} group,
    with the group's profile and ALPN protocols.

    @param selectProtocol: Chooses the ALPN protocol from a client's offer
        instead of the group's choice (the first of C{h2}, C{http/1.1} the
        client offers).
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
    if not _twisted.setKeyExchangeGroups(context, CURVES):  # pragma: no cover
        _log.warn(
            "Cannot restrict the TLS key exchange groups to {curves}", curves=CURVES
        )
    context.set_session_id(_SESSION_ID)
    context.use_certificate(certificate.certificate)
    for extra in certificate.chain:
        context.add_extra_chain_cert(extra)
    context.use_privatekey(certificate.key)
    context.check_privatekey()
    protocols = (b"h2", b"http/1.1") if config.http2 else (b"http/1.1",)
    context.set_alpn_select_callback(
        selectProtocol
        or (lambda connection, offered: _selectProtocol(offered, protocols))
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


@frozen
class _Served:
    """
    The certificates a L{ServerTLS} serves now, and their contexts.
    """

    certificates: tuple[LoadedCertificate, ...]
    contexts: tuple[SSL.Context, ...]
    byName: Mapping[str, int]


def placeholderCertificate(names: Sequence[str]) -> LoadedCertificate:
    """
    A self-signed certificate for C{names}, served by a group whose only
    certificate comes from an ACME CA until the CA issued it.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else "localhost")]
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False
        )
        .sign(key, hashes.SHA256())
    )
    return LoadedCertificate(
        config=CertificateConfig(certificate="<placeholder>", key="<placeholder>"),
        names=certificateNames(leaf),
        notBefore=leaf.not_valid_before_utc,
        notAfter=leaf.not_valid_after_utc,
        certificate=leaf,
        chain=(),
        key=key,
    )


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
    @ivar ocsp: The L{OCSPStapler} its contexts staple from, or L{None}.
    @ivar challengeCertificates: Where the TLS-ALPN-01 certificates of the
        ACME challenges under way are found, or L{None}.
    """

    def __init__(self, config: TLSConfig, ocsp: OCSPStapler | None = None) -> None:
        """
        Read every certificate of C{config}.

        @param ocsp: What staples OCSP responses to the handshakes (when the
            group's C{ocsp_stapling} is on): told the certificates served,
            installed on their contexts.
        @raise CertificateError: If one cannot be used.
        """
        self.config = config
        self.ocsp = ocsp if config.ocspStapling else None
        clientCA = loadClientCA(config.clientCA) if config.clientCA else []
        certificates = tuple(loadCertificate(c) for c in config.certificates)
        self.challengeCertificates: ChallengeCertificates | None = None
        #: The certificates obtained from an ACME CA, by name.
        self._managed: dict[str, LoadedCertificate] = {}
        self._placeholder: LoadedCertificate | None = None
        self._clientCA: Sequence[x509.Certificate] = clientCA
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
        files = len(certificates)
        certificates = certificates[:files] + tuple(self._managed.values())
        if not certificates:
            if self._placeholder is None:
                self._placeholder = placeholderCertificate(self.config.acmeDomains)
            certificates = (self._placeholder,)
        contexts = tuple(
            serverContext(self.config, c, clientCA, self._selectProtocol)
            for c in certificates
        )
        for context in contexts:
            context.set_tlsext_servername_callback(self._serverNameReceived)
        if self.ocsp is not None:
            for context, certificate in zip(contexts, certificates, strict=True):
                self.ocsp.install(context, certificate)
            self.ocsp.serve(self, certificates)
        byName = namesIndex(certificates)
        for index in reversed(range(files, len(certificates))):
            # A name obtained from the CA is served with that certificate.
            byName.update(dict.fromkeys(certificates[index].names, index))
        return _Served(certificates, contexts, byName)

    def setManagedCertificate(self, name: str, certificate: LoadedCertificate) -> None:
        """
        Serve C{certificate} (obtained from an ACME CA) for its names from
        the next handshake on, in place of the one of the same C{name};
        established connections keep theirs.
        """
        self._managed[name] = certificate
        files = len(self.config.certificates)
        self._served = self._serve(self._served.certificates[:files], self._clientCA)

    def _selectProtocol(
        self, connection: SSL.Connection, offered: list[bytes]
    ) -> bytes:
        """
        The ALPN choice: C{acme-tls/1} with the challenge's certificate for
        the CA validating a TLS-ALPN-01 challenge, else the group's choice.
        """
        challenges = self.challengeCertificates
        if ACME_TLS_1 in offered and challenges is not None:
            raw = connection.get_servername()
            found = challenges(raw.decode("ascii", "replace") if raw else None)
            if found is not None:
                certificate, key = found
                connection.use_certificate(certificate)
                connection.use_privatekey(key)
                return ACME_TLS_1
        protocols = (b"h2", b"http/1.1") if self.config.http2 else (b"http/1.1",)
        return _selectProtocol(offered, protocols)

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
                clientCA = self._clientCA = loadClientCA(self.config.clientCA)
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
