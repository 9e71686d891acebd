"""
Tests for L{twisted_rproxy.metrics}: the counters and histograms after
requests through a whole L{ProxyService} on a memory reactor, read back
from the admin site's C{/metrics} as Prometheus parses them.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.memory import Proxy, adminGet, backend, responsesOf
from twisted_rproxy.config import AdminConfig, CacheConfig, PoolConfig, RouteConfig
from twisted_rproxy.peers import WorkerTotals

_GET = b"GET %s HTTP/1.1\r\nHost: example.test\r\n\r\n"
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"

#: The server label of the pool's only server.
_SERVER = "http://127.0.0.1:8001"


def metricsProxy() -> Proxy:
    """
    A memory proxy with metrics on, two routes to one pool (which does not
    retry, so that a refused connection is one failed request).
    """
    return Proxy(
        routes=(
            RouteConfig(path="/api", pool="app"),
            RouteConfig(path="/", pool="app"),
        ),
        pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)},
        admin=AdminConfig(listen=(), metrics=True),
    )


def scrape(proxy: Proxy) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """
    Every sample of C{/metrics}, by name and labels.
    """
    response = adminGet(proxy, b"/metrics")
    assert response.status == 200, response
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.body.decode())
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class RequestMetricsTests(SynchronousTestCase):
    """
    Each finished request is counted by route, pool and status class, its
    durations and bytes recorded.
    """

    def test_requestsByRouteAndStatusClass(self) -> None:
        """
        Requests are counted under their route's label and pool, by status
        class; the proxy's own 502 counts as a 5xx of its route.
        """
        proxy = metricsProxy()
        # First, while no connection is kept alive to be used instead.
        _, refused = proxy.exchange(_GET % (b"/api/refused",))
        proxy.reactor.tcpClients[-1][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError())
        )
        self.assertEqual([r.status for r in responsesOf(refused)], [502])
        for target in (b"/api/1", b"/api/2", b"/page"):
            proxy.roundTrip(_GET % (target,), _OK)
        proxy.roundTrip(
            _GET % (b"/gone",), b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        )
        samples = scrape(proxy)
        counts = {
            (dict(labels)["route"], dict(labels)["status"]): value
            for (name, labels), value in samples.items()
            if name == "rproxy_requests_total"
        }
        self.assertEqual(
            counts,
            {
                ("/api", "2xx"): 2.0,
                ("/api", "5xx"): 1.0,
                ("/", "2xx"): 1.0,
                ("/", "4xx"): 1.0,
            },
        )
        self.assertEqual(
            sample(
                samples, "rproxy_requests_total", route="/api", pool="app", status="2xx"
            ),
            2.0,
        )

    def test_responseBytes(self) -> None:
        """
        The body bytes sent to clients are added up by route.
        """
        proxy = metricsProxy()
        for _ in range(3):
            proxy.roundTrip(_GET % (b"/api/x",), _OK)
        proxy.roundTrip(
            _GET % (b"/big",),
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000,
        )
        samples = scrape(proxy)
        self.assertEqual(
            sample(samples, "rproxy_response_bytes_total", route="/api"), 15.0
        )
        self.assertEqual(
            sample(samples, "rproxy_response_bytes_total", route="/"), 1000.0
        )

    def test_durations(self) -> None:
        """
        A request answered 0.3 seconds after it arrived is in the request
        and upstream histograms' 0.5 bucket, not in their 0.25 one.
        """
        proxy = metricsProxy()
        # A request's start time of 0 reads as "not started": away from it.
        proxy.reactor.advance(100)
        _, transport = proxy.exchange(_GET % (b"/slow",))
        protocol, _ = proxy.acceptBackend()
        proxy.reactor.advance(0.3)
        protocol.dataReceived(_OK)
        self.assertEqual([r.status for r in responsesOf(transport)], [200])
        samples = scrape(proxy)
        request = "rproxy_request_duration_seconds"
        self.assertEqual(
            sample(samples, request + "_bucket", route="/", le="0.25"), 0.0
        )
        self.assertEqual(sample(samples, request + "_bucket", route="/", le="0.5"), 1.0)
        self.assertEqual(sample(samples, request + "_count", route="/"), 1.0)
        self.assertAlmostEqual(
            sample(samples, request + "_sum", route="/") or 0.0, 0.3, places=6
        )
        upstream = "rproxy_upstream_duration_seconds"
        self.assertEqual(
            sample(samples, upstream + "_bucket", pool="app", le="0.25"), 0.0
        )
        self.assertEqual(
            sample(samples, upstream + "_bucket", pool="app", le="0.5"), 1.0
        )


class CacheMetricsTests(SynchronousTestCase):
    """
    Cache lookups are counted by route and result.
    """

    def test_hitsAndMisses(self) -> None:
        """
        A miss, then two hits of the stored response, counted as
        C{rproxy_cache_requests_total} with result C{miss} and C{hit}.
        """
        proxy = Proxy(
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            pools={"app": PoolConfig(name="app", servers=(backend(8001),))},
            caches={"main": CacheConfig(name="main")},
            admin=AdminConfig(listen=(), metrics=True),
        )
        cacheable = (
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
            b"Content-Length: 5\r\n\r\nhello"
        )
        proxy.roundTrip(_GET % (b"/doc",), cacheable)
        for _ in range(2):
            _, transport = proxy.exchange(_GET % (b"/doc",))
            self.assertEqual(responsesOf(transport)[0].body, b"hello")
        samples = scrape(proxy)
        self.assertEqual(
            sample(samples, "rproxy_cache_requests_total", route="/", result="miss"),
            1.0,
        )
        self.assertEqual(
            sample(samples, "rproxy_cache_requests_total", route="/", result="hit"),
            2.0,
        )


class StateMetricsTests(SynchronousTestCase):
    """
    What is read from the proxy's state at scrape time.
    """

    def test_poolAndBackendState(self) -> None:
        """
        The pool's and its server's request counts, the requests in flight,
        the idle connections, the server's health and the open client
        connections are as the proxy's state says.
        """
        proxy = metricsProxy()
        proxy.roundTrip(_GET % (b"/a",), _OK)
        proxy.roundTrip(_GET % (b"/b",), _OK)
        proxy.exchange(_GET % (b"/in-flight",))
        samples = scrape(proxy)
        labels: dict[str, Any] = {"pool": "app", "server": _SERVER}
        self.assertEqual(sample(samples, "rproxy_pool_requests_total", pool="app"), 3.0)
        self.assertEqual(
            sample(samples, "rproxy_backend_requests_total", **labels), 3.0
        )
        self.assertEqual(sample(samples, "rproxy_backend_in_flight", **labels), 1.0)
        self.assertEqual(
            sample(samples, "rproxy_backend_failures_total", **labels), 0.0
        )
        self.assertEqual(
            sample(samples, "rproxy_backend_up", state="healthy", **labels), 1.0
        )
        self.assertEqual(sample(samples, "rproxy_pool_pending", pool="app"), 0.0)
        self.assertEqual(sample(samples, "rproxy_client_connections"), 3.0)

    def test_failuresCounted(self) -> None:
        """
        A refused connection counts as a failure of its server.
        """
        proxy = metricsProxy()
        proxy.exchange(_GET % (b"/x",))
        proxy.reactor.tcpClients[-1][2].clientConnectionFailed(
            None, Failure(ConnectionRefusedError())
        )
        samples = scrape(proxy)
        self.assertEqual(
            sample(
                samples, "rproxy_backend_failures_total", pool="app", server=_SERVER
            ),
            1.0,
        )
        self.assertEqual(
            sample(samples, "rproxy_backend_in_flight", pool="app", server=_SERVER),
            0.0,
        )


def siblingCounts(requests: int, connections: int) -> Any:
    """
    The counts a sibling worker reports: C{requests} 2xx on route C{/} of
    pool C{app}, and C{connections} open connections.
    """
    return lambda: {
        "rproxy_requests": {("/", "app", "2xx"): [requests, 1.0]},
        "rproxy_client_connections": {(): [connections]},
    }


def asWorker(test: SynchronousTestCase, proxy: Proxy) -> WorkerTotals:
    """
    Make C{proxy} worker 0 of two, whose sibling (worker 1, not running)
    last wrote 3 requests and 2 connections to the run directory.
    """
    directory = test.mktemp()
    os.makedirs(directory)
    admin = proxy.service.admin
    assert admin is not None
    WorkerTotals(
        proxy.reactor, proxy.reactor, directory, 1, siblingCounts(3, 2), lambda: 10.0
    ).publish()
    totals = WorkerTotals(proxy.reactor, proxy.reactor, directory, 0, admin.snapshot)
    admin.workerTotals = totals
    admin.worker = "0"
    return totals


class WorkerMetricsTests(SynchronousTestCase):
    """
    With workers, C{/metrics} holds the totals over every worker, and
    C{rproxy_worker_*} families per worker.
    """

    def test_totalsAndPerWorker(self) -> None:
        """
        The totals add up this worker's requests and its sibling's last
        written ones (not its connections: it did not answer); per worker,
        each one's requests, whether it answered, its starts and the age of
        its figures.
        """
        proxy = metricsProxy()
        asWorker(self, proxy)
        for target in (b"/a", b"/b"):
            proxy.roundTrip(_GET % (target,), _OK)
        samples = scrape(proxy)
        labels = {"route": "/", "pool": "app", "status": "2xx"}
        self.assertEqual(sample(samples, "rproxy_requests_total", **labels), 5.0)
        self.assertEqual(
            sample(samples, "rproxy_worker_requests_total", worker="0", **labels), 2.0
        )
        self.assertEqual(
            sample(samples, "rproxy_worker_requests_total", worker="1", **labels), 3.0
        )
        self.assertEqual(sample(samples, "rproxy_client_connections"), 2.0)
        self.assertEqual(
            sample(samples, "rproxy_worker_client_connections", worker="0"), 2.0
        )
        self.assertIsNone(
            sample(samples, "rproxy_worker_client_connections", worker="1")
        )
        self.assertEqual(sample(samples, "rproxy_worker_up", worker="0"), 1.0)
        self.assertEqual(sample(samples, "rproxy_worker_up", worker="1"), 0.0)
        self.assertEqual(sample(samples, "rproxy_worker_starts_total", worker="1"), 1.0)
        self.assertEqual(
            sample(samples, "rproxy_worker_snapshot_age_seconds", worker="0"), 0.0
        )
        age = sample(samples, "rproxy_worker_snapshot_age_seconds", worker="1")
        self.assertGreater(age or 0.0, 1000.0)
        # The pool's own figures are this worker's (the sibling wrote none).
        self.assertEqual(sample(samples, "rproxy_pool_requests_total", pool="app"), 2.0)

    def test_singleProcessHasNoWorkerFamilies(self) -> None:
        """
        Without workers, no C{rproxy_worker_*} family is listed.
        """
        proxy = metricsProxy()
        proxy.roundTrip(_GET % (b"/a",), _OK)
        names = {name for name, _ in scrape(proxy)}
        self.assertIn("rproxy_requests_total", names)
        self.assertEqual({n for n in names if n.startswith("rproxy_worker_")}, set())

    def test_restartedWorkerKeepsCounting(self) -> None:
        """
        A worker started again in the place of one that died counts on
        from its predecessor's last figures: the totals do not go down.
        """
        first = metricsProxy()
        totals = asWorker(self, first)
        for target in (b"/a", b"/b"):
            first.roundTrip(_GET % (target,), _OK)
        totals.start()
        # Killed: its last file stays. Its successor:
        second = metricsProxy()
        admin = second.service.admin
        assert admin is not None
        successor = WorkerTotals(
            second.reactor, second.reactor, totals.directory, 0, admin.snapshot
        )
        admin.workerTotals = successor
        successor.start()
        second.roundTrip(_GET % (b"/c",), _OK)
        samples = scrape(second)
        labels = {"route": "/", "pool": "app", "status": "2xx"}
        self.assertEqual(sample(samples, "rproxy_requests_total", **labels), 6.0)
        self.assertEqual(
            sample(samples, "rproxy_worker_requests_total", worker="0", **labels), 3.0
        )
        self.assertEqual(sample(samples, "rproxy_worker_starts_total", worker="0"), 2.0)
        self.assertEqual(sample(samples, "rproxy_pool_requests_total", pool="app"), 3.0)
