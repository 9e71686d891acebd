"""
The L{Router}: the resource at the root of the proxy's tree, which sends
each request, by host and path prefix, to its L{Route}'s resource, and
says how its body is taken (the route's size limit and buffering).
"""

from __future__ import annotations

from collections.abc import Sequence

from attrs import field, frozen
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy.config import ServerConfig
from twisted_rproxy.pages import renderError

__all__ = ["Route", "Router", "requestHost"]


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
