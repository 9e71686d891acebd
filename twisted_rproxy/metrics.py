"""
Prometheus metrics of a running proxy, served by the admin listener at
C{/metrics}.

prometheus_client is an optional dependency (the C{metrics} extra): it
formats the text here, and nothing else. The figures are counted and
merged in L{twisted_rproxy.totals}, the same with prometheus_client or
without it:

  - per request, in memory (L{twisted_rproxy.totals.RequestCounts}):
    requests by route, pool and status class, latency histograms, bytes
    sent, cache results;
  - at scrape time, read from the state the proxy keeps anyway
    (L{BackendPool.status}, the open connections): backend requests,
    failures, health, load, retries, pending requests.

With worker processes, each family holds the totals over every worker
(the same names and labels as a single process has), and families named
C{rproxy_worker_*} hold figures per worker, labelled C{worker}: a sum
over a family never counts a request twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from twisted_rproxy.totals import (
    BUCKETS,
    COUNTER,
    FAMILIES,
    HISTOGRAM,
    Snapshot,
    WorkerSnapshot,
)

__all__ = ["BUCKETS", "MISSING", "Metrics", "available"]

#: What to install when prometheus_client is missing.
MISSING = (
    "metrics need prometheus_client, which is not installed: "
    "pip install 'twisted_rproxy[metrics]'"
)


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
    Formats merged counts in Prometheus' text format.
    """

    def render(
        self,
        totals: Snapshot,
        workers: Sequence[WorkerSnapshot] | None = None,
        now: float = 0.0,
        certificates: Sequence[Mapping[str, Any]] = (),
        acme: Sequence[Mapping[str, Any]] = (),
    ) -> bytes:
        """
        The metrics in Prometheus' text format.

        @param totals: The counts of every family (merged over workers).
        @param workers: Each worker's snapshot, for the C{rproxy_worker_*}
            families; L{None} for a proxy without workers (no such family).
        @param now: The wall-clock time now, for the snapshots' age.
        @param certificates: The certificates served, as
            L{twisted_rproxy.adminapi.certificatesInfo} gives them, for the
            C{rproxy_tls_*} families.
        @param acme: The certificates obtained from an ACME CA, as
            L{twisted_rproxy.adminapi.acmeInfo} gives them, for the
            C{rproxy_acme_*} families.
        """
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(totals, workers, now))
        registry.register(_CertificateCollector(certificates))
        registry.register(_ACMECollector(acme))
        return bytes(generate_latest(registry))


class _Collector:
    def __init__(
        self,
        totals: Snapshot,
        workers: Sequence[WorkerSnapshot] | None,
        now: float,
    ) -> None:
        self.totals = totals
        self.workers = workers
        self.now = now

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
        from prometheus_client.samples import Sample

        for name, family in FAMILIES.items():
            values = self.totals.get(name, {})
            labels = list(family.labels)
            metric: Any
            if family.kind == COUNTER:
                metric = CounterMetricFamily(name, family.help, labels=labels)
                for key, (count, created) in values.items():
                    metric.add_metric(list(key), count, created=created or None)
            elif family.kind == HISTOGRAM:
                metric = HistogramMetricFamily(name, family.help, labels=labels)
                for key, value in values.items():
                    cumulative, buckets = 0.0, []
                    for bound, count in zip(
                        [*(repr(float(b)) for b in BUCKETS), "+Inf"],
                        value[: len(BUCKETS) + 1],
                        strict=True,
                    ):
                        cumulative += count
                        buckets.append((bound, cumulative))
                    metric.add_metric(list(key), buckets, value[-2])
                    if value[-1]:
                        metric.samples.append(
                            Sample(
                                name + "_created",
                                dict(zip(labels, key, strict=True)),
                                value[-1],
                            )
                        )
            else:
                metric = GaugeMetricFamily(name, family.help, labels=labels)
                for key, (level,) in values.items():
                    metric.add_metric(list(key), level)
            yield metric
        if self.workers is not None:
            yield from self._perWorker(self.workers)

    def _perWorker(self, workers: Sequence[WorkerSnapshot]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        requests = CounterMetricFamily(
            "rproxy_worker_requests",
            "Client requests answered by each worker, by route, pool and "
            "status class.",
            labels=["worker", "route", "pool", "status"],
        )
        connections = GaugeMetricFamily(
            "rproxy_worker_client_connections",
            "Open client connections of each worker.",
            labels=["worker"],
        )
        up = GaugeMetricFamily(
            "rproxy_worker_up",
            "1 when the worker answered this scrape, 0 when its figures are "
            "the last it wrote (it is restarting or stuck).",
            labels=["worker"],
        )
        starts = CounterMetricFamily(
            "rproxy_worker_starts",
            "Processes started for each worker (1, then one more at each "
            "restart).",
            labels=["worker"],
        )
        age = GaugeMetricFamily(
            "rproxy_worker_snapshot_age_seconds",
            "Age of the figures of each worker (0 when it answered).",
            labels=["worker"],
        )
        for snapshot in workers:
            worker = str(snapshot.worker)
            for key, (count, created) in snapshot.counts.get(
                "rproxy_requests", {}
            ).items():
                requests.add_metric([worker, *key], count, created=created or None)
            if snapshot.live:
                value = snapshot.counts.get("rproxy_client_connections", {})
                connections.add_metric([worker], value.get((), [0])[0])
            up.add_metric([worker], 1 if snapshot.live else 0)
            starts.add_metric([worker], snapshot.starts)
            age.add_metric(
                [worker], 0 if snapshot.live else max(self.now - snapshot.time, 0)
            )
        yield from (requests, connections, up, starts, age)


class _CertificateCollector:
    """
    The C{rproxy_tls_*} families: each certificate's expiry, and its OCSP
    stapling state (for those that name a responder).
    """

    def __init__(self, certificates: Sequence[Mapping[str, Any]]) -> None:
        self.certificates = certificates

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        expiry = GaugeMetricFamily(
            "rproxy_tls_certificate_expiry_timestamp_seconds",
            "When each certificate served expires (notAfter, Unix time).",
            labels=["certificate", "names"],
        )
        stapled = GaugeMetricFamily(
            "rproxy_tls_ocsp_stapled",
            "1 when an OCSP response is stapled for the certificate, else 0.",
            labels=["certificate"],
        )
        until = GaugeMetricFamily(
            "rproxy_tls_ocsp_response_expiry_timestamp_seconds",
            "When the stapled OCSP response expires (its nextUpdate, Unix time).",
            labels=["certificate"],
        )
        failures = GaugeMetricFamily(
            "rproxy_tls_ocsp_consecutive_failures",
            "Failed OCSP fetches since the last good one.",
            labels=["certificate"],
        )
        errors = CounterMetricFamily(
            "rproxy_tls_ocsp_fetch_errors",
            "Failed OCSP fetches since the start.",
            labels=["certificate"],
        )
        for certificate in self.certificates:
            path = str(certificate["certificate"])
            expiry.add_metric(
                [path, ",".join(certificate["names"])],
                certificate["not_after_timestamp"],
            )
            ocsp = certificate["ocsp"]
            if "responder" not in ocsp:
                continue
            stapled.add_metric([path], 1 if ocsp["state"] == "stapled" else 0)
            if ocsp["stapled_until_timestamp"] is not None:
                until.add_metric([path], ocsp["stapled_until_timestamp"])
            failures.add_metric([path], ocsp["failures"])
            errors.add_metric([path], ocsp["errors"])
        yield from (expiry, stapled, until, failures, errors)


class _ACMECollector:
    """
    The C{rproxy_acme_*} families: each automatic certificate's expiry and
    its last renewal attempt.
    """

    def __init__(self, certificates: Sequence[Mapping[str, Any]]) -> None:
        self.certificates = certificates

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        expiry = GaugeMetricFamily(
            "rproxy_acme_certificate_expiry_timestamp_seconds",
            "When the certificate obtained from the ACME CA expires (Unix time).",
            labels=["certificate"],
        )
        attempt = GaugeMetricFamily(
            "rproxy_acme_last_renewal_attempt_timestamp_seconds",
            "When this process last ordered the certificate (Unix time).",
            labels=["certificate"],
        )
        success = GaugeMetricFamily(
            "rproxy_acme_last_renewal_success",
            "1 when the last order of the certificate succeeded, 0 when it failed.",
            labels=["certificate"],
        )
        failures = GaugeMetricFamily(
            "rproxy_acme_consecutive_failures",
            "Orders of the certificate that failed in a row.",
            labels=["certificate"],
        )
        for certificate in self.certificates:
            name = [str(certificate["name"])]
            if certificate["not_after"] is not None:
                expiry.add_metric(name, certificate["not_after"])
            if certificate["last_attempt"] is not None:
                attempt.add_metric(name, certificate["last_attempt"])
                success.add_metric(name, 0 if certificate["last_error"] else 1)
            failures.add_metric(name, certificate["failures"])
        yield from (expiry, attempt, success, failures)
