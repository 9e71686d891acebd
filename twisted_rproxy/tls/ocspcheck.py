"""
The decisions of OCSP stapling, as functions of data (no reactor, no
network): which responder a certificate names (L{responderURL}), its
issuer (L{issuerOf}), the request (L{ocspRequest}), whether a responder's
answer may be stapled (L{checkResponse}, RFC 6960), and when to fetch again
(L{refreshDelay}, L{retryDelay}). L{twisted_rproxy.tls.ocsp} does the I/O.
"""

from __future__ import annotations

import datetime
import hashlib

from attrs import frozen
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import (
    dsa,
    ec,
    ed448,
    ed25519,
    padding,
    rsa,
)
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from twisted_rproxy.tls.certificates import LoadedCertificate

__all__ = [
    "CLOCK_SKEW",
    "FIRST_RETRY",
    "MAX_RETRY",
    "MIN_REFRESH",
    "NO_NEXT_UPDATE_VALIDITY",
    "CheckedResponse",
    "OCSPError",
    "OCSPStatus",
    "checkResponse",
    "fingerprint",
    "issuerOf",
    "ocspRequest",
    "refreshDelay",
    "responderURL",
    "retryDelay",
    "utcText",
]

#: Clock skew tolerated between the responder and us, in seconds.
CLOCK_SKEW = 300.0

#: How long a response without C{nextUpdate} is stapled after its
#: C{thisUpdate}, in seconds (RFC 6960: newer information is always there).
NO_NEXT_UPDATE_VALIDITY = 3600.0

#: The shortest wait before fetching a good response again, in seconds.
MIN_REFRESH = 60.0

#: The first retry after a failure, then doubled up to L{MAX_RETRY}.
FIRST_RETRY = 30.0
MAX_RETRY = 3600.0


class OCSPError(Exception):
    """
    A responder's answer that cannot be stapled, or a fetch that failed; the
    message says why.
    """


@frozen
class CheckedResponse:
    """
    A checked OCSP response, ready to staple.

    @ivar der: The response as the responder sent it (DER).
    @ivar thisUpdate: When the status it gives was known correct (UTC).
    @ivar expires: When it stops being stapled: its C{nextUpdate}, or
        L{NO_NEXT_UPDATE_VALIDITY} after C{thisUpdate} without one (UTC).
    """

    der: bytes
    thisUpdate: datetime.datetime
    expires: datetime.datetime


@frozen
class OCSPStatus:
    """
    The OCSP state of one served certificate, as the admin page and
    C{/metrics} show it.

    @ivar responder: The responder's URL.
    @ivar stapledUntil: The expiry of the response stapled now, or L{None}
        when none is.
    @ivar thisUpdate: The C{thisUpdate} of the response stapled now.
    @ivar lastSuccess: When a response was last fetched and accepted.
    @ivar lastError: Why the last fetch failed, if it did (or why none can
        be made), else L{None}.
    @ivar lastErrorTime: When it failed.
    @ivar failures: Failed fetches since the last good one.
    @ivar errors: Failed fetches since the start.
    @ivar nextAttempt: When the next fetch is due (L{None} while one is
        under way, or when none will be made).
    """

    responder: str
    stapledUntil: datetime.datetime | None
    thisUpdate: datetime.datetime | None
    lastSuccess: datetime.datetime | None
    lastError: str | None
    lastErrorTime: datetime.datetime | None
    failures: int
    errors: int
    nextAttempt: datetime.datetime | None

    @property
    def state(self) -> str:
        """
        C{"stapled"}, C{"failing"} (nothing stapled, the last fetch
        failed) or C{"pending"} (the first fetch is not over).
        """
        if self.stapledUntil is not None:
            return "stapled"
        return "failing" if self.lastError is not None else "pending"

    def asJSON(self) -> dict[str, object]:
        """
        The state as JSON-ready data: times as ISO 8601 text (UTC), and
        C{stapled_until} as a Unix time too.
        """

        def iso(moment: datetime.datetime | None) -> str | None:
            return moment.isoformat() if moment is not None else None

        until = self.stapledUntil
        return {
            "state": self.state,
            "responder": self.responder,
            "stapled_until": iso(until),
            "stapled_until_timestamp": until.timestamp() if until else None,
            "this_update": iso(self.thisUpdate),
            "last_success": iso(self.lastSuccess),
            "last_error": self.lastError,
            "last_error_time": iso(self.lastErrorTime),
            "failures": self.failures,
            "errors": self.errors,
            "next_attempt": iso(self.nextAttempt),
        }


def responderURL(certificate: x509.Certificate) -> str | None:
    """
    The first C{http} (or C{https}) OCSP responder URL of a certificate's
    Authority Information Access, or L{None} if it names none.
    """
    try:
        access = certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except x509.ExtensionNotFound:
        return None
    for description in access:
        if description.access_method != AuthorityInformationAccessOID.OCSP:
            continue
        location = description.access_location
        if isinstance(location, x509.UniformResourceIdentifier):
            url = location.value
            if url.lower().startswith(("http://", "https://")):
                return url
    return None


def _issuedBy(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def issuerOf(certificate: LoadedCertificate) -> x509.Certificate | None:
    """
    The certificate in C{certificate}'s chain that issued it (the request
    names it, and the response is checked against it), or L{None}.
    """
    leaf = certificate.certificate
    for candidate in certificate.chain:
        if candidate.subject == leaf.issuer and _issuedBy(leaf, candidate):
            return candidate
    return None


def fingerprint(certificate: x509.Certificate) -> bytes:
    """
    The SHA-256 of a certificate's DER: what identifies it here.
    """
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def ocspRequest(
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
) -> ocsp.OCSPRequest:
    """
    The OCSP request for C{certificate}'s status.

    @param algorithm: The hash of the certificate identifier: SHA-1 by
        default, the one every responder answers (RFC 5019).
    """
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        certificate, issuer, algorithm or hashes.SHA1()
    )
    return builder.build()


def _verifySignature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    key = signer.public_key()
    data, signature = response.tbs_response_bytes, response.signature
    algorithm = response.signature_hash_algorithm
    try:
        if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        elif algorithm is None:
            raise OCSPError("the response's signature names no hash algorithm")
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(key, dsa.DSAPublicKey):
            key.verify(signature, data, algorithm)
        else:
            raise OCSPError(f"unsupported responder key type {type(key).__name__}")
    except InvalidSignature:
        raise OCSPError("the response's signature is invalid") from None


def _namesResponder(response: ocsp.OCSPResponse, candidate: x509.Certificate) -> bool:
    keyHash = response.responder_key_hash
    if keyHash is not None:
        digest = x509.SubjectKeyIdentifier.from_public_key(
            candidate.public_key()
        ).digest
        return bool(digest == keyHash)
    return bool(response.responder_name == candidate.subject)


def _delegated(
    responder: x509.Certificate, issuer: x509.Certificate, now: datetime.datetime
) -> str | None:
    """
    Why C{responder} may not answer for C{issuer} (RFC 6960 4.2.2.2), or
    L{None} if it may.
    """
    if not _issuedBy(responder, issuer):
        return "is not issued by the certificate's issuer"
    try:
        usage = responder.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage
        ).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        return "is not authorised for OCSP signing"
    if not responder.not_valid_before_utc <= now <= responder.not_valid_after_utc:
        return "is not valid now"
    return None


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, now: datetime.datetime
) -> x509.Certificate:
    if _namesResponder(response, issuer):
        return issuer
    for candidate in response.certificates:
        if _namesResponder(response, candidate):
            why = _delegated(candidate, issuer, now)
            if why is not None:
                raise OCSPError(f"the responder's certificate {why}")
            return candidate
    raise OCSPError(
        "the response is signed by neither the issuer nor a responder it delegated to"
    )


def utcText(moment: datetime.datetime) -> str:
    """
    A UTC time as the log and errors write it.
    """
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def checkResponse(
    der: bytes,
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    now: datetime.datetime,
) -> CheckedResponse:
    """
    Check a responder's answer for C{certificate}: a successful OCSP
    response, signed by C{issuer} or by a responder certified by it for
    OCSP signing, with a single response for this certificate's serial
    and issuer whose status is good, and whose C{thisUpdate} is not in the
    future (give or take L{CLOCK_SKEW}) and whose C{nextUpdate} is not
    past.

    @param now: The time now (UTC).
    @raise OCSPError: If it cannot be stapled, saying why.
    """
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise OCSPError(f"the answer is not an OCSP response ({e})") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPError(
            f"the responder answered {response.response_status.name} "
            "instead of a response"
        )
    single = None
    for candidate in response.responses:
        if candidate.serial_number != certificate.serial_number:
            continue
        ours = ocspRequest(certificate, issuer, candidate.hash_algorithm)
        if (
            ours.issuer_key_hash == candidate.issuer_key_hash
            and ours.issuer_name_hash == candidate.issuer_name_hash
        ):
            single = candidate
            break
    if single is None:
        raise OCSPError(
            f"the response is not for this certificate (serial "
            f"{certificate.serial_number:x})"
        )
    _verifySignature(response, _signer(response, issuer, now))
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.REVOKED:
        when = single.revocation_time_utc
        reason = single.revocation_reason
        raise OCSPError(
            "the certificate is REVOKED"
            + (f" since {utcText(when)}" if when is not None else "")
            + (f" ({reason.name})" if reason is not None else "")
        )
    if status != ocsp.OCSPCertStatus.GOOD:
        raise OCSPError(f"the responder says the certificate is {status.name}")
    skew = datetime.timedelta(seconds=CLOCK_SKEW)
    thisUpdate = single.this_update_utc
    if thisUpdate > now + skew:
        raise OCSPError(f"the response's thisUpdate {utcText(thisUpdate)} is ahead")
    nextUpdate = single.next_update_utc
    if nextUpdate is None:
        expires = thisUpdate + datetime.timedelta(seconds=NO_NEXT_UPDATE_VALIDITY)
    elif nextUpdate < thisUpdate:
        raise OCSPError("the response's nextUpdate is before its thisUpdate")
    else:
        expires = nextUpdate
    if expires <= now:
        raise OCSPError(f"the response expired at {utcText(expires)}")
    return CheckedResponse(der=der, thisUpdate=thisUpdate, expires=expires)


def refreshDelay(
    response: CheckedResponse, now: datetime.datetime, fraction: float
) -> float:
    """
    Seconds until a good response is fetched again: halfway through its
    validity, give or take 5% of it (C{fraction} in [0, 1) picks where),
    and at least L{MIN_REFRESH}.
    """
    validity = (response.expires - response.thisUpdate).total_seconds()
    due = response.thisUpdate + datetime.timedelta(
        seconds=validity * (0.45 + 0.1 * fraction)
    )
    return max((due - now).total_seconds(), MIN_REFRESH)


def retryDelay(failures: int, fraction: float, remaining: float | None = None) -> float:
    """
    Seconds until a failed fetch is tried again: L{FIRST_RETRY}, doubled at
    each failure up to L{MAX_RETRY}, give or take 20% (C{fraction} in
    [0, 1)); while a good response is held, at most a quarter of the
    C{remaining} seconds of its validity (but not under L{FIRST_RETRY}).
    """
    delay: float = min(FIRST_RETRY * 2.0 ** max(failures - 1, 0), MAX_RETRY)
    delay *= 0.8 + 0.4 * fraction
    if remaining is not None:
        delay = min(delay, max(remaining / 4, FIRST_RETRY))
    return delay
