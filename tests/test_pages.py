"""
Tests for L{twisted_rproxy.pages}: the reason phrases and pages of every
status the proxy writes itself.
"""

from __future__ import annotations

import os
import re

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer
from tests.loopback import finalCount, parseResponses
from twisted_rproxy.config import (
    Config,
    FilterConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.hardening import refusal
from twisted_rproxy.pages import errorBody, reasonPhrase, renderError
from twisted_rproxy.server import ProxyRequest
from twisted_rproxy.service import ProxyService

_PACKAGE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "twisted_rproxy"
)

#: The IANA HTTP status code registry's phrases (RFC 9110 section 15 and
#: the RFCs the registry names), written out here apart from the code's own
#: table; and nginx's 499.
_REGISTERED = {
    100: b"Continue",
    101: b"Switching Protocols",
    103: b"Early Hints",
    200: b"OK",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    406: b"Not Acceptable",
    408: b"Request Timeout",
    410: b"Gone",
    411: b"Length Required",
    412: b"Precondition Failed",
    413: b"Content Too Large",
    414: b"URI Too Long",
    416: b"Range Not Satisfiable",
    417: b"Expectation Failed",
    421: b"Misdirected Request",
    425: b"Too Early",
    426: b"Upgrade Required",
    428: b"Precondition Required",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    451: b"Unavailable For Legal Reasons",
    499: b"Client Closed Request",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
    511: b"Network Authentication Required",
}

#: Where the code writes a status of its own: a literal status given to
#: these calls, or set as a refusal or a status.
_STATUS_SITES = [
    re.compile(p)
    for p in (
        r"renderError\([^,()]+,\s*(\d{3})\b",
        r"_renderPage\([^,()]+,\s*(\d{3})\b",
        r"setStatus\([^,()]+,\s*(\d{3})\b",
        r"setResponseCode\(\s*(\d{3})\b",
        r"FilterResponse(?:\.error)?\(\s*(\d{3})\b",
        r"errorBody\(\s*(\d{3})\b",
        r"refusal\(\s*(\d{3})\b",
        r"reasonPhrase\(\s*(\d{3})\b",
        r"\breturn\s*\(?\s*(\d{3})\b",
        r"\b(?:status|code|refusal|_refusal|self\._refusal)\s*=\s*(\d{3})\b",
        r"\bstatus,\s*reason\s*=\s*(\d{3})\b",
        r"setResponseCode\(\s*(\d{3}) if .* else (\d{3})\b",
        r"\b(?:status|code)\s*==\s*(\d{3})\b",
        r"\b(\d{3}):\s*b\"[A-Z][^\"]*\.\",",
    )
]

#: Statuses the proxy is known to write itself (its pages, refusals and
#: filters); the scan must find at least these, or it is broken.
_KNOWN = {400, 403, 404, 405, 408, 412, 413, 414, 416, 429, 431, 500, 502, 503, 504}


def statusesWritten() -> set[int]:
    """
    Every status the package's source writes itself, as found at
    L{_STATUS_SITES}.
    """
    found: set[int] = set()
    for directory, _, files in os.walk(_PACKAGE):
        for name in files:
            if not name.endswith(".py") or name == "demo.py":
                continue
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                source = f.read()
            for pattern in _STATUS_SITES:
                for match in pattern.finditer(source):
                    found.update(int(g) for g in match.groups() if g is not None)
    return {status for status in found if 100 <= status <= 599}


class ReasonPhraseTests(SynchronousTestCase):
    """
    Every status the proxy writes itself goes out with its registered
    reason phrase, on the status line and in the page's title.
    """

    def test_scanFindsStatuses(self) -> None:
        """
        The scan of the source finds the statuses known to be written.
        """
        found = statusesWritten()
        self.assertEqual(_KNOWN - found, set())

    def test_everyStatusWrittenHasItsPhrase(self) -> None:
        """
        Each status the code writes has its registered phrase (and the
        registry is written out here for each of them).
        """
        found = statusesWritten()
        self.assertEqual(
            found - set(_REGISTERED), set(), "add the new statuses to _REGISTERED"
        )
        for status in sorted(found | {421, 425, 451, 499}):
            self.assertEqual(reasonPhrase(status), _REGISTERED[status], status)

    def test_errorPage(self) -> None:
        """
        The page of each error status the code writes is titled with its
        status and phrase.
        """
        for status in sorted(s for s in statusesWritten() if s >= 400):
            title = b"<title>%d %s</title>" % (status, _REGISTERED[status])
            self.assertIn(title, errorBody(status))
            self.assertNotIn(b"Unknown Status", errorBody(status))

    def test_statusLines(self) -> None:
        """
        The status lines of L{renderError} and of the channel's
        L{refusal} carry the phrase, never C{"Unknown Status"}.
        """
        for status in sorted(s for s in statusesWritten() if s >= 400):
            channel = DummyChannel()
            request = Request(channel)
            request.method = b"GET"
            request.clientproto = b"HTTP/1.1"
            renderError(request, status)
            written = channel.transport.written.getvalue()
            line = b"HTTP/1.1 %d %s\r\n" % (status, _REGISTERED[status])
            self.assertTrue(written.startswith(line), written[:80])
            self.assertTrue(refusal(status).startswith(line))

    def test_unregistered(self) -> None:
        """
        A status with no registered phrase gets its class's name.
        """
        self.assertEqual(reasonPhrase(599), b"Server Error")
        self.assertEqual(reasonPhrase(460), b"Client Error")
        self.assertEqual(reasonPhrase(299), b"Successful")


class ProxyRequestPhraseTests(SynchronousTestCase):
    """
    A filter that sets a status on the proxy's request directly gets the
    registered phrase too.
    """

    def test_setResponseCodeDefaultsToRegisteredPhrase(self) -> None:
        """
        C{ProxyRequest.setResponseCode(429)} says C{Too Many Requests}, not
        twisted.web's C{Unknown Status}; a phrase given is kept.
        """
        request = ProxyRequest(DummyChannel(), False)
        for code in (429, 431, 451, 421, 499):
            request.setResponseCode(code)
            self.assertEqual(request.code_message, _REGISTERED[code])
        request.setResponseCode(429, b"Slow Down")
        self.assertEqual(request.code_message, b"Slow Down")


class ReasonPhraseLoopbackTests(LoopbackTestCase):
    """
    The proxy's own statuses through the real proxy on loopback.
    """

    @asyncTest
    async def test_rateLimitedPhrase(self) -> None:
        """
        The C{rate_limit} filter's 429 is C{429 Too Many Requests}, on the
        status line and in the page's title.
        """
        backend = await self.startBackend()
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backend.portNumber),)
                )
            },
            routes=(RouteConfig(path="/", pool="app", filters=("limit",)),),
            filters={
                "limit": FilterConfig("limit", "rate_limit", {"rate": 0.1, "burst": 1})
            },
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        client = await self.rawClient(port)
        client.write(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        received = await client.waitFor(finalCount(2), reactor, 5)
        responses, _ = parseResponses(received)
        self.assertEqual([r.status for r in responses], [200, 429])
        self.assertTrue(
            responses[1].raw.startswith(b"HTTP/1.1 429 Too Many Requests\r\n"),
            responses[1].raw[:60],
        )
        self.assertIn(b"<title>429 Too Many Requests</title>", responses[1].body)

    @asyncTest
    async def test_headersTooLargePhrase(self) -> None:
        """
        Headers past C{max_header_size} get C{431 Request Header Fields Too
        Large} from the channel.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, server={"maxHeaderSize": 1024})
        client = await self.rawClient(port)
        client.write(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
        )
        received = await client.waitFor(lambda d: b"\r\n\r\n" in d, reactor, 5)
        self.assertTrue(
            received.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            received[:80],
        )
        self.assertEqual(backend.requests, [])
