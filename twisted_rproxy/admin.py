"""
The admin listener: an HTML status page (C{/}), the same as JSON
(C{/status.json}), Prometheus metrics (C{/metrics}) and the run-time
control of the pools' servers (C{/pools/...}, see
L{twisted_rproxy.adminapi}), on its own endpoints (loopback by default),
optionally behind HTTP basic authentication.

Passwords are stored as PBKDF2-SHA256 hashes (salted, 200,000 iterations,
standard library only); make one with::

    python -m twisted_rproxy.admin hash-password
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sized
from typing import TYPE_CHECKING, Any

from attrs import asdict
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from twisted_rproxy._version import __version__
from twisted_rproxy.adminapi import (
    RuntimeControl,
    acmeInfo,
    certificatesInfo,
    pathSegments,
    renderControl,
)
from twisted_rproxy.adminpage import renderPage
from twisted_rproxy.config import AdminConfig
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.listening import DEFAULT_BACKLOG, adoptListener, withBacklog
from twisted_rproxy.metrics import MISSING, Metrics, available
from twisted_rproxy.totals import (
    RequestCounts,
    Snapshot,
    WorkerSnapshot,
    mergeWorkers,
    stateCounts,
    summary,
)
from twisted_rproxy.workercontrol import ControlListener, askWorkers

if TYPE_CHECKING:
    from twisted_rproxy.interfaces import IProxyStatus
    from twisted_rproxy.peers import WorkerTotals

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

    @ivar counts: The requests counted (whether or not C{/metrics} is
        served: the page shows them too).
    @ivar metrics: The L{Metrics} formatter, or L{None} when C{/metrics} is
        off.
    @ivar recentErrors: The latest 5xx answers, newest last.
    @ivar workerTotals: In a worker process, what gathers the counts of
        every worker (L{twisted_rproxy.peers}); L{None} otherwise.
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
        self.metrics = Metrics() if wantMetrics else None
        self.counts = RequestCounts(reactor.seconds, time.time)
        self.workerTotals: WorkerTotals | None = None
        #: The run-time control of the pools' servers (C{/pools/...}).
        self.control = RuntimeControl(lambda: self.service.pools, self._workerIndex)
        self._controlListener: ControlListener | None = None
        self._ports: list[IListeningPort] = []
        #: Inherited admin sockets (worker processes), as for the service;
        #: L{None} when not a worker. A worker without them has no admin
        #: listener (the first worker has it).
        self.inheritedListeners: dict[str, tuple[int, int]] | None = None
        self.worker: str | None = None
        observe = self.counts.observe
        errors = self.recentErrors
        keepErrors = config.recentErrors > 0

        def observer(request: Any) -> None:
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

    def _workerIndex(self) -> int | None:
        totals = self.workerTotals
        return totals.worker if totals is not None else None

    def startListening(self) -> None:
        """
        Listen on the C{[admin] listen} endpoints; in a worker process, take
        the other workers' commands too (L{twisted_rproxy.workercontrol}),
        and the run-time changes they have in force.
        """
        if self.workerTotals is not None:
            self._startControl(self.workerTotals)
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

    def _startControl(self, totals: WorkerTotals) -> None:
        """
        Take the other workers' commands on this worker's control socket,
        forward the changes made here to them, and make those they have in
        force (this worker was started again after them).
        """
        listener = ControlListener(
            totals.reactor, totals.directory, totals.worker, self._command
        )
        self._controlListener = listener
        listener.start()

        def forward(command: dict[str, Any]) -> Deferred[dict[int, dict[str, Any]]]:
            return askWorkers(
                totals.reactor, totals.clock, totals.directory, totals.worker, command
            )

        self.control.forward = forward
        forward({"command": "overrides"}).addCallback(self._adopt)

    def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        answer = self.control.command(command)
        if command.get("command") == "overrides":
            answer["started"] = self.started
        return answer

    def _adopt(self, answers: dict[int, dict[str, Any]]) -> None:
        """
        Make the run-time changes of the longest-running worker that
        answered.
        """
        live = [
            (a.get("started"), index, a)
            for index, a in answers.items()
            if a.get("ok") and isinstance(a.get("started"), (int, float))
        ]
        if not live:
            return
        _, index, answer = min(live, key=lambda entry: (entry[0], entry[1]))
        made = self.control.adopt(answer.get("overrides"))
        if made:
            _log.info(
                "Admin: {count} run-time changes of servers taken from worker {index}",
                count=made,
                index=index,
            )

    def stopListening(self) -> Deferred[Any]:
        """
        Stop the admin listeners (and the control socket).
        """
        ports, self._ports = self._ports, []
        stopping = [port.stopListening() for port in ports]
        listener, self._controlListener = self._controlListener, None
        if listener is not None:
            stopping.append(listener.stop())
        return DeferredList([d if d is not None else succeed(None) for d in stopping])

    def snapshot(self) -> Snapshot:
        """
        This process's counts now: its requests and its state.
        """
        return {**self.counts.snapshot(), **stateCounts(self.service)}

    def collect(self) -> Deferred[list[WorkerSnapshot]]:
        """
        The counts of every worker (L{WorkerTotals.collect}), or of this
        process alone when it is not a worker.
        """
        if self.workerTotals is not None:
            return self.workerTotals.collect()
        return succeed(self._alone())

    def _alone(self) -> list[WorkerSnapshot]:
        return [
            WorkerSnapshot(
                worker=None,
                pid=os.getpid(),
                starts=1,
                time=time.time(),
                counts=self.snapshot(),
            )
        ]

    def renderMetrics(self, workers: list[WorkerSnapshot]) -> bytes:
        """
        C{/metrics} for the counts of C{workers} (L{collect}): the totals,
        and with worker processes, the C{rproxy_worker_*} families.

        @raise RuntimeError: If metrics are off.
        """
        if self.metrics is None:
            raise RuntimeError(MISSING)
        perWorker = workers if self.workerTotals is not None else None
        return self.metrics.render(
            mergeWorkers(workers),
            perWorker,
            time.time(),
            certificates=certificatesInfo(self.service),
            acme=acmeInfo(self.service),
        )

    def status(self, workers: list[WorkerSnapshot] | None = None) -> dict[str, object]:
        """
        What the status page shows, as JSON-ready data: this process's
        state, and the totals over C{workers} (L{collect}; this process
        alone if not given).
        """
        if workers is None:
            workers = self._alone()
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
            "certificates": certificatesInfo(service),
            "acme": acmeInfo(service),
            "recent_errors": list(reversed(self.recentErrors)),
            "runtime_changes": list(reversed(self.control.changes)),
            "metrics": self.metrics is not None,
            "totals": {"workers": len(workers), **summary(mergeWorkers(workers))},
            "workers": [
                {
                    "worker": snapshot.worker,
                    "pid": snapshot.pid,
                    "live": snapshot.live,
                    "starts": snapshot.starts,
                    "updated": snapshot.time,
                    **summary(
                        snapshot.counts if snapshot.live else mergeWorkers([snapshot])
                    ),
                }
                for snapshot in workers
            ],
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
        self._verified: dict[bytes, str] = {}

    def _authenticate(self, request: Any) -> tuple[bool, str | None]:
        """
        Whether C{request} may see the admin site, and the user it
        authenticated as (L{None} without C{users}).
        """
        users = dict(self.admin.config.users)
        if not users:
            return True, None
        header = request.getHeader(b"authorization") or b""
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False, None
        # Checking a PBKDF2 hash takes a tenth of a second: a header once
        # checked is remembered (by its digest, not in clear).
        key = hashlib.sha256(header).digest()
        known = self._verified.get(key)
        if known is not None:
            return True, known
        try:
            name, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False, None
        hashed = users.get(name)
        if hashed is None or not checkPassword(password, hashed):
            return False, None
        if len(self._verified) > 100:
            self._verified.clear()
        self._verified[key] = name
        return True, name

    def render(self, request: Any) -> bytes | int:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        authorized, user = self._authenticate(request)
        if not authorized:
            request.setResponseCode(401)
            request.setHeader(
                b"www-authenticate",
                b'Basic realm="twisted_rproxy admin", charset="UTF-8"',
            )
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"authentication required\n"
        path = request.path
        segments = pathSegments(path)
        if segments is not None:
            return renderControl(self.admin.control, request, segments, user)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"method not allowed: only /pools/NAME/servers/ID takes POST\n"
        answer: Callable[[list[WorkerSnapshot]], bytes]
        if path == b"/metrics":
            if self.admin.metrics is None:
                request.setResponseCode(404)
                request.setHeader(b"content-type", b"text/plain; charset=utf-8")
                return (MISSING + "\n").encode()
            request.setHeader(
                b"content-type", b"text/plain; version=0.0.4; charset=utf-8"
            )
            answer = self.admin.renderMetrics
        elif path == b"/status.json":
            request.setHeader(b"content-type", b"application/json")

            def answer(workers: list[WorkerSnapshot]) -> bytes:
                return json.dumps(self.admin.status(workers), indent=2).encode()

        elif path in (b"/", b"/index.html"):
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

            def answer(workers: list[WorkerSnapshot]) -> bytes:
                return renderPage(self.admin.status(workers), refresh).encode()

        else:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: try /, /status.json, /metrics or /pools\n"
        return self._answerWith(request, answer)

    def _answerWith(
        self, request: Any, answer: Callable[[list[WorkerSnapshot]], bytes]
    ) -> int:
        """
        Gather every worker's counts (at once without workers; with them,
        as the siblings answer), then finish C{request} with C{answer}.
        """
        gone: list[object] = []
        request.notifyFinish().addErrback(gone.append)

        def write(workers: list[WorkerSnapshot]) -> None:
            if gone:
                return
            request.write(answer(workers))
            request.finish()

        def failed(failure: Failure) -> None:
            _log.failure("Admin: cannot answer {path}", failure, path=request.path)
            if gone:
                return
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"internal error, see the log\n")
            request.finish()

        self.admin.collect().addCallback(write).addErrback(failed)
        done: int = NOT_DONE_YET
        return done


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
