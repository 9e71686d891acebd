"""
Unit tests of automatic certificates: the C{[acme]} configuration, the
storage, the renewal schedule and backoff, the order lock, the challenge
answers, and L{ACMEManager} on a memory clock with a fake CA.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from tests.test_acme_manager import _issue
from twisted_rproxy.acme import (
    ACME_TLS_1,
    ACMEStorage,
    ChallengeResponder,
    FileLock,
    HTTP01Resource,
    OrderLock,
    renewalTime,
    retryDelay,
    tlsALPNCertificate,
)
from twisted_rproxy.acme.challenges import ACME_IDENTIFIER_OID
from twisted_rproxy.acme.schedule import MAX_RETRY_DELAY, RETRY_DELAY
from twisted_rproxy.config import ConfigError, parseConfig
from twisted_rproxy.state import StateUnavailable
from twisted_rproxy.tls import ServerTLS

DAY = 86400.0


def _config(
    storage: str, acme: dict[str, Any] | None = None, **tls: Any
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "directory": "https://acme.example/directory",
        "email": "ops@example.com",
        "storage": storage,
    }
    table.update(acme or {})
    group: dict[str, Any] = {
        "listen": ["tcp:8443"],
        "acme_domains": ["app.example.com"],
    }
    group.update(tls)
    return {
        "server": {"listen": ["tcp:8080"]},
        "tls": [group],
        "acme": table,
        "routes": [{"path": "/", "pool": "app"}],
        "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
    }


def _temporaryDirectory(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="rproxy-acme-test-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class ConfigTests(SynchronousTestCase):
    """
    C{[acme]} and C{acme_domains}, and the errors of C{--check}.
    """

    def setUp(self) -> None:
        self.directory = _temporaryDirectory(self)
        self.storage = os.path.join(self.directory, "acme")

    def parse(self, data: dict[str, Any]) -> Any:
        return parseConfig(data, "rproxy.toml", self.directory)

    def assertError(self, data: dict[str, Any], key: str, fragment: str) -> None:
        error = self.assertRaises(ConfigError, self.parse, data)
        self.assertEqual((error.source, error.key), ("rproxy.toml", key), str(error))
        self.assertIn(fragment, error.message)

    def test_parsesTable(self) -> None:
        """
        The table's keys land in L{ACMEConfig}; a group may list domains
        instead of certificate files.
        """
        config = self.parse(
            _config(
                "acme",
                {"renew_before": "30d", "challenge": "tls-alpn-01"},
                acme_domains=["app.example.com", "www.example.com"],
            )
        )
        self.assertEqual(config.acme.storage, self.storage)
        self.assertEqual(config.acme.renewBefore, 30 * DAY)
        self.assertEqual(config.acme.challenge, "tls-alpn-01")
        self.assertEqual(config.acme.email, "ops@example.com")
        self.assertEqual(
            config.tls[0].acmeDomains, ("app.example.com", "www.example.com")
        )
        self.assertEqual(config.tls[0].certificates, ())

    def test_defaults(self) -> None:
        """
        http-01, a third of the lifetime, the system's CAs.
        """
        config = self.parse(_config(self.storage))
        self.assertEqual(config.acme.challenge, "http-01")
        self.assertIsNone(config.acme.renewBefore)
        self.assertIsNone(config.acme.caBundle)

    def test_directoryMustBeHTTPS(self) -> None:
        """
        The directory is an https URL.
        """
        self.assertError(
            _config(self.storage, {"directory": "http://acme.example/dir"}),
            "acme.directory",
            "https://",
        )
        data = _config(self.storage)
        del data["acme"]["directory"]
        self.assertError(data, "acme.directory", "is required")

    def test_email(self) -> None:
        """
        A contact that is not an e-mail address is refused.
        """
        self.assertError(
            _config(self.storage, {"email": "ops at example"}), "acme.email", "e-mail"
        )

    def test_storageMustBeWritable(self) -> None:
        """
        The storage is a directory the proxy can write (or create).
        """
        path = os.path.join(self.directory, "file")
        with open(path, "w"):
            pass
        self.assertError(_config(path), "acme.storage", "not a directory")
        self.assertError(
            _config(os.path.join(path, "below")), "acme.storage", "cannot be created"
        )
        if os.geteuid() != 0:
            locked = os.path.join(self.directory, "locked")
            os.mkdir(locked, 0o500)
            self.assertError(_config(locked), "acme.storage", "not writable")

    def test_challenge(self) -> None:
        """
        Only the challenges the proxy answers.
        """
        self.assertError(
            _config(self.storage, {"challenge": "dns-01"}), "acme.challenge", "http-01"
        )

    def test_unknownKey(self) -> None:
        """
        Unknown keys are errors.
        """
        self.assertError(
            _config(self.storage, {"emial": "x"}), "acme.emial", "unknown key"
        )

    def test_domains(self) -> None:
        """
        Each domain is a well-formed, lower-case, non-wildcard name, once.
        """
        for bad, fragment in [
            ("*.example.com", "dns-01"),
            ("localhost", "fully qualified"),
            ("App.example.com", "lower case"),
            ("a..example.com", "invalid label"),
            ("-a.example.com", "invalid label"),
            ("10.0.0.1", "IP address"),
            ("a b.example.com", "spaces"),
        ]:
            self.assertError(
                _config(self.storage, acme_domains=["ok.example.com", bad]),
                "tls[0].acme_domains[1]",
                fragment,
            )
        self.assertError(
            _config(self.storage, acme_domains=["a.example.com", "a.example.com"]),
            "tls[0].acme_domains[1]",
            "twice",
        )
        self.assertError(
            _config(self.storage, acme_domains=[]), "tls[0].acme_domains", "at least"
        )

    def test_domainsNeedTable(self) -> None:
        """
        acme_domains without [acme], and [acme] without domains, are errors.
        """
        data = _config(self.storage)
        del data["acme"]
        self.assertError(data, "tls[0].acme_domains", "[acme]")
        data = _config(self.storage)
        data["tls"][0]["certificates"] = ["site.pem"]
        del data["tls"][0]["acme_domains"]
        self.assertError(data, "acme", "acme_domains")

    def test_domainInOneGroup(self) -> None:
        """
        A domain belongs to one group's certificate.
        """
        data = _config(self.storage)
        data["tls"].append(
            {"listen": ["tcp:9443"], "acme_domains": ["app.example.com"]}
        )
        self.assertError(data, "tls[1].acme_domains[0]", "tls[0]")

    def test_http01NeedsPlainListener(self) -> None:
        """
        http-01 is answered on a plain listener of [server].
        """
        from attrs import evolve

        from twisted_rproxy.config.acmetable import _checkACME

        config = self.parse(_config(self.storage))
        assert config.acme is not None
        server = evolve(config.server, listen=())
        error = self.assertRaises(
            ConfigError, _checkACME, config.acme, config.tls, server, "rproxy.toml"
        )
        self.assertEqual(error.key, "acme.challenge")
        self.assertIn("plain listener", error.message)
        alpn = evolve(config.acme, challenge="tls-alpn-01")
        _checkACME(alpn, config.tls, server, "rproxy.toml")


class ScheduleTests(SynchronousTestCase):
    """
    Renewal times and backoff.
    """

    def test_defaultIsAThird(self) -> None:
        """
        Without renew_before, renewal is a third of the lifetime before
        expiry (jitter 0).
        """
        self.assertEqual(renewalTime(0.0, 90 * DAY, None, 0.0), 60 * DAY)

    def test_jitterBounds(self) -> None:
        """
        Jitter moves renewal earlier, by at most a tenth of the renewal
        period and at most a day.
        """
        self.assertEqual(renewalTime(0.0, 90 * DAY, 30 * DAY, 1.0), 59 * DAY)
        self.assertEqual(renewalTime(0.0, 90.0, 30.0, 1.0), 57.0)
        for jitter in (0.0, 0.25, 0.5, 0.999, 1.0, 5.0, -1.0):
            at = renewalTime(0.0, 90.0, 30.0, jitter)
            self.assertTrue(57.0 <= at <= 60.0, at)

    def test_clampedToHalfTheLifetime(self) -> None:
        """
        A renew_before longer than the certificate's half-life is cut to
        it, so that a short-lived certificate is not reordered at once.
        """
        self.assertEqual(renewalTime(0.0, 7 * DAY, 30 * DAY, 0.0), 3.5 * DAY)

    def test_backoff(self) -> None:
        """
        The delay doubles after each failure up to its maximum, moved by at
        most a fifth either way.
        """
        self.assertEqual(retryDelay(1, 0.5), RETRY_DELAY)
        self.assertEqual(retryDelay(2, 0.5), 2 * RETRY_DELAY)
        self.assertEqual(retryDelay(3, 0.5), 4 * RETRY_DELAY)
        self.assertEqual(retryDelay(100, 0.5), MAX_RETRY_DELAY)
        self.assertAlmostEqual(retryDelay(1, 0.0), 0.8 * RETRY_DELAY)
        self.assertAlmostEqual(retryDelay(1, 1.0), 1.2 * RETRY_DELAY)


class StorageTests(SynchronousTestCase):
    """
    The files under storage.
    """

    def setUp(self) -> None:
        self.storage = ACMEStorage(os.path.join(_temporaryDirectory(self), "acme"))
        self.storage.ensure()

    def test_directoryModes(self) -> None:
        """
        The directories are private to the proxy's user, even if they were
        made wider before.
        """
        os.chmod(self.storage.directory, 0o755)
        self.storage.ensure()
        for path in ("", "accounts", "certificates", "challenges"):
            mode = os.stat(os.path.join(self.storage.directory, path)).st_mode
            self.assertEqual(stat.S_IMODE(mode), 0o700, path)

    def test_accountKeyMadeOnce(self) -> None:
        """
        The account key is made once, private, and found again by another
        process sharing the directory.
        """
        url = "https://acme.example/directory"
        key = self.storage.accountKey(url)
        self.assertIn(b"PRIVATE KEY", key)
        self.assertEqual(ACMEStorage(self.storage.directory).accountKey(url), key)
        self.assertNotEqual(self.storage.accountKey("https://other.example/dir"), key)
        self.assertIsNone(self.storage.accountURL(url))
        self.storage.saveAccountURL(url, "https://acme.example/acct/1")
        self.assertEqual(self.storage.accountURL(url), "https://acme.example/acct/1")

    def test_certificateRoundTrip(self) -> None:
        """
        A certificate and its key are one private file, read back whole;
        no temporary file is left beside it.
        """
        chain, keyPEM = _issue(["app.example.com"], 0.0, 90 * DAY)
        self.storage.writeCertificate("app.example.com", chain, keyPEM)
        path = self.storage.certificatePath("app.example.com")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        loaded = self.storage.readCertificate("app.example.com")
        assert loaded is not None
        self.assertEqual(loaded.names, ("app.example.com",))
        self.assertEqual(len(loaded.chain), 1)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["app.example.com.pem"])
        self.assertIsNone(self.storage.readCertificate("none.example.com"))

    def test_challenges(self) -> None:
        """
        Challenge answers are published, read and removed; a name that
        cannot be a token is refused.
        """
        self.storage.publishChallenge("http-01", "tok_en-1", "tok_en-1.thumb")
        self.assertEqual(
            self.storage.readChallenge("http-01", "tok_en-1"), "tok_en-1.thumb"
        )
        self.storage.removeChallenge("http-01", "tok_en-1")
        self.assertIsNone(self.storage.readChallenge("http-01", "tok_en-1"))
        self.assertRaises(
            ValueError, self.storage.publishChallenge, "http-01", "../x", "y"
        )
        self.assertIsNone(self.storage.readChallenge("http-01", "../x"))


class _FakeState:
    """
    What L{RedisLock} uses of L{SharedState}, answering from a dict or
    failing as an outage does.
    """

    def __init__(self) -> None:
        self.data: dict[bytes, str] = {}
        self.down = False

    def key(self, *parts: str) -> bytes:
        return b"rproxy:" + ":".join(parts).encode()

    def execute(self, command: str, *args: Any) -> Deferred[Any]:
        if self.down:
            return fail(StateUnavailable("down"))
        key, value = args[0], args[1]
        if key in self.data:
            return succeed(None)
        self.data[key] = value
        return succeed("OK")

    def evalScript(
        self, script: Any, keys: Sequence[bytes], args: Sequence[Any]
    ) -> Deferred[Any]:
        if self.down:
            return fail(StateUnavailable("down"))
        if self.data.get(keys[0]) != args[0]:
            return succeed(0)
        if b"DEL" in script.source:
            del self.data[keys[0]]
        return succeed(1)


class LockTests(SynchronousTestCase):
    """
    One process orders at a time.
    """

    def test_fileLockExclusive(self) -> None:
        """
        A second holder of the file lock waits for the first to free it.
        """
        path = os.path.join(_temporaryDirectory(self), "order.lock")
        first, second = FileLock(path), FileLock(path)
        self.addCleanup(first.release)
        self.addCleanup(second.release)
        self.assertTrue(first.acquire())
        self.assertFalse(second.acquire())
        self.assertFalse(second.held)
        first.release()
        self.assertTrue(second.acquire())
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_redisLock(self) -> None:
        """
        With a shared state, the Redis lock decides, and only its holder
        frees it; while Redis is down, the file lock does.
        """
        from twisted_rproxy.acme import RedisLock

        clock = Clock()
        state = _FakeState()
        path = os.path.join(_temporaryDirectory(self), "order.lock")
        first = OrderLock(FileLock(path), RedisLock(clock, state, "order"))  # type: ignore[arg-type]
        second = OrderLock(FileLock(path), RedisLock(clock, state, "order"))  # type: ignore[arg-type]
        self.assertTrue(self.successResultOf(first.acquire()))
        self.assertFalse(self.successResultOf(second.acquire()))
        self.assertEqual(list(state.data), [b"rproxy:acme:lock:order"])
        self.successResultOf(second.release())
        self.assertEqual(len(state.data), 1)
        self.successResultOf(first.release())
        self.assertEqual(state.data, {})
        state.down = True
        self.assertTrue(self.successResultOf(first.acquire()))
        self.assertFalse(self.successResultOf(second.acquire()))
        self.successResultOf(first.release())
        self.assertTrue(self.successResultOf(second.acquire()))
        self.successResultOf(second.release())
        self.flushLoggedErrors()


class ChallengeTests(SynchronousTestCase):
    """
    The answers to HTTP-01 and TLS-ALPN-01.
    """

    def setUp(self) -> None:
        storage = ACMEStorage(_temporaryDirectory(self))
        storage.ensure()
        self.responder = ChallengeResponder(storage)
        self.other = ChallengeResponder(ACMEStorage(storage.directory))

    def render(self, root: Resource, path: bytes) -> DummyRequest:
        request = DummyRequest(path.lstrip(b"/").split(b"/"))
        request.uri = path
        resource: Any = root
        while request.postpath and not resource.isLeaf:
            name = request.postpath.pop(0)
            request.prepath.append(name)
            resource = resource.getChildWithDefault(name, request)
        body = resource.render(request)
        if isinstance(body, bytes):
            request.write(body)
        return request

    def test_http01AnsweredBeforeRoutes(self) -> None:
        """
        The token's key authorization is answered, by this process and by
        any other sharing the storage; other paths, and unknown tokens, go
        to the fallback.
        """
        fallback = Resource()
        leaf = Resource()
        leaf.isLeaf = True
        leaf.render = lambda request: b"routed"  # type: ignore[method-assign]
        fallback.putChild(b"app", leaf)
        self.responder.publish("http-01", "tok", "tok.thumb")
        for responder in (self.responder, self.other):
            root = HTTP01Resource(responder, lambda: fallback)
            answer = self.render(root, b"/.well-known/acme-challenge/tok")
            self.assertEqual(b"".join(answer.written), b"tok.thumb")
            self.assertEqual(
                answer.responseHeaders.getRawHeaders(b"cache-control"), [b"no-store"]
            )
            missing = self.render(root, b"/.well-known/acme-challenge/other")
            # Routed: the fallback has no such child.
            self.assertEqual(missing.responseCode, 404)
            self.assertEqual(missing.prepath[:1], [b".well-known"])
            routed = self.render(root, b"/app/x")
            self.assertEqual(b"".join(routed.written), b"routed")
        self.responder.withdraw("http-01", "tok")
        self.assertIsNone(self.other.answer("http-01", "tok"))

    def test_http01BeforeRedirect(self) -> None:
        """
        A leaf fallback (the redirect to https) sees the whole path.
        """
        seen: list[list[bytes]] = []
        leaf = Resource()
        leaf.isLeaf = True

        def render(request: Any) -> bytes:
            seen.append(list(request.postpath))
            return b"redirect"

        leaf.render = render  # type: ignore[method-assign]
        root = HTTP01Resource(self.responder, lambda: leaf)
        self.render(root, b"/a/b")
        self.assertEqual(seen, [[b"a", b"b"]])

    def test_tlsALPNCertificate(self) -> None:
        """
        The TLS-ALPN-01 certificate names the domain and holds the critical
        acmeIdentifier extension with the key authorization's digest.
        """
        import hashlib

        certificate, key = tlsALPNCertificate("app.example.com", "tok.thumb")
        extension = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        self.assertTrue(extension.critical)
        value = extension.value.value  # type: ignore[attr-defined]
        self.assertEqual(value, b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest())
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        self.assertEqual(names, ["app.example.com"])
        self.assertIsNone(self.responder.tlsALPNCertificate("app.example.com"))
        self.responder.publish("tls-alpn-01", "app.example.com", "tok.thumb")
        found = self.other.tlsALPNCertificate("APP.example.com.")
        assert found is not None
        self.assertIsNotNone(
            found[0].extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        )

    def test_alpnOnlyForAcmeTLS(self) -> None:
        """
        The TLS listener answers acme-tls/1 with the challenge certificate
        only when the client offers it and a challenge is under way.
        """
        from OpenSSL import SSL

        from twisted_rproxy.config import TLSConfig

        serverTLS = ServerTLS(
            TLSConfig(
                listen=("tcp:0",), certificates=(), acmeDomains=("app.example.com",)
            )
        )
        serverTLS.challengeCertificates = self.responder.tlsALPNCertificate
        used: list[object] = []

        class Connection:
            def get_servername(self) -> bytes:
                return b"app.example.com"

            def use_certificate(self, certificate: object) -> None:
                used.append(certificate)

            def use_privatekey(self, key: object) -> None:
                used.append(key)

        connection: Any = Connection()
        select = serverTLS._selectProtocol
        self.assertEqual(select(connection, [ACME_TLS_1]), SSL.NO_OVERLAPPING_PROTOCOLS)
        self.responder.publish("tls-alpn-01", "app.example.com", "tok.thumb")
        self.assertEqual(select(connection, [b"h2", b"http/1.1"]), b"h2")
        self.assertEqual(used, [])
        self.assertEqual(select(connection, [ACME_TLS_1]), ACME_TLS_1)
        self.assertEqual(len(used), 2)
