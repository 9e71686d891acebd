"""
The cost of balancing, and a failover run.

Runs the proxy from a configuration file in front of one nginx backend,
then of three (the same 1 KiB document, round robin and least requests),
and reports requests/s and the proxy's CPU microseconds per request: the
difference is what balancing costs. Then a failover run: three backends
with health checks, outlier ejection and retries, one of them stopped in
the middle of the wrk run; it reports wrk's request and error counts.

Uses the helpers of C{benchmarks/run.py} (same requirements: nginx, wrk,
taskset, 2 CPUs)::

    python benchmarks/balancing.py            # 5 s per run
    python benchmarks/balancing.py --duration 10
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py, beside this file)

SCENARIO = run.Scenario("1k", "/1k")

HEALTH = """\
health = { path = "/1k", interval = "500ms", timeout = "250ms", rise = 2, fall = 2 }
outlier = { consecutive_failures = 3, base_ejection = "5s" }
retries = 2
"""


def writeConfig(
    workdir: Path, port: int, backends: list[int], balance: str, extra: str = ""
) -> Path:
    servers = ", ".join(f'"http://{run.HOST}:{p}"' for p in backends)
    path = workdir / f"proxy-{port}.toml"
    path.write_text(
        f'[server]\nlisten = ["tcp:{port}:interface={run.HOST}"]\n\n'
        f'[pools.app]\nservers = [{servers}]\nbalance = "{balance}"\n{extra}\n'
        '[[routes]]\npath = "/"\npool = "app"\n'
    )
    return path


def startProxy(
    procs: run.Processes, args: argparse.Namespace, config: Path
) -> tuple[run.subprocess.Popen[bytes], int]:
    port = int(config.stem.split("-")[1])
    argv = [args.python, "-c", run.TWISTD, "-n", "--pidfile=", "rproxy"]
    argv += ["--config", str(config)]
    log = config.with_suffix(".log")
    proc = procs.start(argv, args.proxy_cpu, log, env=run.childEnv(), cwd=config.parent)
    run.waitForPort(port, proc, run.PROXY_READY_TIMEOUT)
    return proc, port


def loadRow(
    procs: run.Processes,
    args: argparse.Namespace,
    workdir: Path,
    label: str,
    backends: list[int],
    balance: str,
) -> run.LoadRow:
    port = run.freePort()
    proc, port = startProxy(procs, args, writeConfig(workdir, port, backends, balance))
    try:
        return run.measureLoad(procs, args, SCENARIO, label, port, proc.pid)
    finally:
        procs.stop(proc)


def failoverRun(
    procs: run.Processes,
    args: argparse.Namespace,
    workdir: Path,
    backends: list[tuple[run.subprocess.Popen[bytes], int]],
) -> dict[str, object]:
    port = run.freePort()
    config = writeConfig(workdir, port, [p for _, p in backends], "round-robin", HEALTH)
    proc, port = startProxy(procs, args, config)
    try:
        result: dict[str, str] = {}

        def load() -> None:
            result["text"] = run.runWrk(procs, args, port, SCENARIO, args.duration)

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(args.duration / 3)
        procs.stop(backends[1][0])
        thread.join()
        parsed = run.parseWrk(result["text"])
        return {"requests": parsed["requests"], "errors": parsed["errors"]}
    finally:
        procs.stop(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=50)
    mine, rest = parser.parse_known_args(argv)
    args = run.parseArgs(rest)
    args.duration, args.connections, args.warmup = mine.duration, mine.connections, 1
    args.scenarios = ["1k"]
    procs = run.Processes()
    workdir = Path(tempfile.mkdtemp(prefix="rproxy-balance-"))
    # nginx's unprivileged worker must reach the document roots inside.
    workdir.chmod(0o755)
    try:
        run.checkRequirements(args)
        backends = []
        for i in range(3):
            (workdir / f"b{i}").mkdir()
            backends.append(run.startBackend(procs, workdir / f"b{i}", args.load_cpu))
        ports = [p for _, p in backends]
        rows = [
            loadRow(procs, args, workdir, "1 backend", ports[:1], "round-robin"),
            loadRow(procs, args, workdir, "3, round-robin", ports, "round-robin"),
            loadRow(procs, args, workdir, "3, least-requests", ports, "least-requests"),
            loadRow(procs, args, workdir, "3, random-two", ports, "random-two"),
        ]
        print("| pool | requests/s | proxy CPU µs/request | errors |")
        print("|---|---:|---:|---:|")
        for row in rows:
            print(
                f"| {row.target} | {row.rps:.0f} | "
                f"{row.proxyCpuUsPerRequest or 0:.0f} | {row.errors} |"
            )
        counts = failoverRun(procs, args, workdir, backends)
        print(
            f"\nfailover run ({args.duration}s, one of 3 backends stopped at "
            f"{args.duration / 3:.1f}s): {counts['requests']} requests, "
            f"{counts['errors']} errors"
        )
    except (run.BenchError, run.RowFailed) as e:
        print(f"benchmarks/balancing.py: {e}", file=sys.stderr)
        return 2
    finally:
        procs.stopAll()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
