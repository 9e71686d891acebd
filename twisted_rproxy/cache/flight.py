"""
Request coalescing: while the backend request for a key is in flight, other
requests for the same key wait for it (L{Flights}), then look again.

Across processes, with a store they share that offers it
(L{SharedFlights}: the Redis store), the first process to miss a cold key
takes a short lock and fetches; the others wait for the entry to appear
(L{awaitShared}), bounded by C{coalesce_wait}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.messages import CacheEntry

__all__ = [
    "Flights",
    "SharedFlights",
    "awaitShared",
    "POLL_FIRST",
    "POLL_MAX",
    "UNCACHEABLE_TTL",
]

#: Seconds before a process waiting for another's backend request first
#: looks for the entry; the interval doubles up to L{POLL_MAX}.
POLL_FIRST = 0.02
POLL_MAX = 0.25

#: Seconds a key whose last response could not be stored is not coalesced
#: (Varnish's "hit-for-miss"): its requests would wait for one another in
#: vain, one backend request at a time. A response that is stored ends it
#: (one a second is looked at, see L{Flights.unstoredLately}).
UNCACHEABLE_TTL = 120.0

#: The most keys so remembered (the oldest are forgotten first).
UNCACHEABLE_KEYS = 10000

#: Seconds within which a key marked again keeps the mark it has.
_REMARK = 1.0

_log = Logger()


class _Flight:
    """
    One backend request for a key that others wait on.
    """

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: list[Callable[[], None]] = []


class Flights:
    """
    The keys whose backend request is in flight, and who waits on each;
    and the keys not to coalesce, their last response not stored.
    """

    __slots__ = ("_reactor", "flying", "_uncacheable")

    def __init__(self, reactor: IReactorTime) -> None:
        """
        @param reactor: The clock of the waits.
        """
        self._reactor = reactor
        #: The keys in flight (read only: the methods change it).
        self.flying: dict[bytes, _Flight] = {}
        self._uncacheable: dict[bytes, float] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self.flying

    def __len__(self) -> int:
        return len(self.flying)

    def coalesces(self, key: bytes) -> bool:
        """
        Whether misses for C{key} wait for one backend request: unless its
        last response could not be stored, within L{UNCACHEABLE_TTL}.
        """
        until = self._uncacheable.get(key)
        if until is None:
            return True
        if self._reactor.seconds() < until:
            return False
        del self._uncacheable[key]
        return True

    def unstoredLately(self, key: bytes) -> bool:
        """
        Whether the last response for C{key} could not be stored, and the
        mark of that was made within the last second (L{_REMARK}): the
        key's misses until then are passed to the backend without their
        responses being captured. The first after it is captured, and
        either marks the key again or, storable, is stored and ends the
        mark: a response that became storable is stored within a second.
        """
        until = self._uncacheable.get(key)
        return (
            until is not None
            and self._reactor.seconds() < until - UNCACHEABLE_TTL + _REMARK
        )

    def uncacheable(self, key: bytes, stored: bool) -> None:
        """
        Remember whether the last response for C{key} was stored.
        """
        keys = self._uncacheable
        if stored:
            keys.pop(key, None)
            return
        until = self._reactor.seconds() + UNCACHEABLE_TTL
        marked = keys.get(key)
        if marked is not None:
            if until - marked < _REMARK:
                # Marked within the last second: the mark stands (a key
                # missed without end is not moved for every response).
                return
            del keys[key]
        keys[key] = until
        if len(keys) > UNCACHEABLE_KEYS:
            del keys[next(iter(keys))]

    def start(self, key: bytes) -> None:
        """
        A backend request for C{key} takes off.
        """
        self.flying[key] = _Flight()

    def wait(self, key: bytes, wake: Callable[[], None], timeout: float) -> None:
        """
        Call C{wake} once, when the backend request for C{key} (which must
        be in flight) is over, or after C{timeout} seconds if that is
        sooner.
        """
        flight = self.flying[key]
        timer: list[IDelayedCall] = []

        def landed() -> None:
            if timer:
                call = timer.pop()
                if call.active():
                    call.cancel()
            wake()

        def timedOut() -> None:
            timer.clear()
            if landed in flight.waiters:
                flight.waiters.remove(landed)
            wake()

        flight.waiters.append(landed)
        timer.append(self._reactor.callLater(timeout, timedOut))

    def land(self, key: bytes) -> None:
        """
        The backend request for C{key} is over (if one was in flight): wake
        its waiters.
        """
        flight = self.flying.pop(key, None)
        if flight is None:
            return
        for waiter in flight.waiters:
            try:
                waiter()
            except Exception:
                _log.failure("A coalesced request failed", Failure())


@runtime_checkable
class SharedFlights(Protocol):
    """
    What a store shared by several processes offers for coalescing across
    them: the lock of a cold key's backend request.
    """

    def claimFetch(self, key: bytes, ttl: float) -> Deferred[bytes | None]:
        """
        Take the lock of the backend request for C{key}, for at most C{ttl}
        seconds.

        @return: A Deferred firing with a token (give it to
            L{releaseFetch}) when this process is to fetch; with C{b""}
            when the lock could not be asked (the store is unreachable):
            fetch, holding nothing; with L{None} when another process holds
            it. It never fails.
        """

    def releaseFetch(self, key: bytes, token: bytes) -> None:
        """
        Release the lock taken with C{token}, once the response is stored
        (or known not to be).
        """

    def awaitEntry(self, key: bytes) -> Deferred[tuple[bool, list[CacheEntry]]]:
        """
        Look for what another process's backend request stored.

        @return: A Deferred firing with whether the lock of C{key} is still
            held, and the entries stored under it; or failing when the
            store cannot be reached.
        """


def awaitShared(
    reactor: IReactorTime,
    flights: SharedFlights,
    key: bytes,
    timeout: float,
    found: Callable[[list[CacheEntry]], bool],
    giveUp: Callable[[], None],
) -> None:
    """
    Wait for the backend request another process makes for C{key}: look
    for its entry now and then (from L{POLL_FIRST} apart to L{POLL_MAX})
    until C{found} takes what was stored, or the lock is released without
    an entry that C{found} takes, or C{timeout} seconds passed, or the
    store cannot be reached; then C{giveUp}.

    @param found: Given the entries stored under C{key} after each look;
        returns whether it is done with them (it answered the request, or
        the request is gone).
    @param giveUp: Called once, if C{found} never returned L{True}.
    """
    deadline = reactor.seconds() + timeout
    interval = [POLL_FIRST]

    def look() -> None:
        flights.awaitEntry(key).addCallbacks(looked, failed)

    def looked(result: tuple[bool, list[CacheEntry]]) -> None:
        held, entries = result
        try:
            if found(entries):
                return
        except Exception:
            _log.failure("A request waiting for another proxy failed", Failure())
            return
        now = reactor.seconds()
        if not held or now >= deadline:
            giveUp()
            return
        delay = min(interval[0], deadline - now)
        interval[0] = min(interval[0] * 2, POLL_MAX)
        reactor.callLater(delay, look)

    def failed(failure: Failure) -> None:
        giveUp()

    reactor.callLater(interval[0], look)
