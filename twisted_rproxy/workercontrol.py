"""
How a change made on the admin listener (which the first worker serves)
reaches every worker process.

Beside its counts socket (L{twisted_rproxy.peers}), each worker answers
on C{worker-N.control.sock} in the run directory the supervisor made
(mode 0700; the socket 0600): a client sends one JSON object and a
newline, the worker answers one JSON object and closes. What the
commands are, and what they do, is the admin's (L{ControlListener} is
handed a function); this module only carries them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUNIX
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.peers import AnswerReader, listenPrivate

__all__ = ["ControlListener", "askWorkers", "controlSocketPath"]

_log = Logger()

_NAME = re.compile(r"worker-(\d+)\.control\.sock\Z")

#: The largest command or answer, in bytes.
MAX_MESSAGE = 1024 * 1024

#: A command's answer: a JSON object.
Answer = dict[str, Any]


def controlSocketPath(directory: str, worker: int) -> str:
    """
    The UNIX socket worker C{worker} takes commands on.
    """
    return os.path.join(directory, f"worker-{worker}.control.sock")


def _decode(data: bytes) -> Answer:
    value = json.loads(data.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


class _Command(Protocol):
    """
    Reads one command (a JSON object and a newline), answers it, closes.
    """

    def __init__(self, handler: Callable[[Answer], Answer]) -> None:
        self.handler = handler
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        end = self.buffer.find(b"\n")
        if end < 0:
            if len(self.buffer) > MAX_MESSAGE:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        line, self.buffer = self.buffer[:end], b""
        try:
            answer = self.handler(_decode(line))
        except ValueError as e:
            answer = {"ok": False, "error": f"bad command: {e}"}
        except Exception as e:
            _log.failure("Worker control: a command failed")
            answer = {"ok": False, "error": f"internal error: {e}"}
        self.transport.write(json.dumps(answer).encode("utf-8") + b"\n")
        self.transport.loseConnection()


class _CommandFactory(Factory):
    noisy = False

    def __init__(self, handler: Callable[[Answer], Answer]) -> None:
        self.handler = handler

    def buildProtocol(self, addr: object) -> _Command:
        protocol = _Command(self.handler)
        protocol.factory = self
        return protocol


class ControlListener:
    """
    A worker's control socket: each command is handed to C{handler}, which
    answers it (synchronously).
    """

    def __init__(
        self,
        reactor: IReactorUNIX,
        directory: str,
        worker: int,
        handler: Callable[[Answer], Answer],
    ) -> None:
        self.reactor = reactor
        self.path = controlSocketPath(directory, worker)
        self.handler = handler
        self._port: IListeningPort | None = None

    def start(self) -> bool:
        """
        Listen (a failure is logged: changes then reach this worker only
        through its own admin listener, which it does not serve).

        @return: Whether it listens.
        """
        self._port = listenPrivate(
            self.reactor,
            self.path,
            _CommandFactory(self.handler),
            "Worker control",
            "run-time changes made on the admin listener will not reach this worker",
        )
        return self._port is not None

    def stop(self) -> Deferred[None]:
        """
        Stop listening, and remove the socket.
        """
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        path = self.path

        def removed(result: object) -> None:
            try:
                os.unlink(path)
            except OSError:
                pass

        stopping: Deferred[object] = maybeDeferred(port.stopListening)
        return stopping.addBoth(removed)


def _workers(directory: str) -> list[int]:
    try:
        names = os.listdir(directory)
    except OSError as e:
        _log.error(
            "Worker control: cannot list {path}: {error}", path=directory, error=e
        )
        return []
    found = []
    for name in names:
        match = _NAME.match(name)
        if match is not None:
            found.append(int(match.group(1)))
    return sorted(found)


def askWorkers(
    reactor: IReactorUNIX,
    clock: IReactorTime,
    directory: str,
    worker: int,
    command: Answer,
    timeout: float = 2.0,
) -> Deferred[dict[int, Answer]]:
    """
    Send C{command} to every other worker with a control socket in
    C{directory}, at once.

    @param worker: This worker's index (not asked).
    @param timeout: Seconds each worker has to answer.
    @return: Each worker's answer by index; one that did not answer (it
        died, is restarting, is stuck) or answered nonsense has
        C{{"ok": False, "error": ...}}. It never fails.
    """
    encoded = json.dumps(command).encode("utf-8") + b"\n"
    indices = [index for index in _workers(directory) if index != worker]
    asking = [
        _ask(reactor, clock, controlSocketPath(directory, index), encoded, timeout)
        for index in indices
    ]
    gathered: Deferred[list[Answer]] = gatherResults(asking)

    def byIndex(answers: list[Answer]) -> dict[int, Answer]:
        return dict(zip(indices, answers, strict=True))

    return gathered.addCallback(byIndex)


def _ask(
    reactor: IReactorUNIX,
    clock: IReactorTime,
    path: str,
    command: bytes,
    timeout: float,
) -> Deferred[Answer]:
    protocol = AnswerReader(MAX_MESSAGE, command)
    endpoint = UNIXClientEndpoint(reactor, path, timeout=int(max(timeout, 1)))
    factory = Factory.forProtocol(lambda: protocol)
    factory.noisy = False
    endpoint.connect(factory).addErrback(lambda failure: protocol.fail(failure.value))
    timer = clock.callLater(timeout, protocol.fail, TimeoutError("no answer"))

    def cancelTimer(result: Any) -> Any:
        if timer.active():
            timer.cancel()
        return result

    def failed(failure: Failure) -> Answer:
        error = failure.value
        return {"ok": False, "error": str(error) or type(error).__name__}

    done: Deferred[Any] = protocol.done
    return done.addBoth(cancelTimer).addCallback(_decode).addErrback(failed)
