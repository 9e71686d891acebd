"""
Tests for the shared state: the C{[state]} table (L{StateConfig}), and
L{twisted_rproxy.state.SharedState} against a real C{redis-server} of the
test's own (L{tests.redis.RedisServer}), outages included.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import provider

from tests.fixtures import asyncTest, freePort, sleep
from tests.redis import RedisServer
from tests.test_config import VALID, ConfigTestMixin
from twisted_rproxy.config import (
    ConfigError,
    StateConfig,
    parseConfig,
    parseRedisURL,
    statetable,
)
from twisted_rproxy.filters import FilterChain
from twisted_rproxy.router import Router
from twisted_rproxy.service import ProxyService
from twisted_rproxy.state import Script, SharedState, StateUnavailable, _txredis

#: A password that must never show in logs, reprs or errors.
SECRET = "s3cr3t-p@ss"

#: Seconds an outage test waits at most for txredisapi to reconnect (its
#: backoff grows to 10 s between attempts).
RECONNECT_WITHIN = 20.0


class StateURLTests(SynchronousTestCase):
    """
    L{parseRedisURL} reads the three kinds of URL once.
    """

    def test_tcpDefaults(self) -> None:
        """
        A bare host gets port 6379 and database 0.
        """
        state = parseRedisURL("redis://cache.example.com", "f.toml", "state.redis")
        self.assertEqual(
            (state.scheme, state.host, state.port, state.db, state.path),
            ("redis", "cache.example.com", 6379, 0, None),
        )
        self.assertFalse(state.tls)
        self.assertIsNone(state.username)
        self.assertIsNone(state.password)
        self.assertEqual(state.displayURL, "redis://cache.example.com:6379/0")

    def test_tcpFull(self) -> None:
        """
        Port, database and percent-decoded user and password are read; TLS
        with C{rediss}.
        """
        state = parseRedisURL(
            "rediss://app%3Aone:s3cr3t-p%40ss@10.0.0.5:6380/7", "f.toml", "state.redis"
        )
        self.assertEqual(
            (state.scheme, state.host, state.port, state.db),
            ("rediss", "10.0.0.5", 6380, 7),
        )
        self.assertTrue(state.tls)
        self.assertEqual((state.username, state.password), ("app:one", SECRET))
        self.assertEqual(state.displayURL, "rediss://app:one:***@10.0.0.5:6380/7")

    def test_ipv6(self) -> None:
        """
        An IPv6 literal is written in brackets and kept without them.
        """
        state = parseRedisURL("redis://[::1]:7000/2", "f.toml", "state.redis")
        self.assertEqual((state.host, state.port, state.db), ("::1", 7000, 2))
        self.assertEqual(state.displayURL, "redis://[::1]:7000/2")

    def test_unix(self) -> None:
        """
        A Unix socket URL gives the path, and the database as C{?db=N}.
        """
        state = parseRedisURL(
            "unix://:s3cr3t-p%40ss@/run/redis/redis.sock?db=3", "f.toml", "state.redis"
        )
        self.assertEqual(
            (state.scheme, state.host, state.path, state.db, state.password),
            ("unix", None, "/run/redis/redis.sock", 3, SECRET),
        )
        self.assertEqual(state.displayURL, "unix://:***@/run/redis/redis.sock?db=3")
        plain = parseRedisURL("unix:///tmp/r.sock", "f.toml", "state.redis")
        self.assertEqual((plain.path, plain.db), ("/tmp/r.sock", 0))

    def test_passwordHidden(self) -> None:
        """
        The password is in neither the display URL nor the C{repr}.
        """
        state = parseRedisURL(
            "redis://:s3cr3t-p%40ss@127.0.0.1/0", "f.toml", "state.redis"
        )
        self.assertEqual(state.password, SECRET)
        self.assertNotIn("s3cr3t", state.displayURL)
        self.assertNotIn("s3cr3t", repr(state))

    def test_bad(self) -> None:
        """
        Each malformed URL is an error of the key, naming the file, that
        never shows the password.
        """
        bad = {
            "": "spaces and control characters",
            "127.0.0.1:6379": "not a URL",
            "http://127.0.0.1/": "unsupported scheme 'http'",
            "redis://": "missing host",
            "redis://:s3cr3t@": "missing host",
            "redis://h:0/0": "port 0 is out of range",
            "redis://h:99999/0": "invalid URL",
            "redis://h:abc/0": "invalid URL",
            "redis://h:/0": "empty port",
            "redis://h/zero": "the path must be a database number",
            "redis://h/0/1": "the path must be a database number",
            "redis://h/0?db=1": "parameters (?...) are not allowed",
            "redis://h/0#x": "a fragment",
            "redis://ho$t/0": "invalid host",
            "redis://user@h/0": "a user name needs a password",
            "redis://:s3cr3t@h/x": "the path must be a database number",
            "redis://h o/0": "spaces and control characters",
            "unix://": "absolute path",
            "unix://relative/path": "no host",
            "unix:///tmp/r.sock?db=x": "the database must be a number",
            "unix:///tmp/r.sock?timeout=1": "unknown parameter 'timeout'",
            "unix://h:1/tmp/r.sock": "no host",
        }
        for url, message in bad.items():
            error = self.assertRaises(
                ConfigError, parseRedisURL, url, "f.toml", "state.redis"
            )
            self.assertEqual((error.source, error.key), ("f.toml", "state.redis"), url)
            self.assertIn(message, error.message, url)
            self.assertNotIn("s3cr3t", str(error), url)

    def test_fromURL(self) -> None:
        """
        L{StateConfig.fromURL} builds a configuration in code, with its
        checks.
        """
        state = StateConfig.fromURL(
            "redis://127.0.0.1:1/0", keyPrefix="p:", timeout=1.5, onError="closed"
        )
        self.assertEqual(
            (state.keyPrefix, state.timeout, state.onError), ("p:", 1.5, "closed")
        )
        error = self.assertRaises(
            ConfigError, StateConfig.fromURL, "redis://h/0", onError="maybe"
        )
        self.assertEqual(error.key, "state.on_error")
        error = self.assertRaises(
            ConfigError, StateConfig.fromURL, "redis://h/0", timeout=0
        )
        self.assertEqual(error.key, "state.timeout")


class StateTableTests(ConfigTestMixin):
    """
    The C{[state]} table, and C{[caches.NAME] store}.
    """

    def test_defaults(self) -> None:
        """
        Only C{redis} is required: the prefix is C{rproxy:}, the timeout
        250 ms, C{on_error} C{"local"}.
        """
        config = self.load(VALID + '[state]\nredis = "redis://127.0.0.1:6379/0"\n')
        state = config.state
        assert state is not None
        self.assertEqual(
            (state.host, state.port, state.db, state.keyPrefix, state.timeout),
            ("127.0.0.1", 6379, 0, "rproxy:", 0.25),
        )
        self.assertEqual(state.onError, "local")
        self.assertIsNone(self.load(VALID).state)

    def test_allKeys(self) -> None:
        """
        Every key is read.
        """
        config = self.load(
            VALID
            + "[state]\n"
            + 'redis = "unix:///run/redis.sock?db=2"\n'
            + 'key_prefix = "edge-1:"\n'
            + 'timeout = "1s"\n'
            + 'on_error = "open"\n'
        )
        state = config.state
        assert state is not None
        self.assertEqual(
            (state.path, state.db, state.keyPrefix, state.timeout, state.onError),
            ("/run/redis.sock", 2, "edge-1:", 1.0, "open"),
        )

    def test_errors(self) -> None:
        """
        Each mistake names the file and key.
        """
        state = '[state]\nredis = "redis://127.0.0.1/0"\n'
        self.assertConfigError(
            VALID + "[state]\n",
            "state.redis",
            "is required: the URL of the shared Redis, such as "
            '"redis://127.0.0.1:6379/0"',
        )
        self.assertConfigError(
            VALID + '[state]\nredis = "http://x/"\n',
            "state.redis",
            "unsupported scheme 'http' in 'http://x/' (expected "
            "redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or "
            "unix://[USER:PASSWORD@]/PATH[?db=DB])",
        )
        self.assertConfigError(
            VALID + "[state]\nredis = 6379\n",
            "state.redis",
            "expected a string, got int",
        )
        self.assertConfigError(
            VALID + state + 'on_error = "fail"\n',
            "state.on_error",
            'must be one of "local", "open", "closed", got \'fail\'',
        )
        self.assertConfigError(
            VALID + state + 'timeout = "0s"\n',
            "state.timeout",
            "must be greater than 0, got '0s'",
        )
        self.assertConfigError(
            VALID + state + 'key_prefix = "a b"\n',
            "state.key_prefix",
            "must not hold spaces or control characters",
        )
        self.assertConfigError(
            VALID + state + 'timout = "1s"\n',
            "state.timout",
            "unknown key (did you mean timeout?)",
        )
        self.assertConfigError(
            "state = 1\n" + VALID, "state", "expected a table, got int"
        )

    def test_urlErrorHidesPassword(self) -> None:
        """
        A malformed URL's error does not print its password.
        """
        error = self.assertRaises(
            ConfigError,
            self.load,
            VALID + '[state]\nredis = "redis://:s3cr3t@host:x/0"\n',
        )
        self.assertEqual(error.key, "state.redis")
        self.assertNotIn("s3cr3t", str(error))

    def test_clientMissing(self) -> None:
        """
        Without txredisapi, C{[state]} is an error of C{state.redis} that
        says what to install.
        """
        self.patch(statetable, "redisClientAvailable", lambda: False)
        self.assertConfigError(
            VALID + '[state]\nredis = "redis://127.0.0.1/0"\n',
            "state.redis",
            "needs txredisapi, which is not installed "
            "(pip install 'twisted_rproxy[redis]')",
        )

    def test_store(self) -> None:
        """
        C{store} is C{"memory"} by default, C{"redis"} with C{[state]}.
        """
        config = self.load(
            VALID
            + '[caches.main]\n[caches.shared]\nstore = "redis"\n'
            + '[state]\nredis = "redis://127.0.0.1/0"\n'
        )
        self.assertEqual(config.caches["main"].store, "memory")
        self.assertEqual(config.caches["shared"].store, "redis")

    def test_storeErrors(self) -> None:
        """
        C{store = "redis"} needs C{[state]}; other values are errors.
        """
        self.assertConfigError(
            VALID + '[caches.main]\nstore = "redis"\n',
            "caches.main.store",
            '"redis" needs a [state] table (its redis URL) to store in',
        )
        self.assertConfigError(
            VALID + '[caches.main]\nstore = "ssd"\n',
            "caches.main.store",
            'must be "memory", "redis" or "disk", got \'ssd\'',
        )


class ScriptAndKeyTests(SynchronousTestCase):
    """
    L{Script} and L{SharedState.key}, without a server.
    """

    def test_scriptDigest(self) -> None:
        """
        A script's SHA1 is computed once, from its UTF-8 text.
        """
        script = Script("return 'é'")
        self.assertEqual(script.source, "return 'é'".encode())
        self.assertEqual(script.sha1, hashlib.sha1(script.source).hexdigest())
        self.assertEqual(Script(script.source), script)

    def test_key(self) -> None:
        """
        C{key} is the prefix, then the parts joined by C{:}.
        """
        config = StateConfig.fromURL("redis://127.0.0.1:1/0", keyPrefix="edge:")
        state = SharedState(reactor, config)
        self.assertEqual(state.key("rl", b"api", "1.2.3.4"), b"edge:rl:api:1.2.3.4")
        self.assertEqual(state.key(), b"edge:")
        self.assertEqual(
            (state.onError, state.available, state.failures), ("local", True, 0)
        )


@provider(ILogObserver)
class _Recorder:
    """
    Keeps the events of the shared state's logger.
    """

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "twisted_rproxy.state.client":
            self.events.append(event)

    def levels(self) -> list[str]:
        return [event["log_level"].name for event in self.events]

    def texts(self) -> list[str]:
        return [formatEvent(event) for event in self.events]


class RedisTestCase(TestCase):
    """
    Starts a C{redis-server} per test, and L{SharedState}s on it that are
    stopped at the end.
    """

    timeout = 60

    def startRedis(self, **kwargs: Any) -> RedisServer:
        server = RedisServer(**kwargs).start()
        self.addCleanup(server.cleanUp)
        return server

    def setUp(self) -> None:
        self.redis = self.startRedis()
        self.log = _Recorder()
        globalLogPublisher.addObserver(self.log)
        self.addCleanup(globalLogPublisher.removeObserver, self.log)

    def sharedState(self, url: str | None = None, **kwargs: Any) -> SharedState:
        config = StateConfig.fromURL(url or self.redis.url, **kwargs)
        state = SharedState(reactor, config)
        state.start()
        self.addCleanup(state.stop)
        return state

    async def waitUntilAvailable(self, state: SharedState) -> float:
        """
        Retry a C{PING} until it succeeds; return the seconds it took.
        """
        started = time.monotonic()
        while True:
            try:
                await state.execute("PING")
            except StateUnavailable:
                if time.monotonic() - started > RECONNECT_WITHIN:
                    raise
                await sleep(0.1)
            else:
                return time.monotonic() - started

    async def failsUnavailable(self, deferred: Deferred[Any]) -> StateUnavailable:
        try:
            await deferred
        except StateUnavailable as e:
            return e
        raise self.failureException("expected StateUnavailable")


class SharedStateTests(RedisTestCase):
    """
    Commands and scripts on a running server.
    """

    @asyncTest
    async def test_execute(self) -> None:
        """
        Commands run as soon as it is started (waiting for the connection);
        values are bytes, integers are integers.
        """
        state = self.sharedState(keyPrefix="t:")
        key = state.key("blob")
        self.assertEqual(await state.execute("SET", key, b"\x00\xffbody"), "OK")
        self.assertEqual(await state.execute("GET", key), b"\x00\xffbody")
        self.assertEqual(self.redis.command("GET", "t:blob"), b"\x00\xffbody")
        self.assertEqual(await state.execute("INCRBY", "n", 5), 5)
        self.assertEqual(await state.execute("GET", "n"), b"5")
        self.assertIsNone(await state.execute("GET", "missing"))
        self.assertEqual(await state.execute("MGET", "n", "missing"), [b"5", None])
        self.assertEqual((state.failures, state.available), (0, True))

    @asyncTest
    async def test_commandError(self) -> None:
        """
        An error reply about the command fails as itself, not as an outage.
        """
        state = self.sharedState()
        await state.execute("SET", "s", "text")
        with self.assertRaises(_txredis.responseErrors()) as caught:
            await state.execute("INCR", "s")
        self.assertIn("not an integer", str(caught.exception))
        self.assertEqual((state.failures, state.available), (0, True))
        self.assertEqual(self.log.events, [])

    @asyncTest
    async def test_evalScript(self) -> None:
        """
        A script runs with its keys and arguments, by its digest, and again
        after the server forgot it (C{NOSCRIPT}).
        """
        state = self.sharedState()
        script = Script(
            "redis.call('SET', KEYS[1], ARGV[1]) "
            "return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}"
        )
        self.assertEqual(
            await state.evalScript(script, [b"k1"], [b"v", 41]), [b"k1", b"v", 42]
        )
        self.assertEqual(self.redis.command("SCRIPT", "EXISTS", script.sha1), [1])
        self.assertEqual(self.redis.command("SCRIPT", "FLUSH"), b"OK")
        self.assertEqual(self.redis.command("SCRIPT", "EXISTS", script.sha1), [0])
        self.assertEqual(
            await state.evalScript(script, [b"k2"], ["w", "1"]), [b"k2", b"w", 2]
        )
        self.assertEqual(self.redis.command("GET", "k2"), b"w")
        self.assertEqual(self.redis.command("SCRIPT", "EXISTS", script.sha1), [1])

    @asyncTest
    async def test_scriptError(self) -> None:
        """
        A bug in a script fails as Redis' error, not as an outage.
        """
        state = self.sharedState()
        with self.assertRaises(_txredis.responseErrors()):
            await state.evalScript(Script("return redis.call('NOPE')"), [], [])
        with self.assertRaises(_txredis.responseErrors()):
            await state.evalScript(Script("syntax error here"), [], [])
        self.assertEqual((state.failures, state.available), (0, True))

    @asyncTest
    async def test_database(self) -> None:
        """
        The URL's database is selected.
        """
        state = self.sharedState(f"redis://127.0.0.1:{self.redis.port}/3")
        await state.execute("SET", "where", "three")
        self.assertIsNone(self.redis.command("GET", "where"))
        self.assertEqual(self.redis.command("SELECT", "3"), b"OK")

    @asyncTest
    async def test_unixSocket(self) -> None:
        """
        A C{unix://} URL connects to the socket, with its database.
        """
        server = self.startRedis(unixSocket=True)
        state = self.sharedState(f"unix://{server.socketPath}?db=2")
        self.assertEqual(await state.execute("SET", "u", "x"), "OK")
        self.assertEqual(await state.execute("DBSIZE"), 1)
        self.assertIsNone(server.command("GET", "u"))

    @asyncTest
    async def test_password(self) -> None:
        """
        The URL's password authenticates; the user name too (ACL).
        """
        server = self.startRedis(password=SECRET)
        state = self.sharedState(f"redis://:s3cr3t-p%40ss@127.0.0.1:{server.port}/0")
        self.assertEqual(await state.execute("SET", "a", "1"), "OK")
        server.command("ACL", "SETUSER", "edge", "on", ">edge-pw", "~*", "+@all")
        user = self.sharedState(f"redis://edge:edge-pw@127.0.0.1:{server.port}/0")
        self.assertEqual(await user.execute("ACL", "WHOAMI"), b"edge")

    @asyncTest
    async def test_wrongPasswordRecovers(self) -> None:
        """
        A refused password is an outage, logged once, without the password;
        the pool tries again by itself and recovers once the server takes it.
        """
        server = self.startRedis(password="other")
        state = self.sharedState(
            f"redis://:s3cr3t-p%40ss@127.0.0.1:{server.port}/0", timeout=0.5
        )
        await self.failsUnavailable(state.execute("PING"))
        for _ in range(3):
            await self.failsUnavailable(state.execute("PING"))
        self.assertFalse(state.available)
        self.assertEqual(state.failures, 4)
        self.assertEqual(self.log.levels(), ["warn"])
        self.assertNotIn("s3cr3t", " ".join(self.log.texts()))
        server.command("CONFIG", "SET", "requirepass", SECRET)
        await self.waitUntilAvailable(state)
        self.assertTrue(state.available)
        self.assertEqual(self.log.levels(), ["warn", "info"])
        self.flushLoggedErrors()

    @asyncTest
    async def test_notRunning(self) -> None:
        """
        Before L{SharedState.start} and after L{SharedState.stop}, operations
        fail at once.
        """
        config = StateConfig.fromURL(self.redis.url)
        state = SharedState(reactor, config)
        await self.failsUnavailable(state.execute("PING"))
        state.start()
        self.assertTrue(state.running)
        self.assertEqual(await state.execute("PING"), "PONG")
        await state.stop()
        self.assertFalse(state.running)
        error = await self.failsUnavailable(state.execute("PING"))
        self.assertIn("not running", str(error))
        # Stopping twice is harmless; starting again works.
        await state.stop()
        state.start()
        self.assertEqual(await state.execute("PING"), "PONG")
        await state.stop()


class OutageTests(RedisTestCase):
    """
    Redis stopped, hung or restarted: operations fail in time with
    L{StateUnavailable}, one warning per outage, and the client recovers.
    """

    @asyncTest
    async def test_hungServerTimesOut(self) -> None:
        """
        A server that accepts but does not answer (C{SIGSTOP}) fails
        operations within about the timeout; they work again once it goes
        on (C{SIGCONT}).
        """
        state = self.sharedState(timeout=0.3)
        await state.execute("SET", "k", "v")
        self.redis.pause()
        self.addCleanup(self._resume)
        started = time.monotonic()
        await self.failsUnavailable(state.execute("GET", "k"))
        elapsed = time.monotonic() - started
        self.assertGreater(elapsed, 0.25)
        self.assertLess(elapsed, 2.0)
        started = time.monotonic()
        await self.failsUnavailable(state.evalScript(Script("return 1"), [], []))
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertFalse(state.available)
        self.redis.resume()
        await self.waitUntilAvailable(state)
        self.assertEqual(await state.execute("GET", "k"), b"v")
        self.assertEqual(self.log.levels(), ["warn", "info"])

    def _resume(self) -> None:
        if self.redis.process is not None and self.redis._paused:
            self.redis.resume()

    @asyncTest
    async def test_stoppedServer(self) -> None:
        """
        With the server gone, operations fail at once (not after the
        timeout each), counted; one warning says what failed, where, and
        what C{on_error} does.
        """
        state = self.sharedState(timeout=1.0, onError="closed")
        await state.execute("PING")
        self.redis.stop()
        await self.failsUnavailable(state.execute("GET", "a"))
        started = time.monotonic()
        for _ in range(20):
            await self.failsUnavailable(state.execute("GET", "a"))
        # During the outage, no wait for the timeout per operation.
        self.assertLess(time.monotonic() - started, 1.0)
        self.assertEqual(state.failures, 21)
        self.assertFalse(state.available)
        self.assertEqual(self.log.levels(), ["warn"])
        [warning] = self.log.texts()
        self.assertIn(f"127.0.0.1:{self.redis.port}/0", warning)
        self.assertIn('on_error = "closed"', warning)
        self.assertIn("GET", warning)

    @asyncTest
    async def test_restartReconnects(self) -> None:
        """
        After a restart on the same port the client reconnects by itself,
        and a second outage is logged again, once.
        """
        state = self.sharedState()
        await state.execute("SET", "k", "v")
        for outage in (1, 2):
            self.redis.stop()
            for _ in range(5):
                await self.failsUnavailable(state.execute("PING"))
            self.redis.start()
            await self.waitUntilAvailable(state)
            self.assertTrue(state.available)
            self.assertEqual(self.log.levels(), ["warn", "info"] * outage)
        # The restarted server has no data (nothing saved) and no scripts:
        # EVALSHA falls back to EVAL.
        self.assertIsNone(await state.execute("GET", "k"))
        self.assertEqual(await state.evalScript(Script("return 7"), [], []), 7)

    @asyncTest
    async def test_downAtStart(self) -> None:
        """
        Started while Redis is down, the client fails operations, then
        connects once Redis is there.
        """
        port = freePort()
        state = self.sharedState(f"redis://127.0.0.1:{port}/0")
        await self.failsUnavailable(state.execute("PING"))
        self.startRedis(port=port)
        await self.waitUntilAvailable(state)
        self.assertEqual(self.log.levels(), ["warn", "info"])

    @asyncTest
    async def test_stopDuringOutage(self) -> None:
        """
        Stopping during an outage leaves nothing behind (no reconnection
        timer: trial fails a test that leaves a delayed call) and logs
        nothing more.
        """
        state = self.sharedState()
        await state.execute("PING")
        self.redis.stop()
        await self.failsUnavailable(state.execute("PING"))
        await state.stop()
        await self.failsUnavailable(state.execute("PING"))
        self.assertEqual(self.log.levels(), ["warn"])
        # txredisapi's slots wind down on the next turns of the reactor.
        await sleep(0.05)


class FenceTests(RedisTestCase):
    """
    What L{twisted_rproxy.state._txredis} reads of txredisapi's pools: if a
    release changes it, these fail.
    """

    @asyncTest
    async def test_poolState(self) -> None:
        """
        C{poolSize} counts ready connections; C{poolGaveUp} says when the
        pool stopped reconnecting.
        """
        config = StateConfig.fromURL(self.redis.url)
        handler = _txredis.connectPool(config, 2)
        self.assertEqual(_txredis.poolSize(handler), 0)
        self.assertFalse(_txredis.poolGaveUp(handler))
        for _ in range(100):
            if _txredis.poolSize(handler) == 2:
                break
            await sleep(0.02)
        self.assertEqual(_txredis.poolSize(handler), 2)
        await handler.disconnect()
        self.assertEqual(_txredis.poolSize(handler), 0)
        self.assertTrue(_txredis.poolGaveUp(handler))

    @asyncTest
    async def test_refusedPassword(self) -> None:
        """
        A refused password makes the pool give up, without an unhandled
        error in a Deferred.
        """
        server = self.startRedis(password="right")
        config = StateConfig.fromURL(f"redis://:wrong@127.0.0.1:{server.port}/0")
        handler = _txredis.connectPool(config, 1)
        for _ in range(100):
            if _txredis.poolGaveUp(handler):
                break
            await sleep(0.02)
        self.assertTrue(_txredis.poolGaveUp(handler))
        self.assertEqual(_txredis.poolSize(handler), 0)
        await handler.disconnect()


def _serviceConfig(state: str | None, filters: bool = True) -> Any:
    data: dict[str, Any] = {
        "server": {"listen": ["tcp:0:interface=127.0.0.1"]},
        "pools": {"app": {"servers": [f"http://127.0.0.1:{freePort()}"]}},
        "routes": [{"pool": "app", "filters": ["gz"] if filters else []}],
        "filters": {"gz": {"plugin": "compress"}},
    }
    if state is not None:
        data["state"] = {"redis": state}
    return parseConfig(data, "f.toml", ".")


def _chain(router: Router) -> FilterChain:
    resource = router.routes[0].resource
    assert isinstance(resource, FilterChain)
    return resource


class ServiceTests(RedisTestCase):
    """
    L{ProxyService} runs one L{SharedState} for C{[state]}.
    """

    @asyncTest
    async def test_startStop(self) -> None:
        """
        The service starts its shared state with itself, hands it to the
        filter chains, and stops it with itself.
        """
        service = ProxyService(_serviceConfig(self.redis.url), reactor)
        state = service.sharedState
        assert state is not None
        self.assertIs(_chain(service.router).sharedState, state)
        self.assertFalse(state.running)
        service.startService()
        self.assertTrue(state.running)
        self.assertEqual(await state.execute("PING"), "PONG")
        await service.stopService()
        self.assertFalse(state.running)
        await sleep(0.05)

    def test_withoutState(self) -> None:
        """
        Without C{[state]} there is none.
        """
        service = ProxyService(_serviceConfig(None), reactor)
        self.assertIsNone(service.sharedState)
        self.assertIsNone(_chain(service.router).sharedState)

    @asyncTest
    async def test_reload(self) -> None:
        """
        A reload keeps the shared state when C{[state]} is unchanged,
        replaces (and stops) it when it changed, drops it when removed.
        """
        service = ProxyService(_serviceConfig(self.redis.url), reactor)
        service.startService()
        try:
            first = service.sharedState
            assert first is not None
            await first.execute("PING")
            service.reload(_serviceConfig(self.redis.url))
            self.assertIs(service.sharedState, first)
            self.assertIs(_chain(service.router).sharedState, first)
            other = f"redis://127.0.0.1:{self.redis.port}/1"
            service.reload(_serviceConfig(other))
            second = service.sharedState
            assert second is not None
            self.assertIsNot(second, first)
            self.assertFalse(first.running)
            self.assertTrue(second.running)
            self.assertEqual(second.config.db, 1)
            self.assertIs(_chain(service.router).sharedState, second)
            await second.execute("SET", "x", "1")
            self.assertEqual(self.redis.command("SELECT", "1"), b"OK")
            service.reload(_serviceConfig(None))
            self.assertIsNone(service.sharedState)
            self.assertFalse(second.running)
        finally:
            await service.stopService()
        await sleep(0.05)
