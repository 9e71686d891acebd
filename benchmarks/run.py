#!/usr/bin/env python3
"""
Benchmark twisted_rproxy beside direct access to its backend.

Starts an nginx backend (static files, one worker) and the proxy under test
on 127.0.0.1, checks that the proxy returns the backend's bodies byte for
byte, then measures with wrk (requests/s, p50/p99 latency, the proxy's CPU
time per request) and streams a 1 GiB file through the proxy while sampling
its resident memory.  See benchmarks/README.rst.

Everything runs on the loopback interface; every load run is bounded by
wrk's -d; every process this script starts leads its own process group and
is stopped (by that group id only) on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
TWISTD = "from twisted.scripts.twistd import run; run()"
DEFAULT_PROXY_CMD = (
    "{python} -c '" + TWISTD + "' -n --pidfile= rproxy "
    "--listen tcp:{port}:interface=127.0.0.1 --backend {backend}"
)
BODY_SIZES = {"1k": 1024, "64k": 65536, "1m": 1 << 20}
STREAM_PATH = "/1g"
STREAM_SIZE = 1 << 30
MIB = 1 << 20
WRK_TIMEOUT_SLACK = 30.0
PROXY_READY_TIMEOUT = 30.0
BACKEND_READY_TIMEOUT = 10.0
RSS_SAMPLE_INTERVAL = 0.2


@dataclass(frozen=True)
class Scenario:
    """
    A wrk load scenario: the path to fetch and the extra request headers.
    """

    name: str
    path: str
    headers: tuple[str, ...] = ()
    #: A wrk Lua script (its path), or None.
    script: str | None = None


LOAD_SCENARIOS = {
    "1k": Scenario("1k", "/1k"),
    "64k": Scenario("64k", "/64k"),
    "1k-close": Scenario("1k-close", "/1k", ("Connection: close",)),
    "1m": Scenario("1m", "/1m"),
}
STREAM_SCENARIO = "1g-stream"
DEFAULT_SCENARIOS = ("1k", "64k", "1k-close", STREAM_SCENARIO)
ALL_SCENARIOS = (*LOAD_SCENARIOS, STREAM_SCENARIO)


class BenchError(Exception):
    """
    A problem that ends the whole run, with a message for the user.
    """


class RowFailed(Exception):
    """
    A problem that ends one row (one scenario and target), not the run.
    """


@dataclass
class LoadRow:
    """
    One wrk measurement: a scenario against C{direct} or C{proxy}.
    """

    scenario: str
    target: str
    status: str = "ok"
    rps: float | None = None
    p50Ms: float | None = None
    p99Ms: float | None = None
    requests: int | None = None
    errors: int | None = None
    proxyCpuSeconds: float | None = None
    proxyCpuUsPerRequest: float | None = None
    proxyCpuPercent: float | None = None
    proxyCoreBusyPercent: float | None = None
    loadCoreBusyPercent: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


@dataclass
class StreamRow:
    """
    One large download: its throughput and, through the proxy, its memory.
    """

    scenario: str
    target: str
    status: str = "ok"
    bytes: int | None = None
    seconds: float | None = None
    mbPerSecond: float | None = None
    rssBeforeMiB: float | None = None
    rssPeakMiB: float | None = None
    rssGrowthMiB: float | None = None
    rssAfterMiB: float | None = None
    rssSamples: int | None = None
    proxyCpuSeconds: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Processes: each one leads its own process group and is stopped by that id.


class Processes:
    """
    The processes this script started, each the leader of its own group.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        argv: Sequence[str],
        cpu: str,
        log: Path | None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        """
        Start C{argv} pinned to C{cpu} in a new session (process group).

        Its output goes to C{log}, or to a pipe when C{capture} is set.
        """
        full = ["taskset", "-c", cpu, *argv]
        out: Any = subprocess.PIPE if capture else open(log or os.devnull, "ab")
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            if not capture:
                out.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """
        Stop C{proc}'s process group: SIGTERM, then SIGKILL after C{grace}.
        """
        pgid = proc.pid
        _signalGroup(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if proc.poll() is not None and not groupPids(pgid):
                break
            time.sleep(0.05)
        else:
            _signalGroup(pgid, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if proc.stdout is not None:
            proc.stdout.close()
        if proc in self._procs:
            self._procs.remove(proc)

    def stopAll(self) -> None:
        """
        Stop every process group still running, newest first.
        """
        for proc in reversed(list(self._procs)):
            self.stop(proc, grace=3.0)


def _signalGroup(pgid: int, sig: signal.Signals) -> None:
    """
    Send C{sig} to process group C{pgid} if it still exists.
    """
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _procStatFields(pid: int) -> list[str] | None:
    """
    The fields of /proc/PID/stat after the command name, or None.
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def groupPids(pgid: int) -> list[int]:
    """
    The live (non-zombie) processes of process group C{pgid}.
    """
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _procStatFields(int(entry))
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(entry))
    return pids


def groupCpuSeconds(pgid: int) -> float:
    """
    User plus system CPU seconds of the processes of group C{pgid}.
    """
    ticks = 0
    for pid in groupPids(pgid):
        fields = _procStatFields(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def coreTimes() -> dict[str, tuple[int, int]]:
    """
    Per CPU (C{"0"}, C{"1"}, ...): busy and total jiffies from /proc/stat.
    """
    times = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            jiffies = [int(v) for v in values[:8]]
            idle = jiffies[3] + jiffies[4]  # idle, iowait
            times[name[3:]] = (sum(jiffies) - idle, sum(jiffies))
    return times


def coreBusyPercent(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], cpu: str
) -> float | None:
    """
    How busy CPU C{cpu} was between two L{coreTimes} readings, in percent:
    by anything, ours or not (the machine may be shared).
    """
    if cpu not in before or cpu not in after:
        return None
    busy = after[cpu][0] - before[cpu][0]
    total = after[cpu][1] - before[cpu][1]
    return 100.0 * busy / total if total else None


def groupRssMiB(pgid: int) -> float:
    """
    The summed VmRSS of the processes of group C{pgid}, in MiB.
    """
    kib = 0
    for pid in groupPids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        if match:
            kib += int(match.group(1))
    return kib / 1024


# ---------------------------------------------------------------------------
# Small helpers.


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that is free right now.
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def waitForPort(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """
    Wait until C{port} accepts connections; raise L{RowFailed} otherwise.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RowFailed(f"exited with status {proc.returncode}")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RowFailed(f"port {port} not open after {timeout:.0f} s")


def logTail(log: Path, lines: int = 15) -> str:
    """
    The last C{lines} lines of C{log}, indented, for error messages.
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    return "".join("    " + line + "\n" for line in text.splitlines()[-lines:])


def fetch(port: int, path: str, headers: Sequence[str] = ()) -> tuple[int, bytes]:
    """
    GET C{path} from 127.0.0.1:C{port}: the status code and the body.
    """
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        hdrs = dict(h.split(": ", 1) for h in headers)
        conn.request("GET", path, headers=hdrs)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def toolVersion(argv: Sequence[str]) -> str:
    """
    The first line a tool prints about its version.
    """
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"n/a ({e})"
    lines = (result.stdout + result.stderr).strip().splitlines()
    return lines[0] if lines else "n/a"


def ratio(a: float | None, b: float | None) -> float | None:
    """
    C{a / b}, or None when either is missing or C{b} is zero.
    """
    if a is None or not b:
        return None
    return a / b


# ---------------------------------------------------------------------------
# The backend.

BACKEND_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp_body;
    proxy_temp_path {d}/tmp_proxy;
    fastcgi_temp_path {d}/tmp_fcgi;
    uwsgi_temp_path {d}/tmp_uwsgi;
    scgi_temp_path {d}/tmp_scgi;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    open_file_cache max=64;
    default_type application/octet-stream;
    server {{
        listen {host}:{port} backlog=4096;
        root {www};
        location / {{ }}
    }}
}}
"""


def writeBackendFiles(workdir: Path) -> Path:
    """
    Create the backend's document root: C{/1k}, C{/64k}, C{/1m} (pseudo-random
    bytes) and C{/1g} (a sparse file).  Readable by nginx's unprivileged worker.
    """
    www = workdir / "www"
    www.mkdir()
    for name, size in BODY_SIZES.items():
        (www / name).write_bytes(random.Random(size).randbytes(size))
    with open(www / STREAM_PATH.lstrip("/"), "wb") as f:
        f.truncate(STREAM_SIZE)
    for path in (workdir, www, *www.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return www


def startBackend(
    procs: Processes, workdir: Path, cpu: str
) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start the nginx backend on a free port; return it and its port.
    """
    d = workdir / "nginx"
    d.mkdir()
    d.chmod(0o755)
    www = writeBackendFiles(workdir)
    port = freePort()
    conf = d / "nginx.conf"
    conf.write_text(BACKEND_CONF.format(d=d, host=HOST, port=port, www=www))
    log = d / "stdout.log"
    argv = ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)]
    proc = procs.start(argv, cpu, log)
    try:
        waitForPort(port, proc, BACKEND_READY_TIMEOUT)
    except RowFailed as e:
        tail = logTail(log) + logTail(d / "error.log")
        raise BenchError(f"the nginx backend did not start: {e}\n{tail}") from None
    return proc, port


# ---------------------------------------------------------------------------
# The proxy under test.


def childEnv() -> dict[str, str]:
    """
    The proxy's environment: the checkout, if this is one, comes first on
    C{PYTHONPATH} so that the code under test is the checkout's.
    """
    env = dict(os.environ)
    if (REPO / "twisted_rproxy").is_dir():
        parts = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(":"))]
        env["PYTHONPATH"] = ":".join(parts)
    return env


def proxyArgv(template: str, port: int, backendPort: int, python: str) -> list[str]:
    """
    The proxy command line: C{template} with its placeholders filled in.
    """
    line = template.format(
        port=port,
        backend=f"http://{HOST}:{backendPort}",
        backend_port=backendPort,
        host=HOST,
        python=shlex.quote(python),
    )
    return shlex.split(line)


@dataclass
class Proxy:
    """
    A running proxy: its process, port and log file.
    """

    proc: subprocess.Popen[bytes]
    port: int
    log: Path


def startProxy(
    procs: Processes, args: argparse.Namespace, backendPort: int, logDir: Path
) -> Proxy:
    """
    Start a fresh proxy on a free port and wait (bounded) for that port.
    """
    port = freePort()
    argv = proxyArgv(args.proxy_cmd, port, backendPort, args.python)
    log = logDir / f"proxy-{port}.log"
    proc = procs.start(argv, args.proxy_cpu, log, env=childEnv(), cwd=logDir)
    try:
        waitForPort(port, proc, PROXY_READY_TIMEOUT)
    except RowFailed as e:
        procs.stop(proc)
        raise RowFailed(f"the proxy did not start: {e}\n{logTail(log)}") from None
    return Proxy(proc, port, log)


def checkBody(
    proxyPort: int, backendPort: int, path: str, headers: Sequence[str] = ()
) -> None:
    """
    Raise L{RowFailed} unless the proxy answers C{path} with status 200 and
    exactly the backend's body.
    """
    try:
        direct = fetch(backendPort, path, headers)
        proxied = fetch(proxyPort, path, headers)
    except (OSError, http.client.HTTPException) as e:
        raise RowFailed(f"correctness check of {path}: {e!r}") from None
    if direct[0] != 200:
        raise RowFailed(f"backend answered {path} with status {direct[0]}")
    if proxied[0] != 200:
        raise RowFailed(f"proxy answered {path} with status {proxied[0]}")
    if proxied[1] != direct[1]:
        raise RowFailed(
            f"proxy body of {path} differs from the backend's "
            f"({len(proxied[1])} vs {len(direct[1])} bytes)"
        )


# ---------------------------------------------------------------------------
# wrk.

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _toMs(token: str) -> float | None:
    """
    A wrk latency such as C{812.00us} or C{1.20ms} in milliseconds.
    """
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", token)
    return float(match.group(1)) * _UNITS_MS[match.group(2)] if match else None


def parseWrk(text: str) -> dict[str, Any]:
    """
    Requests/s, p50/p99 (ms), request and error counts from wrk's output.
    """
    out: dict[str, Any] = {"rps": None, "p50Ms": None, "p99Ms": None}
    match = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if match:
        out["rps"] = float(match.group(1))
    for pct, key in (("50", "p50Ms"), ("99", "p99Ms")):
        match = re.search(rf"^\s+{pct}(?:\.0+)?%\s+(\S+)", text, re.M)
        if match:
            out[key] = _toMs(match.group(1))
    match = re.search(r"(\d+) requests in", text)
    out["requests"] = int(match.group(1)) if match else None
    errors = 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), "
        r"timeout (\d+)",
        text,
    )
    if match:
        errors += sum(int(n) for n in match.groups())
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        errors += int(match.group(1))
    out["errors"] = errors
    return out


def runWrk(
    procs: Processes,
    args: argparse.Namespace,
    port: int,
    scenario: Scenario,
    duration: int,
) -> str:
    """
    Run wrk (pinned to the load CPU) for C{duration} seconds; its output.
    """
    argv = [
        "wrk",
        "-t1",
        f"-c{args.connections}",
        f"-d{duration}s",
        "--timeout",
        "5s",
        "--latency",
    ]
    for header in scenario.headers:
        argv += ["-H", header]
    if scenario.script is not None:
        argv += ["-s", scenario.script]
    argv.append(f"http://{HOST}:{port}{scenario.path}")
    proc = procs.start(argv, args.load_cpu, None, capture=True)
    try:
        out, _ = proc.communicate(timeout=duration + WRK_TIMEOUT_SLACK)
    except subprocess.TimeoutExpired:
        raise RowFailed("wrk did not finish in time") from None
    finally:
        procs.stop(proc)
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise RowFailed(f"wrk exited with status {proc.returncode}: {text.strip()}")
    return text


def measureLoad(
    procs: Processes,
    args: argparse.Namespace,
    scenario: Scenario,
    target: str,
    port: int,
    proxyPgid: int | None,
) -> LoadRow:
    """
    Warm up, then one timed wrk run against C{port}; the proxy's CPU time is
    read from /proc around the timed run only.
    """
    if args.warmup > 0:
        runWrk(procs, args, port, scenario, args.warmup)
    cpu0 = groupCpuSeconds(proxyPgid) if proxyPgid else 0.0
    cores0 = coreTimes()
    started = time.monotonic()
    text = runWrk(procs, args, port, scenario, args.duration)
    wall = time.monotonic() - started
    cores1 = coreTimes()
    row = LoadRow(scenario.name, target, **parseWrk(text))
    if row.rps is None or not row.requests:
        raise RowFailed(f"no requests completed: {text.strip()}")
    row.proxyCoreBusyPercent = coreBusyPercent(cores0, cores1, args.proxy_cpu)
    row.loadCoreBusyPercent = coreBusyPercent(cores0, cores1, args.load_cpu)
    if proxyPgid:
        cpu = groupCpuSeconds(proxyPgid) - cpu0
        row.proxyCpuSeconds = cpu
        row.proxyCpuUsPerRequest = cpu / row.requests * 1e6
        row.proxyCpuPercent = 100.0 * cpu / wall
    return row


def runLoadScenario(
    procs: Processes, args: argparse.Namespace, scenario: Scenario, backendPort: int
) -> list[LoadRow]:
    """
    One scenario: a C{direct} row, then a C{proxy} row on a fresh proxy.
    """
    rows = []
    try:
        rows.append(measureLoad(procs, args, scenario, "direct", backendPort, None))
    except RowFailed as e:
        rows.append(LoadRow(scenario.name, "direct", status=f"failed: {e}"))
    try:
        proxyRow = _proxyLoadRow(procs, args, scenario, backendPort)
    except RowFailed as e:
        proxyRow = LoadRow(scenario.name, "proxy", status=f"failed: {e}")
    _addRatios(proxyRow, rows[0])
    rows.append(proxyRow)
    return rows


def _proxyLoadRow(
    procs: Processes, args: argparse.Namespace, scenario: Scenario, backendPort: int
) -> LoadRow:
    """
    Start a proxy, check its bodies, measure it, stop it.
    """
    proxy = startProxy(procs, args, backendPort, args.workdir)
    try:
        checkBody(proxy.port, backendPort, scenario.path, scenario.headers)
        return measureLoad(procs, args, scenario, "proxy", proxy.port, proxy.proc.pid)
    finally:
        procs.stop(proxy.proc)


def _addRatios(row: LoadRow, direct: LoadRow) -> None:
    """
    Fill C{row.ratios} with proxy ÷ direct for req/s, p50 and p99.
    """
    for key in ("rps", "p50Ms", "p99Ms"):
        value = ratio(getattr(row, key), getattr(direct, key))
        if value is not None:
            row.ratios[key] = value


# ---------------------------------------------------------------------------
# The 1 GiB stream.


def runCurl(
    procs: Processes, args: argparse.Namespace, port: int
) -> subprocess.Popen[bytes]:
    """
    Start curl downloading C{/1g} from C{port} to /dev/null (no rate limit).
    """
    argv = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        str(args.stream_timeout),
        "-w",
        "%{http_code} %{size_download} %{time_total}",
        f"http://{HOST}:{port}{STREAM_PATH}",
    ]
    return procs.start(argv, args.load_cpu, None, capture=True)


def sampleRss(
    proc: subprocess.Popen[bytes], pgid: int, limitMiB: float, timeout: float
) -> tuple[list[float], str | None]:
    """
    Sample group C{pgid}'s RSS every 0.2 s while C{proc} runs (bounded by
    C{timeout}); the samples, and why sampling stopped early if it did.
    """
    samples: list[float] = []
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        rss = groupRssMiB(pgid)
        samples.append(rss)
        if rss > limitMiB:
            return samples, f"proxy RSS {rss:.0f} MiB > --rss-limit {limitMiB:.0f}"
        if time.monotonic() > deadline:
            return samples, "download did not finish in time"
        time.sleep(RSS_SAMPLE_INTERVAL)
    return samples, None


def finishCurl(procs: Processes, proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """
    Collect curl's result: the bytes received and the seconds taken.
    """
    try:
        out, _ = proc.communicate(timeout=10)
    finally:
        procs.stop(proc)
    text = out.decode(errors="replace").strip()
    parts = text.split()
    if proc.returncode != 0 or len(parts) < 3 or parts[0] != "200":
        raise RowFailed(f"curl status {proc.returncode}: {text}")
    received, seconds = int(parts[-2]), float(parts[-1])
    if received != STREAM_SIZE:
        raise RowFailed(f"received {received} of {STREAM_SIZE} bytes")
    return received, seconds


def streamOnce(
    procs: Processes, args: argparse.Namespace, port: int, pgid: int | None
) -> StreamRow:
    """
    Download the 1 GiB file from C{port}; with C{pgid}, sample its memory.
    """
    row = StreamRow(STREAM_SCENARIO, "proxy" if pgid else "direct")
    samples: list[float] = []
    cpu0 = 0.0
    if pgid:
        time.sleep(0.5)
        row.rssBeforeMiB = groupRssMiB(pgid)
        cpu0 = groupCpuSeconds(pgid)
    proc = runCurl(procs, args, port)
    if pgid:
        samples, stopped = sampleRss(
            proc, pgid, args.rss_limit, args.stream_timeout + 5
        )
        if stopped:
            procs.stop(proc)
            raise RowFailed(stopped)
    row.bytes, row.seconds = finishCurl(procs, proc)
    row.mbPerSecond = row.bytes / MIB / row.seconds if row.seconds else None
    if pgid:
        row.proxyCpuSeconds = groupCpuSeconds(pgid) - cpu0
        samples.append(groupRssMiB(pgid))
        row.rssSamples = len(samples)
        row.rssPeakMiB = max(samples)
        row.rssGrowthMiB = row.rssPeakMiB - (row.rssBeforeMiB or 0.0)
        time.sleep(1.0)
        row.rssAfterMiB = groupRssMiB(pgid)
    return row


def runStreamScenario(
    procs: Processes, args: argparse.Namespace, backendPort: int
) -> list[StreamRow]:
    """
    The memory scenario: 1 GiB direct (throughput baseline), then through a
    fresh proxy while sampling its RSS.
    """
    rows = []
    try:
        rows.append(streamOnce(procs, args, backendPort, None))
    except RowFailed as e:
        rows.append(StreamRow(STREAM_SCENARIO, "direct", status=f"failed: {e}"))
    try:
        proxy = startProxy(procs, args, backendPort, args.workdir)
        try:
            checkBody(proxy.port, backendPort, "/1m")
            proxyRow = streamOnce(procs, args, proxy.port, proxy.proc.pid)
        finally:
            procs.stop(proxy.proc)
    except RowFailed as e:
        proxyRow = StreamRow(STREAM_SCENARIO, "proxy", status=f"failed: {e}")
    value = ratio(proxyRow.mbPerSecond, rows[0].mbPerSecond)
    if value is not None:
        proxyRow.ratios["mbPerSecond"] = value
    rows.append(proxyRow)
    return rows


# ---------------------------------------------------------------------------
# Reports.


def _fmt(value: float | None, digits: int = 0) -> str:
    """
    A number for the table, or an em dash when missing.
    """
    return "—" if value is None else f"{value:,.{digits}f}"


def _statusCell(status: str) -> str:
    """
    A row's status as one Markdown table cell line.
    """
    return status.splitlines()[0].replace("|", "\\|")


def loadTable(rows: Sequence[LoadRow]) -> list[str]:
    """
    The wrk results as Markdown table lines.
    """
    lines = [
        "| scenario | target | req/s | p50 ms | p99 ms | errors "
        "| proxy µs CPU/req | proxy CPU % | proxy core busy % | load core busy % "
        "| req/s ÷ direct | p50 ÷ direct | p99 ÷ direct |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r.status != "ok":
            cells = [r.scenario, r.target, _statusCell(r.status)] + [""] * 10
        else:
            cells = [
                r.scenario,
                r.target,
                _fmt(r.rps),
                _fmt(r.p50Ms, 2),
                _fmt(r.p99Ms, 2),
                _fmt(r.errors),
                _fmt(r.proxyCpuUsPerRequest),
                _fmt(r.proxyCpuPercent),
                _fmt(r.proxyCoreBusyPercent),
                _fmt(r.loadCoreBusyPercent),
                _fmt(r.ratios.get("rps"), 2),
                _fmt(r.ratios.get("p50Ms"), 2),
                _fmt(r.ratios.get("p99Ms"), 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def streamTable(rows: Sequence[StreamRow]) -> list[str]:
    """
    The 1 GiB stream results as Markdown table lines.
    """
    lines = [
        "| scenario | target | MiB/s | ÷ direct | RSS before MiB | RSS peak MiB "
        "| RSS growth MiB | RSS after MiB | proxy CPU s |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r.status != "ok":
            cells = [r.scenario, r.target, _statusCell(r.status)] + [""] * 6
        else:
            cells = [
                r.scenario,
                r.target,
                _fmt(r.mbPerSecond),
                _fmt(r.ratios.get("mbPerSecond"), 2),
                _fmt(r.rssBeforeMiB, 1),
                _fmt(r.rssPeakMiB, 1),
                _fmt(r.rssGrowthMiB, 1),
                _fmt(r.rssAfterMiB, 1),
                _fmt(r.proxyCpuSeconds, 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(
    meta: dict[str, Any], loads: list[LoadRow], streams: list[StreamRow]
) -> str:
    """
    The whole report as Markdown.
    """
    lines = ["# twisted_rproxy benchmark", ""]
    lines += [f"- {key}: `{value}`" for key, value in meta.items()]
    if loads:
        lines += ["", *loadTable(loads)]
    if streams:
        lines += ["", *streamTable(streams)]
    rows: list[LoadRow | StreamRow] = [*loads, *streams]
    failures = [r for r in rows if r.status != "ok"]
    for r in failures:
        first, *rest = r.status.splitlines()
        lines += ["", f"**{r.scenario} / {r.target}**: {first}"]
        if rest:
            lines += ["", "```text", *rest, "```"]
    return "\n".join(lines) + "\n"


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    """
    What was measured, with what, and where.
    """
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "host": f"{platform.node()} ({platform.platform()}, {os.cpu_count()} CPUs)",
        "python": f"{args.python} ({toolVersion([args.python, '--version'])})",
        "nginx": toolVersion(["nginx", "-v"]),
        "wrk": toolVersion(["wrk", "-v"]),
        "load": f"wrk -t1 -c{args.connections} -d{args.duration}s --latency "
        f"(+{args.warmup} s warm-up), CPU {args.load_cpu} with the backend",
        "proxy": f"{args.proxy_cmd} (CPU {args.proxy_cpu})",
    }


# ---------------------------------------------------------------------------
# Command line and checks.


def addLoadOptions(p: argparse.ArgumentParser) -> None:
    """
    The wrk options of C{run.py} and C{static.py}: C{--duration},
    C{--warmup}, C{--quick} and C{--connections} (see L{resolveLoadOptions}).
    """
    p.add_argument(
        "--duration",
        type=int,
        default=None,
        help="seconds per timed wrk run (default 10; 3 with --quick)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="seconds of wrk warm-up before each timed run "
        "(default 2; 1 with --quick; 0: none)",
    )
    p.add_argument("--quick", action="store_true", help="short runs (3 s)")
    p.add_argument(
        "--connections", type=int, default=50, help="wrk connections (default 50)"
    )


def resolveLoadOptions(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """
    Fill in the defaults that depend on C{--quick}, and refuse impossible values.
    """
    if args.duration is None:
        args.duration = 3 if args.quick else 10
    if args.warmup is None:
        args.warmup = 1 if args.quick else 2
    if args.duration < 1 or args.connections < 1 or args.warmup < 0:
        p.error("--duration and --connections must be at least 1, --warmup 0")


def scenarioParser(description: str) -> argparse.ArgumentParser:
    """
    The options the other benchmarks in this folder share: timed-run and
    warm-up seconds, wrk connections, the two CPUs, and the Python that runs
    the proxy.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--proxy-cpu", default="1")
    parser.add_argument("--load-cpu", default="0")
    parser.add_argument("--python", default=sys.executable)
    return parser


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command-line options.
    """
    p = argparse.ArgumentParser(
        description="Benchmark twisted_rproxy beside direct access to an "
        "nginx backend (loopback only)."
    )
    addLoadOptions(p)
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="comma-separated, from: "
        + ", ".join(ALL_SCENARIOS)
        + " (default: %(default)s)",
    )
    p.add_argument(
        "--proxy-cmd",
        default=DEFAULT_PROXY_CMD,
        help="command starting the proxy in the foreground; "
        "placeholders {port} {backend} {backend_port} {host} {python} "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the Python for {python} (default: this one)",
    )
    p.add_argument("--proxy-cpu", default="1", help="CPU for the proxy (1)")
    p.add_argument(
        "--load-cpu", default="0", help="CPU for the backend and the load generator (0)"
    )
    p.add_argument(
        "--stream-timeout",
        type=int,
        default=300,
        help="seconds the 1 GiB download may take (300)",
    )
    p.add_argument(
        "--rss-limit",
        type=float,
        default=4096,
        help="abort the 1 GiB download if the proxy's RSS passes this many MiB (4096)",
    )
    p.add_argument("--json-out", type=Path, help="write the results as JSON")
    p.add_argument("--md-out", type=Path, help="write the Markdown report")
    args = p.parse_args(argv)
    resolveLoadOptions(p, args)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(args.scenarios) - set(ALL_SCENARIOS))
    if unknown:
        p.error(
            f"unknown scenario(s) {', '.join(unknown)}; "
            f"choose from {', '.join(ALL_SCENARIOS)}"
        )
    return args


def checkRequirements(args: argparse.Namespace) -> None:
    """
    Raise L{BenchError} with a clear message if something needed is missing.
    """
    tools = ["nginx", "wrk", "taskset"]
    if STREAM_SCENARIO in args.scenarios:
        tools.append("curl")
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(
            f"missing on PATH: {', '.join(missing)} (Debian/Ubuntu: "
            f"apt-get install nginx wrk curl util-linux)"
        )
    allowed = os.sched_getaffinity(0)
    for option, cpu in (("--proxy-cpu", args.proxy_cpu), ("--load-cpu", args.load_cpu)):
        if not cpu.isdigit() or int(cpu) not in allowed:
            raise BenchError(
                f"{option} {cpu}: not an available CPU (available: "
                f"{sorted(allowed)}); this benchmark wants 2 CPUs, or set "
                "--proxy-cpu/--load-cpu"
            )
    if args.proxy_cmd == DEFAULT_PROXY_CMD:
        _checkImportable(args.python)


def _checkImportable(python: str) -> None:
    """
    Raise L{BenchError} unless C{python} can import twisted and the project.
    """
    code = "import twisted, twisted_rproxy, twisted.plugins.rproxy_plugin"
    try:
        result = subprocess.run(
            [python, "-c", code],
            env=childEnv(),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"cannot run {python}: {e}") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchError(
            f"{python} cannot import twisted_rproxy ({last}). Install the "
            "project (pip install .) or run this script from a checkout, or "
            "give --python / --proxy-cmd."
        )


# ---------------------------------------------------------------------------
# Main.


def _onSignal(signum: int, frame: FrameType | None) -> None:
    """
    Turn SIGTERM/SIGHUP into a normal exit so that cleanup runs.
    """
    raise SystemExit(128 + signum)


def runAll(
    args: argparse.Namespace, procs: Processes
) -> tuple[list[LoadRow], list[StreamRow]]:
    """
    Start the backend, then run every chosen scenario in order.
    """
    _backend, backendPort = startBackend(procs, args.workdir, args.load_cpu)
    loads: list[LoadRow] = []
    streams: list[StreamRow] = []
    for name in args.scenarios:
        print(f"-- {name}", file=sys.stderr, flush=True)
        if name == STREAM_SCENARIO:
            streams += runStreamScenario(procs, args, backendPort)
        else:
            loads += runLoadScenario(procs, args, LOAD_SCENARIOS[name], backendPort)
        for row in (loads + streams)[-2:]:
            print(
                f"   {row.target}: {row.status.splitlines()[0]}",
                file=sys.stderr,
                flush=True,
            )
    return loads, streams


def writeOutputs(
    args: argparse.Namespace,
    meta: dict[str, Any],
    loads: list[LoadRow],
    streams: list[StreamRow],
) -> None:
    """
    Print the Markdown report and write the requested files.
    """
    report = markdown(meta, loads, streams)
    print(report)
    if args.md_out:
        args.md_out.write_text(report)
    if args.json_out:
        data = {
            "meta": meta,
            "load": [asdict(r) for r in loads],
            "stream": [asdict(r) for r in streams],
        }
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")


@dataclass
class _Session:
    """
    The things to clean up at the end: processes and the work directory.
    """

    procs: Processes = field(default_factory=Processes)
    workdir: Path | None = None

    def close(self) -> None:
        """
        Stop every process started and remove the work directory.
        """
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        self.procs.stopAll()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark; the exit status.
    """
    args = parseArgs(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _onSignal)
    session = _Session()
    try:
        checkRequirements(args)
        session.workdir = args.workdir = Path(tempfile.mkdtemp(prefix="rproxy-bench-"))
        meta = metadata(args)
        loads, streams = runAll(args, session.procs)
        writeOutputs(args, meta, loads, streams)
    except BenchError as e:
        print(f"benchmarks/run.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        session.close()
    rows: list[LoadRow | StreamRow] = [*loads, *streams]
    failed = any(r.status != "ok" for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
