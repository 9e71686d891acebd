"""
Worker processes sharing the listening sockets, as nginx's master and
workers do.

The supervising process (L{WorkerSupervisor}) opens every listening socket
of the configuration, never accepts on them itself, and starts N workers
(C{twistd rproxy} again, with the sockets passed as inherited file
descriptors, which each worker adopts with C{adoptStreamPort}): the kernel
spreads new connections among the workers. A worker that dies is started
again; SIGTERM closes the listening sockets (new connections are refused
at once) and stops every worker gracefully (each drains its requests),
SIGHUP and SIGUSR1 are passed on (reload, reopen the logs).

The admin listener is given to the first worker only. Its page and
C{/metrics} show the totals over every worker, and each worker's figures:
the supervisor makes a run directory for the workers' counts at each
start (removed when it stops), which each worker publishes to and the
first one reads (L{twisted_rproxy.peers}, L{WorkerService}).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.config import Config
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.listening import listeningDescription, releaseListener
from twisted_rproxy.peers import WorkerTotals

_log = Logger()

#: The first file descriptor number the listening sockets get in a worker.
FIRST_FD = 3

#: How a worker is started: twistd's entry point, under this interpreter.
_TWISTD = (
    "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
)

#: The signals passed on to the workers. A worker starts with them blocked
#: (see L{WorkerSupervisor._spawn}) and unblocks them once its handlers are
#: installed (L{twisted_rproxy.tap.makeService}): one sent while it starts
#: waits for the handler instead of killing it (the default action), and is
#: not lost either (a reload still reads a configuration written after the
#: worker read its own).
FORWARDED_SIGNALS = frozenset({signal.SIGHUP, signal.SIGUSR1})


def listenerDescriptions(config: Config) -> tuple[list[str], list[str]]:
    """
    The endpoints the supervisor opens: those of the proxy (plain, then
    TLS), and those of the admin listener.
    """
    proxy = list(config.server.listen) + [
        description for group in config.tls for description in group.listen
    ]
    admin = list(config.admin.listen) if config.admin is not None else []
    return proxy, admin


def workerCommand(
    rproxyArguments: Sequence[str],
    listeners: dict[str, tuple[int, int]],
    index: int,
    stateDirectory: str | None = None,
) -> list[str]:
    """
    The command line of worker C{index}.

    @param rproxyArguments: The options of C{twistd rproxy} that name the
        configuration (C{--config FILE}, or the command-line mode's).
    @param listeners: Endpoint description to (file descriptor in the
        worker, address family).
    @param stateDirectory: The run directory of the workers' counts.
    """
    state = [] if stateDirectory is None else ["--worker-state", stateDirectory]
    return [
        sys.executable,
        "-c",
        _TWISTD,
        "--nodaemon",
        "--pidfile=",
        "rproxy",
        *rproxyArguments,
        "--worker-listeners",
        json.dumps(listeners),
        "--worker-index",
        str(index),
        *state,
    ]


class _Worker(ProcessProtocol):
    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self.startedAt = supervisor.reactor.seconds()

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
        self.supervisor.workerEnded(self, reason)


class WorkerSupervisor(Service):
    """
    Opens the listening sockets and keeps C{count} workers running on them.

    @ivar workers: The running workers' L{ProcessProtocol}s, by index.
    @ivar stateDirectory: The run directory of the workers' counts while it
        runs (see L{twisted_rproxy.peers}), else L{None}.
    """

    #: Seconds before a worker that died young is started again.
    restartDelay = 1.0

    def __init__(
        self,
        reactor: IProxyReactor,
        config: Config,
        rproxyArguments: Sequence[str],
        count: int,
    ) -> None:
        self.reactor = reactor
        self.config = config
        self.rproxyArguments = list(rproxyArguments)
        self.count = count
        self.workers: dict[int, _Worker] = {}
        self._ports: list[IListeningPort] = []
        #: The supervisor's descriptor of each listening socket, by the
        #: number it has in a worker.
        self._fds: dict[int, int] = {}
        self._proxyListeners: dict[str, tuple[int, int]] = {}
        self._adminListeners: dict[str, tuple[int, int]] = {}
        self._stopping = False
        self.stateDirectory: str | None = None

    def startService(self) -> None:
        """
        Open the listening sockets, then start the workers.
        """
        Service.startService(self)
        proxy, admin = listenerDescriptions(self.config)
        for group, target in (
            (proxy, self._proxyListeners),
            (admin, self._adminListeners),
        ):
            for description in group:
                port = self._open(description)
                childFD = FIRST_FD + len(self._fds)
                self._fds[childFD] = port.fileno()  # type: ignore[attr-defined]
                target[description] = (childFD, port.addressFamily)  # type: ignore[attr-defined]
        # A new, empty directory at each start: no count of an earlier run
        # is added to this one's. Private (0700) to the user running us.
        self.stateDirectory = tempfile.mkdtemp(prefix="twisted_rproxy-workers-")
        _log.info(
            "Supervisor {pid}: starting {count} workers (their counts in "
            "{directory})",
            pid=os.getpid(),
            count=self.count,
            directory=self.stateDirectory,
        )
        for index in range(self.count):
            self._spawn(index)

    def _open(self, description: str) -> IListeningPort:
        failures: list[Failure] = []
        ports: list[IListeningPort] = []
        endpoint = serverFromString(
            self.reactor, listeningDescription(self.config.server, description)
        )
        listening = endpoint.listen(Factory.forProtocol(Protocol))
        listening.addCallbacks(ports.append, failures.append)
        if failures:
            failures[0].raiseException()
        if not ports or not hasattr(ports[0], "fileno"):
            raise ValueError(
                f"worker processes need socket endpoints (tcp:...), not {description!r}"
            )
        port = ports[0]
        # The workers accept; the supervisor only holds the socket open.
        port.stopReading()  # type: ignore[attr-defined]
        self._ports.append(port)
        return port

    def _spawn(self, index: int) -> None:
        listeners = dict(self._proxyListeners)
        if index == 0:
            listeners.update(self._adminListeners)
        childFDs: dict[int, object] = {0: "w", 1: 1, 2: 2}
        # Only the sockets it adopts: one it held without using would stay
        # open (listening) as long as it runs.
        for childFD, _ in listeners.values():
            childFDs[childFD] = self._fds[childFD]
        worker = _Worker(self, index)
        command = workerCommand(
            self.rproxyArguments, listeners, index, self.stateDirectory
        )
        # The signal mask is inherited across fork and exec (Twisted resets
        # ignored signals in the child, not blocked ones). Here, a signal
        # that comes meanwhile is handled once the mask is restored.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
        try:
            self.reactor.spawnProcess(  # type: ignore[attr-defined]
                worker, command[0], command, env=dict(os.environ), childFDs=childFDs
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.workers[index] = worker
        _log.info(
            "Worker {index} started, pid {pid}",
            index=index,
            pid=worker.transport.pid,  # type: ignore[union-attr]
        )

    def workerEnded(self, worker: _Worker, reason: Failure) -> None:
        """
        A worker ended: start another unless the supervisor is stopping.
        """
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping:
            return
        _log.warn(
            "Worker {index} ended ({reason}); starting another",
            index=worker.index,
            reason=reason.value,
        )
        young = self.reactor.seconds() - worker.startedAt < self.restartDelay
        self.reactor.callLater(
            self.restartDelay if young else 0, self._respawn, worker.index
        )

    def _respawn(self, index: int) -> None:
        if not self._stopping and index not in self.workers:
            self._spawn(index)

    def signalWorkers(self, signum: int) -> None:
        """
        Send C{signum} to every worker (SIGHUP: reload; SIGUSR1: reopen the
        access log).
        """
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(signum)  # type: ignore[union-attr]
            except Exception:  # the process may have just ended
                pass

    def workerPIDs(self) -> list[int]:
        """
        The process IDs of the running workers.
        """
        return [w.transport.pid for w in self.workers.values()]  # type: ignore[union-attr]

    def stopService(self) -> Deferred[Any]:
        """
        Close the listening sockets, and stop every worker gracefully
        (SIGTERM: each stops accepting too, then drains its requests),
        killing those still running after the drain timeout and a margin.

        The supervisor closes its descriptors at once and each worker stops
        listening as its graceful stop begins, so the sockets close and new
        connections are refused at once, as by a single process that
        stops, instead of waiting until the drain ends in a queue nobody
        accepts from. (The sockets are closed, not shut down: a worker
        still polling one would meet EINVAL in accept.)
        """
        Service.stopService(self)
        self._stopping = True
        ports, self._ports = self._ports, []
        self._fds = {}
        stopped = [releaseListener(port) for port in ports]
        ended = [worker.ended for worker in self.workers.values()]
        self.signalWorkers(signal.SIGTERM)
        kill = self.reactor.callLater(
            self.config.server.drainTimeout + 5, self.signalWorkers, signal.SIGKILL
        )

        def cancelKill(result: object) -> object:
            if kill.active():
                kill.cancel()
            return result

        def removeState(result: object) -> object:
            directory, self.stateDirectory = self.stateDirectory, None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            return result

        waiting = [d for d in stopped if d is not None] + ended
        return DeferredList(waiting).addBoth(cancelKill).addBoth(removeState)


class WorkerService(Service):
    """
    What a worker process runs: its proxy, and its part in the totals over
    workers (L{WorkerTotals}), which starts before the proxy listens and
    writes its counts a last time once the proxy has drained, so that the
    requests finished during the drain are in them.
    """

    def __init__(self, proxy: IService, totals: WorkerTotals) -> None:
        self.proxy = proxy
        self.totals = totals

    def privilegedStartService(self) -> None:
        """
        Let the proxy do what needs privileges.
        """
        Service.privilegedStartService(self)
        self.proxy.privilegedStartService()

    def startService(self) -> None:
        """
        Start publishing the counts, then the proxy.
        """
        Service.startService(self)
        self.totals.start()
        self.proxy.startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop the proxy (its drain included), then write the counts a last
        time.
        """
        Service.stopService(self)
        stopping: Deferred[object] = maybeDeferred(self.proxy.stopService)

        def publish(result: object) -> Deferred[None]:
            if isinstance(result, Failure):
                _log.failure("Worker: the proxy did not stop cleanly", result)
            return self.totals.stop().addCallback(lambda _: None)

        return stopping.addBoth(publish)
