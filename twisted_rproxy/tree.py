"""
The resource tree built from a configuration: a L{Router}
(L{twisted_rproxy.router}) that sends each request, by host and path
prefix, to its route's resource (a L{ProxyResource} in front of a pool, or
a static directory, each behind its filters and cache). Here it is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource

from twisted_rproxy.cache import CacheResource, buildStores
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    FilterConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.filters import FilterSet, buildFilterChain
from twisted_rproxy.interfaces import ICacheStore, IResponseFilter
from twisted_rproxy.plugins.compress import CompressFilter
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.proxy import ForwardingPolicy, ProxyResource
from twisted_rproxy.router import Route as Route
from twisted_rproxy.router import Router as Router
from twisted_rproxy.router import requestHost as requestHost
from twisted_rproxy.state import SharedState
from twisted_rproxy.static import StaticResource

_log = Logger()


def policyFor(server: ServerConfig, hostHeader: str | None) -> ForwardingPolicy:
    """
    The forwarding policy for a pool's routes.
    """
    return ForwardingPolicy(
        forwardedHeaders=server.forwardedHeaders,
        via=server.via.encode("ascii") if server.via else None,
        trustedProxies=server.trustedProxies,
        hostHeader=hostHeader,
        hideHeaders=frozenset(
            name.lower().encode("ascii") for name in server.hideHeaders
        ),
        clientIPHeaders=frozenset(
            name.lower().encode("ascii") for name in server.clientIPHeaders
        ),
    )


def storedCoder(
    filters: Sequence[tuple[str, object]],
) -> tuple[CompressFilter | None, str]:
    """
    The C{compress} filter of a route with a cache that is to compress the
    variants the cache stores (see L{twisted_rproxy.cache.coding}), so
    that a hit is never compressed again.

    Every other filter then sees what it would see with the filter
    compressing each response: the cache sits inside the chain, and the
    response hooks of the filters listed before C{compress} (outside it)
    see the compressed response, as they do anyway. A filter listed after
    it with a response hook would see the compressed response instead of
    the identity one: then the cache stores identity responses and the
    filter compresses each hit, as it would without a cache.

    @param filters: The route's C{(name, filter)} pairs, in order.
    @return: The filter (or L{None}), and why not when there is one but
        it can't (C{""} otherwise).
    """
    found = [
        index for index, (_, f) in enumerate(filters) if isinstance(f, CompressFilter)
    ]
    if len(found) != 1:
        return None, "several compress filters" if found else ""
    index = found[0]
    for name, inner in filters[index + 1 :]:
        if IResponseFilter.providedBy(inner):
            return None, (
                f"filter {name!r}, listed after {filters[index][0]!r}, has a "
                "response hook that sees the identity response"
            )
    compress = filters[index][1]
    assert isinstance(compress, CompressFilter)
    return compress, ""


def buildRoute(
    route: RouteConfig,
    server: ServerConfig,
    pools: Mapping[str, BackendPool],
    filters: Mapping[str, FilterConfig] | None = None,
    reactor: IReactorTime | None = None,
    caches: Mapping[str, CacheConfig] | None = None,
    stores: Mapping[str, ICacheStore] | None = None,
    sharedState: SharedState | None = None,
    filterSet: FilterSet | None = None,
) -> Route:
    """
    The servable L{Route} for one route of the configuration.

    @param filters: The configuration's filters, by name; needed when the
        route lists some.
    @param reactor: The reactor given to filters and caches; needed when
        the route lists filters or names a cache.
    @param caches: The configuration's caches, by name; needed when the
        route names one.
    @param stores: The store of each cache, by name (see
        L{twisted_rproxy.cache.buildStores}); needed when the route names
        a cache.
    @param sharedState: The client of C{[state]}, handed to the route's
        filters; L{None} without one.
    @param filterSet: Keeps the route's filters, to close them when the
        tree is retired.
    """
    resource: IResource
    if route.pool is not None:
        pool = pools[route.pool]
        resource = ProxyResource(
            pool,
            policyFor(server, pool.config.hostHeader),
            route.path.encode("ascii") if route.stripPrefix else b"",
            websocket=route.websocket,
            tunnelIdleTimeout=server.tunnelIdleTimeout,
            allowTrace=route.allowTrace,
        )
    else:
        assert route.static is not None
        resource = StaticResource(
            route.static,
            index=route.index,
            listDirectories=route.listDirectories,
            allowHidden=route.allowHidden,
            followSymlinksOutside=route.followSymlinksOutside,
            cacheControl=route.cacheControl,
            cacheControlByExtension=dict(route.cacheControlByExtension),
            mimeTypes=dict(route.mimeTypes),
        )
    cache = None
    if route.cache is not None:
        # Only routes with a cache pay for it; inside the filter chain, so
        # that filters see cached responses as they see proxied ones.
        if reactor is None or caches is None or stores is None:
            raise ValueError("a route with a cache needs the caches and a reactor")
        resource = cache = CacheResource(
            resource, stores[route.cache], reactor, caches[route.cache]
        )
    if route.filters:
        # Only routes with filters pay for the chain.
        if reactor is None or filters is None:
            raise ValueError("a route with filters needs the filters and a reactor")
        resource = buildFilterChain(
            resource,
            route,
            filters,
            reactor,
            sharedState=sharedState,
            workers=server.workers,
            filterSet=filterSet,
        )
        if cache is not None:
            coder, why = storedCoder(resource.filters)
            if coder is not None:
                cache.storeCoded(coder)
            elif why:
                _log.warn(
                    "Route {path!r}: its cache stores identity responses, and "
                    "each hit is compressed again: {why}",
                    path=route.path,
                    why=why,
                )
    return Route(
        path=route.path.encode("ascii"),
        host=route.host,
        resource=resource,
        maxBodySize=route.maxBodySize
        if route.maxBodySize is not None
        else server.maxBodySize,
        requestBuffering=route.requestBuffering
        if route.requestBuffering is not None
        else server.requestBuffering,
        pool=route.pool,
    )


def buildResource(
    config: Config,
    pools: Mapping[str, BackendPool],
    reactor: IReactorTime | None = None,
    stores: Mapping[str, ICacheStore] | None = None,
    sharedState: SharedState | None = None,
    filterSet: FilterSet | None = None,
) -> Router:
    """
    The proxy's resource tree for C{config}, forwarding to C{pools} (one
    L{BackendPool} for each of C{config.pools}).

    @param reactor: The reactor given to filters and caches; needed when a
        route lists filters or names a cache.
    @param stores: The store of each of C{config.caches}, by name; new
        ones when not given.
    @param sharedState: The client of C{config.state} (see
        L{twisted_rproxy.service.ProxyService.sharedState}), for the
        caches' stores and the filters; L{None} without one.
    @param filterSet: Keeps every filter of the tree (see
        L{twisted_rproxy.filters.FilterSet}), so that the service closes
        them when a reload or a stop retires the tree.
    """
    if stores is None and config.caches:
        stores = buildStores(config.caches, sharedState=sharedState, reactor=reactor)
    return Router(
        [
            buildRoute(
                route,
                config.server,
                pools,
                config.filters,
                reactor,
                config.caches,
                stores,
                sharedState,
                filterSet,
            )
            for route in config.routes
        ]
    )
