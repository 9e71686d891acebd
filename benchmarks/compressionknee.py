"""
What benchmarks/compression.py makes of its measurements: the rows, their
sums per level, the convex hull of CPU time against bytes out, the knee,
and the Markdown tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from compressioncorpus import _size

#: The client link rate the knee is chosen for, Mbit/s: a mobile link.
#: Slower clients gain more from a smaller body, faster ones less; and the
#: proxy's CPU time is shared by all its clients.
LINK_MBPS = 25.0

#: Levels whose delivery time is within this fraction of the best one's
#: are as good: of those, the knee is the one with the least CPU time.
TOLERANCE = 0.01

#: The link rates the report gives the best levels for, Mbit/s.
LINKS_SHOWN = (5.0, 10.0, 25.0, 50.0, 100.0)


class _Savings:
    """
    What a compression saved, from its C{bytesIn}, C{bytesOut} and C{cpuUs}.
    """

    bytesIn: int
    bytesOut: int
    cpuUs: float

    @property
    def saved(self) -> int:
        """
        Bytes saved.
        """
        return self.bytesIn - self.bytesOut

    @property
    def savedPerUs(self) -> float:
        """
        Bytes saved per CPU microsecond.
        """
        return self.saved / self.cpuUs if self.cpuUs > 0 else math.inf


@dataclass
class Row(_Savings):
    """
    One body compressed with one coding, level and piece size.

    @ivar pieces: C{"16KiB"} or C{"whole"}.
    @ivar cpuUs: Process CPU microseconds for one body.
    """

    kind: str
    size: int
    bytesIn: int
    coding: str
    level: int
    pieces: str
    cpuUs: float
    bytesOut: int


@dataclass
class Level(_Savings):
    """
    One coding and level over the bodies measured, in one piece mode.

    @ivar onHull: Whether the level is on the lower convex hull of the
        levels' (CPU, bytes out): the levels that are the best (L{knee})
        for some link rate.  The others cost more for what they save than
        a mix of their neighbours would.
    @ivar marginal: For a level on the hull past the first: the extra bytes
        saved per extra CPU microsecond over the hull level before it; the
        level is better than that one on links slower than this many bytes
        per microsecond.
    @ivar elasticity: Likewise: how much smaller the output gets, in per
        cent, per per cent more CPU (C{-d ln bytesOut / d ln cpuUs}).
    """

    coding: str
    level: int
    pieces: str
    cpuUs: float = 0.0
    bytesIn: int = 0
    bytesOut: int = 0
    onHull: bool = False
    marginal: float | None = None
    elasticity: float | None = None


def summarize(
    rows: Sequence[Row], pieces: str, kind: str | None = None
) -> dict[str, list[Level]]:
    """
    Per coding (in the order of C{rows}), its levels in order, summed over
    the bodies of C{rows} (of C{kind}, or all) measured with C{pieces}, or
    whole when a body fits in one piece; with the hull marked (L{markHull}).
    """
    picked: dict[tuple[str, int, str, int], Row] = {}
    for r in rows:
        if kind is not None and r.kind != kind:
            continue
        key = (r.kind, r.size, r.coding, r.level)
        if r.pieces == pieces or (r.pieces == "whole" and key not in picked):
            picked[key] = r
    result: dict[str, dict[int, Level]] = {}
    for r in picked.values():
        levels = result.setdefault(r.coding, {})
        level = levels.setdefault(r.level, Level(r.coding, r.level, pieces))
        level.cpuUs += r.cpuUs
        level.bytesIn += r.bytesIn
        level.bytesOut += r.bytesOut
    summary = {}
    for coding, levels in result.items():
        ordered = [levels[n] for n in sorted(levels)]
        markHull(ordered)
        summary[coding] = ordered
    return summary


def markHull(levels: Sequence[Level]) -> None:
    """
    Mark the levels on the lower convex hull of (cpuUs, bytesOut), from
    the cheapest level to the smallest output, and give each hull level
    after the first its marginal gain and elasticity over the one before
    it.  Along the hull the marginal gain only falls.
    """
    points = sorted(
        (level for level in levels if level.cpuUs > 0 and level.bytesOut > 0),
        key=lambda level: (level.cpuUs, level.bytesOut),
    )
    hull: list[Level] = []
    for level in points:
        if hull and level.bytesOut >= hull[-1].bytesOut:
            # Costs more and saves no more than a cheaper level.
            continue
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], level) <= 0:
            hull.pop()
        hull.append(level)
    for level in levels:
        level.onHull = False
        level.marginal = level.elasticity = None
    for before, level in zip(hull, hull[1:], strict=False):
        extraCpu = level.cpuUs - before.cpuUs
        level.marginal = (level.saved - before.saved) / extraCpu
        level.elasticity = math.log(before.bytesOut / level.bytesOut) / math.log(
            level.cpuUs / before.cpuUs
        )
    for level in hull:
        level.onHull = True


def _cross(a: Level, b: Level, c: Level) -> float:
    """
    Positive when C{a}, C{b}, C{c} turn left in (cpuUs, bytesOut).
    """
    return (b.cpuUs - a.cpuUs) * (c.bytesOut - a.bytesOut) - (
        b.bytesOut - a.bytesOut
    ) * (c.cpuUs - a.cpuUs)


def knee(
    levels: Sequence[Level], bytesPerUs: float, tolerance: float = TOLERANCE
) -> Level:
    """
    The level that delivers the bodies soonest to a client whose link
    carries C{bytesPerUs} bytes per microsecond, the least CPU time plus
    transfer time (C{cpuUs + bytesOut / bytesPerUs}); of the levels within
    C{tolerance} (a fraction) of that least time, the one with the least
    CPU time: the proxy's CPU is shared by all its clients, and smaller
    differences are within the noise of the measurement.
    """
    if not levels:
        raise ValueError("no level was measured")

    def delivery(level: Level) -> float:
        return level.cpuUs + level.bytesOut / bytesPerUs

    least = min(delivery(level) for level in levels)
    close = [level for level in levels if delivery(level) <= least * (1 + tolerance)]
    return min(close, key=lambda level: (level.cpuUs, level.level))


def mbps(megabits: float) -> float:
    """
    A link rate in Mbit/s as bytes per microsecond.
    """
    return megabits / 8


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return ""
    if math.isinf(value):
        return "∞"
    return f"{value:,.{digits}f}"


def summaryTable(
    levels: Sequence[Level], chosen: Level, default: int | None
) -> list[str]:
    """
    One coding's levels as Markdown table lines, with the knee C{chosen}
    marked and each level's CPU and output beside those of level
    C{default} (the filter's default), if measured.
    """
    reference = next((level for level in levels if level.level == default), None)
    lines = [
        "| coding | level | µs CPU | bytes in | bytes out | out ÷ in "
        "| saved per µs | extra saved per extra µs | % smaller per % more CPU "
        f"| CPU ÷ level {default} | out ÷ level {default} | |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for level in levels:
        marks = []
        if level is chosen:
            marks.append("**knee**")
        if level.level == default:
            marks.append("default")
        if not level.onHull:
            marks.append("off the hull")
        cpuRatio = outRatio = None
        if reference is not None:
            cpuRatio = level.cpuUs / reference.cpuUs
            outRatio = level.bytesOut / reference.bytesOut
        lines.append(
            f"| {level.coding} | {level.level} | {_fmt(level.cpuUs, 0)} "
            f"| {level.bytesIn:,} | {level.bytesOut:,} "
            f"| {level.bytesOut / level.bytesIn:.3f} | {_fmt(level.savedPerUs)} "
            f"| {_fmt(level.marginal)} | {_fmt(level.elasticity, 2)} "
            f"| {_fmt(cpuRatio, 2)} | {_fmt(outRatio, 3)} | {', '.join(marks)} |"
        )
    return lines


def detailTable(rows: Sequence[Row]) -> list[str]:
    """
    Every measurement as Markdown table lines.
    """
    lines = [
        "| body | bytes in | coding | level | pieces | µs CPU | bytes out "
        "| out ÷ in | saved per µs |",
        "|---|--:|---|--:|---|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.kind} {_size(r.size)} | {r.bytesIn:,} | {r.coding} | {r.level} "
            f"| {r.pieces} | {_fmt(r.cpuUs)} | {r.bytesOut:,} "
            f"| {r.bytesOut / r.bytesIn:.3f} | {_fmt(r.savedPerUs)} |"
        )
    return lines
