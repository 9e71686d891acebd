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
from twisted.logger import globalLogPublisher
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


def adminRequest(
    proxy: Proxy,
    method: bytes,
    target: bytes,
    body: bytes = b"",
    headers: dict[bytes, bytes] | None = None,
) -> ParsedResponse:
    """
    One request with a body to the proxy's admin site (a JSON one unless
    C{headers} say otherwise).
    """
    assert proxy.service.admin is not None
    protocol, transport = connectClient(proxy.service.admin.site)
    fields = {b"Host": b"admin", b"Content-Type": b"application/json"}
    fields.update(headers or {})
    head = b"".join(k + b": " + v + b"\r\n" for k, v in fields.items())
    protocol.dataReceived(
        method
        + b" "
        + target
        + b" HTTP/1.1\r\n"
        + head
        + b"Content-Length: %d\r\n\r\n" % (len(body),)
        + body
    )
    [response] = responsesOf(transport)
    protocol.connectionLost(Failure(ConnectionDone()))
    return response


def twoServers(**adminOptions: Any) -> Proxy:
    """
    A memory proxy with an admin site, its pool C{app} of two servers.
    """
    options: dict[str, Any] = {"listen": (), "metrics": False, **adminOptions}
    pools = {"app": PoolConfig(name="app", servers=(backend(8001), backend(8002)))}
    return Proxy(pools=pools, admin=AdminConfig(**options))


_FIRST = b"http%3A%2F%2F127.0.0.1%3A8001"


class ControlAPITests(SynchronousTestCase):
    """
    C{/pools/...}: the servers as JSON, and changing them.
    """

    def setUp(self) -> None:
        self.proxy = twoServers()
        self.pool = self.proxy.service.pools["app"]
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def post(self, target: bytes, body: object, **headers: bytes) -> ParsedResponse:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return adminRequest(
            self.proxy,
            b"POST",
            target,
            data,
            {k.replace("_", "-").encode(): v for k, v in headers.items()},
        )

    def test_getServers(self) -> None:
        """
        C{GET /pools/NAME/servers} lists the servers with their state,
        weight and health.
        """
        response = adminGet(self.proxy, b"/pools/app/servers")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header(b"content-type"), [b"application/json"])
        servers = json.loads(response.body)
        self.assertEqual(
            [
                (s["index"], s["url"], s["id"], s["state"], s["health"], s["weight"])
                for s in servers
            ],
            [
                (0, "http://127.0.0.1:8001", _FIRST.decode(), "ready", "healthy", 1),
                (
                    1,
                    "http://127.0.0.1:8002",
                    "http%3A%2F%2F127.0.0.1%3A8002",
                    "ready",
                    "healthy",
                    1,
                ),
            ],
        )
        pools = json.loads(adminGet(self.proxy, b"/pools").body)["pools"]
        self.assertEqual([p["name"] for p in pools], ["app"])
        one = json.loads(adminGet(self.proxy, b"/pools/app/servers/1").body)
        self.assertEqual(one["url"], "http://127.0.0.1:8002")

    def test_unknownNames(self) -> None:
        """
        An unknown pool, server or path under C{/pools} is a 404 saying so,
        for a read and for a change.
        """
        for target in (
            b"/pools/nope",
            b"/pools/nope/servers",
            b"/pools/app/servers/7",
            b"/pools/app/servers/http%3A%2F%2Fexample.com",
            b"/pools/app/other",
        ):
            response = adminGet(self.proxy, target)
            self.assertEqual(response.status, 404, target)
            self.assertIn("error", json.loads(response.body))
        for target in (b"/pools/nope/servers/0", b"/pools/app/servers/9"):
            response = self.post(target, {"state": "drain"})
            self.assertEqual(response.status, 404, target)
            self.assertIn("no ", json.loads(response.body)["error"])

    def test_drain(self) -> None:
        """
        C{POST} C{{"state": "drain"}} to a server named by its URL drains it:
        the answer, C{/status.json} and the page say so, the change is
        logged with where it came from, and new requests go elsewhere.
        """
        response = self.post(b"/pools/app/servers/" + _FIRST, {"state": "drain"})
        self.assertEqual(response.status, 200, response.body)
        answer = json.loads(response.body)
        self.assertEqual(answer["server"]["state"], "drain")
        self.assertEqual(answer["changed"], {"state": ["ready", "drain"]})
        self.assertEqual(self.pool.servers[0].adminState, "drain")
        status = json.loads(adminGet(self.proxy, b"/status.json").body)
        self.assertEqual(status["pools"][0]["servers"][0]["adminState"], "drain")
        [change] = status["runtime_changes"]
        self.assertEqual(
            (change["pool"], change["server"], change["address"], change["user"]),
            ("app", "http://127.0.0.1:8001", "192.0.2.7", None),
        )
        page = adminGet(self.proxy, b"/").body
        self.assertIn(b'<span class="badge drain">drain</span>', page)
        self.assertIn(b"Run-time changes", page)
        logged = [e for e in self.events if "changed pool" in e.get("log_format", "")]
        self.assertEqual(len(logged), 1)
        self.assertEqual(
            (logged[0]["address"], logged[0]["url"]),
            ("192.0.2.7", "http://127.0.0.1:8001"),
        )
        for _ in range(3):
            self.proxy.exchange(b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n")
        self.assertEqual(
            [port for _, port, _, _, _ in self.proxy.reactor.tcpClients], [8002] * 3
        )

    def test_weightAndIndex(self) -> None:
        """
        A server named by its index gets a weight; C{null} gives it the
        configured one back; the page shows an override.
        """
        response = self.post(b"/pools/app/servers/1", {"weight": 5})
        self.assertEqual(response.status, 200, response.body)
        self.assertEqual(json.loads(response.body)["server"]["weight"], 5)
        self.assertEqual(self.pool.servers[1].weightOverride, 5)
        self.assertIn(b"set at run time", adminGet(self.proxy, b"/").body)
        response = self.post(
            b"/pools/app/servers/1", {"weight": None, "state": "maintenance"}
        )
        self.assertEqual(response.status, 200, response.body)
        server = json.loads(response.body)["server"]
        self.assertEqual((server["weight"], server["state"]), (1, "maintenance"))
        self.assertIsNone(self.pool.servers[1].weightOverride)

    def test_badBodies(self) -> None:
        """
        A body that is not a JSON object of C{state} and/or C{weight} with
        good values is a 400 saying what is wrong; nothing changes.
        """
        cases = [
            (b"{not json", "not JSON"),
            (b"\xff\xfe", "not JSON"),
            ([1, 2], "JSON object"),
            ({}, "nothing to change"),
            ({"state": "drain", "colour": "red"}, "unknown key colour"),
            ({"state": "asleep"}, "state must be one of"),
            ({"state": None}, "state must be one of"),
            ({"weight": 0}, "at least 1"),
            ({"weight": "2"}, "at least 1"),
            ({"weight": True}, "at least 1"),
            ({"weight": 1.5}, "at least 1"),
        ]
        for body, message in cases:
            response = self.post(b"/pools/app/servers/0", body)
            self.assertEqual(response.status, 400, body)
            self.assertIn(message, json.loads(response.body)["error"], body)
        backend = self.pool.servers[0]
        self.assertEqual((backend.adminState, backend.weightOverride), ("ready", None))

    def test_tooLarge(self) -> None:
        """
        A body over 64 KiB is refused with 413.
        """
        body = b'{"state": "drain", "x": "' + b"a" * 70000 + b'"}'
        self.assertEqual(self.post(b"/pools/app/servers/0", body).status, 413)

    def test_notJSONContentType(self) -> None:
        """
        A change sent as a form (what a cross-site HTML form can send) or
        without a content type is refused with 415, and not made.
        """
        for contentType in (
            b"application/x-www-form-urlencoded",
            b"text/plain",
            b"",
        ):
            response = self.post(
                b"/pools/app/servers/0", {"state": "drain"}, Content_Type=contentType
            )
            self.assertEqual(response.status, 415, contentType)
        # twisted.web refuses a multipart body it cannot parse before we do.
        response = self.post(
            b"/pools/app/servers/0",
            {"state": "drain"},
            Content_Type=b"multipart/form-data; boundary=x",
        )
        self.assertIn(response.status, (400, 415))
        self.assertEqual(self.pool.servers[0].adminState, "ready")
        accepted = self.post(
            b"/pools/app/servers/0",
            {"state": "drain"},
            Content_Type=b"application/json; charset=utf-8",
        )
        self.assertEqual(accepted.status, 200)

    def test_crossSiteRefused(self) -> None:
        """
        A change whose C{Origin} is another site, or that the browser says
        is cross-site, is refused with 403; from the site's own origin it
        is made.
        """
        for headers in (
            {"Origin": b"http://evil.example"},
            {"Origin": b"null"},
            {"Sec_Fetch_Site": b"cross-site"},
        ):
            response = self.post(b"/pools/app/servers/0", {"state": "drain"}, **headers)
            self.assertEqual(response.status, 403, headers)
        self.assertEqual(self.pool.servers[0].adminState, "ready")
        response = self.post(
            b"/pools/app/servers/0",
            {"state": "drain"},
            Origin=b"http://admin",
            Sec_Fetch_Site=b"same-origin",
        )
        self.assertEqual(response.status, 200)

    def test_methods(self) -> None:
        """
        Only GET and POST are answered under C{/pools}, POST only for a
        server; the other pages take no POST.
        """
        response = adminRequest(self.proxy, b"PUT", b"/pools/app/servers/0", b"{}")
        self.assertEqual(response.status, 405)
        self.assertEqual(response.header(b"allow"), [b"GET, HEAD, POST"])
        self.assertEqual(self.post(b"/pools/app", {"state": "drain"}).status, 405)
        response = self.post(b"/status.json", {"state": "drain"})
        self.assertEqual(response.status, 405)
        self.assertEqual(self.pool.servers[0].adminState, "ready")

    def test_reloadUndoes(self) -> None:
        """
        A reload, even to the same configuration, makes the servers ready
        at their configured weights again.
        """
        self.post(b"/pools/app/servers/0", {"state": "drain", "weight": 4})
        self.proxy.service.reload(self.proxy.service.config)
        self.assertIs(self.proxy.service.pools["app"], self.pool)
        backend = self.pool.servers[0]
        self.assertEqual((backend.adminState, backend.weightOverride), ("ready", None))


class ControlAuthenticationTests(SynchronousTestCase):
    """
    With C{users}, the control API needs a user's password, and a change
    records who made it.
    """

    def setUp(self) -> None:
        self.proxy = twoServers(
            users=(("ops", hashPassword("secret", iterations=1000)),)
        )

    def test_refusedWithout(self) -> None:
        """
        Without the right credentials, reads and changes are refused with
        401, and nothing changes.
        """
        self.assertEqual(adminGet(self.proxy, b"/pools/app/servers").status, 401)
        for authorization in (None, basic("ops", "wrong")):
            headers = {} if authorization is None else {b"Authorization": authorization}
            response = adminRequest(
                self.proxy,
                b"POST",
                b"/pools/app/servers/0",
                b'{"state":"drain"}',
                headers,
            )
            self.assertEqual(response.status, 401)
        self.assertEqual(self.proxy.service.pools["app"].servers[0].adminState, "ready")

    def test_userRecorded(self) -> None:
        """
        A change made with credentials is made and records the user.
        """
        response = adminRequest(
            self.proxy,
            b"POST",
            b"/pools/app/servers/0",
            b'{"state": "maintenance"}',
            {b"Authorization": basic("ops", "secret")},
        )
        self.assertEqual(response.status, 200, response.body)
        admin = self.proxy.service.admin
        assert admin is not None
        [change] = admin.control.changes
        self.assertEqual(change["user"], "ops")
