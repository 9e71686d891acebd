"""
The lock that lets one process order while the others wait: a file lock
(C{flock}) in the storage directory for the workers of one machine, and a
Redis lock (C{SET NX PX}, with a token so that only its holder frees it)
when C{[state]} is configured, for several instances.
"""

from __future__ import annotations

import fcntl
import os
import secrets

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.state import Script, SharedState, StateUnavailable

__all__ = ["FileLock", "OrderLock", "RedisLock", "REDIS_LOCK_TTL"]

_log = Logger()

#: How long a Redis lock lives unless its holder refreshes it (seconds):
#: long enough for an order, short enough that a crashed holder's lock
#: frees itself.
REDIS_LOCK_TTL = 300.0

_REFRESH = Script(
    'if redis.call("GET", KEYS[1]) == ARGV[1] then '
    'return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end'
)
_RELEASE = Script(
    'if redis.call("GET", KEYS[1]) == ARGV[1] then '
    'return redis.call("DEL", KEYS[1]) else return 0 end'
)


class FileLock:
    """
    An exclusive C{flock} on a file, taken without waiting.

    @ivar path: The file locked.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """
        Whether this lock holds the file now.
        """
        return self._fd is not None

    def acquire(self) -> bool:
        """
        Take the lock if no other holder has it.

        @return: Whether it was taken (or was held already).
        @raise OSError: If the file cannot be opened.
        """
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        """
        Free the lock, if held.
        """
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class RedisLock:
    """
    A lock in the shared Redis, refreshed while held.

    @ivar key: Its Redis key.
    @ivar ttl: Seconds it lives without a refresh.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        state: SharedState,
        name: str,
        ttl: float = REDIS_LOCK_TTL,
    ) -> None:
        self.reactor = reactor
        self.state = state
        self.key = state.key("acme", "lock", name)
        self.ttl = ttl
        self._token: str | None = None
        self._refresher: LoopingCall | None = None

    @property
    def held(self) -> bool:
        """
        Whether this lock holds the key now (as far as it knows).
        """
        return self._token is not None

    def acquire(self) -> Deferred[bool]:
        """
        Take the lock if no other holder has it.

        @return: A L{Deferred} firing with whether it was taken, or failing
            with L{StateUnavailable}.
        """
        if self._token is not None:
            return succeed(True)
        token = secrets.token_hex(16)

        def taken(reply: object) -> bool:
            if reply not in ("OK", b"OK", True):
                return False
            self._token = token
            refresher = self._refresher = LoopingCall(self._refresh)
            refresher.clock = self.reactor
            refresher.start(self.ttl / 3, now=False).addErrback(lambda _: None)
            return True

        setting = self.state.execute(
            "SET", self.key, token, "NX", "PX", int(self.ttl * 1000)
        )
        return setting.addCallback(taken)

    def _refresh(self) -> Deferred[None]:
        token = self._token
        if token is None:
            return succeed(None)

        def refreshed(reply: object) -> None:
            if not reply and self._token == token:
                _log.warn("ACME: the Redis order lock {key} was lost", key=self.key)
                self._stopRefreshing()
                self._token = None

        def failed(failure: Failure) -> None:
            _log.warn(
                "ACME: cannot refresh the Redis order lock: {error}",
                error=failure.getErrorMessage(),
            )

        refreshing = self.state.evalScript(
            _REFRESH, [self.key], [token, int(self.ttl * 1000)]
        )
        return refreshing.addCallbacks(refreshed, failed)

    def _stopRefreshing(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None and refresher.running:
            refresher.stop()

    def release(self) -> Deferred[None]:
        """
        Free the lock if this holder still has it; an error is logged, and
        the lock then frees itself after its C{ttl}.
        """
        self._stopRefreshing()
        token, self._token = self._token, None
        if token is None:
            return succeed(None)

        def failed(failure: Failure) -> None:
            _log.warn(
                "ACME: cannot free the Redis order lock (it expires by itself): "
                "{error}",
                error=failure.getErrorMessage(),
            )

        releasing = self.state.evalScript(_RELEASE, [self.key], [token])
        return releasing.addCallbacks(lambda _: None, failed)


class OrderLock:
    """
    What a process takes before it orders a certificate: the Redis lock
    when there is a shared state (the file lock while Redis cannot be
    reached), else the file lock.

    @ivar redisLock: The Redis lock the next L{acquire} tries; replaced
        when a reload changes C{[state]} (the lock held then is freed where
        it was taken).
    """

    def __init__(self, fileLock: FileLock, redisLock: RedisLock | None = None) -> None:
        self.fileLock = fileLock
        self.redisLock = redisLock
        self._holding: FileLock | RedisLock | None = None

    @property
    def held(self) -> bool:
        """
        Whether it is held by this process now.
        """
        return self._holding is not None and self._holding.held

    def _took(self, lock: FileLock | RedisLock, taken: bool) -> bool:
        if taken:
            self._holding = lock
        return taken

    def acquire(self) -> Deferred[bool]:
        """
        Take the lock without waiting.

        @return: A L{Deferred} firing with whether it was taken, or failing
            with the shared state's error for a reply other than an outage
            (L{StateUnavailable} falls back to the file lock).
        @raise OSError: If the file lock's file cannot be opened.
        """
        if self.held:
            return succeed(True)
        self._holding = None
        fileLock = self.fileLock
        redisLock = self.redisLock
        if redisLock is None:
            return succeed(self._took(fileLock, fileLock.acquire()))

        def unavailable(failure: Failure) -> bool:
            failure.trap(StateUnavailable)
            _log.warn(
                "ACME: the shared state is unavailable ({error}); ordering "
                "under the local file lock",
                error=failure.getErrorMessage(),
            )
            return self._took(fileLock, fileLock.acquire())

        return redisLock.acquire().addCallbacks(
            lambda taken: self._took(redisLock, taken), unavailable
        )

    def release(self) -> Deferred[None]:
        """
        Free the lock where it was taken (the file, or the Redis it was
        taken in, even if L{redisLock} was replaced since).
        """
        holding, self._holding = self._holding, None
        if isinstance(holding, RedisLock):
            return holding.release()
        if holding is not None:
            holding.release()
        return succeed(None)
