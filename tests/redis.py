"""
L{RedisServer}: a real C{redis-server} of the test's own, on a free
127.0.0.1 port, with nothing saved to disk; and L{requireRedis}, which
skips a test without C{redis-server} on C{PATH} (and fails it in CI, which
must install it: C{.ci/run} does).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import BinaryIO

from tests.fixtures import freePort
from tests.loopback import LOCALHOST

#: Seconds a server has to answer C{PING} after it is started.
START_TIMEOUT = 10.0


def redisServerPath() -> str | None:
    """
    The C{redis-server} on C{PATH}, or L{None}.
    """
    return shutil.which("redis-server")


def requireRedis() -> str:
    """
    The C{redis-server} to run.

    @raise unittest.SkipTest: Without one, unless C{CI} is set.
    @raise AssertionError: Without one when C{CI} is set.
    """
    path = redisServerPath()
    if path is not None:
        return path
    if os.environ.get("CI"):
        raise AssertionError(
            "redis-server is not on PATH: CI must install it (.ci/run does, "
            "with apt-get install redis-server)"
        )
    from twisted.trial.unittest import SkipTest

    raise SkipTest("redis-server is not installed")


def _encode(*args: bytes | str | int) -> bytes:
    """
    One command in RESP, Redis' protocol.
    """
    out = b"*%d\r\n" % (len(args),)
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out += b"$%d\r\n%s\r\n" % (len(data), data)
    return out


def _readReply(f: BinaryIO) -> object:
    """
    Read one RESP reply: L{bytes} for a status or bulk string (L{None} for
    nil), L{int}, a L{list}, or a L{RedisReplyError} (returned, not raised).
    """
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        return f.read(length + 2)[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_readReply(f) for _ in range(count)]
    raise ConnectionError(f"unexpected reply {line!r}")


class RedisReplyError(Exception):
    """
    An error reply of redis-server to L{RedisServer.command}.
    """


def _command(
    port: int, password: str | None, timeout: float, *args: bytes | str | int
) -> object:
    """
    Send one command (after C{AUTH}) to 127.0.0.1:C{port} and return its
    reply, blocking for at most C{timeout} seconds.
    """
    with socket.create_connection((LOCALHOST, port), timeout=timeout) as s:
        f = s.makefile("rb")
        if password is not None:
            s.sendall(_encode("AUTH", password))
            reply = _readReply(f)
            if isinstance(reply, RedisReplyError):
                raise reply
        s.sendall(_encode(*args))
        return _readReply(f)


class RedisServer:
    """
    One C{redis-server} process on 127.0.0.1, stopped by L{stop} (by its
    PID, so only this one).

    @ivar port: Its port.
    @ivar password: Its C{requirepass}, or L{None}.
    @ivar socketPath: The Unix socket it also listens on, or L{None}.
    @ivar process: The running process, or L{None} once stopped.
    """

    def __init__(
        self,
        password: str | None = None,
        port: int | None = None,
        unixSocket: bool = False,
    ) -> None:
        self.executable = requireRedis()
        self.password = password
        self.port = port if port is not None else freePort()
        self.directory = tempfile.mkdtemp(prefix="rproxy-redis-")
        self.socketPath = (
            os.path.join(self.directory, "redis.sock") if unixSocket else None
        )
        self.process: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """
        Its C{redis://} URL (with the password, if any).
        """
        auth = f":{self.password}@" if self.password is not None else ""
        return f"redis://{auth}{LOCALHOST}:{self.port}/0"

    @property
    def pid(self) -> int:
        """
        The process' ID.
        """
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def start(self) -> RedisServer:
        """
        Start the server and wait until it answers C{PING}.

        @return: C{self}.
        @raise AssertionError: If it does not answer within
            L{START_TIMEOUT}.
        """
        assert self.process is None, "already running"
        arguments = [
            self.executable,
            "--port",
            str(self.port),
            "--bind",
            LOCALHOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.directory,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ]
        if self.password is not None:
            arguments += ["--requirepass", self.password]
        if self.socketPath is not None:
            arguments += ["--unixsocket", self.socketPath, "--unixsocketperm", "700"]
        self.process = subprocess.Popen(
            arguments,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise AssertionError(f"redis-server exited at once (status {code})")
            try:
                reply = _command(self.port, self.password, 1.0, "PING")
            except (OSError, RedisReplyError):
                reply = b""
            if reply == b"PONG" and (
                self.socketPath is None or os.path.exists(self.socketPath)
            ):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"redis-server on port {self.port} did not answer PING "
                    f"within {START_TIMEOUT:g} s"
                )
            time.sleep(0.02)

    def command(self, *args: bytes | str | int) -> object:
        """
        Run one command on the server, over a connection of its own (and
        blocking: for checks from tests, not for load).

        @return: The reply (see L{_readReply}).
        @raise RedisReplyError: For an error reply.
        """
        reply = _command(self.port, self.password, 5.0, *args)
        if isinstance(reply, RedisReplyError):
            raise reply
        return reply

    def stop(self) -> None:
        """
        Kill the server (continuing it first if it is paused) and wait for
        it to exit.
        """
        process, self.process = self.process, None
        if process is None:
            return
        if self._paused:
            self.resume(process.pid)
        process.kill()
        process.wait(timeout=10)

    def restart(self) -> None:
        """
        Stop the server, then start a new one on the same port (and with
        the same password): its data is gone, its scripts too.
        """
        self.stop()
        self.start()

    def pause(self) -> None:
        """
        Stop the process (C{SIGSTOP}): connections still open, nothing
        answered; the "hung server" case.
        """
        os.kill(self.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self, pid: int | None = None) -> None:
        """
        Continue a paused process (C{SIGCONT}).
        """
        os.kill(pid if pid is not None else self.pid, signal.SIGCONT)
        self._paused = False

    def cleanUp(self) -> None:
        """
        Stop the server and remove its directory.
        """
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
