"""
Unix-socket backends (C{http://unix:/PATH} and C{https://unix:/PATH}): the
loopback tests of TCP backends run again with every backend on a unix socket
in a temporary directory (L{UnixBackends} swaps the backend), then what is
particular to them: a twisted.web C{Site} on C{unix:}, a socket that goes
away and comes back under active health checks, outlier ejection, a
WebSocket tunnel, https with C{tls_server_name}, C{--check} warnings and the
real C{twistd rproxy}; and unit tests of the dialling on a memory reactor.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXServerEndpoint
from twisted.internet.protocol import ClientFactory, Factory
from twisted.internet.ssl import CertificateOptions
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import tests.test_integration as integration
import tests.test_operations as operations
import tests.test_reliability as reliability
from tests.fixtures import (
    TWISTD,
    LoopbackTestCase,
    TwistdProcess,
    asyncTest,
    sleep,
    twistdEnvironment,
    url,
)
from tests.loopback import RecordedRequest, RecordingBackend, Reply, echoReply
from twisted_rproxy import _twisted, tap
from twisted_rproxy.config import (
    BackendServer,
    Config,
    HealthCheckConfig,
    OutlierConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    backendServers,
    parseConfig,
    unixSocketWarnings,
)
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.pool.dial import connectServer
from twisted_rproxy.service import ProxyService
from twisted_rproxy.tls import CertificateError, backendConnectionCreators

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

#: Where the synthetic "port numbers" of unix backends start: far from
#: anything the tests compare them with.
_FIRST_KEY = 61000


def socketDirectory(case: SynchronousTestCase) -> str:
    """
    A new temporary directory for sockets, removed at clean-up; short, as a
    socket path must be (at most 107 bytes on Linux).
    """
    directory = tempfile.mkdtemp(prefix="rpx-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def unixServer(path: str, scheme: str = "http") -> BackendServer:
    """
    The L{BackendServer} of C{scheme://unix:PATH}, as the configuration
    parses it.
    """
    (server,) = backendServers([f"{scheme}://unix:{path}"])
    return server


class UnixRecordingBackend(RecordingBackend):
    """
    A L{RecordingBackend} listening on a unix socket. Its C{portNumber} is
    a key that L{UnixBackends.startProxy} turns back into its socket.
    """

    def __init__(
        self,
        reactor: Any,
        handler: Callable[[RecordedRequest], Reply],
        path: str,
        key: int,
    ) -> None:
        super().__init__(reactor, handler)
        self.path = path
        self.key = key

    @property
    def portNumber(self) -> int:
        return self.key

    async def start(self) -> RecordingBackend:
        """
        Listen on the socket C{path}.
        """
        self.port = await UNIXServerEndpoint(self.reactor, self.path).listen(self)
        return self


class UnixBackends(LoopbackTestCase):
    """
    Backends on unix sockets instead of 127.0.0.1: C{startBackend} listens
    on a socket, and C{startProxy} takes the keys its backends give as
    C{portNumber} (or L{missingSocket}'s) and builds a pool of
    C{http://unix:} servers. Mixed in before a TCP test case, it runs that
    case's tests against unix-socket backends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.socketDirectory = socketDirectory(self)
        self._sockets: dict[int, str] = {}

    def _newSocket(self, name: str) -> tuple[int, str]:
        key = _FIRST_KEY + len(self._sockets)
        path = os.path.join(self.socketDirectory, f"{name}{len(self._sockets)}.sock")
        self._sockets[key] = path
        return key, path

    def missingSocket(self) -> int:
        """
        The key of a socket path where nothing is.
        """
        key, _ = self._newSocket("missing")
        return key

    async def startBackend(
        self, handler: Callable[[RecordedRequest], Reply] = echoReply
    ) -> RecordingBackend:
        key, path = self._newSocket("backend")
        backend = UnixRecordingBackend(reactor, handler, path, key)
        await backend.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(backend.stop()))
        return backend

    async def startProxy(
        self,
        *ports: int,
        server: dict[str, Any] | None = None,
        **poolOptions: Any,
    ) -> int:
        pool = PoolConfig(
            name="app",
            servers=tuple(unixServer(self._sockets[key]) for key in ports),
            **poolOptions,
        )
        return await self.startConfig(
            Config(
                source="test",
                server=ServerConfig(
                    listen=("tcp:0:interface=127.0.0.1",), **(server or {})
                ),
                pools={"app": pool},
                routes=(RouteConfig(path="/", pool="app"),),
            )
        )

    async def startConfig(self, config: Config) -> int:
        """
        Run a L{ProxyService} of C{config}; return the port it listens on.
        """
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        listening = await service.whenListening()
        port: int = listening[0].getHost().port
        return port

    def assertNothingRevealed(self, body: bytes, port: int) -> None:
        """
        The proxy's error page names no socket, path or address.
        """
        for secret in (b"unix", b".sock", self.socketDirectory.encode(), b"127.0.0.1"):
            self.assertNotIn(secret, body)


# The TCP loopback tests, again with unix-socket backends.


class UnixPassThroughTests(UnixBackends, integration.PassThroughTests):
    """
    L{integration.PassThroughTests} with a unix-socket backend.
    """

    @asyncTest
    async def test_hostHeaderBackend(self) -> None:
        """
        With C{hostHeader="backend"} a unix-socket backend sees
        C{Host: localhost}, as nginx sends its unix upstreams.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, hostHeader="backend")
        response = await self.httpClient().get(
            url(port, "/h"), headers={b"Host": b"example.test"}
        )
        self.assertEqual(response.code, 200)
        await response.content()
        [request] = backend.requests
        self.assertEqual(request.header(b"host"), [b"localhost"])
        self.assertEqual(request.header(b"x-forwarded-host"), [b"example.test"])


class UnixKeepAliveTests(UnixBackends, integration.KeepAliveTests):
    """
    L{integration.KeepAliveTests} with a unix-socket backend: one backend
    connection for sequential requests, a bounded number for concurrent
    ones, pipelining in order.
    """


class UnixBackendFailureTests(UnixBackends, integration.BackendFailureTests):
    """
    L{integration.BackendFailureTests} with a unix-socket backend: 502 and
    504 pages that say nothing of the socket.
    """

    @asyncTest
    async def test_closedPortIs502(self) -> None:
        """
        No socket file where the backend should listen: 502, without the
        path in the page or its headers.
        """
        port = await self.startProxy(self.missingSocket(), connectTimeout=2.0)
        response = await self.httpClient().get(url(port, "/"))
        body = await response.content()
        self.assertEqual(response.code, 502)
        self.assertNothingRevealed(body, 0)
        self.assertNothingRevealed(
            b" ".join(v for _, vs in response.headers.getAllRawHeaders() for v in vs),
            0,
        )


class UnixResponseFramingTests(UnixBackends, integration.ResponseFramingTests):
    """
    L{integration.ResponseFramingTests} with a unix-socket backend.
    """


class UnixRequestBodyTests(UnixBackends, integration.RequestBodyTests):
    """
    L{integration.RequestBodyTests} with a unix-socket backend.
    """


class UnixBackendClosingTests(UnixBackends, integration.BackendClosingTests):
    """
    L{integration.BackendClosingTests} with a unix-socket backend: closed
    kept-alive connections are retried when they may be, never a POST.
    """


class UnixSlotLeakTests(UnixBackends, reliability.SlotLeakTests):
    """
    L{reliability.SlotLeakTests} with a unix-socket backend: the pool keeps
    its slots however its connections end.
    """


# What is particular to unix-socket backends.


class _Info(Resource):
    """
    Answers every request with its C{Host} header and path, as JSON.
    """

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        host = (request.getHeader(b"host") or b"").decode()
        return json.dumps({"host": host, "path": request.path.decode()}).encode()


class _CountingSite(Site):
    """
    A twisted.web L{Site} that counts the connections it accepts.
    """

    def __init__(self) -> None:
        super().__init__(_Info())
        self.connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


async def until(
    predicate: Callable[[], bool], timeout: float = 5.0, what: str = ""
) -> None:
    """
    Wait, a bounded time, until C{predicate} holds.

    @raise AssertionError: If it does not within C{timeout} seconds.
    """
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await sleep(0.01)
    raise AssertionError(f"timed out waiting for {what or predicate!r}")


class UnixBackendTests(UnixBackends):
    """
    A unix-socket backend is pooled, checked, ejected and tunnelled to like
    a TCP one.
    """

    async def listenSite(self, site: Site) -> str:
        """
        Serve C{site} on a new socket; return its path.
        """
        _, path = self._newSocket("site")
        port = await UNIXServerEndpoint(reactor, path).listen(site)
        self.addCleanup(port.stopListening)
        return path

    async def startURLProxy(
        self, urls: list[str], extra: str = "", **server: Any
    ) -> int:
        """
        Run a proxy whose pool is given as the configuration file gives it.
        """
        servers = ", ".join(json.dumps(u) for u in urls)
        text = (
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            + "".join(f"{k} = {json.dumps(v)}\n" for k, v in server.items())
            + f"[pools.app]\nservers = [{servers}]\n{extra}\n"
            '[[routes]]\npool = "app"\n'
        )
        config = parseConfig(tomllib.loads(text), "test.toml", self.socketDirectory)
        return await self.startConfig(config)

    @asyncTest
    async def test_twistedWebSiteKeptAlive(self) -> None:
        """
        A twisted.web C{Site} on a unix socket serves 20 sequential
        requests over one connection; C{host_header = "backend"} sends it
        C{localhost}.
        """
        site = _CountingSite()
        path = await self.listenSite(site)
        port = await self.startURLProxy(
            [f"http://unix:{path}"], 'host_header = "backend"'
        )
        client = self.httpClient()
        for i in range(20):
            response = await client.get(url(port, f"/n{i}"))
            self.assertEqual(response.code, 200)
            body = json.loads(await response.content())
            self.assertEqual(body, {"host": "localhost", "path": f"/n{i}"})
        self.assertEqual(site.connections, 1)

    @asyncTest
    async def test_backendGoneIs502(self) -> None:
        """
        A backend that stops (its socket file removed) and one whose socket
        file is left behind with nothing listening both get the client a
        502 page that names no path; the backend back on its socket is used
        again.
        """
        backend = await self.startBackend()
        port = await self.startProxy(backend.portNumber, connectTimeout=2.0)
        client = self.httpClient()
        response = await client.get(url(port, "/up"))
        self.assertEqual(await response.content(), b"/up")
        await backend.stop()
        self.assertFalse(os.path.exists(backend.path))
        response = await client.get(url(port, "/gone"))
        body = await response.content()
        self.assertEqual(response.code, 502)
        self.assertNothingRevealed(body, 0)
        # A stale socket file: a backend that died without removing it.
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(backend.path)
        stale.close()
        response = await client.get(url(port, "/stale"))
        body = await response.content()
        self.assertEqual(response.code, 502)
        self.assertNothingRevealed(body, 0)
        os.unlink(backend.path)
        again = UnixRecordingBackend(reactor, echoReply, backend.path, backend.key)
        await again.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(again.stop()))
        response = await client.get(url(port, "/back"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"/back")
        self.assertEqual([r.target for r in again.requests], [b"/back"])

    @asyncTest
    async def test_backendClosingEveryResponse(self) -> None:
        """
        A backend that closes its connection after every response: each of
        15 sequential requests is answered, on a connection of its own.
        """
        backend = await self.startBackend(
            lambda request: Reply(
                body=request.target,
                headers=[(b"Connection", b"close")],
                closeAfter=True,
            )
        )
        port = await self.startProxy(backend.portNumber, maxConnections=1)
        client = self.httpClient()
        for i in range(15):
            response = await client.get(url(port, f"/c{i}"))
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), f"/c{i}".encode())
        self.assertEqual(backend.accepted, 15)

    @asyncTest
    async def test_healthChecksDialTheSocket(self) -> None:
        """
        Active health checks reach the backend on its socket: it is marked
        down when it stops, the pool answers 503 then, and it is marked up
        and served again once it listens on its socket again.
        """
        backend = await self.startBackend()
        port = await self.startProxy(
            backend.portNumber,
            health=HealthCheckConfig(
                path="/health", interval=0.05, timeout=0.05, rise=1, fall=1
            ),
            panicThreshold=0,
        )
        [pool] = self._backendPools
        [server] = pool.servers
        await until(
            lambda: any(r.target == b"/health" for r in backend.requests),
            what="a health check on the socket",
        )
        self.assertEqual(backend.requests[0].header(b"host"), [b"localhost"])
        self.assertTrue(server.up)
        await backend.stop()
        await until(lambda: not server.up, what="the server marked down")
        client = self.httpClient()
        response = await client.get(url(port, "/down"))
        await response.content()
        self.assertEqual(response.code, 503)
        again = UnixRecordingBackend(reactor, echoReply, backend.path, backend.key)
        await again.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(again.stop()))
        await until(lambda: server.up, what="the server marked up again")
        response = await client.get(url(port, "/up"))
        self.assertEqual(response.code, 200)
        self.assertEqual(await response.content(), b"/up")

    @asyncTest
    async def test_outlierEjectedAndRetried(self) -> None:
        """
        Of two unix-socket servers, the one whose socket is missing is
        ejected after its first failure and its request retried on the
        other: every client request succeeds.
        """
        backend = await self.startBackend()
        port = await self.startProxy(
            self.missingSocket(),
            backend.portNumber,
            outlier=OutlierConfig(consecutiveFailures=1, baseEjection=30),
            retries=1,
        )
        [pool] = self._backendPools
        missing, working = pool.servers
        client = self.httpClient()
        for i in range(10):
            response = await client.get(url(port, f"/r{i}"))
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), f"/r{i}".encode())
        self.assertTrue(missing.ejected)
        self.assertEqual(missing.failures, 1)
        self.assertFalse(working.ejected)
        self.assertEqual(len(backend.requests), 10)

    @asyncTest
    async def test_webSocketTunnel(self) -> None:
        """
        A WebSocket upgrade is tunnelled to a unix-socket backend (with
        C{Host: localhost} for C{host_header = "backend"}): 101, then frames
        both ways.
        """
        heads: list[bytes] = []

        class Recording(operations._EchoWebSocket):
            def dataReceived(self, data: bytes) -> None:
                heads.append(data)
                super().dataReceived(data)

        _, path = self._newSocket("ws")
        listening = await UNIXServerEndpoint(reactor, path).listen(
            Factory.forProtocol(Recording)
        )
        self.addCleanup(listening.stopListening)
        port = await self.startURLProxy(
            [f"http://unix:{path}"], 'host_header = "backend"'
        )
        client = await self.rawClient(port)
        client.write(
            b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        received = await client.waitFor(lambda d: b"\r\n\r\n" in d, reactor, 5)
        self.assertTrue(received.startswith(b"HTTP/1.1 101 "), received)
        self.assertIn(b"\r\nHost: localhost\r\n", heads[0])
        client.received = b""
        client.write(operations.clientFrame(b"over a unix socket"))
        echoed = await client.waitFor(
            lambda d: d.endswith(b"over a unix socket"), reactor, 5
        )
        self.assertEqual(echoed, b"\x81\x12over a unix socket")
        client.transport.loseConnection()

    @asyncTest
    async def test_urlAsWrittenInAccessLogAndStatus(self) -> None:
        """
        The access log (JSON) and the pool's status name a unix-socket
        server by its URL as written.
        """
        backend = await self.startBackend()
        written = f"http://UNIX:{backend.path}"
        logPath = os.path.join(self.socketDirectory, "access.log")
        port = await self.startURLProxy(
            [written], access_log=logPath, access_log_format="json"
        )
        response = await self.httpClient().get(url(port, "/logged"))
        self.assertEqual(await response.content(), b"/logged")
        [pool] = self._backendPools
        self.assertEqual([s.url for s in pool.status().servers], [written])
        await until(lambda: os.path.exists(logPath) and os.path.getsize(logPath) > 0)
        with open(logPath) as f:
            record = json.loads(f.readline())
        self.assertEqual(record["upstream"], written)


class UnixHTTPSBackendTests(UnixBackends):
    """
    C{https://unix:} servers: TLS over the socket, verified against
    C{tls_server_name}, which SNI sends.
    """

    def setUp(self) -> None:
        super().setUp()
        self.ca = trustme.CA()
        self.caPath = os.path.join(self.socketDirectory, "ca.pem")
        self.ca.cert_pem.write_to_path(self.caPath)

    async def startTLSBackend(self, *names: str) -> tuple[UnixRecordingBackend, list]:
        """
        A L{UnixRecordingBackend} behind TLS with a certificate for
        C{names}; and the list of the SNI names its clients send.
        """
        leaf = self.ca.issue_cert(*names)
        options = CertificateOptions(
            **_twisted.certificateOptions(
                x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),
                serialization.load_pem_private_key(
                    leaf.private_key_pem.bytes(), password=None
                ),
            )
        )
        sent: list[bytes | None] = []
        options.getContext().set_tlsext_servername_callback(
            lambda connection: sent.append(connection.get_servername())
        )
        key, path = self._newSocket("tls")
        backend = UnixRecordingBackend(reactor, echoReply, path, key)
        backend.port = await UNIXServerEndpoint(reactor, path).listen(
            TLSMemoryBIOFactory(options, False, backend)
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(backend.stop()))
        return backend, sent

    async def startTLSProxy(self, servers: str, extra: str) -> int:
        text = (
            '[server]\nlisten = ["tcp:0:interface=127.0.0.1"]\n'
            f"[pools.app]\nservers = [{servers}]\n"
            f'tls_ca = "ca.pem"\n{extra}\n[[routes]]\npool = "app"\n'
        )
        config = parseConfig(tomllib.loads(text), "test.toml", self.socketDirectory)
        return await self.startConfig(config)

    @asyncTest
    async def test_verifiedAndKeptAlive(self) -> None:
        """
        With the pool's C{tls_server_name}, the backend's certificate for
        that name is verified, SNI sends it, sequential requests share one
        TLS connection, and health checks speak TLS over the socket too.
        """
        backend, sent = await self.startTLSBackend("app.internal")
        port = await self.startTLSProxy(
            json.dumps(f"https://unix:{backend.path}"),
            'tls_server_name = "app.internal"\n'
            '[pools.app.health]\npath = "/health"\ninterval = "50ms"\n'
            'timeout = "50ms"\nrise = 1\nfall = 1\n',
        )
        await until(
            lambda: any(r.target == b"/health" for r in backend.requests),
            what="a health check over TLS",
        )
        before = backend.accepted
        client = self.httpClient()
        for i in range(5):
            response = await client.get(url(port, f"/tls{i}"))
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), f"/tls{i}".encode())
        proxied = [r for r in backend.requests if r.target.startswith(b"/tls")]
        self.assertEqual(len({r.connectionId for r in proxied}), 1)
        # Health checks have connections of their own; the requests one.
        self.assertLessEqual(backend.accepted - before, 1 + 5 * 2)
        self.assertTrue(sent)
        self.assertEqual(set(sent), {b"app.internal"})

    @asyncTest
    async def test_entryServerName(self) -> None:
        """
        A server entry's own C{tls_server_name} is the name verified and
        sent, before the pool's.
        """
        backend, sent = await self.startTLSBackend("one.internal")
        entry = json.dumps(f"https://unix:{backend.path}")
        port = await self.startTLSProxy(
            f'{{ url = {entry}, tls_server_name = "one.internal" }}',
            'tls_server_name = "pool.internal"',
        )
        _, responses = await self.rawExchange(
            port, b"GET /entry HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual((responses[0].status, responses[0].body), (200, b"/entry"))
        self.assertEqual(sent, [b"one.internal"])

    @asyncTest
    async def test_wrongName(self) -> None:
        """
        A certificate for another name: 502, and nothing reaches the
        backend.
        """
        backend, _ = await self.startTLSBackend("other.internal")
        port = await self.startTLSProxy(
            json.dumps(f"https://unix:{backend.path}"),
            'tls_server_name = "app.internal"',
        )
        _, responses = await self.rawExchange(
            port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 502)
        self.assertNothingRevealed(responses[0].body, 0)
        self.assertEqual(backend.requests, [])


class CheckCommandTests(SynchronousTestCase):
    """
    C{--check} warns of a unix-socket backend whose socket is missing or is
    not a socket, and refuses a malformed C{unix:} URL.
    """

    def setUp(self) -> None:
        self.directory = socketDirectory(self)
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def check(self, servers: str, extra: str = "") -> int:
        path = os.path.join(self.directory, "rproxy.toml")
        with open(path, "w") as f:
            f.write(
                f"[pools.app]\nservers = [{servers}]\n{extra}\n"
                '[[routes]]\npool = "app"\n'
            )
        with self.assertRaises(SystemExit) as raised:
            tap.Options().parseOptions(["--check", "--config", path])
        code = raised.exception.code
        assert isinstance(code, int)
        return code

    def test_missingSocketWarns(self) -> None:
        """
        A socket file that does not exist: status 0, a warning naming the
        file, the key and the URL, and the configuration is OK.
        """
        missing = os.path.join(self.directory, "app.sock")
        self.assertEqual(self.check(f'"http://unix:{missing}"'), 0)
        error = self.err.getvalue()
        self.assertEqual(error.count("\n"), 1, error)
        self.assertIn(
            f"rproxy.toml: warning: pools.app.servers[0]: http://unix:{missing}: "
            f"the socket {missing} does not exist (yet)",
            error,
        )
        self.assertIn("configuration OK", self.out.getvalue())

    def test_notASocketWarns(self) -> None:
        """
        A regular file or a directory where the socket should be: a warning
        each, and status 0.
        """
        regular = os.path.join(self.directory, "file.sock")
        with open(regular, "w"):
            pass
        directory = os.path.join(self.directory, "dir.sock")
        os.mkdir(directory)
        code = self.check(f'"http://unix:{regular}", "http://unix:{directory}"')
        self.assertEqual(code, 0)
        error = self.err.getvalue()
        self.assertIn(
            f"pools.app.servers[0]: http://unix:{regular}: {regular} is not a "
            "unix socket but a regular file",
            error,
        )
        self.assertIn(
            f"pools.app.servers[1]: http://unix:{directory}: {directory} is not "
            "a unix socket but a directory",
            error,
        )

    def test_socketNoWarning(self) -> None:
        """
        A socket file: no warning (whether anything listens is not
        checked).
        """
        path = os.path.join(self.directory, "app.sock")
        listening = socket.socket(socket.AF_UNIX)
        self.addCleanup(listening.close)
        listening.bind(path)
        self.assertEqual(self.check(f'"http://unix:{path}"'), 0)
        self.assertEqual(self.err.getvalue(), "")

    def test_malformedIsAnError(self) -> None:
        """
        A relative socket path: status 1, one line naming the file and the
        key, no traceback.
        """
        self.assertEqual(self.check('"http://unix:run/app.sock"'), 1)
        error = self.err.getvalue()
        self.assertEqual(error.count("\n"), 1, error)
        self.assertIn("rproxy.toml: pools.app.servers[0]: the socket path", error)
        self.assertIn("must be absolute", error)
        self.assertNotIn("Traceback", error)

    def test_httpsWithoutNameIsAnError(self) -> None:
        """
        C{https://unix:} without a C{tls_server_name}: status 1, naming the
        server's key.
        """
        path = os.path.join(self.directory, "app.sock")
        self.assertEqual(self.check(f'"https://unix:{path}"'), 1)
        self.assertIn(
            "rproxy.toml: pools.app.servers[0]: 'https://unix:", self.err.getvalue()
        )
        self.assertIn("tls_server_name", self.err.getvalue())

    def test_warningsFunction(self) -> None:
        """
        L{unixSocketWarnings} says nothing of TCP servers.
        """
        config = Config(
            source="c",
            server=ServerConfig(),
            pools={
                "tcp": PoolConfig(
                    name="tcp", servers=backendServers(["http://127.0.0.1:1"])
                )
            },
            routes=(RouteConfig(pool="tcp"),),
        )
        self.assertEqual(unixSocketWarnings(config), [])


class TwistdTests(UnixBackends):
    """
    The real C{twistd rproxy} in front of a unix-socket backend.
    """

    @asyncTest
    async def test_commandLineBackend(self) -> None:
        """
        C{twistd -n rproxy --backend http://unix:/PATH} proxies requests to
        the socket over one kept-alive connection.
        """
        backend = await self.startBackend()
        directory = self.mktemp()
        os.makedirs(directory)
        process = TwistdProcess()
        reactor.spawnProcess(
            process,
            sys.executable,
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "rproxy",
                "--listen",
                "tcp:0:interface=127.0.0.1",
                "--backend",
                f"http://unix:{backend.path}",
            ],
            env=twistdEnvironment(),
            path=directory,
        )

        async def stop() -> None:
            if process.running:
                process.transport.signalProcess("TERM")
                try:
                    await process.ended.addTimeout(10, reactor)
                except Exception:
                    process.transport.signalProcess("KILL")
                    await process.ended

        self.addCleanup(lambda: Deferred.fromCoroutine(stop()))
        port = await process.listening.addTimeout(30, reactor)
        client = self.httpClient()
        for i in range(3):
            response = await client.get(url(port, f"/twistd{i}"))
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), f"/twistd{i}".encode())
        self.assertEqual(backend.accepted, 1)
        await stop()


class DialTests(SynchronousTestCase):
    """
    L{connectServer} and the pool dial a unix-socket server's socket (on a
    memory reactor).
    """

    def test_plainUnix(self) -> None:
        """
        An C{http://unix:} server is dialled with C{connectUNIX} on its
        path, with the timeout given; a TCP one as before.
        """
        reactor = MemoryReactorClock()
        factory = ClientFactory()
        connectServer(reactor, unixServer("/run/a.sock"), factory, None, 3.0)
        [(path, used, timeout, _)] = reactor.unixClients
        self.assertEqual((path, used, timeout), ("/run/a.sock", factory, 3.0))
        tcp = backendServers(["http://127.0.0.1:8001"])[0]
        connectServer(reactor, tcp, factory, None, 2.0)
        self.assertEqual(reactor.tcpClients[0][:4], ("127.0.0.1", 8001, factory, 2.0))

    def test_tlsUnix(self) -> None:
        """
        An C{https://unix:} server is dialled on its path with TLS wrapped
        around the factory (the creator given); without a creator, it is
        refused.
        """
        reactor = MemoryReactorClock()
        factory = ClientFactory()
        server = unixServer("/run/a.sock", "https")
        pool = PoolConfig(name="p", servers=(server,), tlsServerName="a.internal")
        creator = backendConnectionCreators(pool)[server]
        connectServer(reactor, server, factory, creator, 3.0)
        [(path, used, _, _)] = reactor.unixClients
        self.assertEqual(path, "/run/a.sock")
        self.assertIsInstance(used, TLSMemoryBIOFactory)
        self.assertIs(used.wrappedFactory, factory)
        self.assertRaises(ValueError, connectServer, reactor, server, factory, None, 1)

    def test_poolDialsSocket(self) -> None:
        """
        A pool's request to a unix-socket server dials its socket with the
        pool's connect timeout; a failure to connect fails the request and
        gives the slot back.
        """
        from twisted.internet.error import ConnectError
        from twisted.python.failure import Failure

        from twisted_rproxy.messages import BackendRequest, BackendUnavailable

        reactor = MemoryReactorClock()
        server = unixServer("/run/a.sock")
        pool = BackendPool(
            reactor, PoolConfig(name="p", servers=(server,), connectTimeout=4.0)
        )
        failures: list[Any] = []

        class Receiver:
            def __getattr__(self, name: str) -> Any:
                return lambda *args, **kwargs: None

            def requestFailed(self, reason: Any) -> None:
                failures.append(reason)

        pool.submit(BackendRequest(method=b"GET", target=b"/", headers=[]), Receiver())
        [(path, factory, timeout, _)] = reactor.unixClients
        self.assertEqual((path, timeout), ("/run/a.sock", 4.0))
        self.assertEqual(pool.inFlight, 1)
        factory.clientConnectionFailed(
            None, Failure(ConnectError(string="No such file or directory"))
        )
        self.assertEqual(len(failures), 1)
        self.assertIsInstance(failures[0], BackendUnavailable)
        self.assertEqual(pool.inFlight, 0)
        pool.checkConsistency()

    def test_healthProbeDialsSocket(self) -> None:
        """
        The active health check of a unix-socket server dials its socket,
        with the check's timeout.
        """
        reactor = MemoryReactorClock()
        pool = BackendPool(
            reactor,
            PoolConfig(
                name="p",
                servers=(unixServer("/run/a.sock"),),
                health=HealthCheckConfig(interval=5, timeout=1.5),
            ),
        )
        pool.startHealthChecks()
        reactor.advance(0)
        [(path, _, timeout, _)] = reactor.unixClients
        self.assertEqual((path, timeout), ("/run/a.sock", 1.5))
        pool.close()

    def test_creatorNeedsAName(self) -> None:
        """
        An C{https://unix:} server of a pool built in code without a
        C{tlsServerName} is refused when verified; without verification
        it gets no SNI.
        """
        server = unixServer("/run/a.sock", "https")
        self.assertRaises(
            CertificateError,
            backendConnectionCreators,
            PoolConfig(name="p", servers=(server,)),
        )
        creators = backendConnectionCreators(
            PoolConfig(name="p", servers=(server,), tlsVerify=False)
        )
        self.assertIn(server, creators)
