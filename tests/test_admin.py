"""
Tests for L{twisted_rproxy.admin}: the status page, C{/status.json} and
the authentication of the admin site, for a L{ProxyService} on a memory
reactor whose requests are answered by hand.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.loopback import ParsedResponse
from tests.memory import Proxy, adminGet, backend, connectClient, responsesOf
from tests.test_metrics import asWorker
from twisted_rproxy.admin import hashPassword
from twisted_rproxy.config import AdminConfig, PoolConfig
from twisted_rproxy.totals import WorkerSnapshot

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def adminProxy(**adminOptions: Any) -> Proxy:
    """
    A memory proxy with an admin site (not listening: tests talk to its
    site directly).
    """
    options: dict[str, Any] = {"listen": (), "metrics": True, **adminOptions}
    # No retries: a refused connection is answered 502 at once.
    pools = {"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)}
    return Proxy(pools=pools, admin=AdminConfig(**options))


def proxied(proxy: Proxy, target: bytes = b"/x", answer: bytes = _OK) -> None:
    """
    One request through the proxy, answered by the backend with C{answer}.
    """
    proxy.roundTrip(
        b"GET " + target + b" HTTP/1.1\r\nHost: example.test\r\n\r\n", answer
    )


def basic(name: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{name}:{password}".encode())


class StatusTests(SynchronousTestCase):
    """
    C{/status.json} and the HTML page show the service's state.
    """

    def test_statusJson(self) -> None:
        """
        C{/status.json} shows the configuration, the routes, the pool with
        its server's request count and requests in flight, and the open
        client connections.
        """
        proxy = adminProxy()
        proxied(proxy, b"/one")
        proxied(proxy, b"/two")
        proxy.exchange(b"GET /waiting HTTP/1.1\r\nHost: example.test\r\n\r\n")
        proxy.acceptBackend()
        response = adminGet(proxy, b"/status.json")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        self.assertEqual(response.header(b"cache-control"), [b"no-store"])
        status = json.loads(response.body)
        self.assertEqual(status["config"], "test")
        self.assertEqual(status["connections"], 3)
        self.assertEqual(
            [(r["route"], r["pool"]) for r in status["routes"]], [("/", "app")]
        )
        [pool] = status["pools"]
        self.assertEqual(pool["name"], "app")
        [server] = pool["servers"]
        self.assertEqual(server["url"], "http://127.0.0.1:8001")
        self.assertEqual(server["state"], "healthy")
        self.assertEqual((server["requests"], server["inFlight"]), (3, 1))
        self.assertEqual(status["recent_errors"], [])
        self.assertTrue(status["metrics"])

    def test_recentErrors(self) -> None:
        """
        A 5xx answer is listed among the recent errors, newest first, with
        its request and route; a 4xx is not.
        """
        proxy = adminProxy()
        # First, while no connection is kept alive to be used instead.
        _, refused = proxy.exchange(
            b"GET /refused HTTP/1.1\r\nHost: example.test\r\n\r\n"
        )
        factory = proxy.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertEqual([r.status for r in responsesOf(refused)], [502])
        proxied(
            proxy, b"/missing", b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        )
        proxied(
            proxy, b"/broken", b"HTTP/1.1 503 Unavailable\r\nContent-Length: 0\r\n\r\n"
        )
        errors = json.loads(adminGet(proxy, b"/status.json").body)["recent_errors"]
        self.assertEqual(
            [(e["status"], e["method"], e["uri"], e["route"]) for e in errors],
            [(503, "GET", "/broken", "/"), (502, "GET", "/refused", "/")],
        )

    def test_recentErrorsBounded(self) -> None:
        """
        Only the latest C{recentErrors} errors are kept.
        """
        proxy = adminProxy(recentErrors=2)
        for n in range(4):
            proxied(
                proxy,
                b"/e%d" % (n,),
                b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
            )
        errors = json.loads(adminGet(proxy, b"/status.json").body)["recent_errors"]
        self.assertEqual([e["uri"] for e in errors], ["/e3", "/e2"])

    def test_statusPage(self) -> None:
        """
        C{/} is a self-contained HTML page showing the pool, its server and
        its health, refreshing itself every C{refresh} seconds unless told
        otherwise.
        """
        proxy = adminProxy(refresh=7.0)
        proxied(proxy)
        response = adminGet(proxy, b"/")
        self.assertEqual(response.status, 200)
        self.assertEqual(
            response.header(b"content-type"), [b"text/html; charset=utf-8"]
        )
        self.assertIn(
            b"default-src 'none'", b"".join(response.header(b"content-security-policy"))
        )
        page = response.body.decode("utf-8")
        self.assertIn("<title>twisted_rproxy status</title>", page)
        self.assertIn("Pool <code>app</code>", page)
        self.assertIn("<code>http://127.0.0.1:8001</code>", page)
        self.assertIn('<span class="badge healthy">healthy</span>', page)
        self.assertIn('<meta http-equiv="refresh" content="7">', page)
        self.assertNotIn("http-equiv", adminGet(proxy, b"/?refresh=0").body.decode())

    def test_pageEscapesRequestData(self) -> None:
        """
        What clients sent (shown among the recent errors) is escaped on the
        page.
        """
        proxy = adminProxy()
        proxied(
            proxy,
            b"/%3Cscript%3E?<b>",
            b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
        )
        page = adminGet(proxy, b"/").body.decode()
        self.assertIn("/%3Cscript%3E?&lt;b&gt;", page)
        self.assertNotIn("<b>", page)

    def test_unknownPathIs404(self) -> None:
        """
        Any other path is 404, naming the pages there are.
        """
        response = adminGet(adminProxy(), b"/other")
        self.assertEqual(response.status, 404)
        self.assertIn(b"/status.json", response.body)

    def test_metricsOff(self) -> None:
        """
        With metrics off, C{/metrics} is 404 and the status says so.
        """
        proxy = adminProxy(metrics=False)
        self.assertEqual(adminGet(proxy, b"/metrics").status, 404)
        status = json.loads(adminGet(proxy, b"/status.json").body)
        self.assertFalse(status["metrics"])


class AuthenticationTests(SynchronousTestCase):
    """
    With C{users}, every admin page needs a user's password.
    """

    def setUp(self) -> None:
        self.proxy = adminProxy(
            users=(("ops", hashPassword("secret", iterations=1000)),)
        )

    def assertRefused(self, response: ParsedResponse) -> None:
        self.assertEqual(response.status, 401)
        self.assertEqual(
            response.header(b"www-authenticate"),
            [b'Basic realm="twisted_rproxy admin", charset="UTF-8"'],
        )
        self.assertNotIn(b"app", response.body)

    def test_refusedWithoutPassword(self) -> None:
        """
        Without C{Authorization}, each page is refused with 401 and a
        C{WWW-Authenticate} challenge, showing nothing.
        """
        for target in (b"/", b"/status.json", b"/metrics"):
            self.assertRefused(adminGet(self.proxy, target))

    def test_refusedWithWrongCredentials(self) -> None:
        """
        A wrong password, an unknown user, another scheme or a garbled
        header are refused.
        """
        for authorization in (
            basic("ops", "wrong"),
            basic("root", "secret"),
            b"Bearer " + base64.b64encode(b"ops:secret"),
            b"Basic !!!not-base64",
        ):
            self.assertRefused(adminGet(self.proxy, b"/status.json", authorization))

    def test_acceptedWithPassword(self) -> None:
        """
        The right user and password get the page, again and again.
        """
        for _ in range(2):
            response = adminGet(self.proxy, b"/status.json", basic("ops", "secret"))
            self.assertEqual(response.status, 200)
            self.assertEqual(json.loads(response.body)["config"], "test")


class TotalsTests(SynchronousTestCase):
    """
    C{/status.json} and the page show the totals over workers, and each
    worker's figures.
    """

    def test_singleProcess(self) -> None:
        """
        Without workers, the totals are the process's own, and it is the
        one entry of C{workers}; the page has no workers table.
        """
        proxy = adminProxy()
        proxied(proxy, b"/one")
        proxied(proxy, b"/two", b"HTTP/1.1 404 No\r\nContent-Length: 0\r\n\r\n")
        status = json.loads(adminGet(proxy, b"/status.json").body)
        totals = status["totals"]
        self.assertEqual(
            (totals["workers"], totals["requests"], totals["statuses"]),
            (1, 2, {"2xx": 1, "4xx": 1}),
        )
        self.assertEqual((totals["bytes_sent"], totals["connections"]), (5, 2))
        [worker] = status["workers"]
        self.assertEqual((worker["worker"], worker["live"]), (None, True))
        self.assertEqual(worker["requests"], 2)
        page = adminGet(proxy, b"/").body.decode()
        self.assertNotIn("<h2>Workers</h2>", page)
        self.assertIn('<div class="n">2</div><div class="l">requests</div>', page)

    def test_withoutPrometheusClient(self) -> None:
        """
        With metrics off (as without prometheus_client), the totals are
        still counted and shown.
        """
        proxy = adminProxy(metrics=False)
        proxied(proxy)
        status = json.loads(adminGet(proxy, b"/status.json").body)
        self.assertFalse(status["metrics"])
        self.assertEqual(status["totals"]["requests"], 1)

    def test_overWorkers(self) -> None:
        """
        As worker 0 of two: the totals add up both workers' requests, the
        sibling that did not answer is shown so (its connections left out),
        and the page lists both workers and their totals.
        """
        proxy = adminProxy()
        asWorker(self, proxy)
        proxied(proxy)
        status = json.loads(adminGet(proxy, b"/status.json").body)
        self.assertEqual(status["worker"], "0")
        totals = status["totals"]
        self.assertEqual((totals["workers"], totals["requests"]), (2, 4))
        self.assertEqual(totals["connections"], 1)
        self.assertEqual(
            [(w["worker"], w["live"], w["requests"]) for w in status["workers"]],
            [(0, True, 1), (1, False, 3)],
        )
        self.assertEqual([w["connections"] for w in status["workers"]], [1, 0])
        page = adminGet(proxy, b"/").body.decode()
        self.assertIn("<h2>Workers</h2>", page)
        self.assertIn("not answering", page)
        self.assertIn(
            '<div class="n">4</div><div class="l">requests (all workers)</div>', page
        )

    def test_clientGoneBeforeTotals(self) -> None:
        """
        A client that leaves while the siblings are asked gets nothing
        written, and nothing fails.
        """
        proxy = adminProxy()
        admin = proxy.service.admin
        assert admin is not None
        waiting: Deferred[list[WorkerSnapshot]] = Deferred()
        self.patch(admin, "collect", lambda: waiting)
        protocol, transport = connectClient(admin.site)
        protocol.dataReceived(b"GET /status.json HTTP/1.1\r\nHost: admin\r\n\r\n")
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(Failure(ConnectionDone()))
        waiting.callback([])
        self.assertEqual(transport.value(), b"")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_totalsFailure(self) -> None:
        """
        If the totals cannot be gathered, the answer is a 500 and the
        failure is logged.
        """
        proxy = adminProxy()
        admin = proxy.service.admin
        assert admin is not None
        self.patch(admin, "collect", lambda: fail(RuntimeError("broken")))
        response = adminGet(proxy, b"/status.json")
        self.assertEqual(response.status, 500)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
