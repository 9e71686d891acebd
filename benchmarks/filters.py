#!/usr/bin/env python3
"""
The cost of filters: proxied requests/s and the proxy's CPU time per request
with 0, 1 and 5 no-op filters (each with a request and a response hook) on
the route, against the same nginx backend as benchmarks/run.py, whose
functions this script reuses.

    python benchmarks/filters.py [--duration 10] [--warmup 2] [--connections 50]

Requirements as for run.py (nginx, wrk, taskset, 2 CPUs). The no-op filter
plugin is written to a temporary directory put on the proxy's PYTHONPATH.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

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


def writeConfig(workdir: Path, count: int, port: int, backendPort: int) -> Path:
    """
    A configuration with C{count} no-op filters on its only route.
    """
    names = [f"noop{n}" for n in range(count)]
    lines = [
        "[server]",
        f'listen = ["tcp:{port}:interface={run.HOST}"]',
        "[pools.app]",
        f'servers = ["http://{run.HOST}:{backendPort}"]',
    ]
    for name in names:
        lines += [f"[filters.{name}]", 'plugin = "bench_noop"']
    lines += ["[[routes]]", 'pool = "app"', f"filters = {names!r}".replace("'", '"')]
    path = workdir / f"filters-{count}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(
    procs: run.Processes, args: argparse.Namespace, count: int, backendPort: int
) -> run.LoadRow:
    """
    Start a proxy with C{count} filters, check it, measure it, stop it.
    """
    port = run.freePort()
    config = writeConfig(args.workdir, count, port, backendPort)
    argv = [args.python, "-c", run.TWISTD, "-n", "--pidfile=", "rproxy"]
    argv += ["--config", str(config)]
    env = run.childEnv()
    env["PYTHONPATH"] = f"{args.workdir / 'plugins'}:{env.get('PYTHONPATH', '')}"
    log = args.workdir / f"proxy-{count}.log"
    proc = procs.start(argv, args.proxy_cpu, log, env=env, cwd=args.workdir)
    try:
        run.waitForPort(port, proc, run.PROXY_READY_TIMEOUT)
        scenario = run.Scenario(f"{count} filters", "/1k")
        run.checkBody(port, backendPort, scenario.path)
        return run.measureLoad(procs, args, scenario, "proxy", port, proc.pid)
    finally:
        procs.stop(proc)


def main() -> int:
    args = run.scenarioParser(__doc__.split("\n\n")[0]).parse_args()
    procs = run.Processes()
    args.workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-filters-"))
    try:
        plugins = args.workdir / "plugins" / "twisted_rproxy" / "plugins"
        plugins.mkdir(parents=True)
        (plugins / "bench_noop_plugin.py").write_text(NOOP_PLUGIN)
        _, backendPort = run.startBackend(procs, args.workdir, args.load_cpu)
        print("| filters | req/s | proxy CPU µs/request | p50 ms | p99 ms |")
        print("|---:|---:|---:|---:|---:|")
        for count in (0, 1, 5):
            row = measure(procs, args, count, backendPort)
            print(
                f"| {count} | {row.rps:.0f} | {row.proxyCpuUsPerRequest:.1f} "
                f"| {row.p50Ms:.2f} | {row.p99Ms:.2f} |",
                flush=True,
            )
    finally:
        procs.stopAll()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
