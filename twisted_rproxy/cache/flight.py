"""
Request coalescing: while the backend request for a key is in flight, other
requests for the same key wait for it (L{Flights}), then look again.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["Flights"]

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
    The keys whose backend request is in flight, and who waits on each.
    """

    __slots__ = ("_reactor", "_flights")

    def __init__(self, reactor: IReactorTime) -> None:
        """
        @param reactor: The clock of the waits.
        """
        self._reactor = reactor
        self._flights: dict[bytes, _Flight] = {}

    def __contains__(self, key: bytes) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        return len(self._flights)

    def start(self, key: bytes) -> None:
        """
        A backend request for C{key} takes off.
        """
        self._flights[key] = _Flight()

    def wait(self, key: bytes, wake: Callable[[], None], timeout: float) -> None:
        """
        Call C{wake} once, when the backend request for C{key} (which must
        be in flight) is over, or after C{timeout} seconds if that is
        sooner.
        """
        flight = self._flights[key]
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
        flight = self._flights.pop(key, None)
        if flight is None:
            return
        for waiter in flight.waiters:
            try:
                waiter()
            except Exception:
                _log.failure("A coalesced request failed", Failure())
