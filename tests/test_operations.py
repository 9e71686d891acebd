"""
Operations (issue 9): WebSocket tunnels, graceful stop, the admin page and
metrics, the access log formats, CONNECT, and worker processes under load.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.fixtures import (
    TWISTD,
    LoopbackTestCase,
    TwistdProcess,
    asyncTest,
    backendServer,
    freePort,
    sleep,
    twistdEnvironment,
)
from tests.loopback import RecordedRequest, Reply, connectRaw
from twisted_rproxy.admin import checkPassword, hashPassword
from twisted_rproxy.config import (
    AdminConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    parseConfig,
)
from twisted_rproxy.service import ProxyService
from twisted_rproxy.upgrade import parseResponseHead, upgradeRequested

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class _EchoWebSocket(Protocol):
    """
    A tiny WebSocket echo server, raw frames: handshake, then each masked
    client frame echoed back unmasked.
    """

    def connectionMade(self) -> None:
        self.buffer = b""
        self.open = False

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            key = re.search(rb"(?i)sec-websocket-key: *(\S+)", head)
            upgrade = re.search(rb"(?i)\r\nupgrade: *websocket", head)
            if key is None or upgrade is None:
                self.transport.write(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n")
                self.transport.loseConnection()
                return
            accept = base64.b64encode(hashlib.sha1(key.group(1) + _GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            self.open = True
        while len(self.buffer) >= 6:
            length = self.buffer[1] & 0x7F
            if len(self.buffer) < 6 + length:
                return
            mask = self.buffer[2:6]
            payload = bytes(
                b ^ mask[i % 4] for i, b in enumerate(self.buffer[6 : 6 + length])
            )
            self.buffer = self.buffer[6 + length :]
            self.transport.write(bytes([0x81, len(payload)]) + payload)


def clientFrame(text: bytes) -> bytes:
    """
    A masked text frame, as a browser sends.
    """
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(text))
    return bytes([0x81, 0x80 | len(text)]) + mask + masked


def proxyConfig(ports: list[int], **server: Any) -> Config:
    return Config(
        source="test",
        server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",), **server),
        pools={
            "app": PoolConfig(
                name="app", servers=tuple(backendServer(p) for p in ports)
            )
        },
        routes=(RouteConfig(path="/", pool="app"),),
        admin=AdminConfig(listen=("tcp:0:interface=127.0.0.1",), refresh=0),
    )


class UpgradeFunctionTests(SynchronousTestCase):
    """
    The pure parts of the tunnel.
    """

    def test_upgradeRequested(self) -> None:
        """
        An upgrade needs both C{Upgrade} and C{upgrade} in C{Connection}.
        """
        from twisted.web.http_headers import Headers

        asked = Headers(
            {b"Upgrade": [b"WebSocket"], b"Connection": [b"keep-alive, Upgrade"]}
        )
        self.assertEqual(upgradeRequested(b"GET", asked), b"websocket")
        notAsked = Headers({b"Upgrade": [b"websocket"]})
        self.assertIsNone(upgradeRequested(b"GET", notAsked))

    def test_parseResponseHead(self) -> None:
        """
        A response head parses into status, reason and headers; junk does not.
        """
        parsed = parseResponseHead(b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n")
        self.assertEqual(parsed, (101, b"Switching", [(b"Upgrade", b"x")]))
        self.assertIsNone(parseResponseHead(b"HTTP/1.1 101 OK\r\nbad line\r\n\r\n"))

    def test_passwordHash(self) -> None:
        """
        A hash checks its own password only.
        """
        hashed = hashPassword("s3cret", iterations=1000)
        self.assertTrue(checkPassword("s3cret", hashed))
        self.assertFalse(checkPassword("S3cret", hashed))


class OperationsConfigTests(SynchronousTestCase):
    """
    The new keys of [server], [admin] and [[routes]].
    """

    def test_adminAndServerKeys(self) -> None:
        """
        The keys are read; a clear-text password is refused.
        """
        hashed = hashPassword("pw", iterations=1000)
        config = parseConfig(
            {
                "server": {
                    "drain_timeout": "2s",
                    "access_log_format": "json",
                    "allow_connect": True,
                    "tunnel_idle_timeout": "1m",
                },
                "admin": {"users": {"ops": hashed}, "refresh": "10s"},
                "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
                "routes": [{"pool": "app", "websocket": False}],
            },
            "f.toml",
            ".",
        )
        self.assertEqual(config.server.drainTimeout, 2.0)
        self.assertEqual(config.server.accessLogFormat, "json")
        self.assertTrue(config.server.allowConnect)
        self.assertEqual(config.server.tunnelIdleTimeout, 60.0)
        assert config.admin is not None
        self.assertEqual(config.admin.users, (("ops", hashed),))
        self.assertEqual(config.admin.listen, ("tcp:9000:interface=127.0.0.1",))
        self.assertFalse(config.routes[0].websocket)
        from twisted_rproxy.config import ConfigError

        error = self.assertRaises(
            ConfigError,
            parseConfig,
            {
                "admin": {"users": {"ops": "password"}},
                "routes": [{"static": "."}],
            },
            "f.toml",
            ".",
        )
        self.assertEqual(error.key, "admin.users.ops")


class TunnelTests(LoopbackTestCase):
    """
    WebSocket upgrades and CONNECT through the proxy.
    """

    async def startEcho(self) -> int:
        factory = Factory.forProtocol(_EchoWebSocket)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number: int = port.getHost().port
        return number

    async def startService(self, config: Config) -> tuple[ProxyService, int]:
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        ports = await service.whenListening()
        return service, ports[0].getHost().port

    @asyncTest
    async def test_webSocketEcho(self) -> None:
        """
        A WebSocket handshake goes through, then frames are echoed both
        ways through the proxy.
        """
        echo = await self.startEcho()
        service, port = await self.startService(proxyConfig([echo]))
        client = await connectRaw(reactor, port)
        self.addCleanup(client.transport.loseConnection)
        client.write(
            b"GET /chat HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await client.waitFor(lambda d: b"\r\n\r\n" in d, reactor)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
        self.assertIn(b"Upgrade: websocket", head)
        before = len(client.received)
        for message in (b"hello", b"through the proxy"):
            client.write(clientFrame(message))
            expected = bytes([0x81, len(message)]) + message
            await client.waitFor(
                lambda d, e=expected, b=before: d[b:].endswith(e), reactor
            )
            before = len(client.received)
        self.assertEqual(len(service.site.connections), 1)

    @asyncTest
    async def test_connectRefused(self) -> None:
        """
        CONNECT is refused with 405 unless allowed.
        """
        echo = await self.startEcho()
        _, port = await self.startService(proxyConfig([echo]))
        client = await connectRaw(reactor, port)
        self.addCleanup(client.transport.loseConnection)
        client.write(
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )
        data = await client.waitFor(lambda d: b"\r\n\r\n" in d, reactor)
        self.assertTrue(data.startswith(b"HTTP/1.1 405 "), data)


class GracefulStopTests(LoopbackTestCase):
    """
    Stopping the service lets requests in flight finish.
    """

    @asyncTest
    async def test_slowRequestFinishes(self) -> None:
        """
        A request in flight when the stop begins gets its whole response;
        the listener is closed at once.
        """

        def slow(request: RecordedRequest) -> Reply:
            return Reply(body=b"done slowly", delay=0.5)

        backend = await self.startBackend(slow)
        service = ProxyService(proxyConfig([backend.portNumber]), reactor)
        service.startService()
        port = (await service.whenListening())[0].getHost().port
        client = await connectRaw(reactor, port)
        client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(0.1)
        stopped = service.stopService()
        await sleep(0.05)
        from twisted.internet.error import ConnectionRefusedError

        with self.assertRaises(ConnectionRefusedError):
            await connectRaw(reactor, port)
        data = await client.waitFor(lambda d: d.endswith(b"done slowly"), reactor)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data)
        await stopped

    @asyncTest
    async def test_requestArrivingDuringStop(self) -> None:
        """
        A connection accepted just before the stop whose request arrives
        after it began gets its response (then the connection closes): the
        request is not dropped as if it came after the last one.
        """
        backend = await self.startBackend()
        service = ProxyService(proxyConfig([backend.portNumber]), reactor)
        service.startService()
        port = (await service.whenListening())[0].getHost().port
        client = await connectRaw(reactor, port)
        await sleep(0.05)
        stopped = service.stopService()
        await sleep(0.1)
        client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await client.waitFor(lambda d: False, reactor, timeout=1.0)
        self.assertTrue(client.received.startswith(b"HTTP/1.1 200 "), client.received)
        self.assertIn(b"\r\nConnection: close\r\n", client.received)
        self.assertTrue(client.closed)
        await stopped

    @asyncTest
    async def test_drainTimeout(self) -> None:
        """
        A request still running at the drain timeout is cut.
        """

        def hang(request: RecordedRequest) -> Reply:
            return Reply(hang=True)

        backend = await self.startBackend(hang)
        service = ProxyService(
            proxyConfig([backend.portNumber], drainTimeout=0.3), reactor
        )
        service.startService()
        port = (await service.whenListening())[0].getHost().port
        client = await connectRaw(reactor, port)
        client.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await sleep(0.1)
        started = reactor.seconds()
        await service.stopService()
        self.assertLess(reactor.seconds() - started, 2.0)
        await client.waitFor(lambda d: False, reactor, timeout=2.0)
        self.assertTrue(client.closed)
        backend.closeIdleConnections()


class AdminTests(LoopbackTestCase):
    """
    The admin listener: HTML, JSON, metrics, authentication.
    """

    async def startAdmin(
        self, users: tuple[tuple[str, str], ...] = ()
    ) -> tuple[ProxyService, int, int]:
        backend = await self.startBackend()
        config = proxyConfig([backend.portNumber], accessLogFormat="json")
        assert config.admin is not None
        from attrs import evolve

        config = evolve(config, admin=evolve(config.admin, users=users))
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        await sleep(0.05)
        adminPort = service.admin._ports[0].getHost().port
        return service, port, adminPort

    @asyncTest
    async def test_statusAndMetrics(self) -> None:
        """
        After proxied requests, /status.json shows the pool and its server
        and /metrics counts the requests by route and status class.
        """
        service, port, adminPort = await self.startAdmin()
        client = self.httpClient()
        for _ in range(3):
            response = await client.get(f"http://127.0.0.1:{port}/x")
            await response.content()
        response = await client.get(f"http://127.0.0.1:{adminPort}/status.json")
        status = json.loads(await response.content())
        self.assertEqual(status["pools"][0]["name"], "app")
        self.assertEqual(status["pools"][0]["servers"][0]["requests"], 3)
        response = await client.get(f"http://127.0.0.1:{adminPort}/metrics")
        text = (await response.content()).decode()
        self.assertIn(
            'rproxy_requests_total{pool="app",route="/",status="2xx"} 3.0', text
        )
        self.assertIn("rproxy_request_duration_seconds_bucket", text)
        self.assertIn('rproxy_backend_up{pool="app"', text)
        response = await client.get(f"http://127.0.0.1:{adminPort}/")
        page = (await response.content()).decode()
        self.assertIn("Pool <code>app</code>", page)
        self.assertIn("healthy", page)

    @asyncTest
    async def test_basicAuth(self) -> None:
        """
        With users, the admin pages need their password.
        """
        hashed = hashPassword("pw", iterations=1000)
        _, _, adminPort = await self.startAdmin(users=(("ops", hashed),))
        client = self.httpClient()
        response = await client.get(f"http://127.0.0.1:{adminPort}/status.json")
        await response.content()
        self.assertEqual(response.code, 401)
        response = await client.get(
            f"http://127.0.0.1:{adminPort}/status.json", auth=("ops", "wrong")
        )
        await response.content()
        self.assertEqual(response.code, 401)
        response = await client.get(
            f"http://127.0.0.1:{adminPort}/status.json", auth=("ops", "pw")
        )
        await response.content()
        self.assertEqual(response.code, 200)

    @asyncTest
    async def test_browser(self) -> None:
        """
        The status page renders in headless Chromium, with the pool's server
        shown healthy; a screenshot is saved in the test's directory.
        """
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        driverPath = shutil.which("chromedriver")
        try:
            from selenium import webdriver
        except ImportError:
            webdriver = None
        if chromium is None or driverPath is None or webdriver is None:
            reason = "Chromium, chromedriver or selenium is not installed"
            if os.environ.get("CI") == "true":
                self.fail(reason + " (required in CI: .ci/run installs them)")
            raise SkipTest(reason)
        _, port, adminPort = await self.startAdmin()
        client = self.httpClient()
        response = await client.get(f"http://127.0.0.1:{port}/x")
        await response.content()
        profile = os.path.abspath(self.mktemp())
        os.makedirs(profile)
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--window-size=1280,1000",
        ):
            options.add_argument(flag)
        from selenium.webdriver.chrome.service import Service as DriverService

        url = f"http://127.0.0.1:{adminPort}/?refresh=0"
        screenshot = os.path.join(profile, "..", "admin.png")

        def browse() -> tuple[str, str, str]:
            driver = webdriver.Chrome(
                service=DriverService(driverPath), options=options
            )
            try:
                driver.set_page_load_timeout(30)
                driver.get(url)
                title = driver.title
                state = driver.find_element("css selector", "span.badge").text
                font = driver.execute_script(
                    "return getComputedStyle(document.body).fontFamily"
                )
                driver.save_screenshot(screenshot)
                return title, state, font
            finally:
                driver.quit()

        from twisted.internet.threads import deferToThread

        title, state, font = await deferToThread(browse)
        self.assertEqual(title, "twisted_rproxy status")
        self.assertEqual(state, "healthy")
        self.assertIn("system-ui", font)
        self.assertTrue(os.path.getsize(screenshot) > 10000)
        print(f"\nadmin screenshot: {os.path.abspath(screenshot)}", file=sys.stderr)


class WorkerTests(LoopbackTestCase):
    """
    The real C{twistd rproxy} with two workers, under load.
    """

    @asyncTest
    async def test_reloadWhileStarting(self) -> None:
        """
        A reload passed on to workers still starting (their interpreter not
        even running yet) does not kill them: the signal waits until their
        handler is installed.
        """
        from twisted_rproxy.config import loadConfig
        from twisted_rproxy.workers import WorkerSupervisor

        backend = await self.startBackend()
        port = freePort()
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w") as f:
            f.write(
                f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                'workers = 2\ndrain_timeout = "1s"\n'
                f'[pools.app]\nservers = ["http://127.0.0.1:{backend.portNumber}"]\n'
                '[[routes]]\npool = "app"\n'
            )
        self.patch(os, "environ", twistdEnvironment())
        supervisor = WorkerSupervisor(reactor, loadConfig(path), ["--config", path], 2)
        supervisor.startService()
        self.addCleanup(supervisor.stopService)
        pids = supervisor.workerPIDs()
        supervisor.signalWorkers(signal.SIGHUP)
        supervisor.signalWorkers(signal.SIGUSR1)
        client = self.httpClient()
        for _ in range(100):
            try:
                response = await client.get(f"http://127.0.0.1:{port}/")
                await response.content()
                break
            except Exception:
                await sleep(0.1)
        self.assertEqual(response.code, 200)
        await sleep(0.5)
        self.assertEqual(sorted(supervisor.workerPIDs()), sorted(pids))

    @asyncTest
    async def test_loadThroughKillAndReloads(self) -> None:
        """
        Requests keep succeeding while a worker is stopped (and replaced)
        and while the configuration is reloaded twice: not one fails.
        """
        backend = await self.startBackend()
        port, adminPort = freePort(), freePort()
        path = os.path.abspath(self.mktemp() + ".toml")

        def write(retries: int) -> None:
            with open(path, "w") as f:
                f.write(
                    f'[server]\nlisten = ["tcp:{port}:interface=127.0.0.1"]\n'
                    'workers = 2\ndrain_timeout = "5s"\n'
                    f'[admin]\nlisten = ["tcp:{adminPort}:interface=127.0.0.1"]\n'
                    f'[pools.app]\nservers = ["http://127.0.0.1:{backend.portNumber}"]\n'
                    f"retries = {retries}\n"
                    '[[routes]]\npool = "app"\n'
                )

        write(1)
        process = TwistdProcess()
        transport = reactor.spawnProcess(
            process,
            sys.executable,
            [
                sys.executable,
                "-c",
                TWISTD,
                "-n",
                "--pidfile=",
                "rproxy",
                "--config",
                path,
            ],
            env=twistdEnvironment(),
        )

        def stop() -> Deferred[Any]:
            if process.running:
                transport.signalProcess("TERM")
            return process.ended

        self.addCleanup(stop)
        for _ in range(100):
            if len(re.findall(rb"Listening on", process.output)) >= 2:
                break
            await sleep(0.1)
        pids = [
            int(p) for p in re.findall(rb"Worker \d started, pid (\d+)", process.output)
        ]
        self.assertEqual(len(pids), 2, process.output.decode())

        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        # A new connection for each request: each one tests accepting.
        client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, False)))
        results = {"ok": 0, "failed": []}  # type: dict[str, Any]
        running = [True]

        async def loop() -> None:
            while running[0] and results["ok"] < 5000:
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/")
                    await response.content()
                    if response.code == 200:
                        results["ok"] += 1
                    else:
                        results["failed"].append(response.code)
                except Exception as e:
                    results["failed"].append(
                        (reactor.seconds() - began, repr(getattr(e, "reasons", e)))
                    )

        began = reactor.seconds()
        loops = [Deferred.fromCoroutine(loop()) for _ in range(4)]
        await sleep(0.5)
        os.kill(pids[0], signal.SIGTERM)
        await sleep(1.0)
        write(2)
        transport.signalProcess("HUP")
        await sleep(0.7)
        write(3)
        transport.signalProcess("HUP")
        await sleep(0.7)
        running[0] = False
        for d in loops:
            await d
        # Through the worker's stop (its drain included: a connection it
        # accepted just before the stop gets its request answered, see
        # GracefulStopTests.test_requestArrivingDuringStop), its replacement
        # and both reloads: not one failure.
        self.assertEqual(results["failed"], [])
        self.assertGreater(results["ok"], 50)
        output = process.output.decode()
        self.assertEqual(len(re.findall(r"Worker 0 started", output)), 2, output)
        self.assertGreaterEqual(len(re.findall(r"Reloaded ", output)), 2, output)
        await stop()
        for pid in pids[1:]:
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
