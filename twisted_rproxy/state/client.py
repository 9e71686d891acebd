"""
L{SharedState}: the proxy's client of the shared Redis (C{[state]}), on
which the Redis cache store and the shared rate limits are built.

Every operation is bounded by C{[state] timeout}.  One that fails because
Redis is not there (refused, lost, too slow, not connected yet) fails with
L{StateUnavailable}, so that its user can do what C{on_error} says; an
error of Redis' own about the command (a bug in a script, a key of the
wrong type) fails as itself.  An outage is logged once when it starts and
once when it ends, never once per operation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from attrs import field, frozen
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.error import ConnectError, ConnectionClosed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.config.state import StateConfig
from twisted_rproxy.state._txredis import (
    connectionErrors,
    connectPool,
    poolGaveUp,
    poolSize,
    responseErrors,
)

_log = Logger()

#: Connections of each process to the shared Redis.  Commands are
#: pipelined on them (txredisapi sends without waiting for the previous
#: reply), so a few carry a busy worker.
POOL_SIZE = 4

#: The longest wait before a pool that gave up (see L{poolGaveUp}) is
#: opened again; the wait doubles from one second up to this.
MAX_REOPEN_DELAY = 30.0

#: Error replies that say the server cannot serve now, not that the command
#: is wrong: they count as an outage.
_UNAVAILABLE_REPLIES = (
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "MISCONF",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "OOM",
    "TRYAGAIN",
    "CLUSTERDOWN",
)


class StateUnavailable(Exception):
    """
    The shared state could not be reached in time: the operation may or
    may not have been done.  Features fall back as C{[state] on_error}
    says.
    """


def _scriptBytes(source: str | bytes) -> bytes:
    return source.encode("utf-8") if isinstance(source, str) else source


@frozen
class Script:
    """
    A Lua script run by L{SharedState.evalScript}: sent once per Redis
    server (C{EVAL}), then called by its SHA1 digest (C{EVALSHA}).

    @ivar source: The script's text.
    @ivar sha1: Its SHA1 digest in hexadecimal, as Redis names it.
    """

    source: bytes = field(converter=_scriptBytes, repr=False)
    sha1: str = field(init=False)

    @sha1.default
    def _digest(self) -> str:
        return hashlib.sha1(self.source).hexdigest()


def _part(part: bytes | str) -> bytes:
    return part.encode("utf-8") if isinstance(part, str) else part


class SharedState:
    """
    A pool of connections to the shared Redis of C{[state]}.

    @ivar config: The configuration it connects with.
    @ivar reactor: The reactor that times operations.
    @ivar failures: How many operations failed with L{StateUnavailable},
        since it was made.
    @ivar lastError: What made the last operation fail, or L{None}.
    """

    def __init__(
        self, reactor: IReactorTime, config: StateConfig, poolSize: int = POOL_SIZE
    ) -> None:
        """
        @param reactor: See L{reactor}.
        @param config: See L{config}.
        @param poolSize: How many connections to keep open.
        """
        self.reactor = reactor
        self.config = config
        self.failures = 0
        self.lastError: str | None = None
        self._poolSize = poolSize
        self._prefix = config.keyPrefix.encode("utf-8")
        self._handler: Any = None
        self._running = False
        self._outageSince: float | None = None
        self._outageFailures = 0
        self._probing: Deferred[object] | None = None
        self._waiters: list[Deferred[None]] = []
        self._reopens = 0
        self._reopening: IDelayedCall | None = None

    @property
    def onError(self) -> str:
        """
        C{[state] on_error}: C{"local"}, C{"open"} or C{"closed"}.
        """
        return self.config.onError

    @property
    def available(self) -> bool:
        """
        L{False} during an outage: from an operation that failed with
        L{StateUnavailable} until one succeeds.
        """
        return self._outageSince is None

    @property
    def running(self) -> bool:
        """
        Whether L{start} was called and L{stop} was not since.
        """
        return self._running

    def start(self) -> None:
        """
        Open the pool; it connects in the background.  Operations made
        before a connection is up wait for it (within the timeout).

        @raise RuntimeError: If txredisapi is not installed.
        """
        if self._running:
            return
        self._handler = connectPool(self.config, self._poolSize)
        self._running = True

    def stop(self) -> Deferred[None]:
        """
        Close every connection, and stop reconnecting.  Operations still
        waiting fail with L{StateUnavailable}.

        @return: A L{Deferred} that fires once the connections are closed.
        """
        self._running = False
        if self._reopening is not None and self._reopening.active():
            self._reopening.cancel()
        self._reopening = None
        if self._probing is not None:
            self._probing.cancel()
        self._failWaiters("the shared state is stopping")
        handler, self._handler = self._handler, None
        if handler is None:
            done: Deferred[None] = Deferred()
            done.callback(None)
            return done
        return _disconnect(handler)

    def key(self, *parts: bytes | str) -> bytes:
        """
        A key of the proxy's: C{[state] key_prefix} then C{parts} joined
        with C{:}.  C{key("rl", "api", client)} is C{b"rproxy:rl:api:..."}.
        """
        return self._prefix + b":".join(_part(part) for part in parts)

    def execute(self, command: str, *args: object) -> Deferred[Any]:
        """
        Run one Redis command.

        @param command: The command's name, such as C{"GET"} or C{"SET"}.
        @param args: Its arguments: L{bytes}, L{str} (sent as UTF-8) or
            numbers.
        @return: A L{Deferred} firing with the reply (L{bytes} for a bulk
            string, L{int}, L{None}, L{str} for a status such as C{"OK"},
            a L{list} for an array), or failing with L{StateUnavailable}
            or, for an error reply about the command, txredisapi's
            C{ResponseError}.
        """

        def run(handler: Any) -> Deferred[Any]:
            result: Deferred[Any] = handler.execute_command(command, *args)
            return result

        return self._bounded(command, run)

    def evalScript(
        self,
        script: Script,
        keys: Sequence[bytes],
        args: Sequence[bytes | int | str],
    ) -> Deferred[Any]:
        """
        Run a Lua script: C{EVALSHA}, and when Redis does not have it
        (C{NOSCRIPT}: restarted, flushed, another server behind the same
        address) C{EVAL}, which runs it and keeps it for the next call.
        Both are bounded by one timeout.

        @param keys: The keys it touches (C{KEYS}).
        @param args: Its arguments (C{ARGV}).
        @return: A L{Deferred} firing with the script's reply, or failing as
            L{execute}'s does (an error in the script fails as
            C{ResponseError}).
        """
        keyList = list(keys)
        argList = list(args)

        def run(handler: Any) -> Deferred[Any]:
            def noScript(failure: Failure) -> Any:
                failure.trap(*responseErrors())
                if not str(failure.value).startswith("NOSCRIPT"):
                    return failure
                return handler.execute_command(
                    "EVAL", script.source, len(keyList), *keyList, *argList
                )

            result: Deferred[Any] = handler.execute_command(
                "EVALSHA", script.sha1, len(keyList), *keyList, *argList
            )
            return result.addErrback(noScript)

        return self._bounded("EVALSHA", run)

    def _bounded(
        self, what: str, operation: Callable[[Any], Deferred[Any]]
    ) -> Deferred[Any]:
        """
        Run C{operation} on the pool, within the timeout, and keep count of
        the outage it may be part of.
        """
        handler = self._handler
        result: Deferred[Any]
        if handler is not None and poolSize(handler) > 0:
            # The common case, without a coroutine: a connection is up.
            try:
                result = operation(handler)
            except Exception:
                result = fail()
        else:
            result = Deferred.fromCoroutine(self._attempt(operation))
        result.addTimeout(self.config.timeout, self.reactor)
        return result.addCallbacks(self._succeeded, self._failed, errbackArgs=(what,))

    async def _attempt(self, operation: Callable[[Any], Deferred[Any]]) -> Any:
        handler = self._handler
        if handler is None:
            raise StateUnavailable("the shared state is not running")
        if poolSize(handler) == 0:
            if poolGaveUp(handler):
                self._scheduleReopen()
                raise StateUnavailable("the connections were refused (see above)")
            if not self.available:
                # During an outage, fail at once rather than make every
                # request wait for the timeout; the probe sees it end.
                self._probe()
                raise StateUnavailable("not connected")
            await self._whenConnected()
        return await operation(handler)

    def _whenConnected(self) -> Deferred[None]:
        """
        Fire once a connection is up (cancelled by the operation's timeout).
        """

        def forget(waiter: Deferred[None]) -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

        waiter: Deferred[None] = Deferred(forget)
        self._waiters.append(waiter)
        self._probe()
        return waiter

    def _probe(self) -> None:
        """
        Send one C{PING}, which waits for the pool's next connection: its
        answer ends an outage, and lets the operations waiting go on.
        """
        if self._probing is not None or self._handler is None:
            return
        handler = self._handler
        self._probing = handler.ping()

        def answered(result: object) -> None:
            self._probing = None
            self._succeeded(result)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> None:
            self._probing = None
            if failure.check(CancelledError) or not self._running:
                # Stopped, or its pool replaced (see _reopen).
                self._failWaiters("not connected")
                return
            self._failWaiters(_reasonOf(failure))
            if poolGaveUp(handler):
                self._scheduleReopen()

        self._probing.addCallbacks(answered, failed)

    def _failWaiters(self, reason: str) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(StateUnavailable(reason))

    def _scheduleReopen(self) -> None:
        """
        Open a new pool in place of one that gave up, after a delay that
        grows with each attempt.
        """
        if self._reopening is not None or not self._running:
            return
        delay = min(MAX_REOPEN_DELAY, 2.0**self._reopens)
        self._reopens += 1
        self._reopening = self.reactor.callLater(delay, self._reopen)

    def _reopen(self) -> None:
        self._reopening = None
        if not self._running:
            return
        if self._probing is not None:
            # It waits on the old pool, which will never connect again.
            self._probing.cancel()
        old, self._handler = self._handler, None
        if old is not None:
            _disconnect(old)
        self._handler = connectPool(self.config, self._poolSize)

    def _succeeded(self, result: object) -> object:
        if self._outageSince is not None and self._running:
            _log.info(
                "Shared state: Redis at {url} is reachable again, after "
                "{seconds:.1f} s and {failed} failed operations",
                url=self.config.displayURL,
                seconds=self.reactor.seconds() - self._outageSince,
                failed=self._outageFailures,
            )
            self._outageSince = None
            self._outageFailures = 0
            self._reopens = 0
        return result

    def _failed(self, failure: Failure, what: str) -> Failure:
        if failure.check(CancelledError):
            # Cancelled by its caller: nothing to say about Redis.
            return failure
        if failure.check(*responseErrors()):
            reply = str(failure.value)
            if not reply.startswith(_UNAVAILABLE_REPLIES):
                # Redis answered: the command (or script) is at fault.
                self._succeeded(None)
                return failure
            reason = f"Redis replied {reply!r}"
        elif failure.check(TimeoutError):
            reason = f"no reply within {self.config.timeout:g} s"
        elif failure.check(StateUnavailable):
            reason = str(failure.value)
        elif failure.check(*connectionErrors(), ConnectError, ConnectionClosed):
            reason = _reasonOf(failure)
        else:
            return failure
        self.failures += 1
        self.lastError = f"{what}: {reason}"
        if not self._running:
            return Failure(StateUnavailable(self.lastError))
        self._outageFailures += 1
        if self._outageSince is None:
            self._outageSince = self.reactor.seconds()
            _log.warn(
                "Shared state: Redis at {url} is unreachable ({what}: {reason}); "
                'on_error = "{onError}" applies until it is back',
                url=self.config.displayURL,
                what=what,
                reason=reason,
                onError=self.config.onError,
            )
        return Failure(StateUnavailable(self.lastError))


def _reasonOf(failure: Failure) -> str:
    return failure.getErrorMessage() or type(failure.value).__name__


def _disconnect(handler: Any) -> Deferred[None]:
    """
    Close a pool, stopping its reconnections; any error doing so is of no
    use to anyone.
    """
    closing: Deferred[object] = handler.disconnect()
    done: Deferred[None] = Deferred()
    closing.addBoth(lambda _: done.callback(None))
    return done
