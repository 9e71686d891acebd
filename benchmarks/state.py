#!/usr/bin/env python3
"""
The cost of the shared state (C{[state]}, Redis): requests/s and the
proxy's CPU time per request for a cache hit from the memory store beside
one from Redis, and for a rate-limited route with a local bucket beside a
shared one, against the same nginx backend as benchmarks/run.py, whose
functions this script reuses. The rate limits are set high enough that
every request passes: what is measured is the cost of the decision.

    python benchmarks/state.py [--duration 10] [--warmup 2] [--connections 50]

Requirements as for run.py (nginx, wrk, taskset, 2 CPUs), plus Debian's
redis-server, started here on a loopback port (pinned beside the load
generator) and stopped at the end.
"""

from __future__ import annotations

import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cache  # noqa: E402
import run  # noqa: E402

#: (label, path): each behind its own route (see writeConfig).
ROWS = (
    ("cache hit, memory store", "/mem/hit/1k"),
    ("cache hit, redis store", "/redis/hit/1k"),
    ("cache hit, redis store + local_size", "/redis-local/hit/1k"),
    ("cache hit, memory store, 64k", "/mem/hit/64k"),
    ("cache hit, redis store, 64k", "/redis/hit/64k"),
    ("rate limit, local", "/rl-local/miss/1k"),
    ("rate limit, shared", "/rl-shared/miss/1k"),
    ("no filter, no cache", "/plain/miss/1k"),
)

REDIS_READY_TIMEOUT = 10.0


def startRedis(procs: run.Processes, workdir: Path, cpu: str) -> int:
    """
    Start redis-server on a free loopback port, without persistence; its
    port once it answers PING.
    """
    if shutil.which("redis-server") is None:
        raise run.BenchError("redis-server is missing: apt-get install redis-server")
    d = workdir / "redis"
    d.mkdir()
    port = run.freePort()
    argv = [
        "redis-server",
        "--port", str(port),
        "--bind", run.HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(d),
    ]
    procs.start(argv, cpu, d / "redis.log")
    deadline = time.monotonic() + REDIS_READY_TIMEOUT
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((run.HOST, port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return port
        except OSError:
            pass
        time.sleep(0.1)
    raise run.BenchError(f"redis-server did not answer on port {port}")


def writeConfig(workdir: Path, port: int, backendPort: int, redisPort: int) -> Path:
    """
    One route per row, each forwarding to the same nginx (its C{/hit/}
    and C{/miss/} locations) with the route's prefix stripped.
    """
    lines = [
        "[server]",
        f'listen = ["tcp:{port}:interface={run.HOST}"]',
        "[state]",
        f'redis = "redis://{run.HOST}:{redisPort}/0"',
        # Generous: the benchmark measures the cost, not an outage.
        'timeout = "2s"',
        "[pools.app]",
        f'servers = ["http://{run.HOST}:{backendPort}"]',
        "[caches.mem]",
        'max_size = "64MiB"',
        "[caches.redis]",
        'max_size = "64MiB"',
        'store = "redis"',
        "[caches.redislocal]",
        'max_size = "64MiB"',
        'store = "redis"',
        'local_size = "8MiB"',
        "[filters.local]",
        'plugin = "rate_limit"',
        "rate = 1000000",
        "burst = 1000000",
        "[filters.shared]",
        'plugin = "rate_limit"',
        "rate = 1000000",
        "burst = 1000000",
        "shared = true",
    ]
    for prefix, extra in (
        ("/mem", 'cache = "mem"'),
        ("/redis", 'cache = "redis"'),
        ("/redis-local", 'cache = "redislocal"'),
        ("/rl-local", 'filters = ["local"]'),
        ("/rl-shared", 'filters = ["shared"]'),
        ("/plain", ""),
    ):
        lines += [
            "[[routes]]",
            f'path = "{prefix}"',
            "strip_prefix = true",
            'pool = "app"',
        ]
        if extra:
            lines.append(extra)
    path = workdir / "state.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> int:
    args = run.scenarioParser(__doc__.split("\n\n")[0]).parse_args()
    procs = run.Processes()
    args.workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-state-"))
    try:
        backendPort = cache.startBackend(procs, args.workdir, args.load_cpu)
        redisPort = startRedis(procs, args.workdir, args.load_cpu)
        port = run.freePort()
        config = writeConfig(args.workdir, port, backendPort, redisPort)
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
        print("| row | req/s | proxy CPU µs/request | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|")
        for label, path in ROWS:
            size = path.rsplit("/", 1)[-1]
            status, body = run.fetch(port, path)
            if status != 200 or len(body) != run.BODY_SIZES[size]:
                raise run.BenchError(f"{path}: {status}, {len(body)} bytes")
            scenario = run.Scenario(label, path)
            row = run.measureLoad(procs, args, scenario, "proxy", port, proc.pid)
            print(
                f"| {label} | {row.rps:.0f} | {row.proxyCpuUsPerRequest:.1f} "
                f"| {row.p50Ms:.2f} | {row.p99Ms:.2f} |",
                flush=True,
            )
    finally:
        procs.stopAll()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
