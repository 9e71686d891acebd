"""
Tests for the C{--demo} configuration (L{twisted_rproxy.demo}): what its page
promises works through the real proxy on loopback.
"""

from __future__ import annotations

import gzip
import os

from twisted.internet import reactor
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests.fixtures import LoopbackTestCase, asyncTest
from twisted_rproxy import demo, tap
from twisted_rproxy.demo import demoConfig, demoStaticDirectory, startDemoBackends
from twisted_rproxy.service import ProxyService


class DemoTests(LoopbackTestCase):
    """
    The demo shows load balancing, caching, compression, static files and
    the admin page.
    """

    @asyncTest
    async def test_demoShowsEachCapability(self) -> None:
        """
        Requests go round robin over the two demo backends; C{/cached} is a
        MISS then a HIT; the page is gzip-compressed for a client that
        accepts it; C{/static/demo.css} is served from the demo directory;
        the admin page answers.
        """
        backends = startDemoBackends(reactor)  # type: ignore[arg-type]
        directory = demoStaticDirectory()
        backends.directories.append(directory)
        self.addCleanup(backends.stopService)
        config = demoConfig(
            backends,
            ("tcp:0:interface=127.0.0.1",),
            directory,
            adminListen="tcp:0:interface=127.0.0.1",
        )
        service = ProxyService(config, reactor)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        base = f"http://127.0.0.1:{port}"
        client = self.httpClient()

        pages = []
        for _ in range(2):
            response = await client.get(base + "/")
            self.assertEqual(response.code, 200)
            pages.append(await response.text())
        self.assertIn("demo backend 1", "".join(pages))
        self.assertIn("demo backend 2", "".join(pages))

        first = await client.get(base + "/cached")
        firstBody = await first.content()
        second = await client.get(base + "/cached")
        secondBody = await second.content()
        self.assertEqual(first.headers.getRawHeaders("x-cache"), ["MISS"])
        self.assertEqual(second.headers.getRawHeaders("x-cache"), ["HIT"])
        self.assertEqual(firstBody, secondBody)

        # treq decodes gzip itself: a plain Agent shows the wire.
        agent = Agent(reactor, pool=self._clientPools[0])
        page = await agent.request(
            b"GET", (base + "/").encode(), Headers({b"Accept-Encoding": [b"gzip"]})
        )
        self.assertEqual(page.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertIn(b"twisted_rproxy demo", gzip.decompress(await readBody(page)))

        css = await client.get(base + "/static/demo.css")
        with open(os.path.join(directory, "demo.css"), "rb") as f:
            self.assertEqual(await css.content(), f.read())

        adminPort = service.admin._ports[0].getHost().port
        admin = await client.get(f"http://127.0.0.1:{adminPort}/status.json")
        self.assertEqual(admin.code, 200)
        status = await admin.json()
        [cache] = status["caches"]
        self.assertEqual(cache["name"], "demo")
        self.assertGreaterEqual(cache["entries"], 1)
        self.assertGreater(cache["bytes"], 0)

    @asyncTest
    async def test_demoListensOnLoopback(self) -> None:
        """
        C{twistd rproxy --demo} listens on 127.0.0.1 only, the proxy as its
        admin page (on ports the system chooses here, instead of 8080 and
        9000).
        """
        self.patch(demo, "DEMO_PORT", 0)
        self.patch(demo, "DEMO_ADMIN_PORT", 0)
        options = tap.Options()
        options.parseOptions(["--demo"])
        parent = tap.makeService(options)
        parent.startService()
        self.addCleanup(parent.stopService)
        [proxy] = [s for s in parent if isinstance(s, ProxyService)]
        self.assertEqual(proxy.config.server.listen, ("tcp:0:interface=127.0.0.1",))
        [port] = await proxy.whenListening()
        self.assertEqual(port.getHost().host, "127.0.0.1")
        [adminPort] = proxy.admin._ports
        self.assertEqual(adminPort.getHost().host, "127.0.0.1")
        response = await self.httpClient().get(
            f"http://127.0.0.1:{port.getHost().port}/"
        )
        self.assertEqual(response.code, 200)
        await response.content()

    def test_demoDefaultListen(self) -> None:
        """
        Without C{--listen}, the demo's proxy listens on 127.0.0.1:8080.
        """
        backends = startDemoBackends(reactor)  # type: ignore[arg-type]
        self.addCleanup(backends.stopService)
        config = demoConfig(backends)
        self.assertEqual(config.server.listen, ("tcp:8080:interface=127.0.0.1",))
        assert config.admin is not None
        self.assertEqual(config.admin.listen, ("tcp:9000:interface=127.0.0.1",))
