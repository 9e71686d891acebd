"""
What the admin site shows of automatic certificates: the C{acme} key of
C{/status.json}, the page's section and the C{rproxy_acme_*} families of
C{/metrics}, after real runs of L{ACMEManager} (a memory clock, a fake CA
that issues or refuses with an ACME problem document).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.memory import Proxy, adminGet, backend
from tests.test_acme_manager import DAY, _config, _FakeCA, _temporaryDirectory
from tests.test_metrics import sample, scrape
from twisted_rproxy.acme import ACMEManager, SynchronousRunner
from twisted_rproxy.config import AdminConfig, PoolConfig, parseConfig
from twisted_rproxy.tls import ServerTLS

DOMAINS = ("app.example.com", "www.example.com")

_FAMILIES = (
    "rproxy_acme_certificate_expiry_timestamp_seconds",
    "rproxy_acme_last_renewal_attempt_timestamp_seconds",
    "rproxy_acme_last_renewal_success",
    "rproxy_acme_consecutive_failures",
)


class _RefusingCA(_FakeCA):
    """
    A fake CA that, once C{refusing} is set, answers an order with the
    ACME problem document a real CA sends for a forbidden name.
    """

    refusing = False

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
        if self.refusing:
            from acme import messages

            self.orders.append(tuple(domains))
            raise messages.Error.with_code(
                "rejectedIdentifier",
                detail="Error creating new order :: policy forbids issuing for name",
            )
        return super().order(
            domains, keyPEM, challenge, publish, withdraw, cancelled=cancelled
        )


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


class ACMEStatusTests(SynchronousTestCase):
    """
    The admin site of a proxy whose ACME manager issued, then failed to
    renew, a certificate.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.storage = _temporaryDirectory(self)
        self.ca = _RefusingCA(self.clock, lifetime=30 * DAY)
        data = _config(self.storage)
        data["tls"][0]["acme_domains"] = list(DOMAINS)
        config = parseConfig(data, "rproxy.toml", self.storage)
        assert config.acme is not None
        self.manager = ACMEManager(
            self.clock,
            config.acme,
            [(config.tls[0], ServerTLS(config.tls[0]))],
            runner=SynchronousRunner(),
            clientFactory=lambda key: self.ca,
            random=lambda: 0.0,
        )
        pools = {"app": PoolConfig(name="app", servers=(backend(8001),))}
        self.proxy = Proxy(pools=pools, admin=AdminConfig(listen=(), metrics=True))
        # The proxy's own manager, as the service makes it with [acme].
        self.proxy.service.acme = self.manager
        self.manager.start()
        self.addCleanup(self.manager.stop)

    def statusOf(self) -> dict[str, object]:
        response = adminGet(self.proxy, b"/status.json")
        self.assertEqual(response.status, 200)
        (certificate,) = json.loads(response.body)["acme"]
        assert isinstance(certificate, dict)
        return certificate

    def page(self) -> str:
        response = adminGet(self.proxy, b"/")
        self.assertEqual(response.status, 200)
        body: str = response.body.decode("utf-8")
        return body

    def test_beforeTheFirstOrder(self) -> None:
        """
        Before anything was ordered, the certificate is listed without
        expiry nor attempt, and C{/metrics} has its failure count (0) only.
        """
        status = self.statusOf()
        self.assertEqual(status["domains"], list(DOMAINS))
        self.assertIsNone(status["not_after"])
        self.assertIsNone(status["last_attempt"])
        samples = scrape(self.proxy)
        label = {"certificate": DOMAINS[0]}
        self.assertEqual(sample(samples, _FAMILIES[3], **label), 0)
        for family in _FAMILIES[:3]:
            self.assertIsNone(sample(samples, family, **label))

    def test_issued(self) -> None:
        """
        After an order succeeded: its domains, expiry, next renewal and the
        attempt's time with no error, on C{/status.json}, the page, and in
        the four C{rproxy_acme_*} families.
        """
        self.clock.advance(0)
        (managed,) = self.manager.status()
        assert managed.notAfter is not None
        attempted = self.clock.seconds()
        status = self.statusOf()
        self.assertEqual(status["name"], DOMAINS[0])
        self.assertEqual(status["domains"], list(DOMAINS))
        notAfter = status["not_after"]
        assert isinstance(notAfter, float)
        self.assertLessEqual(abs(notAfter - (attempted + 30 * DAY)), 1)
        self.assertEqual(status["not_after"], managed.notAfter)
        self.assertEqual(status["renew_at"], managed.renewAt)
        self.assertEqual(status["last_attempt"], attempted)
        self.assertEqual(status["last_success"], attempted)
        self.assertIsNone(status["last_error"])
        self.assertEqual(status["failures"], 0)

        page = self.page()
        self.assertIn("Automatic certificates (ACME)", page)
        self.assertIn("app.example.com, www.example.com", page)
        self.assertIn(_when(managed.notAfter), page)
        self.assertIn(_when(attempted) + "</td><td>ok</td>", page)

        samples = scrape(self.proxy)
        label = {"certificate": DOMAINS[0]}
        self.assertEqual(sample(samples, _FAMILIES[0], **label), managed.notAfter)
        self.assertEqual(sample(samples, _FAMILIES[1], **label), attempted)
        self.assertEqual(sample(samples, _FAMILIES[2], **label), 1)
        self.assertEqual(sample(samples, _FAMILIES[3], **label), 0)

    def test_renewalRefused(self) -> None:
        """
        After the CA refused the renewal: the old expiry still, the
        attempt's time, the CA's problem document as the error, the
        failures in a row, on C{/status.json}, the page and C{/metrics}.
        """
        self.clock.advance(0)
        (issued,) = self.manager.status()
        assert issued.renewAt is not None
        self.ca.refusing = True
        self.clock.advance(issued.renewAt - self.clock.seconds())
        attempted = self.clock.seconds()
        self.assertEqual(len(self.ca.orders), 2)

        status = self.statusOf()
        self.assertEqual(status["not_after"], issued.notAfter)
        self.assertEqual(status["last_attempt"], attempted)
        self.assertEqual(status["last_success"], issued.lastSuccess)
        self.assertEqual(status["failures"], 1)
        error = status["last_error"]
        assert isinstance(error, str)
        self.assertTrue(error.startswith("the CA refused: {"), error)
        problem = json.loads(error[len("the CA refused: ") :])
        self.assertEqual(
            problem["type"], "urn:ietf:params:acme:error:rejectedIdentifier"
        )
        self.assertIn("policy forbids", problem["detail"])

        page = self.page()
        self.assertIn('<tr class="err"><td>app.example.com, www.example.com', page)
        self.assertIn("failed (1 in a row): the CA refused:", page)
        self.assertIn("urn:ietf:params:acme:error:rejectedIdentifier", page)
        self.assertIn(_when(attempted), page)

        samples = scrape(self.proxy)
        label = {"certificate": DOMAINS[0]}
        self.assertEqual(sample(samples, _FAMILIES[0], **label), issued.notAfter)
        self.assertEqual(sample(samples, _FAMILIES[1], **label), attempted)
        self.assertEqual(sample(samples, _FAMILIES[2], **label), 0)
        self.assertEqual(sample(samples, _FAMILIES[3], **label), 1)
        self.flushLoggedErrors()
