#!/usr/bin/env python3
"""
The cost of filters: proxied requests/s and the proxy's CPU time per request
with 0, 1 and 5 no-op filters (each with a request and a response hook) on
the route, against the same nginx backend as benchmarks/run.py, whose
functions this script reuses.

    python benchmarks/filters.py [--duration 10] [--warmup 2] [--connections 50]
                                 [--rounds 3]

One proxy has the three routes (C{/f0/}, C{/f1/} and C{/f5/}, each
stripping its prefix, so that each asks the backend for C{/1k}); each row
is measured C{--rounds} times, the rows taking turns (each round starting
one row further on), and shows its median
CPU per request and the median (and range) of its ratios to the route
without filters in the same round: the load of a shared machine drifting
between rows, and one process's luck against another's, weigh less than in
one run of a proxy per row.

Requirements as for run.py (nginx, wrk, taskset, 2 CPUs). The no-op filter
plugin is written to a temporary directory put on the proxy's PYTHONPATH.

    python benchmarks/filters.py --in-process [--requests 3000] [--rounds 10]

measures the same three routes in this process instead, without nginx or
wrk: the proxy's real service on a memory reactor, one kept-alive client
connection and one backend connection answered with a canned 1 KiB
response (the headers nginx sends), its CPU time per request (the best of
the rounds, the routes taking turns) and its ratio to the route without
filters. What it leaves out (the reactor's socket calls) is the same for
every route: the ratios are those of the proxy's own work.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

NOOP_PLUGIN = """\
from twisted.plugin import IPlugin
from zope.interface import implementer

from twisted_rproxy.interfaces import (
    IFilterFactory,
    IRequestFilter,
    IResponseFilter,
)


@implementer(IRequestFilter, IResponseFilter)
class Noop:
    def filterRequest(self, request, context):
        return None

    def filterResponse(self, request, context, head):
        return None


@implementer(IPlugin, IFilterFactory)
class NoopFactory:
    name = "bench_noop"

    def buildFilter(self, options):
        return Noop()


noop = NoopFactory()
"""


#: The rows: how many no-op filters the route has.
COUNTS = (0, 1, 5)


def writeConfig(workdir: Path, port: int, backendPort: int) -> Path:
    """
    A configuration with one route per row of L{COUNTS}: C{/fN/} with N
    no-op filters, stripping its prefix.
    """
    lines = [
        "[server]",
        f'listen = ["tcp:{port}:interface={run.HOST}"]',
        "[pools.app]",
        f'servers = ["http://{run.HOST}:{backendPort}"]',
    ]
    for n in range(max(COUNTS)):
        lines += [f"[filters.noop{n}]", 'plugin = "bench_noop"']
    for count in COUNTS:
        names = [f"noop{n}" for n in range(count)]
        lines += [
            "[[routes]]",
            f'path = "/f{count}/"',
            "strip_prefix = true",
            'pool = "app"',
            f"filters = {names!r}".replace("'", '"'),
        ]
    path = workdir / "filters.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def startProxy(
    procs: run.Processes, args: argparse.Namespace, backendPort: int
) -> tuple[int, Any]:
    """
    Start the proxy with every row's route; its port and process.
    """
    port = run.freePort()
    config = writeConfig(args.workdir, port, backendPort)
    argv = [args.python, "-c", run.TWISTD, "-n", "--pidfile=", "rproxy"]
    argv += ["--config", str(config)]
    env = run.childEnv()
    env["PYTHONPATH"] = f"{args.workdir / 'plugins'}:{env.get('PYTHONPATH', '')}"
    log = args.workdir / "proxy.log"
    proc = procs.start(argv, args.proxy_cpu, log, env=env, cwd=args.workdir)
    run.waitForPort(port, proc, run.PROXY_READY_TIMEOUT)
    direct = run.fetch(backendPort, "/1k")
    for count in COUNTS:
        path = f"/f{count}/1k"
        if run.fetch(port, path)[:2] != direct[:2]:
            raise run.RowFailed(f"the proxy's {path} is not the backend's /1k")
    return port, proc


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


#: The backend's response in the in-process runs: nginx's headers, 1 KiB.
CANNED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nContent-Type: text/html\r\n"
    b"Content-Length: 1024\r\n"
    b"Last-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "65920a80-400"\r\n'
    b"Accept-Ranges: bytes\r\n\r\n" + b"x" * 1024
)

#: The client's request in the in-process runs, as wrk sends it.
CLIENT_REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"


def inProcessRoute(count: int) -> Callable[[], None]:
    """
    A proxy service on a memory reactor whose only route has C{count}
    no-op filters, warmed up; the function that sends it one request and
    answers it as the backend.
    """
    from twisted.internet.address import IPv4Address
    from twisted.internet.testing import MemoryReactorClock, StringTransport

    from twisted_rproxy.config import parseConfig
    from twisted_rproxy.service import ProxyService

    reactor = MemoryReactorClock()
    reactor.advance(1_700_000_000)
    names = [f"noop{n}" for n in range(count)]
    config = parseConfig(
        {
            "server": {"listen": ["tcp:0"]},
            "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
            "filters": {name: {"plugin": "bench_noop"} for name in names},
            "routes": [{"path": "/", "pool": "app", "filters": names}],
        },
        "filters.toml",
        ".",
    )
    service = ProxyService(config, reactor)
    peer = IPv4Address("TCP", "127.0.0.1", 40000)
    client = service.site.buildProtocol(peer)
    clientTransport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8080), peerAddress=peer
    )
    client.makeConnection(clientTransport)
    client.dataReceived(CLIENT_REQUEST)
    factory = reactor.tcpClients[0][2]
    backend = factory.buildProtocol(None)
    backendTransport = StringTransport()
    backend.makeConnection(backendTransport)
    backend.dataReceived(CANNED_RESPONSE)

    def one() -> None:
        clientTransport.clear()
        backendTransport.clear()
        client.dataReceived(CLIENT_REQUEST)
        backend.dataReceived(CANNED_RESPONSE)

    for _ in range(500):
        one()
    response = clientTransport.value()
    if not response.startswith(b"HTTP/1.1 200 ") or not response.endswith(b"x" * 1024):
        raise RuntimeError(f"unexpected response: {response[:200]!r}")
    if len(reactor.tcpClients) != 1:
        raise RuntimeError("the backend connection was not kept alive")
    return one


def inProcess(requests: int, rounds: int) -> int:
    """
    Print the CPU time per request of each route, measured in this process.
    """
    import twisted_rproxy.plugins

    # Twisted's plugin finder complains of a path entry added at run time.
    warnings.filterwarnings("ignore", message=".*PEP 302 violation")
    workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-filters-"))
    pluginPath: list[str] = twisted_rproxy.plugins.__path__  # type: ignore[assignment]
    try:
        (workdir / "bench_noop_plugin.py").write_text(NOOP_PLUGIN)
        pluginPath.append(str(workdir))
        routes = {count: inProcessRoute(count) for count in (0, 1, 5)}
    finally:
        if str(workdir) in pluginPath:
            pluginPath.remove(str(workdir))
        shutil.rmtree(workdir, ignore_errors=True)
    best = {count: float("inf") for count in routes}
    for _ in range(rounds):
        for count, one in routes.items():
            started = time.process_time()
            for _ in range(requests):
                one()
            spent = (time.process_time() - started) / requests * 1e6
            best[count] = min(best[count], spent)
    print("| filters | proxy CPU µs/request | × no filters |")
    print("|---:|---:|---:|")
    for count, spent in best.items():
        print(f"| {count} | {spent:.1f} | {spent / best[0]:.3f} |")
    return 0


def main() -> int:
    parser = run.scenarioParser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="measure in this process, on a memory reactor (no nginx, no wrk)",
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds of the rows (default: 3, or 10 with --in-process)",
    )
    args = parser.parse_args()
    if args.in_process:
        return inProcess(args.requests, args.rounds or 10)
    args.rounds = args.rounds or 3
    procs = run.Processes()
    args.workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-filters-"))
    try:
        plugins = args.workdir / "plugins" / "twisted_rproxy" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "bench_noop_plugin.py").write_text(NOOP_PLUGIN)
        _, backendPort = run.startBackend(procs, args.workdir, args.load_cpu)
        port, proc = startProxy(procs, args, backendPort)
        measured: dict[int, list[run.LoadRow]] = {count: [] for count in COUNTS}
        ratios: dict[int, list[float]] = {count: [] for count in COUNTS}
        for turn in range(args.rounds):
            # Each round starts one row further on: a row's place in the
            # round (the one after another, say) weighs on every row alike.
            start = turn % len(COUNTS)
            cpus: dict[int, float | None] = {}
            for count in COUNTS[start:] + COUNTS[:start]:
                scenario = run.Scenario(f"{count} filters", f"/f{count}/1k")
                row = run.measureLoad(procs, args, scenario, "proxy", port, proc.pid)
                measured[count].append(row)
                cpus[count] = row.proxyCpuUsPerRequest
            base = cpus[0]
            for count, cpu in cpus.items():
                if base and cpu:
                    ratios[count].append(cpu / base)
        print(
            "| filters | req/s | proxy CPU µs/request | ÷ none (range) "
            "| p50 ms | p99 ms |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for count in COUNTS:
            rows = measured[count]
            spread = ratios[count]
            print(
                f"| {count} | {_median([r.rps or 0.0 for r in rows]):.0f} "
                f"| {_median([r.proxyCpuUsPerRequest or 0.0 for r in rows]):.1f} "
                f"| {_median(spread):.2f}× ({min(spread):.2f}–{max(spread):.2f}) "
                f"| {_median([r.p50Ms or 0.0 for r in rows]):.2f} "
                f"| {_median([r.p99Ms or 0.0 for r in rows]):.2f} |",
                flush=True,
            )
    finally:
        procs.stopAll()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
