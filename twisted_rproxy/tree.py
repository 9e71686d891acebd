"""
The resource tree built from a configuration: a L{Router} that sends each
request, by host and path prefix, to its route's resource (a
L{ProxyResource} in front of a pool, or a static directory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy.cache import CacheResource, buildStores
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    FilterConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.filters import buildFilterChain
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.pages import renderError
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.proxy import ForwardingPolicy, ProxyResource
from twisted_rproxy.static import StaticResource


@frozen
class Route:
    """
    One route of a L{Router}, ready to serve.

    @ivar path: The path prefix, as bytes, starting with C{b"/"}.
    @ivar host: L{None} for any host, an exact lowercased host, or
        C{"*.example.com"}.
    @ivar resource: What serves the matched requests. Path traversal goes
        on in it below the prefix.
    @ivar maxBodySize: The largest request body accepted.
    @ivar requestBuffering: Whether request bodies are buffered.
    @ivar prefixSegments: How many path segments the prefix consumes.
    @ivar pool: The name of the route's pool, L{None} for a static route.
    @ivar label: How logs, metrics and the admin page name the route:
        C{host/path} or C{path}.
    """

    path: bytes
    host: str | None
    resource: IResource
    maxBodySize: int
    requestBuffering: bool
    prefixSegments: int = field(init=False)
    pool: str | None = None
    label: str = field(init=False)

    @label.default
    def _label(self) -> str:
        path = self.path.decode("ascii")
        return path if self.host is None else self.host + path

    @prefixSegments.default
    def _prefixSegments(self) -> int:
        return len([s for s in self.path.split(b"/") if s])

    def matchesPath(self, path: bytes) -> bool:
        """
        Whether C{path} is under this route's prefix, at a segment
        boundary (C{/api} matches C{/api} and C{/api/x}, not C{/apix}).
        """
        prefix = self.path
        if not path.startswith(prefix):
            return False
        return (
            prefix.endswith(b"/") or len(path) == len(prefix) or path[len(prefix)] == 47
        )

    def matchesHost(self, host: str | None) -> bool:
        """
        Whether a request for C{host} (lowercased, without port) is for this
        route.
        """
        pattern = self.host
        if pattern is None:
            return True
        if host is None:
            return False
        if pattern.startswith("*."):
            return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
        return host == pattern


def requestHost(request: IRequest) -> str | None:
    """
    The host a request is for: its C{Host} header, lowercased, without the
    port; L{None} without one.
    """
    values = request.requestHeaders.getRawHeaders(b"host")
    if not values:
        return None
    host: bytes = values[0].strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        host = host[1:end] if end > 0 else host
    else:
        host = host.rsplit(b":", 1)[0] if b":" in host else host
    return host.decode("ascii", "replace")


class _NotFound(Resource):
    """
    The proxy's own 404 page, for requests no route takes.
    """

    isLeaf = True

    def render(self, request: IRequest) -> object:
        renderError(request, 404)
        return NOT_DONE_YET


class Router(Resource):
    """
    Sends each request to the resource of its most specific route: among
    the routes whose host matches (a route with a host beats one without),
    the one with the longest path prefix.

    It is the root of the proxy's resource tree; the route's resource
    continues traversal below the prefix.
    """

    def __init__(self, routes: Sequence[Route]) -> None:
        super().__init__()
        self.routes = sorted(
            routes, key=lambda r: (r.host is not None, len(r.path)), reverse=True
        )
        self._notFound = _NotFound()
        self._byHost = any(route.host is not None for route in self.routes)

    def routeFor(self, request: IRequest) -> Route | None:
        """
        The route that takes C{request}, if any; remembered on the request.
        """
        cached = getattr(request, "route", None)
        if isinstance(cached, Route):
            return cached
        path = request.uri.split(b"?", 1)[0]
        host = requestHost(request) if self._byHost else None
        for route in self.routes:
            if route.matchesPath(path) and route.matchesHost(host):
                try:
                    request.route = route  # type: ignore[attr-defined]
                except AttributeError:
                    pass
                return route
        return None

    def getChildWithDefault(self, name: bytes, request: IRequest) -> IResource:
        route = self.routeFor(request)
        if route is None:
            return self._notFound
        # Traversal took one segment already: put it back, then let the
        # prefix take its own.
        prepath, postpath = request.prepath, request.postpath
        postpath.insert(0, prepath.pop())
        for _ in range(route.prefixSegments):
            if not postpath:
                break
            prepath.append(postpath.pop(0))
        return route.resource

    def render(self, request: IRequest) -> object:
        return self._notFound.render(request)

    def bodyPolicy(self, request: IRequest, server: ServerConfig) -> tuple[int, bool]:
        """
        The body limit and buffering choice for C{request}, from its route.
        """
        route = self.routeFor(request)
        if route is None:
            return server.maxBodySize, server.requestBuffering
        return route.maxBodySize, route.requestBuffering


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


def buildRoute(
    route: RouteConfig,
    server: ServerConfig,
    pools: Mapping[str, BackendPool],
    filters: Mapping[str, FilterConfig] | None = None,
    reactor: IReactorTime | None = None,
    caches: Mapping[str, CacheConfig] | None = None,
    stores: Mapping[str, ICacheStore] | None = None,
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
    if route.cache is not None:
        # Only routes with a cache pay for it; inside the filter chain, so
        # that filters see cached responses as they see proxied ones.
        if reactor is None or caches is None or stores is None:
            raise ValueError("a route with a cache needs the caches and a reactor")
        resource = CacheResource(
            resource, stores[route.cache], reactor, caches[route.cache]
        )
    if route.filters:
        # Only routes with filters pay for the chain.
        if reactor is None or filters is None:
            raise ValueError("a route with filters needs the filters and a reactor")
        resource = buildFilterChain(resource, route, filters, reactor)
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
) -> Router:
    """
    The proxy's resource tree for C{config}, forwarding to C{pools} (one
    L{BackendPool} for each of C{config.pools}).

    @param reactor: The reactor given to filters and caches; needed when a
        route lists filters or names a cache.
    @param stores: The store of each of C{config.caches}, by name; new
        ones when not given.
    """
    if stores is None and config.caches:
        stores = buildStores(config.caches)
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
            )
            for route in config.routes
        ]
    )
