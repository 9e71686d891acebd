"""
Automatic certificates against a real ACME CA on loopback: Debian's pebble
(L{tests.pebble}), validating the challenges the proxy answers itself on
its own listeners (HTTP-01 on the plain one, TLS-ALPN-01 on the TLS one),
and real TLS clients checking the chain and name the proxy serves.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import tempfile
import time
import urllib.request
from typing import Any

from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.fixtures import LoopbackTestCase, asyncTest, freePort, sleep
from tests.loopback import LOCALHOST
from tests.pebble import PebbleCA, requirePebble
from tests.redis import RedisServer
from twisted_rproxy.config import Config, parseConfig
from twisted_rproxy.service import ProxyService

DOMAIN = "app.example.com"

#: Seconds a test waits for pebble to issue.
ISSUE_TIMEOUT = 60.0


def _handshake(
    port: int, serverName: str, rootPEM: bytes, alpn: list[str] | None = None
) -> tuple[x509.Certificate, ssl.SSLSocket]:
    """
    A TLS client that verifies the chain against pebble's root and the
    name: the leaf served, and the open connection (blocking: run it in a
    thread).
    """
    context = ssl.create_default_context(cadata=rootPEM.decode("ascii"))
    if alpn:
        context.set_alpn_protocols(alpn)
    raw = socket.create_connection((LOCALHOST, port), timeout=10)
    secure = context.wrap_socket(raw, server_hostname=serverName)
    der = secure.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der), secure


class PebbleTests(LoopbackTestCase):
    """
    Certificates issued by pebble, served, reused, renewed and kept.
    """

    def setUp(self) -> None:
        requirePebble()
        super().setUp()
        self.plainPort = freePort()
        self.tlsPort = freePort()
        self.storage = tempfile.mkdtemp(prefix="rproxy-acme-")
        self.addCleanup(shutil.rmtree, self.storage, True)
        self.static = tempfile.mkdtemp(prefix="rproxy-static-")
        self.addCleanup(shutil.rmtree, self.static, True)
        with open(os.path.join(self.static, "index.html"), "w") as f:
            f.write("hello\n")

    def startCA(self, **options: Any) -> PebbleCA:
        ca = PebbleCA(self.plainPort, self.tlsPort, **options).start()
        self.addCleanup(ca.cleanUp)
        return ca

    def config(
        self,
        ca: PebbleCA,
        challenge: str = "http-01",
        plainPort: int | None = None,
        tlsPort: int | None = None,
        extra: dict[str, Any] | None = None,
        **acme: Any,
    ) -> Config:
        plainPort = plainPort or self.plainPort
        tlsPort = tlsPort or self.tlsPort
        return parseConfig(
            {
                **(extra or {}),
                "server": {"listen": [f"tcp:{plainPort}:interface={LOCALHOST}"]},
                "tls": [
                    {
                        "listen": [f"tcp:{tlsPort}:interface={LOCALHOST}"],
                        "acme_domains": [DOMAIN, "www.example.com"],
                    }
                ],
                "acme": {
                    "directory": ca.directoryURL,
                    "email": "ops@example.com",
                    "storage": self.storage,
                    "ca_bundle": ca.caBundle,
                    "challenge": challenge,
                    **acme,
                },
                "routes": [{"path": "/", "static": self.static}],
            },
            "test.toml",
            self.storage,
        )

    async def startProxy(self, config: Config) -> ProxyService:  # type: ignore[override]
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        await service.whenListening()
        return service

    async def waitForCertificate(
        self, service: ProxyService, previous: float | None = None
    ) -> float:
        """
        Wait until the proxy serves a certificate from the CA (another one
        than the one expiring at C{previous}), and return its expiry.
        """
        assert service.acme is not None
        deadline = time.monotonic() + ISSUE_TIMEOUT
        while True:
            (status,) = service.acme.status()
            if status.notAfter is not None and status.notAfter != previous:
                return status.notAfter
            if time.monotonic() > deadline:
                self.fail(f"no certificate issued: {status}")
            await sleep(0.1)

    async def served(
        self, ca: PebbleCA, alpn: list[str] | None = None, port: int | None = None
    ) -> x509.Certificate:
        root = ca.rootPEM()
        leaf, connection = await deferToThread(
            _handshake, port or self.tlsPort, DOMAIN, root, alpn
        )
        connection.close()
        return leaf

    def assertNames(self, leaf: x509.Certificate) -> None:
        names = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
        self.assertEqual(sorted(names), [DOMAIN, "www.example.com"])

    @asyncTest
    async def test_http01IssuesAndServes(self) -> None:
        """
        By HTTP-01 on the plain listener, pebble issues a certificate that
        the TLS listener then serves, verified by a real TLS client; the
        stored files are private to the proxy's user; the admin listener's
        C{/status.json} and C{/metrics} show its expiry and the attempt.
        """
        ca = self.startCA()
        adminPort = freePort()
        admin = {
            "admin": {
                "listen": [f"tcp:{adminPort}:interface={LOCALHOST}"],
                "metrics": True,
            }
        }
        service = await self.startProxy(self.config(ca, extra=admin))
        expiry = await self.waitForCertificate(service)
        leaf = await self.served(ca)
        self.assertNames(leaf)
        self.assertEqual(os.stat(self.storage).st_mode & 0o777, 0o700)
        stored = os.path.join(self.storage, "certificates", DOMAIN + ".pem")
        self.assertEqual(os.stat(stored).st_mode & 0o777, 0o600)
        self.assertEqual(ca.orders(), 1)
        (status,) = service.acme.status()  # type: ignore[union-attr]
        self.assertIsNone(status.lastError)
        self.assertIsNotNone(status.lastAttempt)
        self.assertEqual(leaf.not_valid_after_utc.timestamp(), expiry)

        def fetch(path: str) -> bytes:
            url = f"http://{LOCALHOST}:{adminPort}{path}"
            with urllib.request.urlopen(url, timeout=10) as answer:
                data: bytes = answer.read()
            return data

        (shown,) = json.loads(await deferToThread(fetch, "/status.json"))["acme"]
        self.assertEqual(shown["domains"], [DOMAIN, "www.example.com"])
        self.assertEqual(shown["not_after"], expiry)
        self.assertEqual(shown["last_attempt"], status.lastAttempt)
        self.assertIsNone(shown["last_error"])
        metrics = {
            (sample.name, sample.labels.get("certificate")): sample.value
            for family in text_string_to_metric_families(
                (await deferToThread(fetch, "/metrics")).decode()
            )
            for sample in family.samples
        }
        prefix = "rproxy_acme_"
        self.assertEqual(
            metrics[(prefix + "certificate_expiry_timestamp_seconds", DOMAIN)], expiry
        )
        self.assertEqual(
            metrics[(prefix + "last_renewal_attempt_timestamp_seconds", DOMAIN)],
            status.lastAttempt,
        )
        self.assertEqual(metrics[(prefix + "last_renewal_success", DOMAIN)], 1)
        self.assertEqual(metrics[(prefix + "consecutive_failures", DOMAIN)], 0)

    @asyncTest
    async def test_tlsALPN01IssuesAndServes(self) -> None:
        """
        By TLS-ALPN-01 on the TLS listener, pebble issues a certificate that
        the same listener then serves to a client offering h2 and http/1.1.
        """
        ca = self.startCA()
        service = await self.startProxy(self.config(ca, challenge="tls-alpn-01"))
        await self.waitForCertificate(service)
        leaf = await self.served(ca, ["h2", "http/1.1"])
        self.assertNames(leaf)
        self.assertEqual(ca.orders(), 1)

    @asyncTest
    async def test_restartReusesCertificate(self) -> None:
        """
        A proxy started again on the same storage serves the stored
        certificate without a new order.
        """
        ca = self.startCA()
        config = self.config(ca)
        first = await self.startProxy(config)
        expiry = await self.waitForCertificate(first)
        await first.stopService()
        second = await self.startProxy(config)
        self.assertEqual(await self.waitForCertificate(second), expiry)
        await sleep(1.0)
        self.assertEqual(ca.orders(), 1)
        leaf = await self.served(ca)
        self.assertEqual(leaf.not_valid_after_utc.timestamp(), expiry)

    @asyncTest
    async def test_renewalSwapsUnderRunningConnection(self) -> None:
        """
        A short-lived certificate is renewed ahead of expiry: a connection
        opened before keeps working on the old certificate, and a new
        handshake gets the new one.
        """
        ca = self.startCA(validity=20)
        service = await self.startProxy(self.config(ca, renew_before="10s"))
        first = await self.waitForCertificate(service)
        root = ca.rootPEM()
        oldLeaf, connection = await deferToThread(
            _handshake, self.tlsPort, DOMAIN, root, ["http/1.1"]
        )
        self.addCleanup(connection.close)
        second = await self.waitForCertificate(service, first)
        self.assertGreater(second, first)
        newLeaf = await self.served(ca)
        self.assertNotEqual(newLeaf.serial_number, oldLeaf.serial_number)
        self.assertEqual(newLeaf.not_valid_after_utc.timestamp(), second)

        def request() -> bytes:
            connection.sendall(
                b"GET /index.html HTTP/1.1\r\nHost: " + DOMAIN.encode() + b"\r\n\r\n"
            )
            data = b""
            while b"hello" not in data:
                chunk = connection.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

        answer = await deferToThread(request)
        self.assertIn(b"200 OK", answer)
        self.assertIn(b"hello", answer)

    @asyncTest
    async def test_refusalKeepsOldCertificate(self) -> None:
        """
        When the CA refuses the renewal, the error (the CA's problem
        document) is shown and the old certificate stays in service.
        """
        # Renewed 5 seconds before it expires (a third of its lifetime).
        ca = self.startCA(validity=15)
        first = await self.startProxy(self.config(ca))
        expiry = await self.waitForCertificate(first)
        firstRoot = ca.rootPEM()
        await first.stopService()
        ca.cleanUp()
        # The CA now refuses the domain.
        refusing = PebbleCA(self.plainPort, self.tlsPort, blocklist=(DOMAIN,)).start()
        self.addCleanup(refusing.cleanUp)
        config = self.config(refusing)
        second = await self.startProxy(config)
        assert second.acme is not None
        deadline = time.monotonic() + ISSUE_TIMEOUT
        while second.acme.status()[0].lastError is None:
            if time.monotonic() > deadline:
                self.fail("the refusal was not reported")
            await sleep(0.1)
        (status,) = second.acme.status()
        self.assertIn("rejectedIdentifier", status.lastError or "")
        self.assertEqual(status.notAfter, expiry)
        self.assertEqual(status.failures, 1)
        # Still served, and verified against the first CA's root.
        leaf, connection = await deferToThread(
            _handshake, self.tlsPort, DOMAIN, firstRoot, None
        )
        connection.close()
        self.assertEqual(leaf.not_valid_after_utc.timestamp(), expiry)

    async def twoInstances(
        self, ca: PebbleCA, extra: dict[str, Any] | None = None
    ) -> list[tuple[ProxyService, int]]:
        """
        Two proxies sharing the storage (pebble validates on the first's
        plain port, whichever of them ordered), started together; each with
        its TLS port.
        """
        otherTLS = freePort()
        configs = [
            (self.config(ca, extra=extra), self.tlsPort),
            (
                self.config(ca, plainPort=freePort(), tlsPort=otherTLS, extra=extra),
                otherTLS,
            ),
        ]
        services = [ProxyService(config, reactor) for config, _ in configs]
        for service in services:
            service.startService()
            self.addCleanup(service.stopService)
        for service in services:
            await service.whenListening()
        return [
            (service, port)
            for service, (_, port) in zip(services, configs, strict=True)
        ]

    async def assertOneOrderBothServe(
        self, ca: PebbleCA, instances: list[tuple[ProxyService, int]]
    ) -> None:
        expiries = [await self.waitForCertificate(s) for s, _ in instances]
        self.assertEqual(expiries[0], expiries[1])
        self.assertEqual(ca.orders(), 1)
        attempts = [s.acme.status()[0].lastAttempt for s, _ in instances]  # type: ignore[union-attr]
        self.assertEqual(sum(a is not None for a in attempts), 1, attempts)
        leaves = [await self.served(ca, port=port) for _, port in instances]
        self.assertEqual(leaves[0].serial_number, leaves[1].serial_number)
        for leaf in leaves:
            self.assertNames(leaf)
            self.assertEqual(leaf.not_valid_after_utc.timestamp(), expiries[0])

    @asyncTest
    async def test_twoInstancesShareStorage(self) -> None:
        """
        Two proxies on one storage directory: one of them orders (the file
        lock), pebble sees exactly one order, and both serve the
        certificate on their own TLS listeners.
        """
        ca = self.startCA()
        instances = await self.twoInstances(ca)
        await self.assertOneOrderBothServe(ca, instances)

    @asyncTest
    async def test_twoInstancesRedisLock(self) -> None:
        """
        With C{[state]} on a real redis-server, the two proxies decide who
        orders by the Redis lock: both tried it, one order reached pebble,
        the lock is freed, and both serve the certificate.
        """
        redis = RedisServer().start()
        self.addCleanup(redis.cleanUp)
        ca = self.startCA()
        instances = await self.twoInstances(ca, {"state": {"redis": redis.url}})
        await self.assertOneOrderBothServe(ca, instances)
        stats = redis.command("INFO", "commandstats")
        assert isinstance(stats, bytes)
        calls = [
            int(line.split(b"calls=")[1].split(b",")[0])
            for line in stats.splitlines()
            if line.startswith(b"cmdstat_set:")
        ]
        self.assertEqual(len(calls), 1, stats)
        self.assertGreaterEqual(calls[0], 2)
        self.assertEqual(redis.command("EXISTS", b"rproxy:acme:lock:order"), 0)
