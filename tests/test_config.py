"""
Tests for L{twisted_rproxy.config}.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.config import (
    COMMAND_LINE,
    BackendServer,
    Config,
    ConfigError,
    HealthCheckConfig,
    OutlierConfig,
    PoolConfig,
    RetryBudgetConfig,
    RouteConfig,
    ServerConfig,
    configFromArguments,
    loadConfig,
    parseConfig,
    parseDuration,
    parseSize,
    validateEndpoint,
)
from twisted_rproxy.config.discovery import DiscoveryConfig

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")

POOL = '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
ROUTE = '[[routes]]\npool = "app"\n'
VALID = POOL + ROUTE

SIZE_UNITS = [
    ("", 1),
    ("B", 1),
    ("K", 1000),
    ("KB", 1000),
    ("KiB", 1024),
    ("M", 1000**2),
    ("MB", 1000**2),
    ("MiB", 1024**2),
    ("G", 1000**3),
    ("GB", 1000**3),
    ("GiB", 1024**3),
    ("T", 1000**4),
    ("TB", 1000**4),
    ("TiB", 1024**4),
]

DURATION_UNITS = [("", 1), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]


class ConfigTestMixin(SynchronousTestCase):
    """
    Helpers: write a configuration file and check the one error it causes.
    """

    def writeConfig(self, text: str) -> str:
        """
        Write C{text} to a new file and return its path.
        """
        path: str = self.mktemp()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def load(self, text: str) -> Config:
        """
        Load C{text} as a configuration file.
        """
        return loadConfig(self.writeConfig(text))

    def assertConfigError(self, text: str, key: str, message: str) -> ConfigError:
        """
        Loading C{text} fails with exactly this key and message, naming the
        file.
        """
        path = self.writeConfig(text)
        error: ConfigError = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual((error.source, error.key, error.message), (path, key, message))
        return error

    def assertDataError(
        self, data: Mapping[str, object], key: str, message: str | None = None
    ) -> ConfigError:
        """
        Validating C{data} fails on C{key}, with C{message} if given.
        """
        error: ConfigError = self.assertRaises(
            ConfigError, parseConfig, data, "f.toml", "."
        )
        self.assertEqual(error.source, "f.toml")
        self.assertEqual(error.key, key)
        if message is not None:
            self.assertEqual(error.message, message)
        return error


def withPool(**extra: object) -> dict[str, object]:
    """
    A valid configuration mapping whose pool C{app} has the C{extra} keys.
    """
    pool: dict[str, object] = {"servers": ["http://127.0.0.1:8001"]}
    pool.update(extra)
    return {"pools": {"app": pool}, "routes": [{"pool": "app"}]}


def withServer(**extra: object) -> dict[str, object]:
    """
    A valid configuration mapping with the C{extra} keys in C{[server]}.
    """
    data = withPool()
    data["server"] = dict(extra)
    return data


def withRoute(**extra: object) -> dict[str, object]:
    """
    A valid configuration mapping whose only route has the C{extra} keys
    (and C{pool = "app"} unless C{static} is given).
    """
    data = withPool()
    route: dict[str, object] = {} if "static" in extra else {"pool": "app"}
    route.update(extra)
    data["routes"] = [route]
    return data


class ConfigErrorTests(SynchronousTestCase):
    """
    Tests for L{ConfigError}.
    """

    def test_attributes(self) -> None:
        """
        The source, key and message are kept as attributes.
        """
        error = ConfigError("a.toml", "server.listen", "bad")
        self.assertEqual(
            (error.source, error.key, error.message), ("a.toml", "server.listen", "bad")
        )

    def test_str(self) -> None:
        """
        The string form is C{source: key: message}.
        """
        self.assertEqual(
            str(ConfigError("a.toml", "routes[0].pool", "no pool")),
            "a.toml: routes[0].pool: no pool",
        )

    def test_strWithoutKey(self) -> None:
        """
        The key part is left out when the key is empty.
        """
        self.assertEqual(
            str(ConfigError("a.toml", "", "cannot read")), "a.toml: cannot read"
        )


class ParseSizeTests(SynchronousTestCase):
    """
    Tests for L{parseSize}.
    """

    def test_examples(self) -> None:
        """
        Decimal and binary units, spaces, case and fractions are understood.
        """
        for text, expected in [
            ("64KiB", 65536),
            ("10MB", 10_000_000),
            ("1 GiB", 2**30),
            ("512", 512),
            ("0", 0),
            ("10k", 10_000),
            ("10K", 10_000),
            ("10kib", 10240),
            ("1.5KiB", 1536),
            ("3B", 3),
            (" 2 mb ", 2_000_000),
            ("999999999999999999999999999999", 999999999999999999999999999999),
        ]:
            self.assertEqual(parseSize(text, "f", "k"), expected, text)

    def test_integerPassesThrough(self) -> None:
        """
        An integer is a number of bytes.
        """
        self.assertEqual(parseSize(1234, "f", "k"), 1234)
        self.assertEqual(parseSize(0, "f", "k"), 0)

    def test_negative(self) -> None:
        """
        Negative sizes are refused.
        """
        error = self.assertRaises(ConfigError, parseSize, -1, "f", "k")
        self.assertEqual(error.message, "must not be negative, got -1")
        error = self.assertRaises(ConfigError, parseSize, "-1KiB", "f", "k")
        self.assertEqual(error.message, "must not be negative, got '-1KiB'")

    def test_unknownUnit(self) -> None:
        """
        An unknown unit is named along with the known ones.
        """
        error = self.assertRaises(ConfigError, parseSize, "10XB", "f.toml", "a.b")
        self.assertEqual(
            str(error),
            "f.toml: a.b: unknown unit 'XB' in size '10XB' (expected one of B, "
            "K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB)",
        )

    def test_invalid(self) -> None:
        """
        Text that is not a size is refused, naming source and key.
        """
        for text in ["", "abc", "KiB", "1e3", "1,5KiB", "1.KiB", "0x10", "1 2"]:
            error = self.assertRaises(ConfigError, parseSize, text, "f.toml", "a.b")
            self.assertEqual((error.source, error.key), ("f.toml", "a.b"))
        error = self.assertRaises(ConfigError, parseSize, "abc", "f.toml", "a.b")
        self.assertEqual(
            error.message,
            "invalid size 'abc' (expected a number of bytes, or a string like "
            '"64KiB" or "10MB")',
        )

    def test_fractionOfAByte(self) -> None:
        """
        A size must come to a whole number of bytes.
        """
        error = self.assertRaises(ConfigError, parseSize, "1.5B", "f", "k")
        self.assertEqual(error.message, "size '1.5B' is not a whole number of bytes")

    def test_wrongType(self) -> None:
        """
        Booleans and floats are not sizes.
        """
        for value in [True, 1.5]:
            error = self.assertRaises(ConfigError, parseSize, value, "f", "k")
            self.assertIn(f"got {type(value).__name__}", error.message)

    @given(
        number=st.integers(min_value=0, max_value=10**15),
        unit=st.sampled_from(SIZE_UNITS),
        space=st.sampled_from(["", " "]),
        case=st.sampled_from([str.lower, str.upper, str]),
    )
    def test_roundTrip(
        self, number: int, unit: tuple[str, int], space: str, case: object
    ) -> None:
        """
        Any whole number with any unit, spelled in any case, is that many
        units.
        """
        name, multiplier = unit
        assert callable(case)
        text = f"{number}{space}{case(name)}"
        self.assertEqual(parseSize(text, "f", "k"), number * multiplier)

    @given(st.integers(min_value=0))
    def test_integerRoundTrip(self, number: int) -> None:
        """
        Any non-negative integer, or its decimal string, is itself.
        """
        self.assertEqual(parseSize(number, "f", "k"), number)
        self.assertEqual(parseSize(str(number), "f", "k"), number)

    @given(st.text())
    def test_anyText(self, text: str) -> None:
        """
        Any text gives a non-negative integer or a L{ConfigError}, nothing
        else.
        """
        try:
            result = parseSize(text, "f", "k")
        except ConfigError as e:
            self.assertEqual((e.source, e.key), ("f", "k"))
        else:
            self.assertIsInstance(result, int)
            self.assertGreaterEqual(result, 0)


class ParseDurationTests(SynchronousTestCase):
    """
    Tests for L{parseDuration}.
    """

    def test_examples(self) -> None:
        """
        Milliseconds, seconds, minutes, hours and days are understood.
        """
        for text, expected in [
            ("5s", 5.0),
            ("250ms", 0.25),
            ("2m", 120.0),
            ("1h", 3600.0),
            ("1.5s", 1.5),
            ("0", 0.0),
            ("1d", 86400.0),
            ("3", 3.0),
            (" 10 S ", 10.0),
            ("100ms", 0.1),
        ]:
            self.assertEqual(parseDuration(text, "f", "k"), expected, text)

    def test_numbersAreSeconds(self) -> None:
        """
        Integers and floats are seconds, returned as floats.
        """
        self.assertEqual(parseDuration(5, "f", "k"), 5.0)
        self.assertIsInstance(parseDuration(5, "f", "k"), float)
        self.assertEqual(parseDuration(0.5, "f", "k"), 0.5)

    def test_negative(self) -> None:
        """
        Negative durations are refused.
        """
        for value in [-1, -0.5, "-1s"]:
            error = self.assertRaises(ConfigError, parseDuration, value, "f", "k")
            self.assertEqual(error.message, f"must not be negative, got {value!r}")

    def test_notFinite(self) -> None:
        """
        Infinity, NaN and numbers too large for a float are refused.
        """
        for value in [float("inf"), float("nan"), 10**400, "9" * 400]:
            error = self.assertRaises(ConfigError, parseDuration, value, "f", "k")
            self.assertIn("is not finite", error.message)

    def test_invalid(self) -> None:
        """
        Text that is not a duration is refused, naming source and key.
        """
        for text in ["", "soon", "s", "5 seconds", "1e3s", "5x", "1:30"]:
            error = self.assertRaises(
                ConfigError, parseDuration, text, "f.toml", "pools.app.read_timeout"
            )
            self.assertEqual(
                (error.source, error.key), ("f.toml", "pools.app.read_timeout")
            )
        error = self.assertRaises(ConfigError, parseDuration, "5x", "f", "k")
        self.assertEqual(
            error.message,
            "unknown unit 'x' in duration '5x' (expected one of ms, s, m, h, d)",
        )
        error = self.assertRaises(ConfigError, parseDuration, "soon", "f", "k")
        self.assertEqual(
            error.message,
            "invalid duration 'soon' (expected a number of seconds, or a string "
            'like "5s", "250ms", "2m" or "1h")',
        )

    def test_wrongType(self) -> None:
        """
        Booleans are not durations.
        """
        error = self.assertRaises(ConfigError, parseDuration, True, "f", "k")
        self.assertIn("got bool", error.message)

    @given(
        number=st.integers(min_value=0, max_value=10**9),
        unit=st.sampled_from(DURATION_UNITS),
        space=st.sampled_from(["", " "]),
    )
    def test_roundTrip(self, number: int, unit: tuple[str, int], space: str) -> None:
        """
        Any whole number with any unit is that many units, in seconds.
        """
        name, multiplier = unit
        text = f"{number}{space}{name}"
        self.assertEqual(parseDuration(text, "f", "k"), float(number * multiplier))

    @given(st.integers(min_value=0, max_value=10**12))
    def test_millisecondsRoundTrip(self, number: int) -> None:
        """
        Milliseconds are converted exactly as a division by 1000 would be.
        """
        self.assertEqual(parseDuration(f"{number}ms", "f", "k"), number / 1000)

    @given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
    def test_floatPassesThrough(self, seconds: float) -> None:
        """
        Any finite non-negative float is itself.
        """
        self.assertEqual(parseDuration(seconds, "f", "k"), seconds)

    @given(st.text())
    def test_anyText(self, text: str) -> None:
        """
        Any text gives a finite non-negative float or a L{ConfigError}.
        """
        try:
            result = parseDuration(text, "f", "k")
        except ConfigError as e:
            self.assertEqual((e.source, e.key), ("f", "k"))
        else:
            self.assertGreaterEqual(result, 0.0)
            self.assertLess(result, float("inf"))


class ValidateEndpointTests(SynchronousTestCase):
    """
    Tests for L{validateEndpoint}.
    """

    def test_valid(self) -> None:
        """
        Server endpoint strings that parse are accepted.
        """
        for description in [
            "tcp:8080",
            "tcp:8080:interface=127.0.0.1",
            "tcp:0",
            "tcp6:8080",
            "unix:/tmp/rproxy.sock",
        ]:
            validateEndpoint(description, "f", "k")

    def test_empty(self) -> None:
        """
        An empty or blank description is refused.
        """
        for description in ["", "  "]:
            error = self.assertRaises(
                ConfigError, validateEndpoint, description, "f", "server.listen[0]"
            )
            self.assertEqual(error.key, "server.listen[0]")
            self.assertEqual(
                error.message,
                'an endpoint must not be empty (expected something like "tcp:8080")',
            )

    def test_invalid(self) -> None:
        """
        Descriptions Twisted cannot parse are refused, quoting the description.
        """
        for description in [
            "bogus:1",
            "tcp:abc",
            "tcp",
            "tcp:8080:nonsense=1",
            "ssl:8443:privateKey=/nonexistent/key.pem",
        ]:
            error = self.assertRaises(
                ConfigError, validateEndpoint, description, "f", "k"
            )
            self.assertTrue(
                error.message.startswith(f"invalid server endpoint {description!r}: "),
                error.message,
            )

    def test_portOutOfRange(self) -> None:
        """
        TCP ports above 65535 are refused, though Twisted's parser accepts
        them.
        """
        for description in ["tcp:65536", "tcp6:99999", "tcp:port=70000"]:
            error = self.assertRaises(
                ConfigError, validateEndpoint, description, "f", "k"
            )
            self.assertTrue(
                error.message.endswith("is out of range (expected 0 to 65535)")
            )
        validateEndpoint("tcp:65535", "f", "k")

    def test_doesNotListen(self) -> None:
        """
        Validating an endpoint whose port is in use still succeeds: nothing
        listens.
        """
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        validateEndpoint(f"tcp:{port}:interface=127.0.0.1", "f", "k")


class LoadConfigTests(ConfigTestMixin):
    """
    Tests for L{loadConfig}: reading files and the examples.
    """

    def test_minimal(self) -> None:
        """
        A pool and a route are enough; everything else takes its default.
        """
        path = self.writeConfig(VALID)
        config = loadConfig(path)
        server = BackendServer(
            url="http://127.0.0.1:8001", scheme="http", host="127.0.0.1", port=8001
        )
        self.assertEqual(
            config,
            Config(
                source=path,
                server=ServerConfig(),
                pools={"app": PoolConfig(name="app", servers=(server,))},
                routes=(RouteConfig(pool="app"),),
            ),
        )

    def test_missingFile(self) -> None:
        """
        A missing file is reported with the system's reason, no key.
        """
        path: str = self.mktemp()
        error: ConfigError = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual((error.source, error.key), (path, ""))
        self.assertEqual(error.message, "cannot read: No such file or directory")
        self.assertEqual(str(error), f"{path}: cannot read: No such file or directory")

    def test_directory(self) -> None:
        """
        A directory is not a readable configuration file.
        """
        path: str = self.mktemp()
        os.makedirs(path)
        error: ConfigError = self.assertRaises(ConfigError, loadConfig, path)
        self.assertTrue(error.message.startswith("cannot read: "), error.message)

    def test_syntaxError(self) -> None:
        """
        A TOML syntax error is reported with its line and column.
        """
        path = self.writeConfig("[server]\nlisten = \n")
        error: ConfigError = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.key, "")
        self.assertEqual(
            error.message, "invalid TOML: Invalid value (at line 2, column 10)"
        )

    def test_duplicateTable(self) -> None:
        """
        A table declared twice is a TOML error, with its line.
        """
        path = self.writeConfig(VALID + POOL)
        error: ConfigError = self.assertRaises(ConfigError, loadConfig, path)
        self.assertTrue(error.message.startswith("invalid TOML: "), error.message)
        self.assertIn("line 5", error.message)

    def test_notUTF8(self) -> None:
        """
        A file that is not UTF-8 is refused without a traceback.
        """
        path: str = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"# \xff\n" + VALID.encode())
        error: ConfigError = self.assertRaises(ConfigError, loadConfig, path)
        self.assertEqual(error.message, "invalid TOML: not UTF-8 text (byte offset 2)")

    def test_exampleLoads(self) -> None:
        """
        C{examples/rproxy.toml} loads, with every supported table.
        """
        config = loadConfig(os.path.join(EXAMPLES, "rproxy.toml"))
        self.assertEqual(sorted(config.pools), ["api", "app"])
        self.assertEqual(config.pools["app"].servers[1].weight, 2)
        self.assertEqual(config.server.accessLog, "-")
        self.assertEqual(
            [(r.host, r.path) for r in config.routes],
            [
                (None, "/examples/"),
                (None, "/api/"),
                ("*.example.com", "/"),
                (None, "/"),
            ],
        )
        self.assertEqual(config.routes[0].static, os.path.abspath(EXAMPLES))

    def test_minimalExampleLoads(self) -> None:
        """
        C{examples/minimal.toml} loads.
        """
        config = loadConfig(os.path.join(EXAMPLES, "minimal.toml"))
        self.assertEqual(config.server, ServerConfig())
        self.assertEqual(config.routes, (RouteConfig(pool="app"),))

    def test_architectureExample(self) -> None:
        """
        The example of the architecture contract is accepted, caches
        included, up to the files it names: the static directory
        C{/srv/www} does not exist here.
        """
        self.assertConfigError(
            """
[server]
listen = ["tcp:8080"]

[[tls]]
listen = ["tcp:8443"]
certificates = ["site.pem"]

[pools.app]
servers = ["http://127.0.0.1:8001", "http://127.0.0.1:8002"]
balance = "round-robin"

[caches.main]
max_size = "256MiB"

[filters.gzip]
plugin = "compress"

[[routes]]
path = "/static/"
static = "/srv/www"

[[routes]]
path = "/"
pool = "app"
cache = "main"
filters = ["gzip"]
""",
            "routes[0].static",
            "directory '/srv/www' does not exist",
        )


class TopLevelTests(ConfigTestMixin):
    """
    Tests for the top level of a configuration file.
    """

    def test_unknownKey(self) -> None:
        """
        An unknown top-level key is an error, with a suggestion.
        """
        self.assertConfigError(
            VALID + "[servr]\n", "servr", "unknown key (did you mean server?)"
        )

    def test_unknownKeyWithoutSuggestion(self) -> None:
        """
        An unknown key that resembles nothing gets no suggestion.
        """
        self.assertConfigError("frobnicate = 1\n" + VALID, "frobnicate", "unknown key")

    def test_caches(self) -> None:
        """
        C{[caches.NAME]} tables are accepted (see tests.test_cache for their
        keys).
        """
        config = loadConfig(self.writeConfig(VALID + "[caches.main]\n"))
        self.assertEqual(list(config.caches), ["main"])
        self.assertEqual(config.caches["main"].store, "memory")

    def test_state(self) -> None:
        """
        A C{[state]} table is accepted (see tests.test_state for its keys),
        and a cache may then be stored in it; without one, C{state} is
        L{None} and C{store = "redis"} is refused.
        """
        config = self.load(
            VALID
            + '[caches.main]\nstore = "redis"\n'
            + '[state]\nredis = "redis://:pw@127.0.0.1:6379/1"\n'
        )
        assert config.state is not None
        self.assertEqual((config.state.db, config.state.password), (1, "pw"))
        self.assertEqual(config.caches["main"].store, "redis")
        self.assertIsNone(self.load(VALID).state)
        self.assertConfigError(
            VALID + '[caches.main]\nstore = "redis"\n',
            "caches.main.store",
            '"redis" needs a [state] table (its redis URL) to store in',
        )
        self.assertDataError(
            {**withPool(), "state": {"redis": "redis://127.0.0.1/x"}},
            "state.redis",
        )

    def test_routesRequired(self) -> None:
        """
        A file without routes is refused.
        """
        self.assertConfigError(
            POOL, "routes", "at least one [[routes]] table is required"
        )
        self.assertDataError(
            {"routes": []}, "routes", "at least one [[routes]] table is required"
        )

    def test_routesMustBeArrayOfTables(self) -> None:
        """
        C{[routes]} written as a single table is refused.
        """
        self.assertConfigError(
            POOL + '[routes]\npool = "app"\n',
            "routes",
            "expected an array of tables ([[routes]]), got table",
        )

    def test_routeMustBeTable(self) -> None:
        """
        Each route must be a table.
        """
        self.assertDataError(
            {"routes": ["/"]}, "routes[0]", "expected a table, got str"
        )

    def test_serverMustBeTable(self) -> None:
        """
        C{server} must be a table.
        """
        self.assertDataError(
            {"server": 1, "routes": []}, "server", "expected a table, got int"
        )

    def test_poolsMustBeTable(self) -> None:
        """
        C{pools} must be a table of tables.
        """
        self.assertDataError(
            {"pools": ["a"]},
            "pools",
            "expected a table of pools ([pools.NAME]), got list",
        )
        self.assertDataError(
            {"pools": {"app": 1}}, "pools.app", "expected a table, got int"
        )

    def test_staticOnly(self) -> None:
        """
        A file with only static routes needs no pools.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = self.load(f"[[routes]]\nstatic = {directory!r}\n")
        self.assertEqual(config.pools, {})
        self.assertEqual(config.routes[0].static, os.path.abspath(directory))


class ServerTableTests(ConfigTestMixin):
    """
    Tests for C{[server]}.
    """

    def test_defaults(self) -> None:
        """
        An empty C{[server]} table has the documented defaults.
        """
        server = self.load("[server]\n" + VALID).server
        self.assertEqual(server, ServerConfig())
        self.assertEqual(server.listen, ("tcp:8080",))
        self.assertIsNone(server.accessLog)
        self.assertIsNone(server.serverHeader)
        self.assertEqual(server.maxBodySize, 10 * 1024 * 1024)
        self.assertTrue(server.requestBuffering)
        self.assertEqual(server.idleTimeout, 60.0)
        self.assertEqual(server.maxHeaderSize, 16384)
        self.assertEqual(server.maxHeaders, 100)
        self.assertTrue(server.forwardedHeaders)
        self.assertEqual(server.via, "twisted_rproxy")
        self.assertEqual(server.trustedProxies, ())
        self.assertEqual(server.hideHeaders, ("server", "x-powered-by"))

    def test_allKeys(self) -> None:
        """
        Every key of C{[server]} is read into L{ServerConfig}.
        """
        config = self.load(
            """
[server]
listen = ["tcp:8080", "tcp:8081:interface=127.0.0.1"]
access_log = "/var/log/rproxy.log"
server_header = "rproxy/1"
max_body_size = "1MiB"
request_buffering = false
idle_timeout = "90s"
max_header_size = "8KiB"
max_headers = 50
forwarded_headers = false
via = "edge-1"
trusted_proxies = ["10.0.0.1/8", "::1"]
hide_headers = ["X-Secret"]
"""
            + VALID
        )
        self.assertEqual(
            config.server,
            ServerConfig(
                listen=("tcp:8080", "tcp:8081:interface=127.0.0.1"),
                accessLog="/var/log/rproxy.log",
                serverHeader="rproxy/1",
                maxBodySize=1024 * 1024,
                requestBuffering=False,
                idleTimeout=90.0,
                maxHeaderSize=8192,
                maxHeaders=50,
                forwardedHeaders=False,
                via="edge-1",
                trustedProxies=("10.0.0.0/8", "::1/128"),
                hideHeaders=("x-secret",),
            ),
        )

    def test_unknownKey(self) -> None:
        """
        An unknown key in C{[server]} is named with a suggestion.
        """
        self.assertConfigError(
            "[server]\nlisten_on = 'tcp:1'\n" + VALID,
            "server.listen_on",
            "unknown key (did you mean listen?)",
        )
        self.assertConfigError(
            "[server]\nmax_body = 1\n" + VALID,
            "server.max_body",
            "unknown key (did you mean max_body_size?)",
        )

    def test_workers(self) -> None:
        """
        C{workers} is a number of processes or C{"auto"}; anything else is
        refused.
        """
        config = self.load("[server]\nworkers = 4\n" + VALID)
        self.assertEqual(config.server.workers, 4)
        config = self.load('[server]\nworkers = "auto"\n' + VALID)
        self.assertGreaterEqual(config.server.workers, 1)
        self.assertConfigError(
            "[server]\nworkers = 0\n" + VALID,
            "server.workers",
            "must be from 1 to 256, got 0",
        )
        self.assertConfigError(
            '[server]\nworkers = "many"\n' + VALID,
            "server.workers",
            "expected a number of processes or \"auto\", got 'many'",
        )

    def test_listenSingleString(self) -> None:
        """
        A single endpoint string is a list of one.
        """
        config = self.load('[server]\nlisten = "tcp:9090"\n' + VALID)
        self.assertEqual(config.server.listen, ("tcp:9090",))

    def test_listenWrongType(self) -> None:
        """
        C{listen} must be a string or a list of strings.
        """
        self.assertConfigError(
            "[server]\nlisten = 8080\n" + VALID,
            "server.listen",
            "expected a list of strings, got int",
        )
        self.assertConfigError(
            '[server]\nlisten = ["tcp:1", 8080]\n' + VALID,
            "server.listen[1]",
            "expected a string, got int",
        )

    def test_listenBadEndpoint(self) -> None:
        """
        Each endpoint is validated; the error names its index.
        """
        error = self.assertRaises(
            ConfigError,
            parseConfig,
            withServer(listen=["tcp:8080", "tcpp:8080"]),
            "f",
            ".",
        )
        self.assertEqual(error.key, "server.listen[1]")
        self.assertTrue(error.message.startswith("invalid server endpoint 'tcpp:8080'"))
        error = self.assertRaises(
            ConfigError, parseConfig, withServer(listen="tcp:port"), "f", "."
        )
        self.assertEqual(error.key, "server.listen")

    def test_listenEmpty(self) -> None:
        """
        An empty list of endpoints is refused, as is an empty endpoint.
        """
        self.assertDataError(
            withServer(listen=[]), "server.listen", "must list at least one endpoint"
        )
        self.assertDataError(withServer(listen=[""]), "server.listen[0]")

    def test_listenTwice(self) -> None:
        """
        The same endpoint listed twice is refused.
        """
        self.assertDataError(
            withServer(listen=["tcp:1", "tcp:1"]),
            "server.listen[1]",
            "endpoint 'tcp:1' is listed twice",
        )

    def test_accessLogRelative(self) -> None:
        """
        A relative access log path is resolved against the configuration
        file's directory; C{"-"} is kept.
        """
        path = self.writeConfig('[server]\naccess_log = "logs/access.log"\n' + VALID)
        config = loadConfig(path)
        self.assertEqual(
            config.server.accessLog,
            os.path.join(os.path.dirname(os.path.abspath(path)), "logs", "access.log"),
        )
        self.assertEqual(
            self.load('[server]\naccess_log = "-"\n' + VALID).server.accessLog, "-"
        )
        self.assertDataError(withServer(access_log=""), "server.access_log")
        self.assertDataError(
            withServer(access_log=1), "server.access_log", "expected a string, got int"
        )

    def test_serverHeader(self) -> None:
        """
        C{server_header} must be printable ASCII.
        """
        for bad in ["", "a\r\nb", " x", "caf\u00e9"]:
            self.assertDataError(withServer(server_header=bad), "server.server_header")

    def test_via(self) -> None:
        """
        C{via} is a pseudonym; false or C{""} disables it; true keeps the
        default.
        """
        for value, expected in [
            (False, None),
            ("", None),
            (True, "twisted_rproxy"),
            ("edge:8080", "edge:8080"),
        ]:
            config = parseConfig(withServer(via=value), "f", ".")
            self.assertEqual(config.server.via, expected)
        self.assertDataError(
            withServer(via=1), "server.via", "expected a string or false, got int"
        )
        self.assertDataError(withServer(via="two words"), "server.via")

    def test_trustedProxies(self) -> None:
        """
        Trusted proxies are normalized networks; anything else is refused with
        its index.
        """
        config = parseConfig(
            withServer(trusted_proxies=["192.168.1.7/24", "2001:db8::1/32"]), "f", "."
        )
        self.assertEqual(
            config.server.trustedProxies, ("192.168.1.0/24", "2001:db8::/32")
        )
        self.assertDataError(
            withServer(trusted_proxies=["10.0.0.0/8", "10.0.0.300"]),
            "server.trusted_proxies[1]",
            "invalid network '10.0.0.300' (expected an IPv4 or IPv6 address or "
            'CIDR network like "10.0.0.0/8")',
        )
        self.assertDataError(
            withServer(trusted_proxies="10.0.0.0/8"),
            "server.trusted_proxies",
            "expected a list of strings, got str",
        )

    def test_hideHeaders(self) -> None:
        """
        Hidden headers are lowercased tokens.
        """
        config = parseConfig(withServer(hide_headers=["X-A", "Server"]), "f", ".")
        self.assertEqual(config.server.hideHeaders, ("x-a", "server"))
        self.assertEqual(
            parseConfig(withServer(hide_headers=[]), "f", ".").server.hideHeaders, ()
        )
        self.assertDataError(
            withServer(hide_headers=["Bad Header"]),
            "server.hide_headers[0]",
            "invalid header name 'Bad Header'",
        )

    def test_clientIPHeaders(self) -> None:
        """
        C{client_ip_headers} defaults to the headers proxies and CDNs name
        the client in; a list given replaces it, lowercased; its names must
        be tokens.
        """
        self.assertEqual(
            ServerConfig().clientIPHeaders,
            (
                "x-real-ip",
                "true-client-ip",
                "x-client-ip",
                "cf-connecting-ip",
                "fastly-client-ip",
                "x-cluster-client-ip",
            ),
        )
        config = parseConfig(withServer(client_ip_headers=["X-Origin-IP"]), "f", ".")
        self.assertEqual(config.server.clientIPHeaders, ("x-origin-ip",))
        config = parseConfig(withServer(client_ip_headers=[]), "f", ".")
        self.assertEqual(config.server.clientIPHeaders, ())
        self.assertDataError(
            withServer(client_ip_headers=["X-A", "Bad Header"]),
            "server.client_ip_headers[1]",
            "invalid header name 'Bad Header'",
        )

    def test_minBodyRate(self) -> None:
        """
        C{min_body_rate} is 240 bytes per second and C{min_body_rate_grace}
        5 seconds by default; 0 turns the rate off; a negative one is an
        error.
        """
        server = parseConfig(withServer(), "f", ".").server
        self.assertEqual((server.minBodyRate, server.minBodyRateGrace), (240, 5.0))
        server = parseConfig(
            withServer(min_body_rate="1KiB", min_body_rate_grace="500ms"), "f", "."
        ).server
        self.assertEqual((server.minBodyRate, server.minBodyRateGrace), (1024, 0.5))
        server = parseConfig(
            withServer(min_body_rate=0, min_body_rate_grace=0), "f", "."
        ).server
        self.assertEqual((server.minBodyRate, server.minBodyRateGrace), (0, 0.0))
        self.assertDataError(withServer(min_body_rate=-1), "server.min_body_rate")
        self.assertDataError(
            withServer(min_body_rate_grace="-1s"),
            "server.min_body_rate_grace",
            "must not be negative, got '-1s'",
        )

    def test_sizesAndDurations(self) -> None:
        """
        Sizes and durations are parsed, and their errors name the key.
        """
        config = parseConfig(
            withServer(max_body_size=0, max_header_size="1KB", idle_timeout=1.5),
            "f",
            ".",
        )
        self.assertEqual(config.server.maxBodySize, 0)
        self.assertEqual(config.server.maxHeaderSize, 1000)
        self.assertEqual(config.server.idleTimeout, 1.5)
        self.assertDataError(withServer(max_body_size="lots"), "server.max_body_size")
        self.assertDataError(
            withServer(max_header_size=0),
            "server.max_header_size",
            "must be at least 1 bytes, got 0",
        )
        self.assertDataError(
            withServer(idle_timeout="0s"),
            "server.idle_timeout",
            "must be greater than 0, got '0s'",
        )
        self.assertDataError(withServer(idle_timeout="later"), "server.idle_timeout")
        self.assertDataError(
            withServer(idle_timeout=[1]),
            "server.idle_timeout",
            'expected a duration (a number of seconds, or a string like "5s" '
            'or "250ms"), got list',
        )

    def test_wrongTypes(self) -> None:
        """
        Booleans must be booleans and integers integers; a boolean is not an
        integer.
        """
        self.assertDataError(
            withServer(request_buffering="yes"),
            "server.request_buffering",
            "expected a boolean (true or false), got str",
        )
        self.assertDataError(
            withServer(forwarded_headers=1),
            "server.forwarded_headers",
            "expected a boolean (true or false), got int",
        )
        self.assertDataError(
            withServer(max_headers=True),
            "server.max_headers",
            "expected an integer, got bool",
        )
        self.assertDataError(
            withServer(max_headers=0), "server.max_headers", "must be at least 1, got 0"
        )
        self.assertDataError(
            withServer(max_body_size=True),
            "server.max_body_size",
            'expected a size (a number of bytes, or a string like "64KiB" or '
            '"10MB"), got bool',
        )


class PoolTableTests(ConfigTestMixin):
    """
    Tests for C{[pools.NAME]} and backend URLs.
    """

    def serverFor(self, url: str) -> BackendServer:
        """
        Load a pool with the one server C{url} and return that server.
        """
        config = parseConfig(withPool(servers=[url]), "f", ".")
        return config.pools["app"].servers[0]

    def assertBadURL(self, url: str, message: str | None = None) -> ConfigError:
        """
        A pool whose second server is C{url} is refused on that entry.
        """
        return self.assertDataError(
            withPool(servers=["http://127.0.0.1:8001", url]),
            "pools.app.servers[1]",
            message,
        )

    def test_defaults(self) -> None:
        """
        A pool with only servers has the documented defaults.
        """
        pool = self.load(VALID).pools["app"]
        self.assertEqual(pool.name, "app")
        self.assertEqual(pool.balance, "round-robin")
        self.assertEqual(pool.maxConnections, 256)
        self.assertEqual(pool.maxPending, 1024)
        self.assertEqual(pool.maxIdle, 64)
        self.assertEqual(pool.connectTimeout, 5.0)
        self.assertEqual(pool.readTimeout, 60.0)
        self.assertEqual(pool.idleTimeout, 30.0)
        self.assertEqual(pool.pendingTimeout, 10.0)
        self.assertIsNone(pool.hostHeader)
        self.assertEqual(pool.retries, 1)

    def test_allKeys(self) -> None:
        """
        Every key of a pool is read into L{PoolConfig}.
        """
        pool = self.load(
            """
[pools.app]
servers = ["https://a.internal", { url = "http://b.internal:81", weight = 3 }]
balance = "round-robin"
max_connections = 10
max_pending = 0
max_idle = 0
connect_timeout = "250ms"
read_timeout = "2m"
idle_timeout = 5
pending_timeout = 0.5
host_header = "backend"
retries = 0
"""
            + ROUTE
        ).pools["app"]
        self.assertEqual(
            pool,
            PoolConfig(
                name="app",
                servers=(
                    BackendServer(
                        url="https://a.internal",
                        scheme="https",
                        host="a.internal",
                        port=443,
                    ),
                    BackendServer(
                        url="http://b.internal:81",
                        scheme="http",
                        host="b.internal",
                        port=81,
                        weight=3,
                    ),
                ),
                maxConnections=10,
                maxPending=0,
                maxIdle=0,
                connectTimeout=0.25,
                readTimeout=120.0,
                idleTimeout=5.0,
                pendingTimeout=0.5,
                hostHeader="backend",
                retries=0,
            ),
        )

    def test_unknownKey(self) -> None:
        """
        A misspelt pool key is named in full, with a suggestion.
        """
        error = self.assertConfigError(
            POOL + "max_conections = 3\n" + ROUTE,
            "pools.app.max_conections",
            "unknown key (did you mean max_connections?)",
        )
        self.assertTrue(
            str(error).endswith(
                "pools.app.max_conections: unknown key (did you mean max_connections?)"
            )
        )

    def test_healthUnknownKey(self) -> None:
        """
        An unknown key inside C{health} is named with its full dotted key.
        """
        self.assertDataError(
            withPool(health={"intervall": "1s"}),
            "pools.app.health.intervall",
            "unknown key (did you mean interval?)",
        )

    def test_booleanIsNotAnInteger(self) -> None:
        """
        C{max_connections = true} is refused.
        """
        self.assertConfigError(
            POOL + "max_connections = true\n" + ROUTE,
            "pools.app.max_connections",
            "expected an integer, got bool",
        )

    def test_integerRanges(self) -> None:
        """
        Counts below their minimum are refused.
        """
        self.assertDataError(
            withPool(max_connections=0),
            "pools.app.max_connections",
            "must be at least 1, got 0",
        )
        for key in ["max_pending", "max_idle", "retries"]:
            self.assertDataError(
                withPool(**{key: -1}), f"pools.app.{key}", "must be at least 0, got -1"
            )

    def test_timeouts(self) -> None:
        """
        Timeouts are durations greater than zero.
        """
        for key in [
            "connect_timeout",
            "read_timeout",
            "idle_timeout",
            "pending_timeout",
        ]:
            self.assertDataError(
                withPool(**{key: 0}),
                f"pools.app.{key}",
                "must be greater than 0, got 0",
            )
            self.assertDataError(withPool(**{key: "5 parsecs"}), f"pools.app.{key}")

    def test_balance(self) -> None:
        """
        An unknown balancing method is refused, naming the supported ones.
        """
        self.assertDataError(
            withPool(balance="least-connections"),
            "pools.app.balance",
            "unsupported balancing method 'least-connections' (supported: "
            "round-robin, least-requests, random-two, hash)",
        )

    def test_hostHeader(self) -> None:
        """
        C{host_header} is absent or "preserve" (L{None}), "backend", or a
        literal value.
        """
        for value, expected in [
            ("preserve", None),
            ("backend", "backend"),
            ("www.example.com", "www.example.com"),
            ("example.com:8080", "example.com:8080"),
        ]:
            pool = parseConfig(withPool(host_header=value), "f", ".").pools["app"]
            self.assertEqual(pool.hostHeader, expected)
        for bad in ["", "a b", "a\r\nX-Evil: 1"]:
            self.assertDataError(withPool(host_header=bad), "pools.app.host_header")

    def test_poolNames(self) -> None:
        """
        Pool names are non-empty and made of letters, digits, C{_}, C{.}, C{-}.
        """
        data: dict[str, object] = {
            "pools": {"a.b-c_1": {"servers": ["http://h"]}},
            "routes": [{"pool": "a.b-c_1"}],
        }
        self.assertEqual(list(parseConfig(data, "f", ".").pools), ["a.b-c_1"])
        self.assertDataError(
            {"pools": {"": {"servers": ["http://h"]}}, "routes": []},
            'pools.""',
            "a pool name must not be empty",
        )
        self.assertDataError(
            {"pools": {"my pool": {"servers": ["http://h"]}}, "routes": []},
            'pools."my pool"',
            "invalid pool name 'my pool' (use letters, digits, '_', '.' and '-')",
        )

    def test_serversRequired(self) -> None:
        """
        A pool needs a non-empty list of servers.
        """
        self.assertConfigError(
            "[pools.app]\n" + ROUTE,
            "pools.app.servers",
            'is required: a list of backend URLs like "http://host:port"',
        )
        self.assertDataError(
            withPool(servers=[]),
            "pools.app.servers",
            "must list at least one backend server",
        )
        self.assertDataError(
            withPool(servers="http://h"),
            "pools.app.servers",
            "expected a list of backend URLs, got str",
        )
        self.assertDataError(withPool(servers=[8001]), "pools.app.servers[0]")

    def test_serverTable(self) -> None:
        """
        A server table needs a C{url}; its C{weight} is at least 1; other keys
        are unknown.
        """
        self.assertDataError(
            withPool(servers=[{"weight": 2}]), "pools.app.servers[0].url", "is required"
        )
        self.assertDataError(
            withPool(servers=[{"url": "http://h", "weight": 0}]),
            "pools.app.servers[0].weight",
            "must be at least 1, got 0",
        )
        self.assertDataError(
            withPool(servers=[{"url": "http://h", "wieght": 2}]),
            "pools.app.servers[0].wieght",
            "unknown key (did you mean weight?)",
        )
        self.assertDataError(
            withPool(servers=[{"url": "ftp://h"}]), "pools.app.servers[0].url"
        )

    def test_urlHostsAndPorts(self) -> None:
        """
        Hosts are lowercased, IPv6 brackets removed, default ports filled in.
        """
        self.assertEqual(
            self.serverFor("http://[::1]:8001"),
            BackendServer(
                url="http://[::1]:8001", scheme="http", host="::1", port=8001
            ),
        )
        self.assertEqual(
            self.serverFor("HTTPS://App.Internal/"),
            BackendServer(
                url="HTTPS://App.Internal/",
                scheme="https",
                host="app.internal",
                port=443,
            ),
        )
        self.assertEqual(self.serverFor("http://h").port, 80)
        self.assertEqual(self.serverFor("http://h:65535").port, 65535)

    def test_urlScheme(self) -> None:
        """
        Only http and https backends are accepted.
        """
        error = self.assertBadURL(
            "ftp://127.0.0.1:21",
            "unsupported scheme 'ftp' in 'ftp://127.0.0.1:21' (expected http or https)",
        )
        self.assertEqual(
            str(error),
            "f.toml: pools.app.servers[1]: unsupported scheme 'ftp' in "
            "'ftp://127.0.0.1:21' (expected http or https)",
        )
        self.assertBadURL(
            "127.0.0.1:8001",
            "not a URL: '127.0.0.1:8001' "
            "(expected http://HOST[:PORT] or https://HOST[:PORT])",
        )

    def test_urlMissingHost(self) -> None:
        """
        A backend URL needs a host.
        """
        for url in ["http://", "http://:8001", "http:///"]:
            self.assertBadURL(url)
        self.assertBadURL(
            "http://:8001",
            "backend URL 'http://:8001' has no host "
            "(expected http://HOST[:PORT] or https://HOST[:PORT])",
        )

    def test_urlPort(self) -> None:
        """
        Ports are numbers from 1 to 65535.
        """
        self.assertBadURL(
            "http://h:0",
            "port 0 in backend URL 'http://h:0' is out of range (expected 1 to 65535)",
        )
        self.assertBadURL(
            "http://h:70000",
            "port 70000 in backend URL 'http://h:70000' is out of range "
            "(expected 1 to 65535)",
        )
        self.assertBadURL(
            "http://h:http", "invalid port 'http' in backend URL 'http://h:http'"
        )
        self.assertBadURL("http://h:-1")

    def test_urlPath(self) -> None:
        """
        A backend URL has no path other than C{/}.
        """
        self.assertBadURL(
            "http://h:8001/app",
            "backend URL 'http://h:8001/app' must not contain a path ('/app'); "
            "a backend URL names a server only",
        )

    def test_urlQueryAndFragment(self) -> None:
        """
        A backend URL has no query or fragment, even an empty one.
        """
        self.assertBadURL(
            "http://h/?a=1", "backend URL 'http://h/?a=1' must not contain a query"
        )
        self.assertBadURL(
            "http://h?", "backend URL 'http://h?' must not contain a query"
        )
        self.assertBadURL(
            "http://h#top", "backend URL 'http://h#top' must not contain a fragment"
        )

    def test_urlUserinfo(self) -> None:
        """
        A backend URL has no user information.
        """
        self.assertBadURL(
            "http://user:secret@h:8001",
            "backend URL 'http://user:secret@h:8001' must not contain user information",
        )

    def test_urlMalformedHosts(self) -> None:
        """
        Hosts must be host names, IPv4 addresses or bracketed IPv6 addresses.
        """
        for url in [
            "http://::1:8001",
            "http://[::1",
            "http://[nonsense]:80",
            "http://[::1]x",
            "http://bad_-.",
            "http://ex ample.com",
            "http://a..b",
            "",
        ]:
            self.assertBadURL(url)

    def test_duplicateServer(self) -> None:
        """
        The same server listed twice in a pool is refused on the second.
        """
        self.assertBadURL(
            "http://127.0.0.1:8001/",
            "'http://127.0.0.1:8001/' is the same server as 'http://127.0.0.1:8001'",
        )

    def test_unusedPoolAllowed(self) -> None:
        """
        A pool no route uses is allowed.
        """
        config = self.load(VALID + '[pools.spare]\nservers = ["http://h"]\n')
        self.assertEqual(sorted(config.pools), ["app", "spare"])


class RouteTableTests(ConfigTestMixin):
    """
    Tests for C{[[routes]]}.
    """

    def makeDirectory(self) -> str:
        """
        Make a new directory and return its path.
        """
        path: str = self.mktemp()
        os.makedirs(path)
        return path

    def test_defaults(self) -> None:
        """
        A route with only a pool matches every path of every host.
        """
        self.assertEqual(self.load(VALID).routes, (RouteConfig(pool="app"),))

    def test_allKeys(self) -> None:
        """
        Every key of a route is read into L{RouteConfig}.
        """
        route = self.load(
            POOL
            + """
[[routes]]
path = "/api/"
host = "API.Example.com"
pool = "app"
strip_prefix = true
max_body_size = "1KiB"
request_buffering = false
"""
        ).routes[0]
        self.assertEqual(
            route,
            RouteConfig(
                path="/api/",
                host="api.example.com",
                pool="app",
                stripPrefix=True,
                maxBodySize=1024,
                requestBuffering=False,
            ),
        )

    def test_orderKept(self) -> None:
        """
        Routes are kept in file order.
        """
        config = self.load(
            POOL
            + '[[routes]]\npool = "app"\n'
            + '[[routes]]\npath = "/a/"\npool = "app"\n'
            + '[[routes]]\npath = "/a/b/"\npool = "app"\n'
        )
        self.assertEqual([r.path for r in config.routes], ["/", "/a/", "/a/b/"])

    def test_unknownKey(self) -> None:
        """
        A misspelt route key is named with the route's index.
        """
        self.assertConfigError(
            VALID + '[[routes]]\npath = "/x/"\npool = "app"\nstrip_prefx = true\n',
            "routes[1].strip_prefx",
            "unknown key (did you mean strip_prefix?)",
        )

    def test_cacheUndefined(self) -> None:
        """
        A route's C{cache} must name a C{[caches.NAME]} table.
        """
        self.assertDataError(
            withRoute(cache="main"),
            "routes[0].cache",
            "no cache named 'main' (defined: none)",
        )

    def test_missingPool(self) -> None:
        """
        A route naming an undefined pool is refused, listing the defined ones.
        """
        error = self.assertConfigError(
            VALID + '[[routes]]\npath = "/x/"\npool = "ap"\n',
            "routes[1].pool",
            "no pool named 'ap' (defined: app)",
        )
        self.assertTrue(
            str(error).endswith("routes[1].pool: no pool named 'ap' (defined: app)")
        )
        self.assertDataError(
            {"routes": [{"pool": "app"}]},
            "routes[0].pool",
            "no pool named 'app' (defined: none)",
        )

    def test_poolAndStatic(self) -> None:
        """
        A route has exactly one of C{pool} and C{static}.
        """
        directory = self.makeDirectory()
        self.assertDataError(
            withRoute(pool="app", static=directory),
            "routes[0]",
            "must have exactly one of 'pool' or 'static', not both",
        )
        data = withPool()
        data["routes"] = [{"path": "/"}]
        self.assertDataError(
            data,
            "routes[0]",
            "must have exactly one of 'pool' or 'static', has neither",
        )

    def test_duplicateRoute(self) -> None:
        """
        Two routes with the same host and path are refused on the second.
        """
        self.assertConfigError(
            VALID + '[[routes]]\npath = "/x/"\npool = "app"\n' + ROUTE,
            "routes[2]",
            "same host and path as routes[0] (any host, path '/')",
        )
        self.assertConfigError(
            POOL
            + '[[routes]]\nhost = "a.com"\npool = "app"\n'
            + '[[routes]]\nhost = "A.com."\npool = "app"\n',
            "routes[1]",
            "same host and path as routes[0] (host 'a.com', path '/')",
        )

    def test_sameHostDifferentPath(self) -> None:
        """
        Routes differing by host or path only are distinct.
        """
        config = self.load(
            VALID
            + '[[routes]]\nhost = "a.com"\npool = "app"\n'
            + '[[routes]]\npath = "/a"\npool = "app"\n'
            + '[[routes]]\npath = "/a/"\npool = "app"\n'
        )
        self.assertEqual(len(config.routes), 4)

    def test_path(self) -> None:
        """
        Paths start with C{/} and hold no spaces, query or fragment.
        """
        self.assertDataError(
            withRoute(path="api/"), "routes[0].path", "must start with '/', got 'api/'"
        )
        for bad in ["", "/a b", "/a?b", "/a#b", "/\t"]:
            self.assertDataError(withRoute(path=bad), "routes[0].path")
        self.assertDataError(
            withRoute(path=1), "routes[0].path", "expected a string, got int"
        )

    def test_hostNormalized(self) -> None:
        """
        Hosts and wildcard hosts are stored lowercased, without a trailing
        dot.
        """
        for host, expected in [
            ("Example.COM", "example.com"),
            ("*.Example.com", "*.example.com"),
            ("example.com.", "example.com"),
            ("127.0.0.1", "127.0.0.1"),
            ("[::1]", "[::1]"),
        ]:
            config = parseConfig(withRoute(host=host), "f", ".")
            self.assertEqual(config.routes[0].host, expected)

    def test_badHosts(self) -> None:
        """
        Hosts with ports, misplaced wildcards or odd characters are refused.
        """
        self.assertDataError(
            withRoute(host="example.com:8080"),
            "routes[0].host",
            "invalid host 'example.com:8080': a host must not include a port "
            "(write IPv6 addresses in brackets)",
        )
        self.assertDataError(
            withRoute(host=""),
            "routes[0].host",
            "must not be empty; leave it out to match any host",
        )
        for bad in [
            "*",
            "*example.com",
            "a.*.com",
            "*.*.com",
            "exa mple.com",
            "[::1]:80",
            "[zz]",
        ]:
            self.assertDataError(withRoute(host=bad), "routes[0].host")

    def test_staticRelative(self) -> None:
        """
        A relative static directory is resolved against the configuration
        file's directory.
        """
        path = self.writeConfig('[[routes]]\nstatic = "www"\n')
        base = os.path.dirname(os.path.abspath(path))
        os.makedirs(os.path.join(base, "www"))
        config = loadConfig(path)
        self.assertEqual(config.routes[0].static, os.path.join(base, "www"))

    def test_staticAbsolute(self) -> None:
        """
        An absolute static directory is kept.
        """
        directory = os.path.abspath(self.makeDirectory())
        config = parseConfig(withRoute(static=directory), "f", "/nonexistent")
        self.assertEqual(config.routes[0].static, directory)

    def test_staticMissing(self) -> None:
        """
        A static directory must exist and be a directory.
        """
        base = os.path.abspath(self.makeDirectory())
        with open(os.path.join(base, "file"), "w") as f:
            f.write("")
        missing = os.path.join(base, "missing")
        error = self.assertRaises(
            ConfigError, parseConfig, withRoute(static="missing"), "f", base
        )
        self.assertEqual(
            (error.key, error.message),
            ("routes[0].static", f"directory {missing!r} does not exist"),
        )
        error = self.assertRaises(
            ConfigError, parseConfig, withRoute(static="file"), "f", base
        )
        self.assertEqual(
            error.message, f"{os.path.join(base, 'file')!r} is not a directory"
        )

    def test_poolOnlyKeysOnStatic(self) -> None:
        """
        C{strip_prefix} and C{request_buffering} are refused on static routes.
        """
        directory = self.makeDirectory()
        for key in ["strip_prefix", "request_buffering"]:
            self.assertDataError(
                withRoute(static=directory, **{key: False}),
                f"routes[0].{key}",
                "applies to pool routes only (a static route serves its "
                "directory under its path)",
            )

    def test_allowTrace(self) -> None:
        """
        C{allow_trace} is off by default, a boolean, and for pool routes
        only.
        """
        self.assertFalse(parseConfig(withRoute(), "f", ".").routes[0].allowTrace)
        route = parseConfig(withRoute(allow_trace=True), "f", ".").routes[0]
        self.assertTrue(route.allowTrace)
        self.assertDataError(
            withRoute(allow_trace="yes"),
            "routes[0].allow_trace",
            "expected a boolean (true or false), got str",
        )
        self.assertDataError(
            withRoute(static=self.makeDirectory(), allow_trace=False),
            "routes[0].allow_trace",
            "applies to pool routes only (a static route answers TRACE with 405)",
        )

    def test_routeMaxBodySize(self) -> None:
        """
        A route's C{max_body_size} is a size.
        """
        self.assertDataError(withRoute(max_body_size="big"), "routes[0].max_body_size")
        self.assertDataError(
            withRoute(request_buffering="no"),
            "routes[0].request_buffering",
            "expected a boolean (true or false), got str",
        )


class ConfigFromArgumentsTests(SynchronousTestCase):
    """
    Tests for L{configFromArguments}.
    """

    def test_backends(self) -> None:
        """
        Backends make one round-robin pool named C{default} routed on C{/}.
        """
        config = configFromArguments(
            ["tcp:8080"], ["http://127.0.0.1:8001", "http://127.0.0.1:8002"], None
        )
        self.assertEqual(config.source, COMMAND_LINE)
        self.assertEqual(config.source, "<command line>")
        self.assertEqual(list(config.pools), ["default"])
        pool = config.pools["default"]
        self.assertEqual(pool.balance, "round-robin")
        self.assertEqual([s.port for s in pool.servers], [8001, 8002])
        self.assertEqual(config.routes, (RouteConfig(path="/", pool="default"),))
        self.assertEqual(config.server.listen, ("tcp:8080",))
        self.assertIsNone(config.server.accessLog)

    def test_defaultListen(self) -> None:
        """
        Without endpoints, the proxy listens on C{tcp:8080}.
        """
        config = configFromArguments([], ["http://h"], None)
        self.assertEqual(config.server.listen, ("tcp:8080",))

    def test_staticBeforeBackends(self) -> None:
        """
        A static directory is routed on its prefix, before the pool's C{/}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = configFromArguments(
            ["tcp:1"], ["http://h"], directory, staticPrefix="/static/", accessLog="-"
        )
        self.assertEqual(
            config.routes,
            (
                RouteConfig(path="/static/", static=directory),
                RouteConfig(path="/", pool="default"),
            ),
        )
        self.assertEqual(config.server.accessLog, "-")

    def test_staticOnly(self) -> None:
        """
        A static directory alone is served on C{/}, relative to the current
        directory, with no pool.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        config = configFromArguments(["tcp:1"], [], directory)
        self.assertEqual(config.pools, {})
        self.assertEqual(
            config.routes, (RouteConfig(path="/", static=os.path.abspath(directory)),)
        )

    def test_nothingToServe(self) -> None:
        """
        Neither backends nor a static directory is an error.
        """
        error = self.assertRaises(ConfigError, configFromArguments, ["tcp:1"], [], None)
        self.assertEqual(
            str(error),
            "<command line>: --backend: nothing to serve: give at least one "
            "--backend URL or a --static directory",
        )

    def test_errorsNameOptions(self) -> None:
        """
        Errors name the command-line option at fault.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        for args, key in [
            ((["nonsense:1"], ["http://h"], None), "--listen"),
            ((["tcp:1"], ["ftp://h"], None), "--backend"),
            ((["tcp:1"], ["http://h", "http://h:80"], None), "--backend"),
            ((["tcp:1"], [], self.mktemp()), "--static"),
            ((["tcp:1"], ["http://h"], directory), "--static-prefix"),
        ]:
            error = self.assertRaises(ConfigError, configFromArguments, *args)
            self.assertEqual((error.source, error.key), (COMMAND_LINE, key), args)
        error = self.assertRaises(
            ConfigError, configFromArguments, ["tcp:1"], [], directory, "static"
        )
        self.assertEqual(error.key, "--static-prefix")
        error = self.assertRaises(
            ConfigError, configFromArguments, ["tcp:1"], ["http://h"], None, "/", ""
        )
        self.assertEqual(error.key, "--access-log")


class BalancingKeysTests(ConfigTestMixin):
    """
    The balancing, health and retry keys of C{[pools.NAME]}.
    """

    def pool(self, **extra: object) -> PoolConfig:
        return parseConfig(withPool(**extra), "f", ".").pools["app"]

    def test_defaults(self) -> None:
        """
        Without the keys: round robin, no health checks, no outlier
        ejection, panic at 50%, the default retry budget, no slow start.
        """
        pool = self.pool()
        self.assertEqual(pool.balance, "round-robin")
        self.assertIsNone(pool.hashOn)
        self.assertIsNone(pool.health)
        self.assertIsNone(pool.outlier)
        self.assertEqual(pool.panicThreshold, 50.0)
        self.assertEqual(pool.retryBudget, RetryBudgetConfig())
        self.assertEqual(pool.retryStatuses, (502, 503, 504))
        self.assertEqual(pool.slowStart, 0.0)

    def test_balanceMethods(self) -> None:
        """
        Each balancing method is accepted; C{hash} hashes the client by
        default.
        """
        for method in ["round-robin", "least-requests", "random-two", "hash"]:
            self.assertEqual(self.pool(balance=method).balance, method)
        self.assertEqual(self.pool(balance="hash").hashOn, "client")

    def test_hashOn(self) -> None:
        """
        C{hash_on} takes "client", "header:NAME" or "cookie:NAME".
        """
        for value in ["client", "header:X-User", "cookie:session"]:
            self.assertEqual(self.pool(balance="hash", hash_on=value).hashOn, value)
        self.assertDataError(
            withPool(balance="hash", hash_on="query:x"),
            "pools.app.hash_on",
            "invalid value 'query:x' (expected \"client\", \"header:NAME\" or "
            '"cookie:NAME")',
        )
        self.assertDataError(
            withPool(balance="hash", hash_on="header:"),
            "pools.app.hash_on",
            "invalid header name '' in 'header:'",
        )

    def test_hashOnNeedsHash(self) -> None:
        """
        C{hash_on} with another balancing method is a mistake.
        """
        self.assertDataError(
            withPool(hash_on="client"),
            "pools.app.hash_on",
            'applies only to balance = "hash"',
        )

    def test_health(self) -> None:
        """
        Every C{health} key is read, durations and status ranges included.
        """
        pool = self.pool(
            health={
                "path": "/healthz",
                "interval": "2s",
                "timeout": "500ms",
                "statuses": [200, "300-399"],
                "rise": 3,
                "fall": 1,
            }
        )
        self.assertEqual(
            pool.health,
            HealthCheckConfig(
                path="/healthz",
                interval=2.0,
                timeout=0.5,
                statuses=((200, 200), (300, 399)),
                rise=3,
                fall=1,
            ),
        )
        self.assertEqual(self.pool(health={}).health, HealthCheckConfig())

    def test_healthMistakes(self) -> None:
        """
        Bad health values are refused with their dotted keys.
        """
        cases: list[tuple[dict[str, object], str, str]] = [
            ({"path": "healthz"}, "pools.app.health.path",
             "must be an ASCII path starting with \"/\", got 'healthz'"),
            ({"rise": 0}, "pools.app.health.rise", "must be at least 1, got 0"),
            ({"interval": "1s", "timeout": "2s"}, "pools.app.health.timeout",
             "must not be longer than the interval (1s)"),
            ({"statuses": [99]}, "pools.app.health.statuses[0]",
             "must be statuses from 100 to 599, got 99"),
            ({"statuses": ["200-"]}, "pools.app.health.statuses[0]",
             "invalid range '200-' (like \"200-399\")"),
            ({"statuses": []}, "pools.app.health.statuses",
              "must list at least one status"),
        ]  # fmt: skip
        for health, key, message in cases:
            self.assertDataError(withPool(health=health), key, message)
        self.assertDataError(
            withPool(health="yes"), "pools.app.health", "expected a table, got str"
        )

    def test_outlier(self) -> None:
        """
        Every C{outlier} key is read; an empty table enables the defaults.
        """
        pool = self.pool(
            outlier={
                "consecutive_failures": 3,
                "base_ejection": "10s",
                "max_ejection": "1m",
                "max_ejected_percent": 34,
            }
        )
        self.assertEqual(pool.outlier, OutlierConfig(3, 10.0, 60.0, 34.0))
        self.assertEqual(self.pool(outlier={}).outlier, OutlierConfig())
        self.assertDataError(
            withPool(outlier={"base_ejection": "10m", "max_ejection": "1m"}),
            "pools.app.outlier.max_ejection",
            "must not be shorter than base_ejection (600s)",
        )
        self.assertDataError(
            withPool(outlier={"max_ejected_percent": 101}),
            "pools.app.outlier.max_ejected_percent",
            "must be from 0 to 100, got 101",
        )

    def test_retries(self) -> None:
        """
        C{retry_budget}, C{retry_statuses}, C{panic_threshold} and
        C{slow_start} are read and checked.
        """
        pool = self.pool(
            retry_budget={"percent": 10, "min_retries": 2, "window": "30s"},
            retry_statuses=[503, 500],
            panic_threshold=0,
            slow_start="20s",
        )
        self.assertEqual(pool.retryBudget, RetryBudgetConfig(10.0, 2, 30.0))
        self.assertEqual(pool.retryStatuses, (500, 503))
        self.assertEqual(pool.panicThreshold, 0.0)
        self.assertEqual(pool.slowStart, 20.0)
        self.assertDataError(
            withPool(retry_statuses=[404]),
            "pools.app.retry_statuses[0]",
            "must be statuses from 500 to 599, got 404",
        )
        self.assertDataError(
            withPool(retry_budget={"percent": "x"}),
            "pools.app.retry_budget.percent",
            "expected a number, got str",
        )
        self.assertDataError(
            withPool(panic_threshold=True),
            "pools.app.panic_threshold",
            "expected a number, got bool",
        )
        self.assertDataError(
            withPool(slow_start="-1s"),
            "pools.app.slow_start",
            "must not be negative, got '-1s'",
        )


class StaticRouteKeysTests(ConfigTestMixin):
    """
    Tests for the keys of static routes.
    """

    def staticRoute(self, extra: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return f"[[routes]]\nstatic = {directory!r}\n{extra}"

    def test_allKeys(self) -> None:
        """
        Every static key is read into L{RouteConfig}.
        """
        route = self.load(
            self.staticRoute(
                'index = ["index.htm", "default.html"]\n'
                "list_directories = true\n"
                "allow_hidden = true\n"
                "follow_symlinks_outside = true\n"
                'cache_control = "public, max-age=60"\n'
                'cache_control_by_extension = { ".woff2" = "max-age=31536000" }\n'
                'mime_types = { md = "text/markdown; charset=utf-8" }\n'
            )
        ).routes[0]
        self.assertEqual(route.index, ("index.htm", "default.html"))
        self.assertTrue(route.listDirectories)
        self.assertTrue(route.allowHidden)
        self.assertTrue(route.followSymlinksOutside)
        self.assertEqual(route.cacheControl, "public, max-age=60")
        self.assertEqual(
            route.cacheControlByExtension, (("woff2", "max-age=31536000"),)
        )
        self.assertEqual(
            route.mimeTypes, (("md", "text/markdown; charset=utf-8"),)
        )

    def test_defaults(self) -> None:
        """
        By default: index.html, no listings, no hidden files, no symlinks out.
        """
        route = self.load(self.staticRoute("")).routes[0]
        self.assertEqual(route.index, ("index.html",))
        self.assertFalse(route.listDirectories or route.allowHidden)
        self.assertFalse(route.followSymlinksOutside)
        self.assertIsNone(route.cacheControl)

    def test_errors(self) -> None:
        """
        Each mistake names its key.
        """
        cases = [
            ('index = ["a/b.html"]\n', "routes[0].index[0]"),
            ('index = [".."]\n', "routes[0].index[0]"),
            ('cache_control = "caf\u00e9"\n', "routes[0].cache_control"),
            ("list_directories = 1\n", "routes[0].list_directories"),
            ("mime_types = { md = 1 }\n", "routes[0].mime_types.md"),
            ('mime_types = { "a b" = "x/y" }\n', 'routes[0].mime_types."a b"'),
            (
                'cache_control_by_extension = "x"\n',
                "routes[0].cache_control_by_extension",
            ),
        ]
        for extra, key in cases:
            path = self.writeConfig(self.staticRoute(extra))
            error = self.assertRaises(ConfigError, loadConfig, path)
            self.assertEqual(error.key, key, extra)

    def test_staticKeysOnPoolRoute(self) -> None:
        """
        Static keys on a pool route are refused.
        """
        self.assertConfigError(
            POOL + '[[routes]]\npool = "app"\ncache_control = "no-store"\n',
            "routes[0].cache_control",
            "applies to static routes only",
        )


class UnixServerTests(ConfigTestMixin):
    """
    Unix-socket backend URLs (C{http://unix:/PATH}, C{https://unix:/PATH})
    and the C{tls_server_name} they need over TLS.
    """

    def serverFor(self, url: str, **pool: object) -> BackendServer:
        config = parseConfig(withPool(servers=[url], **pool), "f.toml", ".")
        return config.pools["app"].servers[0]

    def assertBadURL(self, url: str, message: str) -> None:
        """
        A pool whose second server is C{url} is refused on that entry, the
        message naming the URL.
        """
        error = self.assertDataError(
            withPool(servers=["http://127.0.0.1:8001", url]),
            "pools.app.servers[1]",
        )
        self.assertIn(message, error.message)
        self.assertIn(repr(url), error.message)

    def test_plain(self) -> None:
        """
        C{http://unix:/PATH} is a server on that socket, whose C{Host} is
        C{localhost}; the URL is kept as written and the path normalized.
        """
        server = self.serverFor("http://UNIX:/run/./app//app.sock")
        self.assertEqual(
            server,
            BackendServer(
                url="http://UNIX:/run/./app//app.sock",
                scheme="http",
                host="localhost",
                port=80,
                socketPath="/run/app/app.sock",
            ),
        )

    def test_tls(self) -> None:
        """
        C{https://unix:/PATH} with the pool's C{tls_server_name} parses;
        the name is the pool's.
        """
        config = parseConfig(
            withPool(
                servers=["https://unix:/run/app.sock"],
                tls_server_name="App.Internal.",
            ),
            "f.toml",
            ".",
        )
        pool = config.pools["app"]
        self.assertEqual(pool.tlsServerName, "app.internal")
        self.assertEqual(pool.servers[0].socketPath, "/run/app.sock")
        self.assertEqual((pool.servers[0].scheme, pool.servers[0].port), ("https", 443))

    def test_entryServerName(self) -> None:
        """
        A server entry may carry its own C{tls_server_name}, normalized.
        """
        entry = {
            "url": "https://unix:/run/a.sock",
            "tls_server_name": "A.internal",
            "weight": 3,
        }
        config = parseConfig(withPool(servers=[entry]), "f.toml", ".")
        server = config.pools["app"].servers[0]
        self.assertEqual((server.tlsServerName, server.weight), ("a.internal", 3))

    def test_entryServerNameErrors(self) -> None:
        """
        An entry's C{tls_server_name} must be a host name, and applies to
        https servers only: the error names the entry's key.
        """
        self.assertDataError(
            withPool(
                servers=[{"url": "https://unix:/a.sock", "tls_server_name": "a b"}]
            ),
            "pools.app.servers[0].tls_server_name",
            "invalid server name 'a b' (expected a host name like \"app.internal\")",
        )
        self.assertDataError(
            withPool(
                servers=[{"url": "http://unix:/a.sock", "tls_server_name": "a.b"}]
            ),
            "pools.app.servers[0].tls_server_name",
            "applies to https:// servers only, not 'http://unix:/a.sock'",
        )

    def test_httpsNeedsAName(self) -> None:
        """
        C{https://unix:} without a name to verify is refused on its entry;
        C{tls_verify = false} needs none.
        """
        error = self.assertDataError(
            withPool(servers=["http://127.0.0.1:8001", "https://unix:/a.sock"]),
            "pools.app.servers[1]",
        )
        self.assertIn("https over a unix socket", error.message)
        self.assertIn("tls_server_name", error.message)
        error = self.assertDataError(
            withPool(servers=["https://unix:/a.sock"], tls_ca="ca.pem"),
            "pools.app.servers[0]",
        )
        self.assertIn("tls_server_name", error.message)
        server = self.serverFor("https://unix:/a.sock", tls_verify=False)
        self.assertEqual(server.socketPath, "/a.sock")

    def test_malformed(self) -> None:
        """
        A malformed C{unix:} URL is refused with what is wrong.
        """
        self.assertBadURL("http://unix:", "names no socket path")
        self.assertBadURL("http://unix:run/app.sock", "must be absolute")
        self.assertBadURL("http://unix:8080", "must be absolute")
        self.assertBadURL("http://unix:@app", "abstract unix sockets")
        self.assertBadURL("http://unix:/run/app.sock:/api", "must not contain ':'")
        self.assertBadURL("http://unix:/run/", "names a directory")
        self.assertBadURL("http://unix:/run/..", "names a directory")
        self.assertBadURL("http://unix:/run/app.sock?x=1", "must not contain a query")
        self.assertBadURL("http://unix:/run/app.sock#f", "must not contain a fragment")
        self.assertBadURL("http://unix:/run/my app.sock", "invalid backend URL")
        self.assertBadURL("http://unix:/" + "a" * 120, "may be at most")

    def test_errorNamesFile(self) -> None:
        """
        Loaded from a file, the error names the file and the key.
        """
        text = (
            '[pools.app]\nservers = ["http://unix:app.sock"]\n'
            '[[routes]]\npool = "app"\n'
        )
        path = self.writeConfig(text)
        error = self.assertRaises(ConfigError, loadConfig, path)
        self.assertTrue(
            str(error).startswith(f"{path}: pools.app.servers[0]: the socket path"),
            str(error),
        )

    def test_distinct(self) -> None:
        """
        One socket listed twice (however written) is refused; a unix server
        and C{http://localhost} are distinct.
        """
        self.assertDataError(
            withPool(servers=["http://unix:/run/a.sock", "http://unix:/run/./a.sock"]),
            "pools.app.servers[1]",
            "'http://unix:/run/./a.sock' is the same server as 'http://unix:/run/a.sock'",
        )
        config = parseConfig(
            withPool(
                servers=[
                    "http://unix:/run/a.sock",
                    "https://unix:/run/a.sock",
                    "http://localhost",
                ],
                tls_server_name="a.internal",
            ),
            "f.toml",
            ".",
        )
        self.assertEqual(len(config.pools["app"].servers), 3)

    def test_hostNamedUnix(self) -> None:
        """
        A TCP server whose host is named C{unix} stays one.
        """
        server = self.serverFor("http://unix")
        self.assertEqual((server.host, server.socketPath), ("unix", None))

    def test_commandLine(self) -> None:
        """
        C{--backend http://unix:/PATH} makes a unix-socket server;
        C{https://unix:} cannot be given there (it needs a name).
        """
        config = configFromArguments(["tcp:1"], ["http://unix:/run/a.sock"], None)
        self.assertEqual(config.pools["default"].servers[0].socketPath, "/run/a.sock")
        error = self.assertRaises(
            ConfigError,
            configFromArguments,
            ["tcp:1"],
            ["https://unix:/run/a.sock"],
            None,
        )
        self.assertEqual(error.key, "--backend")
        self.assertIn("tls_server_name", error.message)

    @given(
        st.lists(
            st.text(
                alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-",
                min_size=1,
                max_size=12,
            ),
            min_size=1,
            max_size=6,
        )
    )
    def test_anyAbsolutePath(self, parts: list[str]) -> None:
        """
        Any absolute path of ordinary names parses, to its normalized form.
        """
        path = "/" + "/".join(parts)
        if os.path.normpath(path) == "/" or len(os.path.normpath(path)) > 103:
            return
        server = self.serverFor(f"http://unix:{path}")
        self.assertEqual(server.socketPath, os.path.normpath(path))
        self.assertEqual(server.host, "localhost")


class DiscoveryConfigTests(ConfigTestMixin):
    """
    DNS discovery entries of a pool's C{servers} (C{dns}, C{srv}) and
    C{[server] resolvers}.
    """

    def test_contract(self) -> None:
        """
        The contract's example loads: a unix socket, a C{dns} entry and an
        C{srv} entry, and C{resolvers}.
        """
        config = self.load(
            '[server]\nresolvers = ["127.0.0.1:53"]\n'
            "[pools.app]\nservers = [\n"
            '    "http://unix:/run/app.sock",\n'
            '    { dns = "app.internal", port = 8000, refresh = "10s" },\n'
            '    { srv = "_http._tcp.api.internal", refresh = "10s" },\n'
            "]\n" + ROUTE
        )
        self.assertEqual(config.server.resolvers, (("127.0.0.1", 53),))
        pool = config.pools["app"]
        self.assertEqual([s.socketPath for s in pool.servers], ["/run/app.sock"])
        self.assertEqual(
            pool.discovery,
            (
                DiscoveryConfig(
                    kind="dns",
                    name="app.internal",
                    port=8000,
                    refresh=10.0,
                    key="pools.app.servers[1]",
                ),
                DiscoveryConfig(
                    kind="srv",
                    name="_http._tcp.api.internal",
                    refresh=10.0,
                    key="pools.app.servers[2]",
                ),
            ),
        )

    def test_defaults(self) -> None:
        """
        Without C{resolvers}, the system's; an entry is resolved every 30s
        by default, over http, with weight 1; its name is normalized.
        """
        config = parseConfig(
            withPool(servers=[{"dns": "App.Internal.", "port": 80}]), "f.toml", "."
        )
        self.assertEqual(config.server.resolvers, ())
        (entry,) = config.pools["app"].discovery
        self.assertEqual(
            (entry.name, entry.refresh, entry.scheme, entry.weight),
            ("app.internal", 30.0, "http", 1),
        )
        self.assertEqual(config.pools["app"].servers, ())

    def test_https(self) -> None:
        """
        C{scheme = "https"} with C{tls_server_name} and C{weight}; the pool's
        C{tls_*} keys apply to a pool whose only https servers are
        discovered.
        """
        entry = {
            "dns": "app.internal",
            "port": 8443,
            "scheme": "https",
            "tls_server_name": "App.Example",
            "weight": 4,
        }
        config = parseConfig(withPool(servers=[entry], tls_verify=False), "f.toml", ".")
        pool = config.pools["app"]
        self.assertEqual(
            (pool.discovery[0].tlsServerName, pool.discovery[0].weight),
            ("app.example", 4),
        )
        self.assertFalse(pool.tlsVerify)

    def test_resolvers(self) -> None:
        """
        Resolvers are IP addresses with an optional port.
        """
        config = parseConfig(
            withServer(resolvers=["10.0.0.53", "127.0.0.1:5353", "::1", "[::1]:54"]),
            "f.toml",
            ".",
        )
        self.assertEqual(
            config.server.resolvers,
            (("10.0.0.53", 53), ("127.0.0.1", 5353), ("::1", 53), ("::1", 54)),
        )

    def test_badResolvers(self) -> None:
        """
        A resolver that is not an IP address (and port), or a value that is
        not a list of them, is refused naming its key.
        """
        for value, key, fragment in [
            ("127.0.0.1", "server.resolvers", "expected a list"),
            ([], "server.resolvers", "at least one"),
            (["dns.example"], "server.resolvers[0]", "not a name"),
            (["127.0.0.1:0"], "server.resolvers[0]", "invalid port '0'"),
            (["127.0.0.1", "1.2.3.4:x"], "server.resolvers[1]", "invalid port"),
            ([53], "server.resolvers[0]", "expected a string"),
            (["[::1"], "server.resolvers[0]", "invalid DNS server"),
        ]:
            error = self.assertDataError(withServer(resolvers=value), key)
            self.assertIn(fragment, error.message)

    def test_badEntries(self) -> None:
        """
        A bad discovery entry is refused naming the file and its key.
        """
        key = "pools.app.servers[1]"
        for entry, where, fragment in [
            ({"dns": "app.internal"}, ".port", "is required"),
            ({"dns": "app.internal", "port": 70000}, ".port", "1 to 65535"),
            ({"dns": "app.internal", "port": "80"}, ".port", "expected an integer"),
            ({"dns": "bad name", "port": 80}, ".dns", "invalid DNS name"),
            ({"dns": "a." + "b" * 64, "port": 80}, ".dns", "invalid DNS name"),
            ({"dns": "10.0.0.1", "port": 80}, ".dns", "is an IP address"),
            ({"dns": 3, "port": 80}, ".dns", "expected a name"),
            ({"srv": "api.internal"}, ".srv", "expected _SERVICE._PROTOCOL.NAME"),
            ({"srv": "_http._tcp.api", "port": 80}, ".port", "from its SRV record"),
            ({"srv": "_http._tcp.api", "weight": 2}, ".weight", "from its SRV"),
            ({"dns": "a", "srv": "_a._tcp.b"}, "", "either dns"),
            ({"dns": "a", "port": 1, "refresh": "500ms"}, ".refresh", "at least 1s"),
            ({"dns": "a", "port": 1, "refresh": "soon"}, ".refresh", "duration"),
            ({"dns": "a", "port": 1, "scheme": "ftp"}, ".scheme", "expected"),
            ({"dns": "a", "port": 1, "tls_server_name": "x"}, ".tls_server_name", ""),
            ({"dns": "a", "port": 1, "prot": 1}, ".prot", "unknown key"),
        ]:
            error = self.assertDataError(
                withPool(servers=["http://127.0.0.1:8001", entry]), key + where
            )
            self.assertIn(fragment, error.message)

    def test_duplicateEntry(self) -> None:
        """
        The same discovery entry twice in a pool is refused on the second.
        """
        entry = {"dns": "app.internal", "port": 80}
        error = self.assertDataError(
            withPool(servers=[entry, dict(entry, refresh="5s")]),
            "pools.app.servers[1]",
        )
        self.assertIn("pools.app.servers[0]", error.message)

    def test_errorNamesFile(self) -> None:
        """
        In a file, the error names the file and the key.
        """
        self.assertConfigError(
            '[pools.app]\nservers = [{ dns = "app.internal" }]\n' + ROUTE,
            "pools.app.servers[0].port",
            "is required: the port of every server found, like { dns = "
            '"app.internal", port = 8000 }',
        )
