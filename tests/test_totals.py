"""
Tests for L{twisted_rproxy.totals} (counting and merging, pure) and
L{twisted_rproxy.peers} (publishing and gathering worker counts, on a
memory reactor and temporary directories; the socket tests on the real
reactor and a UNIX socket in a short temporary directory).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

from attrs import define
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.fixtures import asyncTest
from twisted_rproxy.peers import WorkerTotals, snapshotPath, socketPath
from twisted_rproxy.totals import (
    BUCKETS,
    FAMILIES,
    RequestCounts,
    Snapshot,
    WorkerSnapshot,
    carried,
    decodeSnapshot,
    encodeSnapshot,
    mergeSnapshots,
    mergeWorkers,
    summary,
)


@define
class _Route:
    label: str = "/"
    pool: str | None = "app"


@define
class _Request:
    code: int = 200
    route: Any = _Route()
    startedAt: float = 100.0
    sentLength: int = 5
    upstreamTime: float | None = 0.01
    cacheStatus: str | None = None


def counted(*requests: _Request, now: float = 100.3) -> RequestCounts:
    """
    L{RequestCounts} (on a clock at C{now}, created at wall time 1000)
    after C{requests}.
    """
    counts = RequestCounts(lambda: now, lambda: 1000.0)
    for request in requests:
        counts.observe(request)
    return counts


class RequestCountsTests(SynchronousTestCase):
    """
    L{RequestCounts} counts requests by route, pool and status class, their
    durations, bytes and cache results.
    """

    def test_countsByRouteAndClass(self) -> None:
        """
        Requests are counted by (route, pool, status class); a status out
        of range is class C{0xx}; a route without pool has pool C{""}.
        """
        snapshot = counted(
            _Request(),
            _Request(code=204),
            _Request(code=503),
            _Request(code=999),
            _Request(route=_Route("/s", None)),
        ).snapshot()
        self.assertEqual(
            {k: v[0] for k, v in snapshot["rproxy_requests"].items()},
            {
                ("/", "app", "2xx"): 2,
                ("/", "app", "5xx"): 1,
                ("/", "app", "0xx"): 1,
                ("/s", "", "2xx"): 1,
            },
        )
        self.assertEqual(snapshot["rproxy_requests"][("/s", "", "2xx")][1], 1000.0)
        self.assertEqual(snapshot["rproxy_response_bytes"][("/",)][0], 20)
        self.assertNotIn((None,), snapshot["rproxy_upstream_duration_seconds"])

    def test_histogramBuckets(self) -> None:
        """
        A duration goes to the first bucket whose bound it does not exceed
        (a bound is inclusive), past the last one to C{+Inf}; the sum adds
        up; a request never started (C{startedAt} 0) is not timed.
        """
        snapshot = counted(
            _Request(startedAt=100.25),  # 0.25 s: the 0.25 bucket
            _Request(startedAt=100.0, upstreamTime=61.0),  # 0.5 s
            _Request(startedAt=0),
            now=100.5,
        ).snapshot()
        duration = snapshot["rproxy_request_duration_seconds"][("/",)]
        self.assertEqual(len(duration), len(BUCKETS) + 3)
        self.assertEqual(duration[BUCKETS.index(0.25)], 1)
        self.assertEqual(duration[BUCKETS.index(0.5)], 1)
        self.assertEqual(sum(duration[: len(BUCKETS) + 1]), 2)
        self.assertEqual(duration[-2], 0.75)
        upstream = snapshot["rproxy_upstream_duration_seconds"][("app",)]
        self.assertEqual(upstream[len(BUCKETS)], 1)  # +Inf
        self.assertEqual(upstream[BUCKETS.index(0.01)], 2)

    def test_cacheResults(self) -> None:
        """
        Cache lookups are counted by route and result.
        """
        snapshot = counted(
            _Request(cacheStatus="hit"),
            _Request(cacheStatus="hit"),
            _Request(cacheStatus="miss"),
            _Request(),
        ).snapshot()
        self.assertEqual(
            {k: v[0] for k, v in snapshot["rproxy_cache_requests"].items()},
            {("/", "hit"): 2, ("/", "miss"): 1},
        )

    def test_snapshotIsACopy(self) -> None:
        """
        A snapshot does not change as requests go on being counted.
        """
        counts = counted(_Request())
        snapshot = counts.snapshot()
        counts.observe(_Request())
        self.assertEqual(snapshot["rproxy_requests"][("/", "app", "2xx")][0], 1)
        self.assertEqual(
            counts.snapshot()["rproxy_requests"][("/", "app", "2xx")][0], 2
        )


def _snapshot(requests: int, connections: int, panic: int, created: float) -> Snapshot:
    return {
        "rproxy_requests": {("/", "app", "2xx"): [requests, created]},
        "rproxy_client_connections": {(): [connections]},
        "rproxy_pool_panic": {("app",): [panic]},
    }


class MergeTests(SynchronousTestCase):
    """
    Snapshots of several workers merge as each family says.
    """

    def test_mergeSnapshots(self) -> None:
        """
        Counters add up (created: the earliest known), summed gauges add up,
        a C{max} gauge takes the largest; families unknown are dropped,
        every known one is there.
        """
        merged = mergeSnapshots(
            [
                _snapshot(3, 2, 0, 50.0),
                _snapshot(4, 5, 1, 40.0),
                {**_snapshot(1, 1, 0, 0.0), "other": {(): [1]}},
            ]
        )
        self.assertEqual(merged["rproxy_requests"], {("/", "app", "2xx"): [8, 40.0]})
        self.assertEqual(merged["rproxy_client_connections"], {(): [8]})
        self.assertEqual(merged["rproxy_pool_panic"], {("app",): [1]})
        self.assertEqual(set(merged), set(FAMILIES))

    def test_histogramsAddUp(self) -> None:
        """
        Histograms add up bucket by bucket, and their sums.
        """
        a = counted(_Request(startedAt=100.25)).snapshot()
        b = counted(_Request(startedAt=95.0), _Request(startedAt=100.25)).snapshot()
        merged = mergeSnapshots([a, b])["rproxy_request_duration_seconds"][("/",)]
        self.assertEqual(merged[BUCKETS.index(0.05)], 2)
        self.assertEqual(merged[BUCKETS.index(10.0)], 1)
        self.assertAlmostEqual(merged[-2], 5.4)
        self.assertEqual(merged[-1], 1000.0)

    def test_differentShapesRefused(self) -> None:
        """
        Samples of one family in different shapes are an error, not a
        silent mix.
        """
        with self.assertRaises(ValueError):
            mergeSnapshots(
                [
                    {"rproxy_requests": {("/", "", "2xx"): [1, 0]}},
                    {"rproxy_requests": {("/", "", "2xx"): [1, 0, 0]}},
                ]
            )

    def test_carriedKeepsCountersOnly(self) -> None:
        """
        What a restarted worker carries: counters and histograms, no gauge.
        """
        snapshot = {**counted(_Request()).snapshot(), **_snapshot(3, 2, 1, 9.0)}
        carry = carried(snapshot)
        self.assertEqual(carry["rproxy_requests"], {("/", "app", "2xx"): [3, 9.0]})
        self.assertIn("rproxy_request_duration_seconds", carry)
        self.assertNotIn("rproxy_client_connections", carry)
        self.assertNotIn("rproxy_pool_panic", carry)

    def test_mergeWorkersLeavesOutGaugesOfTheDead(self) -> None:
        """
        A worker that did not answer keeps its counters in the totals, not
        its connections.
        """
        live = WorkerSnapshot(0, 10, 1, 5.0, _snapshot(3, 2, 0, 1.0))
        dead = WorkerSnapshot(1, 11, 1, 4.0, _snapshot(4, 7, 1, 1.0), live=False)
        merged = mergeWorkers([live, dead])
        self.assertEqual(merged["rproxy_requests"][("/", "app", "2xx")][0], 7)
        self.assertEqual(merged["rproxy_client_connections"], {(): [2]})
        self.assertEqual(merged["rproxy_pool_panic"], {("app",): [0]})

    def test_summary(self) -> None:
        """
        The page's headline figures: requests in all, by class and route,
        bytes, cache results, connections, requests in flight.
        """
        counts = {
            **counted(
                _Request(cacheStatus="hit"),
                _Request(code=404, route=_Route("/a")),
            ).snapshot(),
            "rproxy_client_connections": {(): [3]},
            "rproxy_backend_in_flight": {("app", "s1"): [2], ("app", "s2"): [1]},
        }
        self.assertEqual(
            summary(counts),
            {
                "requests": 2,
                "statuses": {"2xx": 1, "4xx": 1},
                "routes": {"/": 1, "/a": 1},
                "bytes_sent": 10,
                "cache": {"hit": 1},
                "connections": 3,
                "in_flight": 3,
            },
        )


class EncodingTests(SynchronousTestCase):
    """
    A worker snapshot crosses processes as JSON.
    """

    def test_roundTrip(self) -> None:
        """
        What is encoded decodes to the same snapshot.
        """
        snapshot = WorkerSnapshot(
            worker=1,
            pid=42,
            starts=3,
            time=12.5,
            counts={**counted(_Request()).snapshot(), **_snapshot(1, 2, 0, 3.0)},
        )
        decoded = decodeSnapshot(encodeSnapshot(snapshot))
        self.assertEqual(decoded, snapshot)
        self.assertFalse(decodeSnapshot(encodeSnapshot(snapshot), live=False).live)

    def test_unknownFamilyDropped(self) -> None:
        """
        A family this version does not know is dropped.
        """
        data = json.dumps(
            {"worker": 0, "pid": 1, "starts": 1, "time": 0, "counts": {"x": []}}
        )
        self.assertEqual(decodeSnapshot(data.encode()).counts, {})

    def test_malformed(self) -> None:
        """
        Truncated data, missing keys, labels or values of the wrong kind or
        shape are L{ValueError}s.
        """
        good = encodeSnapshot(WorkerSnapshot(0, 1, 1, 0.0, _snapshot(1, 1, 0, 0.0)))
        header = '{"worker":0,"pid":1,"starts":1,"time":0,"counts":'
        for data in (
            good[:-5],
            b"[]",
            b'{"worker": 0}',
            (header + '{"rproxy_requests":[[["/"],[1,0]]]}}').encode(),
            (header + '{"rproxy_requests":[[["/","",2],[1,0]]]}}').encode(),
            (header + '{"rproxy_requests":[[["/","","2xx"],["1",0]]]}}').encode(),
            (header + '{"rproxy_requests":[[["/","","2xx"],[1,0,0]]]}}').encode(),
            b"\xff",
        ):
            with self.assertRaises(ValueError, msg=data):
                decodeSnapshot(data)


class _Own:
    """
    A process's own counts, changed by hand.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.connections = 0

    def __call__(self) -> Snapshot:
        return _snapshot(self.requests, self.connections, 0, 7.0)


def _requests(snapshot: WorkerSnapshot) -> float:
    return snapshot.counts["rproxy_requests"][("/", "app", "2xx")][0]


class WorkerTotalsFileTests(SynchronousTestCase):
    """
    L{WorkerTotals} on a memory reactor: its counts file, its restarts,
    its siblings' files.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.clock = MemoryReactorClock()

    def totals(self, worker: int, own: _Own) -> WorkerTotals:
        return WorkerTotals(
            self.clock, self.clock, self.directory, worker, own, lambda: 99.0
        )

    def written(self, worker: int) -> WorkerSnapshot:
        with open(snapshotPath(self.directory, worker), "rb") as f:
            return decodeSnapshot(f.read(), live=False)

    def test_publishesAtStartEverySecondAndAtStop(self) -> None:
        """
        The counts file is written at start, again each second, and a last
        time at stop; the socket is listened on with mode 0600.
        """
        own = _Own()
        totals = self.totals(0, own)
        totals.start()
        self.assertEqual(_requests(self.written(0)), 0)
        [(path, _, _, mode, _)] = self.clock.unixServers
        self.assertEqual((path, mode), (socketPath(self.directory, 0), 0o600))
        own.requests = 5
        self.clock.advance(0.5)
        self.assertEqual(_requests(self.written(0)), 0)
        self.clock.advance(0.5)
        self.assertEqual(_requests(self.written(0)), 5)
        own.requests = 6
        self.successResultOf(totals.stop())
        self.assertEqual(_requests(self.written(0)), 6)
        self.assertEqual(self.written(0).worker, 0)
        self.assertEqual(self.written(0).pid, os.getpid())
        own.requests = 7
        self.clock.advance(5)
        self.assertEqual(_requests(self.written(0)), 6)
        self.assertEqual(
            [n for n in os.listdir(self.directory) if n.endswith(".tmp")], []
        )

    def test_restartCarriesCounters(self) -> None:
        """
        A worker started again in the place of one that died starts from
        its predecessor's counters (not its gauges), counting one more
        start.
        """
        own = _Own()
        own.requests, own.connections = 10, 4
        first = self.totals(1, own)
        first.start()
        # Died without stopping: its last file stays.
        second = self.totals(1, _Own())
        second.start()
        self.assertEqual(second.starts, 2)
        current = second.current()
        self.assertEqual(_requests(current), 10)
        self.assertEqual(current.counts["rproxy_client_connections"], {(): [0]})
        third = self.totals(1, _Own())
        third.start()
        self.assertEqual((third.starts, _requests(third.current())), (3, 10))

    def test_collectFallsBackToFiles(self) -> None:
        """
        A sibling without a socket is read from its file, not live; one that
        wrote nothing is left out; this worker's own counts are live.
        """
        sibling = _Own()
        sibling.requests, sibling.connections = 3, 2
        other = self.totals(1, sibling)
        other.publish()
        own = _Own()
        own.requests = 4
        totals = self.totals(0, own)
        collected = self.successResultOf(totals.collect())
        self.assertEqual(
            [(s.worker, s.live) for s in collected], [(0, True), (1, False)]
        )
        self.assertEqual([_requests(s) for s in collected], [4, 3])
        merged = mergeWorkers(collected)
        self.assertEqual(merged["rproxy_requests"][("/", "app", "2xx")][0], 7)
        self.assertEqual(merged["rproxy_client_connections"], {(): [0]})

    def test_badSiblingFileIgnored(self) -> None:
        """
        A sibling's file that cannot be read is left out (and logged), the
        others still count.
        """
        with open(snapshotPath(self.directory, 1), "wb") as f:
            f.write(b"{not json")
        totals = self.totals(0, _Own())
        collected = self.successResultOf(totals.collect())
        self.assertEqual([s.worker for s in collected], [0])

    def test_unwritableDirectory(self) -> None:
        """
        A directory that cannot be written to stops no one: the counting
        goes on, the failure is logged once, and writing resumes when it
        can.
        """
        messages: list[str] = []
        from twisted.logger import globalLogPublisher

        def observer(event: dict[str, Any]) -> None:
            if "Worker counts" in event.get("log_format", ""):
                messages.append(event["log_format"])

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        shutil.rmtree(self.directory)
        own = _Own()
        totals = self.totals(0, own)
        totals.start()
        self.clock.advance(3)
        self.assertEqual(
            [m for m in messages if "cannot write" in m],
            ["Worker counts: cannot write {path}: {error}"],
        )
        os.makedirs(self.directory)
        own.requests = 2
        self.clock.advance(1)
        self.assertEqual(_requests(self.written(0)), 2)
        self.assertTrue(any("again" in m for m in messages))

    def test_tooLongSocketPath(self) -> None:
        """
        A run directory too deep for a UNIX socket path: no socket, the
        file is still written.
        """
        deep = os.path.join(self.directory, "d" * 120)
        os.makedirs(deep)
        totals = WorkerTotals(self.clock, self.clock, deep, 0, _Own(), lambda: 1.0)
        totals.start()
        self.assertEqual(self.clock.unixServers, [])
        self.assertTrue(os.path.exists(snapshotPath(deep, 0)))
        self.successResultOf(totals.stop())


class _Silent(Protocol):
    """
    Accepts and never answers.
    """


class WorkerTotalsSocketTests(TestCase):
    """
    L{WorkerTotals} siblings over real UNIX sockets.
    """

    def setUp(self) -> None:
        # Short: a UNIX socket path has at most about 100 bytes.
        self.directory = tempfile.mkdtemp(prefix="rp-")
        self.addCleanup(shutil.rmtree, self.directory, True)

    def totals(self, worker: int, own: _Own) -> WorkerTotals:
        totals = WorkerTotals(reactor, reactor, self.directory, worker, own)
        totals.timeout = 2.0
        return totals

    @asyncTest
    async def test_siblingAnswersLive(self) -> None:
        """
        A running sibling answers with its counts of the moment, not those
        of its last file; once stopped, its file (with its last counts) is
        read instead, and its socket is gone.
        """
        sibling = _Own()
        other = self.totals(1, sibling)
        other.start()
        self.addCleanup(other.stop)
        sibling.requests, sibling.connections = 8, 3
        own = _Own()
        own.requests = 1
        totals = self.totals(0, own)
        collected = await totals.collect()
        self.assertEqual(
            [(s.worker, s.live) for s in collected], [(0, True), (1, True)]
        )
        self.assertEqual([_requests(s) for s in collected], [1, 8])
        self.assertEqual(collected[1].counts["rproxy_client_connections"], {(): [3]})
        sibling.requests = 9
        await other.stop()
        self.assertFalse(os.path.exists(socketPath(self.directory, 1)))
        collected = await totals.collect()
        self.assertEqual(
            [(s.worker, s.live) for s in collected], [(0, True), (1, False)]
        )
        self.assertEqual(_requests(collected[1]), 9)

    @asyncTest
    async def test_stuckSiblingTimesOut(self) -> None:
        """
        A sibling that accepts but does not answer is read from its file
        once the timeout is over.
        """
        own = _Own()
        own.requests = 4
        self.totals(1, own).publish()
        port = reactor.listenUNIX(
            socketPath(self.directory, 1), Factory.forProtocol(_Silent)
        )
        self.addCleanup(port.stopListening)
        totals = self.totals(0, _Own())
        totals.timeout = 0.3
        collected = await totals.collect()
        self.assertEqual(
            [(s.worker, s.live) for s in collected], [(0, True), (1, False)]
        )
        self.assertEqual(_requests(collected[1]), 4)
