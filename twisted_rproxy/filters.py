"""
Filters: Python code that a route runs around its resource.

A filter plugin is an L{IFilterFactory} found by
C{getPlugins(IFilterFactory, twisted_rproxy.plugins)} (L{findFilterFactory});
the configuration names the filters of each route, in order, and
L{FilterChain} runs them:

  - the request hooks (L{IRequestFilter}) in configuration order, each of
    which may change the request, answer it (L{FilterResponse}) or let it
    pass, synchronously or later (a L{Deferred} or a coroutine);
  - then the route's resource (a proxy, static files);
  - the response hooks (L{IResponseFilter}) in reverse order, the first
    filter listed being the outermost, as with nested wrapper resources:
    they see the status and all headers just before the head is written,
    whatever wrote the response, and may transform the body as it streams;
  - the error hooks (L{IErrorFilter}) when a backend fails.

A hook that raises answers 500 (or, once the head is out, closes the
connection), logged with the filter's name; the other requests go on.

Routes without filters get no L{FilterChain} at all, so they pay nothing.
The response hooks are run by a
L{twisted_rproxy.filterresponse.FilteredResponse}, a
L{twisted_rproxy.intercept.ResponseInterceptor} that a chain installs on
each request of its route: every writer of the response goes through it.
Hooks see every header: those the proxy passes as they are
(L{twisted_rproxy.server.ProxyRequest.passedHeaders}) are folded into
C{responseHeaders} when a hook first looks at the headers
(L{twisted_rproxy.filterresponse.HeadHeaders}); a head no hook looked at
is written as without filters, and a changed one by the same fast head
writer, from C{responseHeaders}.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from io import BytesIO
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.config.routes import FilterOptionError, setFilterValidator
from twisted_rproxy.filterenv import (
    FilterEnvironment,
    FilterSet,
    buildConfiguredFilter,
    collectWarnings,
)
from twisted_rproxy.filteroptions import FilterOptions
from twisted_rproxy.filterresponse import FilteredResponse as _FilteredResponse
from twisted_rproxy.filterresponse import abortResponse as _abort
from twisted_rproxy.filterresponse import logFailure as _logFailure
from twisted_rproxy.interfaces import (
    IErrorFilter,
    IFilterFactory,
    IRequestFilter,
    IResponseFilter,
)
from twisted_rproxy.messages import FilterResponse, RequestContext, ResponseHead
from twisted_rproxy.pages import renderError, setStatus
from twisted_rproxy.state import SharedState

if TYPE_CHECKING:
    from twisted_rproxy.config import Config, FilterConfig, RouteConfig, StateConfig

__all__ = [
    "FilterChain",
    "FilterEnvironment",
    "FilterOptionError",
    "FilterOptions",
    "FilterResponse",
    "FilterSet",
    "RequestContext",
    "buildFilter",
    "buildFilterChain",
    "ResponseHead",
    "filterFactories",
    "filterWarnings",
    "findFilterFactory",
]


def filterFactories() -> dict[str, list[IFilterFactory]]:
    """
    Every installed filter plugin, by name (normally one per name).
    """
    import twisted_rproxy.plugins

    found: dict[str, list[IFilterFactory]] = {}
    for factory in getPlugins(IFilterFactory, twisted_rproxy.plugins):
        same = found.setdefault(str(factory.name), [])
        if factory not in same:
            same.append(factory)
    return found


def findFilterFactory(name: str) -> IFilterFactory:
    """
    The installed filter plugin called C{name}.

    @raise LookupError: With a message saying which are installed, when
        none (or more than one) is called C{name}.
    """
    factories = filterFactories()
    candidates = factories.get(name, [])
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        modules = ", ".join(sorted(type(f).__module__ for f in candidates))
        raise LookupError(
            f"{len(candidates)} installed filter plugins are named {name!r} ({modules})"
        )
    installed = ", ".join(sorted(factories)) or "none"
    raise LookupError(f"no filter plugin named {name!r} (installed: {installed})")


def filterWarnings(config: Config) -> list[str]:
    """
    What the filters of C{config}'s routes warn about, for its number of
    workers (see L{twisted_rproxy.interfaces.IFilterEnvironment.warn}):
    lines C{"filters.NAME: ..."} for C{--check} and the start to report.
    """
    return collectWarnings(config, findFilterFactory)


def _hookResult(result: object) -> Deferred[object] | None:
    """
    A L{Deferred} for a hook's result that is not ready, or L{None}.
    """
    if isinstance(result, Deferred):
        return result
    if inspect.iscoroutine(result):
        return Deferred.fromCoroutine(result)
    return None


_RESULT_TYPES = "None or a FilterResponse"


class FilterChain(Resource):
    """
    Runs a route's filters around its resource.

    @ivar resource: The route's resource (traversal goes on in it below the
        route's prefix once the request hooks let the request pass).
    @ivar filters: C{(name, filter)} pairs, in configuration order.
    @ivar sharedState: The client of C{[state]}, or L{None}.
    @ivar filterSet: The L{FilterSet} its filters belong to, which sees
        the requests it takes in (so that retiring the filters lets them
        finish first), or L{None}.
    """

    isLeaf = True
    sharedState: SharedState | None = None

    def __init__(
        self,
        resource: IResource,
        filters: Sequence[tuple[str, object]],
        reactor: IReactorTime,
        route: object = None,
        filterSet: FilterSet | None = None,
    ) -> None:
        """
        @param resource: See L{resource}.
        @param filters: See L{filters}; each filter provides one or more of
            L{IRequestFilter}, L{IResponseFilter} and L{IErrorFilter}.
        @param reactor: The reactor, given to hooks in their context.
        @param route: The route, given to hooks in their context.
        @param filterSet: See L{filterSet}.
        """
        super().__init__()  # type: ignore[no-untyped-call]  # python/mypy#16653
        self.resource = resource
        self.filters = tuple(filters)
        self.reactor = reactor
        self.route = route
        self.filterSet = filterSet
        self._requestHooks = [
            (name, f.filterRequest)
            for name, f in self.filters
            if IRequestFilter.providedBy(f)
        ]
        self._responseHooks = [
            (name, f.filterResponse)
            for name, f in reversed(self.filters)
            if IResponseFilter.providedBy(f)
        ]
        self._errorHooks = [
            (name, f.filterError)
            for name, f in self.filters
            if IErrorFilter.providedBy(f)
        ]
        unused = [
            name
            for name, f in self.filters
            if not (
                IRequestFilter.providedBy(f)
                or IResponseFilter.providedBy(f)
                or IErrorFilter.providedBy(f)
            )
        ]
        if unused:
            raise TypeError(
                f"filter {unused[0]!r} provides none of IRequestFilter, "
                "IResponseFilter and IErrorFilter"
            )

    def render(self, request: IRequest) -> object:
        req: Any = request
        client = request.getClientAddress()
        context = RequestContext(
            request,
            self.reactor,
            self.route,
            getattr(client, "host", "") or "",
            self.reactor.seconds(),
        )
        if self.filterSet is not None:
            self.filterSet.track(request)
        if self._responseHooks:
            _FilteredResponse(req, context, self._responseHooks)
        if self._errorHooks:
            req.onBackendError = lambda error, fallback: self._backendError(
                req, context, error, fallback
            )
        self._runRequestHooks(req, context, 0, request.uri)
        return NOT_DONE_YET

    def _runRequestHooks(
        self, request: Any, context: RequestContext, index: int, uri: bytes
    ) -> None:
        hooks = self._requestHooks
        while index < len(hooks):
            name, hook = hooks[index]
            try:
                result = hook(request, context)
            except Exception:
                self._failed(Failure(), request, name, "request")
                return
            if result is None:
                index += 1
                continue
            waiting = _hookResult(result)
            if waiting is not None:
                self._wait(waiting, request, context, index, uri)
                return
            self._answer(request, name, result, "request")
            return
        # (What context.mark does, without a call more per request.)
        context.timings["requestFiltered"] = self.reactor.seconds()
        self._serve(request, uri)

    def _wait(
        self,
        waiting: Deferred[object],
        request: Any,
        context: RequestContext,
        index: int,
        uri: bytes,
    ) -> None:
        name = self._requestHooks[index][0]
        gone: list[bool] = []

        def clientGone(reason: Failure) -> None:
            gone.append(True)
            waiting.cancel()

        # Only a waiting request pays for a Deferred of its end.
        request.notifyFinish().addErrback(clientGone)

        def resumed(result: object) -> None:
            if gone or requestGone(request):
                return
            if result is not None:
                self._answer(request, name, result, "request")
                return
            self._runRequestHooks(request, context, index + 1, uri)

        def failed(failure: Failure) -> None:
            if gone or requestGone(request):
                return
            self._failed(failure, request, name, "request")

        waiting.addCallbacks(resumed, failed)

    def _answer(self, request: Any, name: str, result: object, hook: str) -> None:
        if not isinstance(result, FilterResponse):
            try:
                raise TypeError(
                    f"the {hook} hook returned {result!r}, expected {_RESULT_TYPES}"
                )
            except TypeError:
                self._failed(Failure(), request, name, hook)
            return
        setStatus(request, result.code)
        headers = request.responseHeaders
        for headerName, value in result.headers:
            headers.addRawHeader(headerName, value)
        if not headers.hasHeader(b"content-length") and result.code not in (
            NO_BODY_CODES
        ):
            headers.setRawHeaders(b"content-length", [b"%d" % (len(result.body),)])
        if request.method != b"HEAD" and result.body:
            request.write(result.body)
        request.finish()

    def _failed(self, failure: Failure, request: Any, name: str, hook: str) -> None:
        _logFailure(failure, name, hook, request)
        if requestGone(request) or request.finished:
            return
        if request.startedWriting:
            _abort(request)
            return
        request.passedHeaders = None
        renderError(request, 500)

    def _serve(self, request: Any, uri: bytes) -> None:
        """
        Hand the request to the route's resource.
        """
        if request.uri != uri:
            # A request hook rewrote the target: traversal below the route
            # follows the new path.
            path = request.uri.split(b"?", 1)[0]
            request.path = path
            segments = [unquote_to_bytes(s) for s in path[1:].split(b"/")]
            request.postpath = segments[len(request.prepath) :]
        try:
            resource = getChildForRequest(self.resource, request)
            request.render(resource)
        except Exception:
            request.processingFailed(Failure())

    def _backendError(
        self,
        request: Any,
        context: RequestContext,
        error: Exception,
        fallback: Callable[[], None],
    ) -> None:
        """
        Ask the error hooks, in order, for an answer to a backend failure;
        without one, C{fallback} writes the proxy's own error page.
        """
        hooks = self._errorHooks

        def run(index: int) -> None:
            while index < len(hooks):
                name, hook = hooks[index]
                try:
                    result = hook(request, context, error)
                except Exception:
                    self._failed(Failure(), request, name, "error")
                    return
                waiting = _hookResult(result)
                if waiting is not None:
                    waiting.addCallbacks(
                        lambda result, index=index, name=name: answered(
                            result, index, name
                        ),
                        lambda failure, name=name: failedLater(failure, name),
                    )
                    return
                if result is not None:
                    self._answer(request, name, result, "error")
                    return
                index += 1
            fallback()

        def answered(result: object, index: int, name: str) -> None:
            if requestGone(request):
                return
            if result is not None:
                self._answer(request, name, result, "error")
            else:
                run(index + 1)

        def failedLater(failure: Failure, name: str) -> None:
            if not requestGone(request):
                self._failed(failure, request, name, "error")

        run(0)


def replaceBody(request: IRequest, body: bytes) -> None:
    """
    Replace a buffered request body (for a request hook).
    """
    request.content = BytesIO(body)


def buildFilterChain(
    resource: IResource,
    route: RouteConfig,
    filters: Mapping[str, FilterConfig],
    reactor: IReactorTime,
    sharedState: SharedState | None = None,
    workers: int = 1,
    filterSet: FilterSet | None = None,
) -> FilterChain:
    """
    The L{FilterChain} of a configured route around its C{resource}: each
    filter the route lists is built by its plugin from its options (and,
    for the plugins that take one, a L{FilterEnvironment}).

    @param sharedState: The client of C{[state]}, kept as the chain's
        C{sharedState} and given to the filters that share their state;
        L{None} without C{[state]}.
    @param workers: The configured number of worker processes.
    @param filterSet: Where the filters and their environments go, to be
        closed when the tree is retired (see L{FilterSet.retire}); the
        chain reports its requests to it.

    @raise LookupError: If a filter's plugin is not installed (a validated
        configuration has checked that already).
    """
    built = []
    for name in route.filters:
        filterConfig = filters[name]
        factory = findFilterFactory(filterConfig.plugin)
        environment = FilterEnvironment(name, reactor, sharedState, workers)
        made = buildConfiguredFilter(factory, filterConfig.options, environment)
        built.append((name, made))
        if filterSet is not None:
            filterSet.add(name, made, environment)
    chain = FilterChain(resource, built, reactor, route, filterSet)
    chain.sharedState = sharedState
    return chain


def buildFilter(
    plugin: str,
    options: Mapping[str, object] | None = None,
    reactor: IReactorTime | None = None,
    name: str | None = None,
    filterSet: FilterSet | None = None,
    sharedState: SharedState | None = None,
) -> object:
    """
    Build a filter of the installed plugin C{plugin} from C{options}, as a
    C{[filters.NAME]} table would, for an application that mounts its own
    L{FilterChain}: the plugin is found as the proxy finds it, and a
    factory that takes an environment gets a L{FilterEnvironment} on
    C{reactor}.

    @param reactor: The reactor the filter's timers and clients run on;
        without one, the filter is built as C{--check} builds it (on a
        L{twisted.internet.task.Clock}), good for checking options only.
    @param name: The filter's name (its environment's C{name}); the
        plugin's by default.
    @param filterSet: Where to keep the filter and its environment, so that
        C{filterSet.retire()} closes them (the filter's C{close()}, then
        its connection pools) when the application is done with them.
    @param sharedState: The client of a C{[state]}, for plugins that share
        their state.
    @raise LookupError: If no such plugin is installed.
    @raise FilterOptionError: For a bad option.
    """
    factory = findFilterFactory(plugin)
    filterName = name if name is not None else plugin
    if reactor is None:
        environment = FilterEnvironment.forCheck(filterName)
    else:
        environment = FilterEnvironment(filterName, reactor, sharedState)
    made = buildConfiguredFilter(factory, dict(options or {}), environment)
    if filterSet is not None:
        filterSet.add(filterName, made, environment)
    return made


def _validateFilter(
    plugin: str, options: dict[str, object], name: str, state: StateConfig | None
) -> None:
    """
    The configuration's check of a C{[filters.NAME]} table: the plugin is
    installed, and it builds a filter from the options, in an environment
    that does no I/O (L{FilterEnvironment.forCheck}).
    """
    buildConfiguredFilter(
        findFilterFactory(plugin), options, FilterEnvironment.forCheck(name, state)
    )


setFilterValidator(_validateFilter)
