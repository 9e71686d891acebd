"""
How worker processes see each other's counts, for totals over workers.

The supervisor (L{twisted_rproxy.workers.WorkerSupervisor}) makes a run
directory of its own at each start (mode 0700, empty) and names it to
every worker. In it, each worker (L{WorkerTotals}):

  - writes C{worker-N.json}, its counts (L{twisted_rproxy.totals}), about
    once a second and once more when it has stopped (after its drain), to
    a temporary file renamed over the old one, so that no reader ever sees
    half of one;
  - answers on the UNIX socket C{worker-N.sock} with its counts of the
    moment, so that the worker serving C{/metrics} adds up exact figures,
    not figures a second old.

The worker serving the admin page asks every sibling's socket (with a
timeout) and falls back to a sibling's file when it does not answer (it
died, or is restarting, or stuck): the counters of a dead worker stay in
the totals, and its gauges are left out. A worker started again in the
place of one that died begins from the counters in its predecessor's
file, so totals never go down.

Counting stays in memory: nothing here runs per request.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUNIX
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.totals import (
    Snapshot,
    WorkerSnapshot,
    carried,
    decodeSnapshot,
    encodeSnapshot,
    mergeSnapshots,
)

_log = Logger()

_NAME = re.compile(r"worker-(\d+)\.(?:json|sock)\Z")

#: The longest UNIX socket path (C{sun_path} is 108 bytes on Linux, 104 on
#: BSDs, with its terminating NUL).
MAX_SOCKET_PATH = 103


def listenPrivate(
    reactor: IReactorUNIX, path: str, factory: Factory, what: str, otherwise: str
) -> IListeningPort | None:
    """
    Listen on the UNIX socket C{path} (mode 0600), replacing a stale one.

    @param what: What the socket is for, starting the log lines.
    @param otherwise: What happens without it, ending the log line that
        says it could not be made.
    @return: The port, or L{None} (logged) if it could not listen.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        _log.error(
            "{what}: {path} is too long a socket path: {otherwise}",
            what=what,
            path=path,
            otherwise=otherwise,
        )
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        _log.error(
            "{what}: cannot remove {path}: {error}", what=what, path=path, error=e
        )
    try:
        port: IListeningPort = reactor.listenUNIX(path, factory, mode=0o600)
    except CannotListenError as e:
        _log.error(
            "{what}: cannot listen on {path} ({error}): {otherwise}",
            what=what,
            path=path,
            error=e,
            otherwise=otherwise,
        )
        return None
    return port



def snapshotPath(directory: str, worker: int) -> str:
    """
    The file worker C{worker} writes its counts to.
    """
    return os.path.join(directory, f"worker-{worker}.json")


def socketPath(directory: str, worker: int) -> str:
    """
    The UNIX socket worker C{worker} answers on.
    """
    return os.path.join(directory, f"worker-{worker}.sock")


def readSnapshot(path: str) -> WorkerSnapshot | None:
    """
    The counts a worker last wrote to C{path} (not live), or L{None} if it
    wrote none or what is there cannot be read (which is logged).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        _log.error("Cannot read worker counts {path}: {error}", path=path, error=e)
        return None
    try:
        return decodeSnapshot(data, live=False)
    except ValueError as e:
        _log.error("Ignoring worker counts {path}: {error}", path=path, error=e)
        return None


class AnswerReader(Protocol):
    """
    Sends C{request} (if any) to a sibling's socket, then reads its answer:
    everything it sends until it closes, at most C{limit} bytes.

    @ivar done: Fires with the answer, or fails (too long an answer).
    """

    def __init__(self, limit: int, request: bytes = b"") -> None:
        self.limit = limit
        self.request = request
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        if self.request:
            assert self.transport is not None
            self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.fail(ValueError(f"answer over {self.limit} bytes"))
            return
        self.chunks.append(data)

    def fail(self, error: BaseException) -> None:
        if not self.done.called:
            self.done.errback(Failure(error))
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done.called:
            self.done.callback(b"".join(self.chunks))


class _Tell(Protocol):
    """
    Tells whoever connects the worker's counts, then closes.
    """

    def __init__(self, answer: Callable[[], bytes]) -> None:
        self.answer = answer

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.answer())
        self.transport.loseConnection()


class _TellFactory(Factory):
    noisy = False

    def __init__(self, answer: Callable[[], bytes]) -> None:
        self.answer = answer

    def buildProtocol(self, addr: object) -> _Tell:
        protocol = _Tell(self.answer)
        protocol.factory = self
        return protocol


class WorkerTotals:
    """
    One worker's part in the totals over workers: it publishes its counts
    in the run directory and answers its siblings, and (in the worker
    serving the admin page) gathers everyone's.

    @ivar starts: How many processes had this worker's index, this one
        included.
    """

    #: Seconds between two writes of the counts file.
    interval = 1.0
    #: Seconds a sibling has to answer before its file is read instead.
    timeout = 1.0
    #: The largest answer read from a sibling, in bytes.
    maxAnswer = 64 * 1024 * 1024

    def __init__(
        self,
        reactor: IReactorUNIX,
        clock: IReactorTime,
        directory: str,
        worker: int,
        counts: Callable[[], Snapshot],
        wallClock: Callable[[], float] = time.time,
    ) -> None:
        """
        @param reactor: Where the UNIX sockets are.
        @param clock: What times the writes and the siblings' answers.
        @param directory: The run directory the supervisor made.
        @param worker: This worker's index.
        @param counts: This process's counts now (its own only: what its
            predecessors counted is added here).
        """
        self.reactor = reactor
        self.clock = clock
        self.directory = directory
        self.worker = worker
        self._counts = counts
        self._wallClock = wallClock
        self._carry: Snapshot = {}
        self.starts = 1
        self._loop: LoopingCall | None = None
        self._port: IListeningPort | None = None
        self._failing = False

    def start(self) -> None:
        """
        Take over what a predecessor of the same index counted, answer on
        the socket, and write the counts now and every L{interval}.
        """
        previous = readSnapshot(snapshotPath(self.directory, self.worker))
        if previous is not None:
            self._carry = carried(previous.counts)
            self.starts = previous.starts + 1
        self._listen()
        loop = self._loop = LoopingCall(self.publish)
        loop.clock = self.clock
        loop.start(self.interval, now=True).addErrback(
            lambda f: _log.failure("Worker counts: writing stopped", f)
        )

    def _listen(self) -> None:
        self._port = listenPrivate(
            self.reactor,
            socketPath(self.directory, self.worker),
            _TellFactory(self.answer),
            "Worker counts",
            f"totals use the counts files (up to {self.interval} s old)",
        )

    def current(self) -> WorkerSnapshot:
        """
        This worker's counts now, with what its predecessors counted.
        """
        return WorkerSnapshot(
            worker=self.worker,
            pid=os.getpid(),
            starts=self.starts,
            time=self._wallClock(),
            counts=mergeSnapshots([self._carry, self._counts()]),
        )

    def answer(self) -> bytes:
        """
        What a sibling asking is told: L{current}, encoded.
        """
        return encodeSnapshot(self.current())

    def publish(self) -> None:
        """
        Write the counts file (a failure is logged once until it works
        again; the counting goes on in memory).
        """
        path = snapshotPath(self.directory, self.worker)
        temporary = f"{path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "wb") as f:
                f.write(self.answer())
            os.replace(temporary, path)
        except OSError as e:
            if not self._failing:
                self._failing = True
                _log.error(
                    "Worker counts: cannot write {path}: {error}", path=path, error=e
                )
            return
        if self._failing:
            self._failing = False
            _log.info("Worker counts: writing {path} again", path=path)

    def stop(self) -> Deferred[None]:
        """
        Write the counts a last time, and stop answering.
        """
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self.publish()
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        path = socketPath(self.directory, self.worker)

        def removeSocket(result: object) -> None:
            try:
                os.unlink(path)
            except OSError:
                pass

        return maybeDeferred(port.stopListening).addBoth(removeSocket)

    def _indices(self) -> set[int]:
        try:
            names = os.listdir(self.directory)
        except OSError as e:
            _log.error(
                "Worker counts: cannot list {path}: {error}",
                path=self.directory,
                error=e,
            )
            names = []
        indices = {self.worker}
        for name in names:
            match = _NAME.match(name)
            if match is not None:
                indices.add(int(match.group(1)))
        return indices

    def collect(self) -> Deferred[list[WorkerSnapshot]]:
        """
        Every worker's counts, by index: this one's now, each sibling's as
        it answers, or as its file says when it does not (then not live).
        A worker that has written nothing yet is left out.
        """
        asking: list[Deferred[WorkerSnapshot | None]] = []
        for index in sorted(self._indices()):
            if index == self.worker:
                asking.append(succeed(self.current()))
            else:
                asking.append(self._ask(index))
        gathered: Deferred[list[WorkerSnapshot | None]] = gatherResults(asking)
        return gathered.addCallback(lambda found: [s for s in found if s is not None])

    def _ask(self, index: int) -> Deferred[WorkerSnapshot | None]:
        def fromFile(_: object = None) -> WorkerSnapshot | None:
            return readSnapshot(snapshotPath(self.directory, index))

        path = socketPath(self.directory, index)
        if not os.path.exists(path):
            return succeed(fromFile())
        protocol = AnswerReader(self.maxAnswer)
        endpoint = UNIXClientEndpoint(self.reactor, path, timeout=self.timeout)
        factory = Factory.forProtocol(lambda: protocol)
        factory.noisy = False
        connecting = endpoint.connect(factory)
        connecting.addErrback(lambda failure: protocol.fail(failure.value))
        timer = self.clock.callLater(
            self.timeout, protocol.fail, TimeoutError(f"worker {index}: no answer")
        )

        def decoded(data: bytes) -> WorkerSnapshot | None:
            snapshot = decodeSnapshot(data)
            if snapshot.worker != index:
                raise ValueError(f"worker {snapshot.worker} answered for {index}")
            return snapshot

        def cancelTimer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        def failed(failure: Failure) -> WorkerSnapshot | None:
            _log.debug(
                "Worker {index} did not answer ({error}): its file is used",
                index=index,
                error=failure.value,
            )
            return fromFile()

        done: Deferred[Any] = protocol.done
        return done.addBoth(cancelTimer).addCallback(decoded).addErrback(failed)
