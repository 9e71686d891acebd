#!/usr/bin/env python3
"""
The cost of a cache hit beside a proxied miss: requests/s and the proxy's
CPU time per request for the same 1 KiB and 64 KiB responses, served by an
nginx backend under two locations, one cacheable (C{Cache-Control:
max-age=3600}, so every request after the first is a hit) and one with
C{Cache-Control: no-store} (so every request goes to the backend through
the cache, which stores nothing). The C{store} rows ask the cacheable
location under a new query string each time (a wrk script), so every
request is a miss that is stored: the cost of writing entries (and, once
the store is full, evicting). The C{pass} rows ask the same file with the
same headers as C{miss} through a route without a cache (C{/pass/}, as
long a path as C{/miss/}): the plain proxied request each row's CPU is
divided by (the C{÷ pass} column). The same for a disk cache (C{store =
"disk"}) with 1 KiB and 1 MiB responses, under C{/disk/}. Reuses
benchmarks/run.py's functions.

    python benchmarks/cache.py [--duration 10] [--warmup 2] [--connections 50]
                               [--rounds 3] [--stores memory,disk]

Each row is measured C{--rounds} times, the rows of a response size one
after the other in each round; a row shows its median CPU per request, and
its ratio to C{pass} is the median of the rounds' own ratios (with their
range), so that the load of a shared machine drifting between two rows
weighs less than in one run of each.

Requirements as for run.py (nginx, wrk, taskset, 2 CPUs).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

_LOCATION = '{{{{ alias {{www}}/; add_header Cache-Control "{policy}"; }}}}'
BACKEND_CONF = run.BACKEND_CONF.replace(
    "location / {{ }}",
    "\n        ".join(
        f"location {prefix}/{kind}/ " + _LOCATION.format(policy=policy)
        for prefix in ("", "/disk")
        for kind, policy in (
            ("hit", "max-age=3600"),
            ("miss", "no-store"),
            ("pass", "no-store"),
        )
    ),
)

#: The rows: store, response size, kind, path prefix.
ROWS = [
    (store, size, kind, prefix)
    for store, sizes, prefix in (
        ("memory", ("1k", "64k"), ""),
        ("disk", ("1k", "1m"), "/disk"),
    )
    for size in sizes
    # The miss right after the pass it is divided by.
    for kind in ("pass", "miss", "hit", "store")
]

#: A wrk script asking for a new URL each time (a query string unique to
#: this run of wrk: the warm-up's keys are not the timed run's).
UNIQUE_URLS = """
local run = tostring(os.time()) .. "-" .. tostring(math.random(1000000000))
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, wrk.path .. "?u=" .. run .. "-" .. n)
end
"""


def startBackend(procs: run.Processes, workdir: Path, cpu: str) -> int:
    """
    Start nginx with the C{/hit/}, C{/miss/} and C{/pass/} locations; its
    port.
    """
    d = workdir / "nginx"
    d.mkdir()
    d.chmod(0o755)
    www = run.writeBackendFiles(workdir)
    port = run.freePort()
    conf = d / "nginx.conf"
    conf.write_text(BACKEND_CONF.format(d=d, host=run.HOST, port=port, www=www))
    argv = ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)]
    proc = procs.start(argv, cpu, d / "stdout.log")
    run.waitForPort(port, proc, run.BACKEND_READY_TIMEOUT)
    return port


def writeConfig(workdir: Path, port: int, backendPort: int) -> Path:
    """
    A proxy whose routes are cached: C{/disk/} on disk, the rest in memory;
    but C{/pass/} and C{/disk/pass/}, which have no cache.
    """
    path = workdir / "cache.toml"
    path.write_text(
        "\n".join(
            [
                "[server]",
                f'listen = ["tcp:{port}:interface={run.HOST}"]',
                "[pools.app]",
                f'servers = ["http://{run.HOST}:{backendPort}"]',
                "[caches.main]",
                'max_size = "64MiB"',
                "[caches.disk]",
                'store = "disk"',
                f'path = "{workdir / "disk-cache"}"',
                'max_size = "256MiB"',
                'max_object_size = "2MiB"',
                "[[routes]]",
                'path = "/pass/"',
                'pool = "app"',
                "[[routes]]",
                'path = "/disk/pass/"',
                'pool = "app"',
                "[[routes]]",
                'path = "/disk/"',
                'pool = "app"',
                'cache = "disk"',
                "[[routes]]",
                'pool = "app"',
                'cache = "main"',
            ]
        )
        + "\n"
    )
    return path


def main() -> int:
    parser = run.scenarioParser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stores", default="memory,disk")
    args = parser.parse_args()
    stores = args.stores.split(",")
    procs = run.Processes()
    args.workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-cache-"))
    try:
        backendPort = startBackend(procs, args.workdir, args.load_cpu)
        port = run.freePort()
        config = writeConfig(args.workdir, port, backendPort)
        argv = [args.python, "-c", run.TWISTD, "-n", "--pidfile=", "rproxy"]
        argv += ["--config", str(config)]
        proc = procs.start(
            argv,
            args.proxy_cpu,
            args.workdir / "proxy.log",
            env=run.childEnv(),
            cwd=args.workdir,
        )
        run.waitForPort(port, proc, run.PROXY_READY_TIMEOUT)
        print(
            "| store | response | path | req/s | proxy CPU µs/request "
            "| ÷ pass (range) | p50 ms | p99 ms |"
        )
        print("|---|---|---|---:|---:|---:|---:|---:|")
        script = args.workdir / "unique.lua"
        script.write_text(UNIQUE_URLS)
        rows = [row for row in ROWS if row[0] in stores]
        # Each row's measurements, and its ratios to the pass row of the
        # same round.
        measured: dict[tuple[str, str, str], list[run.LoadRow]] = {}
        ratios: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(args.rounds):
            plain: dict[tuple[str, str], float] = {}
            for store, size, kind, prefix in rows:
                row = _measure(procs, args, port, proc.pid, script, size, kind, prefix)
                measured.setdefault((store, size, kind), []).append(row)
                cpu = row.proxyCpuUsPerRequest
                if kind == "pass" and cpu:
                    plain[store, size] = cpu
                base = plain.get((store, size))
                if cpu and base:
                    ratios.setdefault((store, size, kind), []).append(cpu / base)
        for store, size, kind, _prefix in rows:
            _printRow(
                (store, size, kind),
                measured[store, size, kind],
                ratios.get((store, size, kind), []),
            )
    finally:
        procs.stopAll()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


def _measure(
    procs: run.Processes,
    args: argparse.Namespace,
    port: int,
    pid: int,
    script: Path,
    size: str,
    kind: str,
    prefix: str,
) -> run.LoadRow:
    """
    One timed run of a row (after checking its response).
    """
    name = f"{size} {kind}"
    if kind == "store":
        scenario = run.Scenario(name, f"{prefix}/hit/{size}", script=str(script))
    else:
        scenario = run.Scenario(name, f"{prefix}/{kind}/{size}")
    status, body = run.fetch(port, scenario.path)
    if status != 200 or len(body) != run.BODY_SIZES[size]:
        raise run.BenchError(f"{scenario.path}: {status}, {len(body)}")
    # The disk store writes in a thread: let the first response in.
    time.sleep(0.5)
    return run.measureLoad(procs, args, scenario, "proxy", port, pid)


def _printRow(
    key: tuple[str, str, str], rows: list[run.LoadRow], ratios: list[float]
) -> None:
    """
    A row of the table: the medians of its rounds.
    """
    store, size, kind = key
    cpus = [row.proxyCpuUsPerRequest for row in rows if row.proxyCpuUsPerRequest]
    cpu = f"{statistics.median(cpus):.1f}" if cpus else "–"
    if ratios:
        ratio = f"{statistics.median(ratios):.2f}×"
        if len(ratios) > 1 and kind != "pass":
            ratio += f" ({min(ratios):.2f}–{max(ratios):.2f})"
    else:
        ratio = "–"
    rps = statistics.median(row.rps or 0.0 for row in rows)
    p50 = statistics.median(row.p50Ms or 0.0 for row in rows)
    p99 = statistics.median(row.p99Ms or 0.0 for row in rows)
    print(
        f"| {store} | {size} | {kind} | {rps:.0f} | {cpu} | {ratio} "
        f"| {p50:.2f} | {p99:.2f} |",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
