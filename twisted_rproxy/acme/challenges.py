"""
Answering the CA's challenges: HTTP-01 (RFC 8555 section 8.3) at
C{/.well-known/acme-challenge/<token>} on the plain listeners, before any
route and before the redirect to https, and TLS-ALPN-01 (RFC 8737) on the
TLS listeners, to clients that offer the ALPN protocol C{acme-tls/1} only.

Answers are published by the process that orders (L{ChallengeResponder}
keeps them in memory and in the storage directory) and looked up by every
process that shares the directory, since the CA's request may reach any
worker.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from twisted_rproxy.acme.storage import ACMEStorage
from twisted_rproxy.tls.server import ACME_TLS_1

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ACME_TLS_1",
    "HTTP01",
    "TLS_ALPN01",
    "ChallengeResponder",
    "HTTP01Resource",
    "tlsALPNCertificate",
]

#: The acmeIdentifier extension of a TLS-ALPN-01 certificate (RFC 8737).
ACME_IDENTIFIER_OID = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

HTTP01 = "http-01"
TLS_ALPN01 = "tls-alpn-01"

_WELL_KNOWN = b".well-known"
_ACME_CHALLENGE = b"acme-challenge"


def tlsALPNCertificate(
    domain: str, keyAuthorization: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """
    The self-signed certificate of a TLS-ALPN-01 answer: C{domain} as its
    only name, and the critical acmeIdentifier extension holding the
    SHA-256 digest of the key authorization.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(keyAuthorization.encode("ascii")).digest()
    # The extension's value is the DER of an OCTET STRING of the digest.
    value = b"\x04\x20" + digest
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(domain)]), False)
        .add_extension(x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, value), True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


class ChallengeResponder:
    """
    The answers to the challenges under way, for every process sharing
    C{storage}.

    @ivar storage: Where answers are published for the other processes.
    """

    def __init__(self, storage: ACMEStorage) -> None:
        self.storage = storage
        self._answers: dict[tuple[str, str], str] = {}
        self._certificates: dict[
            tuple[str, str], tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
        ] = {}

    def publish(self, kind: str, name: str, keyAuthorization: str) -> None:
        """
        Answer the challenge C{kind} for C{name} (the token of an HTTP-01
        challenge, the domain of a TLS-ALPN-01 one) from now on.

        @raise OSError: If it cannot be written to the storage.
        """
        self._answers[(kind, name)] = keyAuthorization
        self.storage.publishChallenge(kind, name, keyAuthorization)

    def withdraw(self, kind: str, name: str) -> None:
        """
        Stop answering a challenge (it was validated, or failed).
        """
        self._answers.pop((kind, name), None)
        self._certificates.pop((kind, name), None)
        try:
            self.storage.removeChallenge(kind, name)
        except OSError:
            pass

    def answer(self, kind: str, name: str) -> str | None:
        """
        The key authorization that answers a challenge, published by this
        process or another, or L{None}.
        """
        found = self._answers.get((kind, name))
        if found is None:
            found = self.storage.readChallenge(kind, name)
        return found

    def tlsALPNCertificate(
        self, serverName: str | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
        """
        The TLS-ALPN-01 certificate for a client's SNI name, if a challenge
        for it is under way.
        """
        if not serverName:
            return None
        name = serverName.lower().rstrip(".")
        keyAuthorization = self.answer(TLS_ALPN01, name)
        if keyAuthorization is None:
            return None
        cached = self._certificates.get((TLS_ALPN01, name))
        if cached is not None and self._answers.get((TLS_ALPN01, name)) == (
            keyAuthorization
        ):
            return cached
        made = tlsALPNCertificate(name, keyAuthorization)
        self._certificates[(TLS_ALPN01, name)] = made
        return made


class _Answer(Resource):
    isLeaf = True

    def __init__(self, body: bytes) -> None:
        Resource.__init__(self)
        self.body = body

    def render(self, request: IRequest) -> bytes:
        request.setHeader(b"content-type", b"application/octet-stream")
        request.setHeader(b"cache-control", b"no-store")
        return self.body


class HTTP01Resource(Resource):
    """
    The root of the plain listeners when HTTP-01 is on: answers
    C{GET /.well-known/acme-challenge/<token>} itself for the tokens of the
    challenges under way, and hands every other request to the resource of
    the moment (the router, or the redirect to https), as if it were the
    root.

    @ivar responder: Where the answers are.
    @ivar fallback: Returns the resource every other request goes to.
    """

    def __init__(
        self, responder: ChallengeResponder, fallback: Callable[[], IResource]
    ) -> None:
        Resource.__init__(self)
        self.responder = responder
        self.fallback = fallback

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        postpath = request.postpath
        if (
            name == _WELL_KNOWN
            and len(postpath) == 2
            and postpath[0] == _ACME_CHALLENGE
        ):
            token = postpath[1].decode("ascii", "replace")
            keyAuthorization = self.responder.answer(HTTP01, token)
            if keyAuthorization is not None:
                del postpath[:]
                return _Answer(keyAuthorization.encode("ascii"))
            # Not a challenge of ours (a backend's own, say): routed as usual.
        root = self.fallback()
        if root.isLeaf:
            # A leaf root (the redirect) sees the whole path.
            postpath.insert(0, request.prepath.pop())
            return root
        child: IResource = root.getChildWithDefault(name, request)
        return child

    def render(self, request: IRequest) -> object:
        return self.fallback().render(request)
