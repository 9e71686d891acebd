#!/usr/bin/env python3
"""
HTTP/1.1 over TLS against HTTP/2 on the same TLS listener (issue #15).

    python benchmarks/http2.py [--quick | --duration 10] [--md-out FILE]
                               [--json-out FILE]

An nginx backend (run.py's, pinned to the load CPU) serves C{/1k}; the real
C{twistd rproxy} (pinned to the server CPU) serves it through a C{[[tls]]}
listener with C{http2 = true} and a self-signed certificate made at run
time (trustme).  One fresh proxy per row, each row loaded for C{--duration}
seconds after a short warm-up:

  - C{http/1.1 wrk -c50}: wrk over TLS (no ALPN: HTTP/1.1), 50 keep-alive
    connections;
  - C{h2 h2load -c10 -m10}: h2load, 10 connections of 10 concurrent
    streams each;
  - C{h2 h2load -c10 -m100}: 100 streams per connection, where the issue
    asks for 0 failures.

Each row gives requests per second, failures, and the proxy's CPU time per
request (utime + stime of its process group, from /proc, around the timed
run only).  h2load is Debian's C{nghttp2-client}; wrk, nginx and taskset as
for run.py.  Every load run is bounded by the tool's own duration and a
timeout, and only the process groups this script started are stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

PATH = "/1k"

#: The rows: name, tool, and its load options.
ROWS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("http/1.1 wrk -c50", "wrk", ("-c50",)),
    ("h2 h2load -c10 -m10", "h2load", ("-c10", "-m10")),
    ("h2 h2load -c10 -m100", "h2load", ("-c10", "-m100")),
)

CONFIG = """\
[server]
listen = ["tcp:{plain}:interface=127.0.0.1"]

[[tls]]
listen = ["tcp:{port}:interface=127.0.0.1"]
certificates = [{{ certificate = "{pem}", key = "{pem}" }}]
http2 = true

[pools.app]
servers = ["http://127.0.0.1:{backend}"]

[[routes]]
path = "/"
pool = "app"
"""


@dataclass
class Row:
    """
    One measured row.
    """

    name: str
    rps: float | None = None
    requests: int | None = None
    failures: int | None = None
    cpuUsPerRequest: float | None = None
    status: str = "ok"


def parseH2load(text: str) -> tuple[float | None, int | None, int | None]:
    """
    Requests/s, succeeded requests and failed + errored + timed-out
    requests from h2load's summary.
    """
    rps = succeeded = failures = None
    match = re.search(r"finished in [\d.]+\w*, ([\d.]+) req/s", text)
    if match:
        rps = float(match.group(1))
    match = re.search(
        r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout",
        text,
    )
    if match:
        succeeded = int(match.group(1))
        failures = sum(int(n) for n in match.groups()[1:])
    match = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if match and failures is not None:
        failures += int(match.group(3)) + int(match.group(4))
    return rps, succeeded, failures


def loadArgv(tool: str, options: Sequence[str], port: int, duration: int) -> list[str]:
    """
    The command line of one load run against the TLS port.
    """
    url = f"https://{run.HOST}:{port}{PATH}"
    if tool == "wrk":
        return ["wrk", "-t1", *options, f"-d{duration}s", "--timeout", "5s", url]
    return ["h2load", "-t1", *options, "-D", str(duration), url]


def runLoad(
    procs: run.Processes,
    args: argparse.Namespace,
    tool: str,
    options: Sequence[str],
    port: int,
    duration: int,
) -> str:
    """
    One load run pinned to the load CPU; its output.
    """
    proc = procs.start(
        loadArgv(tool, options, port, duration), args.load_cpu, None, capture=True
    )
    try:
        out, _ = proc.communicate(timeout=duration + run.WRK_TIMEOUT_SLACK)
    except subprocess.TimeoutExpired:
        raise run.RowFailed(f"{tool} did not finish in time") from None
    finally:
        procs.stop(proc)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise run.RowFailed(f"{tool} exited with {proc.returncode}: {text.strip()}")
    return text


def writeCertificate(workdir: Path) -> Path:
    """
    A self-signed (trustme CA) certificate for 127.0.0.1 and its key, in
    one PEM file.
    """
    import trustme

    pem = workdir / "site.pem"
    trustme.CA().issue_cert(
        "127.0.0.1", "localhost"
    ).private_key_and_cert_chain_pem.write_to_path(str(pem))
    return pem


def measureRow(
    procs: run.Processes,
    args: argparse.Namespace,
    name: str,
    tool: str,
    options: Sequence[str],
    backendPort: int,
    workdir: Path,
    pem: Path,
) -> Row:
    """
    A fresh proxy, a warm-up, then the timed run of one row.
    """
    port, plain = run.freePort(), run.freePort()
    config = workdir / f"rproxy-{port}.toml"
    config.write_text(
        CONFIG.format(port=port, plain=plain, pem=pem, backend=backendPort)
    )
    log = workdir / f"proxy-{port}.log"
    argv = [
        args.python,
        "-c",
        run.TWISTD,
        "-n",
        "--pidfile=",
        "rproxy",
        "--config",
        str(config),
    ]
    proxy = procs.start(argv, args.proxy_cpu, log, env=run.childEnv(), cwd=workdir)
    try:
        run.waitForPort(port, proxy, run.PROXY_READY_TIMEOUT)
        if args.warmup > 0:
            runLoad(procs, args, tool, options, port, args.warmup)
        cpu0 = run.groupCpuSeconds(proxy.pid)
        text = runLoad(procs, args, tool, options, port, args.duration)
        cpu = run.groupCpuSeconds(proxy.pid) - cpu0
    except run.RowFailed as e:
        return Row(name, status=f"failed: {e}\n{run.logTail(log)}")
    finally:
        procs.stop(proxy)
    if tool == "wrk":
        parsed = run.parseWrk(text)
        rps, requests, failures = parsed["rps"], parsed["requests"], parsed["errors"]
    else:
        rps, requests, failures = parseH2load(text)
    if not requests:
        return Row(name, status=f"failed: no request completed: {text.strip()[-500:]}")
    return Row(name, rps, requests, failures, cpu / requests * 1e6)


def table(rows: Sequence[Row]) -> list[str]:
    """
    The Markdown table of C{rows}.
    """
    lines = [
        "| row | req/s | requests | failures | proxy CPU µs/request | status |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        status = row.status.splitlines()[0] if row.status else ""
        lines.append(
            f"| {row.name} | {run._fmt(row.rps)} | {row.requests or '-'} | "
            f"{'-' if row.failures is None else row.failures} | "
            f"{run._fmt(row.cpuUsPerRequest)} | {status} |"
        )
    return lines


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=int, default=10, help="seconds per row (10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds (2)")
    p.add_argument("--quick", action="store_true", help="3 s rows, 1 s warm-up")
    p.add_argument("--proxy-cpu", default="1", help="CPU of the proxy (1)")
    p.add_argument("--load-cpu", default="0", help="CPU of the load and nginx (0)")
    p.add_argument("--python", default=sys.executable, help="the Python of twistd")
    p.add_argument("--json-out", type=Path, help="write the rows as JSON")
    p.add_argument("--md-out", type=Path, help="write the Markdown table")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = 3, 1
    if not 1 <= args.duration <= 300:
        p.error("--duration: between 1 and 300 seconds")
    return args


def checkRequirements(args: argparse.Namespace) -> None:
    """
    Raise L{run.BenchError} if a tool or a CPU is missing.
    """
    missing = [t for t in ("nginx", "wrk", "h2load", "taskset") if not shutil.which(t)]
    if missing:
        raise run.BenchError(
            f"missing on PATH: {', '.join(missing)} (Debian/Ubuntu: apt-get "
            "install nginx wrk nghttp2-client util-linux)"
        )
    allowed = os.sched_getaffinity(0)
    for option, cpu in (("--proxy-cpu", args.proxy_cpu), ("--load-cpu", args.load_cpu)):
        if not cpu.isdigit() or int(cpu) not in allowed:
            raise run.BenchError(
                f"{option} {cpu}: not one of the CPUs {sorted(allowed)}"
            )


def main(argv: Sequence[str] | None = None) -> int:
    args = parseArgs(argv)
    try:
        checkRequirements(args)
    except run.BenchError as e:
        print(f"http2.py: {e}", file=sys.stderr)
        return 2
    procs = run.Processes()
    signal.signal(signal.SIGTERM, run._onSignal)
    rows: list[Row] = []
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="rproxy-h2bench-") as directory:
            workdir = Path(directory)
            os.chmod(workdir, 0o755)
            pem = writeCertificate(workdir)
            _, backendPort = run.startBackend(procs, workdir, args.load_cpu)
            for name, tool, options in ROWS:
                rows.append(
                    measureRow(
                        procs, args, name, tool, options, backendPort, workdir, pem
                    )
                )
                print(table(rows)[-1], flush=True)
            procs.stopAll()
    except run.BenchError as e:
        print(f"http2.py: {e}", file=sys.stderr)
        return 2
    finally:
        procs.stopAll()
    lines = [
        f"HTTP/1.1 over TLS vs HTTP/2, {PATH} from nginx, proxy on CPU "
        f"{args.proxy_cpu}, load on CPU {args.load_cpu}, {args.duration} s per row "
        f"({time.monotonic() - started:.0f} s in all)",
        "",
        *table(rows),
    ]
    print("\n".join(lines))
    for row in rows:
        if row.status != "ok":
            print(f"{row.name}: {row.status}", file=sys.stderr)
    if args.md_out:
        args.md_out.write_text("\n".join(lines) + "\n")
    if args.json_out:
        data: dict[str, Any] = {"rows": [asdict(r) for r in rows]}
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
