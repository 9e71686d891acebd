"""
The built-in demonstration (C{twistd rproxy --demo}): small backends on
loopback, and a configuration that puts the proxy in front of them.
"""

from __future__ import annotations

import json

from twisted.application.service import Service
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_rproxy.config import Config, PoolConfig, RouteConfig, ServerConfig
from twisted_rproxy.config import _parseBackendURL as parseBackendURL
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
{count} backends on loopback, over kept-alive HTTP/1.1 connections.</p>
<ul>
<li><a href="/api/info">/api/info</a>: JSON from a backend
(with the <code>X-Forwarded-*</code> headers the proxy added)</li>
<li><a href="/stream?kib=1024">/stream?kib=1024</a>: a 1 MiB body streamed
through the proxy</li>
</ul>
</body></html>
"""

_COLOURS = ["#2a7ae2", "#d9534f", "#5cb85c", "#f0ad4e"]


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
    The demo backends' listening ports, closed when the service stops.
    """

    def __init__(self, ports: list[IListeningPort]) -> None:
        self.ports = ports

    def stopService(self) -> Deferred[list[tuple[bool, None]]]:
        super().stopService()  # type: ignore[no-untyped-call]  # python/mypy#16653
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


def demoConfig(backends: DemoBackends, listen: tuple[str, ...] = ()) -> Config:
    """
    The configuration of the demo: the proxy on C{listen} (C{tcp:8080} by
    default) in front of the demo backends, with an access log on standard
    output.
    """
    servers = tuple(
        parseBackendURL(f"http://127.0.0.1:{_portNumber(port)}", "<demo>", "demo")
        for port in backends.ports
    )
    return Config(
        source="<demo>",
        server=ServerConfig(listen=listen or ("tcp:8080",), accessLog="-"),
        pools={"demo": PoolConfig(name="demo", servers=servers)},
        routes=(RouteConfig(path="/", pool="demo"),),
    )


def _portNumber(port: IListeningPort) -> int:
    """
    The TCP port number C{port} listens on.
    """
    address = port.getHost()
    if not isinstance(address, IPv4Address):
        raise TypeError(f"not listening on IPv4 TCP: {address!r}")
    return address.port
