"""
Tests for shared rate limits (C{rate_limit} with C{shared = true}): the
filter environment that hands a filter the shared state
(L{twisted_rproxy.filterenv}), the configuration's errors and warnings, the
GCRA script against a real C{redis-server}, and two real proxies sharing
one Redis, through outages and under many distinct keys.
"""

from __future__ import annotations

import gc
import io
import sys
import time
import tracemalloc
from collections.abc import Mapping
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fixtures import LoopbackTestCase, asyncTest, freePort, sleep
from tests.loopback import ParsedResponse
from tests.redis import RedisServer
from tests.test_config import ConfigTestMixin
from twisted_rproxy import filters as _filters
from twisted_rproxy import tap
from twisted_rproxy.config import Config, FilterConfig, RouteConfig, StateConfig
from twisted_rproxy.config import parseConfig as _parseConfig
from twisted_rproxy.filterenv import (
    FilterEnvironment,
    buildConfiguredFilter,
    takesEnvironment,
)
from twisted_rproxy.filters import (
    FilterChain,
    FilterOptionError,
    FilterResponse,
    RequestContext,
    buildFilterChain,
    filterWarnings,
)
from twisted_rproxy.interfaces import (
    IFilterEnvironment,
    IProxyReactor,
    IRequestFilter,
)
from twisted_rproxy.pages import errorBody
from twisted_rproxy.plugins.ratelimit import RateLimitFilter, rateLimit
from twisted_rproxy.service import ProxyService
from twisted_rproxy.state import SharedState
from twisted_rproxy.state.ratelimit import RateDecision, SharedRateLimit

#: Seconds a test waits at most for the proxies to reconnect to a Redis
#: that came back (txredisapi's backoff grows between attempts).
RECONNECT_WITHIN = 20.0

_POOL = {"app": {"servers": ["http://127.0.0.1:8001"]}}


def _data(
    limit: Mapping[str, object],
    state: Mapping[str, object] | None = None,
    workers: int = 1,
    port: int = 8001,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server": {"listen": ["tcp:0:interface=127.0.0.1"], "workers": workers},
        "pools": {"app": {"servers": [f"http://127.0.0.1:{port}"]}},
        "routes": [{"pool": "app", "filters": ["api-limit"]}],
        "filters": {"api-limit": {"plugin": "rate_limit", **limit}},
    }
    if state is not None:
        data["state"] = dict(state)
    return data


def parseConfig(data: Mapping[str, object]) -> Config:
    return _parseConfig(data, "f.toml", ".")


def _dummy() -> Any:
    return DummyRequest([b""])


def _context(clock: Any, client: str = "192.0.2.1") -> RequestContext:
    return RequestContext(_dummy(), clock, None, client)


@implementer(ILogObserver)
class _Recorder:
    """
    Keeps the log events of some namespaces.
    """

    def __init__(self, *namespaces: str) -> None:
        self.namespaces = namespaces
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") in self.namespaces:
            self.events.append(event)

    def levels(self, namespace: str) -> list[str]:
        return [
            e["log_level"].name
            for e in self.events
            if e.get("log_namespace") == namespace
        ]

    def texts(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


@implementer(IRequestFilter)
class _Pass:
    def filterRequest(self, request: Any, context: Any) -> None:
        return None


class _OptionsOnly:
    name = "options-only"

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def buildFilter(self, options: Mapping[str, object]) -> _Pass:
        self.calls.append((options,))
        return _Pass()


class _WithEnvironment(_OptionsOnly):
    def buildFilter(
        self, options: Mapping[str, object], environment: object = None
    ) -> _Pass:
        self.calls.append((options, environment))
        return _Pass()


class _VarArgs(_OptionsOnly):
    def buildFilter(self, *args: Any) -> _Pass:
        self.calls.append(args)
        return _Pass()


class EnvironmentTests(SynchronousTestCase):
    """
    How a factory says it takes an L{IFilterEnvironment}, and what it gets.
    """

    def test_provides(self) -> None:
        """
        L{FilterEnvironment} provides L{IFilterEnvironment}; L{warn} keeps
        the messages.
        """
        environment = FilterEnvironment("lim", Clock(), None, 3)
        verifyObject(IFilterEnvironment, environment)
        environment.warn("careful")
        self.assertEqual(environment.warnings, ["careful"])
        self.assertFalse(environment.checking)

    def test_detection(self) -> None:
        """
        A factory whose C{buildFilter} takes a second positional argument
        gets the environment; one written for the options alone (the
        example plugin's kind) is called with them alone.
        """
        environment = FilterEnvironment("f", Clock())
        for factory, expected in [
            (_OptionsOnly(), ({"a": 1},)),
            (_WithEnvironment(), ({"a": 1}, environment)),
            (_VarArgs(), ({"a": 1}, environment)),
        ]:
            buildConfiguredFilter(factory, {"a": 1}, environment)  # type: ignore[arg-type]
            buildConfiguredFilter(factory, {"a": 1}, environment)  # type: ignore[arg-type]
            self.assertEqual(factory.calls, [expected, expected])
        self.assertTrue(takesEnvironment(rateLimit))

    def test_checkEnvironmentIsInert(self) -> None:
        """
        The environment of a check has a L{Clock}, and a shared state that
        is never started, so that building a filter cannot reach out.
        """
        state = StateConfig.fromURL(f"redis://127.0.0.1:{freePort()}")
        environment = FilterEnvironment.forCheck("lim", state, 4)
        self.assertTrue(environment.checking)
        self.assertIsInstance(environment.reactor, Clock)
        assert isinstance(environment.sharedState, SharedState)
        self.assertFalse(environment.sharedState.running)
        self.assertEqual(environment.workers, 4)
        self.assertIsNone(FilterEnvironment.forCheck("lim").sharedState)

    def test_chainGivesEnvironment(self) -> None:
        """
        L{buildFilterChain} gives each filter its name, the reactor, the
        shared state and the number of workers.
        """
        factory = _WithEnvironment()
        clock = Clock()
        state = SharedState(clock, StateConfig.fromURL("redis://127.0.0.1"))
        self.patch(_filters, "findFilterFactory", lambda name: factory)
        chain = buildFilterChain(
            DummyRequest([b""]),  # type: ignore[arg-type]
            RouteConfig(path="/", pool="app", filters=("one",)),
            {"one": FilterConfig("one", "with-env", {"x": 1})},
            clock,
            sharedState=state,
            workers=3,
        )
        self.assertIsInstance(chain, FilterChain)
        [(options, environment)] = factory.calls
        assert isinstance(environment, FilterEnvironment)
        self.assertEqual(options, {"x": 1})
        self.assertEqual(
            (environment.name, environment.sharedState, environment.workers),
            ("one", state, 3),
        )
        self.assertIs(environment.reactor, clock)
        self.assertFalse(environment.checking)


class SharedConfigTests(ConfigTestMixin):
    """
    C{shared} in the configuration: its errors and the per-worker warning.
    """

    def test_sharedNeedsState(self) -> None:
        """
        C{shared = true} without C{[state]} is an error at
        C{filters.NAME.shared} naming C{[state]}.
        """
        text = (
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
            '[[routes]]\npool = "app"\nfilters = ["api-limit"]\n'
            '[filters.api-limit]\nplugin = "rate_limit"\nrate = 10\nburst = 20\n'
            "shared = true\n"
        )
        error = self.assertConfigError(
            text,
            "filters.api-limit.shared",
            "needs a [state] table (the shared Redis) to keep the buckets in: "
            "add one, or remove shared = true",
        )
        self.assertIn("[state]", str(error))

    def test_sharedNotBoolean(self) -> None:
        """
        C{shared} must be true or false.
        """
        self.assertDataError(
            _data({"rate": 1, "shared": "yes"}),
            "filters.api-limit.shared",
            "expected true or false, got 'yes'",
        )

    def test_sharedWithState(self) -> None:
        """
        With C{[state]}, a shared limit loads, and nothing connects (the
        port named has no server).
        """
        url = f"redis://127.0.0.1:{freePort()}/0"
        config = parseConfig(_data({"rate": 10, "shared": True}, {"redis": url}))
        self.assertEqual(config.filters["api-limit"].options["shared"], True)

    def test_optionsAlone(self) -> None:
        """
        Called with its options alone (no environment), a shared limit
        cannot be built; an unshared one can.
        """
        with self.assertRaises(FilterOptionError) as caught:
            rateLimit.buildFilter({"rate": 1, "shared": True})
        self.assertEqual(caught.exception.option, "shared")
        self.assertIsNone(rateLimit.buildFilter({"rate": 1}).shared)

    def test_nonFinite(self) -> None:
        """
        An infinite rate or burst is refused.
        """
        cases: list[tuple[dict[str, object], str]] = [
            ({"rate": float("inf")}, "rate"),
            ({"rate": 1, "burst": float("inf")}, "burst"),
            ({"rate": 1, "key": "header: "}, "key"),
        ]
        for options, option in cases:
            with self.assertRaises(FilterOptionError) as caught:
                rateLimit.buildFilter(options)
            self.assertEqual(caught.exception.option, option)

    def test_warningPerWorker(self) -> None:
        """
        With several workers, an unshared limit is worth a warning naming
        the filter and the factor; a shared one, one worker, or a filter no
        route uses, are not.
        """
        state = {"redis": "redis://127.0.0.1:6379"}
        [warning] = filterWarnings(parseConfig(_data({"rate": 10}, workers=4)))
        self.assertEqual(
            warning,
            "filters.api-limit: the limit applies per worker: with 4 workers a "
            "client gets up to 4 times rate and burst; set shared = true (with "
            "a [state] table) for one limit",
        )
        self.assertEqual(filterWarnings(parseConfig(_data({"rate": 10}))), [])
        shared = _data({"rate": 10, "shared": True}, state, workers=4)
        self.assertEqual(filterWarnings(parseConfig(shared)), [])
        unused = _data({"rate": 10}, workers=4)
        unused["routes"] = [{"pool": "app"}]
        self.assertEqual(filterWarnings(parseConfig(unused)), [])

    def _check(self, text: str, *arguments: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        path = self.writeConfig(text)
        with self.assertRaises(SystemExit) as raised:
            tap.Options().parseOptions(["--check", "--config", path, *arguments])
        code = raised.exception.code
        assert isinstance(code, int)
        return code, out.getvalue(), err.getvalue()

    def test_checkWarns(self) -> None:
        """
        C{--check} prints the warning (status 0), with the workers of the
        file or of C{--workers}; it prints the error of a shared limit
        without C{[state]} (status 1).
        """
        base = (
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
            '[[routes]]\npool = "app"\nfilters = ["lim"]\n'
            '[filters.lim]\nplugin = "rate_limit"\nrate = 10\n'
        )
        code, out, err = self._check("[server]\nworkers = 2\n" + base)
        self.assertEqual(code, 0)
        self.assertIn("configuration OK", out)
        self.assertIn(
            ": warning: filters.lim: the limit applies per worker: with 2 workers",
            err,
        )
        code, out, err = self._check(base, "--workers", "3")
        self.assertEqual(code, 0)
        self.assertIn("with 3 workers", err)
        code, out, err = self._check(base)
        self.assertEqual((code, err), (0, ""))
        code, out, err = self._check(base + "shared = true\n")
        self.assertEqual(code, 1)
        self.assertIn(": filters.lim.shared: needs a [state] table", err)
        self.assertNotIn("Traceback", err)

    def test_startWarns(self) -> None:
        """
        The start logs the warning once, in the process that starts (not
        again in each worker).
        """
        recorder = _Recorder("twisted_rproxy.tap")
        globalLogPublisher.addObserver(recorder)
        self.addCleanup(globalLogPublisher.removeObserver, recorder)
        self.patch(tap, "_installSignal", lambda *args: None)
        self.patch(tap, "installReloadHandler", lambda *args: None)
        path = self.writeConfig(
            '[server]\nworkers = 2\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
            '[[routes]]\npool = "app"\nfilters = ["lim"]\n'
            '[filters.lim]\nplugin = "rate_limit"\nrate = 10\n'
        )
        options = tap.Options()
        options.parseOptions(["--config", path])
        tap.makeService(options)
        [text] = recorder.texts()
        self.assertIn("warning: filters.lim: the limit applies per worker", text)
        self.assertEqual(recorder.levels("twisted_rproxy.tap"), ["warn"])


def _unstartedState(onError: str) -> SharedState:
    """
    A real L{SharedState} that is not started: every operation fails at
    once with L{twisted_rproxy.state.StateUnavailable}, as in an outage.
    """
    config = StateConfig.fromURL("redis://127.0.0.1:1/0", onError=onError)
    return SharedState(MemoryReactorClock(), config)


class OnErrorTests(SynchronousTestCase):
    """
    What a shared limit does when its bucket cannot be reached, in
    deterministic time.
    """

    def build(self, onError: str, **options: object) -> RateLimitFilter:
        environment = FilterEnvironment("lim", Clock(), _unstartedState(onError))
        return rateLimit.buildFilter(
            {"rate": 1, "burst": 2, "shared": True, **options}, environment
        )

    def answers(self, f: RateLimitFilter, clock: Any, count: int) -> list[object]:
        results = []
        for _ in range(count):
            result = self.successResultOf(f.filterRequest(_dummy(), _context(clock)))
            results.append(
                result.code if isinstance(result, FilterResponse) else result
            )
        return results

    def test_local(self) -> None:
        """
        C{"local"}: the process's own bucket decides (the third request at
        once is refused with the same 429 as an unshared limit's).
        """
        f = self.build("local")
        clock = MemoryReactorClock()
        self.assertEqual(self.answers(f, clock, 3), [None, None, 429])
        clock.advance(1)
        self.assertEqual(self.answers(f, clock, 1), [None])

    def test_localDelay(self) -> None:
        """
        C{"local"} with a delay: the request waits for its local token.
        """
        f = self.build("local", burst=1, delay="1s")
        clock = MemoryReactorClock()
        self.assertEqual(self.answers(f, clock, 1), [None])
        waiting = f.filterRequest(_dummy(), _context(clock))
        self.assertNoResult(waiting)
        clock.advance(1)
        self.assertIsNone(self.successResultOf(waiting))

    def test_open(self) -> None:
        """
        C{"open"}: every request passes.
        """
        self.assertEqual(
            self.answers(self.build("open"), MemoryReactorClock(), 5), [None] * 5
        )

    def test_closed(self) -> None:
        """
        C{"closed"}: 503 with the proxy's own page, saying nothing of Redis.
        """
        f = self.build("closed")
        result = self.successResultOf(
            f.filterRequest(_dummy(), _context(MemoryReactorClock()))
        )
        assert isinstance(result, FilterResponse)
        self.assertEqual(result.code, 503)
        self.assertEqual(result.body, errorBody(503))
        self.assertNotIn(b"redis", result.body.lower())
        self.assertIn((b"Cache-Control", b"no-store"), result.headers)

    def test_cancelledWait(self) -> None:
        """
        A request that waits for its token and whose client goes away
        leaves no timer behind.
        """
        f = self.build("local", burst=1, delay="5s")
        clock = MemoryReactorClock()
        self.answers(f, clock, 1)
        waiting = f.filterRequest(_dummy(), _context(clock))
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        waiting.cancel()
        self.failureResultOf(waiting)
        self.assertEqual(clock.getDelayedCalls(), [])


class RedisTestCase(LoopbackTestCase):
    """
    A C{redis-server} of the test's own, and a log recorder.
    """

    timeout = 120

    def setUp(self) -> None:
        super().setUp()
        self.redis = RedisServer().start()
        self.addCleanup(self.redis.cleanUp)
        self.log = _Recorder(
            "twisted_rproxy.state.client", "twisted_rproxy.plugins.ratelimit"
        )
        globalLogPublisher.addObserver(self.log)
        self.addCleanup(globalLogPublisher.removeObserver, self.log)

    def sharedState(self, onError: str = "local", timeout: float = 5.0) -> SharedState:
        config = StateConfig.fromURL(self.redis.url, timeout=timeout, onError=onError)
        state = SharedState(reactor, config)
        state.start()
        self.addCleanup(state.stop)
        return state

    def sharedFilter(
        self, state: SharedState, name: str = "lim", **options: object
    ) -> RateLimitFilter:
        environment = FilterEnvironment(name, reactor, state)
        return rateLimit.buildFilter({"shared": True, **options}, environment)


class ScriptTests(RedisTestCase):
    """
    The GCRA script on a real Redis.
    """

    @asyncTest
    async def test_burstThenRefused(self) -> None:
        """
        The first C{burst} tokens are given now, the next is refused until
        one interval later, like the local table; the key expires when the
        bucket would be full again.
        """
        limit = SharedRateLimit(self.sharedState(), "api", rate=0.5, burst=3)
        decisions = [await limit.take(b"192.0.2.1") for _ in range(5)]
        self.assertEqual([d.allowed for d in decisions], [True] * 3 + [False] * 2)
        self.assertEqual([d.wait for d in decisions[:3]], [0.0] * 3)
        for refused in decisions[3:]:
            self.assertTrue(1.9 < refused.wait <= 2.0, refused)
        self.assertEqual(limit.keyFor(b"192.0.2.1"), b"rproxy:rl:api:192.0.2.1")
        ttl = self.redis.command("PTTL", "rproxy:rl:api:192.0.2.1")
        assert isinstance(ttl, int)
        # Three tokens at two seconds each.
        self.assertTrue(5900 < ttl <= 6000, ttl)
        other = await limit.take(b"192.0.2.2")
        self.assertEqual(other, RateDecision(True, 0.0))

    @asyncTest
    async def test_delay(self) -> None:
        """
        With a delay, tokens are taken ahead: requests wait one interval
        more each, until the wait would exceed the delay.
        """
        limit = SharedRateLimit(self.sharedState(), "api", 2, 1, maxDelay=1.0)
        decisions = [await limit.take(b"k") for _ in range(4)]
        self.assertEqual([d.allowed for d in decisions], [True, True, True, False])
        waits = [d.wait for d in decisions]
        self.assertEqual(waits[0], 0.0)
        self.assertTrue(0.4 < waits[1] <= 0.5, waits)
        self.assertTrue(0.9 < waits[2] <= 1.0, waits)
        self.assertTrue(1.4 < waits[3] <= 1.5, waits)

    @asyncTest
    async def test_refills(self) -> None:
        """
        Tokens come back at the rate, on Redis' clock.
        """
        limit = SharedRateLimit(self.sharedState(), "api", rate=20, burst=1)
        self.assertTrue((await limit.take(b"k")).allowed)
        self.assertFalse((await limit.take(b"k")).allowed)
        await sleep(0.06)
        self.assertTrue((await limit.take(b"k")).allowed)

    @asyncTest
    async def test_headerKeyHashed(self) -> None:
        """
        A header's value (an API key) is kept in Redis as a digest, never
        as itself.
        """
        f = self.sharedFilter(self.sharedState(), rate=1, key="header:X-Api-Key")
        request = _dummy()
        request.requestHeaders = Headers({b"x-api-key": [b"s3cret-key"]})
        self.assertIsNone(await f.filterRequest(request, _context(reactor)))
        keys = self.redis.command("KEYS", "*")
        assert isinstance(keys, list)
        self.assertEqual(len(keys), 1)
        self.assertTrue(keys[0].startswith(b"rproxy:rl:lim:"))
        self.assertNotIn(b"s3cret", keys[0])

    @asyncTest
    async def test_unexpectedReply(self) -> None:
        """
        A bucket key of the wrong type (written by another program) makes
        Redis fail the script: C{on_error} applies, and it is logged once,
        not per request.
        """
        f = self.sharedFilter(self.sharedState(onError="closed"), rate=1)
        self.redis.command("HSET", "rproxy:rl:lim:192.0.2.1", "a", "b")
        for _ in range(3):
            result = await f.filterRequest(_dummy(), _context(reactor))
            assert isinstance(result, FilterResponse)
            self.assertEqual(result.code, 503)
        self.assertEqual(
            self.log.levels("twisted_rproxy.plugins.ratelimit"), ["critical"]
        )
        self.flushLoggedErrors()


def _sharedConfig(
    redisURL: str, backendPort: int, onError: str = "local", **limit: object
) -> Config:
    return parseConfig(
        _data(
            {"shared": True, **limit},
            {"redis": redisURL, "on_error": onError, "timeout": "1s"},
            port=backendPort,
        )
    )


def _request(index: int) -> bytes:
    return b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % (index,)


class TwoProxiesTests(RedisTestCase):
    """
    Two real proxies on one Redis and one backend share their limits.
    """

    async def startProxies(
        self, onError: str = "local", **limit: object
    ) -> tuple[list[ProxyService], list[int]]:
        self.backend = await self.startBackend()
        config = _sharedConfig(
            self.redis.url, self.backend.portNumber, onError, **limit
        )
        services, ports = [], []
        for _ in range(2):
            service = ProxyService(config, cast(IProxyReactor, reactor))
            service.startService()
            self.addCleanup(service.stopService)
            listening = await service.whenListening()
            services.append(service)
            ports.append(cast(IPv4Address, listening[0].getHost()).port)
        return services, ports

    async def send(self, port: int, first: int, count: int) -> list[ParsedResponse]:
        data = b"".join(_request(i) for i in range(first, first + count))
        _, responses = await self.rawExchange(port, data, count, timeout=30)
        self.assertEqual(len(responses), count)
        return responses

    async def statuses(self, port: int, first: int, count: int) -> list[int]:
        return [r.status for r in await self.send(port, first, count)]

    async def waitForSharing(self, services: list[ProxyService]) -> None:
        """
        Wait until both proxies reach Redis again.
        """
        deadline = time.monotonic() + RECONNECT_WITHIN
        for service in services:
            state = service.sharedState
            assert state is not None
            while True:
                try:
                    await state.execute("PING")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await sleep(0.1)

    @asyncTest
    async def test_limitedAtTheOther(self) -> None:
        """
        A client that used its burst at one proxy is refused at the other,
        with the same 429 as an unshared limit's.
        """
        _, (a, b) = await self.startProxies(rate=0.1, burst=3)
        self.assertEqual(await self.statuses(a, 0, 3), [200] * 3)
        [refused] = await self.send(b, 3, 1)
        self.assertEqual(refused.status, 429)
        self.assertEqual(refused.header(b"retry-after"), [b"10"])
        self.assertEqual(refused.header(b"cache-control"), [b"no-store"])
        self.assertEqual(refused.body, errorBody(429))
        self.assertEqual(len(self.backend.requests), 3)

    @asyncTest
    async def test_oneLimitForBoth(self) -> None:
        """
        With rate 10 and burst 10, of 200 quick requests split over both
        proxies about 10 pass, not 20.
        """
        _, (a, b) = await self.startProxies(rate=10, burst=10)
        started = time.monotonic()
        both = await gatherResults(
            [
                Deferred.fromCoroutine(self.statuses(a, 0, 100)),
                Deferred.fromCoroutine(self.statuses(b, 100, 100)),
            ]
        )
        elapsed = time.monotonic() - started
        statuses = both[0] + both[1]
        passed = statuses.count(200)
        self.assertEqual(passed + statuses.count(429), 200)
        # The burst, and the tokens that came back while they were sent.
        self.assertGreaterEqual(passed, 10)
        self.assertLessEqual(passed, 10 + int(elapsed * 10) + 1, elapsed)
        self.assertIn(429, both[0])
        self.assertIn(429, both[1])
        self.assertEqual(len(self.backend.requests), passed)

    async def outage(self, onError: str) -> list[int]:
        """
        Share a limit, stop Redis, send requests to both proxies, start
        Redis again and check that the limit is shared again.

        @return: The statuses answered during the outage (at both).
        """
        services, (a, b) = await self.startProxies(onError, rate=0.1, burst=3)
        self.assertEqual(await self.statuses(a, 0, 3), [200] * 3)
        self.assertEqual(await self.statuses(b, 3, 1), [429])
        self.redis.stop()
        during = await self.statuses(a, 10, 5) + await self.statuses(b, 20, 5)
        self.redis.start()
        await self.waitForSharing(services)
        # A new, empty Redis: a fresh bucket, shared again.
        self.assertEqual(await self.statuses(b, 30, 3), [200] * 3)
        self.assertEqual(await self.statuses(a, 40, 1), [429])
        for service in services:
            state = service.sharedState
            assert state is not None
            self.assertTrue(state.available)
        # One warning per proxy for the outage, one line for its end; and
        # nothing per request.
        levels = self.log.levels("twisted_rproxy.state.client")
        self.assertEqual(sorted(levels), ["info", "info", "warn", "warn"], levels)
        self.assertEqual(self.log.levels("twisted_rproxy.plugins.ratelimit"), [])
        return during

    @asyncTest
    async def test_outageLocal(self) -> None:
        """
        C{"local"}: each proxy's own bucket applies while Redis is away
        (a fresh one: the burst at each), never a 5xx.
        """
        during = await self.outage("local")
        self.assertEqual(during, [200, 200, 200, 429, 429] * 2)

    @asyncTest
    async def test_outageOpen(self) -> None:
        """
        C{"open"}: every request passes while Redis is away.
        """
        self.assertEqual(await self.outage("open"), [200] * 10)

    @asyncTest
    async def test_outageClosed(self) -> None:
        """
        C{"closed"}: 503 while Redis is away, and nothing else.
        """
        self.assertEqual(await self.outage("closed"), [503] * 10)


class ManyKeysTests(RedisTestCase):
    """
    The proxy holds nothing per shared bucket.
    """

    timeout = 300

    #: Distinct client keys sent.
    KEYS = 100_000

    #: Requests in flight at once.
    WINDOW = 256

    async def drive(self, f: RateLimitFilter, first: int, stop: int) -> None:
        request = _dummy()
        for start in range(first, stop, self.WINDOW):
            batch = [
                f.filterRequest(
                    request,
                    _context(reactor, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),
                )
                for i in range(start, min(stop, start + self.WINDOW))
            ]
            results = await gatherResults(batch)
            self.assertEqual(set(results), {None})

    @asyncTest
    async def test_memoryFlat(self) -> None:
        """
        100,000 distinct clients through a shared limit: Redis holds their
        buckets, the proxy's memory does not grow with them (under 1 MiB
        after the first 1,000).
        """
        state = self.sharedState()
        # Keys that outlive the test: none expires while it runs.
        f = self.sharedFilter(state, rate=0.001, burst=1)
        await self.drive(f, 0, 1000)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await self.drive(f, 1000, self.KEYS)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        self.assertLess(grown, 1024 * 1024, f"{grown} bytes more")
        self.assertEqual(state.failures, 0, state.lastError)
        self.assertEqual(len(f.table), 0)
        self.assertEqual(self.redis.command("DBSIZE"), self.KEYS)
