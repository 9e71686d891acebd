"""
The built-in demonstration (C{twistd rproxy --demo}): small backends on
loopback, and a configuration that puts the proxy in front of them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_rproxy.config import Config, parseConfig
from twisted_rproxy.interfaces import IProxyReactor

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>twisted_rproxy demo</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 40em; margin: 3em auto;
       color: #222; line-height: 1.5; }}
code {{ background: #f3f3f3; padding: 0 .3em; }}
.badge {{ display: inline-block; padding: .2em .7em; border-radius: 1em;
          background: {colour}; color: white; }}
</style></head>
<body>
<h1>twisted_rproxy demo</h1>
<p>This page was served by <span class="badge">demo backend {number}</span>
through the proxy. Reload it: the proxy balances requests round-robin over
{count} backends on loopback, over kept-alive HTTP/1.1 connections. The
<code>compress</code> filter compressed this page for your browser (see its
<code>Content-Encoding</code>).</p>
<ul>
<li><a href="/api/info">/api/info</a>: JSON from a backend
(with the <code>X-Forwarded-*</code> headers the proxy added)</li>
<li><a href="/cached">/cached</a>: a response the backend lets caches keep for
10 seconds: reload it and the time stays put (see the
<code>X-Cache</code> header: MISS, then HIT)</li>
<li><a href="/static/demo.css">/static/demo.css</a>: a file served by the
proxy itself from a directory, with ranges and validators</li>
<li><a href="/stream?kib=1024">/stream?kib=1024</a>: a 1 MiB body streamed
through the proxy</li>
<li><a href="http://127.0.0.1:9000/">http://127.0.0.1:9000/</a>: the admin
page (pools, servers, health, recent errors; JSON and metrics too)</li>
</ul>
</body></html>
"""

_COLOURS = ["#2a7ae2", "#d9534f", "#5cb85c", "#f0ad4e"]

#: The demo's ports without C{--listen}: the proxy's and the admin page's,
#: both on 127.0.0.1 (a demonstration is not for the network to reach).
DEMO_PORT = 8080
DEMO_ADMIN_PORT = 9000


class DemoBackend(Resource):
    """
    One demo backend: a page naming it, a JSON echo of what it received,
    and a streamed body.
    """

    isLeaf = True

    def __init__(self, number: int, count: int) -> None:
        # mypy reports super() calls to Twisted's untyped methods despite
        # untyped_calls_exclude (python/mypy#16653).
        super().__init__()  # type: ignore[no-untyped-call]
        self.number = number
        self.count = count

    def render_GET(self, request: IRequest) -> bytes:
        path = request.path
        request.setHeader(b"x-powered-by", b"demo-backend")
        if path == b"/api/info":
            request.setHeader(b"content-type", b"application/json")
            headers = {
                name.decode("latin-1"): [v.decode("latin-1") for v in values]
                for name, values in request.requestHeaders.getAllRawHeaders()
            }
            body = {"backend": self.number, "path": path.decode(), "headers": headers}
            return json.dumps(body, indent=2).encode() + b"\n"
        if path == b"/cached":
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.setHeader(b"cache-control", b"public, max-age=10")
            now = time.strftime("%H:%M:%S", time.gmtime())
            return f"Made by demo backend {self.number} at {now} UTC.\n".encode()
        if path == b"/stream":
            request.setHeader(b"content-type", b"application/octet-stream")
            kib = int(request.args.get(b"kib", [b"64"])[0])
            return b"x" * (1024 * max(0, min(kib, 16384)))
        if path != b"/":
            request.setResponseCode(404)
            return b"not found\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        page = _PAGE.format(
            number=self.number,
            count=self.count,
            colour=_COLOURS[(self.number - 1) % len(_COLOURS)],
        )
        return page.encode()

    render_HEAD = render_GET


class DemoBackends(Service):
    """
    The demo backends' listening ports, closed when the service stops, and
    the demo's directories, removed then.
    """

    def __init__(self, ports: list[IListeningPort]) -> None:
        self.ports = ports
        self.directories: list[str] = []

    def stopService(self) -> Deferred[list[tuple[bool, None]]]:
        super().stopService()  # type: ignore[no-untyped-call]  # python/mypy#16653
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)
        return DeferredList([Deferred.fromCoroutine(_stop(p)) for p in self.ports])


async def _stop(port: IListeningPort) -> None:
    # stopListening() may return None when the port stops at once.
    stopped = port.stopListening()
    if stopped is not None:
        await stopped


def startDemoBackends(reactor: IProxyReactor, count: int = 2) -> DemoBackends:
    """
    Listen with C{count} demo backends on 127.0.0.1, on ports the system
    chooses.
    """
    ports = []
    for number in range(1, count + 1):
        site = Site(DemoBackend(number, count))
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        # IReactorTCP.listenTCP is annotated with the bare ServerFactory, that
        # is ServerFactory[_ProtoWithFactory]; Factory is invariant in its
        # protocol type, so no concrete factory such as Site matches it.
        port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[arg-type]
        ports.append(port)
    return DemoBackends(ports)


def demoStaticDirectory() -> str:
    """
    Make a directory of files for the demo's static route.
    """
    directory = tempfile.mkdtemp(prefix="rproxy-demo-")
    with open(os.path.join(directory, "demo.css"), "w", encoding="utf-8") as f:
        f.write("/* Served by twisted_rproxy from a directory. */\n")
        f.write("body { font-family: system-ui, sans-serif; }\n" * 40)
    return directory


def demoConfig(
    backends: DemoBackends,
    listen: tuple[str, ...] = (),
    staticDirectory: str | None = None,
    adminListen: str | None = None,
) -> Config:
    """
    The configuration of the demo: the proxy on C{listen} (by default
    127.0.0.1, port L{DEMO_PORT}) in front of the demo backends (round
    robin, a cache that says HIT or MISS, compression), the files of
    C{staticDirectory} under C{/static/}, the admin page on C{adminListen}
    (by default 127.0.0.1, port L{DEMO_ADMIN_PORT}), and an access log on
    standard output.

    It is written as the TOML tables a user would write, and checked the
    same way.
    """
    servers = [f"http://127.0.0.1:{_portNumber(port)}" for port in backends.ports]
    if not listen:
        listen = (f"tcp:{DEMO_PORT}:interface=127.0.0.1",)
    if adminListen is None:
        adminListen = f"tcp:{DEMO_ADMIN_PORT}:interface=127.0.0.1"
    data: dict[str, object] = {
        "server": {"listen": list(listen), "access_log": "-"},
        "pools": {"demo": {"servers": servers}},
        "caches": {"demo": {"max_size": "16MiB", "status_header": True}},
        "filters": {"compress": {"plugin": "compress"}},
        "admin": {"listen": [adminListen]},
        "routes": [
            {"path": "/", "pool": "demo", "cache": "demo", "filters": ["compress"]}
        ],
    }
    if staticDirectory is not None:
        routes = data["routes"]
        assert isinstance(routes, list)
        routes.insert(0, {"path": "/static/", "static": staticDirectory})
    return parseConfig(data, "<demo>", os.getcwd())


def _portNumber(port: IListeningPort) -> int:
    """
    The TCP port number C{port} listens on.
    """
    address = port.getHost()
    if not isinstance(address, IPv4Address):
        raise TypeError(f"not listening on IPv4 TCP: {address!r}")
    return address.port
