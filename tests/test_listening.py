"""
Tests for L{twisted_rproxy.listening}: the listen queue length (backlog) of
every listener, from the endpoint description to the kernel's socket.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import tempfile
from typing import Any

import trustme
from twisted.internet import reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, sleep
from tests.loopback import LOCALHOST
from twisted_rproxy.config import (
    ConfigError,
    ListenerConfig,
    ServerConfig,
    loadConfig,
    parseConfig,
)
from twisted_rproxy.listening import (
    DEFAULT_BACKLOG,
    listeningDescription,
    withBacklog,
)
from twisted_rproxy.service import ProxyService
from twisted_rproxy.workers import WorkerSupervisor


class WithBacklogTests(SynchronousTestCase):
    """
    L{withBacklog} adds a C{backlog} to the endpoint types that take one,
    unless the description gives its own.
    """

    def test_added(self) -> None:
        """
        C{tcp}, C{tcp6}, C{unix} and C{ssl} descriptions get C{backlog=N}.
        """
        for description in (
            "tcp:8080",
            "tcp:8080:interface=127.0.0.1",
            "TCP:8080",
            "tcp6:8080:interface=\\:\\:1",
            "unix:/run/rproxy.sock:mode=660",
            "ssl:8443:privateKey=k.pem:certKey=c.pem",
            "tcp:port=8080",
        ):
            self.assertEqual(
                withBacklog(description, 511), description + ":backlog=511"
            )

    def test_descriptionWins(self) -> None:
        """
        A description that gives a backlog, as a keyword or positionally,
        is left as it is.
        """
        for description in (
            "tcp:8080:backlog=10",
            "tcp:8080:backlog=10:interface=127.0.0.1",
            "tcp:8080:127.0.0.1:10",
            "tcp6:8080:10",
            "unix:/run/rproxy.sock:660:10",
        ):
            self.assertEqual(withBacklog(description, 511), description)

    def test_escapedColons(self) -> None:
        """
        An escaped colon does not split an argument: the backslashes are
        read as Twisted reads them.
        """
        # "backlog" inside an escaped value is not a backlog argument.
        description = "unix:/run/a\\:backlog=3"
        self.assertEqual(withBacklog(description, 99), description + ":backlog=99")
        # Nor is an escaped "=" a keyword: these are the address and the
        # mode, and the backlog (third) is not given.
        self.assertEqual(
            withBacklog("unix:/run/backlog\\=3:660", 99),
            "unix:/run/backlog\\=3:660:backlog=99",
        )

    def test_otherTypesUntouched(self) -> None:
        """
        Endpoint types whose parser takes no backlog (systemd, plugins) are
        left as they are.
        """
        for description in ("systemd:domain=INET:index=0", "le:/certs:tcp:443"):
            self.assertEqual(withBacklog(description, 511), description)

    def test_listeningDescription(self) -> None:
        """
        A listener's own C{backlog} is used; without one, the default, 511.
        """
        server = ServerConfig(
            listen=("tcp:8080", "tcp:8081"),
            listeners={"tcp:8081": ListenerConfig(backlog=2048)},
        )
        self.assertEqual(DEFAULT_BACKLOG, 511)
        self.assertEqual(
            listeningDescription(server, "tcp:8080"), "tcp:8080:backlog=511"
        )
        self.assertEqual(
            listeningDescription(server, "tcp:8081"), "tcp:8081:backlog=2048"
        )


def _tlsFiles(case: SynchronousTestCase) -> str:
    """
    A certificate and key file made by trustme, removed at clean-up.
    """
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "site.pem")
    trustme.CA().issue_cert("example.com").private_key_and_cert_chain_pem.write_to_path(
        path
    )

    def remove() -> None:
        os.remove(path)
        os.rmdir(directory)

    case.addCleanup(remove)
    return path


class BacklogConfigTests(SynchronousTestCase):
    """
    The C{backlog} key of a listener table, in C{[server]} and C{[[tls]]}.
    """

    def test_serverListener(self) -> None:
        """
        A C{[server] listen} table's C{backlog} is read.
        """
        config = parseConfig(
            {
                "server": {
                    "listen": ["tcp:8080", {"endpoint": "tcp:8081", "backlog": 4096}]
                },
                "routes": [{"static": "."}],
            },
            "f.toml",
            ".",
        )
        self.assertEqual(config.server.listen, ("tcp:8080", "tcp:8081"))
        self.assertEqual(config.server.listeners["tcp:8081"].backlog, 4096)
        self.assertNotIn("tcp:8080", config.server.listeners)

    def test_tlsListener(self) -> None:
        """
        A C{[[tls]] listen} entry may be a table too; its settings (backlog,
        access rules...) are found with C{[server]}'s listeners.
        """
        pem = _tlsFiles(self)
        config = parseConfig(
            {
                "server": {"listen": ["tcp:8080"]},
                "tls": [
                    {
                        "listen": [
                            "tcp:8443",
                            {
                                "endpoint": "tcp:8444",
                                "backlog": 1024,
                                "allow": ["10.0.0.0/8"],
                            },
                        ],
                        "certificates": [pem],
                    }
                ],
                "routes": [{"static": "."}],
            },
            "f.toml",
            ".",
        )
        self.assertEqual(config.tls[0].listen, ("tcp:8443", "tcp:8444"))
        self.assertEqual(config.server.listeners["tcp:8444"].backlog, 1024)
        # Its other settings are a listener's too (see listenerPolicy).
        self.assertEqual(config.server.listeners["tcp:8444"].allow, ("10.0.0.0/8",))
        self.assertEqual(
            listeningDescription(config.server, "tcp:8444"), "tcp:8444:backlog=1024"
        )
        self.assertEqual(
            listeningDescription(config.server, "tcp:8443"), "tcp:8443:backlog=511"
        )

    def test_tlsListenerBringingTLS(self) -> None:
        """
        A C{[[tls]]} listener table whose endpoint brings its own TLS is
        refused, as a string is.
        """
        pem = _tlsFiles(self)
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            {
                "tls": [
                    {
                        "listen": ["tcp:8443", {"endpoint": "ssl:8444"}],
                        "certificates": [pem],
                    }
                ],
                "routes": [{"static": "."}],
            },
            "f.toml",
            ".",
        )
        self.assertEqual(error.key, "tls[0].listen[1]")
        self.assertIn("brings its own TLS", error.message)

    def test_badBacklog(self) -> None:
        """
        A backlog that is not a whole number from 1 to 65535 is refused,
        naming the key.
        """
        for value, message in (
            (0, "at least 1"),
            (70000, "at most 65535"),
            ("511", "expected an integer"),
            (True, "expected an integer"),
        ):
            error = self.assertRaises(
                ConfigError,
                parseConfig,
                {
                    "server": {"listen": [{"endpoint": "tcp:8081", "backlog": value}]},
                    "routes": [{"static": "."}],
                },
                "f.toml",
                ".",
            )
            self.assertEqual(error.key, "server.listen[0].backlog")
            self.assertIn(message, error.message)


async def acceptQueueLength(port: int, attempts: int) -> int:
    """
    Open C{attempts} connections at once to 127.0.0.1:C{port}, whose
    listener must not be accepting; return how many the kernel completed.

    Linux completes the handshake of a connection while the socket's queue
    of connections not yet accepted has room (C{backlog} + 1 of them) and
    drops the SYN of the others, which stay unconnected (they would try
    again only after a second).
    """
    if not sys.platform.startswith("linux"):
        raise SkipTest("counts the listen queue as Linux fills it")
    clients = []
    try:
        for _ in range(attempts):
            client = socket.socket()
            clients.append(client)
            client.setblocking(False)
            client.connect_ex((LOCALHOST, port))
        # Well under the second after which the dropped SYNs are sent again
        # (they would be dropped again: the queue stays full).
        await sleep(0.3)
        poller = select.poll()
        for client in clients:
            poller.register(client, select.POLLOUT)
        writable = {fd for fd, _ in poller.poll(0)}
        return sum(
            1
            for client in clients
            if client.fileno() in writable
            and client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        )
    finally:
        for client in clients:
            client.close()


def _somaxconn() -> int:
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            return int(f.read())
    except OSError:
        return 0


class BacklogLoopbackTests(LoopbackTestCase):
    """
    The proxy's listening sockets have the configured backlog, as the kernel
    sees it: a burst of connections that nobody accepts yet fills the queue
    up to it.
    """

    async def startPaused(self, data: dict[str, Any]) -> list[Any]:
        """
        Start a L{ProxyService} for the configuration C{data}, and stop its
        listeners from accepting.

        @return: The listening ports.
        """
        data.setdefault("routes", [{"static": "."}])
        service = ProxyService(parseConfig(data, "test", "."), reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = await service.whenListening()
        for port in ports:
            port.stopReading()  # type: ignore[attr-defined]
        return ports

    @asyncTest
    async def test_defaultBacklog(self) -> None:
        """
        Without a C{backlog}, a burst of 300 connections all wait in the
        queue (Twisted's default of 50 would complete 51 of them).
        """
        if _somaxconn() < 300:
            raise SkipTest("net.core.somaxconn caps the backlog under 300")
        [port] = await self.startPaused(
            {"server": {"listen": ["tcp:0:interface=127.0.0.1"]}}
        )
        self.assertEqual(await acceptQueueLength(port.getHost().port, 300), 300)

    @asyncTest
    async def test_listenerBacklog(self) -> None:
        """
        A listener table's C{backlog} is its socket's: with 20, 21
        connections of a burst complete (the queue holds one more than the
        backlog); an endpoint's own C{backlog=} wins over the table's.
        """
        plain, own = await self.startPaused(
            {
                "server": {
                    "listen": [
                        {"endpoint": "tcp:0:interface=127.0.0.1", "backlog": 20},
                        {
                            "endpoint": "tcp:0:interface=127.0.0.1:backlog=5",
                            "backlog": 100,
                        },
                    ]
                }
            }
        )
        self.assertEqual(await acceptQueueLength(plain.getHost().port, 60), 21)
        self.assertEqual(await acceptQueueLength(own.getHost().port, 60), 6)

    @asyncTest
    async def test_tlsListenerBacklog(self) -> None:
        """
        A C{[[tls]]} listener table's C{backlog} is its socket's.
        """
        pem = _tlsFiles(self)
        _, secure = await self.startPaused(
            {
                "server": {"listen": ["tcp:0:interface=127.0.0.1"]},
                "tls": [
                    {
                        "listen": [
                            {
                                "endpoint": "tcp:port=0:interface=127.0.0.1",
                                "backlog": 30,
                            }
                        ],
                        "certificates": [pem],
                    }
                ],
            }
        )
        self.assertEqual(await acceptQueueLength(secure.getHost().port, 80), 31)

    @asyncTest
    async def test_supervisorSockets(self) -> None:
        """
        With worker processes, the sockets the supervisor opens for them
        have the listeners' backlogs (it never accepts on them itself).
        """
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write(
                '[server]\nlisten = ["tcp:0:interface=127.0.0.1", '
                '{ endpoint = "tcp:port=0:interface=127.0.0.1", backlog = 40 }]\n'
                "workers = 2\n"
                '[[routes]]\nstatic = "."\n'
            )
        config = loadConfig(path)
        supervisor = WorkerSupervisor(reactor, config, ["--config", path], 2)
        ports = [supervisor._open(description) for description in config.server.listen]
        self.addCleanup(lambda: [port.stopListening() for port in ports])
        default, configured = (port.getHost().port for port in ports)
        self.assertEqual(await acceptQueueLength(configured, 100), 41)
        if _somaxconn() >= 300:
            self.assertEqual(await acceptQueueLength(default, 300), 300)
