#!/usr/bin/env python3
"""
Soak: many keep-alive requests through one small pool, with clients that
abort large downloads and a backend restart half way, then what the pool
has left over once the load has stopped.

Written for the issue "connection-slot leak wedges every pool after
~256,000 requests": a connection slot that is not given back is invisible
in a short test, but after enough requests every slot is gone and the pool
answers only 503s.  This script prints what a leak looks like: requests/s
falling to nothing, and C{inFlight} or C{pending} counters that stay above
zero after the load has stopped.

    python benchmarks/soak.py                       # 1,000,000 requests
    python benchmarks/soak.py --requests 30000 --max-seconds 120

1. Starts nginx on 127.0.0.1 (its own prefix, 1 worker, access log off,
   C{keepalive_requests 100}, so that it closes every backend connection
   after 100 requests) serving C{/1k} (1 KiB) and C{/4m} (4 MiB).
2. Starts the real C{twistd -n --pidfile= rproxy --config FILE}: one pool
   with that backend and C{max_connections = 16}, and the admin listener,
   whose C{/status.json} gives the pool's counters.
3. Runs wrk (keep-alive, C{/1k}) in slices of at most C{--slice} seconds
   until C{--requests} requests completed or C{--max-seconds} passed, one
   line per slice; meanwhile C{--aborters} threads download C{/4m} through
   the proxy and close their socket before the end (before the response,
   after its head, or part way through the body; half of them with a
   reset), and once, at about half way, nginx is stopped by its process
   group id and started again on the same port a second later.
4. After the load, a settle (C{--settle} seconds), prints the pool's
   counters from C{/status.json}, a probe request, and a verdict.

Exit status: 0 when every C{inFlight} and C{pending} counter is zero at the
end; 1 when one is not, when the proxy died, or when the last slice served
(almost) nothing (a wedged pool); 2 when a requirement is missing or the
set-up failed; 130 on Ctrl-C.

Same requirements and safety as C{benchmarks/run.py}, whose helpers this
script uses: nginx, wrk and taskset; loopback only; every wrk run bounded
by its C{-d}, the aborters by a count and a deadline; only the process
groups this script started are stopped, on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402  (benchmarks/run.py, beside this file)

HOST = run.HOST
SMALL_PATH = "/1k"
SMALL_SIZE = 1024
LARGE_PATH = "/4m"
LARGE_SIZE = 4 * run.MIB
#: The most of C{/4m} an aborter reads before it closes: well short of the
#: end, so that the proxy is still sending when the client goes.
ABORT_MAX_READ = run.MIB
#: The first slice is short: the later ones are sized from its rate.
FIRST_SLICE = 3
#: The slice with the backend restart lasts at least this long, to hold the
#: stop, the downtime and the start.
RESTART_SLICE = 5
#: Seconds into its slice the restart begins, at most.
RESTART_DELAY = 2.0
ABORTER_SOCKET_TIMEOUT = 15.0
STATUS_TIMEOUT = 5.0
#: The last slice is "wedged" below this share of the best slice's rate.
WEDGED_SHARE = 0.05

#: run.py's nginx configuration, with a small C{keepalive_requests}: nginx
#: closes each backend connection after that many requests, so that the
#: proxy retires reused connections all the time.
BACKEND_CONF, _replaced = re.subn(
    r"keepalive_requests \d+;",
    "keepalive_requests {keepaliveRequests};",
    run.BACKEND_CONF,
)
if _replaced != 1:
    raise RuntimeError("run.BACKEND_CONF has no keepalive_requests line to set")

PROXY_CONF = """\
[server]
listen = ["tcp:{port}:interface={host}"]

[pools.app]
servers = ["http://{host}:{backendPort}"]
max_connections = {maxConnections}
pending_timeout = "{pendingTimeout}s"

[[routes]]
path = "/"
pool = "app"

[admin]
listen = ["tcp:{adminPort}:interface={host}"]
"""


class SetupFailed(Exception):
    """
    The soak could not start (exit status 2), with a message for the user.
    """


# ---------------------------------------------------------------------------
# Results.


@dataclass
class Slice:
    """
    One wrk run of the soak, and the proxy's state just after it.
    """

    index: int
    elapsed: float
    seconds: int
    requests: int = 0
    ok: int = 0
    non2xx: int = 0
    socketErrors: int = 0
    rps: float | None = None
    p99Ms: float | None = None
    inFlight: int | None = None
    pending: int | None = None
    idle: int | None = None
    rssMiB: float | None = None
    fds: int | None = None
    note: str = ""


@dataclass
class Resources:
    """
    The proxy process's resident memory and open file descriptors.
    """

    rssMiB: float | None
    fds: int | None


def proxyResources(pid: int) -> Resources:
    """
    VmRSS (from C{/proc/PID/status}) and the number of entries of
    C{/proc/PID/fd} of process C{pid}; L{None} for what cannot be read.
    """
    rss = None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        status = ""
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    if match:
        rss = int(match.group(1)) / 1024
    try:
        fds: int | None = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = None
    return Resources(rss, fds)


def parseSlice(text: str) -> dict[str, Any]:
    """
    What a slice needs from wrk's output: requests, 2xx/3xx answers,
    non-2xx/3xx answers, socket errors, req/s and p99 (ms).
    """
    parsed = run.parseWrk(text)
    non2xx = 0
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if match:
        non2xx = int(match.group(1))
    requests = parsed["requests"] or 0
    return {
        "requests": requests,
        "ok": max(requests - non2xx, 0),
        "non2xx": non2xx,
        "socketErrors": max(parsed["errors"] - non2xx, 0),
        "rps": parsed["rps"],
        "p99Ms": parsed["p99Ms"],
    }


# ---------------------------------------------------------------------------
# The admin listener's /status.json.


def fetchStatus(adminPort: int) -> dict[str, Any]:
    """
    The proxy's C{/status.json}.

    @raise OSError: When the admin listener does not answer.
    @raise ValueError: When it answers something other than JSON.
    """
    conn = http.client.HTTPConnection(HOST, adminPort, timeout=STATUS_TIMEOUT)
    try:
        conn.request("GET", "/status.json")
        response = conn.getresponse()
        body = response.read()
    except http.client.HTTPException as e:
        raise OSError(f"admin listener: {e!r}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise OSError(f"admin listener answered {response.status}")
    data: dict[str, Any] = json.loads(body)
    return data


def poolTotals(status: dict[str, Any]) -> tuple[int, int, int]:
    """
    The sums over every pool and server of C{inFlight}, C{pending} and
    C{idleConnections}.
    """
    inFlight = pending = idle = 0
    for pool in status.get("pools", []):
        pending += pool.get("pending", 0)
        for server in pool.get("servers", []):
            inFlight += server.get("inFlight", 0)
            idle += server.get("idleConnections", 0)
    return inFlight, pending, idle


def leftovers(status: dict[str, Any]) -> list[str]:
    """
    Every non-zero C{inFlight}, C{pending} (and C{busy} or C{connecting},
    should the status show them) counter, described; empty when the pools
    are at rest.
    """
    found = []
    for pool in status.get("pools", []):
        name = pool.get("name", "?")
        if pool.get("pending"):
            found.append(f"pool {name}: pending {pool['pending']}")
        for server in pool.get("servers", []):
            for key in ("inFlight", "busy", "connecting"):
                if server.get(key):
                    found.append(
                        f"pool {name} {server.get('url')}: {key} {server[key]}"
                    )
    return found


def describePools(status: dict[str, Any]) -> list[str]:
    """
    The pools' counters, as lines for the report.
    """
    lines = []
    for pool in status.get("pools", []):
        lines.append(
            f"  pool {pool.get('name')}: pending {pool.get('pending')}, "
            f"requests {pool.get('requests'):,}, retries {pool.get('retries')}, "
            f"retries refused {pool.get('retriesRefused')}, "
            f"panic {pool.get('panic')}"
        )
        for server in pool.get("servers", []):
            extra = "".join(
                f", {key} {server[key]}"
                for key in ("busy", "connecting")
                if key in server
            )
            lines.append(
                f"    {server.get('url')} {server.get('state')}: "
                f"inFlight {server.get('inFlight')}, "
                f"idle {server.get('idleConnections')}{extra}, "
                f"requests {server.get('requests'):,}, "
                f"failures {server.get('failures'):,}"
            )
    return lines


# ---------------------------------------------------------------------------
# The backend, restartable on the same port.


def writeDocuments(workdir: Path) -> Path:
    """
    Create the backend's document root: C{/1k} and C{/4m}, pseudo-random,
    readable by nginx's unprivileged worker.
    """
    www = workdir / "www"
    www.mkdir()
    for name, size in ((SMALL_PATH, SMALL_SIZE), (LARGE_PATH, LARGE_SIZE)):
        (www / name.lstrip("/")).write_bytes(random.Random(size).randbytes(size))
    for path in (workdir, www, *www.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return www


class BackendServer:
    """
    The nginx backend: started, stopped and started again on one port.

    @ivar port: The port it listens on.
    @ivar restarts: When it was stopped and when started again, for each
        restart (C{time.monotonic()}).
    """

    def __init__(
        self,
        procs: run.Processes,
        workdir: Path,
        port: int,
        cpu: str,
        keepaliveRequests: int,
    ) -> None:
        self.port = port
        self.restarts: list[tuple[float, float]] = []
        self._procs = procs
        self._cpu = cpu
        self._dir = workdir / "nginx"
        self._dir.mkdir()
        self._dir.chmod(0o755)
        www = writeDocuments(workdir)
        conf = self._dir / "nginx.conf"
        conf.write_text(
            BACKEND_CONF.format(
                d=self._dir,
                host=HOST,
                port=port,
                www=www,
                keepaliveRequests=keepaliveRequests,
            )
        )
        self._argv = [
            "nginx",
            "-e",
            str(self._dir / "error.log"),
            "-p",
            str(self._dir),
            "-c",
            str(conf),
        ]
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._restarter: threading.Thread | None = None

    def start(self) -> None:
        """
        Start nginx and wait (bounded) for its port.

        @raise SetupFailed: When it does not open its port.
        """
        log = self._dir / "stdout.log"
        proc = self._procs.start(self._argv, self._cpu, log)
        self._proc = proc
        try:
            run.waitForPort(self.port, proc, run.BACKEND_READY_TIMEOUT)
        except run.RowFailed as e:
            tail = run.logTail(log) + run.logTail(self._dir / "error.log")
            raise SetupFailed(f"nginx did not start: {e}\n{tail}") from None

    def restartLater(self, delay: float, downtime: float = 1.0) -> None:
        """
        In a thread: after C{delay} seconds, stop nginx by its process group
        id, wait C{downtime} seconds, and start it again on the same port.
        """
        thread = threading.Thread(
            target=self._restart, args=(delay, downtime), daemon=True
        )
        self._restarter = thread
        thread.start()

    def _restart(self, delay: float, downtime: float) -> None:
        if self._closing.wait(delay):
            return
        with self._lock:
            if self._closing.is_set() or self._proc is None:
                return
            self._procs.stop(self._proc)
            self._proc = None
            stopped = time.monotonic()
        if self._closing.wait(downtime):
            return
        with self._lock:
            if self._closing.is_set():
                return
            try:
                self.start()
            except SetupFailed as e:
                print(f"soak: backend restart failed: {e}", file=sys.stderr)
                return
            self.restarts.append((stopped, time.monotonic()))

    def waitForRestart(self, timeout: float) -> None:
        """
        Wait (at most C{timeout} seconds) for a restart under way to end.
        """
        if self._restarter is not None:
            self._restarter.join(timeout)

    def close(self) -> None:
        """
        Cancel a pending restart (the process itself is stopped with the
        others by L{run.Processes.stopAll}).
        """
        self._closing.set()
        self.waitForRestart(10.0)


# ---------------------------------------------------------------------------
# Aborting clients.


class Aborters:
    """
    Threads that each download C{/4m} through the proxy, over and over, and
    close the socket before the end of the response.

    Bounded by C{maxAborts} downloads in all and by C{deadline}
    (C{time.monotonic()}), and stopped by L{stop}.

    @ivar outcomes: How the downloads ended: C{"before response"},
        C{"after head"}, C{"mid-body"} (the aborts), C{"status NNN"} (an
        answer other than 200, not counted as an abort) or an error.
    """

    def __init__(
        self, port: int, count: int, maxAborts: int, deadline: float, pause: float
    ) -> None:
        self.outcomes: Counter[str] = Counter()
        self._port = port
        self._count = count
        self._maxAborts = maxAborts
        self._deadline = deadline
        self._pause = pause
        self._started = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """
        Start the threads.
        """
        for index in range(self._count):
            thread = threading.Thread(target=self._loop, args=(index,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 20.0) -> None:
        """
        Stop the threads; wait for them at most C{timeout} seconds in all.
        """
        self._stopping.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(deadline - time.monotonic(), 0.0))

    @property
    def aborted(self) -> int:
        """
        Downloads closed by the client before their end.
        """
        with self._lock:
            return sum(
                self.outcomes[key]
                for key in ("before response", "after head", "mid-body")
            )

    def _take(self) -> bool:
        with self._lock:
            if self._started >= self._maxAborts:
                return False
            self._started += 1
            return True

    def _loop(self, index: int) -> None:
        rng = random.Random(index)
        while (
            not self._stopping.is_set()
            and time.monotonic() < self._deadline
            and self._take()
        ):
            try:
                outcome = self._abortOnce(rng)
            except OSError as e:
                outcome = f"error: {type(e).__name__}"
            with self._lock:
                self.outcomes[outcome] += 1
            self._stopping.wait(rng.uniform(0, 2 * self._pause))

    def _abortOnce(self, rng: random.Random) -> str:
        """
        One download of C{/4m}, closed before its end; how it ended.
        """
        mode = rng.random()
        sock = socket.create_connection(
            (HOST, self._port), timeout=ABORTER_SOCKET_TIMEOUT
        )
        try:
            sock.sendall(
                f"GET {LARGE_PATH} HTTP/1.1\r\nHost: soak\r\n\r\n".encode("ascii")
            )
            if mode < 0.1:
                return "before response"
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("closed before the response head")
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            statusLine = head.split(b"\r\n", 1)[0].split(b" ")
            status = statusLine[1].decode("ascii", "replace") if statusLine[1:] else "?"
            if status != "200":
                return f"status {status}"
            if mode < 0.3:
                return "after head"
            want = rng.randint(1, ABORT_MAX_READ)
            got = len(body)
            while got < want:
                chunk = sock.recv(min(65536, want - got))
                if not chunk:
                    raise ConnectionResetError("closed mid-body")
                got += len(chunk)
            return "mid-body"
        finally:
            if rng.random() < 0.5:
                # A reset instead of a FIN: the other way clients vanish.
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            sock.close()


# ---------------------------------------------------------------------------
# The proxy.


def defaultTwistd() -> str | None:
    """
    The C{twistd} beside this Python, or else the one on C{PATH}.
    """
    beside = Path(sys.executable).parent / "twistd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("twistd")


def startProxy(
    procs: run.Processes,
    args: argparse.Namespace,
    workdir: Path,
    ports: tuple[int, int, int],
) -> subprocess.Popen[bytes]:
    """
    Write the proxy's configuration and start C{twistd -n rproxy} on it;
    wait (bounded) for its listener and its admin listener.

    @raise SetupFailed: When it does not open both ports.
    """
    port, adminPort, backendPort = ports
    config = workdir / "rproxy.toml"
    config.write_text(
        PROXY_CONF.format(
            host=HOST,
            port=port,
            adminPort=adminPort,
            backendPort=backendPort,
            maxConnections=args.max_connections,
            pendingTimeout=args.pending_timeout,
        )
    )
    argv = [args.twistd, "-n", "--pidfile=", "rproxy", "--config", str(config)]
    log = workdir / "proxy.log"
    proc = procs.start(argv, args.proxy_cpu, log, env=run.childEnv(), cwd=workdir)
    try:
        for each in (port, adminPort):
            run.waitForPort(each, proc, run.PROXY_READY_TIMEOUT)
    except run.RowFailed as e:
        raise SetupFailed(f"the proxy did not start: {e}\n{run.logTail(log)}") from None
    return proc


# ---------------------------------------------------------------------------
# The soak.


def sliceSeconds(
    args: argparse.Namespace, completed: int, elapsed: float, rate: float | None
) -> int:
    """
    How long the next wrk run lasts: C{--slice} seconds at most, no longer
    than the time left, and, once a rate is known, about as long as the
    requests left need.
    """
    seconds = float(min(args.slice, FIRST_SLICE) if rate is None else args.slice)
    if rate:
        seconds = min(seconds, (args.requests - completed) / rate * 1.05)
    seconds = min(seconds, args.max_seconds - elapsed)
    return max(1, int(math.ceil(seconds)))


@dataclass
class Soak:
    """
    Everything one soak run measured.
    """

    settings: dict[str, Any]
    slices: list[Slice] = field(default_factory=list)
    start: Resources | None = None
    end: Resources | None = None
    seconds: float = 0.0
    aborts: dict[str, int] = field(default_factory=dict)
    backendRestarts: list[tuple[float, float]] = field(default_factory=list)
    pools: list[dict[str, Any]] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    probe: str = ""
    proxyDied: bool = False
    wedged: bool = False
    problems: list[str] = field(default_factory=list)


def printSlice(s: Slice) -> None:
    """
    Print one slice's line of the report.
    """

    def num(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    print(
        f"{s.elapsed:8.1f} {s.requests:>10,} {num(s.rps):>8} {num(s.p99Ms, 1):>8} "
        f"{s.non2xx:>8,} {s.socketErrors:>8,} {num(s.inFlight):>8} "
        f"{num(s.pending):>7} {num(s.idle):>5} {num(s.rssMiB, 1):>8} "
        f"{num(s.fds):>5}  {s.note}",
        flush=True,
    )


def runLoad(
    args: argparse.Namespace,
    procs: run.Processes,
    soak: Soak,
    proxy: subprocess.Popen[bytes],
    proxyPort: int,
    adminPort: int,
    backend: BackendServer,
) -> float:
    """
    The wrk slices, with the backend restart at about half way; when they
    started (C{time.monotonic()}).

    The load goes on until C{--requests} completed and one slice ran after
    the restart's, or until C{--max-seconds} passed.
    """
    scenario = run.Scenario("soak", SMALL_PATH)
    print(
        f"{'elapsed':>8} {'requests':>10} {'req/s':>8} {'p99 ms':>8} "
        f"{'non-2xx':>8} {'sockerr':>8} {'inFlight':>8} {'pending':>7} "
        f"{'idle':>5} {'RSS MiB':>8} {'fds':>5}  note",
        flush=True,
    )
    started = time.monotonic()
    completed = 0
    rate: float | None = None
    restartPlanned = False
    slicesAfterRestart = 0
    while completed < args.requests or slicesAfterRestart < 1:
        elapsed = time.monotonic() - started
        if elapsed >= args.max_seconds:
            break
        if proxy.poll() is not None:
            soak.proxyDied = True
            break
        seconds = sliceSeconds(args, completed, elapsed, rate)
        half = args.requests / 2
        if restartPlanned:
            slicesAfterRestart += 1
            if completed >= args.requests:
                # Only there to see the pool serve after the restart.
                seconds = max(seconds, FIRST_SLICE)
        elif (
            completed >= half
            or (rate is not None and completed + rate * seconds >= half)
            or elapsed + seconds >= args.max_seconds / 2
        ):
            restartPlanned = True
            seconds = max(seconds, RESTART_SLICE)
            # Near the moment the half-way mark is expected to be crossed.
            offset = (half - completed) / rate if rate else 0.0
            delay = min(max(offset, 0.5), RESTART_DELAY, seconds / 3)
            backend.restartLater(delay)
        piece = Slice(len(soak.slices) + 1, 0.0, seconds)
        if restartPlanned and not slicesAfterRestart:
            piece.note = "backend restart"
        try:
            text = run.runWrk(procs, args, proxyPort, scenario, seconds)
        except run.RowFailed as e:
            piece.note = (piece.note + "; " if piece.note else "") + f"wrk: {e}"
        else:
            for key, value in parseSlice(text).items():
                setattr(piece, key, value)
        completed += piece.requests
        piece.elapsed = time.monotonic() - started
        if piece.ok and piece.rps:
            rate = max(piece.requests / seconds, 1.0)
        try:
            piece.inFlight, piece.pending, piece.idle = poolTotals(
                fetchStatus(adminPort)
            )
        except (OSError, ValueError) as e:
            piece.note = (piece.note + "; " if piece.note else "") + f"status: {e}"
        resources = proxyResources(proxy.pid)
        piece.rssMiB, piece.fds = resources.rssMiB, resources.fds
        soak.slices.append(piece)
        printSlice(piece)
    soak.seconds = time.monotonic() - started
    if proxy.poll() is not None:
        soak.proxyDied = True
    return started


def probe(port: int, timeout: float) -> str:
    """
    One C{GET /1k} through the proxy: its status (or error) and duration.
    """
    began = time.monotonic()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", SMALL_PATH)
        response = conn.getresponse()
        response.read()
        outcome = f"status {response.status}"
    except (OSError, http.client.HTTPException) as e:
        outcome = f"failed: {e!r}"
    finally:
        conn.close()
    return f"{outcome} in {time.monotonic() - began:.2f} s"


def judge(soak: Soak) -> None:
    """
    Fill in C{soak.wedged} and C{soak.problems} from what was measured.
    """
    rates = [s.ok / s.seconds for s in soak.slices if s.seconds]
    if rates:
        best = max(rates)
        last = rates[-1]
        soak.wedged = last == 0 or last < WEDGED_SHARE * best
    if soak.proxyDied:
        soak.problems.append("the proxy died")
    if soak.wedged:
        soak.problems.append("the last slice served (almost) nothing: wedged")
    if soak.leftovers:
        soak.problems.append("counters not back to zero: " + "; ".join(soak.leftovers))
    if not soak.pools and not soak.proxyDied:
        soak.problems.append("no /status.json after the load")


def soakOnce(args: argparse.Namespace, session: Session) -> Soak:
    """
    Start the backend and the proxy, run the load, and read what is left.
    """
    procs = session.procs
    workdir = session.workdir
    assert workdir is not None
    if args.port_base:
        ports = (args.port_base, args.port_base + 1, args.port_base + 2)
    else:
        ports = (run.freePort(), run.freePort(), run.freePort())
    proxyPort, adminPort, backendPort = ports
    backend = BackendServer(
        procs, workdir, backendPort, args.load_cpu, args.keepalive_requests
    )
    session.backend = backend
    backend.start()
    proxy = startProxy(procs, args, workdir, ports)
    try:
        for path in (SMALL_PATH, LARGE_PATH):
            run.checkBody(proxyPort, backendPort, path)
    except run.RowFailed as e:
        raise SetupFailed(str(e)) from None
    soak = Soak(
        settings={
            "requests": args.requests,
            "maxSeconds": args.max_seconds,
            "slice": args.slice,
            "connections": args.connections,
            "aborters": args.aborters,
            "maxAborts": args.max_aborts,
            "abortPause": args.abort_pause,
            "maxConnections": args.max_connections,
            "pendingTimeout": args.pending_timeout,
            "keepaliveRequests": args.keepalive_requests,
            "settle": args.settle,
        }
    )
    soak.start = proxyResources(proxy.pid)
    print(
        f"soak: up to {args.requests:,} requests or {args.max_seconds:,.0f} s; "
        f"wrk -t1 -c{args.connections} {SMALL_PATH} in slices of up to "
        f"{args.slice} s; {args.aborters} aborters on {LARGE_PATH}; "
        f"nginx keepalive_requests {args.keepalive_requests}; pool "
        f"max_connections {args.max_connections}, pending_timeout "
        f"{args.pending_timeout} s",
        flush=True,
    )
    print(
        f"proxy pid {proxy.pid}, at start: RSS {soak.start.rssMiB:.1f} MiB, "
        f"{soak.start.fds} open fds",
        flush=True,
    )
    aborters = Aborters(
        proxyPort,
        args.aborters,
        args.max_aborts,
        time.monotonic() + args.max_seconds + 30,
        args.abort_pause,
    )
    session.aborters = aborters
    aborters.start()
    started = time.monotonic()
    try:
        started = runLoad(args, procs, soak, proxy, proxyPort, adminPort, backend)
    finally:
        aborters.stop()
        backend.waitForRestart(15.0)
    soak.aborts = dict(sorted(aborters.outcomes.items()))
    soak.backendRestarts = [
        (round(stopped - started, 1), round(back - started, 1))
        for stopped, back in backend.restarts
    ]
    time.sleep(args.settle)
    if proxy.poll() is not None:
        soak.proxyDied = True
    else:
        soak.end = proxyResources(proxy.pid)
        try:
            status = fetchStatus(adminPort)
        except (OSError, ValueError) as e:
            soak.problems.append(f"/status.json: {e}")
        else:
            # Only the pools: the rest of the status names local files.
            soak.pools = status.get("pools", [])
            soak.leftovers = leftovers(status)
        soak.probe = probe(proxyPort, args.pending_timeout + 10)
    judge(soak)
    report(soak, aborters.aborted)
    if soak.problems and not soak.proxyDied:
        print("proxy log, last lines:")
        print(run.logTail(workdir / "proxy.log", 10), end="")
    return soak


def report(soak: Soak, aborted: int) -> None:
    """
    Print the summary after the slices.
    """
    requests = sum(s.requests for s in soak.slices)
    ok = sum(s.ok for s in soak.slices)
    non2xx = sum(s.non2xx for s in soak.slices)
    errors = sum(s.socketErrors for s in soak.slices)
    print(
        f"load stopped after {soak.seconds:.1f} s: {requests:,} requests "
        f"({ok:,} 2xx/3xx, {non2xx:,} non-2xx/3xx, {errors:,} socket errors)"
    )
    restarts = ", ".join(
        f"stopped at {stopped:.1f} s, serving again at {back:.1f} s"
        for stopped, back in soak.backendRestarts
    )
    print(f"backend restarts: {len(soak.backendRestarts)} ({restarts or 'none'})")
    details = ", ".join(f"{key} {value:,}" for key, value in soak.aborts.items())
    print(f"aborted downloads: {aborted:,} ({details or 'none started'})")
    if soak.start is not None and soak.end is not None:
        for label, resources in (("start", soak.start), ("end", soak.end)):
            print(
                f"proxy at {label}: RSS {resources.rssMiB:.1f} MiB, "
                f"{resources.fds} open fds"
            )
    if soak.pools:
        print("pools after the settle (/status.json):")
        status = {"pools": soak.pools}
        for line in describePools(status):
            print(line)
    if soak.probe:
        print(f"probe GET {SMALL_PATH} after the settle: {soak.probe}")
    if soak.problems:
        print("VERDICT: FAIL: " + "; ".join(soak.problems))
    else:
        print("VERDICT: OK: every inFlight and pending counter is zero")
    sys.stdout.flush()


# ---------------------------------------------------------------------------
# Command line and main.


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command-line options.
    """
    p = argparse.ArgumentParser(
        description="Soak twisted_rproxy: many requests with aborts and a "
        "backend restart, then the pool's counters (loopback only)."
    )
    p.add_argument(
        "--requests",
        type=int,
        default=1_000_000,
        help="proxied requests to complete (default %(default)s)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=1800,
        help="stop the load after this long in any case (default %(default)s)",
    )
    p.add_argument(
        "--slice",
        type=int,
        default=10,
        help="seconds per wrk run, at most (default %(default)s)",
    )
    p.add_argument(
        "--connections",
        type=int,
        default=50,
        help="wrk keep-alive connections (default %(default)s)",
    )
    p.add_argument(
        "--aborters",
        type=int,
        default=4,
        help="threads downloading /4m and closing early (default %(default)s; 0: none)",
    )
    p.add_argument(
        "--max-aborts",
        type=int,
        default=100_000,
        help="aborted downloads at most, in all (default %(default)s)",
    )
    p.add_argument(
        "--abort-pause",
        type=float,
        default=0.05,
        help="mean seconds each aborter waits between downloads (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=16,
        help="the pool's max_connections (default %(default)s)",
    )
    p.add_argument(
        "--pending-timeout",
        type=float,
        default=3.0,
        help="the pool's pending_timeout in seconds (default %(default)s)",
    )
    p.add_argument(
        "--keepalive-requests",
        type=int,
        default=100,
        help="nginx's keepalive_requests (default %(default)s)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds between the end of the load and the counters (default "
        "%(default)s)",
    )
    p.add_argument(
        "--port-base",
        type=int,
        default=0,
        help="the proxy listens on this port, its admin on the next, nginx on "
        "the one after (default: free ports)",
    )
    p.add_argument(
        "--twistd",
        default=defaultTwistd(),
        help="the twistd to run (default: beside this Python, else on PATH: "
        "%(default)s)",
    )
    p.add_argument("--proxy-cpu", default="1", help="CPU for the proxy (1)")
    p.add_argument(
        "--load-cpu",
        default="0",
        help="CPU for nginx, wrk and this script's aborters (0)",
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.requests < 1 or args.max_seconds <= 0 or args.slice < 1:
        p.error("--requests, --max-seconds and --slice must be positive")
    if args.connections < 1 or args.max_connections < 1 or args.aborters < 0:
        p.error("--connections and --max-connections must be at least 1")
    if args.max_aborts < 0 or args.abort_pause < 0 or args.settle < 0:
        p.error("--max-aborts, --abort-pause and --settle may not be negative")
    if args.pending_timeout <= 0 or args.keepalive_requests < 1:
        p.error("--pending-timeout and --keepalive-requests must be positive")
    if args.port_base and not 1024 <= args.port_base <= 65533:
        p.error("--port-base must be from 1024 to 65533")
    return args


def checkRequirements(args: argparse.Namespace) -> None:
    """
    Raise L{SetupFailed} with a clear message if something needed is missing.
    """
    missing = [t for t in ("nginx", "wrk", "taskset") if shutil.which(t) is None]
    if missing:
        raise SetupFailed(
            f"missing on PATH: {', '.join(missing)} (Debian/Ubuntu: "
            "apt-get install nginx wrk util-linux)"
        )
    if not args.twistd or not os.access(args.twistd, os.X_OK):
        raise SetupFailed(
            f"no twistd to run ({args.twistd}): install Twisted or give --twistd"
        )
    allowed = os.sched_getaffinity(0)
    for option, cpu in (("--proxy-cpu", args.proxy_cpu), ("--load-cpu", args.load_cpu)):
        if not cpu.isdigit() or int(cpu) not in allowed:
            raise SetupFailed(
                f"{option} {cpu}: not an available CPU (available: {sorted(allowed)})"
            )


@dataclass
class Session(run._Session):
    """
    What to clean up at the end: aborters and a pending backend restart,
    then, as for C{run.py}, the process groups started and the work
    directory.
    """

    backend: BackendServer | None = None
    aborters: Aborters | None = None

    def close(self) -> None:
        """
        Stop everything this script started and remove the work directory.
        """
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if self.aborters is not None:
            self.aborters.stop(timeout=5.0)
        if self.backend is not None:
            self.backend.close()
        super().close()


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the soak; the exit status.
    """
    args = parseArgs(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._onSignal)
    session = Session()
    try:
        checkRequirements(args)
        # The aborter threads run beside nginx and wrk, not on the proxy's CPU.
        os.sched_setaffinity(0, {int(args.load_cpu)})
        session.workdir = Path(tempfile.mkdtemp(prefix="rproxy-soak-"))
        soak = soakOnce(args, session)
    except SetupFailed as e:
        print(f"benchmarks/soak.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        session.close()
    if args.json:
        args.json.write_text(json.dumps(asdict(soak), indent=2) + "\n")
    return 1 if soak.problems else 0


if __name__ == "__main__":
    sys.exit(main())
