"""
The figures of C{/metrics} and the admin page as data that adds up over
worker processes.

Each process counts its finished requests in memory (L{RequestCounts}: a
dictionary lookup and a few additions per request, no I/O) and reads the
rest of its figures from its state when asked (L{stateCounts}). A
L{Snapshot} of them is plain data: metric family, then label values, then
numbers. Snapshots of several workers merge (L{mergeSnapshots}): counters
and histograms add up, gauges add up or take the largest, as each family
says (L{FAMILIES}).

Why snapshots summed by whoever serves the page, and not
prometheus_client's multiprocess mode: the admin page must show totals
without prometheus_client (an optional dependency), the multiprocess mode
writes every increment to a memory-mapped file of its own and chooses its
storage once per process from the environment (so the single-process
proxy and embedders would pay for it too), its gauges need a mode each,
and it cannot name a worker (only a pid, which changes at each restart).
Here prometheus_client only formats the text (L{twisted_rproxy.metrics}),
the counting is the same with it or without it, and how the snapshots
travel between processes is left to L{twisted_rproxy.peers}.

A worker that restarts starts from the counters and histograms its
predecessor last published (L{carried}), so that totals never go down;
gauges (open connections, requests in flight) are not carried: a dead
worker has none.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from attrs import field, frozen

from twisted_rproxy.interfaces import IProxyStatus

#: A sample's label values, in its family's label order.
Labels = tuple[str, ...]

#: The samples of one family by label values. A counter's value is
#: C{[count, created]} (created: the wall-clock time it was first counted,
#: 0 if unknown), a gauge's C{[value]}, a histogram's C{[b0, ..., bn, sum,
#: created]} with one count per bucket of L{BUCKETS} and one for C{+Inf}
#: (not cumulative).
Values = dict[Labels, list[float]]

#: Every family's samples, by family name.
Snapshot = dict[str, Values]

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

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"

#: How gauges of several workers merge: added up, or the largest taken.
SUM = "sum"
MAX = "max"

_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")

#: How many numbers a sample of each kind has (see L{Values}).
_LENGTHS = {COUNTER: 2, GAUGE: 1, HISTOGRAM: len(BUCKETS) + 3}


@frozen
class Family:
    """
    One metric family: what its samples mean and how they merge.

    @ivar name: The name, without C{_total} for a counter.
    @ivar kind: L{COUNTER}, L{GAUGE} or L{HISTOGRAM}.
    @ivar labels: The label names.
    @ivar merge: For a gauge, L{SUM} or L{MAX} over workers.
    """

    name: str
    help: str
    kind: str
    labels: Labels = ()
    merge: str = SUM


#: Every family, in the order C{/metrics} lists them.
FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "rproxy_requests",
            "Client requests answered, by route, pool and status class.",
            COUNTER,
            ("route", "pool", "status"),
        ),
        Family(
            "rproxy_request_duration_seconds",
            "Time from a request's head to the end of its response.",
            HISTOGRAM,
            ("route",),
        ),
        Family(
            "rproxy_upstream_duration_seconds",
            "Time from handing a request to a pool to the backend's response "
            "head (queueing included).",
            HISTOGRAM,
            ("pool",),
        ),
        Family(
            "rproxy_response_bytes",
            "Response body bytes sent to clients, by route.",
            COUNTER,
            ("route",),
        ),
        Family(
            "rproxy_cache_requests",
            "Cache lookups by route and result (hit, miss, ...), for routes "
            "with a cache.",
            COUNTER,
            ("route", "result"),
        ),
        Family("rproxy_client_connections", "Open client connections.", GAUGE),
        Family(
            "rproxy_pool_requests", "Requests submitted to a pool.", COUNTER, ("pool",)
        ),
        Family(
            "rproxy_pool_retries",
            "Requests retried on another server.",
            COUNTER,
            ("pool",),
        ),
        Family(
            "rproxy_pool_retries_refused",
            "Retries the retry budget refused.",
            COUNTER,
            ("pool",),
        ),
        Family(
            "rproxy_pool_pending",
            "Requests waiting for a connection.",
            GAUGE,
            ("pool",),
        ),
        Family(
            "rproxy_pool_panic",
            "1 when a pool is in panic mode.",
            GAUGE,
            ("pool",),
            MAX,
        ),
        Family(
            "rproxy_backend_requests",
            "Requests started on a backend server (retries included).",
            COUNTER,
            ("pool", "server"),
        ),
        Family(
            "rproxy_backend_failures",
            "Requests that failed on a backend server.",
            COUNTER,
            ("pool", "server"),
        ),
        Family(
            "rproxy_backend_up",
            "1 when a backend server is healthy (not down, not ejected).",
            GAUGE,
            ("pool", "server", "state"),
            MAX,
        ),
        Family(
            "rproxy_backend_in_flight",
            "Requests in progress on a backend server.",
            GAUGE,
            ("pool", "server"),
        ),
        Family(
            "rproxy_backend_idle_connections",
            "Kept-alive connections waiting for a request.",
            GAUGE,
            ("pool", "server"),
        ),
    )
}

#: The families L{RequestCounts} keeps; the others are read from the state.
REQUEST_FAMILIES = (
    "rproxy_requests",
    "rproxy_request_duration_seconds",
    "rproxy_upstream_duration_seconds",
    "rproxy_response_bytes",
    "rproxy_cache_requests",
)


def statusClass(code: int) -> str:
    """
    The status class label of C{code}: C{"2xx"} for 204, C{"0xx"} for
    anything out of range.
    """
    return _CLASSES[code // 100] if 0 <= code < 600 else "0xx"


def _histogram(created: float) -> list[float]:
    return [0.0] * (len(BUCKETS) + 2) + [created]


class RequestCounts:
    """
    The per-request counters and histograms of one process, in memory.

    The cells of a (route, status) pair are looked up once and kept, so
    counting a request costs a dictionary lookup and a few additions.
    """

    def __init__(
        self, seconds: Callable[[], float], wallClock: Callable[[], float]
    ) -> None:
        """
        @param seconds: The reactor's clock, which requests' C{startedAt}
            is read on.
        @param wallClock: The time a series is first counted at (its
            C{_created}), such as L{time.time}.
        """
        self._seconds = seconds
        self._wallClock = wallClock
        self._values: Snapshot = {name: {} for name in REQUEST_FAMILIES}
        self._cells: dict[
            tuple[str, int],
            tuple[list[float], list[float], list[float], list[float] | None],
        ] = {}

    def _cell(
        self, family: str, labels: Labels, histogram: bool = False
    ) -> list[float]:
        values = self._values[family]
        cell = values.get(labels)
        if cell is None:
            created = self._wallClock()
            cell = values[labels] = _histogram(created) if histogram else [0, created]
        return cell

    def _cellsFor(
        self, route: Any, label: str, code: int
    ) -> tuple[list[float], list[float], list[float], list[float] | None]:
        pool = getattr(route, "pool", None)
        cells = (
            self._cell("rproxy_requests", (label, pool or "", statusClass(code))),
            self._cell("rproxy_request_duration_seconds", (label,), True),
            self._cell("rproxy_response_bytes", (label,)),
            self._cell("rproxy_upstream_duration_seconds", (pool,), True)
            if pool
            else None,
        )
        self._cells[(label, code)] = cells
        return cells

    def observe(self, request: Any) -> None:
        """
        Count a finished request (an L{IProxyRequest}, as the site's request
        observer is given).
        """
        route = request.route
        label = getattr(route, "label", "none")
        code = request.code
        cells = self._cells.get((label, code))
        if cells is None:
            cells = self._cellsFor(route, label, code)
        count, duration, sent, upstream = cells
        count[0] += 1
        started = request.startedAt
        if started:
            elapsed = self._seconds() - started
            duration[bisect_left(BUCKETS, elapsed)] += 1
            duration[-2] += elapsed
        sent[0] += request.sentLength
        upstreamTime = request.upstreamTime
        if upstreamTime is not None and upstream is not None:
            upstream[bisect_left(BUCKETS, upstreamTime)] += 1
            upstream[-2] += upstreamTime
        cacheStatus = getattr(request, "cacheStatus", None)
        if cacheStatus is not None:
            self._cell("rproxy_cache_requests", (label, cacheStatus))[0] += 1

    def snapshot(self) -> Snapshot:
        """
        A copy of the counts now.
        """
        return {
            name: {labels: list(cell) for labels, cell in values.items()}
            for name, values in self._values.items()
        }


def stateCounts(service: IProxyStatus) -> Snapshot:
    """
    The figures read from a running proxy's state: its client connections,
    and its pools' and their servers' counters and gauges.
    """
    snapshot: Snapshot = {
        name: {} for name, family in FAMILIES.items() if name not in REQUEST_FAMILIES
    }
    snapshot["rproxy_client_connections"][()] = [len(service.site.connections)]
    for pool in service.pools.values():
        status = pool.status()
        name = (status.name,)
        snapshot["rproxy_pool_requests"][name] = [status.requests, 0]
        snapshot["rproxy_pool_retries"][name] = [status.retries, 0]
        snapshot["rproxy_pool_retries_refused"][name] = [status.retriesRefused, 0]
        snapshot["rproxy_pool_pending"][name] = [status.pending]
        snapshot["rproxy_pool_panic"][name] = [1 if status.panic else 0]
        for server in status.servers:
            labels = (status.name, server.url)
            healthy = 1 if server.state == "healthy" else 0
            snapshot["rproxy_backend_requests"][labels] = [server.requests, 0]
            snapshot["rproxy_backend_failures"][labels] = [server.failures, 0]
            snapshot["rproxy_backend_up"][labels + (server.state,)] = [healthy]
            snapshot["rproxy_backend_in_flight"][labels] = [server.inFlight]
            snapshot["rproxy_backend_idle_connections"][labels] = [
                server.idleConnections
            ]
    return snapshot


def _created(a: float, b: float) -> float:
    # 0 is "unknown": the earliest known time.
    if not a or not b:
        return a or b
    return min(a, b)


def _combine(family: Family, a: list[float], b: list[float]) -> list[float]:
    if len(a) != len(b):
        raise ValueError(f"{family.name}: samples of different shapes")
    if family.kind == GAUGE:
        return [max(a[0], b[0]) if family.merge == MAX else a[0] + b[0]]
    summed = [x + y for x, y in zip(a[:-1], b[:-1], strict=True)]
    return summed + [_created(a[-1], b[-1])]


def mergeSnapshots(snapshots: Iterable[Snapshot]) -> Snapshot:
    """
    The totals of C{snapshots}: every family of L{FAMILIES}, with the
    samples of every snapshot merged as the family says. Families not in
    L{FAMILIES} are left out.
    """
    merged: Snapshot = {name: {} for name in FAMILIES}
    for snapshot in snapshots:
        for name, values in snapshot.items():
            family = FAMILIES.get(name)
            if family is None:
                continue
            target = merged[name]
            for labels, value in values.items():
                current = target.get(labels)
                target[labels] = (
                    list(value) if current is None else _combine(family, current, value)
                )
    return merged


def carried(snapshot: Snapshot) -> Snapshot:
    """
    What a restarted worker starts from: the counters and histograms of
    its predecessor's last C{snapshot}, without its gauges.
    """
    return {
        name: {labels: list(value) for labels, value in values.items()}
        for name, values in snapshot.items()
        if name in FAMILIES and FAMILIES[name].kind != GAUGE
    }


@frozen
class WorkerSnapshot:
    """
    What one process published of itself.

    @ivar worker: Its index (L{None} for a proxy without workers).
    @ivar pid: Its process ID.
    @ivar starts: How many times a process had this index (1, then one
        more at each restart).
    @ivar time: The wall-clock time the counts are of.
    @ivar live: Whether the counts are the process's own now (else it did
        not answer, and these are the last it wrote).
    @ivar counts: Its L{Snapshot}, with what it carried from its
        predecessors.
    """

    worker: int | None
    pid: int
    starts: int
    time: float
    counts: Snapshot = field(repr=False)
    live: bool = True


def encodeSnapshot(snapshot: WorkerSnapshot) -> bytes:
    """
    C{snapshot} as JSON, for L{decodeSnapshot} in another process.
    """
    return json.dumps(
        {
            "worker": snapshot.worker,
            "pid": snapshot.pid,
            "starts": snapshot.starts,
            "time": snapshot.time,
            "counts": {
                name: [[list(labels), value] for labels, value in values.items()]
                for name, values in snapshot.counts.items()
            },
        },
        separators=(",", ":"),
    ).encode()


def decodeSnapshot(data: bytes, live: bool = True) -> WorkerSnapshot:
    """
    The L{WorkerSnapshot} L{encodeSnapshot} made.

    @raise ValueError: If C{data} is not one (truncated, or of another
        layout); samples of unknown families are dropped.
    """
    try:
        raw = json.loads(data)
        counts: Snapshot = {}
        for name, samples in raw["counts"].items():
            family = FAMILIES.get(name)
            if family is None:
                continue
            values: Values = {}
            for labels, value in samples:
                if len(labels) != len(family.labels) or not all(
                    isinstance(label, str) for label in labels
                ):
                    raise ValueError(f"{name}: bad labels {labels!r}")
                if len(value) != _LENGTHS[family.kind] or not all(
                    isinstance(v, int | float) for v in value
                ):
                    raise ValueError(f"{name}: bad value {value!r}")
                values[tuple(labels)] = [float(v) for v in value]
            counts[name] = values
        worker = raw["worker"]
        return WorkerSnapshot(
            worker=None if worker is None else int(worker),
            pid=int(raw["pid"]),
            starts=int(raw["starts"]),
            time=float(raw["time"]),
            counts=counts,
            live=live,
        )
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a worker snapshot: {e!r}") from None


def mergeWorkers(snapshots: Iterable[WorkerSnapshot]) -> Snapshot:
    """
    The totals over workers: everything of those that answered, the
    counters and histograms only of those that did not (a dead worker has
    no connections).
    """
    return mergeSnapshots(s.counts if s.live else carried(s.counts) for s in snapshots)


def summary(counts: Snapshot) -> dict[str, object]:
    """
    The headline figures of C{counts}, for the admin page: requests (in
    all, by status class and by route), response bytes, cache results,
    open connections, requests in flight to backends.
    """
    requests = counts.get("rproxy_requests", {})
    byClass: dict[str, int] = {}
    byRoute: dict[str, int] = {}
    for (route, _, status), (count, _) in requests.items():
        byClass[status] = byClass.get(status, 0) + int(count)
        byRoute[route] = byRoute.get(route, 0) + int(count)
    cache: dict[str, int] = {}
    for (_, result), (count, _) in counts.get("rproxy_cache_requests", {}).items():
        cache[result] = cache.get(result, 0) + int(count)
    connections = counts.get("rproxy_client_connections", {}).get((), [0])[0]
    inFlight = sum(v[0] for v in counts.get("rproxy_backend_in_flight", {}).values())
    return {
        "requests": sum(byClass.values()),
        "statuses": dict(sorted(byClass.items())),
        "routes": dict(sorted(byRoute.items())),
        "bytes_sent": int(
            sum(v[0] for v in counts.get("rproxy_response_bytes", {}).values())
        ),
        "cache": dict(sorted(cache.items())),
        "connections": int(connections),
        "in_flight": int(inFlight),
    }
