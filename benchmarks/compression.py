#!/usr/bin/env python3
"""
The CPU cost and the gain of the C{compress} filter's levels, measured with
the filter's own transforms on typical HTML, JSON and JavaScript (issue
#18): gzip levels 1 to 9 and brotli qualities 0 to 11.

    python benchmarks/compression.py [--quick] [--json-out FILE]
        [--kinds html,json,js] [--sizes 2KiB,16KiB,128KiB]
        [--gzip-levels 1-9] [--brotli-qualities 0-11] [--piece 16KiB]
        [--repeat 5] [--min-batch-ms 10] [--budget 0.5] [--link 25]
        [--md-out FILE] [--from-json FILE]

Each body is compressed as the filter compresses a proxied body: a new
L{GzipTransform} or L{BrotliTransform}, one C{transform} call per piece
(each flushed: C{Z_SYNC_FLUSH}, brotli's flush) and C{flush} at the end,
with pieces of C{--piece} bytes (16 KiB: what a backend's reads bring) and
with the whole body as one piece.  For each body, coding and level it
reports the process CPU time of one body (C{time.process_time}, the best of
C{--repeat} batches of enough repetitions to last C{--min-batch-ms}), the
bytes out, and the bytes saved per CPU microsecond; then the same summed
over the corpus per level, with the I{marginal} gain of each level over
the cheaper one before it on the convex hull (extra bytes saved per extra
microsecond), and the knee: the level that delivers the corpus soonest
over a client link of C{--link} Mbit/s, the least CPU time plus transfer
time (of the levels within 1 % of that least time, the one with the least
CPU).  A further level would spend more microseconds compressing than its
smaller output saves on the wire: its marginal gain is below the link's
bytes per microsecond (25 Mbit/s is 3.125 bytes per microsecond).  The
report also gives the knee for 5 to 100 Mbit/s, and per kind of body.

The corpus is made on the spot, deterministically, from what is installed
(nothing is shipped with the project):

html
    pydoc's HTML pages of a fixed list of standard library modules
    (memory addresses in reprs removed), cut to the size.
json
    an API-like C{{"count": N, "results": [...]}} of user records from a
    seeded generator: as many whole records as fit in the size.
js
    the C{.js} files of the installed packages (the C{site-packages}
    directories on C{sys.path}; files over 256 KiB, bundles with binary
    data, left out), in the order of their paths, cut to the size.  When
    they are fewer bytes than a size, that body is left out and the report
    says so.

Only the CPU time of this process is measured (not wall-clock time), so a
busy machine slows the run down more than it changes the figures; still,
compare figures from one run.  Exit status: 0, or 2 for bad options (or
an unreadable C{--from-json} file).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

# The code measured is this checkout's; the corpus is beside this script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compressioncorpus import (  # noqa: E402
    KINDS,
    SIZES,
    Body,
    _size,
    buildCorpus,
)
from compressionknee import (  # noqa: E402
    LINK_MBPS,
    LINKS_SHOWN,
    TOLERANCE,
    Row,
    _fmt,
    detailTable,
    knee,
    mbps,
    summarize,
    summaryTable,
)

from twisted_rproxy.interfaces import IBodyTransform  # noqa: E402
from twisted_rproxy.plugins.compress import (  # noqa: E402
    BrotliTransform,
    CompressionPolicy,
    GzipTransform,
    brotliAvailable,
)

GZIP_LEVELS = tuple(range(1, 10))
BROTLI_QUALITIES = tuple(range(0, 12))
PIECE_SIZE = 16 * 1024


# ---------------------------------------------------------------------------
# Measuring.


def transformFactory(coding: str, level: int) -> Callable[[], IBodyTransform]:
    """
    What makes the filter's transform for C{coding} at C{level}.
    """
    if coding == "gzip":
        return lambda: GzipTransform(level)
    if coding == "br":
        return lambda: BrotliTransform(level)
    raise ValueError(f"unknown coding {coding!r}")


def compressPieces(transform: IBodyTransform, pieces: Iterable[bytes]) -> bytes:
    """
    What the filter sends for a body received in C{pieces}.
    """
    out = [transform.transform(piece) for piece in pieces]
    out.append(transform.flush())
    return b"".join(out)


def split(data: bytes, pieceSize: int | None) -> list[bytes]:
    """
    C{data} in pieces of C{pieceSize} bytes (the last one shorter), or
    whole for L{None}.
    """
    if pieceSize is None or pieceSize >= len(data):
        return [data]
    return [data[i : i + pieceSize] for i in range(0, len(data), pieceSize)]


def cpuPerCall(
    call: Callable[[], object], repeat: int, minBatch: float, budget: float
) -> float:
    """
    The process CPU seconds of one C{call()}: the best of up to C{repeat}
    batches (at least 2, fewer than C{repeat} once C{budget} CPU seconds
    are spent), each of as many calls as last C{minBatch} seconds.
    """
    clock = time.process_time
    start = clock()
    call()
    once = max(clock() - start, 1e-7)
    count = max(1, math.ceil(minBatch / once))
    best = math.inf
    spent = 0.0
    for batch in range(repeat):
        if batch >= 2 and spent > budget:
            break
        start = clock()
        for _ in range(count):
            call()
        elapsed = clock() - start
        spent += elapsed
        best = min(best, elapsed / count)
    return best


def _compressing(
    make: Callable[[], IBodyTransform], pieces: Sequence[bytes]
) -> Callable[[], bytes]:
    return lambda: compressPieces(make(), pieces)


def measure(
    bodies: Sequence[Body],
    codings: Sequence[tuple[str, Sequence[int]]],
    pieceSize: int,
    repeat: int,
    minBatch: float,
    budget: float,
    progress: Callable[[str], None] = lambda text: None,
) -> list[Row]:
    """
    Every body with every coding and level, in pieces of C{pieceSize} bytes
    and whole (once only when the body fits in one piece).
    """
    rows = []
    modes: list[tuple[str, int | None]] = [
        (_size(pieceSize), pieceSize),
        ("whole", None),
    ]
    gcWasEnabled = gc.isenabled()
    gc.disable()
    try:
        for body in bodies:
            progress(f"{body.kind} {_size(body.size)}")
            for coding, levels in codings:
                for level in levels:
                    make = transformFactory(coding, level)
                    for mode, size in modes:
                        if size is not None and size >= len(body.data):
                            # One piece: the same as whole, measured once.
                            continue
                        pieces = split(body.data, size)
                        out = compressPieces(make(), pieces)
                        seconds = cpuPerCall(
                            _compressing(make, pieces),
                            repeat,
                            minBatch,
                            budget,
                        )
                        rows.append(
                            Row(
                                body.kind,
                                body.size,
                                len(body.data),
                                coding,
                                level,
                                mode,
                                seconds * 1e6,
                                len(out),
                            )
                        )
    finally:
        if gcWasEnabled:
            gc.enable()
    return rows


# ---------------------------------------------------------------------------
# Report.


def parseSize(text: str) -> int:
    """
    C{"16KiB"}, C{"2048"}, C{"1MiB"}: a positive number of bytes.

    @raise ValueError: For anything else.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB)?\s*", text)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(f"expected a size such as 2048 or 16KiB, got {text!r}")
    unit = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}[match.group(2)]
    return int(match.group(1)) * unit


def describeBodies(bodies: Sequence[Body]) -> list[dict[str, Any]]:
    """
    What the report says of each body: kind, nominal size, bytes, digest.
    """
    return [
        {"kind": b.kind, "size": b.size, "bytes": len(b.data), "sha256": b.digest}
        for b in bodies
    ]


def metadata(args: argparse.Namespace) -> dict[str, Any]:
    """
    What was measured with: versions, the filter's defaults, the timing.
    """
    policy = CompressionPolicy()
    return {
        "python": sys.version.split()[0],
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "brotli": _brotliVersion(),
        "defaults": f"level={policy.level}, brotliQuality={policy.brotliQuality}",
        "timing": f"time.process_time, best of {args.repeat} batches of at least "
        f"{args.min_batch_ms} ms (fewer batches past {args.budget} s)",
    }


def report(
    args: argparse.Namespace,
    meta: dict[str, Any],
    bodies: Sequence[dict[str, Any]],
    notes: Sequence[str],
    rows: Sequence[Row],
) -> tuple[str, dict[str, Any]]:
    """
    The Markdown report and the JSON document.

    @param bodies: As L{describeBodies} gives them.
    """
    policy = CompressionPolicy()
    pieceMode = next((r.pieces for r in rows if r.pieces != "whole"), None)
    pieceMode = pieceMode or _size(args.piece)
    lines = ["# twisted_rproxy compression levels", ""]
    lines += [f"- {key}: `{value}`" for key, value in meta.items()]
    lines.append(
        f"- knee: the least CPU time plus transfer time at `{args.link:g}` Mbit/s "
        f"(within {TOLERANCE:.0%} of it, the least CPU time)"
    )
    lines += [f"- {note}" for note in notes]
    lines += [
        "- bodies: "
        + ", ".join(
            f"{b['kind']} {_size(b['size'])} ({b['bytes']:,} B, sha256 {b['sha256']})"
            for b in bodies
        )
    ]
    defaults = {"gzip": policy.level, "br": policy.brotliQuality}
    summaries: dict[str, Any] = {}
    kinds = list(dict.fromkeys(b["kind"] for b in bodies))
    for mode in (pieceMode, "whole"):
        lines += ["", f"## All bodies, pieces of {mode}", ""]
        summaries[mode] = {}
        for coding, levels in summarize(rows, mode).items():
            chosen = knee(levels, mbps(args.link))
            perKind = {}
            for kind in kinds:
                ofKind = summarize(rows, mode, kind).get(coding)
                if ofKind:
                    perKind[kind] = knee(ofKind, mbps(args.link)).level
            lines += summaryTable(levels, chosen, defaults[coding])
            lines += [
                "",
                f"Knee ({coding}, pieces of {mode}): level {chosen.level}, "
                f"{_fmt(chosen.cpuUs, 0)} µs, out ÷ in "
                f"{chosen.bytesOut / chosen.bytesIn:.3f}; per kind: "
                + ", ".join(f"{kind} {level}" for kind, level in perKind.items())
                + "; by link rate: "
                + ", ".join(
                    f"{rate:g} Mbit/s {knee(levels, mbps(rate)).level}"
                    for rate in LINKS_SHOWN
                )
                + ".",
                "",
            ]
            summaries[mode][coding] = {
                "knee": chosen.level,
                "kneeByKind": perKind,
                "levels": [
                    {
                        **asdict(level),
                        "saved": level.saved,
                        "savedPerUs": level.savedPerUs,
                    }
                    for level in levels
                ],
            }
    lines += ["", "## Every body", "", *detailTable(rows)]
    document = {
        "meta": meta,
        "notes": list(notes),
        "bodies": list(bodies),
        "summary": summaries,
        "rows": [
            {**asdict(r), "saved": r.saved, "savedPerUs": r.savedPerUs} for r in rows
        ],
    }
    return "\n".join(lines) + "\n", document


def _brotliVersion() -> str:
    if not brotliAvailable():
        return "not installed"
    import brotli  # type: ignore[import-untyped]

    return str(getattr(brotli, "__version__", "unknown"))


# ---------------------------------------------------------------------------
# Main.


def _levels(low: int, high: int) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        result: list[int] = []
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            try:
                span = range(int(first), int(last if dash else first) + 1)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected levels such as 1-9 or 1,4,6, got {text!r}"
                ) from None
            if not span or span[0] < low or span[-1] > high:
                raise argparse.ArgumentTypeError(
                    f"levels must be from {low} to {high}, got {part.strip()!r}"
                )
            result += span
        return tuple(sorted(set(result)))

    return parse


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(parseSize(part) for part in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if min(sizes) < 256:
        # The filter leaves smaller bodies alone (min_size), and a JSON
        # envelope would not fit.
        raise argparse.ArgumentTypeError(f"sizes must be at least 256 bytes: {text!r}")
    return sizes


def _kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(","))
    for kind in kinds:
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(
                f"kinds are {', '.join(KINDS)}; got {kind!r}"
            )
    return kinds


def _piece(text: str) -> int:
    try:
        return parseSize(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """
    The command-line options.
    """
    p = argparse.ArgumentParser(
        description="Measure the compress filter's gzip levels and brotli "
        "qualities on typical HTML, JSON and JavaScript (process CPU time)."
    )
    p.add_argument("--kinds", type=_kinds, default=KINDS, help="html,json,js")
    p.add_argument(
        "--sizes", type=_sizes, default=SIZES, help="body sizes (2KiB,16KiB,128KiB)"
    )
    p.add_argument("--gzip-levels", type=_levels(1, 9), default=GZIP_LEVELS)
    p.add_argument("--brotli-qualities", type=_levels(0, 11), default=BROTLI_QUALITIES)
    p.add_argument(
        "--piece", type=_piece, default=PIECE_SIZE, help="piece size (16KiB)"
    )
    p.add_argument("--repeat", type=int, default=5, help="batches, best of (5)")
    p.add_argument(
        "--min-batch-ms", type=float, default=10.0, help="CPU ms per batch (10)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0.5,
        help="CPU seconds per measurement past which only 2 batches run (0.5)",
    )
    p.add_argument(
        "--link",
        type=float,
        default=LINK_MBPS,
        help="the client link rate, Mbit/s, the knee is chosen for (25)",
    )
    p.add_argument(
        "--quick", action="store_true", help="--repeat 3 --min-batch-ms 3 --budget 0.1"
    )
    p.add_argument("--json-out", type=Path, help="write the results as JSON")
    p.add_argument("--md-out", type=Path, help="write the Markdown report")
    p.add_argument(
        "--from-json",
        type=Path,
        help="report a run saved with --json-out again (with another "
        "--link, say) instead of measuring",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.min_batch_ms, args.budget = 3, 3.0, 0.1
    if args.repeat < 1 or args.min_batch_ms <= 0 or args.budget < 0:
        p.error(
            "--repeat must be at least 1, --min-batch-ms above 0, --budget 0 or more"
        )
    if not 0 < args.link < 1e6:
        p.error("--link must be a rate in Mbit/s above 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """
    Build the corpus, measure, print the report; the exit status.
    """
    args = parseArgs(argv)
    if args.from_json is not None:
        try:
            saved = json.loads(args.from_json.read_text())
            rows = [Row(**{f: r[f] for f in _ROW_FIELDS}) for r in saved["rows"]]
            meta, bodies, notes = saved["meta"], saved["bodies"], saved["notes"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(
                f"benchmarks/compression.py: --from-json {args.from_json}: "
                f"not a saved run: {e!r}",
                file=sys.stderr,
            )
            return 2
    else:
        meta = metadata(args)
        bodies, notes, rows = measureAll(args)
        if not rows:
            print("benchmarks/compression.py: no bodies to measure", file=sys.stderr)
            return 2
    text, document = report(args, meta, bodies, notes, rows)
    sys.stdout.write(text)
    if args.md_out:
        args.md_out.write_text(text)
    if args.json_out:
        args.json_out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


_ROW_FIELDS = (
    "kind",
    "size",
    "bytesIn",
    "coding",
    "level",
    "pieces",
    "cpuUs",
    "bytesOut",
)


def measureAll(
    args: argparse.Namespace,
) -> tuple[list[dict[str, Any]], list[str], list[Row]]:
    """
    Build the corpus and measure it as C{args} say: the bodies (as
    L{describeBodies} gives them), notes and rows.
    """
    codings: list[tuple[str, Sequence[int]]] = [("gzip", args.gzip_levels)]
    notes: list[str] = []
    if brotliAvailable():
        codings.append(("br", args.brotli_qualities))
    else:
        notes.append("br: the brotli package is not installed: gzip only")
    bodies, corpusNotes = buildCorpus(args.kinds, args.sizes)
    notes += corpusNotes

    def progress(text: str) -> None:
        print(f"-- {text}", file=sys.stderr, flush=True)

    rows = measure(
        bodies,
        codings,
        args.piece,
        args.repeat,
        args.min_batch_ms / 1000,
        args.budget,
        progress,
    )
    return describeBodies(bodies), notes, rows


if __name__ == "__main__":
    sys.exit(main())
