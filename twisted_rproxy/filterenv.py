"""
What a filter is built in: L{FilterEnvironment}, the
L{twisted_rproxy.interfaces.IFilterEnvironment} given to the factories
that take one (L{buildConfiguredFilter} finds out which, once per
factory), and L{collectWarnings}, what the filters of a configuration have
to say about it (a per-worker rate limit with several workers).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Clock
from zope.interface import implementer

from twisted_rproxy.interfaces import IFilterEnvironment, IFilterFactory
from twisted_rproxy.state import SharedState

if TYPE_CHECKING:
    from twisted_rproxy.config import Config, StateConfig

__all__ = ["FilterEnvironment", "buildConfiguredFilter", "collectWarnings"]


@implementer(IFilterEnvironment)
@frozen
class FilterEnvironment:
    """
    The L{IFilterEnvironment} of one filter.

    @ivar warnings: What the factory said with L{warn}, in order.
    """

    name: str
    reactor: IReactorTime
    sharedState: SharedState | None = None
    workers: int = 1
    checking: bool = False
    warnings: list[str] = field(factory=list, eq=False, repr=False)

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
