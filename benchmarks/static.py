#!/usr/bin/env python3
"""
Static files and compression: twisted_rproxy's static routes beside nginx
serving the same directory, and the cost and gain of the C{compress} filter
on proxied responses (issue #6).

    python benchmarks/static.py [--quick | --duration 10] [--connections 50]
                                [--only static|compression]
                                [--md-out FILE] [--json-out FILE]

1. Static files: a temporary document root with C{/small.css} (2 KiB of
   CSS) and C{/1m.bin} (1 MiB), served by nginx (1 worker, access log off,
   sendfile) and by C{twistd rproxy --static ROOT}, each in turn pinned to
   the server CPU (1), wrk pinned to the load CPU (0), keep-alive.
2. Compression: an nginx backend (load CPU) serving a 64 KiB HTML page
   through the proxy (server CPU) configured without filters, with the
   C{compress} filter (client C{Accept-Encoding: gzip}) and with the filter
   limited to brotli (C{encodings = ["br"]}, client C{Accept-Encoding: br}).
   The size on the wire is that of the body as received, fetched once.
   Each coding runs twice: at the filter's default level and at the level
   that was the default before issue #18 (C{level = 6}, C{brotli_quality =
   4}).  C{--only compression} skips the static files (a short run).

Requirements and safety as for benchmarks/run.py, whose functions this
script reuses: nginx, wrk and taskset, 2 CPUs, loopback only, every load
run bounded by wrk's C{-d}, and only the process groups this script
started are stopped, on exit, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import http.client
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402

SMALL_PATH = "/small.css"
LARGE_PATH = "/1m.bin"
PAGE_PATH = "/page.html"
PAGE_SIZE = 64 * 1024

#: nginx's configuration: run.py's backend, with the content types of the
#: files served here (the filter only compresses text), and no compression
#: of its own.
NGINX_CONF = run.BACKEND_CONF.replace(
    "default_type application/octet-stream;",
    "types {{ text/html html; text/css css; application/octet-stream bin; }}\n"
    "    default_type application/octet-stream;\n"
    "    gzip off;",
)

#: The compression variants: name, the filter table (or None), and the
#: client's Accept-Encoding.  C{gzip} and C{br} run the filter's defaults;
#: C{gzip-level6} and C{br-quality4} the defaults before they were chosen
#: by benchmarks/compression.py (issue #18), measured in the same run.
COMPRESSION_VARIANTS: tuple[tuple[str, str | None, str], ...] = (
    ("uncompressed", None, "gzip"),
    ("gzip", 'plugin = "compress"', "gzip"),
    ("gzip-level6", 'plugin = "compress"\nlevel = 6', "gzip"),
    ("br", 'plugin = "compress"\nencodings = ["br"]', "br"),
    (
        "br-quality4",
        'plugin = "compress"\nencodings = ["br"]\nbrotli_quality = 4',
        "br",
    ),
)


@dataclass
class CompressionRow:
    """
    One compression variant: the wrk measurement and the size on the wire.
    """

    variant: str
    load: run.LoadRow
    contentEncoding: str | None = None
    wireBytes: int | None = None
    ratios: dict[str, float] = field(default_factory=dict)


def _smallCss() -> bytes:
    """
    About 2 KiB of ordinary CSS.
    """
    rules = []
    for n in range(40):
        color = (n * 2654435761) & 0xFFFFFF
        weight = 400 + (n % 3) * 100
        rules.append(
            f".item-{n} {{ margin: {n % 7}px auto; color: #{color:06x}; "
            f"font-weight: {weight}; }}\n"
        )
    return "".join(rules).encode()[:2048]


def _page() -> bytes:
    """
    A 64 KiB HTML page: a table of records, compressible as real pages are.
    """
    rng = random.Random(64)
    words = "proxy reactor deferred protocol factory transport resource site".split()
    rows = []
    size = 0
    n = 0
    while size < PAGE_SIZE:
        row = (
            f'<tr class="r{n % 2}"><td>{n}</td><td>{rng.choice(words)}</td>'
            f"<td>{rng.randrange(10**6)}</td><td>{rng.choice(words)} "
            f"{rng.choice(words)}</td></tr>\n"
        )
        rows.append(row)
        size += len(row)
        n += 1
    head = "<!doctype html><html><head><title>Records</title></head><body><table>\n"
    return (head + "".join(rows)).encode()[:PAGE_SIZE]


def writeRoot(workdir: Path) -> Path:
    """
    The document root: C{small.css}, C{1m.bin} and C{page.html}, readable by
    nginx's unprivileged worker.
    """
    www = workdir / "www"
    www.mkdir()
    (www / SMALL_PATH.lstrip("/")).write_bytes(_smallCss())
    (www / LARGE_PATH.lstrip("/")).write_bytes(random.Random(1).randbytes(1 << 20))
    (www / PAGE_PATH.lstrip("/")).write_bytes(_page())
    for path in (workdir, www, *www.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return www


def startNginx(
    procs: run.Processes, workdir: Path, www: Path, cpu: str, name: str
) -> tuple[subprocess.Popen[bytes], int]:
    """
    Start an nginx serving C{www} on a free port, pinned to C{cpu}.
    """
    d = workdir / name
    d.mkdir()
    d.chmod(0o755)
    port = run.freePort()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(d=d, host=run.HOST, port=port, www=www))
    log = d / "stdout.log"
    argv = ["nginx", "-e", str(d / "error.log"), "-p", str(d), "-c", str(conf)]
    proc = procs.start(argv, cpu, log)
    try:
        run.waitForPort(port, proc, run.BACKEND_READY_TIMEOUT)
    except run.RowFailed as e:
        tail = run.logTail(log) + run.logTail(d / "error.log")
        raise run.BenchError(f"nginx ({name}) did not start: {e}\n{tail}") from None
    return proc, port


def startRproxy(
    procs: run.Processes,
    args: argparse.Namespace,
    name: str,
    options: Sequence[str],
    port: int,
) -> subprocess.Popen[bytes]:
    """
    Start the checkout's C{twistd rproxy OPTIONS} on the server CPU and wait
    (bounded) for it to open C{port}, where C{options} make it listen.
    """
    argv = [args.python, "-c", run.TWISTD, "-n", "--pidfile=", "rproxy", *options]
    log = args.workdir / f"rproxy-{name}.log"
    proc = procs.start(argv, args.proxy_cpu, log, env=run.childEnv(), cwd=args.workdir)
    try:
        run.waitForPort(port, proc, run.PROXY_READY_TIMEOUT)
    except run.RowFailed as e:
        procs.stop(proc)
        raise run.RowFailed(f"rproxy did not start: {e}\n{run.logTail(log)}") from None
    return proc


def _addRatios(row: run.LoadRow, base: run.LoadRow) -> None:
    """
    Fill C{row.ratios} with C{row} ÷ C{base}: req/s, p50, p99, CPU/request.
    """
    for key in ("rps", "p50Ms", "p99Ms", "proxyCpuUsPerRequest"):
        value = run.ratio(getattr(row, key), getattr(base, key))
        if value is not None:
            row.ratios[key] = value


# ---------------------------------------------------------------------------
# Static files.


def measureServer(
    procs: run.Processes,
    args: argparse.Namespace,
    scenario: run.Scenario,
    server: str,
    port: int,
    pgid: int,
    referencePort: int,
) -> run.LoadRow:
    """
    Check that C{port} serves C{scenario.path} as the reference nginx does,
    then measure it; a failure is the row's, not the run's.
    """
    try:
        run.checkBody(port, referencePort, scenario.path)
        return run.measureLoad(procs, args, scenario, server, port, pgid)
    except run.RowFailed as e:
        return run.LoadRow(scenario.name, server, status=f"failed: {e}")


def runStatic(
    procs: run.Processes, args: argparse.Namespace, www: Path
) -> list[run.LoadRow]:
    """
    Each file from nginx, then from rproxy, the servers one at a time on the
    server CPU.
    """
    scenarios = [run.Scenario("small.css", SMALL_PATH), run.Scenario("1m", LARGE_PATH)]
    rows: dict[tuple[str, str], run.LoadRow] = {}
    nginx, nginxPort = startNginx(procs, args.workdir, www, args.proxy_cpu, "static")
    try:
        for scenario in scenarios:
            _progress(f"static {scenario.name}: nginx")
            rows[scenario.name, "nginx"] = measureServer(
                procs, args, scenario, "nginx", nginxPort, nginx.pid, nginxPort
            )
        # The reference for rproxy's correctness check is this nginx, idle
        # while rproxy is measured but sharing its CPU.
        proxyPort = run.freePort()
        listen = f"tcp:{proxyPort}:interface={run.HOST}"
        options = ["--listen", listen, "--static", str(www)]
        try:
            proxy = startRproxy(procs, args, "static", options, proxyPort)
        except run.RowFailed as e:
            for scenario in scenarios:
                rows[scenario.name, "rproxy"] = run.LoadRow(
                    scenario.name, "rproxy", status=f"failed: {e}"
                )
        else:
            try:
                for scenario in scenarios:
                    _progress(f"static {scenario.name}: rproxy")
                    row = measureServer(
                        procs, args, scenario, "rproxy", proxyPort, proxy.pid, nginxPort
                    )
                    _addRatios(row, rows[scenario.name, "nginx"])
                    rows[scenario.name, "rproxy"] = row
            finally:
                procs.stop(proxy)
    finally:
        procs.stop(nginx)
    return [rows[s.name, server] for s in scenarios for server in ("nginx", "rproxy")]


# ---------------------------------------------------------------------------
# Compression through the proxy.


def writeProxyConfig(
    workdir: Path, name: str, filterTable: str | None, port: int, backendPort: int
) -> Path:
    """
    A configuration proxying everything to the backend, with the filter
    table C{filterTable} (as C{[filters.NAME]}) on the route, if given.
    """
    lines = [
        "[server]",
        f'listen = ["tcp:{port}:interface={run.HOST}"]',
        "[pools.app]",
        f'servers = ["http://{run.HOST}:{backendPort}"]',
    ]
    if filterTable is not None:
        lines += [f"[filters.{name}]", filterTable]
    lines += ["[[routes]]", 'path = "/"', 'pool = "app"']
    if filterTable is not None:
        lines.append(f'filters = ["{name}"]')
    path = workdir / f"compress-{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def fetchOnce(port: int, acceptEncoding: str) -> tuple[int, str | None, bytes]:
    """
    GET the page once, undecoded: the status, its C{Content-Encoding} and
    the body as it came over the wire (after de-chunking).
    """
    conn = http.client.HTTPConnection(run.HOST, port, timeout=10)
    try:
        conn.request("GET", PAGE_PATH, headers={"Accept-Encoding": acceptEncoding})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Encoding"), response.read()
    finally:
        conn.close()


def _decoded(coding: str | None, body: bytes) -> bytes:
    if coding == "gzip":
        return gzip.decompress(body)
    if coding == "br":
        # Optional, as for the proxy: without it the br row fails, alone.
        import brotli  # type: ignore[import-untyped]

        return bytes(brotli.decompress(body))
    return body


def measureVariant(
    procs: run.Processes,
    args: argparse.Namespace,
    variant: tuple[str, str | None, str],
    backendPort: int,
    original: bytes,
) -> CompressionRow:
    """
    Start the proxy for one variant, check and size its answer, measure it.
    """
    name, filterTable, acceptEncoding = variant
    scenario = run.Scenario(name, PAGE_PATH, (f"Accept-Encoding: {acceptEncoding}",))
    port = run.freePort()
    config = writeProxyConfig(args.workdir, name, filterTable, port, backendPort)
    proc = startRproxy(procs, args, name, ["--config", str(config)], port)
    try:
        try:
            status, coding, body = fetchOnce(port, acceptEncoding)
        except (OSError, http.client.HTTPException) as e:
            raise run.RowFailed(f"fetching {PAGE_PATH}: {e!r}") from None
        expected = None if filterTable is None else acceptEncoding
        if status != 200 or coding != expected:
            raise run.RowFailed(
                f"{PAGE_PATH} with Accept-Encoding: {acceptEncoding}: status "
                f"{status}, Content-Encoding {coding!r} (expected {expected!r})"
            )
        if _decoded(coding, body) != original:
            raise run.RowFailed(f"{PAGE_PATH} does not decode to the backend's page")
        load = run.measureLoad(procs, args, scenario, "rproxy", port, proc.pid)
        return CompressionRow(name, load, coding, len(body))
    finally:
        procs.stop(proc)


def runCompression(
    procs: run.Processes, args: argparse.Namespace, www: Path
) -> list[CompressionRow]:
    """
    The page through the proxy, uncompressed, gzip and brotli.
    """
    original = (www / PAGE_PATH.lstrip("/")).read_bytes()
    backend, backendPort = startNginx(
        procs, args.workdir, www, args.load_cpu, "backend"
    )
    rows: list[CompressionRow] = []
    try:
        for variant in COMPRESSION_VARIANTS:
            _progress(f"compression {variant[0]}")
            try:
                row = measureVariant(procs, args, variant, backendPort, original)
            except run.RowFailed as e:
                row = CompressionRow(
                    variant[0], run.LoadRow(variant[0], "rproxy", status=f"failed: {e}")
                )
            rows.append(row)
    finally:
        procs.stop(backend)
    base = rows[0]
    for row in rows[1:]:
        if row.load.status == "ok" and base.load.status == "ok":
            _addRatios(row.load, base.load)
            value = run.ratio(row.wireBytes, base.wireBytes)
            if value is not None:
                row.ratios["wireBytes"] = value
    return rows


# ---------------------------------------------------------------------------
# Report.


def staticTable(rows: Sequence[run.LoadRow]) -> list[str]:
    """
    The static file results as Markdown table lines.
    """
    fmt = run._fmt
    lines = [
        "| file | server | req/s | p50 ms | p99 ms | errors | server µs CPU/req "
        "| server core busy % | load core busy % | req/s ÷ nginx | p50 ÷ nginx "
        "| p99 ÷ nginx | CPU/req ÷ nginx |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        if r.status != "ok":
            cells = [r.scenario, r.target, run._statusCell(r.status)] + [""] * 10
        else:
            cells = [
                r.scenario,
                r.target,
                fmt(r.rps),
                fmt(r.p50Ms, 2),
                fmt(r.p99Ms, 2),
                fmt(r.errors),
                fmt(r.proxyCpuUsPerRequest),
                fmt(r.proxyCoreBusyPercent),
                fmt(r.loadCoreBusyPercent),
                fmt(r.ratios.get("rps"), 2),
                fmt(r.ratios.get("p50Ms"), 2),
                fmt(r.ratios.get("p99Ms"), 2),
                fmt(r.ratios.get("proxyCpuUsPerRequest"), 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def compressionTable(rows: Sequence[CompressionRow]) -> list[str]:
    """
    The compression results as Markdown table lines.
    """
    fmt = run._fmt
    lines = [
        f"| {PAGE_SIZE // 1024} KiB page | Content-Encoding | bytes on the wire "
        "| req/s | p50 ms | p99 ms | errors | proxy µs CPU/req "
        "| proxy core busy % | load core busy % | size ÷ uncompressed "
        "| req/s ÷ uncompressed | CPU/req ÷ uncompressed |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in rows:
        r = row.load
        if r.status != "ok":
            cells = [row.variant, run._statusCell(r.status)] + [""] * 11
        else:
            cells = [
                row.variant,
                row.contentEncoding or "identity",
                fmt(row.wireBytes),
                fmt(r.rps),
                fmt(r.p50Ms, 2),
                fmt(r.p99Ms, 2),
                fmt(r.errors),
                fmt(r.proxyCpuUsPerRequest),
                fmt(r.proxyCoreBusyPercent),
                fmt(r.loadCoreBusyPercent),
                fmt(row.ratios.get("wireBytes"), 3),
                fmt(r.ratios.get("rps"), 2),
                fmt(r.ratios.get("proxyCpuUsPerRequest"), 2),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(
    meta: dict[str, Any],
    static: Sequence[run.LoadRow],
    compression: Sequence[CompressionRow],
) -> str:
    """
    The whole report as Markdown, failures' details at the end.
    """
    lines = ["# twisted_rproxy static files and compression", ""]
    lines += [f"- {key}: `{value}`" for key, value in meta.items()]
    if static:
        lines += [
            "",
            "## Static files: rproxy --static vs nginx",
            "",
            *staticTable(static),
        ]
    if compression:
        lines += [
            "",
            "## Compression through the proxy (nginx backend, compress filter)",
            "",
            *compressionTable(compression),
        ]
    failures = [
        r for r in [*static, *(c.load for c in compression)] if r.status != "ok"
    ]
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
        "python": f"{args.python} ({run.toolVersion([args.python, '--version'])})",
        "nginx": run.toolVersion(["nginx", "-v"]),
        "wrk": run.toolVersion(["wrk", "-v"]),
        "load": f"wrk -t1 -c{args.connections} -d{args.duration}s --latency, "
        f"keep-alive (+{args.warmup} s warm-up), CPU {args.load_cpu}",
        "servers": f"nginx (1 worker) or twistd rproxy, CPU {args.proxy_cpu}; "
        f"compression backend: nginx on CPU {args.load_cpu}",
    }


# ---------------------------------------------------------------------------
# Main.


def _progress(text: str) -> None:
    print(f"-- {text}", file=sys.stderr, flush=True)


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command-line options.
    """
    p = argparse.ArgumentParser(
        description="Benchmark twisted_rproxy's static files beside nginx, and "
        "its compress filter (loopback only)."
    )
    run.addLoadOptions(p)
    p.add_argument("--proxy-cpu", default="1", help="CPU for the server measured (1)")
    p.add_argument(
        "--load-cpu", default="0", help="CPU for wrk and the compression backend (0)"
    )
    p.add_argument("--python", default=sys.executable, help="the Python running twistd")
    p.add_argument("--json-out", type=Path, help="write the results as JSON")
    p.add_argument("--md-out", type=Path, help="write the Markdown report")
    p.add_argument(
        "--only",
        choices=("static", "compression"),
        help="run only the static files or only the compression variants",
    )
    args = p.parse_args(argv)
    run.resolveLoadOptions(p, args)
    # What run.checkRequirements looks at.
    args.scenarios = []
    args.proxy_cmd = run.DEFAULT_PROXY_CMD
    return args


def writeOutputs(
    args: argparse.Namespace,
    meta: dict[str, Any],
    static: list[run.LoadRow],
    compression: list[CompressionRow],
) -> None:
    """
    Print the Markdown report and write the requested files.
    """
    report = markdown(meta, static, compression)
    print(report)
    if args.md_out:
        args.md_out.write_text(report)
    if args.json_out:
        data = {
            "meta": meta,
            "static": [asdict(r) for r in static],
            "compression": [asdict(r) for r in compression],
        }
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark; the exit status (0 all rows ran, 1 some failed, 2 a
    requirement is missing, 130 interrupted).
    """
    args = parseArgs(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, run._onSignal)
    session = run._Session()
    try:
        run.checkRequirements(args)
        session.workdir = args.workdir = Path(
            tempfile.mkdtemp(prefix="rproxy-bench-static-")
        )
        www = writeRoot(args.workdir)
        meta = metadata(args)
        static = (
            [] if args.only == "compression" else runStatic(session.procs, args, www)
        )
        compression = (
            [] if args.only == "static" else runCompression(session.procs, args, www)
        )
        writeOutputs(args, meta, static, compression)
    except run.BenchError as e:
        print(f"benchmarks/static.py: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; stopping what was started", file=sys.stderr)
        return 130
    finally:
        session.close()
    rows = [*static, *(c.load for c in compression)]
    return 1 if any(r.status != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
