"""
Health of a pool's servers: active checks, passive outlier ejection, the
panic threshold, slow start, and the retry budget.

The decisions, as plain functions of data (L{afterCheck},
L{ejectionTime}, L{mayEject}, L{eligibleServers}, L{slowStartWeight},
L{RetryBudget}); the classes that act on them, with a clock and sockets,
are in L{twisted_rproxy.pool.health}: the checker sends the checks, the
outlier detector ejects and brings back, slow start ramps weights up.

A server takes new requests when it is I{up} (its active checks pass, or
the pool has none) and not I{ejected} (its recent requests did not fail
in a row). When fewer than the panic threshold of a pool's servers do,
the pool uses all of them, as Envoy does: a partial outage of the health
checks must not become a total one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

__all__ = [
    "WEIGHT_SCALE",
    "RetryBudget",
    "afterCheck",
    "eligibleServers",
    "ejectionTime",
    "mayEject",
    "slowStartWeight",
    "statusPasses",
]

#: A server's balancing weight is its configured weight times this, so that
#: slow start can give a fraction of even a weight of 1.
WEIGHT_SCALE = 16



class _Health(Protocol):
    up: bool
    ejected: bool


_Server = TypeVar("_Server", bound=_Health)


def statusPasses(status: int, statuses: Sequence[tuple[int, int]]) -> bool:
    """
    Whether a check's response C{status} is in one of the inclusive
    C{statuses} ranges.
    """
    return any(low <= status <= high for low, high in statuses)


def afterCheck(
    up: bool, streak: int, passed: bool, rise: int, fall: int
) -> tuple[bool, int]:
    """
    The state of a server after one active check.

    @param up: Whether the server was up.
    @param streak: How many checks in a row went against its state (passed
        while it is down, failed while it is up).
    @param passed: Whether this check passed.
    @return: The new C{(up, streak)}: an up server goes down after C{fall}
        failures in a row, a down server comes up after C{rise} passes.
    """
    if passed == up:
        return up, 0
    streak += 1
    if streak >= (rise if passed else fall):
        return passed, 0
    return up, streak


def ejectionTime(base: float, maximum: float, ejections: int) -> float:
    """
    How long the C{ejections}th ejection in a row lasts: C{base} times
    C{ejections}, at most C{maximum}.
    """
    return min(base * max(ejections, 1), maximum)


def mayEject(ejected: int, total: int, maxPercent: float) -> bool:
    """
    Whether one more server of C{total} may be ejected when C{ejected} are:
    at most C{maxPercent} of them, but always one.
    """
    return ejected == 0 or (ejected + 1) * 100 <= maxPercent * total


def eligibleServers(
    servers: Sequence[_Server], panicThreshold: float
) -> tuple[list[_Server], bool]:
    """
    The servers that take new requests, and whether the pool is in panic.

    @param servers: Each with C{up} and C{ejected} flags.
    @param panicThreshold: The percentage of healthy servers below which
        every server is used; 0 never.
    @return: C{(servers, panic)}: the healthy servers, or all of them in a
        panic. A new list each time.
    """
    healthy = [s for s in servers if s.up and not s.ejected]
    if len(healthy) * 100 < panicThreshold * len(servers):
        return list(servers), True
    return healthy, False


def slowStartWeight(weight: int, elapsed: float, duration: float) -> int:
    """
    The balancing weight of a server C{elapsed} seconds into a slow start
    of C{duration}: from a tenth of its full weight up to all of it.

    @param weight: The full (configured) weight.
    """
    full = weight * WEIGHT_SCALE
    if duration <= 0 or elapsed >= duration:
        return full
    fraction = max(0.1, elapsed / duration)
    return max(1, int(full * fraction))


class RetryBudget:
    """
    The bound on a pool's retries: in each C{window} of time, C{minimum}
    retries plus C{percent} of the requests, so that retries cannot
    multiply an outage.

    It reads no clock: the pool passes the time and its running count of
    requests when it asks.

    @ivar refused: How many retries the budget refused.
    """

    def __init__(self, percent: float, minimum: int, window: float) -> None:
        self.percent = percent
        self.minimum = minimum
        self.window = window
        self.refused = 0
        self._start: float | None = None
        self._startCount = 0
        self._previous = 0.0
        self._retries = 0

    def allow(self, now: float, requests: int) -> bool:
        """
        Whether one more retry may be made now; if so, it is counted.

        @param requests: The pool's running count of requests.
        """
        if self._start is None:
            self._start = now
        elapsed = now - self._start
        if elapsed >= self.window:
            # The rate of the window that ended (averaged over a longer
            # quiet time) carries into the next.
            self._previous = (requests - self._startCount) * self.window / elapsed
            self._start = now
            self._startCount = requests
            self._retries = 0
        recent = max(requests - self._startCount, self._previous)
        if self._retries < self.minimum + recent * self.percent / 100:
            self._retries += 1
            return True
        self.refused += 1
        return False
