"""
Loopback tests of what the filter documentation promises: HEAD framed as
its GET through a body-transforming filter, and how a cancelled treq
request surfaces in an async hook.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import ResponseNeverReceived

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import RecordedRequest, Reply
from twisted_rproxy.config import parseConfig
from twisted_rproxy.service import makeService


def page(request: RecordedRequest) -> Reply:
    body = b"<p>" + b"hello " * 100 + b"</p>"
    headers = [(b"Content-Type", b"text/html")]
    if request.method == b"HEAD":
        headers.append((b"Content-Length", b"%d" % (len(body),)))
        return Reply(headers=headers, noBody=True)
    return Reply(headers=headers, body=body)


class HeadFramingTests(LoopbackTestCase):
    """
    HEAD and GET through transforming filters carry the same framing.
    """

    async def start(self, filters: dict[str, Any]) -> int:
        backend = await self.startBackend(page)
        config = parseConfig(
            {
                "server": {"listen": ["tcp:0:interface=127.0.0.1"]},
                "pools": {"app": {"servers": [backendServer(backend.portNumber).url]}},
                "filters": filters,
                "routes": [{"path": "/", "pool": "app", "filters": list(filters)}],
            },
            "test.toml",
            "/",
        )
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port: int = (await service.whenListening())[0].getHost().port
        return port

    async def compare(self, port: int) -> None:
        responses = []
        for method in (b"GET", b"HEAD"):
            _, [response] = await self.rawExchange(
                port,
                method + b" /p HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Accept-Encoding: gzip\r\n\r\n",
                methods=[method],
            )
            responses.append(response)
        get, head = responses
        self.assertEqual(head.body, b"")
        for name in (b"content-length", b"transfer-encoding", b"content-encoding"):
            self.assertEqual(head.header(name), get.header(name), name)
        self.assertEqual(get.header(b"content-length"), [])

    @asyncTest
    async def test_compress(self) -> None:
        """
        Through C{compress}: the HEAD has no Content-Length, as the GET.
        """
        await self.compare(await self.start({"gz": {"plugin": "compress"}}))

    @asyncTest
    async def test_compressBehindHeaders(self) -> None:
        """
        With another response filter in front of the transforming one.
        """
        port = await self.start(
            {
                "tag": {"plugin": "headers", "response": {"set": {"X-T": "1"}}},
                "gz": {"plugin": "compress"},
            }
        )
        await self.compare(port)


class Silent(Protocol):
    """
    Accepts a connection and never answers.
    """


class CancelledTreqTests(LoopbackTestCase):
    """
    What docs/filters.rst says of a treq request cancelled in an async hook.
    """

    @asyncTest
    async def test_responseNeverReceivedWrapsCancelledError(self) -> None:
        """
        Cancelling a treq request whose connection is up and whose response
        has not come fails it with C{ResponseNeverReceived}, whose
        C{reasons} hold a C{CancelledError}.
        """
        factory = Factory.forProtocol(Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = self.httpClient()
        requesting = client.get(f"http://127.0.0.1:{port.getHost().port}/")
        await sleep(0.2)
        requesting.cancel()
        try:
            await requesting
        except ResponseNeverReceived as e:
            self.assertTrue(e.reasons[0].check(CancelledError))
        else:
            self.fail("no failure")

    @asyncTest
    async def test_addTimeout(self) -> None:
        """
        C{Deferred.addTimeout(t, reactor)} on such a request cancels it
        after C{t} seconds, and what the hook sees then is not
        C{TimeoutError} but the same C{ResponseNeverReceived} wrapping
        C{CancelledError} (treq's canceller fails the request itself): the
        documented way catches that.
        """
        factory = Factory.forProtocol(Silent)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = self.httpClient()
        requesting: Deferred[Any] = client.get(
            f"http://127.0.0.1:{port.getHost().port}/"
        )
        requesting.addTimeout(0.2, reactor)
        try:
            await requesting
        except ResponseNeverReceived as e:
            self.assertTrue(e.reasons[0].check(CancelledError))
        else:
            self.fail("no failure")
