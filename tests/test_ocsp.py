"""
Tests for OCSP stapling: the checks of a responder's answer
(L{twisted_rproxy.tls.ocspcheck}), the stapler's schedule on a memory
reactor (L{twisted_rproxy.tls.ocsp}), and the C{ocsp_stapling} key.

L{FakePKI} (a root, an intermediate and leaves whose Authority Information
Access names a responder) and its responses are shared with
C{tests.test_ocsp_loopback}.
"""

from __future__ import annotations

import datetime
import os
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
)
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.config import CertificateConfig, ConfigError, parseConfig
from twisted_rproxy.tls import LoadedCertificate, loadCertificate
from twisted_rproxy.tls.ocsp import OCSPStapler
from twisted_rproxy.tls.ocspcheck import (
    OCSPError,
    checkResponse,
    fingerprint,
    issuerOf,
    refreshDelay,
    responderURL,
    retryDelay,
)

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

UTC = datetime.timezone.utc
#: The time the unit tests run at.
NOW = datetime.datetime(2030, 1, 1, tzinfo=UTC)
HOUR = datetime.timedelta(hours=1)
DAY = datetime.timedelta(days=1)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class FakePKI:
    """
    A root CA, an intermediate CA and certificates issued by it, valid a
    year around C{now}.
    """

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now
        self.rootKey = _key()
        self.root = self._issue(
            _name("Test Root"), self.rootKey, _name("Test Root"), self.rootKey, ca=True
        )
        self.intermediateKey = _key()
        self.intermediate = self._issue(
            _name("Test Intermediate"),
            self.intermediateKey,
            self.root.subject,
            self.rootKey,
            ca=True,
        )

    def _issue(
        self,
        subject: x509.Name,
        key: ec.EllipticCurvePrivateKey,
        issuer: x509.Name,
        issuerKey: ec.EllipticCurvePrivateKey,
        ca: bool = False,
        names: tuple[str, ...] = (),
        responder: str | None = None,
        usage: x509.ObjectIdentifier | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - 30 * DAY)
            .not_valid_after(self.now + 300 * DAY)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
        )
        if names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False
            )
        if responder is not None:
            access = x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(responder),
            )
            builder = builder.add_extension(
                x509.AuthorityInformationAccess([access]), False
            )
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), False)
        return builder.sign(issuerKey, hashes.SHA256())

    def leaf(
        self, name: str, responder: str | None
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """
        A server certificate for C{name} naming C{responder}, and its key.
        """
        key = _key()
        certificate = self._issue(
            _name(name),
            key,
            self.intermediate.subject,
            self.intermediateKey,
            names=(name,),
            responder=responder,
        )
        return certificate, key

    def delegate(
        self, usage: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.OCSP_SIGNING
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """
        A responder certificate issued by the intermediate.
        """
        key = _key()
        certificate = self._issue(
            _name("Test OCSP Responder"),
            key,
            self.intermediate.subject,
            self.intermediateKey,
            usage=usage,
        )
        return certificate, key

    def writeLeaf(
        self,
        directory: str,
        leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
        chain: bool = True,
    ) -> str:
        """
        Write a PEM file with the leaf, the intermediate (if C{chain}) and
        the key; return its path.
        """
        certificate, key = leaf
        pem = certificate.public_bytes(serialization.Encoding.PEM)
        if chain:
            pem += self.intermediate.public_bytes(serialization.Encoding.PEM)
        pem += key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path = os.path.join(directory, f"{certificate.serial_number:x}.pem")
        with open(path, "wb") as f:
            f.write(pem)
        return path

    def response(
        self,
        certificate: x509.Certificate,
        status: ocsp.OCSPCertStatus = ocsp.OCSPCertStatus.GOOD,
        thisUpdate: datetime.datetime | None = None,
        nextUpdate: datetime.datetime | None | bool = True,
        signer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    ) -> bytes:
        """
        A DER OCSP response for C{certificate}: C{status}, valid from an
        hour before now for a day (C{nextUpdate=None} for none), signed by
        the intermediate or by C{signer} (embedded).
        """
        thisUpdate = thisUpdate or self.now - HOUR
        if nextUpdate is True:
            nextUpdate = thisUpdate + DAY
        revoked = status == ocsp.OCSPCertStatus.REVOKED
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=certificate,
            issuer=self.intermediate,
            algorithm=hashes.SHA1(),
            cert_status=status,
            this_update=thisUpdate,
            next_update=nextUpdate or None,
            revocation_time=thisUpdate - DAY if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        )
        responder, key = signer or (self.intermediate, self.intermediateKey)
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, responder)
        if signer is not None:
            builder = builder.certificates([responder])
        return builder.sign(key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER
        )


def loaded(
    case: SynchronousTestCase,
    pki: FakePKI,
    leaf: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    chain: bool = True,
) -> LoadedCertificate:
    """
    C{leaf} written to a temporary file and loaded.
    """
    directory = tempfile.mkdtemp()
    path = pki.writeLeaf(directory, leaf, chain)

    def remove() -> None:
        os.remove(path)
        os.rmdir(directory)

    case.addCleanup(remove)
    return loadCertificate(CertificateConfig(path, path))


class CheckResponseTests(SynchronousTestCase):
    """
    L{checkResponse} staples only a good, signed, current answer for the
    certificate asked about.
    """

    def setUp(self) -> None:
        self.pki = FakePKI(NOW)
        self.leaf, _ = self.pki.leaf("example.com", "http://ocsp.test/")

    def check(self, der: bytes) -> datetime.datetime:
        return checkResponse(der, self.leaf, self.pki.intermediate, NOW).expires

    def assertRefused(self, der: bytes, message: str) -> None:
        with self.assertRaises(OCSPError) as raised:
            self.check(der)
        self.assertIn(message, str(raised.exception))

    def test_good(self) -> None:
        """
        A good answer signed by the issuer is kept until its nextUpdate.
        """
        der = self.pki.response(self.leaf)
        checked = checkResponse(der, self.leaf, self.pki.intermediate, NOW)
        self.assertEqual(checked.der, der)
        self.assertEqual(checked.thisUpdate, NOW - HOUR)
        self.assertEqual(checked.expires, NOW - HOUR + DAY)

    def test_delegatedResponder(self) -> None:
        """
        A responder certified by the issuer for OCSP signing may answer.
        """
        der = self.pki.response(self.leaf, signer=self.pki.delegate())
        self.assertEqual(self.check(der), NOW - HOUR + DAY)

    def test_delegateWithoutOCSPSigning(self) -> None:
        """
        A certificate of the issuer without the OCSP signing usage may not.
        """
        der = self.pki.response(self.leaf, signer=self.pki.delegate(usage=None))
        self.assertRefused(der, "not authorised for OCSP signing")

    def test_strangerSigned(self) -> None:
        """
        An answer signed by a key the issuer never certified is refused.
        """
        other = FakePKI(NOW)
        der = self.pki.response(self.leaf, signer=other.delegate())
        self.assertRefused(der, "not issued by the certificate's issuer")

    def test_forgedSignature(self) -> None:
        """
        An answer naming the issuer whose signature does not verify is
        refused.
        """
        der = bytearray(self.pki.response(self.leaf))
        # The signature is last (no certificates follow it).
        der[-1] ^= 0x01
        self.assertRefused(bytes(der), "signature is invalid")

    def test_revoked(self) -> None:
        """
        A revoked certificate's answer is not stapled; the reason is told.
        """
        der = self.pki.response(self.leaf, ocsp.OCSPCertStatus.REVOKED)
        self.assertRefused(der, "REVOKED since")
        self.assertRefused(der, "key_compromise")

    def test_unknown(self) -> None:
        """
        An UNKNOWN status is not stapled.
        """
        der = self.pki.response(self.leaf, ocsp.OCSPCertStatus.UNKNOWN)
        self.assertRefused(der, "UNKNOWN")

    def test_wrongSerial(self) -> None:
        """
        An answer about another certificate of the same issuer is refused.
        """
        other, _ = self.pki.leaf("other.example.com", "http://ocsp.test/")
        self.assertRefused(self.pki.response(other), "not for this certificate")

    def test_garbage(self) -> None:
        """
        Bytes that are no OCSP response are refused.
        """
        self.assertRefused(b"<html>oops</html>", "not an OCSP response")

    def test_unsuccessful(self) -> None:
        """
        A responder's error status (tryLater...) is refused, named.
        """
        response = ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.TRY_LATER
        )
        self.assertRefused(
            response.public_bytes(serialization.Encoding.DER), "TRY_LATER"
        )

    def test_expired(self) -> None:
        """
        An answer past its nextUpdate is refused.
        """
        der = self.pki.response(self.leaf, thisUpdate=NOW - 2 * DAY)
        self.assertRefused(der, "expired")

    def test_fromTheFuture(self) -> None:
        """
        An answer whose thisUpdate is ahead (beyond the skew) is refused.
        """
        der = self.pki.response(self.leaf, thisUpdate=NOW + HOUR)
        self.assertRefused(der, "is ahead")

    def test_noNextUpdate(self) -> None:
        """
        An answer without nextUpdate is stapled for an hour after its
        thisUpdate.
        """
        der = self.pki.response(
            self.leaf, thisUpdate=NOW - 600 * _SECOND, nextUpdate=None
        )
        self.assertEqual(self.check(der), NOW - 600 * _SECOND + HOUR)


_SECOND = datetime.timedelta(seconds=1)


class DecisionTests(SynchronousTestCase):
    """
    The responder, the issuer and the schedule.
    """

    def test_responderURL(self) -> None:
        """
        The OCSP URL of the Authority Information Access, or L{None}.
        """
        pki = FakePKI(NOW)
        self.assertEqual(
            responderURL(pki.leaf("a.test", "http://ocsp.test/x")[0]),
            "http://ocsp.test/x",
        )
        self.assertIsNone(responderURL(pki.leaf("a.test", None)[0]))

    def test_issuer(self) -> None:
        """
        The issuer is found in the file's chain, or not at all.
        """
        pki = FakePKI(NOW)
        leaf = pki.leaf("a.test", "http://ocsp.test/")
        self.assertEqual(issuerOf(loaded(self, pki, leaf)), pki.intermediate)
        self.assertIsNone(issuerOf(loaded(self, pki, leaf, chain=False)))

    def test_refreshHalfway(self) -> None:
        """
        A good answer is fetched again halfway through its validity, give
        or take 5%, and not sooner than a minute.
        """
        pki = FakePKI(NOW)
        leaf, _ = pki.leaf("a.test", "http://ocsp.test/")
        checked = checkResponse(pki.response(leaf), leaf, pki.intermediate, NOW)
        # Valid from NOW - 1h for 24h: halfway is NOW + 11h.
        self.assertEqual(refreshDelay(checked, NOW, 0.5), 11 * 3600)
        self.assertEqual(refreshDelay(checked, NOW, 0.0), 0.45 * 86400 - 3600)
        self.assertAlmostEqual(
            refreshDelay(checked, NOW, 0.999), 0.5499 * 86400 - 3600, 0
        )
        self.assertEqual(refreshDelay(checked, NOW + 23 * HOUR, 0.5), 60)

    def test_retryBackoff(self) -> None:
        """
        Retries double from 30s to an hour, with jitter, and come sooner
        than a quarter of what is left of a response held.
        """
        self.assertEqual([retryDelay(n, 0.5) for n in (1, 2, 3)], [30, 60, 120])
        self.assertEqual(retryDelay(20, 0.5), 3600)
        self.assertEqual(retryDelay(1, 0.0), 24)
        self.assertAlmostEqual(retryDelay(1, 1.0), 36)
        self.assertEqual(retryDelay(10, 0.5, remaining=400), 100)
        self.assertEqual(retryDelay(10, 0.5, remaining=40), 30)


class _Fetches:
    """
    A fetcher whose answers the test gives.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, ocsp.OCSPRequest, Deferred[bytes]]] = []

    def __call__(self, url: str, body: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.calls.append((url, ocsp.load_der_ocsp_request(body), d))
        return d


class StaplerTests(SynchronousTestCase):
    """
    L{OCSPStapler}'s schedule on a memory reactor: fetched at the start,
    again halfway, retried with backoff, the last good answer kept until it
    expires.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW.timestamp())
        self.pki = FakePKI(NOW)
        self.leaf = self.pki.leaf("example.com", "http://ocsp.test/")
        self.certificate = loaded(self, self.pki, self.leaf)
        self.key = fingerprint(self.certificate.certificate)
        self.fetches = _Fetches()
        self.stapler = OCSPStapler(
            self.reactor, fetch=self.fetches, randomFraction=lambda: 0.5
        )
        self.errors: list[LogEvent] = []

        def observe(event: LogEvent) -> None:
            if event.get("log_level") is not None and event["log_level"].name in (
                "error",
                "warn",
            ):
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.reactor.seconds(), UTC)

    def started(self) -> None:
        self.stapler.serve(self, [self.certificate])
        self.stapler.start()
        self.addCleanup(self.stapler.stop)
        self.reactor.advance(0)

    def test_fetchesAtStart(self) -> None:
        """
        Started, it asks the responder about the certificate at once;
        nothing is stapled until the answer comes, then it is.
        """
        self.stapler.serve(self, [self.certificate])
        self.reactor.advance(10)
        self.assertEqual(self.fetches.calls, [])
        self.started()
        [(url, request, d)] = self.fetches.calls
        self.assertEqual(url, "http://ocsp.test/")
        self.assertEqual(request.serial_number, self.leaf[0].serial_number)
        self.assertEqual(self.stapler.stapleFor(self.key), b"")
        self.assertEqual(self.stapler.statusOf(self.certificate).state, "pending")
        der = self.pki.response(self.leaf[0], thisUpdate=self.now() - HOUR)
        d.callback(der)
        self.assertEqual(self.stapler.stapleFor(self.key), der)
        status = self.stapler.statusOf(self.certificate)
        self.assertEqual(status.state, "stapled")
        self.assertEqual(status.stapledUntil, self.now() - HOUR + DAY)

    def test_refreshedHalfway(self) -> None:
        """
        A good answer is fetched again halfway through its validity, and
        the new one replaces it.
        """
        self.started()
        first = self.pki.response(self.leaf[0], thisUpdate=self.now() - HOUR)
        self.fetches.calls[0][2].callback(first)
        self.assertEqual(
            self.stapler.statusOf(self.certificate).nextAttempt,
            self.now() + 11 * HOUR,
        )
        self.reactor.advance(11 * 3600 - 1)
        self.assertEqual(len(self.fetches.calls), 1)
        self.reactor.advance(1)
        self.assertEqual(len(self.fetches.calls), 2)
        second = self.pki.response(self.leaf[0], thisUpdate=self.now())
        self.fetches.calls[1][2].callback(second)
        self.assertEqual(self.stapler.stapleFor(self.key), second)

    def test_failureKeepsLastGoodUntilExpiry(self) -> None:
        """
        Failed refreshes are retried with backoff and logged; the last good
        answer is stapled until its nextUpdate, then dropped.
        """
        self.started()
        good = self.pki.response(self.leaf[0], thisUpdate=self.now() - HOUR)
        self.fetches.calls[0][2].callback(good)
        self.reactor.advance(11 * 3600)
        self.fetches.calls[1][2].errback(ConnectionRefusedError("refused"))
        status = self.stapler.statusOf(self.certificate)
        self.assertEqual(
            (status.state, status.failures, status.errors), ("stapled", 1, 1)
        )
        self.assertIn("refused", status.lastError)
        self.assertEqual(status.nextAttempt, self.now() + 30 * _SECOND)
        self.assertIn("refused", self.errors[-1]["error"])
        self.reactor.advance(30)
        self.fetches.calls[2][2].errback(TimeoutError())
        self.assertEqual(
            self.stapler.statusOf(self.certificate).nextAttempt,
            self.now() + 60 * _SECOND,
        )
        self.assertEqual(self.stapler.stapleFor(self.key), good)
        # Garbage from then on, until the good answer expires.
        while self.now() < NOW - HOUR + DAY:
            self.assertEqual(self.stapler.stapleFor(self.key), good)
            self.reactor.advance(
                self.reactor.getDelayedCalls()[0].getTime() - self.reactor.seconds()
            )
            self.fetches.calls[-1][2].callback(b"garbage")
        self.assertEqual(self.stapler.stapleFor(self.key), b"")
        status = self.stapler.statusOf(self.certificate)
        self.assertEqual(status.state, "failing")
        self.assertIn("not an OCSP response", status.lastError)
        self.assertLess(len(self.fetches.calls), 60)

    def test_refusedAnswerNotStapled(self) -> None:
        """
        A REVOKED answer is never stapled, and is retried.
        """
        self.started()
        self.fetches.calls[0][2].callback(
            self.pki.response(
                self.leaf[0], ocsp.OCSPCertStatus.REVOKED, self.now() - HOUR
            )
        )
        self.assertEqual(self.stapler.stapleFor(self.key), b"")
        status = self.stapler.statusOf(self.certificate)
        self.assertEqual(status.state, "failing")
        self.assertIn("REVOKED", status.lastError)
        self.reactor.advance(30)
        self.assertEqual(len(self.fetches.calls), 2)

    def test_noResponderNoFetch(self) -> None:
        """
        A certificate without a responder is never fetched for.
        """
        plain = loaded(self, self.pki, self.pki.leaf("plain.test", None))
        self.stapler.serve(self, [plain])
        self.stapler.start()
        self.addCleanup(self.stapler.stop)
        self.reactor.advance(86400)
        self.assertEqual(self.fetches.calls, [])
        self.assertIsNone(self.stapler.statusOf(plain))

    def test_noIssuerNoFetch(self) -> None:
        """
        Without its issuer in the file no request can be made: none is, and
        the status says why.
        """
        alone = loaded(self, self.pki, self.leaf, chain=False)
        self.stapler.serve(self, [alone])
        self.stapler.start()
        self.addCleanup(self.stapler.stop)
        self.reactor.advance(86400)
        self.assertEqual(self.fetches.calls, [])
        self.assertIn("issuer", self.stapler.statusOf(alone).lastError)

    def test_stopCancels(self) -> None:
        """
        Stopping cancels the fetch under way and leaves no timer.
        """
        self.started()
        d = self.fetches.calls[0][2]
        self.stapler.stop()
        self.assertTrue(d.called)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertIsNone(self.stapler.statusOf(self.certificate).lastError)

    def test_replacedCertificateForgotten(self) -> None:
        """
        A certificate no group serves any longer is forgotten, its fetch
        cancelled; the new one is fetched.
        """
        self.started()
        d = self.fetches.calls[0][2]
        other = loaded(self, self.pki, self.pki.leaf("example.com", "http://b.test/"))
        self.stapler.serve(self, [other])
        self.assertTrue(d.called)
        self.assertIsNone(self.stapler.statusOf(self.certificate))
        self.reactor.advance(0)
        self.assertEqual(self.fetches.calls[-1][0], "http://b.test/")
        self.assertEqual(len(self.reactor.getDelayedCalls()), 0)


class StaplingConfigTests(SynchronousTestCase):
    """
    The C{ocsp_stapling} key of C{[[tls]]}.
    """

    def parse(self, extra: str) -> bool:
        text = (
            '[pools.app]\nservers = ["http://127.0.0.1:8000"]\n'
            '[[routes]]\npool = "app"\n'
            '[[tls]]\nlisten = ["tcp:8443"]\ncertificates = ["site.pem"]\n' + extra
        )
        config = parseConfig(tomllib.loads(text), "f.toml", "/etc/rproxy")
        return config.tls[0].ocspStapling

    def test_default(self) -> None:
        """
        Stapling is on unless turned off.
        """
        self.assertTrue(self.parse(""))
        self.assertFalse(self.parse("ocsp_stapling = false\n"))

    def test_notABoolean(self) -> None:
        """
        A value that is not a boolean is an error naming the key.
        """
        with self.assertRaises(ConfigError) as raised:
            self.parse('ocsp_stapling = "yes"\n')
        self.assertEqual(raised.exception.key, "tls[0].ocsp_stapling")
