"""
Tests for L{twisted_rproxy.filters}: the hooks (synchronous, Deferred,
coroutine), answering early, body transforms, failure isolation, the error
hook, the configuration of filters, the built-in C{headers} filter, and the
discovery of the example third-party package; in memory
(L{twisted_rproxy.testing}) and over loopback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.static import Data
from zope.interface import implementer

import twisted_rproxy.plugins
from tests.fixtures import (
    REPO,
    LoopbackTestCase,
    asyncTest,
    backendServer,
    freePort,
)
from tests.loopback import RecordedRequest, Reply
from twisted_rproxy.config import (
    ConfigError,
    FilterConfig,
    parseConfig,
)
from twisted_rproxy.filters import (
    FilterResponse,
    RequestContext,
    ResponseHead,
    findFilterFactory,
)
from twisted_rproxy.interfaces import (
    IBodyTransform,
    IErrorFilter,
    IFilterFactory,
    IRequestFilter,
    IResponseFilter,
)
from twisted_rproxy.service import ProxyService
from twisted_rproxy.testing import CannedResource, FilterHarness, buildFilter

EXAMPLE = os.path.join(REPO, "examples", "apikey_filter")


@implementer(IRequestFilter)
class Hook:
    """
    A request filter whose hook is a given function.
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def filterRequest(self, request: Any, context: RequestContext) -> object:
        return self.hook(request, context)


@implementer(IResponseFilter)
class HeadHook:
    """
    A response filter whose hook is a given function.
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook

    def filterResponse(
        self, request: Any, context: RequestContext, head: ResponseHead
    ) -> object:
        return self.hook(request, context, head)


@implementer(IBodyTransform)
class Upper:
    """
    Upper-cases the body; adds a trailer at the end; or fails on C{b"!"}.
    """

    def __init__(self, trailer: bytes = b"") -> None:
        self.trailer = trailer

    def transform(self, data: bytes) -> bytes:
        if b"!" in data:
            raise ValueError("no shouting")
        return data.upper()

    def flush(self) -> bytes:
        return self.trailer


class LogCapture:
    """
    Collects the log events with a C{filter} key during a test.
    """

    def __init__(self, testCase: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.observe)
        testCase.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        if "filter" in event:
            self.events.append(event)

    def filters(self) -> list[str]:
        return [event["filter"] for event in self.events]


class RequestHookTests(SynchronousTestCase):
    """
    Request hooks change the request, answer it, or let it pass; now or
    later.
    """

    def test_syncHookChangesRequest(self) -> None:
        """
        A synchronous hook's changes to the method, target and headers reach
        the resource.
        """

        def change(request: Any, context: RequestContext) -> None:
            request.method = b"POST"
            request.uri = b"/rewritten?x=1"
            request.requestHeaders.setRawHeaders(b"x-added", [b"yes"])
            request.requestHeaders.removeHeader(b"cookie")

        harness = FilterHarness([("change", Hook(change))])
        response = harness.request(
            uri=b"/original", headers=[(b"Host", b"h"), (b"Cookie", b"c=1")]
        )
        self.assertEqual(response.code, 200)
        method, uri, headers, _ = harness.resource.requests[0]  # type: ignore[attr-defined]
        self.assertEqual((method, uri), (b"POST", b"/rewritten?x=1"))
        self.assertEqual(headers.getRawHeaders(b"x-added"), [b"yes"])
        self.assertFalse(headers.hasHeader(b"cookie"))

    def test_deferredHookWaits(self) -> None:
        """
        A hook returning a L{Deferred} holds the request until it fires;
        L{None} lets it pass.
        """
        waiting: Deferred[None] = Deferred()
        harness = FilterHarness(
            [("later", Hook(lambda request, context: waiting))],
            CannedResource(chunks=[b"body"]),
        )
        response = harness.request()
        self.assertEqual(response.raw, b"")
        self.assertEqual(harness.resource.requests, [])  # type: ignore[attr-defined]
        waiting.callback(None)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"body")

    def test_coroutineHook(self) -> None:
        """
        An C{async def} hook may await, then answer.
        """
        waiting: Deferred[bytes] = Deferred()

        async def check(request: Any, context: RequestContext) -> object:
            verdict = await waiting
            if verdict == b"no":
                return FilterResponse(403, [(b"X-Why", b"denied")], b"denied\n")
            return None

        harness = FilterHarness([("auth", Hook(check))])
        response = harness.request()
        self.assertEqual(response.raw, b"")
        waiting.callback(b"no")
        self.assertEqual(response.code, 403)
        self.assertEqual(response.header(b"x-why"), [b"denied"])
        self.assertEqual(response.body, b"denied\n")
        self.assertEqual(harness.resource.requests, [])  # type: ignore[attr-defined]

    def test_shortCircuitSkipsLaterFilters(self) -> None:
        """
        A hook that answers stops the chain: later request hooks and the
        resource never see the request; response hooks still see the
        answer.
        """
        seen: list[str] = []
        harness = FilterHarness(
            [
                (
                    "redirect",
                    Hook(lambda r, c: FilterResponse.redirect("https://elsewhere/")),
                ),
                ("later", Hook(lambda r, c: seen.append("later"))),
                (
                    "stamp",
                    HeadHook(
                        lambda r, c, head: head.headers.addRawHeader(b"x-s", b"1")
                    ),
                ),
            ]
        )
        response = harness.request()
        self.assertEqual(response.code, 302)
        self.assertEqual(response.header(b"location"), [b"https://elsewhere/"])
        self.assertEqual(response.header(b"x-s"), [b"1"])
        self.assertTrue(response.complete)
        self.assertEqual(seen, [])
        self.assertEqual(harness.resource.requests, [])  # type: ignore[attr-defined]

    def test_contextSharedAcrossHooks(self) -> None:
        """
        Hooks of one request share its context: client address, route,
        timings and free data; another request gets a fresh one.
        """
        contexts: list[RequestContext] = []

        def first(request: Any, context: RequestContext) -> None:
            context.data["user"] = "alice"

        def head(request: Any, context: RequestContext, head: ResponseHead) -> None:
            contexts.append(context)
            head.headers.setRawHeaders(
                b"x-user", [str(context.data.get("user")).encode()]
            )

        harness = FilterHarness(
            [("first", Hook(first)), ("head", HeadHook(head))], route="the-route"
        )
        harness.reactor.advance(2)
        response = harness.request(clientAddress="10.1.2.3")
        self.assertEqual(response.header(b"x-user"), [b"alice"])
        context = contexts[0]
        self.assertEqual(context.clientAddress, "10.1.2.3")
        self.assertEqual(context.route, "the-route")
        self.assertEqual(context.started, harness.reactor.seconds())
        self.assertEqual(
            set(context.timings), {"requestFiltered", "responseStarted", "finished"}
        )
        self.assertIsNone(context.tlsPeer)
        harness.request()
        self.assertIsNot(contexts[1], context)
        self.assertEqual(contexts[1].data, {"user": "alice"})

    def test_order(self) -> None:
        """
        Request hooks run in configuration order, response hooks in the
        reverse order.
        """
        calls: list[str] = []

        @implementer(IRequestFilter, IResponseFilter)
        class Both:
            def __init__(self, name: str) -> None:
                self.name = name

            def filterRequest(self, request: Any, context: Any) -> None:
                calls.append("request " + self.name)

            def filterResponse(self, request: Any, context: Any, head: Any) -> None:
                calls.append("response " + self.name)

        FilterHarness([("a", Both("a")), ("b", Both("b"))]).request()
        self.assertEqual(calls, ["request a", "request b", "response b", "response a"])


class FailureTests(SynchronousTestCase):
    """
    A failing filter answers 500 for its request, is logged with its name,
    and leaves other requests alone.
    """

    def test_raisingRequestHook(self) -> None:
        """
        A request hook that raises answers 500; the next request is fine.
        """
        log = LogCapture(self)

        def boom(request: Any, context: Any) -> None:
            if request.uri == b"/boom":
                raise ZeroDivisionError("boom")

        harness = FilterHarness([("boomer", Hook(boom))])
        response = harness.request(uri=b"/boom")
        self.assertEqual(response.code, 500)
        self.assertNotIn(b"ZeroDivisionError", response.raw)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(log.filters(), ["boomer"])
        self.assertEqual(harness.request(uri=b"/fine").code, 200)

    def test_failedDeferred(self) -> None:
        """
        A hook whose L{Deferred} fails answers 500, logged with its name.
        """
        log = LogCapture(self)
        waiting: Deferred[None] = Deferred()
        harness = FilterHarness([("later", Hook(lambda r, c: waiting))])
        response = harness.request()
        waiting.errback(KeyError("gone"))
        self.assertEqual(response.code, 500)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual(log.filters(), ["later"])

    def test_wrongResult(self) -> None:
        """
        A hook returning something else than L{None} or a
        L{FilterResponse} answers 500.
        """
        harness = FilterHarness([("odd", Hook(lambda r, c: succeed("yes")))])
        self.assertEqual(harness.request().code, 500)
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_raisingResponseHook(self) -> None:
        """
        A response hook that raises replaces a proxied response with a 500
        page, none of the backend's headers or body leaking.
        """
        log = LogCapture(self)

        def boom(request: Any, context: Any, head: Any) -> None:
            raise RuntimeError("bad head")

        harness = FilterHarness(
            [("head", HeadHook(boom))],
            CannedResource(headers=[(b"X-Secret", b"1")], chunks=[b"secret"]),
        )
        response = harness.request()
        self.assertEqual(response.code, 500)
        self.assertTrue(response.complete)
        self.assertNotIn(b"secret", response.raw.lower())
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(log.filters(), ["head"])

    def test_raisingTransformClosesConnection(self) -> None:
        """
        A body transform that fails after the head left closes the
        connection: the response is not finished as if whole.
        """
        log = LogCapture(self)
        harness = FilterHarness(
            [("upper", HeadHook(lambda r, c, h: Upper()))],
            CannedResource(chunks=[b"a", b"b!", b"c"], interval=1.0),
        )
        harness.resource.clock = harness.reactor  # type: ignore[attr-defined]
        response = harness.request()
        self.assertEqual(response.body, b"A")
        harness.reactor.advance(1)
        self.assertTrue(response.closed)
        self.assertFalse(response.complete)
        harness.reactor.advance(5)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(log.filters(), ["upper"])


class ResponseHookTests(SynchronousTestCase):
    """
    Response hooks see and change status and every header, whatever wrote
    the response, and may transform the body as it streams.
    """

    def test_proxiedHeadersVisibleAndChangeable(self) -> None:
        """
        The headers a backend passed (which the proxy otherwise writes
        itself) are seen, removed and replaced; the status changes.
        """
        seen: list[list[bytes] | None] = []

        def head(request: Any, context: Any, head: ResponseHead) -> None:
            seen.append(head.headers.getRawHeaders(b"x-backend"))
            head.headers.removeHeader(b"x-backend")
            head.headers.setRawHeaders(b"x-filter", [b"1"])
            head.code = 203

        harness = FilterHarness(
            [("head", HeadHook(head))],
            CannedResource(
                headers=[(b"X-Backend", b"b1"), (b"Content-Length", b"2")],
                chunks=[b"ok"],
            ),
        )
        response = harness.request()
        self.assertEqual(seen, [[b"b1"]])
        self.assertEqual(response.code, 203)
        self.assertIn(b"203 Non-Authoritative Information", response.raw)
        self.assertEqual(response.header(b"x-backend"), [])
        self.assertEqual(response.header(b"x-filter"), [b"1"])
        self.assertEqual(response.header(b"content-type"), [])
        self.assertEqual(response.body, b"ok")

    def test_ownResponses(self) -> None:
        """
        Responses written by an ordinary resource (not proxied) go through
        the hooks too.
        """
        root = Resource()
        root.putChild(b"page", Data(b"hello", "text/plain"))
        harness = FilterHarness(
            [("stamp", HeadHook(lambda r, c, h: h.headers.addRawHeader(b"x-s", b"1")))],
            root,
        )
        response = harness.request(uri=b"/page")
        self.assertEqual(response.body, b"hello")
        self.assertEqual(response.header(b"x-s"), [b"1"])
        missing = harness.request(uri=b"/nothing")
        self.assertEqual(missing.code, 404)
        self.assertEqual(missing.header(b"x-s"), [b"1"])

    def test_bodyTransformStreams(self) -> None:
        """
        Each piece is transformed and sent as it comes, the length is
        dropped (chunked), and the flush ends the body.
        """
        harness = FilterHarness(
            [("upper", HeadHook(lambda r, c, h: Upper(b"<end>")))],
            CannedResource(
                headers=[(b"Content-Length", b"6")],
                chunks=[b"ab", b"cd", b"ef"],
                interval=1.0,
            ),
        )
        harness.resource.clock = harness.reactor  # type: ignore[attr-defined]
        response = harness.request()
        self.assertEqual(response.body, b"AB")
        self.assertFalse(response.complete)
        self.assertEqual(response.header(b"content-length"), [])
        harness.reactor.advance(1)
        self.assertEqual(response.body, b"ABCD")
        harness.reactor.advance(1)
        self.assertFalse(response.complete)
        harness.reactor.advance(1)
        self.assertTrue(response.complete)
        self.assertEqual(response.body, b"ABCDEF<end>")

    def test_headFramedLikeGet(self) -> None:
        """
        A HEAD response whose GET would be transformed says what the GET
        would: no backend C{Content-Length} (it is not the transformed
        body's), C{Transfer-Encoding: chunked} like the GET; no body.
        """
        responses = {}
        for method in (b"GET", b"HEAD"):
            harness = FilterHarness(
                [("upper", HeadHook(lambda r, c, h: Upper(b"<end>")))],
                CannedResource(headers=[(b"Content-Length", b"2")], chunks=[b"ok"]),
            )
            responses[method] = harness.request(method=method)
        get, head = responses[b"GET"], responses[b"HEAD"]
        self.assertEqual(get.body, b"OK<end>")
        for name in (b"content-length", b"transfer-encoding"):
            self.assertEqual(head.header(name), get.header(name), name)
        self.assertEqual(head.header(b"content-length"), [])
        self.assertEqual(head.header(b"transfer-encoding"), [b"chunked"])
        self.assertTrue(head.raw.endswith(b"\r\n\r\n"))
        self.assertNotIn(b"<end>", head.raw)

    def test_headWithoutTransformKeepsLength(self) -> None:
        """
        A HEAD response no filter transforms keeps the backend's length.
        """
        harness = FilterHarness(
            [("none", HeadHook(lambda r, c, h: None))],
            CannedResource(headers=[(b"Content-Length", b"2")], chunks=[b""]),
        )
        response = harness.request(method=b"HEAD")
        self.assertEqual(response.header(b"content-length"), [b"2"])
        self.assertEqual(response.header(b"transfer-encoding"), [])


class HeadersFilterTests(SynchronousTestCase):
    """
    The built-in C{headers} filter.
    """

    def test_requestAndResponseRules(self) -> None:
        """
        Request and response headers are removed, renamed, set and added,
        with templates from the request as the client sent it.
        """
        built = buildFilter(
            "headers",
            {
                "request": {
                    "remove": ["Cookie"],
                    "rename": {"X-Old": "X-New"},
                    "set": {"X-Client": "{client}", "Host": "internal"},
                    "add": {"X-Trace": "{method} {path} {header:x-id}"},
                },
                "response": {
                    "remove": ["X-Backend"],
                    "set": {"X-Host": "{host}{{}}", "X-Query": "{query}"},
                },
            },
        )
        harness = FilterHarness(
            [("h", built)],
            CannedResource(headers=[(b"X-Backend", b"1")], chunks=[b"x"]),
        )
        response = harness.request(
            uri=b"/a/b?q=1",
            headers=[
                (b"Host", b"example.com"),
                (b"Cookie", b"c"),
                (b"X-Old", b"o"),
                (b"X-Id", b"42"),
            ],
            clientAddress="192.0.2.7",
        )
        _, _, seen, _ = harness.resource.requests[0]  # type: ignore[attr-defined]
        self.assertFalse(seen.hasHeader(b"cookie"))
        self.assertFalse(seen.hasHeader(b"x-old"))
        self.assertEqual(seen.getRawHeaders(b"x-new"), [b"o"])
        self.assertEqual(seen.getRawHeaders(b"x-client"), [b"192.0.2.7"])
        self.assertEqual(seen.getRawHeaders(b"host"), [b"internal"])
        self.assertEqual(seen.getRawHeaders(b"x-trace"), [b"GET /a/b 42"])
        self.assertEqual(response.header(b"x-backend"), [])
        self.assertEqual(response.header(b"x-host"), [b"example.com{}"])
        self.assertEqual(response.header(b"x-query"), [b"q=1"])

    def test_badOptions(self) -> None:
        """
        Mistakes in the options name the option at fault.
        """
        factory = findFilterFactory("headers")
        from twisted_rproxy.filters import FilterOptionError

        for options, option in (
            ({}, ""),
            ({"requests": {}}, "requests"),
            ({"request": {"sett": {}}}, "request.sett"),
            ({"request": {"set": {"X": "{nope}"}}}, "request.set.X"),
            ({"request": {"set": {"X": "{"}}}, "request.set.X"),
            ({"response": {"remove": ["bad name"]}}, "response.remove[0]"),
            ({"response": {"add": {"X": 3}}}, "response.add.X"),
        ):
            error = self.assertRaises(FilterOptionError, factory.buildFilter, options)
            self.assertEqual(error.option, option, options)


def configData(**filters: Any) -> dict[str, Any]:
    return {
        "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
        "filters": filters,
        "routes": [{"pool": "app", "filters": list(filters)}],
    }


class FilterConfigTests(SynchronousTestCase):
    """
    C{[filters.NAME]} and a route's C{filters}.
    """

    def parse(self, data: dict[str, Any]) -> Any:
        return parseConfig(data, "test.toml", "/")

    def assertError(self, data: dict[str, Any], key: str, message: str) -> None:
        error = self.assertRaises(ConfigError, self.parse, data)
        self.assertEqual(error.key, key)
        self.assertIn(message, error.message)

    def test_parsed(self) -> None:
        """
        A filter keeps its plugin and options; a route its filter names.
        """
        config = self.parse(
            configData(tag={"plugin": "headers", "request": {"remove": ["a"]}})
        )
        self.assertEqual(
            config.filters["tag"],
            FilterConfig("tag", "headers", {"request": {"remove": ["a"]}}),
        )
        self.assertEqual(config.routes[0].filters, ("tag",))

    def test_unknownPlugin(self) -> None:
        """
        An unknown plugin is refused, listing the installed ones.
        """
        self.assertError(
            configData(tag={"plugin": "nope"}),
            "filters.tag.plugin",
            "no filter plugin named 'nope' (installed: ",
        )
        self.assertError(configData(tag={}), "filters.tag.plugin", "is required")

    def test_optionErrorNamesOption(self) -> None:
        """
        The plugin's complaint names C{filters.NAME.OPTION}.
        """
        self.assertError(
            configData(tag={"plugin": "headers", "request": {"set": {"X": "{x}"}}}),
            "filters.tag.request.set.X",
            "unknown field {x}",
        )

    def test_routeFilters(self) -> None:
        """
        A route may only name defined filters, each once.
        """
        data = configData(tag={"plugin": "headers", "request": {"remove": ["a"]}})
        data["routes"][0]["filters"] = ["tag", "other"]
        self.assertError(
            data, "routes[0].filters[1]", "no filter named 'other' (defined: tag)"
        )
        data["routes"][0]["filters"] = ["tag", "tag"]
        self.assertError(data, "routes[0].filters[1]", "listed twice")
        data["routes"][0]["filters"] = "tag"
        self.assertError(data, "routes[0].filters", "expected a list of strings")


def useExamplePackage(testCase: SynchronousTestCase) -> None:
    """
    Make the example filter package importable and its plugins findable,
    as C{pip install examples/apikey_filter} does, for this test only.
    """
    pluginDirectory = os.path.join(EXAMPLE, "twisted_rproxy", "plugins")
    path: list[str] = twisted_rproxy.plugins.__path__  # type: ignore[assignment]
    if EXAMPLE not in sys.path:
        sys.path.insert(0, EXAMPLE)
        testCase.addCleanup(sys.path.remove, EXAMPLE)
    if pluginDirectory not in path:
        path.append(pluginDirectory)
        testCase.addCleanup(path.remove, pluginDirectory)


class DiscoveryTests(SynchronousTestCase):
    """
    Filter plugins are found with C{getPlugins(IFilterFactory,
    twisted_rproxy.plugins)}, built-in and third-party alike.
    """

    def test_builtInFound(self) -> None:
        """
        The built-in C{headers} filter is a plugin like any other.
        """
        names = [f.name for f in getPlugins(IFilterFactory, twisted_rproxy.plugins)]
        self.assertIn("headers", names)

    def test_examplePackageFound(self) -> None:
        """
        The example package's C{apikey} and C{stamp} plugins are found once
        its directory is on the path, and build filters.
        """
        useExamplePackage(self)
        names = [f.name for f in getPlugins(IFilterFactory, twisted_rproxy.plugins)]
        self.assertIn("apikey", names)
        self.assertIn("stamp", names)
        built = findFilterFactory("apikey").buildFilter({"keys": ["k"]})
        self.assertTrue(IRequestFilter.providedBy(built))


class LoopbackFilterTests(LoopbackTestCase):
    """
    Filters configured on routes of a running proxy, with real backends and
    clients.
    """

    async def startFiltered(
        self, backendPort: int, filters: dict[str, Any], routeFilters: list[str]
    ) -> int:
        data = {
            "server": {"listen": ["tcp:0:interface=127.0.0.1"]},
            "pools": {"app": {"servers": [backendServer(backendPort).url]}},
            "filters": filters,
            "routes": [
                {"path": "/plain/", "pool": "app"},
                {"path": "/", "pool": "app", "filters": routeFilters},
            ],
        }
        config = parseConfig(data, "test.toml", "/")
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port: int = (await service.whenListening())[0].getHost().port
        return port

    @asyncTest
    async def test_examplePackageEndToEnd(self) -> None:
        """
        A configuration naming the example package's filters checks API
        keys and stamps responses; a route without filters is untouched.
        """
        useExamplePackage(self)
        backend = await self.startBackend()
        port = await self.startFiltered(
            backend.portNumber,
            {
                "keys": {"plugin": "apikey", "keys": ["s3cret"]},
                "stamp": {"plugin": "stamp", "header": "X-Edge", "value": "e1"},
            },
            ["stamp", "keys"],
        )
        client = self.httpClient()
        refused = await client.get(f"http://127.0.0.1:{port}/data")
        self.assertEqual(refused.code, 401)
        self.assertEqual(refused.headers.getRawHeaders(b"x-edge"), [b"e1"])
        await refused.content()
        self.assertEqual(backend.requests, [])
        allowed = await client.get(
            f"http://127.0.0.1:{port}/data", headers={"X-API-Key": "s3cret"}
        )
        self.assertEqual(allowed.code, 200)
        self.assertEqual(await allowed.content(), b"/data")
        self.assertEqual(allowed.headers.getRawHeaders(b"x-edge"), [b"e1"])
        self.assertEqual(backend.requests[0].header(b"x-api-key"), [])
        plain = await client.get(f"http://127.0.0.1:{port}/plain/x")
        self.assertEqual(await plain.content(), b"/plain/x")
        self.assertIsNone(plain.headers.getRawHeaders(b"x-edge"))

    @asyncTest
    async def test_transformStreamsBeforeBackendFinishes(self) -> None:
        """
        A transformed body's first piece reaches the client while the
        backend is still sending the rest.
        """
        pieces = [b"piece%02d;" % (n,) for n in range(30)]

        def handler(request: RecordedRequest) -> Reply:
            return Reply(chunks=list(pieces))

        backend = await self.startBackend(handler)
        upper = HeadHook(lambda r, c, h: Upper(b"<end>"))
        chain = FilterHarnessFactory(upper)
        self.patch(twisted_rproxy.filters, "findFilterFactory", chain.find)
        port = await self.startFiltered(
            backend.portNumber, {"up": {"plugin": "upper"}}, ["up"]
        )
        client = await self.rawClient(port)
        client.write(b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        first = await client.waitFor(lambda data: b"PIECE00;" in data, reactor)
        # The backend writes a piece every 10 ms: 30 take 300 ms.
        self.assertTrue(backend.connections[0].busy)
        self.assertNotIn(b"PIECE29;", first)
        whole = await client.waitFor(lambda data: data.endswith(b"0\r\n\r\n"), reactor)
        self.assertIn(b"PIECE29;", whole)
        self.assertIn(b"<end>", whole)
        self.assertNotIn(b"piece", whole)

    @asyncTest
    async def test_failureIsolation(self) -> None:
        """
        A filter failing for one request answers it 500 and logs its name;
        concurrent requests through the same filter are answered normally.
        """
        log = LogCapture(self)

        def boom(request: Any, context: Any) -> None:
            if request.uri == b"/boom":
                raise ZeroDivisionError("boom")

        chain = FilterHarnessFactory(Hook(boom))
        self.patch(twisted_rproxy.filters, "findFilterFactory", chain.find)
        backend = await self.startBackend()
        port = await self.startFiltered(
            backend.portNumber, {"fragile": {"plugin": "upper"}}, ["fragile"]
        )
        client = self.httpClient(maxPersistent=4)
        responses = [
            client.get(f"http://127.0.0.1:{port}/{path}")
            for path in ("ok1", "boom", "ok2")
        ]
        codes = []
        for waiting in responses:
            response = await waiting
            await response.content()
            codes.append(response.code)
        self.assertEqual(codes, [200, 500, 200])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(log.filters(), ["fragile"])

    @asyncTest
    async def test_errorHook(self) -> None:
        """
        An error hook may answer a backend failure in place of the proxy's
        page, or leave it to the proxy.
        """
        errors: list[int] = []

        @implementer(IErrorFilter)
        class Maintenance:
            def filterError(self, request: Any, context: Any, error: Any) -> object:
                errors.append(error.status)
                if request.uri == b"/own":
                    return None
                return succeed(FilterResponse(503, [(b"X-M", b"1")], b"maintenance"))

        chain = FilterHarnessFactory(Maintenance())
        self.patch(twisted_rproxy.filters, "findFilterFactory", chain.find)
        port = await self.startFiltered(freePort(), {"m": {"plugin": "upper"}}, ["m"])
        client = self.httpClient()
        answered = await client.get(f"http://127.0.0.1:{port}/x")
        self.assertEqual(answered.code, 503)
        self.assertEqual(await answered.content(), b"maintenance")
        own = await client.get(f"http://127.0.0.1:{port}/own")
        self.assertEqual(own.code, 502)
        await own.content()
        self.assertEqual(errors, [502, 502])


@implementer(IFilterFactory)
class FilterHarnessFactory:
    """
    A stand-in for plugin lookup: every plugin name builds C{built}.
    """

    name = "upper"

    def __init__(self, built: object) -> None:
        self.built = built

    def buildFilter(self, options: Any) -> object:
        return self.built

    def find(self, name: str) -> FilterHarnessFactory:
        return self
