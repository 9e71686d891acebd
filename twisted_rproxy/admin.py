"""
The admin listener: an HTML status page (C{/}), the same as JSON
(C{/status.json}) and Prometheus metrics (C{/metrics}), on its own
endpoints (loopback by default), optionally behind HTTP basic
authentication.

Passwords are stored as PBKDF2-SHA256 hashes (salted, 200,000 iterations,
standard library only); make one with::

    python -m twisted_rproxy.admin hash-password
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import sys
import time
from collections import deque
from collections.abc import Sized
from typing import TYPE_CHECKING, Any

from attrs import asdict
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_rproxy._version import __version__
from twisted_rproxy.config import AdminConfig
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.listening import DEFAULT_BACKLOG, adoptListener, withBacklog
from twisted_rproxy.metrics import MISSING, Metrics, available

if TYPE_CHECKING:
    from twisted_rproxy.interfaces import IProxyStatus

_log = Logger()

#: PBKDF2 iterations of new password hashes.
ITERATIONS = 200_000


def hashPassword(password: str, iterations: int = ITERATIONS) -> str:
    """
    A hash of C{password} for C{[admin] users}:
    C{pbkdf2-sha256$ITERATIONS$SALT$HASH} (base64 salt and hash).
    """
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    encodedSalt = base64.b64encode(salt).decode()
    encodedDigest = base64.b64encode(digest).decode()
    return f"pbkdf2-sha256${iterations}${encodedSalt}${encodedDigest}"


def checkPassword(password: str, hashed: str) -> bool:
    """
    Whether C{password} matches a hash made by L{hashPassword}.
    """
    try:
        _, iterations, salt, digest = hashed.split("$")
        expected = base64.b64decode(digest)
        actual = hashlib.pbkdf2_hmac(
            "sha256", password.encode(), base64.b64decode(salt), int(iterations)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _status(request: Any) -> tuple[int, str, str | None, str | None]:
    route = request.route
    return (
        request.code,
        request.method.decode("latin-1"),
        getattr(route, "label", None),
        request.upstreamServer,
    )


class Admin:
    """
    The admin side of a running proxy (an L{IProxyStatus}, such as a
    L{twisted_rproxy.service.ProxyService}): its listeners, metrics and
    the recent errors it shows.

    @ivar metrics: The L{Metrics}, or L{None} when they are off.
    @ivar recentErrors: The latest 5xx answers, newest last.
    """

    def __init__(
        self, service: IProxyStatus, config: AdminConfig, reactor: IProxyReactor
    ) -> None:
        self.service = service
        self.config = config
        self.reactor = reactor
        self.started = time.time()
        self.recentErrors: deque[dict[str, object]] = deque(
            maxlen=max(config.recentErrors, 1)
        )
        wantMetrics = config.metrics if config.metrics is not None else available()
        self.metrics = Metrics(service) if wantMetrics else None
        self._ports: list[IListeningPort] = []
        #: Inherited admin sockets (worker processes), as for the service;
        #: L{None} when not a worker. A worker without them has no admin
        #: listener (the first worker has it).
        self.inheritedListeners: dict[str, tuple[int, int]] | None = None
        self.worker: str | None = None
        observe = self.metrics.observe if self.metrics is not None else None
        errors = self.recentErrors
        keepErrors = config.recentErrors > 0

        def observer(request: Any) -> None:
            if observe is not None:
                observe(request)
            if request.code >= 500 and keepErrors:
                errors.append(
                    {
                        "time": time.time(),
                        "status": request.code,
                        "method": request.method.decode("latin-1"),
                        "uri": request.uri.decode("latin-1")[:200],
                        "route": getattr(request.route, "label", None),
                        "upstream": request.upstreamServer,
                    }
                )

        service.site.requestObserver = observer
        self.site = Site(AdminResource(self))
        self.site.noisy = False
        self.site.displayTracebacks = False

    def startListening(self) -> None:
        """
        Listen on the C{[admin] listen} endpoints.
        """
        for description in self.config.listen:
            if self.inheritedListeners is not None:
                inherited = self.inheritedListeners.get(description)
                if inherited is None:
                    continue
                fd, family = inherited
                self._ports.append(adoptListener(self.reactor, fd, family, self.site))
                continue
            endpoint = serverFromString(
                self.reactor, withBacklog(description, DEFAULT_BACKLOG)
            )
            listening = endpoint.listen(self.site)
            listening.addCallback(self._ports.append)
            listening.addErrback(
                lambda f, d=description: _log.failure(
                    "Admin: cannot listen on {endpoint}", f, endpoint=d
                )
            )

    def stopListening(self) -> Deferred[Any]:
        """
        Stop the admin listeners.
        """
        ports, self._ports = self._ports, []
        stopping = [port.stopListening() for port in ports]
        return DeferredList([d if d is not None else succeed(None) for d in stopping])

    def status(self) -> dict[str, object]:
        """
        What the status page shows, as JSON-ready data.
        """
        service = self.service
        config = service.config
        listeners = [
            {"endpoint": description, "tls": False}
            for description in config.server.listen
        ] + [
            {"endpoint": description, "tls": True}
            for group in config.tls
            for description in group.listen
        ]
        bound = [
            f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}"
            for host in service.listeningAddresses()
        ]
        routes = [
            {
                "route": _routeLabel(route.host, route.path),
                "host": route.host,
                "path": route.path,
                "pool": route.pool,
                "static": route.static,
                "filters": list(route.filters),
                "websocket": route.websocket if route.pool else False,
            }
            for route in config.routes
        ]
        pools = []
        for pool in service.pools.values():
            status = asdict(pool.status())
            status["servers"] = [dict(server) for server in status["servers"]]
            pools.append(status)
        caches = []
        for name, store in sorted(service.cacheStores.items()):
            entry: dict[str, object] = {"name": name}
            describe = getattr(store, "status", None)
            if callable(describe):
                value = describe()
                entry.update(
                    asdict(value) if hasattr(value, "__attrs_attrs__") else value
                )
            else:
                # The memory store: how full it is.
                entry["entries"] = len(store) if isinstance(store, Sized) else None
                entry["bytes"] = getattr(store, "size", None)
                entry["max_bytes"] = getattr(store, "maxSize", None)
            caches.append(entry)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "worker": self.worker,
            "started": self.started,
            "uptime": round(time.time() - self.started, 1),
            "config": config.source,
            "connections": len(service.site.connections),
            "draining": service.site.draining,
            "listeners": listeners,
            "bound": bound,
            "routes": routes,
            "pools": pools,
            "caches": caches,
            "recent_errors": list(reversed(self.recentErrors)),
            "metrics": self.metrics is not None,
        }


def _routeLabel(host: str | None, path: str) -> str:
    return path if host is None else host + path


class AdminResource(Resource):
    """
    The admin site's root: C{/}, C{/status.json}, C{/metrics}.
    """

    isLeaf = True

    def __init__(self, admin: Admin) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # python/mypy#16653
        self.admin = admin
        self._verified: set[bytes] = set()

    def _authorized(self, request: Any) -> bool:
        users = dict(self.admin.config.users)
        if not users:
            return True
        header = request.getHeader(b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        # Checking a PBKDF2 hash takes a tenth of a second: a header once
        # checked is remembered (by its digest, not in clear).
        key = hashlib.sha256(header).digest()
        if key in self._verified:
            return True
        try:
            name, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = users.get(name)
        if hashed is None or not checkPassword(password, hashed):
            return False
        if len(self._verified) > 100:
            self._verified.clear()
        self._verified.add(key)
        return True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        if not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                b'Basic realm="twisted_rproxy admin", charset="UTF-8"',
            )
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"authentication required\n"
        path = request.path
        if path == b"/metrics":
            metrics = self.admin.metrics
            if metrics is None:
                request.setResponseCode(404)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return (MISSING + "\n").encode()
            request.setHeader(
                b"content-type", b"text/plain; version=0.0.4; charset=utf-8"
            )
            return metrics.render()
        if path == b"/status.json":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.admin.status(), indent=2).encode()
        if path in (b"/", b"/index.html"):
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(
                b"content-security-policy",
                b"default-src 'none'; style-src 'unsafe-inline'",
            )
            refresh = self.admin.config.refresh
            values = request.args.get(b"refresh")
            if values:
                try:
                    refresh = max(float(values[0]), 0.0)
                except ValueError:
                    pass
            return renderPage(self.admin.status(), refresh).encode()
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found: try /, /status.json or /metrics\n"


_CSS = """
:root{--bg:#f5f6f8;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e3e6ec;
--ok:#1a7f37;--okbg:#dafbe1;--bad:#b42318;--badbg:#fee4e2;--warn:#9a6700;
--warnbg:#fff8c5;--accent:#3b5bdb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{background:#1d2330;color:#fff;padding:14px 28px;display:flex;
align-items:center;gap:18px;flex-wrap:wrap}
header h1{font-size:18px;margin:0;font-weight:600}
header .meta{color:#b8c0d0;font-size:13px}
header nav{margin-left:auto;font-size:13px}
header nav a{color:#cfd8ff;margin-left:12px;text-decoration:none}
main{padding:20px 28px;max-width:1280px;margin:auto}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));
gap:12px;margin-bottom:18px}
.tile{background:var(--card);border:1px solid var(--line);border-radius:10px;
padding:12px 16px}
.tile .n{font-size:24px;font-weight:650}
.tile .l{color:var(--mute);font-size:12px;text-transform:uppercase;
letter-spacing:.04em}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;
margin-bottom:18px;overflow:hidden}
section h2{font-size:15px;margin:0;padding:12px 16px;border-bottom:1px solid
var(--line);display:flex;gap:10px;align-items:center}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:8px 16px;border-bottom:1px solid var(--line);
vertical-align:middle}
th{font-size:12px;color:var(--mute);font-weight:600;text-transform:uppercase;
letter-spacing:.03em;background:#fafbfc}
tr:last-child td{border-bottom:0}
td.num{font-variant-numeric:tabular-nums;text-align:right}
th.num{text-align:right}
code{font:12.5px ui-monospace,SFMono-Regular,Menlo,monospace}
.badge{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;
font-weight:600}
.healthy{background:var(--okbg);color:var(--ok)}
.down{background:var(--badbg);color:var(--bad)}
.ejected,.panic{background:var(--warnbg);color:var(--warn)}
.bar{height:8px;background:#edf0f5;border-radius:4px;width:120px;
display:inline-block;vertical-align:middle;overflow:hidden}
.bar i{display:block;height:100%;background:var(--accent)}
.empty{padding:14px 16px;color:var(--mute)}
.err td:first-child{color:var(--bad);font-weight:600}
footer{color:var(--mute);font-size:12px;text-align:center;padding:8px 0 24px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds}s"


def renderPage(status: dict[str, Any], refresh: float) -> str:
    """
    The HTML status page for L{Admin.status}'s data (no external assets).

    @param refresh: Seconds between automatic reloads, 0 for none.
    """
    pools: list[dict[str, Any]] = status["pools"]
    servers = [server for pool in pools for server in pool["servers"]]
    healthyCount = sum(1 for s in servers if s["state"] == "healthy")
    parts = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">']
    if refresh > 0:
        parts.append(f'<meta http-equiv="refresh" content="{refresh:g}">')
    parts.append(
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>twisted_rproxy status</title><style>{_CSS}</style></head><body>"
    )
    worker = f" · worker {_e(status['worker'])}" if status["worker"] else ""
    refreshText = (
        f'auto-refresh {refresh:g}s · <a href="?refresh=0">stop</a>'
        if refresh > 0
        else '<a href="?refresh=5">auto-refresh</a>'
    )
    parts.append(
        "<header><h1>twisted_rproxy</h1>"
        f'<span class="meta">version {_e(status["version"])} · pid '
        f"{_e(status['pid'])}{worker} · up {_duration(status['uptime'])} · "
        f"<code>{_e(status['config'])}</code></span>"
        f'<nav>{refreshText}<a href="status.json">JSON</a>'
        + ('<a href="metrics">metrics</a>' if status["metrics"] else "")
        + "</nav></header><main>"
    )
    tiles = [
        (status["connections"], "client connections"),
        (len(status["routes"]), "routes"),
        (len(pools), "pools"),
        (f"{healthyCount}/{len(servers)}", "servers healthy"),
        (sum(s["inFlight"] for s in servers), "requests in flight"),
        (len(status["recent_errors"]), "recent errors"),
    ]
    parts.append('<div class="tiles">')
    for number, label in tiles:
        parts.append(
            f'<div class="tile"><div class="n">{_e(number)}</div>'
            f'<div class="l">{_e(label)}</div></div>'
        )
    parts.append("</div>")

    for pool in pools:
        badge = '<span class="badge panic">panic</span>' if pool["panic"] else ""
        parts.append(
            f"<section><h2>Pool <code>{_e(pool['name'])}</code>"
            f'<span class="meta" style="color:var(--mute);font-weight:400">'
            f"{_e(pool['balance'])} · {pool['requests']} requests · "
            f"{pool['retries']} retries · {pool['pending']} pending</span>"
            f"{badge}</h2><table><tr><th>Server</th><th>Health</th>"
            '<th>Load</th><th class="num">In flight</th><th class="num">Idle '
            'conns</th><th class="num">Requests</th><th class="num">Failures'
            '</th><th class="num">Weight</th></tr>'
        )
        peak = max([s["inFlight"] for s in pool["servers"]] + [1])
        for server in pool["servers"]:
            width = int(100 * server["inFlight"] / peak)
            parts.append(
                f"<tr><td><code>{_e(server['url'])}</code></td>"
                f'<td><span class="badge {_e(server["state"])}">'
                f"{_e(server['state'])}</span></td>"
                f'<td><span class="bar"><i style="width:{width}%"></i></span></td>'
                f'<td class="num">{server["inFlight"]}</td>'
                f'<td class="num">{server["idleConnections"]}</td>'
                f'<td class="num">{server["requests"]}</td>'
                f'<td class="num">{server["failures"]}</td>'
                f'<td class="num">{server["weight"]}'
                + (
                    f" ({server['effectiveWeight']:.0%})"
                    if server["effectiveWeight"] < 1
                    else ""
                )
                + "</td></tr>"
            )
        parts.append("</table></section>")

    parts.append(
        "<section><h2>Routes</h2><table><tr><th>Host</th><th>Path</th>"
        "<th>Target</th><th>Filters</th><th>WebSocket</th></tr>"
    )
    for route in status["routes"]:
        target = (
            f"pool <code>{_e(route['pool'])}</code>"
            if route["pool"]
            else f"static <code>{_e(route['static'])}</code>"
        )
        parts.append(
            f"<tr><td>{_e(route['host'] or '*')}</td>"
            f"<td><code>{_e(route['path'])}</code></td><td>{target}</td>"
            f"<td>{_e(', '.join(route['filters']) or '—')}</td>"
            f"<td>{'yes' if route['websocket'] else '—'}</td></tr>"
        )
    parts.append("</table></section>")

    parts.append(
        "<section><h2>Listeners</h2><table><tr><th>Endpoint</th><th>TLS</th></tr>"
    )
    for listener in status["listeners"]:
        parts.append(
            f"<tr><td><code>{_e(listener['endpoint'])}</code></td>"
            f"<td>{'yes' if listener['tls'] else 'no'}</td></tr>"
        )
    parts.append(
        f'<tr><td colspan="2" style="color:var(--mute)">bound: '
        f"<code>{_e(', '.join(status['bound']) or '—')}</code></td></tr>"
        "</table></section>"
    )

    parts.append("<section><h2>Caches</h2>")
    if status["caches"]:
        keys = [k for k in status["caches"][0] if k != "name"]
        parts.append(
            "<table><tr><th>Name</th>"
            + "".join(f"<th>{_e(k)}</th>" for k in keys)
            + "</tr>"
        )
        for cache in status["caches"]:
            parts.append(
                f"<tr><td><code>{_e(cache['name'])}</code></td>"
                + "".join(f"<td>{_e(cache.get(k))}</td>" for k in keys)
                + "</tr>"
            )
        parts.append("</table>")
    else:
        parts.append('<div class="empty">No cache is configured.</div>')
    parts.append("</section>")

    parts.append("<section><h2>Recent errors</h2>")
    if status["recent_errors"]:
        parts.append(
            "<table><tr><th>Status</th><th>Time</th><th>Request</th>"
            "<th>Route</th><th>Backend</th></tr>"
        )
        for error in status["recent_errors"]:
            when = time.strftime("%H:%M:%S", time.localtime(error["time"]))
            parts.append(
                f'<tr class="err"><td>{_e(error["status"])}</td><td>{when}</td>'
                f"<td><code>{_e(error['method'])} {_e(error['uri'])}</code></td>"
                f"<td><code>{_e(error['route'])}</code></td>"
                f"<td><code>{_e(error['upstream'] or '—')}</code></td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append('<div class="empty">No errors since the start.</div>')
    parts.append("</section></main>")
    parts.append(
        f"<footer>Generated {time.strftime('%Y-%m-%d %H:%M:%S')} · "
        "twisted_rproxy admin</footer></body></html>"
    )
    return "".join(parts)


def main(argv: list[str]) -> int:
    """
    C{python -m twisted_rproxy.admin hash-password}: print a password hash
    for C{[admin] users} (the password is read from the terminal, or from
    standard input when it is not one).
    """
    if argv[1:] != ["hash-password"]:
        sys.stderr.write("usage: python -m twisted_rproxy.admin hash-password\n")
        return 2
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            sys.stderr.write("the passwords differ\n")
            return 1
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        sys.stderr.write("an empty password is not allowed\n")
        return 1
    print(hashPassword(password))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv))
