"""
The embedding example, C{examples/embed.py}: an application of its own
pages with the proxy mounted under C{/api/}, run over loopback.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

from twisted.internet import reactor
from twisted.web.server import Site

from tests.fixtures import REPO, LoopbackTestCase, asyncTest
from twisted_rproxy import BackendPool, PoolConfig, backendServers


def loadExample() -> ModuleType:
    """
    Import C{examples/embed.py} (examples/ is not a package).
    """
    path = os.path.join(REPO, "examples", "embed.py")
    spec = importlib.util.spec_from_file_location("rproxy_embed_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EmbedExampleTests(LoopbackTestCase):
    """
    The example's resource tree serves its pages and proxies C{/api/}.
    """

    @asyncTest
    async def test_appPagesBesideProxiedApi(self) -> None:
        """
        C{/} is the application's page; C{/api/...} reaches the backend
        without the prefix and comes back stamped by the filter.
        """
        example = loadExample()
        backend = await self.startBackend()
        pool = BackendPool(
            reactor,
            PoolConfig(
                name="api",
                servers=backendServers([f"http://127.0.0.1:{backend.portNumber}"]),
            ),
        )
        self.addCleanup(pool.close)
        port = reactor.listenTCP(
            0, Site(example.buildRoot(pool, reactor)), interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        base = f"http://127.0.0.1:{port.getHost().port}"
        client = self.httpClient()
        api = await client.get(base + "/api/users?id=3")
        self.assertEqual(api.code, 200)
        self.assertEqual(await api.content(), b"/users?id=3")
        self.assertEqual(api.headers.getRawHeaders(b"x-via-app"), [b"embed"])
        home = await client.get(base + "/")
        self.assertIn(b"My application", await home.content())
        self.assertIsNone(home.headers.getRawHeaders(b"x-via-app"))
        self.assertEqual([r.target for r in backend.requests], [b"/users?id=3"])
