#!/usr/bin/env python3
"""
What a memory cache's C{max_size} costs the process: the proxy's resident
memory (RSS) growth while its cache fills with responses under distinct
URLs, divided by C{max_size}, for 100-byte and 64 KiB bodies (a proxy of
its own for each).  Issue #17 asks for at most 1.25.

    python benchmarks/cachememory.py [--max-size 8] [--rounds 3]

The cache is filled C{--rounds} times over (so that it evicts, and the
growth levels off); a row is printed after each round.  Requirements as
for run.py (nginx); requests are sent one at a time on one connection.
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

BACKEND_CONF = run.BACKEND_CONF.replace(
    "location / {{ }}",
    "location /small/ {{ add_header Cache-Control max-age=3600; "
    "rewrite ^ /100 break; }}\n"
    "        location /large/ {{ add_header Cache-Control max-age=3600; "
    "rewrite ^ /64k break; }}\n"
    "        location /warm/ {{ add_header Cache-Control no-store; "
    "rewrite ^ /100 break; }}",
)

#: An entry's size as the store counts it, roughly: to know how many
#: requests fill the cache.
_COUNTED = {"small": 100 + 800, "large": 65536 + 800}


def startBackend(procs: run.Processes, workdir: Path, cpu: str) -> int:
    """
    Start nginx with the C{/small/}, C{/large/} and C{/warm/} locations.
    """
    d = workdir / "nginx"
    d.mkdir()
    d.chmod(0o755)
    www = run.writeBackendFiles(workdir)
    (www / "100").write_bytes(b"x" * 100)
    (www / "100").chmod(0o644)
    port = run.freePort()
    conf = d / "nginx.conf"
    conf.write_text(BACKEND_CONF.format(d=d, host=run.HOST, port=port, www=www))
    argv = ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)]
    proc = procs.start(argv, cpu, d / "stdout.log")
    run.waitForPort(port, proc, run.BACKEND_READY_TIMEOUT)
    return port


def rss(pid: int) -> int:
    """
    The resident memory of process C{pid}, in bytes.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise run.BenchError(f"no VmRSS for {pid}")


def get(conn: http.client.HTTPConnection, path: str) -> None:
    """
    GET C{path} on C{conn}, checking that it is answered.
    """
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise run.BenchError(f"{path}: {response.status}")


def measure(
    procs: run.Processes,
    args: argparse.Namespace,
    backendPort: int,
    kind: str,
) -> None:
    """
    Run a proxy with a cache of C{args.max_size} MiB; fill it with C{kind}
    responses, printing the RSS growth after each round.
    """
    maxSize = args.max_size * 1024 * 1024
    workdir = args.workdir / kind
    workdir.mkdir()
    port = run.freePort()
    config = workdir / "cache.toml"
    config.write_text(
        "\n".join(
            [
                "[server]",
                f'listen = ["tcp:{port}:interface={run.HOST}"]',
                "[pools.app]",
                f'servers = ["http://{run.HOST}:{backendPort}"]',
                "[caches.main]",
                f'max_size = "{args.max_size}MiB"',
                'max_object_size = "1MiB"',
                "[[routes]]",
                'pool = "app"',
                'cache = "main"',
            ]
        )
        + "\n"
    )
    argv = [args.python, "-c", run.TWISTD, "-n", "--pidfile=", "rproxy"]
    argv += ["--config", str(config)]
    proc = procs.start(
        argv, args.proxy_cpu, workdir / "proxy.log", env=run.childEnv(), cwd=workdir
    )
    run.waitForPort(port, proc, run.PROXY_READY_TIMEOUT)
    conn = http.client.HTTPConnection(run.HOST, port, timeout=10)
    try:
        # Warm the code paths (and the connections) without storing.
        for number in range(300):
            get(conn, f"/warm/{number}")
        start = rss(proc.pid)
        perRound = maxSize // _COUNTED[kind] + 1
        number = 0
        for lap in range(1, args.rounds + 1):
            for _ in range(perRound):
                get(conn, f"/{kind}/{number:08d}")
                number += 1
            growth = rss(proc.pid) - start
            print(
                f"| {kind} | {lap} | {number} | {growth / 2**20:.1f} "
                f"| {growth / maxSize:.2f} |",
                flush=True,
            )
    finally:
        conn.close()
        procs.stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-size", type=int, default=8, help="MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--proxy-cpu", default="1")
    parser.add_argument("--load-cpu", default="0")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    procs = run.Processes()
    args.workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-cachememory-"))
    try:
        backendPort = startBackend(procs, args.workdir, args.load_cpu)
        print("| bodies | round | requests | RSS growth MiB | growth ÷ max_size |")
        print("|---|---:|---:|---:|---:|")
        for kind in ("small", "large"):
            measure(procs, args, backendPort, kind)
    finally:
        procs.stopAll()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
