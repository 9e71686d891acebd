"""
Run-time control on the admin listener: the servers of each pool as JSON,
and setting a server's admin state (ready, drain, maintenance) and weight
without a reload.

  - C{GET /pools}: the pools, each with its servers;
  - C{GET /pools/NAME}, C{GET /pools/NAME/servers},
    C{GET /pools/NAME/servers/ID}: one pool, its servers, one server;
  - C{POST /pools/NAME/servers/ID} with a JSON body
    C{{"state": "drain", "weight": 3}} (either key; C{"weight": null}
    gives the configured weight back): change it.

C{ID} is the server's URL as the status shows it, percent-encoded
(C{http%3A%2F%2F127.0.0.1%3A8001}), or its index among the pool's servers
(from 0). C{NAME} is percent-decoded too.

A write must come with C{Content-Type: application/json} (a cross-site
HTML form cannot send that without the browser asking first, which this
site never allows) and, when the browser says where it comes from, from
this site's own origin.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote_to_bytes

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from twisted_rproxy.pool import ADMIN_STATES, Backend, BackendPool, ServerStatus

__all__ = [
    "MAX_BODY",
    "ControlError",
    "RuntimeControl",
    "ServerChange",
    "acmeInfo",
    "certificatesInfo",
    "checkWrite",
    "parseChange",
    "pathSegments",
    "renderControl",
    "serverInfo",
]

_log = Logger()

#: The largest body of a change, in bytes.
MAX_BODY = 64 * 1024

_KEYS = ("state", "weight")


class ControlError(Exception):
    """
    A request the control API refuses: an HTTP status and why.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@frozen
class ServerChange:
    """
    A change of one server asked for.

    @ivar state: The admin state to put it in, or L{None} to leave it.
    @ivar setWeight: Whether its weight changes.
    @ivar weight: The weight it gets (with C{setWeight}), L{None} for the
        configured one.
    """

    state: str | None = None
    setWeight: bool = False
    weight: int | None = None

    def asJSON(self) -> dict[str, object]:
        """
        The change as a body would say it.
        """
        data: dict[str, object] = {}
        if self.state is not None:
            data["state"] = self.state
        if self.setWeight:
            data["weight"] = self.weight
        return data


def parseChange(body: bytes) -> ServerChange:
    """
    The change a request body asks for: a JSON object with C{state} and/or
    C{weight}.

    @raise ControlError: (400) If it is not one, saying why.
    """
    if len(body) > MAX_BODY:
        raise ControlError(413, f"the body is over {MAX_BODY} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ControlError(400, f"the body is not JSON: {e}") from None
    return changeFrom(data)


def changeFrom(data: object) -> ServerChange:
    """
    The change a decoded JSON value asks for (see L{parseChange}).

    @raise ControlError: (400) If it is not one.
    """
    if not isinstance(data, dict):
        raise ControlError(
            400, 'the body must be a JSON object such as {"state": "drain"}'
        )
    unknown = sorted(str(key) for key in data if key not in _KEYS)
    if unknown:
        raise ControlError(
            400, f"unknown key {', '.join(unknown)}: expected state and/or weight"
        )
    if not data:
        raise ControlError(400, "nothing to change: give state and/or weight")
    state = data.get("state")
    if "state" in data and state not in ADMIN_STATES:
        raise ControlError(
            400,
            f"state must be one of {', '.join(map(repr, ADMIN_STATES))}, "
            f"not {json.dumps(state)}",
        )
    weight = data.get("weight")
    if "weight" in data and weight is not None:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ControlError(
                400,
                "weight must be an integer of at least 1 (or null for the "
                f"configured weight), not {json.dumps(weight)}",
            )
    return ServerChange(state=state, setWeight="weight" in data, weight=weight)


def _mediaType(value: bytes | None) -> bytes:
    return (value or b"").split(b";", 1)[0].strip().lower()


def checkWrite(request: Any) -> None:
    """
    Refuse a write that a web page of another site could have made a
    browser send: one whose body is not declared JSON (415), or whose
    C{Origin} (or C{Sec-Fetch-Site}) says it comes from elsewhere (403).

    @raise ControlError: If it is refused.
    """
    site = request.getHeader(b"sec-fetch-site")
    if site is not None and site.strip().lower() in (b"cross-site", b"same-site"):
        raise ControlError(403, "cross-site request refused")
    origin = request.getHeader(b"origin")
    if origin is not None:
        host = request.getHeader(b"host") or b""
        _, _, authority = origin.strip().lower().partition(b"://")
        if not authority or authority != host.strip().lower():
            raise ControlError(
                403, "cross-site request refused: Origin is not this site"
            )
    if _mediaType(request.getHeader(b"content-type")) != b"application/json":
        raise ControlError(
            415, "a change is a JSON body sent with Content-Type: application/json"
        )


def serverInfo(index: int, status: ServerStatus) -> dict[str, object]:
    """
    One server as the control API shows it.

    @param index: Its index among its pool's servers.
    """
    override = status.weightOverride
    weight = override if override is not None else status.weight
    return {
        "index": index,
        "id": quote(status.url, safe=""),
        "url": status.url,
        "state": status.adminState,
        "health": status.state,
        "serving": status.serving,
        "checked": status.checked,
        "removed": status.removed,
        "weight": weight,
        "configured_weight": status.weight,
        "weight_override": status.weightOverride,
        "effective_weight": round(status.effectiveWeight, 3),
        "in_flight": status.inFlight,
        "idle_connections": status.idleConnections,
        "requests": status.requests,
        "failures": status.failures,
        "ejected_until": status.ejectedUntil,
    }


def _poolInfo(pool: BackendPool) -> dict[str, object]:
    status = pool.status()
    return {
        "name": status.name,
        "balance": status.balance,
        "panic": status.panic,
        "pending": status.pending,
        "servers": [serverInfo(i, s) for i, s in enumerate(status.servers)],
    }


def _changed(before: ServerStatus, after: ServerStatus) -> dict[str, object]:
    changed: dict[str, object] = {}
    if before.adminState != after.adminState:
        changed["state"] = [before.adminState, after.adminState]
    if before.weightOverride != after.weightOverride:
        changed["weight"] = [
            before.weightOverride or before.weight,
            after.weightOverride or after.weight,
        ]
    return changed


def applyChange(pool: BackendPool, backend: Backend, change: ServerChange) -> None:
    """
    Make C{change} to C{pool}'s server C{backend}.

    @raise ControlError: (409) If the server left the pool's server set.
    """
    if backend.removed:
        raise ControlError(
            409,
            f"{backend.server.url} left the pool's server set: it drains until "
            "its last connection is gone",
        )
    if change.setWeight:
        pool.setServerWeight(backend, change.weight)
    if change.state is not None:
        pool.setServerState(backend, change.state)


def _statusOf(pool: BackendPool, backend: Backend) -> tuple[int, ServerStatus]:
    index = pool.servers.index(backend)
    return index, pool.status().servers[index]


Forward = Callable[[dict[str, Any]], Deferred[dict[int, dict[str, Any]]]]


class RuntimeControl:
    """
    The control API of one admin site, over the pools of the moment.

    @ivar changes: The latest changes made (newest last), for the page.
    """

    def __init__(
        self,
        pools: Callable[[], Mapping[str, BackendPool]],
        worker: Callable[[], int | None],
        forward: Forward | None = None,
    ) -> None:
        """
        @param pools: The running pools by name (they change on a reload).
        @param worker: This worker's index, or L{None} without workers.
        @param forward: Sends a command to every other worker, or L{None}.
        """
        self._pools = pools
        self._worker = worker
        self.forward = forward
        self.changes: deque[dict[str, object]] = deque(maxlen=100)

    def _pool(self, name: str) -> BackendPool:
        pool = self._pools().get(name)
        if pool is None:
            raise ControlError(404, f"no pool {name!r}")
        return pool

    def _server(self, pool: BackendPool, identifier: str) -> Backend:
        backend = pool.findServer(identifier)
        if backend is None:
            raise ControlError(
                404,
                f"pool {pool.name!r} has no server {identifier!r} (a server is "
                "named by its URL, percent-encoded, or its index)",
            )
        return backend

    def get(self, segments: list[str]) -> object:
        """
        What C{GET /pools/...} answers, by the path's segments after
        C{pools}.

        @raise ControlError: (404) For an unknown pool, server or path.
        """
        if not segments:
            return {"pools": [_poolInfo(p) for p in self._pools().values()]}
        pool = self._pool(segments[0])
        if len(segments) == 1:
            return _poolInfo(pool)
        if segments[1] != "servers" or len(segments) > 3:
            raise ControlError(404, "not found: try /pools/NAME/servers[/ID]")
        if len(segments) == 2:
            return _poolInfo(pool)["servers"]
        index, status = _statusOf(pool, self._server(pool, segments[2]))
        return serverInfo(index, status)

    def post(
        self, segments: list[str], body: bytes, user: str | None, address: str
    ) -> Deferred[tuple[int, object]]:
        """
        What C{POST /pools/NAME/servers/ID} answers: the change is made
        here, logged, remembered for the page, and sent to every other
        worker.

        @return: The status and the JSON answer: 200 when every worker made
            the change, 502 when some did not (the answer says which).
        @raise ControlError: For an unknown pool or server (404), a bad
            body (400), a server that left (409).
        """
        if len(segments) != 3 or segments[1] != "servers":
            raise ControlError(405, "only POST /pools/NAME/servers/ID changes")
        change = parseChange(body)
        pool = self._pool(segments[0])
        backend = self._server(pool, segments[2])
        _, before = _statusOf(pool, backend)
        applyChange(pool, backend, change)
        index, after = _statusOf(pool, backend)
        changed = _changed(before, after)
        url = backend.server.url
        _log.info(
            "Admin: {user} from {address} changed pool {pool} server {url}: {change}",
            user=user or "(no authentication)",
            address=address,
            pool=pool.name,
            url=url,
            change=json.dumps(change.asJSON()),
        )
        record: dict[str, object] = {
            "time": time.time(),
            "user": user,
            "address": address,
            "pool": pool.name,
            "server": url,
            "change": change.asJSON(),
            "changed": changed,
        }
        self.changes.append(record)
        answer: dict[str, object] = {
            "pool": pool.name,
            "server": serverInfo(index, after),
            "changed": changed,
        }
        worker = self._worker()
        if self.forward is None or worker is None:
            return succeed((200, answer))
        command = {
            "command": "change",
            "pool": pool.name,
            "server": url,
            "change": change.asJSON(),
            "user": user,
            "address": address,
        }

        def forwarded(answers: dict[int, dict[str, Any]]) -> tuple[int, object]:
            applied = [worker] + [i for i, a in answers.items() if a.get("ok")]
            failed = {
                str(i): str(a.get("error"))
                for i, a in answers.items()
                if not a.get("ok")
            }
            answer["workers"] = {"applied": sorted(applied), "failed": failed}
            record["workers"] = answer["workers"]
            if failed:
                _log.warn(
                    "Admin: the change of pool {pool} server {url} was not made "
                    "by workers {failed}",
                    pool=pool.name,
                    url=url,
                    failed=failed,
                )
                return 502, answer
            return 200, answer

        return self.forward(command).addCallback(forwarded)

    def command(self, command: dict[str, Any]) -> dict[str, Any]:
        """
        Answer a command from another worker (see
        L{twisted_rproxy.workercontrol}): C{change} (one made on the admin
        listener there) or C{overrides} (what L{overrides} says, for a
        worker starting again).
        """
        kind = command.get("command")
        if kind == "overrides":
            return {"ok": True, "overrides": self.overrides()}
        if kind != "change":
            return {"ok": False, "error": f"unknown command {kind!r}"}
        try:
            change = changeFrom(command.get("change"))
            pool = self._pool(str(command.get("pool")))
            backend = pool.findServer(str(command.get("server")))
            if backend is None or backend.server.url != command.get("server"):
                raise ControlError(404, f"no server {command.get('server')!r}")
            applyChange(pool, backend, change)
        except ControlError as e:
            return {"ok": False, "error": e.message}
        _log.info(
            "Admin (through worker control): {user} from {address} changed pool "
            "{pool} server {url}: {change}",
            user=command.get("user") or "(no authentication)",
            address=command.get("address"),
            pool=pool.name,
            url=backend.server.url,
            change=json.dumps(change.asJSON()),
        )
        return {"ok": True}

    def overrides(self) -> list[dict[str, object]]:
        """
        The run-time changes in force: each server not ready, or with a
        weight of its own.
        """
        found: list[dict[str, object]] = []
        for name, pool in self._pools().items():
            for backend in pool.servers:
                if backend.removed:
                    continue
                if backend.adminState == "ready" and backend.weightOverride is None:
                    continue
                found.append(
                    {
                        "pool": name,
                        "server": backend.server.url,
                        "change": {
                            "state": backend.adminState,
                            "weight": backend.weightOverride,
                        },
                    }
                )
        return found

    def adopt(self, overrides: object) -> int:
        """
        Make the changes another worker has in force (L{overrides}), for a
        worker started again after the others: what cannot be made (a
        pool or server this worker does not have) is skipped.

        @return: How many were made.
        """
        made = 0
        if not isinstance(overrides, list):
            return made
        for entry in overrides:
            if not isinstance(entry, dict):
                continue
            answer = self.command({"command": "change", **entry})
            made += 1 if answer.get("ok") else 0
        return made


def renderControl(
    control: RuntimeControl, request: Any, segments: list[str], user: str | None
) -> bytes | int:
    """
    Answer C{request} to the control API (the path's C{segments} after
    C{/pools}), made by C{user} (already authenticated).
    """
    request.setHeader(b"content-type", b"application/json")
    try:
        if request.method in (b"GET", b"HEAD"):
            return asJSON(control.get(segments))
        if request.method != b"POST":
            request.setHeader(b"allow", b"GET, HEAD, POST")
            raise ControlError(405, "use GET, or POST to change a server")
        checkWrite(request)
        body = request.content.read(MAX_BODY + 1)
        address = str(getattr(request.getClientAddress(), "host", "unknown"))
        changing = control.post(segments, body, user, address)
    except ControlError as e:
        request.setResponseCode(e.code)
        return asJSON({"error": e.message})
    gone: list[object] = []
    request.notifyFinish().addErrback(gone.append)

    def write(result: tuple[int, object]) -> None:
        code, answer = result
        if gone:
            return
        request.setResponseCode(code)
        request.write(asJSON(answer))
        request.finish()

    def failed(failure: Failure) -> None:
        _log.failure("Admin: cannot answer {path}", failure, path=request.path)
        if gone:
            return
        request.setResponseCode(500)
        request.write(asJSON({"error": "internal error, see the log"}))
        request.finish()

    changing.addCallback(write).addErrback(failed)
    done: int = NOT_DONE_YET
    return done


def certificatesInfo(service: object) -> list[dict[str, object]]:
    """
    Each certificate the C{[[tls]]} listeners of C{service} (a
    L{twisted_rproxy.service.ProxyService}) serve, once: its file, names,
    expiry and OCSP state (L{twisted_rproxy.tls.OCSPStatus.asJSON}; its
    C{state} is C{"off"} without stapling, C{"no responder"} when the
    certificate names none).
    """
    seen: dict[str, dict[str, object]] = {}
    for serverTLS in getattr(service, "tls", ()):
        stapler = serverTLS.ocsp
        for certificate in serverTLS.certificates:
            path = certificate.config.certificate
            if path in seen:
                listen = seen[path]["listen"]
                assert isinstance(listen, list)
                listen.extend(serverTLS.config.listen)
                continue
            status = stapler.statusOf(certificate) if stapler is not None else None
            if status is not None:
                ocsp = status.asJSON()
            else:
                ocsp = {"state": "off" if stapler is None else "no responder"}
            seen[path] = {
                "certificate": path,
                "names": list(certificate.names),
                "listen": list(serverTLS.config.listen),
                "not_after": certificate.notAfter.isoformat(),
                "not_after_timestamp": certificate.notAfter.timestamp(),
                "ocsp": ocsp,
            }
    return list(seen.values())


def acmeInfo(service: object) -> list[dict[str, object]]:
    """
    Each certificate obtained from the ACME CA of C{service} (a
    L{twisted_rproxy.service.ProxyService} with C{[acme]}): its domains,
    expiry, next renewal and last renewal attempt (times in seconds since
    the epoch, L{None} when there is none yet), and the last error.
    """
    manager = getattr(service, "acme", None)
    if manager is None:
        return []
    return [
        {
            "name": status.name,
            "domains": list(status.domains),
            "not_after": status.notAfter,
            "renew_at": status.renewAt,
            "last_attempt": status.lastAttempt,
            "last_success": status.lastSuccess,
            "last_error": status.lastError,
            "failures": status.failures,
        }
        for status in manager.status()
    ]


def pathSegments(path: bytes) -> list[str] | None:
    """
    The percent-decoded segments of an admin path under C{/pools}
    (C{/pools/app/servers/0} is C{["app", "servers", "0"]}), or L{None}
    for a path elsewhere.
    """
    parts = path.split(b"/")
    if len(parts) < 2 or parts[0] != b"" or parts[1] != b"pools":
        return None
    segments = parts[2:]
    if segments and segments[-1] == b"":
        segments = segments[:-1]
    return [unquote_to_bytes(s).decode("utf-8", "replace") for s in segments]


def asJSON(value: object) -> bytes:
    """
    C{value} as the API writes it.
    """
    return json.dumps(value, indent=2).encode("utf-8") + b"\n"
