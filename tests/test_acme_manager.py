"""
Unit tests of L{ACMEManager} on a memory clock with a fake CA: ordering,
renewal time, backoff, reuse of the stored certificate, the lock.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fixtures import asyncTest, sleep
from twisted_rproxy.acme import (
    ACMEManager,
    ACMEStorage,
    FileLock,
    OrderCancelled,
    SynchronousRunner,
    ThreadRunner,
    retryDelay,
)
from twisted_rproxy.config import parseConfig
from twisted_rproxy.tls import ServerTLS

DAY = 86400.0


def _config(storage: str, acme: dict[str, Any] | None = None) -> dict[str, Any]:
    table: dict[str, Any] = {
        "directory": "https://acme.example/directory",
        "storage": storage,
    }
    table.update(acme or {})
    return {
        "server": {"listen": ["tcp:8080"]},
        "tls": [{"listen": ["tcp:8443"], "acme_domains": ["app.example.com"]}],
        "acme": table,
        "routes": [{"path": "/", "pool": "app"}],
        "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
    }


def _temporaryDirectory(case: SynchronousTestCase) -> str:
    path = tempfile.mkdtemp(prefix="rproxy-acme-test-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake CA")])


def _issue(
    domains: Sequence[str],
    notBefore: float,
    notAfter: float,
    keyPEM: bytes | None = None,
) -> tuple[bytes, bytes]:
    """
    A leaf for C{domains} signed by a fake CA, and its key.
    """
    if keyPEM is None:
        keyPEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    key = serialization.load_pem_private_key(keyPEM, None)
    utc = datetime.timezone.utc
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
        .issuer_name(_CA_NAME)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime.datetime.fromtimestamp(notBefore, utc))
        .not_valid_after(datetime.datetime.fromtimestamp(notAfter, utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), False
        )
        .sign(_CA_KEY, hashes.SHA256())
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(_CA_NAME)
        .issuer_name(_CA_NAME)
        .public_key(_CA_KEY.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime.fromtimestamp(notBefore, utc))
        .not_valid_after(datetime.datetime.fromtimestamp(notAfter + 1000 * DAY, utc))
        .sign(_CA_KEY, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return leaf.public_bytes(pem) + ca.public_bytes(pem), keyPEM


class _FakeCA:
    """
    An ACME client whose CA issues at once, or refuses.
    """

    def __init__(self, clock: Clock, lifetime: float = 90 * DAY) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.orders: list[tuple[str, ...]] = []
        self.registrations = 0
        self.refuse: str | None = None
        self.published: list[tuple[str, str, str]] = []

    def register(self) -> str:
        self.registrations += 1
        return "https://acme.example/acct/1"

    def order(
        self,
        domains: Sequence[str],
        keyPEM: bytes,
        challenge: str,
        publish: Callable[[str, str, str], None],
        withdraw: Callable[[str, str], None],
        *,
        cancelled: Callable[[], bool],
    ) -> bytes:
        self.orders.append(tuple(domains))
        publish(challenge, "token", "token.thumb")
        self.published.append((challenge, "token", "token.thumb"))
        withdraw(challenge, "token")
        if self.refuse is not None:
            raise RuntimeError(self.refuse)
        now = self.clock.seconds()
        return _issue(domains, now, now + self.lifetime, keyPEM)[0]


class ManagerTests(SynchronousTestCase):
    """
    L{ACMEManager} on a memory clock with a fake CA.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.storage = _temporaryDirectory(self)
        self.ca = _FakeCA(self.clock)
        self.jitter = 0.5

    def manager(
        self, renewBefore: str | None = None, ca: _FakeCA | None = None
    ) -> tuple[ACMEManager, ServerTLS]:
        data = _config(
            self.storage, {"renew_before": renewBefore} if renewBefore else {}
        )
        config = parseConfig(data, "rproxy.toml", self.storage)
        assert config.acme is not None
        serverTLS = ServerTLS(config.tls[0])
        fake = ca or self.ca
        manager = ACMEManager(
            self.clock,
            config.acme,
            [(config.tls[0], serverTLS)],
            runner=SynchronousRunner(),
            clientFactory=lambda key: fake,
            random=lambda: self.jitter,
        )
        manager.start()
        self.addCleanup(manager.stop)
        return manager, serverTLS

    def test_ordersAndServes(self) -> None:
        """
        With nothing stored, the certificate is ordered at once, stored and
        served; renewal is planned a third of the lifetime before expiry,
        less half the jitter window.
        """
        manager, serverTLS = self.manager()
        self.assertEqual(serverTLS.certificates[0].names, ("app.example.com",))
        self.assertEqual(serverTLS.certificates[0].config.certificate, "<placeholder>")
        self.clock.advance(0)
        self.assertEqual(self.ca.orders, [("app.example.com",)])
        (status,) = manager.status()
        self.assertIsNotNone(status.notAfter)
        self.assertIsNone(status.lastError)
        self.assertEqual(status.lastAttempt, self.clock.seconds())
        self.assertNotEqual(
            serverTLS.certificates[0].config.certificate, "<placeholder>"
        )
        notAfter = status.notAfter
        assert notAfter is not None
        assert status.renewAt is not None
        self.assertLessEqual(abs(status.renewAt - (notAfter - 30.5 * DAY)), 1)
        self.assertEqual(self.ca.published[0][0], "http-01")
        self.assertIsNone(manager.responder.answer("http-01", "token"))

    def test_renewsAtItsTime(self) -> None:
        """
        Nothing is ordered before the renewal time; at it, a new
        certificate replaces the old one for new handshakes.
        """
        manager, serverTLS = self.manager(renewBefore="10d")
        self.clock.advance(0)
        first = serverTLS.certificates[0]
        renewAt = manager.status()[0].renewAt
        assert renewAt is not None
        self.clock.advance(renewAt - self.clock.seconds() - 1)
        self.assertEqual(len(self.ca.orders), 1)
        self.clock.advance(1)
        self.assertEqual(len(self.ca.orders), 2)
        self.assertNotEqual(serverTLS.certificates[0].certificate, first.certificate)

    def test_failureBacksOffAndKeepsOld(self) -> None:
        """
        A refused renewal is retried with backoff; the old certificate stays
        in service, and the error is shown.
        """
        manager, serverTLS = self.manager()
        self.clock.advance(0)
        served = serverTLS.certificates[0]
        self.ca.refuse = (
            'the CA refused: {"type": "urn:ietf:params:acme:error:rejectedIdentifier"}'
        )
        renewAt = manager.status()[0].renewAt
        assert renewAt is not None
        self.clock.advance(renewAt - self.clock.seconds())
        (status,) = manager.status()
        self.assertEqual(status.failures, 1)
        self.assertIn("rejectedIdentifier", status.lastError or "")
        self.assertIs(serverTLS.certificates[0], served)
        self.assertEqual(status.renewAt, self.clock.seconds() + retryDelay(1, 0.5))
        self.clock.advance(retryDelay(1, 0.5))
        self.assertEqual(manager.status()[0].failures, 2)
        self.assertEqual(
            manager.status()[0].renewAt, self.clock.seconds() + retryDelay(2, 0.5)
        )
        self.ca.refuse = None
        self.clock.advance(retryDelay(2, 0.5))
        (status,) = manager.status()
        self.assertEqual((status.failures, status.lastError), (0, None))
        self.assertIsNot(serverTLS.certificates[0], served)
        self.assertEqual(len(self.ca.orders), 4)
        self.flushLoggedErrors()

    def test_restartReusesStored(self) -> None:
        """
        A manager started on a storage holding a valid certificate serves it
        without ordering.
        """
        first, _ = self.manager()
        self.clock.advance(0)
        first.stop()
        other = _FakeCA(self.clock)
        second, serverTLS = self.manager(ca=other)
        self.clock.advance(0)
        self.assertEqual(other.orders, [])
        self.assertEqual(second.status()[0].notAfter, first.status()[0].notAfter)
        self.assertEqual(serverTLS.certificates[0].names, ("app.example.com",))

    def test_lockHeldElsewhere(self) -> None:
        """
        While another process holds the order lock, nothing is ordered; the
        certificate it stores is picked up by watching the storage.
        """
        holder = FileLock(os.path.join(self.storage, "order.lock"))
        self.assertTrue(holder.acquire())
        self.addCleanup(holder.release)
        manager, serverTLS = self.manager()
        self.clock.advance(0)
        self.assertEqual(self.ca.orders, [])
        self.assertIsNone(manager.status()[0].lastAttempt)
        now = self.clock.seconds()
        chain, key = _issue(["app.example.com"], now, now + 90 * DAY)
        ACMEStorage(self.storage).writeCertificate("app.example.com", chain, key)
        self.clock.advance(10)
        self.assertEqual(self.ca.orders, [])
        notAfter = manager.status()[0].notAfter
        assert notAfter is not None
        self.assertLessEqual(abs(notAfter - (now + 90 * DAY)), 1)
        self.assertNotEqual(
            serverTLS.certificates[0].config.certificate, "<placeholder>"
        )

    def test_stopCancelsTimers(self) -> None:
        """
        Stopping leaves no timer behind.
        """
        manager, _ = self.manager()
        self.clock.advance(0)
        self.assertTrue(self.clock.getDelayedCalls())
        manager.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _BlockingCA(_FakeCA):
    """
    A fake CA whose order blocks its thread: until it is cancelled (at a
    step boundary, as L{BlockingACMEClient} polls), or, when it ignores
    cancellation, until L{release} is set.
    """

    def __init__(self, clock: Clock, honourCancel: bool = True) -> None:
        super().__init__(clock)
        self.honourCancel = honourCancel
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sawCancel = False

    def order(
        self,
        domains: Sequence[str],
        keyPEM: bytes,
        challenge: str,
        publish: Callable[[str, str, str], None],
        withdraw: Callable[[str, str], None],
        *,
        cancelled: Callable[[], bool],
    ) -> bytes:
        self.entered.set()
        # Bounded: a test that never cancels nor releases fails, not hangs.
        for _ in range(600):
            if self.honourCancel and cancelled():
                self.sawCancel = True
                raise OrderCancelled("the order was cancelled: the proxy is stopping")
            if self.release.wait(0.05):
                break
        return super().order(
            domains, keyPEM, challenge, publish, withdraw, cancelled=cancelled
        )


class StopTests(TestCase):
    """
    L{ACMEManager.stop} with an order under way in a real thread (the
    manager's timers on a memory clock).
    """

    timeout = 30

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.storage = _temporaryDirectory(self)

    def manager(
        self, ca: _FakeCA, runner: ThreadRunner | SynchronousRunner | None = None
    ) -> ACMEManager:
        config = parseConfig(_config(self.storage), "rproxy.toml", self.storage)
        assert config.acme is not None
        manager = ACMEManager(
            self.clock,
            config.acme,
            [(config.tls[0], ServerTLS(config.tls[0]))],
            runner=runner or ThreadRunner(reactor),
            clientFactory=lambda key: ca,
            random=lambda: 0.5,
            stopTimeout=10.0,
        )
        manager.start()
        return manager

    async def untilOrdering(self, ca: _BlockingCA) -> None:
        for _ in range(200):
            if ca.entered.is_set():
                return
            await sleep(0.05)
        self.fail("the order did not start")

    async def untilSettled(self, manager: ACMEManager) -> None:
        for _ in range(200):
            if not manager.ordering:
                return
            await sleep(0.05)
        self.fail("the order did not end")

    @asyncTest
    async def test_stopWaitsForOrderToCancel(self) -> None:
        """
        C{stop} asks the order in its thread to give up at its next step
        and fires once it has and its lock is free; the cancellation is not
        counted as a failure, and no timer is left.
        """
        ca = _BlockingCA(self.clock)
        manager = self.manager(ca)
        self.clock.advance(0)
        await self.untilOrdering(ca)
        self.assertTrue(manager.ordering)
        stopped = manager.stop()
        self.assertFalse(stopped.called)
        await stopped
        self.assertTrue(ca.sawCancel)
        self.assertFalse(manager.ordering)
        (status,) = manager.status()
        self.assertEqual((status.failures, status.lastError), (0, None))
        self.assertIsNone(status.notAfter)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        lock = FileLock(os.path.join(self.storage, "order.lock"))
        self.assertTrue(lock.acquire())
        lock.release()

    @asyncTest
    async def test_stopIsBounded(self) -> None:
        """
        An order that does not stop is waited for C{stopTimeout} seconds
        only (a warning says so); when it ends, the certificate the CA
        issued is kept in the storage for the next start, and its lock is
        freed.
        """
        ca = _BlockingCA(self.clock, honourCancel=False)
        manager = self.manager(ca)
        self.clock.advance(0)
        await self.untilOrdering(ca)
        stopped = manager.stop()
        self.clock.advance(9.9)
        self.assertFalse(stopped.called)
        self.clock.advance(0.1)
        self.assertTrue(stopped.called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        ca.release.set()
        await self.untilSettled(manager)
        stored = ACMEStorage(self.storage).readCertificate("app.example.com")
        assert stored is not None
        self.assertEqual(stored.names, ("app.example.com",))
        # Stopped: it is not served by this manager, nor anything scheduled.
        self.assertIsNone(manager.status()[0].notAfter)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        lock = FileLock(os.path.join(self.storage, "order.lock"))
        self.assertTrue(lock.acquire())
        lock.release()

    def test_stopWithoutOrderFiresAtOnce(self) -> None:
        """
        With no order under way, C{stop} has fired when it returns.
        """
        manager = self.manager(_FakeCA(self.clock), SynchronousRunner())
        self.clock.advance(0)
        self.assertIsNotNone(manager.status()[0].notAfter)
        self.assertTrue(manager.stop().called)
        self.assertEqual(self.clock.getDelayedCalls(), [])
