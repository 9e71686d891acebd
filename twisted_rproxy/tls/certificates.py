"""
Certificate files: reading a certificate, its chain and its key, checking
that they belong together, and the names and validity they carry.

Pure functions of the files (no context, no reactor), so that C{--check}
(L{checkTLSFiles}) reports the same errors the listeners and the https
backends would meet.
"""

from __future__ import annotations

import datetime

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from twisted_rproxy.config import CertificateConfig, Config, ConfigError

__all__ = [
    "CertificateError",
    "LoadedCertificate",
    "PrivateKey",
    "certificateNames",
    "certificateWarnings",
    "checkTLSFiles",
    "loadCertificate",
    "loadCertificates",
    "loadClientCA",
    "readFile",
]

#: The private key types OpenSSL serves certificates with.
PrivateKey = (
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
    key: PrivateKey


def readFile(path: str, what: str) -> bytes:
    """
    The bytes of the C{what} file (certificate, key, CA...) at C{path}.

    @raise CertificateError: If it cannot be read.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise CertificateError(
            f"cannot read the {what} file {path!r}: {e.strerror or e}"
        ) from None


def loadCertificates(path: str, data: bytes, what: str) -> list[x509.Certificate]:
    """
    The PEM certificates in C{data}, read from the C{what} file at C{path}.

    @raise CertificateError: If it holds none, or one is invalid.
    """
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
    certificateData = readFile(config.certificate, "certificate")
    certificates = loadCertificates(config.certificate, certificateData, "certificate")
    keyData = (
        certificateData
        if config.key == config.certificate
        else readFile(config.key, "key")
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


def loadClientCA(path: str) -> list[x509.Certificate]:
    """
    The CA certificates of a C{client_ca} file.

    @raise CertificateError: If the file cannot be read or holds none.
    """
    return loadCertificates(path, readFile(path, "client CA"), "client CA")


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
                loadClientCA(group.clientCA)
            except CertificateError as e:
                raise ConfigError(source, f"tls[{index}].client_ca", str(e)) from None
    for name, pool in config.pools.items():
        prefix = f"pools.{name}"
        if pool.tlsCA is not None:
            try:
                loadCertificates(pool.tlsCA, readFile(pool.tlsCA, "CA"), "CA")
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
