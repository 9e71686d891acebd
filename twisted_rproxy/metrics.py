"""
Prometheus metrics of a L{twisted_rproxy.service.ProxyService}, served by
the admin listener at C{/metrics}.

prometheus_client is an optional dependency (the C{metrics} extra). Two
kinds of metrics are kept:

  - per request, in L{Metrics.observe} (called once a request is done):
    requests by route, pool and status class, latency histograms, bytes
    sent, cache results. The metric children are looked up once per
    (route, status class) and kept, so a request costs a dictionary lookup
    and a few increments;
  - at scrape time, read from the state the proxy keeps anyway
    (L{BackendPool.status}, the open connections): backend requests,
    failures, health, load, retries, pending requests. These cost nothing
    per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted_rproxy.interfaces import IProxyStatus

#: What to install when prometheus_client is missing.
MISSING = (
    "metrics need prometheus_client, which is not installed: "
    "pip install 'twisted_rproxy[metrics]'"
)

#: Latency buckets, in seconds: a proxy's requests span 1 ms to minutes.
BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def available() -> bool:
    """
    Whether prometheus_client can be imported.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class Metrics:
    """
    The metrics of one service, in a registry of their own.

    @ivar registry: The C{prometheus_client.CollectorRegistry}.
    """

    def __init__(self, service: IProxyStatus) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.service = service
        self._seconds = service.reactor.seconds
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "rproxy_requests",
            "Client requests answered, by route, pool and status class.",
            ["route", "pool", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "rproxy_request_duration_seconds",
            "Time from a request's head to the end of its response.",
            ["route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._upstream = Histogram(
            "rproxy_upstream_duration_seconds",
            "Time from handing a request to a pool to the backend's response "
            "head (queueing included).",
            ["pool"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self._sent = Counter(
            "rproxy_response_bytes",
            "Response body bytes sent to clients, by route.",
            ["route"],
            registry=self.registry,
        )
        self._cache = Counter(
            "rproxy_cache_requests",
            "Cache lookups by route and result (hit, miss, ...), for routes "
            "with a cache.",
            ["route", "result"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(service))
        self._children: dict[tuple[str, int], tuple[Any, Any, Any, Any]] = {}

    def observe(self, request: Any) -> None:
        """
        Count a finished request (the site's request observer).
        """
        route = request.route
        label = getattr(route, "label", "none")
        code = request.code
        key = (label, code)
        children = self._children.get(key)
        if children is None:
            children = self._childrenFor(route, label, code)
        count, duration, sent, upstream = children
        count.inc()
        started = request.startedAt
        if started:
            duration.observe(self._seconds() - started)
        sent.inc(request.sentLength)
        upstreamTime = request.upstreamTime
        if upstreamTime is not None and upstream is not None:
            upstream.observe(upstreamTime)
        cacheStatus = getattr(request, "cacheStatus", None)
        if cacheStatus is not None:
            self._cache.labels(label, cacheStatus).inc()

    def _childrenFor(
        self, route: Any, label: str, code: int
    ) -> tuple[Any, Any, Any, Any]:
        pool = getattr(route, "pool", None)
        statusClass = _CLASSES[code // 100] if 0 <= code < 600 else "0xx"
        children = (
            self._requests.labels(label, pool or "", statusClass),
            self._duration.labels(label),
            self._sent.labels(label),
            self._upstream.labels(pool) if pool else None,
        )
        self._children[(label, code)] = children
        return children

    def render(self) -> bytes:
        """
        The metrics in Prometheus' text format.
        """
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


class _StateCollector:
    """
    Metrics read from the proxy's state when scraped.
    """

    def __init__(self, service: IProxyStatus) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        service = self.service
        connections = GaugeMetricFamily(
            "rproxy_client_connections", "Open client connections."
        )
        connections.add_metric([], len(service.site.connections))
        yield connections
        pools = [pool.status() for pool in service.pools.values()]
        poolRequests = CounterMetricFamily(
            "rproxy_pool_requests", "Requests submitted to a pool.", labels=["pool"]
        )
        retries = CounterMetricFamily(
            "rproxy_pool_retries",
            "Requests retried on another server.",
            labels=["pool"],
        )
        refused = CounterMetricFamily(
            "rproxy_pool_retries_refused",
            "Retries the retry budget refused.",
            labels=["pool"],
        )
        pending = GaugeMetricFamily(
            "rproxy_pool_pending", "Requests waiting for a connection.", labels=["pool"]
        )
        panic = GaugeMetricFamily(
            "rproxy_pool_panic", "1 when a pool is in panic mode.", labels=["pool"]
        )
        serverRequests = CounterMetricFamily(
            "rproxy_backend_requests",
            "Requests started on a backend server (retries included).",
            labels=["pool", "server"],
        )
        failures = CounterMetricFamily(
            "rproxy_backend_failures",
            "Requests that failed on a backend server.",
            labels=["pool", "server"],
        )
        healthy = GaugeMetricFamily(
            "rproxy_backend_up",
            "1 when a backend server is healthy (not down, not ejected).",
            labels=["pool", "server", "state"],
        )
        inFlight = GaugeMetricFamily(
            "rproxy_backend_in_flight",
            "Requests in progress on a backend server.",
            labels=["pool", "server"],
        )
        idle = GaugeMetricFamily(
            "rproxy_backend_idle_connections",
            "Kept-alive connections waiting for a request.",
            labels=["pool", "server"],
        )
        for status in pools:
            name = status.name
            poolRequests.add_metric([name], status.requests)
            retries.add_metric([name], status.retries)
            refused.add_metric([name], status.retriesRefused)
            pending.add_metric([name], status.pending)
            panic.add_metric([name], 1 if status.panic else 0)
            for server in status.servers:
                labels = [name, server.url]
                serverRequests.add_metric(labels, server.requests)
                failures.add_metric(labels, server.failures)
                healthy.add_metric(
                    labels + [server.state], 1 if server.state == "healthy" else 0
                )
                inFlight.add_metric(labels, server.inFlight)
                idle.add_metric(labels, server.idleConnections)
        yield from (
            poolRequests,
            retries,
            refused,
            pending,
            panic,
            serverRequests,
            failures,
            healthy,
            inFlight,
            idle,
        )
