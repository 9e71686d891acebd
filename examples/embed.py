"""
Embedding twisted_rproxy in a plain twisted.web application: the
application serves its own pages and mounts the proxy under C{/api/},
with a filter in front of it.

Run it (a backend on 127.0.0.1:8001, the application on 127.0.0.1:8080)::

    python examples/embed.py http://127.0.0.1:8001

A Klein application mounts the same resource with
C{@app.route("/api/", branch=True)} returning L{buildRoot}'s C{api} child.
"""

from __future__ import annotations

import sys

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource
from twisted.web.static import Data

from twisted_rproxy import (
    BackendPool,
    FilterChain,
    PoolConfig,
    ProxyResource,
    backendServers,
)
from twisted_rproxy.filters import buildFilter


def buildRoot(pool: BackendPool, reactor: IReactorTime) -> Resource:
    """
    The application's resource tree: its own home page on C{/}, and
    C{/api/...} forwarded to C{pool} as C{/...}, each response stamped with
    an C{X-Via-App} header by the built-in C{headers} filter.
    """
    root = Resource()
    root.putChild(b"", Data(b"<h1>My application</h1>\n", "text/html"))
    stampApi = buildFilter(
        "headers", {"response": {"set": {"X-Via-App": "embed"}}}, reactor, "stamp"
    )
    api = FilterChain(
        ProxyResource(pool, stripPrefix=b"/api"), [("stamp", stampApi)], reactor
    )
    root.putChild(b"api", api)
    return root


def main(argv: list[str]) -> None:
    """
    Serve the application on 127.0.0.1:8080 in front of the backends given
    as URLs on the command line.
    """
    from twisted.internet import reactor
    from twisted.web.server import Site

    pool = BackendPool(
        reactor,  # type: ignore[arg-type]
        PoolConfig(
            name="api", servers=backendServers(argv or ["http://127.0.0.1:8001"])
        ),
    )
    site = Site(buildRoot(pool, reactor))  # type: ignore[arg-type]
    reactor.listenTCP(8080, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
