"""
L{ServerControl}: what changes a pool's servers while it runs, the admin
states and weights of its servers (set on the admin listener) and the
server set itself (DNS discovery), as a part of
L{twisted_rproxy.pool.BackendPool}.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from attrs import evolve
from twisted.logger import Logger

from twisted_rproxy.health import WEIGHT_SCALE
from twisted_rproxy.pool.backend import ADMIN_STATES, MAINTENANCE, READY, Backend
from twisted_rproxy.tls import CertificateError, backendConnectionCreators

if TYPE_CHECKING:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    from twisted_rproxy.config import BackendServer, PoolConfig
    from twisted_rproxy.pool.health import HealthChecker, OutlierDetector, SlowStart

__all__ = ["ServerControl", "serverIdentity"]

_log = Logger()


def serverIdentity(server: BackendServer) -> BackendServer:
    """
    What makes two entries the same server: everything but how its URL was
    written, its weight and its priority (its scheme, host and port, or its
    socket path).
    """
    return evolve(server, url="", weight=1, priority=0)


class ServerControl(ABC):
    """
    The run-time changes of a pool's servers, an abstract base of
    L{BackendPool}: what it holds that these read is declared here, and the
    three methods of the pool they call are abstract.
    """

    name: str
    config: PoolConfig
    closed: bool
    servers: list[Backend]
    _checker: HealthChecker | None
    _outlier: OutlierDetector | None
    _slowStart: SlowStart | None
    _tlsCreators: dict[BackendServer, IOpenSSLClientConnectionCreator]
    _leaving: list[Backend]

    @abstractmethod
    def healthChanged(self, cameBack: Backend | None = None) -> None:
        """
        Recompute which servers serve (L{BackendPool.healthChanged}).
        """

    @abstractmethod
    def _beginSlowStart(self, backend: Backend) -> None:
        """
        Start C{backend} light, if the pool has slow start.
        """

    @abstractmethod
    def _newBackend(self, server: BackendServer) -> Backend:
        """
        A L{Backend} of this pool for C{server}.
        """

    def findServer(self, identifier: str) -> Backend | None:
        """
        The server called C{identifier}: its URL as the status shows it
        (C{"http://127.0.0.1:8001"}), or its index in L{servers} (from 0,
        which changes as servers join and leave: the URL does not).

        @return: The server, or L{None} when the pool has no such server.
        """
        for backend in self.servers:
            if backend.server.url == identifier:
                return backend
        if identifier.isdecimal() and identifier.isascii():
            index = int(identifier)
            if index < len(self.servers):
                return self.servers[index]
        return None

    def setServerState(self, backend: Backend, state: str) -> None:
        """
        Put C{backend} in admin state C{state}:

          - C{"ready"}: it takes requests (when healthy);
          - C{"drain"}: it takes no new request; those in flight finish,
            its idle connections close now and the others as their
            exchanges end; its health checks go on;
          - C{"maintenance"}: the same, and its health checks stop. When
            it is ready again, a pool with health checks keeps it out
            until its first check (made at once) passes.

        A server that is ready again slow starts, if the pool slow starts
        servers.

        @raise ValueError: If C{state} is not one of these, or C{backend}
            is not (or no longer) one of the pool's servers.
        """
        if state not in ADMIN_STATES:
            raise ValueError(
                f"unknown state {state!r}: expected one of {', '.join(ADMIN_STATES)}"
            )
        if backend not in self.servers or backend.removed:
            raise ValueError(
                f"{backend.server.url} left the pool's servers: it drains until "
                "its connections are gone"
            )
        old = backend.adminState
        if state == old:
            return
        backend.adminState = state
        checker = self._checker
        if checker is not None:
            if state == MAINTENANCE:
                checker.stopServer(backend)
            elif old == MAINTENANCE and checker.running:
                # Its health was not watched: unknown until checked again.
                health = self.config.health
                backend.up = False
                backend.checkStreak = max(health.rise - 1, 0) if health else 0
                checker.startServer(backend)
        cameBack = backend if state == READY and backend.up else None
        self.healthChanged(cameBack=cameBack)

    def setServerWeight(self, backend: Backend, weight: int | None) -> None:
        """
        Give C{backend} the weight C{weight} in place of its configured one
        (L{None}: the configured one again). A server in a slow start
        ramps up to it.

        @raise ValueError: If C{weight} is not an integer of at least 1.
        """
        if weight is not None and (
            isinstance(weight, bool) or not isinstance(weight, int) or weight < 1
        ):
            raise ValueError(f"a weight is an integer of at least 1, not {weight!r}")
        backend.weightOverride = weight
        self._reweigh(backend)

    def _reweigh(self, backend: Backend) -> None:
        if self._slowStart is not None:
            self._slowStart.reweigh(backend)
        else:
            backend.weight = backend.baseWeight * WEIGHT_SCALE

    def resetServers(self) -> None:
        """
        Undo every run-time change of state and weight (what a reload
        does): every server is ready, at its configured weight.
        """
        for backend in list(self.servers):
            if backend.removed:
                continue
            if backend.weightOverride is not None:
                self.setServerWeight(backend, None)
            if backend.adminState != READY:
                self.setServerState(backend, READY)

    def updateServers(self, servers: Sequence[BackendServer]) -> None:
        """
        Make C{servers} the pool's server set (DNS discovery does, at each
        answer).

        A server new to the pool joins (it slow starts if the pool slow
        starts servers; it is health checked if the pool has checks); a
        server still there keeps its state, counters and connections (and
        takes a new weight); a server that left drains: it takes no new
        request, its idle connections close now and the others as their
        exchanges end, and it is forgotten once its last connection is
        gone (it is in L{servers} and the status until then). A server is
        the same as another if only the spelling of its URL or its weight
        differ (L{serverIdentity}); of two entries of one server, the
        first counts. An empty C{servers} drains every server.

        A new C{https} server whose TLS settings cannot be made (the
        pool's CA file is gone, say) is left out, and that is logged.
        """
        if self.closed:
            return
        wanted: dict[BackendServer, BackendServer] = {}
        for server in servers:
            wanted.setdefault(serverIdentity(server), server)
        current = {serverIdentity(b.server): b for b in self.servers}
        self._addTLSCreators(
            [s for key, s in wanted.items() if key not in current]
            + [s for key, s in wanted.items() if key in current],
            current,
        )
        joined: list[Backend] = []
        checker = self._checker
        for key, server in wanted.items():
            backend = current.get(key)
            if backend is None:
                if server.scheme == "https" and server not in self._tlsCreators:
                    continue
                backend = self._newBackend(server)
                self.servers.append(backend)
                joined.append(backend)
                _log.info(
                    "Pool {pool}: server {url} joins", pool=self.name, url=server.url
                )
                continue
            if backend.server != server:
                backend.server = server
                self._reweigh(backend)
            if backend.removed:
                backend.removed = False
                self._leaving.remove(backend)
                joined.append(backend)
                _log.info(
                    "Pool {pool}: server {url} is back before it was gone",
                    pool=self.name,
                    url=server.url,
                )
        for key, backend in current.items():
            if key in wanted or backend.removed:
                continue
            backend.removed = True
            self._leaving.append(backend)
            for forgetting in (checker, self._outlier, self._slowStart):
                if forgetting is not None:
                    forgetting.forget(backend)
            _log.info(
                "Pool {pool}: server {url} left: it drains ({inFlight} requests "
                "in flight)",
                pool=self.name,
                url=backend.server.url,
                inFlight=backend.inFlight,
            )
        if checker is not None:
            for backend in joined:
                checker.startServer(backend)
        self.healthChanged()
        for backend in joined:
            if backend.accepting:
                self._beginSlowStart(backend)
        self._dropGone()

    def _addTLSCreators(
        self, servers: Sequence[BackendServer], current: dict[BackendServer, Backend]
    ) -> None:
        """
        Make the TLS connection creators of the C{https} C{servers} that
        have none: the one of a server of the same host if there is one,
        else new ones.
        """
        creators = self._tlsCreators
        missing = [s for s in servers if s.scheme == "https" and s not in creators]
        if not missing:
            return
        byIdentity = {serverIdentity(s): c for s, c in creators.items()}
        new = []
        for server in missing:
            known = byIdentity.get(serverIdentity(server))
            if known is not None:
                creators[server] = known
            else:
                new.append(server)
        if not new:
            return
        try:
            made = backendConnectionCreators(evolve(self.config, servers=tuple(new)))
        except CertificateError as e:
            _log.error(
                "Pool {pool}: new https servers {urls} left out: {error}",
                pool=self.name,
                urls=", ".join(s.url for s in new),
                error=str(e),
            )
            return
        creators.update(made)

    def _dropGone(self) -> None:
        """
        Forget the servers that left and have no connection left.
        """
        gone = [b for b in self._leaving if b.openConnections == 0]
        if not gone:
            return
        for backend in gone:
            self._leaving.remove(backend)
            self.servers.remove(backend)
            _log.info(
                "Pool {pool}: server {url} is gone (drained)",
                pool=self.name,
                url=backend.server.url,
            )
        kept = {b.server for b in self.servers}
        for server in [s for s in self._tlsCreators if s not in kept]:
            del self._tlsCreators[server]
