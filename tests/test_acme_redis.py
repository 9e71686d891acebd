"""
The ACME order lock on a real C{redis-server} of the test's own
(L{tests.redis.RedisServer}): L{RedisLock} and L{OrderLock} as several
instances use them, and the manager's lock after a reload that replaces
C{[state]}.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tests.fixtures import asyncTest, sleep
from tests.redis import RedisServer
from tests.test_acme_manager import _config, _FakeCA
from twisted_rproxy.acme import (
    ACMEManager,
    FileLock,
    OrderLock,
    RedisLock,
    SynchronousRunner,
)
from twisted_rproxy.acme.lock import REDIS_LOCK_TTL
from twisted_rproxy.config import StateConfig, parseConfig
from twisted_rproxy.service import ProxyService
from twisted_rproxy.state import SharedState
from twisted_rproxy.tls import ServerTLS

#: Bounded waits: rounds of L{STEP} seconds.
ROUNDS = 100
STEP = 0.05


def _temporaryDirectory(case: TestCase) -> str:
    path = tempfile.mkdtemp(prefix="rproxy-acme-redis-")
    case.addCleanup(shutil.rmtree, path, True)
    return path


class RedisCase(TestCase):
    """
    A C{redis-server} per test, and the L{SharedState}s (one per simulated
    instance) and locks on it, stopped at the end.
    """

    timeout = 60

    def setUp(self) -> None:
        self.redis = self.startRedis()
        self.storage = _temporaryDirectory(self)
        self.lockPath = os.path.join(self.storage, "order.lock")

    def startRedis(self) -> RedisServer:
        server = RedisServer().start()
        self.addCleanup(server.cleanUp)
        return server

    def sharedState(self, server: RedisServer | None = None) -> SharedState:
        config = StateConfig.fromURL((server or self.redis).url, timeout=2.0)
        state = SharedState(reactor, config)
        state.start()
        self.addCleanup(state.stop)
        return state

    def redisLock(
        self,
        state: SharedState,
        clock: Clock | None = None,
        ttl: float = REDIS_LOCK_TTL,
    ) -> RedisLock:
        lock = RedisLock(clock or Clock(), state, "order", ttl)
        self.addCleanup(lock.release)
        return lock

    def orderLock(self, state: SharedState) -> OrderLock:
        lock = OrderLock(FileLock(self.lockPath), self.redisLock(state))
        self.addCleanup(lock.release)
        return lock

    def pttl(self, key: bytes, server: RedisServer | None = None) -> int:
        reply = (server or self.redis).command("PTTL", key)
        assert isinstance(reply, int)
        return reply

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        for _ in range(ROUNDS):
            if condition():
                return
            await sleep(STEP)
        self.fail(f"not within {ROUNDS * STEP:g}s: {what}")


class RedisLockTests(RedisCase):
    """
    L{RedisLock} between two instances (two shared-state clients) of one
    Redis.
    """

    @asyncTest
    async def test_oneHolderAtATime(self) -> None:
        """
        While one instance holds the lock, another cannot take it; the key
        lives C{ttl}; once freed, the other takes it.
        """
        first = self.redisLock(self.sharedState())
        second = self.redisLock(self.sharedState())
        self.assertTrue(await first.acquire())
        self.assertFalse(await second.acquire())
        self.assertTrue(first.held)
        self.assertFalse(second.held)
        self.assertEqual(first.key, b"rproxy:acme:lock:order")
        self.assertTrue(0 < self.pttl(first.key) <= REDIS_LOCK_TTL * 1000)
        # Taking it again while held is a no-op that says yes.
        self.assertTrue(await first.acquire())
        await first.release()
        self.assertEqual(self.redis.command("EXISTS", first.key), 0)
        self.assertTrue(await second.acquire())
        self.assertFalse(await first.acquire())

    @asyncTest
    async def test_refreshedWhileHeld(self) -> None:
        """
        The holder refreshes the key's lifetime every third of C{ttl}, so
        that a long order keeps it.
        """
        clock = Clock()
        lock = self.redisLock(self.sharedState(), clock)
        self.assertTrue(await lock.acquire())
        for _ in range(2):
            self.redis.command("PEXPIRE", lock.key, 2000)
            self.assertLessEqual(self.pttl(lock.key), 2000)
            clock.advance(REDIS_LOCK_TTL / 3)
            await self.until(
                lambda: self.pttl(lock.key) > 2000, "the lock was refreshed"
            )
            self.assertTrue(lock.held)

    @asyncTest
    async def test_freedOnlyByItsHolder(self) -> None:
        """
        A release by an instance that does not hold the lock leaves it; an
        instance whose lock expired (and was taken by another) neither
        frees nor refreshes the other's, and learns it lost it.
        """
        firstClock = Clock()
        first = self.redisLock(self.sharedState(), firstClock)
        second = self.redisLock(self.sharedState())
        self.assertTrue(await first.acquire())
        await second.release()
        self.assertEqual(self.redis.command("EXISTS", first.key), 1)
        # The first holder's key expires (it was slow), the second takes it.
        self.redis.command("DEL", first.key)
        self.assertTrue(await second.acquire())
        held = self.redis.command("GET", first.key)
        firstClock.advance(REDIS_LOCK_TTL / 3)
        await self.until(lambda: not first.held, "the first learnt it lost the lock")
        self.assertEqual(self.redis.command("GET", first.key), held)
        self.redis.command("PEXPIRE", first.key, 5000)
        await first.release()
        self.assertEqual(self.redis.command("GET", first.key), held)
        self.assertLessEqual(self.pttl(first.key), 5000)
        self.assertTrue(second.held)
        self.flushLoggedErrors()

    @asyncTest
    async def test_expiresWhenHolderDies(self) -> None:
        """
        A holder that stops refreshing (its process died: its clock never
        runs, its connections are closed) loses the lock after C{ttl}, and
        another instance takes it then.
        """
        deadState = self.sharedState()
        dead = RedisLock(Clock(), deadState, "order", ttl=1.0)
        self.assertTrue(await dead.acquire())
        await deadState.stop()
        other = self.redisLock(self.sharedState())
        self.assertFalse(await other.acquire())
        self.assertTrue(0 < self.pttl(other.key) <= 1000)
        started = time.monotonic()
        for _ in range(ROUNDS):
            if await other.acquire():
                break
            await sleep(STEP)
        self.assertTrue(other.held)
        # Not before its lifetime (a little less, for the clocks' steps).
        self.assertGreater(time.monotonic() - started, 0.5)


class OrderLockTests(RedisCase):
    """
    L{OrderLock}: the Redis lock, and the file lock while Redis is down.
    """

    @asyncTest
    async def test_redisDecides(self) -> None:
        """
        With Redis up, the lock is taken in Redis and the file stays free
        (instances on other machines do not share it).
        """
        first = self.orderLock(self.sharedState())
        second = self.orderLock(self.sharedState())
        self.assertTrue(await first.acquire())
        self.assertEqual(self.redis.command("EXISTS", b"rproxy:acme:lock:order"), 1)
        probe = FileLock(self.lockPath)
        self.assertTrue(probe.acquire())
        probe.release()
        self.assertFalse(await second.acquire())
        await first.release()
        self.assertEqual(self.redis.command("EXISTS", b"rproxy:acme:lock:order"), 0)
        self.assertTrue(await second.acquire())

    @asyncTest
    async def test_fileLockWhileRedisDown(self) -> None:
        """
        While Redis cannot be reached, the instances sharing the storage
        take the file lock in it (one at a time); once Redis is back, the
        Redis lock decides again.
        """
        firstState = self.sharedState()
        first = self.orderLock(firstState)
        second = self.orderLock(self.sharedState())
        self.assertEqual(await firstState.execute("PING"), "PONG")
        self.redis.stop()
        self.assertTrue(await first.acquire())
        self.assertTrue(first.held)
        self.assertTrue(first.fileLock.held)
        self.assertFalse(await second.acquire())
        await first.release()
        self.assertFalse(first.fileLock.held)
        self.assertTrue(await second.acquire())
        self.assertTrue(second.fileLock.held)
        await second.release()
        self.redis.start()

        async def redisTaken() -> bool:
            taken = await first.acquire()
            if taken and first.fileLock.held:
                await first.release()
                return False
            return taken

        for _ in range(ROUNDS):
            if await redisTaken():
                break
            await sleep(STEP)
        self.assertTrue(first.held)
        self.assertFalse(first.fileLock.held)
        self.assertEqual(self.redis.command("EXISTS", b"rproxy:acme:lock:order"), 1)
        self.flushLoggedErrors()


class _LockWatchingCA(_FakeCA):
    """
    A fake CA that notes, at each order, which Redis holds the order lock.
    """

    def __init__(self, clock: Clock, servers: dict[str, RedisServer]) -> None:
        super().__init__(clock, lifetime=3 * 86400)
        self.servers = servers
        self.lockedIn: list[list[str]] = []

    def order(
        self,
        domains: Sequence[str],
        keyPEM: bytes,
        challenge: str,
        publish: Callable[[str, str, str], None],
        withdraw: Callable[[str, str], None],
        *,
        cancelled: Callable[[], bool],
    ) -> bytes:
        self.lockedIn.append(
            sorted(
                name
                for name, server in self.servers.items()
                if server.command("EXISTS", b"rproxy:acme:lock:order") == 1
            )
        )
        return super().order(
            domains, keyPEM, challenge, publish, withdraw, cancelled=cancelled
        )


class ReloadedStateTests(RedisCase):
    """
    A reload that replaces C{[state]} moves the order lock to the new
    Redis.
    """

    @asyncTest
    async def test_managerTakesNewState(self) -> None:
        """
        After L{ACMEManager.setSharedState}, the next order is made under a
        lock in the new Redis, none in the old one.
        """
        other = self.startRedis()
        clock = Clock()
        clock.advance(time.time())
        ca = _LockWatchingCA(clock, {"old": self.redis, "new": other})
        config = parseConfig(_config(self.storage), "rproxy.toml", self.storage)
        assert config.acme is not None
        oldState = self.sharedState()
        manager = ACMEManager(
            clock,
            config.acme,
            [(config.tls[0], ServerTLS(config.tls[0]))],
            sharedState=oldState,
            runner=SynchronousRunner(),
            clientFactory=lambda key: ca,
            random=lambda: 0.5,
        )
        manager.start()
        self.addCleanup(manager.stop)
        clock.advance(0)
        await self.until(lambda: len(ca.lockedIn) == 1, "the first order")
        await self.until(lambda: not manager.ordering, "the first order's end")
        self.assertEqual(ca.lockedIn, [["old"]])
        newState = self.sharedState(other)
        manager.setSharedState(newState)
        self.assertIs(manager.sharedState, newState)
        renewAt = manager.status()[0].renewAt
        assert renewAt is not None
        clock.advance(renewAt - clock.seconds())
        await self.until(lambda: len(ca.lockedIn) == 2, "the renewal")
        await self.until(lambda: not manager.ordering, "the renewal's end")
        self.assertEqual(ca.lockedIn[1], ["new"])
        self.assertEqual(other.command("EXISTS", b"rproxy:acme:lock:order"), 0)
        manager.setSharedState(None)
        self.assertIsNone(manager.sharedState)

    def test_serviceReloadHandsNewState(self) -> None:
        """
        L{ProxyService.reload} with another C{[state]} gives the ACME
        manager the new shared state (and without C{[state]}, none).
        """
        other = self.startRedis()

        def config(state: RedisServer | None) -> Any:
            data = _config(self.storage)
            if state is not None:
                data["state"] = {"redis": state.url}
            return parseConfig(data, "rproxy.toml", self.storage)

        service = ProxyService(config(self.redis), reactor)
        assert service.acme is not None
        first = service.sharedState
        self.assertIsNotNone(first)
        self.assertIs(service.acme.sharedState, first)
        service.reload(config(other))
        self.assertIsNot(service.sharedState, first)
        self.assertIsNotNone(service.sharedState)
        self.assertIs(service.acme.sharedState, service.sharedState)
        service.reload(config(None))
        self.assertIsNone(service.sharedState)
        self.assertIsNone(service.acme.sharedState)
        self.flushLoggedErrors()
