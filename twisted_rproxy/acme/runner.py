"""
Where the manager's blocking calls run: L{ThreadRunner} (the reactor's
thread pool, in service) and L{SynchronousRunner} (the caller's thread, for
tests with a fake CA); and L{ACMEClient}, what the manager needs of the
client it runs there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred

__all__ = ["ACMEClient", "SynchronousRunner", "ThreadRunner"]

_T = TypeVar("_T")


class ACMEClient(Protocol):
    """
    What the manager needs of an ACME client (L{BlockingACMEClient}); its
    methods block, and run in a thread.
    """

    def register(self) -> str: ...

    def order(
        self,
        domains: Sequence[str],
        keyPEM: bytes,
        challenge: str,
        publish: Callable[[str, str, str], None],
        withdraw: Callable[[str, str], None],
        *,
        cancelled: Callable[[], bool],
    ) -> bytes: ...


class ThreadRunner:
    """
    Runs blocking calls in the reactor's thread pool, and calls back into
    the reactor's thread from them.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def run(self, function: Callable[[], _T]) -> Deferred[_T]:
        """
        Call C{function} in a thread.
        """
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), function)

    def callInReactor(self, function: Callable[..., _T], *args: Any) -> _T:
        """
        From the thread, call C{function} in the reactor's and wait.
        """
        from twisted.internet.threads import blockingCallFromThread

        result: _T = blockingCallFromThread(self.reactor, function, *args)
        return result


class SynchronousRunner:
    """
    Runs the blocking calls at once, in the caller's thread: for tests
    with a fake client.
    """

    def run(self, function: Callable[[], _T]) -> Deferred[_T]:
        """
        Call C{function} now.
        """
        return maybeDeferred(function)

    def callInReactor(self, function: Callable[..., _T], *args: Any) -> _T:
        """
        Call C{function} now.
        """
        return function(*args)
