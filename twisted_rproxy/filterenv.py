"""
What a filter is built in: L{FilterEnvironment}, the
L{twisted_rproxy.interfaces.IFilterEnvironment} given to the factories
that take one (L{buildConfiguredFilter} finds out which, once per
factory); L{FilterSet}, the filters of one resource tree, which retires
them together (their C{close()}, then their environments' connection
pools) when a reload or a stop replaces the tree; and L{collectWarnings},
what the filters of a configuration have to say about it (a per-worker
rate limit with several workers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary, ref

from attrs import field, frozen
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from zope.interface import implementer

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.interfaces import IFilterEnvironment, IFilterFactory
from twisted_rproxy.state import SharedState

if TYPE_CHECKING:
    from twisted_rproxy.config import Config, StateConfig

__all__ = [
    "CLOSE_TIMEOUT",
    "FilterEnvironment",
    "FilterSet",
    "buildConfiguredFilter",
    "collectWarnings",
]

#: The longest a retirement waits for a filter's C{close()} (its
#: L{Deferred}), in seconds: past it the filter is given up on (and logged)
#: and its environment's connections are closed anyway.
CLOSE_TIMEOUT = 10.0

_log = Logger()

#: How many requests a L{FilterSet} records before it first drops those
#: that are done (see L{FilterSet.track}).
_PRUNE_MINIMUM = 64


@implementer(IFilterEnvironment)
@frozen
class FilterEnvironment:
    """
    The L{IFilterEnvironment} of one filter.

    @ivar warnings: What the factory said with L{warn}, in order.
    @ivar stubClient: The HTTP client L{httpClient} returns instead of a
        treq client of its own (the test kit's
        L{twisted_rproxy.testing.StubHTTPClient}), or L{None}.
    """

    name: str
    reactor: IReactorTime
    sharedState: SharedState | None = None
    workers: int = 1
    checking: bool = False
    warnings: list[str] = field(factory=list, eq=False, repr=False)
    stubClient: object = field(default=None, eq=False, repr=False)
    # The pools handed out by connectionPool, by name: closed by close().
    _pools: dict[str, HTTPConnectionPool] = field(
        factory=dict, eq=False, repr=False, init=False
    )

    @classmethod
    def forCheck(
        cls, name: str, state: StateConfig | None = None, workers: int = 1
    ) -> FilterEnvironment:
        """
        The environment of a filter built only to check its options: a
        L{Clock} for its reactor and, with C{[state]}, a L{SharedState} that
        is never started (its operations fail without touching the
        network), so that nothing the factory does can reach out.

        @param state: The configuration's C{[state]}, or L{None}.
        @param workers: The configured number of workers.
        """
        clock = Clock()
        shared = SharedState(clock, state) if state is not None else None
        return cls(name, clock, shared, workers, checking=True)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def connectionPool(self, name: str = "default") -> HTTPConnectionPool:
        """
        A persistent L{HTTPConnectionPool} on C{reactor} for the filter's
        own HTTP requests (C{treq.HTTPClient(Agent(reactor, pool=...))},
        or treq's C{pool=} argument), the same one for the same C{name}.
        The proxy owns it: its cached connections are closed when the
        filter is retired (after the filter's C{close()}), so a reload
        leaves no connection behind. Making it does no I/O.
        """
        pool = self._pools.get(name)
        if pool is None:
            # Twisted's reactor parameter is untyped.
            reactor: Any = self.reactor
            pool = self._pools[name] = HTTPConnectionPool(reactor, persistent=True)
        return pool

    def httpClient(self) -> Any:
        """
        A C{treq.HTTPClient} over L{connectionPool}C{()} (made once), or
        the stub client the environment was given (L{stubClient}).

        @raise RuntimeError: Without a stub when treq is not installed.
        """
        if self.stubClient is not None:
            return self.stubClient
        try:
            from treq.client import HTTPClient
        except ImportError:
            raise RuntimeError(
                "httpClient() needs treq (pip install treq); or make a "
                "twisted.web.client.Agent with connectionPool()"
            ) from None
        from twisted.web.client import Agent

        reactor: Any = self.reactor
        return HTTPClient(Agent(reactor, pool=self.connectionPool()))

    def close(self) -> Deferred[None]:
        """
        Close the cached connections of the pools L{connectionPool} made
        (the framework calls it when the filter is retired).

        @return: A L{Deferred} firing once they are closed.
        """
        pools = list(self._pools.values())
        self._pools.clear()
        closing = DeferredList(
            [pool.closeCachedConnections() for pool in pools], consumeErrors=True
        )
        return closing.addCallback(lambda _: None)


def _bounded(
    waiting: Deferred[Any], seconds: float, reactor: IReactorTime
) -> Deferred[Any]:
    """
    C{waiting}, given up on (cancelled) after C{seconds}.
    """
    if seconds <= 0 or waiting.called:
        if not waiting.called:
            waiting.cancel()
        return waiting
    return waiting.addTimeout(seconds, reactor)


class FilterSet:
    """
    The filters of one resource tree (or of an application's own chains),
    retired together.

    L{twisted_rproxy.filters.FilterChain}s built with it record the
    requests they take in (weakly), so that L{retire} can let the requests
    in flight finish before the filters are closed.

    @ivar reactor: The reactor timeouts run on.
    @ivar filters: C{(name, filter, environment)} of each filter, in the
        order they were built.
    @ivar retired: Whether L{retire} was called.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self.reactor = reactor
        self.filters: list[tuple[str, object, FilterEnvironment | None]] = []
        self.retired = False
        # Weak references without callbacks (a WeakSet's cost a Python call
        # as each request is freed), dropped once dead or done by _prune.
        self._inFlight: list[ref[Any]] = []
        self._pruneAt = _PRUNE_MINIMUM
        self._retiring: Deferred[None] | None = None

    def add(
        self, name: str, built: object, environment: FilterEnvironment | None
    ) -> None:
        """
        Own C{built}, the filter C{name}, and its C{environment}: L{retire}
        closes them.
        """
        self.filters.append((name, built, environment))

    def track(self, request: object) -> None:
        """
        C{request} runs through filters of the set (a chain's C{render}).

        The set holds it weakly, and drops the requests that are done
        whenever it has recorded twice as many as were left the time
        before: memory bounded by the requests in flight, at a constant
        cost per request.
        """
        refs = self._inFlight
        refs.append(ref(request))
        if len(refs) >= self._pruneAt:
            self._prune()

    def _prune(self) -> list[Any]:
        """
        Drop the requests that are freed, finished or gone.

        @return: Those left.
        """
        live = []
        refs = []
        for reference in self._inFlight:
            request = reference()
            if (
                request is not None
                and not getattr(request, "finished", False)
                and not requestGone(request)
            ):
                live.append(request)
                refs.append(reference)
        self._inFlight = refs
        self._pruneAt = max(_PRUNE_MINIMUM, 2 * len(refs))
        return live

    def inFlight(self) -> list[Any]:
        """
        The requests through the set's filters not finished yet.
        """
        return self._prune()

    def retire(
        self, wait: float = 0.0, closeTimeout: float = CLOSE_TIMEOUT
    ) -> Deferred[None]:
        """
        Retire the filters, once: let the requests in flight through them
        finish (for at most C{wait} seconds), then call each filter's
        C{close()} if it has one (once; a L{Deferred} or coroutine it
        returns is waited for, at most C{closeTimeout} seconds each, all at
        once), then close their environments' connection pools. A failing
        or late C{close()} is logged with the filter's name; the others are
        closed all the same.

        @return: A L{Deferred} firing with L{None} when it is done (the
            same one on a second call); it never fails.
        """
        if self._retiring is not None:
            return self._retiring
        self.retired = True
        pending = []
        if wait > 0:
            pending = [request.notifyFinish() for request in self.inFlight()]
        draining: Deferred[Any] = DeferredList(pending, consumeErrors=True)
        if pending:
            draining = draining.addTimeout(wait, self.reactor)
        draining.addErrback(lambda _: None)
        self._retiring = draining.addCallback(lambda _: self._close(closeTimeout))
        return self._retiring

    def _close(self, closeTimeout: float) -> Deferred[None]:
        closing: list[Deferred[Any]] = []
        for name, built, environment in self.filters:
            closing.append(self._closeOne(name, built, environment, closeTimeout))
        self.filters = []
        done = DeferredList(closing, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _closeOne(
        self,
        name: str,
        built: object,
        environment: FilterEnvironment | None,
        closeTimeout: float,
    ) -> Deferred[None]:
        close = getattr(built, "close", None)
        closing: Deferred[Any] = succeed(None)
        if callable(close):
            # A coroutine's result is waited for as a Deferred's.
            closing = maybeDeferred(close)
            if not closing.called:
                closing = _bounded(closing, closeTimeout, self.reactor)

        def failed(failure: Failure) -> None:
            _log.failure("Filter {filter!r} failed to close", failure, filter=name)

        closing.addErrback(failed)
        if environment is not None:
            closing.addCallback(lambda _: environment.close())
            closing.addErrback(failed)
        return closing


# Whether each factory's buildFilter takes an environment, read once.
_takesEnvironment: WeakKeyDictionary[object, bool] = WeakKeyDictionary()


def takesEnvironment(factory: IFilterFactory) -> bool:
    """
    Whether C{factory.buildFilter} takes an environment: whether it can be
    called with two positional arguments.
    """
    try:
        return _takesEnvironment[factory]
    except (KeyError, TypeError):
        pass
    try:
        inspect.signature(factory.buildFilter).bind({}, None)
    except (TypeError, ValueError):
        takes = False
    else:
        takes = True
    try:
        _takesEnvironment[factory] = takes
    except TypeError:
        # Not weakly referenceable: read again next time, at no harm.
        pass
    return takes


def buildConfiguredFilter(
    factory: IFilterFactory,
    options: Mapping[str, object],
    environment: FilterEnvironment,
) -> object:
    """
    Build a filter, giving C{factory} the C{environment} if it takes one.

    @raise twisted_rproxy.filters.FilterOptionError: As the factory does.
    """
    if takesEnvironment(factory):
        # The interface declares the one-parameter form, which still holds.
        build: Callable[..., object] = factory.buildFilter
        return build(options, environment)
    return factory.buildFilter(options)


def collectWarnings(
    config: Config, findFactory: Callable[[str], IFilterFactory]
) -> list[str]:
    """
    What the filters the routes of C{config} use warn about (see
    L{IFilterEnvironment.warn}), each built once more without I/O, for the
    configured number of workers.

    @param findFactory: Finds the factory of a plugin name
        (L{twisted_rproxy.filters.findFilterFactory}).
    @return: Lines of the form C{"filters.NAME: message"}, in the order of
        the C{[filters.NAME]} tables.
    """
    used = {name for route in config.routes for name in route.filters}
    warnings: list[str] = []
    for name, filterConfig in config.filters.items():
        if name not in used:
            continue
        environment = FilterEnvironment.forCheck(
            name, config.state, config.server.workers
        )
        try:
            buildConfiguredFilter(
                findFactory(filterConfig.plugin), filterConfig.options, environment
            )
        except Exception:
            # Loading the configuration built it already: a filter that now
            # refuses is reported when the service builds it.
            continue
        warnings += [f"filters.{name}: {message}" for message in environment.warnings]
    return warnings
