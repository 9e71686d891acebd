"""
Tests for L{twisted_rproxy.tree}: the L{Router} on its own, with
L{DummyRequest}s and plain resources as the routes' targets, and the
routes L{buildRoute} makes from a configuration, on a memory reactor.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource, getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.memory import Proxy, backend, responsesOf
from twisted_rproxy.config import PoolConfig, RouteConfig, ServerConfig
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.proxy import ProxyResource
from twisted_rproxy.tree import Route, Router, buildRoute, requestHost


def request(uri: bytes, host: bytes | None = None) -> DummyRequest:
    """
    A request for C{uri} (path and query) with a C{Host} header, as the
    site would have split it for traversal.
    """
    path = uri.split(b"?", 1)[0]
    made = DummyRequest(path.split(b"/")[1:])
    made.uri = uri
    made.path = path
    if host is not None:
        made.requestHeaders.setRawHeaders(b"host", [host])
    return made


class _Named(Resource):
    """
    A leaf that renders its name, so that a test can tell which route a
    request reached.
    """

    isLeaf = True

    def __init__(self, name: bytes) -> None:
        super().__init__()
        self.name = name

    def render(self, request: object) -> bytes:
        return self.name


def route(path: bytes, host: str | None = None, name: str = "") -> Route:
    """
    A route to a L{_Named} leaf called C{name} (its path by default).
    """
    return Route(
        path=path,
        host=host,
        resource=_Named((name or path.decode()).encode()),
        maxBodySize=1000,
        requestBuffering=True,
    )


class RouteMatchingTests(SynchronousTestCase):
    """
    L{Route.matchesPath} and L{Route.matchesHost}.
    """

    def test_pathPrefixAtSegmentBoundary(self) -> None:
        """
        A prefix without a trailing slash matches itself and what is below
        it, not a longer segment that starts the same.
        """
        api = route(b"/api")
        self.assertTrue(api.matchesPath(b"/api"))
        self.assertTrue(api.matchesPath(b"/api/"))
        self.assertTrue(api.matchesPath(b"/api/users"))
        self.assertFalse(api.matchesPath(b"/apix"))
        self.assertFalse(api.matchesPath(b"/ap"))
        self.assertFalse(api.matchesPath(b"/other/api"))

    def test_pathPrefixWithTrailingSlash(self) -> None:
        """
        A prefix ending with a slash matches only below it: not the path
        without the slash.
        """
        api = route(b"/api/")
        self.assertTrue(api.matchesPath(b"/api/"))
        self.assertTrue(api.matchesPath(b"/api/x"))
        self.assertFalse(api.matchesPath(b"/api"))
        self.assertTrue(route(b"/").matchesPath(b"/anything"))

    def test_exactHost(self) -> None:
        """
        A route with a host takes that host only, and no request without
        one; a route without a host takes any.
        """
        exact = route(b"/", "example.com")
        self.assertTrue(exact.matchesHost("example.com"))
        self.assertFalse(exact.matchesHost("www.example.com"))
        self.assertFalse(exact.matchesHost("example.com.evil"))
        self.assertFalse(exact.matchesHost(None))
        self.assertTrue(route(b"/").matchesHost(None))
        self.assertTrue(route(b"/").matchesHost("anything.test"))

    def test_wildcardHost(self) -> None:
        """
        C{*.example.com} takes any subdomain, at any depth, but not the
        bare domain nor a host that merely ends with the same letters.
        """
        wildcard = route(b"/", "*.example.com")
        self.assertTrue(wildcard.matchesHost("a.example.com"))
        self.assertTrue(wildcard.matchesHost("a.b.example.com"))
        self.assertFalse(wildcard.matchesHost("example.com"))
        self.assertFalse(wildcard.matchesHost("badexample.com"))
        self.assertFalse(wildcard.matchesHost(".example.com"))
        self.assertFalse(wildcard.matchesHost(None))

    def test_label(self) -> None:
        """
        A route is labelled by its path, prefixed by its host if it has one,
        and counts the segments of its prefix.
        """
        self.assertEqual(route(b"/api/").label, "/api/")
        self.assertEqual(route(b"/api/", "a.test").label, "a.test/api/")
        self.assertEqual(route(b"/").prefixSegments, 0)
        self.assertEqual(route(b"/a/b/").prefixSegments, 2)


class RequestHostTests(SynchronousTestCase):
    """
    L{requestHost} reads the host a request is for.
    """

    def test_hostLowercasedWithoutPort(self) -> None:
        """
        The C{Host} header is lowercased and its port dropped; an IPv6
        literal loses its brackets and port; no header is L{None}.
        """
        self.assertEqual(requestHost(request(b"/", b"Example.COM:8080")), "example.com")
        self.assertEqual(requestHost(request(b"/", b"example.com")), "example.com")
        self.assertEqual(requestHost(request(b"/", b"[::1]:8443")), "::1")
        self.assertIsNone(requestHost(request(b"/")))


class RouterTests(SynchronousTestCase):
    """
    L{Router} picks the most specific route and hands traversal on below
    its prefix.
    """

    def serve(self, router: Router, uri: bytes, host: bytes | None = None) -> bytes:
        """
        Traverse C{router} for a request and render what it reaches.
        """
        made = request(uri, host)
        leaf = getChildForRequest(router, made)
        body: bytes = leaf.render(made)
        return body

    def test_longestPrefixWins(self) -> None:
        """
        Of the routes whose prefix matches, the longest wins, whatever the
        order they are given in.
        """
        routes = [route(b"/", name="root"), route(b"/api/v2", name="v2")]
        routes.insert(1, route(b"/api", name="api"))
        for ordered in (routes, list(reversed(routes))):
            router = Router(ordered)
            self.assertEqual(self.serve(router, b"/api/v2/x"), b"v2")
            self.assertEqual(self.serve(router, b"/api/v3"), b"api")
            self.assertEqual(self.serve(router, b"/api"), b"api")
            self.assertEqual(self.serve(router, b"/apix"), b"root")
            self.assertEqual(self.serve(router, b"/"), b"root")

    def test_hostRouteBeatsLongerHostlessPrefix(self) -> None:
        """
        A route for the request's host wins over a host-less route, even
        one with a longer prefix; other hosts go to the host-less routes.
        """
        router = Router(
            [
                route(b"/api", name="api"),
                route(b"/", "admin.example.com", name="admin"),
                route(b"/", name="root"),
            ]
        )
        self.assertEqual(
            self.serve(router, b"/api/x", b"ADMIN.example.com:81"), b"admin"
        )
        self.assertEqual(self.serve(router, b"/api/x", b"www.example.com"), b"api")
        self.assertEqual(self.serve(router, b"/x", b"www.example.com"), b"root")

    def test_exactHostBeatsWildcardOfSameLength(self) -> None:
        """
        With an exact and a wildcard route on the same path, each host goes
        to the route it matches.
        """
        router = Router(
            [
                route(b"/", "*.example.com", name="wild"),
                route(b"/", "example.com", name="bare"),
            ]
        )
        self.assertEqual(self.serve(router, b"/", b"example.com"), b"bare")
        self.assertEqual(self.serve(router, b"/", b"a.example.com"), b"wild")

    def test_noRouteIsNotFound(self) -> None:
        """
        A request no route takes gets the proxy's 404 page, from traversal
        and from rendering the router itself.
        """
        router = Router([route(b"/", "example.com")])
        made = request(b"/x", b"other.test")
        self.assertIsNone(router.routeFor(made))
        leaf = getChildForRequest(router, made)
        leaf.render(made)
        self.assertEqual(made.responseCode, 404)
        self.assertIn(b"404", b"".join(made.written))
        empty = request(b"/", b"other.test")
        Router([route(b"/a")]).render(empty)
        self.assertEqual(empty.responseCode, 404)

    def test_prefixSegmentsMoveToPrepath(self) -> None:
        """
        The route's resource gets the request with the prefix's segments in
        C{prepath} and the rest in C{postpath}.
        """
        seen: list[tuple[list[bytes], list[bytes]]] = []

        class Recorder(Resource):
            isLeaf = True

            def render(self, made: DummyRequest) -> bytes:
                seen.append((list(made.prepath), list(made.postpath)))
                return b""

        router = Router(
            [
                Route(
                    path=b"/a/b/",
                    host=None,
                    resource=Recorder(),
                    maxBodySize=1,
                    requestBuffering=True,
                ),
                route(b"/"),
            ]
        )
        self.serve(router, b"/a/b/c/d?q=1")
        self.assertEqual(seen, [([b"a", b"b"], [b"c", b"d"])])

    def test_routeRemembered(self) -> None:
        """
        The route found is kept on the request, and asked again, answers
        the same without looking at the path again.
        """
        api = route(b"/api")
        router = Router([route(b"/"), api])
        made = request(b"/api/x")
        self.assertIs(router.routeFor(made), api)
        self.assertIs(made.route, api)
        made.uri = b"/elsewhere"
        self.assertIs(router.routeFor(made), api)

    def test_hostIgnoredWithoutHostRoutes(self) -> None:
        """
        Without any host route, requests route by path alone, with or
        without a C{Host}.
        """
        router = Router([route(b"/", name="root"), route(b"/a", name="a")])
        self.assertEqual(self.serve(router, b"/a/1"), b"a")
        self.assertEqual(self.serve(router, b"/a/1", b"x.test"), b"a")


class BodyPolicyTests(SynchronousTestCase):
    """
    L{Router.bodyPolicy}: each route's body limit and buffering, or the
    server's for requests no route takes.
    """

    def test_perRouteLimits(self) -> None:
        """
        A request gets its route's limit and buffering choice; one that no
        route takes gets the server's.
        """
        server = ServerConfig(maxBodySize=5000, requestBuffering=True)
        small = Route(
            path=b"/upload",
            host=None,
            resource=Resource(),
            maxBodySize=10,
            requestBuffering=False,
        )
        router = Router([small, route(b"/", "only.test")])
        self.assertEqual(router.bodyPolicy(request(b"/upload/x"), server), (10, False))
        self.assertEqual(
            router.bodyPolicy(request(b"/other", b"only.test"), server), (1000, True)
        )
        self.assertEqual(
            router.bodyPolicy(request(b"/other", b"else.test"), server), (5000, True)
        )

    def test_routeLimitThroughTheProxy(self) -> None:
        """
        Through the proxy, a body over its route's limit is refused with
        413 before any backend is asked, while the same body on a route
        without a limit of its own is forwarded.
        """
        proxy = Proxy(
            routes=(
                RouteConfig(path="/small", pool="app", maxBodySize=4),
                RouteConfig(path="/", pool="app"),
            ),
            maxBodySize=1000,
        )
        post = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
        _, transport = proxy.exchange(post % (b"/small/up",))
        self.assertEqual([r.status for r in responsesOf(transport)], [413])
        self.assertEqual(proxy.reactor.tcpClients, [])
        proxy.exchange(post % (b"/big/up",))
        _, backendTransport = proxy.acceptBackend()
        self.assertIn(b"\r\n\r\n0123456789", backendTransport.value())


class BuildRouteTests(SynchronousTestCase):
    """
    L{buildRoute} makes a servable route from a L{RouteConfig}.
    """

    def setUp(self) -> None:
        self.pool = BackendPool(
            MemoryReactorClock(), PoolConfig(name="app", servers=(backend(8001),))
        )

    def test_defaultsFromServer(self) -> None:
        """
        A route without a body limit or buffering choice of its own takes
        the server's; one with them keeps its own.
        """
        server = ServerConfig(maxBodySize=123, requestBuffering=False)
        plain = buildRoute(
            RouteConfig(path="/", pool="app"), server, {"app": self.pool}
        )
        self.assertEqual((plain.maxBodySize, plain.requestBuffering), (123, False))
        own = buildRoute(
            RouteConfig(
                path="/a",
                pool="app",
                maxBodySize=7,
                requestBuffering=True,
                host="h.test",
            ),
            server,
            {"app": self.pool},
        )
        self.assertEqual((own.maxBodySize, own.requestBuffering), (7, True))
        self.assertEqual((own.path, own.host, own.pool), (b"/a", "h.test", "app"))
        self.assertIsInstance(own.resource, ProxyResource)

    def test_stripPrefix(self) -> None:
        """
        With C{stripPrefix} the backend gets the target below the prefix,
        query included; without it, the whole target.
        """
        proxy = Proxy(
            routes=(
                RouteConfig(path="/api", pool="app", stripPrefix=True),
                RouteConfig(path="/", pool="app"),
            )
        )
        proxy.exchange(b"GET /api/users?page=2 HTTP/1.1\r\nHost: x\r\n\r\n")
        _, stripped = proxy.acceptBackend()
        self.assertTrue(stripped.value().startswith(b"GET /users?page=2 HTTP/1.1\r\n"))
        proxy.exchange(b"GET /apiary?x HTTP/1.1\r\nHost: x\r\n\r\n")
        _, whole = proxy.acceptBackend()
        self.assertTrue(whole.value().startswith(b"GET /apiary?x HTTP/1.1\r\n"))
