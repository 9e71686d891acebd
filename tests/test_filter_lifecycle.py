"""
The filters' lifecycle: what L{twisted_rproxy.filterenv.FilterEnvironment}
gives a filter for its I/O (the reactor, connection pools owned by the
proxy), and L{twisted_rproxy.filterenv.FilterSet}, which retires the
filters of a tree (their C{close()}, then their pools) when a reload or a
stop replaces it.
"""

from __future__ import annotations

from typing import Any

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

import twisted_rproxy.filters as filters
from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from twisted_rproxy.config import parseConfig
from twisted_rproxy.filterenv import FilterEnvironment, FilterSet
from twisted_rproxy.interfaces import IFilterFactory, IRequestFilter
from twisted_rproxy.service import makeService


class Closable:
    """
    A filter object that counts its C{close()} calls and returns C{result}.
    """

    def __init__(self, result: Any = None) -> None:
        self.closed = 0
        self.result = result

    def close(self) -> Any:
        self.closed += 1
        return self.result


class Request:
    """
    What L{FilterSet} needs of a request: C{finished}, C{notifyFinish}.
    """

    def __init__(self) -> None:
        self.finished = False
        self.waiting: list[Deferred[None]] = []

    def notifyFinish(self) -> Deferred[None]:
        self.waiting.append(Deferred())
        return self.waiting[-1]

    def finish(self) -> None:
        self.finished = True
        for d in self.waiting:
            d.callback(None)


class FilterSetTests(SynchronousTestCase):
    """
    L{FilterSet.retire} on a clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.errors: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                self.errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_waitsForRequestsInFlight(self) -> None:
        """
        The filters close once the requests through them are finished.
        """
        filterSet = FilterSet(self.clock)
        built = Closable()
        filterSet.add("a", built, None)
        request = Request()
        filterSet.track(request)
        retiring = filterSet.retire(30)
        self.assertNoResult(retiring)
        self.assertEqual(built.closed, 0)
        request.finish()
        self.successResultOf(retiring)
        self.assertEqual(built.closed, 1)
        # Once only.
        self.assertIs(filterSet.retire(30), retiring)
        self.assertEqual(built.closed, 1)

    def test_waitIsBounded(self) -> None:
        """
        Past C{wait} seconds, a request still in flight no longer holds the
        filters open.
        """
        filterSet = FilterSet(self.clock)
        built = Closable()
        filterSet.add("a", built, None)
        request = Request()
        filterSet.track(request)
        retiring = filterSet.retire(5)
        self.clock.advance(4.9)
        self.assertEqual(built.closed, 0)
        self.clock.advance(0.2)
        self.successResultOf(retiring)
        self.assertEqual(built.closed, 1)

    def test_closeDeferredWaitedForBounded(self) -> None:
        """
        A C{close()} L{Deferred} is waited for, at most C{closeTimeout}
        seconds: then it is cancelled and logged, and the environment's
        pools are closed anyway.
        """
        filterSet = FilterSet(self.clock)
        late = Closable(Deferred())
        environment = FilterEnvironment("late", self.clock)
        pool = environment.connectionPool()
        closedPools: list[bool] = []
        pool.closeCachedConnections = lambda: closedPools.append(True) or succeed(None)  # type: ignore[method-assign]
        filterSet.add("late", late, environment)
        retiring = filterSet.retire(0, closeTimeout=3)
        self.assertNoResult(retiring)
        self.clock.advance(3)
        self.successResultOf(retiring)
        self.assertEqual(closedPools, [True])
        self.flushLoggedErrors()
        self.assertEqual(len(self.errors), 1)
        self.assertEqual(self.errors[0]["filter"], "late")

    def test_closeFailureLoggedOthersClosed(self) -> None:
        """
        A C{close()} that raises is logged; the other filters close.
        """

        class Broken:
            def close(self) -> None:
                raise RuntimeError("oops")

        filterSet = FilterSet(self.clock)
        other = Closable()
        filterSet.add("broken", Broken(), None)
        filterSet.add("other", other, None)
        self.successResultOf(filterSet.retire())
        self.assertEqual(other.closed, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        [event] = self.errors
        self.assertEqual(event["filter"], "broken")

    def test_coroutineClose(self) -> None:
        """
        An C{async def close()} is waited for.
        """
        waiting: Deferred[None] = Deferred()
        done: list[bool] = []

        class Async:
            async def close(self) -> None:
                await waiting
                done.append(True)

        filterSet = FilterSet(self.clock)
        filterSet.add("async", Async(), None)
        retiring = filterSet.retire()
        self.assertNoResult(retiring)
        waiting.callback(None)
        self.successResultOf(retiring)
        self.assertEqual(done, [True])


class EnvironmentTests(SynchronousTestCase):
    """
    What L{FilterEnvironment} gives a filter for its I/O.
    """

    def test_connectionPool(self) -> None:
        """
        One persistent pool per name, on the environment's reactor.
        """
        clock = Clock()
        environment = FilterEnvironment("f", clock)
        pool = environment.connectionPool()
        self.assertIsInstance(pool, HTTPConnectionPool)
        self.assertTrue(pool.persistent)
        self.assertIs(environment.connectionPool(), pool)
        self.assertIsNot(environment.connectionPool("other"), pool)

    def test_httpClient(self) -> None:
        """
        C{httpClient()} is a treq client, or the stub given.
        """
        environment = FilterEnvironment("f", Clock())
        self.assertIsInstance(environment.httpClient(), HTTPClient)
        stub = object()
        self.assertIs(
            FilterEnvironment("f", Clock(), stubClient=stub).httpClient(), stub
        )


@implementer(IRequestFilter)
class PooledFilter:
    """
    Asks the C{auth} backend about each request over a treq client on its
    environment's pool; counts its C{close()} calls.
    """

    instances: list[PooledFilter] = []

    def __init__(self, url: str, environment: Any) -> None:
        self.url = url
        self.client = HTTPClient(
            Agent(environment.reactor, pool=environment.connectionPool())
        )
        self.closed = 0
        self.hold: Deferred[None] | None = None
        if not environment.checking:
            # Not those the configuration builds only to check options.
            PooledFilter.instances.append(self)

    async def filterRequest(self, request: Any, context: object) -> None:
        response = await self.client.get(self.url)
        await response.content()
        if self.hold is not None:
            await self.hold

    def close(self) -> None:
        self.closed += 1


@implementer(IFilterFactory)
class PooledFactory:
    name = "pooled"

    def buildFilter(self, options: Any, environment: Any) -> PooledFilter:
        return PooledFilter(str(options["url"]), environment)


class ReloadTests(LoopbackTestCase):
    """
    The real service retires the filters of a tree a reload replaces, and
    those of the running tree when it stops.
    """

    def setUp(self) -> None:
        super().setUp()
        PooledFilter.instances = []
        original = filters.findFilterFactory

        def find(name: str) -> Any:
            return PooledFactory() if name == "pooled" else original(name)

        self.patch(filters, "findFilterFactory", find)

    def config(self, appPort: int, authPort: int) -> Any:
        return parseConfig(
            {
                "server": {"listen": ["tcp:0:interface=127.0.0.1"]},
                "pools": {"app": {"servers": [backendServer(appPort).url]}},
                "filters": {
                    "auth": {
                        "plugin": "pooled",
                        "url": f"http://127.0.0.1:{authPort}/check",
                    }
                },
                "routes": [{"path": "/", "pool": "app", "filters": ["auth"]}],
            },
            "test.toml",
            "/",
        )

    async def openConnections(self, backend: Any, expected: int) -> int:
        for _ in range(300):
            count = sum(1 for c in backend.connections if not c.gone)
            if count <= expected:
                return count
            await sleep(0.01)
        return sum(1 for c in backend.connections if not c.gone)

    @asyncTest
    async def test_noConnectionLeakedPerReload(self) -> None:
        """
        After N reloads, each with a request through the filter, the auth
        backend has the current filter's connection open, not N + 1; each
        retired filter was closed once, and the last one closes at stop.
        """
        app = await self.startBackend()
        auth = await self.startBackend()
        config = self.config(app.portNumber, auth.portNumber)
        service = makeService(config, reactor)
        service.startService()
        stopped: list[bool] = []
        self.addCleanup(lambda: None if stopped else service.stopService())
        port = (await service.whenListening())[0].getHost().port
        client = self.httpClient()
        reloads = 4
        for n in range(reloads + 1):
            if n:
                service.reload(self.config(app.portNumber, auth.portNumber))
            response = await client.get(f"http://127.0.0.1:{port}/x{n}")
            self.assertEqual(response.code, 200)
            await response.content()
        self.assertEqual(len(PooledFilter.instances), reloads + 1)
        self.assertEqual(await self.openConnections(auth, 1), 1)
        self.assertEqual(len(auth.connections), reloads + 1)
        self.assertEqual(
            [f.closed for f in PooledFilter.instances], [1] * reloads + [0]
        )
        await service.stopService()
        stopped.append(True)
        self.assertEqual(
            [f.closed for f in PooledFilter.instances], [1] * (reloads + 1)
        )
        self.assertEqual(await self.openConnections(auth, 0), 0)

    @asyncTest
    async def test_inFlightRequestFinishesFirst(self) -> None:
        """
        A request still in the old filter when a reload comes finishes
        through it; the old filter is closed after.
        """
        app = await self.startBackend()
        auth = await self.startBackend()
        service = makeService(self.config(app.portNumber, auth.portNumber), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        client = self.httpClient()
        first = PooledFilter.instances[0]
        first.hold = Deferred()
        pending = client.get(f"http://127.0.0.1:{port}/slow")
        for _ in range(300):
            if auth.requests:
                break
            await sleep(0.01)
        await sleep(0.05)
        service.reload(self.config(app.portNumber, auth.portNumber))
        await sleep(0.05)
        self.assertEqual(first.closed, 0)
        first.hold.callback(None)
        response = await pending
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"/slow")
        for _ in range(300):
            if first.closed:
                break
            await sleep(0.01)
        self.assertEqual(first.closed, 1)
