"""
The configuration of twisted_rproxy: a tree of frozen attrs classes, read
from a TOML file by L{loadConfig}, from an already parsed mapping by
L{parseConfig}, or built from command-line arguments by
L{configFromArguments}.

Validation is a pure function of the data (plus two checks of the file
system: that static directories exist, and that endpoint strings parse), and
every mistake becomes one L{ConfigError} that names the file, the dotted key
and what is wrong, so that C{twistd rproxy --check} can print it without a
traceback.  Unknown keys are errors, never silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from fractions import Fraction
from typing import Any, cast

from attrs import field, frozen
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_rproxy.balance import BALANCERS, parseHashOn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "COMMAND_LINE",
    "NOT_SUPPORTED",
    "BackendServer",
    "CacheConfig",
    "CertificateConfig",
    "AdminConfig",
    "Config",
    "ConfigError",
    "FilterConfig",
    "backendServers",
    "HealthCheckConfig",
    "OutlierConfig",
    "PoolConfig",
    "RetryBudgetConfig",
    "RouteConfig",
    "ServerConfig",
    "TLSConfig",
    "configFromArguments",
    "loadConfig",
    "parseConfig",
    "parseDuration",
    "parseSize",
    "validateEndpoint",
]

COMMAND_LINE = "<command line>"
"""
The L{ConfigError.source} and L{Config.source} of a configuration built by
L{configFromArguments}.
"""

NOT_SUPPORTED = "is not supported by this version of twisted_rproxy yet"
"""
The L{ConfigError.message} for a table or key that the configuration format
reserves but this version does not implement yet.
"""

_BALANCERS = BALANCERS
_DEFAULT_LISTEN = ("tcp:8080",)
_DEFAULT_POOL = "default"

_SIZE_UNITS: Mapping[str, int] = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}
_SIZE_UNIT_NAMES = "B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB"

_DURATION_UNITS: Mapping[str, Fraction] = {
    "": Fraction(1),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}
_DURATION_UNIT_NAMES = "ms, s, m, h, d"

_NUMBER_AND_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\Z")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_VIA_PSEUDONYM = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:-]+\Z")
_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")
_HOST_HEADER_VALUE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:\[\]-]+\Z")
_URL_PATH = re.compile(r"/[\x21-\x7e]*\Z")


class ConfigError(Exception):
    """
    One configuration mistake: the file, the key and what is wrong.

    @ivar source: The configuration file's path as it was given, or
        L{COMMAND_LINE}.
    @ivar key: The dotted path of the offending key, such as
        C{"pools.app.servers[1]"} or C{"routes[0].pool"}; C{""} when the
        mistake concerns the whole file.
    @ivar message: What is wrong and, where useful, what is expected.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        """
        @param source: See L{ConfigError.source}.
        @param key: See L{ConfigError.key}.
        @param message: See L{ConfigError.message}.
        """
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        """
        @return: C{"SOURCE: KEY: MESSAGE"}, or C{"SOURCE: MESSAGE"} when
            there is no key.
        """
        if self.key:
            return f"{self.source}: {self.key}: {self.message}"
        return f"{self.source}: {self.message}"


@frozen
class BackendServer:
    """
    One backend server of a pool.

    @ivar url: The URL as it was written, such as C{"http://127.0.0.1:8001"}.
    @ivar scheme: C{"http"} or C{"https"}.
    @ivar host: The host name or IP address, lowercased, without the brackets
        of an IPv6 literal (C{"::1"}).
    @ivar port: The port, 80 or 443 when the URL gives none.
    @ivar weight: The server's share of requests relative to the other servers
        of its pool, at least 1.
    """

    url: str
    scheme: str
    host: str
    port: int
    weight: int = 1


@frozen
class CertificateConfig:
    """
    One certificate and its private key, as PEM files.

    @ivar certificate: The absolute path of the PEM file holding the
        certificate, then its chain (intermediate certificates).
    @ivar key: The absolute path of the PEM file holding the private key;
        the same as C{certificate} when one file holds both.
    """

    certificate: str
    key: str


@frozen
class HealthCheckConfig:
    """
    Active health checks of a pool's servers (C{[pools.NAME] health}).

    @ivar path: The request target each check GETs.
    @ivar interval: Seconds between two checks of one server.
    @ivar timeout: Seconds a check may take (connecting included).
    @ivar statuses: The response statuses that pass, as inclusive
        C{(low, high)} ranges.
    @ivar rise: Consecutive passed checks that bring a down server up.
    @ivar fall: Consecutive failed checks that take an up server down.
    """

    path: str = "/"
    interval: float = 5.0
    timeout: float = 2.0
    statuses: tuple[tuple[int, int], ...] = ((200, 399),)
    rise: int = 2
    fall: int = 3


@frozen
class OutlierConfig:
    """
    Passive health: outlier ejection (C{[pools.NAME] outlier}).

    @ivar consecutiveFailures: Consecutive failures (connection refused or
        reset, timeout, 5xx response) that eject a server.
    @ivar baseEjection: Seconds of the first ejection; the Nth ejection in a
        row lasts N times as long.
    @ivar maxEjection: The longest ejection, in seconds.
    @ivar maxEjectedPercent: No more than this share of the pool's servers
        is ejected at once (one server always may be).
    """

    consecutiveFailures: int = 5
    baseEjection: float = 30.0
    maxEjection: float = 300.0
    maxEjectedPercent: float = 50.0


@frozen
class RetryBudgetConfig:
    """
    How many retries a pool may make (C{[pools.NAME] retry_budget}): in each
    C{window}, C{minRetries} plus C{percent} of the requests.
    """

    percent: float = 20.0
    minRetries: int = 10
    window: float = 10.0


@frozen
class PoolConfig:
    """
    A named pool of backend servers (C{[pools.NAME]}).

    @ivar name: The pool's name.
    @ivar servers: The servers, at least one, in file order.
    @ivar balance: The balancing method: C{"round-robin"},
        C{"least-requests"}, C{"random-two"} or C{"hash"}.
    @ivar maxConnections: Connections per server, at least 1.
    @ivar maxPending: Requests of the pool queued while waiting for a
        connection; more are refused.
    @ivar maxIdle: Idle keep-alive connections kept per server.
    @ivar connectTimeout: Seconds to wait for a connection to a server.
    @ivar readTimeout: Seconds to wait for response headers, and between two
        reads of a response body.
    @ivar idleTimeout: Seconds after which an idle backend connection is
        closed.
    @ivar pendingTimeout: Seconds a queued request waits for a connection
        before it fails.
    @ivar hostHeader: L{None} to forward the client's C{Host} header,
        C{"backend"} to send the server's C{host:port}, or any other string to
        send that literal value.
    @ivar retries: How many times an idempotent request is retried on a fresh
        connection when the backend closed a reused connection.
    @ivar tlsCA: For C{https} servers, the absolute path of a PEM file of CA
        certificates to trust, or L{None} for the system trust store.
    @ivar tlsVerify: For C{https} servers, whether their certificate is
        verified (against C{tlsCA} and the server name).
    @ivar tlsServerName: For C{https} servers, the name sent by SNI and
        verified in the certificate, or L{None} for each server's host.
    @ivar tlsClientCertificate: For C{https} servers, the client certificate
        presented to them, or L{None}.
    @ivar hashOn: For C{balance = "hash"}, what is hashed: C{"client"},
        C{"header:NAME"} or C{"cookie:NAME"}; else L{None}.
    @ivar health: Active health checks, or L{None} for none.
    @ivar outlier: Passive outlier ejection, or L{None} for none.
    @ivar panicThreshold: When fewer than this percentage of the servers are
        healthy, the pool forgets health and uses all of them; 0 never.
    @ivar retryBudget: The bound on retries to other servers.
    @ivar retryStatuses: Response statuses on which an idempotent request is
        retried on another server.
    @ivar slowStart: Seconds over which a server that just became healthy
        ramps up to its full weight; 0 for at once.
    """

    name: str
    servers: tuple[BackendServer, ...]
    balance: str = "round-robin"
    maxConnections: int = 256
    maxPending: int = 1024
    maxIdle: int = 64
    connectTimeout: float = 5.0
    readTimeout: float = 60.0
    idleTimeout: float = 30.0
    pendingTimeout: float = 10.0
    hostHeader: str | None = None
    retries: int = 1
    tlsCA: str | None = None
    tlsVerify: bool = True
    tlsServerName: str | None = None
    tlsClientCertificate: CertificateConfig | None = None
    hashOn: str | None = None
    health: HealthCheckConfig | None = None
    outlier: OutlierConfig | None = None
    panicThreshold: float = 50.0
    retryBudget: RetryBudgetConfig = RetryBudgetConfig()
    retryStatuses: tuple[int, ...] = (502, 503, 504)
    slowStart: float = 0.0


@frozen
class RouteConfig:
    """
    One route (C{[[routes]]}): which requests go to which pool or directory.

    The router picks the most specific route, not the first: among the routes
    whose host matches the request (a route with a host beats a route
    without one), the one with the longest path prefix.

    @ivar path: The path prefix, starting with C{"/"}.
    @ivar host: L{None} for any host, an exact lowercased host name such as
        C{"example.com"}, or a wildcard such as C{"*.example.com"}.
    @ivar pool: The name of the pool requests are forwarded to, or L{None} for
        a static route.
    @ivar static: The absolute path of the directory served, or L{None} for a
        pool route.
    @ivar stripPrefix: Whether the matched path prefix is removed before a
        request is forwarded to the pool.
    @ivar maxBodySize: This route's request body limit in bytes, or L{None}
        for L{ServerConfig.maxBodySize}.
    @ivar requestBuffering: This route's choice to buffer request bodies, or
        L{None} for L{ServerConfig.requestBuffering}.
    @ivar filters: The names of the route's filters (C{[filters.NAME]}), in
        the order they run.
    @ivar websocket: Whether C{GET} requests with C{Upgrade: websocket}
        are tunnelled to the pool (a pool route's other upgrades are
        refused).
    """

    path: str = "/"
    host: str | None = None
    pool: str | None = None
    static: str | None = None
    stripPrefix: bool = False
    maxBodySize: int | None = None
    requestBuffering: bool | None = None
    filters: tuple[str, ...] = ()
    index: tuple[str, ...] = ("index.html",)
    listDirectories: bool = False
    allowHidden: bool = False
    followSymlinksOutside: bool = False
    cacheControl: str | None = None
    cacheControlByExtension: tuple[tuple[str, str], ...] = ()
    mimeTypes: tuple[tuple[str, str], ...] = ()
    websocket: bool = True
    #: The name of the route's cache (C{[caches.NAME]}), or L{None}.
    cache: str | None = None


#: The default components of a cache key.
DEFAULT_CACHE_KEY = ("method", "scheme", "host", "path", "query")
_CACHE_KEY_PARTS = frozenset(DEFAULT_CACHE_KEY)


@frozen
class CacheConfig:
    """
    A named HTTP cache (C{[caches.NAME]}), which routes enable with
    C{cache = "NAME"}; see C{docs/caching.rst}.

    @ivar name: The cache's name.
    @ivar maxSize: The most bytes the in-memory store holds.
    @ivar maxObjectSize: Responses with larger bodies are passed through
        uncached.
    @ivar key: What the primary key is made of: C{"method"}, C{"scheme"},
        C{"host"}, C{"path"}, C{"query"}, C{"header:NAME"}.
    @ivar defaultTTL: Seconds of freshness for a response cacheable by
        default with no freshness information and no C{Last-Modified}.
    @ivar heuristicFraction: The fraction of the age of C{Last-Modified}
        used as freshness when a response states none.
    @ivar heuristicMax: The most seconds of heuristic freshness.
    @ivar staleWhileRevalidate: Default seconds a stale response is served
        while refreshed in the background.
    @ivar staleIfError: Default seconds a stale response is served when the
        backend fails.
    @ivar coalesce: Whether concurrent misses for one key wait for a single
        backend request.
    @ivar coalesceWait: The longest a coalesced request waits before it
        goes to the backend itself.
    @ivar statusHeader: Whether responses carry C{X-Cache}.
    @ivar purgeFrom: Networks (CIDR) allowed to send C{PURGE}.
    """

    name: str
    maxSize: int = 64 * 1024 * 1024
    maxObjectSize: int = 1024 * 1024
    key: tuple[str, ...] = DEFAULT_CACHE_KEY
    defaultTTL: float = 0.0
    heuristicFraction: float = 0.1
    heuristicMax: float = 86400.0
    staleWhileRevalidate: float = 0.0
    staleIfError: float = 0.0
    coalesce: bool = True
    coalesceWait: float = 5.0
    statusHeader: bool = False
    purgeFrom: tuple[str, ...] = ()


@frozen
class FilterConfig:
    """
    A named filter (C{[filters.NAME]}): a filter plugin and its options.

    @ivar name: The filter's name, which routes list.
    @ivar plugin: The name of the L{twisted_rproxy.interfaces.IFilterFactory}
        plugin that builds it.
    @ivar options: The rest of the table, as parsed from TOML, already
        accepted by the plugin's C{buildFilter}.
    """

    name: str
    plugin: str
    options: Mapping[str, object] = field(factory=dict)


@frozen
class ListenerConfig:
    """
    The security settings of one listening endpoint, given as a table in a
    C{listen} list (C{{ endpoint = "tcp:8081", proxy_protocol = true }}).
    They apply on top of C{[server]}'s: a connection must pass both access
    lists.

    @ivar allow: Networks (normalized CIDR strings) allowed to connect;
        empty for any.
    @ivar deny: Networks refused.
    @ivar proxyProtocol: Whether connections start with a PROXY protocol
        header, or L{None} for C{[server]}'s setting.
    @ivar maxConnectionsPerClient: This listener's per-client connection
        limit, or L{None} for C{[server]}'s.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    proxyProtocol: bool | None = None
    maxConnectionsPerClient: int | None = None


@frozen
class ServerConfig:
    """
    The client-facing side of the proxy (C{[server]}).

    @ivar listen: Twisted server endpoint strings, such as C{"tcp:8080"}.
    @ivar accessLog: C{"-"} for standard output, the absolute path of a file,
        or L{None} for no access log.
    @ivar serverHeader: The value of the proxy's own C{Server} header, or
        L{None} to send none.
    @ivar maxBodySize: The largest request body accepted, in bytes.
    @ivar requestBuffering: Whether a request body is read whole before the
        request is forwarded (L{False}: streamed).
    @ivar idleTimeout: Seconds an idle client keep-alive connection is kept.
    @ivar maxHeaderSize: The largest request line plus headers, in bytes.
    @ivar maxHeaders: The most request headers accepted.
    @ivar forwardedHeaders: Whether C{X-Forwarded-For}, C{X-Forwarded-Proto}
        and C{X-Forwarded-Host} are added to forwarded requests.
    @ivar via: The pseudonym of the proxy in C{Via} headers, or L{None} to add
        no C{Via} header.
    @ivar trustedProxies: Networks (normalized CIDR strings) whose
        C{X-Forwarded-For} headers are believed.
    @ivar hideHeaders: Lowercased names of backend response headers that are
        not passed on to clients.
    @ivar workers: How many worker processes serve the listeners; 1 runs
        everything in one process, without a supervisor.
    @ivar drainTimeout: Seconds a graceful stop waits for requests in
        flight (and open tunnels) before it closes their connections.
    @ivar accessLogFormat: C{"combined"} or C{"json"}.
    @ivar allowConnect: Whether C{CONNECT} requests are tunnelled to the
        route's pool (otherwise they are refused with 405).
    @ivar tunnelIdleTimeout: Seconds an upgraded connection (a WebSocket,
        say) or a C{CONNECT} tunnel may stay silent in both directions.
    @ivar allow: Networks (normalized CIDR strings) allowed to connect to
        any listener; empty for any.
    @ivar deny: Networks whose connections are closed at once.
    @ivar proxyProtocol: Whether every listener expects a PROXY protocol
        (v1 or v2) header first.
    @ivar maxConnectionsPerClient: The most connections open at once from
        one client address, per listener; 0 for no limit.
    @ivar maxRequestLine: The longest request line accepted (414 past it).
    @ivar headerTimeout: Seconds a client has to send a request's line and
        headers, from their first byte (408 past it); 0 for no limit.
    @ivar bodyTimeout: Seconds a request body may go without a byte
        arriving; 0 for no limit.
    @ivar requestTimeout: Seconds a client has to send a whole request,
        body included; 0 for no limit.
    @ivar listeners: L{ListenerConfig} by endpoint string, for the
        endpoints given as tables in C{listen} (of C{[server]} or
        C{[[tls]]}).
    """

    listen: tuple[str, ...] = _DEFAULT_LISTEN
    accessLog: str | None = None
    serverHeader: str | None = None
    maxBodySize: int = 10 * 1024 * 1024
    requestBuffering: bool = True
    idleTimeout: float = 60.0
    maxHeaderSize: int = 16384
    maxHeaders: int = 100
    forwardedHeaders: bool = True
    via: str | None = "twisted_rproxy"
    trustedProxies: tuple[str, ...] = ()
    hideHeaders: tuple[str, ...] = ("server", "x-powered-by")
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    proxyProtocol: bool = False
    maxConnectionsPerClient: int = 0
    maxRequestLine: int = 8192
    headerTimeout: float = 10.0
    bodyTimeout: float = 30.0
    requestTimeout: float = 0.0
    listeners: Mapping[str, ListenerConfig] = field(factory=dict)
    workers: int = 1
    drainTimeout: float = 30.0
    accessLogFormat: str = "combined"
    allowConnect: bool = False
    tunnelIdleTimeout: float = 300.0


#: The admin listener when C{[admin]} gives none: loopback only.
DEFAULT_ADMIN_LISTEN = ("tcp:9000:interface=127.0.0.1",)


@frozen
class AdminConfig:
    """
    The admin listener (C{[admin]}): the status page, its JSON and the
    Prometheus metrics.

    @ivar listen: Twisted server endpoint strings (loopback by default).
    @ivar users: C{(name, hash)} pairs allowed in by HTTP basic
        authentication, each hash made by
        C{python -m twisted_rproxy.admin hash-password}; empty for no
        authentication.
    @ivar refresh: Seconds between reloads of the HTML page in a browser,
        or 0 for none.
    @ivar metrics: L{True} to serve C{/metrics} (prometheus_client is then
        required), L{False} for none, L{None} for "if prometheus_client is
        installed".
    @ivar recentErrors: How many recent errors the status page shows.
    """

    listen: tuple[str, ...] = DEFAULT_ADMIN_LISTEN
    users: tuple[tuple[str, str], ...] = ()
    refresh: float = 5.0
    metrics: bool | None = None
    recentErrors: int = 50


@frozen
class TLSConfig:
    """
    One TLS listener group (C{[[tls]]}): endpoints that speak TLS, and the
    certificates they present.

    @ivar listen: Twisted server endpoint strings of plain stream endpoints
        (C{"tcp:8443"}); TLS is layered on them.
    @ivar certificates: The certificates, at least one; the client's SNI
        name picks one by the names it holds, the first is the default.
    @ivar protocols: The Mozilla profile: C{"intermediate"} (TLS 1.2 and
        1.3) or C{"modern"} (TLS 1.3 only).
    @ivar http2: Whether C{h2} is offered by ALPN beside C{http/1.1}.
    @ivar hsts: The C{max-age} in seconds of the C{Strict-Transport-Security}
        header added to responses over TLS, or L{None} for no header.
    @ivar redirectHttp: Whether the plain-HTTP listeners of C{[server]}
        answer every request with a redirect to this group's first listener.
    @ivar clientCA: The absolute path of a PEM file of CA certificates: when
        given, clients must present a certificate issued by one of them.
    @ivar watchInterval: Seconds between checks of the certificate files for
        changes (reloaded when changed), or L{None} to reload on SIGHUP only.
    """

    listen: tuple[str, ...]
    certificates: tuple[CertificateConfig, ...]
    protocols: str = "intermediate"
    http2: bool = True
    hsts: int | None = None
    redirectHttp: bool = False
    clientCA: str | None = None
    watchInterval: float | None = None


@frozen
class Config:
    """
    A whole, validated configuration.

    @ivar source: The configuration file's path, or L{COMMAND_LINE}.
    @ivar server: The client-facing settings.
    @ivar pools: The backend pools by name.
    @ivar routes: The routes in file order (see L{RouteConfig} for how one is
        chosen).
    @ivar tls: The TLS listener groups (C{[[tls]]}), in file order.
    @ivar filters: The filters by name (C{[filters.NAME]}).
    @ivar caches: The caches by name (C{[caches.NAME]}).
    """

    source: str
    server: ServerConfig
    pools: Mapping[str, PoolConfig]
    routes: tuple[RouteConfig, ...]
    tls: tuple[TLSConfig, ...] = ()
    filters: Mapping[str, FilterConfig] = field(factory=dict)
    admin: AdminConfig | None = None
    caches: Mapping[str, CacheConfig] = field(factory=dict)


def _typeName(value: object) -> str:
    """
    Name the type of a parsed TOML value for an error message.
    """
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__


def _joinKey(prefix: str, name: str) -> str:
    """
    Append one key to a dotted key path, quoting it as TOML would if it is
    not a bare key.
    """
    part = name if _BARE_KEY.match(name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


def parseSize(value: str | int, source: str, key: str) -> int:
    """
    Parse a size in bytes.

    An integer is a number of bytes.  A string is a number, optionally with
    a decimal fraction, then optional spaces, then an optional unit, case
    insensitive: C{B}; C{K}, C{KB} (1000), C{KiB} (1024); C{M}, C{MB}, C{MiB};
    C{G}, C{GB}, C{GiB}; C{T}, C{TB}, C{TiB}.  So C{"64KiB"} is 65536,
    C{"10MB"} and C{"10M"} are 10000000, C{"1.5 KiB"} is 1536.

    @param value: The size as written.
    @param source: The file named by the error, if any.
    @param key: The key named by the error, if any.
    @return: The size in bytes, at least 0.
    @raise ConfigError: If C{value} is negative, not a whole number of
        bytes, or not a size at all.
    """
    return _parseSize(value, source, key)


def _numberWithUnit(
    value: str,
    source: str,
    key: str,
    what: str,
    expected: str,
    units: Mapping[str, int | float | Fraction],
    unitNames: str,
) -> Fraction:
    """
    The exact amount a string such as C{"64KiB"} or C{"250ms"} stands for:
    a non-negative number and a unit of C{units} (case-insensitive).
    """
    if value.strip().startswith("-"):
        raise ConfigError(source, key, f"must not be negative, got {value!r}")
    match = _NUMBER_AND_UNIT.match(value)
    if match is None:
        raise ConfigError(
            source, key, f"invalid {what} {value!r} (expected {expected})"
        )
    number, unit = match.groups()
    multiplier = units.get(unit.lower())
    if multiplier is None:
        raise ConfigError(
            source,
            key,
            f"unknown unit {unit!r} in {what} {value!r} "
            f"(expected one of {unitNames})",
        )
    return Fraction(number) * Fraction(multiplier)


def _parseSize(value: object, source: str, key: str) -> int:
    """
    L{parseSize} of any parsed TOML value, so that a wrong type gets the same
    clear message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(
            source,
            key,
            "expected a size (a number of bytes, or a string like "
            f'"64KiB" or "10MB"), got {_typeName(value)}',
        )
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(source, key, f"must not be negative, got {value}")
        return value
    # Fractions are exact where floats and Decimal's default context round.
    size = _numberWithUnit(
        value,
        source,
        key,
        "size",
        'a number of bytes, or a string like "64KiB" or "10MB"',
        _SIZE_UNITS,
        _SIZE_UNIT_NAMES,
    )
    if size.denominator != 1:
        raise ConfigError(source, key, f"size {value!r} is not a whole number of bytes")
    return size.numerator


def parseDuration(value: str | int | float, source: str, key: str) -> float:
    """
    Parse a duration in seconds.

    A number (integer or float) is a number of seconds.  A string is a
    number, optionally with a decimal fraction, then optional spaces, then an
    optional unit, case insensitive: C{ms}, C{s}, C{m} (minutes), C{h}, C{d}.
    So C{"250ms"} is 0.25, C{"1.5s"} is 1.5, C{"2m"} is 120.

    @param value: The duration as written.
    @param source: The file named by the error, if any.
    @param key: The key named by the error, if any.
    @return: The duration in seconds, at least 0 and finite.
    @raise ConfigError: If C{value} is negative, infinite, not a number or
        not a duration at all.
    """
    return _parseDuration(value, source, key)


def _parseDuration(value: object, source: str, key: str) -> float:
    """
    L{parseDuration} of any parsed TOML value, so that a wrong type gets the
    same clear message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(
            source,
            key,
            "expected a duration (a number of seconds, or a string like "
            f'"5s" or "250ms"), got {_typeName(value)}',
        )
    if isinstance(value, str):
        exact: Fraction | int | float = _numberWithUnit(
            value,
            source,
            key,
            "duration",
            'a number of seconds, or a string like "5s", "250ms", "2m" or "1h"',
            _DURATION_UNITS,
            _DURATION_UNIT_NAMES,
        )
    else:
        if value < 0:
            raise ConfigError(source, key, f"must not be negative, got {value}")
        exact = value
    try:
        seconds = float(exact)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ConfigError(source, key, f"duration {value!r} is not finite")
    return seconds


# Twisted leaves these two unannotated; typed views keep mypy --strict useful
# here without blanket ignores.
_serverFromString = cast(Callable[[object, str], object], serverFromString)
_MemoryReactor = cast(Callable[[], object], MemoryReactor)


def validateEndpoint(description: str, source: str, key: str) -> None:
    """
    Check that a string is a Twisted server endpoint description, without
    listening.

    @param description: The endpoint string, such as C{"tcp:8080"}.
    @param source: The file named by the error, if any.
    @param key: The key named by the error, if any.
    @raise ConfigError: If the description is empty or does not parse.
    """
    if not description.strip():
        raise ConfigError(
            source,
            key,
            'an endpoint must not be empty (expected something like "tcp:8080")',
        )
    try:
        endpoint = _serverFromString(_MemoryReactor(), description)
    except Exception as e:
        # Endpoint parsers, plugins included, raise what they like (ValueError,
        # TypeError, KeyError, IndexError, OSError for missing certificate
        # files...); any of them means the description cannot be used.
        reason = str(e) or type(e).__name__
        raise ConfigError(
            source, key, f"invalid server endpoint {description!r}: {reason}"
        ) from None
    # Twisted's TCP and SSL parsers accept any integer as a port; binding
    # would fail only at start-up.
    port = getattr(endpoint, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        raise ConfigError(
            source,
            key,
            f"invalid server endpoint {description!r}: port {port} is out of "
            "range (expected 0 to 65535)",
        )


class _Table:
    """
    One TOML table being validated: its dotted key and typed accessors whose
    errors name the full key.
    """

    def __init__(self, value: object, source: str, key: str) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(source, key, f"expected a table, got {_typeName(value)}")
        self.data: Mapping[str, object] = value
        self.source = source
        self.key = key

    def keyOf(self, name: str) -> str:
        return _joinKey(self.key, name)

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.source, self.keyOf(name), message)

    def checkKeys(self, allowed: Collection[str], coming: Collection[str] = ()) -> None:
        """
        Reject any key that is not in C{allowed}; keys in C{coming} are
        reported as not supported yet.
        """
        for name in self.data:
            if name in allowed:
                continue
            if name in coming:
                raise self.error(name, NOT_SUPPORTED)
            message = "unknown key"
            candidates = sorted(set(allowed) | set(coming))
            close = difflib.get_close_matches(name, candidates, n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
            raise self.error(name, message)

    def has(self, name: str) -> bool:
        return name in self.data

    def optionalString(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None or isinstance(value, str):
            return value
        raise self.error(name, f"expected a string, got {_typeName(value)}")

    def boolean(self, name: str, default: bool) -> bool:
        value = self.optionalBoolean(name)
        return default if value is None else value

    def optionalBoolean(self, name: str) -> bool | None:
        value = self.data.get(name)
        if value is None or isinstance(value, bool):
            return value
        raise self.error(
            name, f"expected a boolean (true or false), got {_typeName(value)}"
        )

    def integer(self, name: str, default: int, minimum: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {_typeName(value)}")
        if value < minimum:
            raise self.error(name, f"must be at least {minimum}, got {value}")
        return value

    def optionalSize(self, name: str, minimum: int = 0) -> int | None:
        value = self.data.get(name)
        if value is None:
            return None
        size = _parseSize(value, self.source, self.keyOf(name))
        if size < minimum:
            raise self.error(name, f"must be at least {minimum} bytes, got {value!r}")
        return size

    def size(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.optionalSize(name, minimum)
        return default if value is None else value

    def timeout(self, name: str, default: float) -> float:
        """
        A duration that must be greater than zero.
        """
        value = self.data.get(name)
        if value is None:
            return default
        seconds = _parseDuration(value, self.source, self.keyOf(name))
        if seconds <= 0:
            raise self.error(name, f"must be greater than 0, got {value!r}")
        return seconds

    def number(
        self, name: str, default: float, minimum: float, maximum: float
    ) -> float:
        """
        A number (integer or float) from C{minimum} to C{maximum}.
        """
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"expected a number, got {_typeName(value)}")
        if not minimum <= value <= maximum:
            raise self.error(
                name, f"must be from {minimum:g} to {maximum:g}, got {value!r}"
            )
        return float(value)

    def duration(self, name: str, default: float) -> float:
        """
        A duration that may be zero.
        """
        value = self.data.get(name)
        if value is None:
            return default
        seconds = _parseDuration(value, self.source, self.keyOf(name))
        if seconds < 0:
            raise self.error(name, f"must not be negative, got {value!r}")
        return seconds

    def stringList(
        self, name: str, default: tuple[str, ...], allowSingle: bool = False
    ) -> tuple[str, ...]:
        """
        A list of strings, each of whose errors names C{NAME[INDEX]}; with
        C{allowSingle}, a lone string is a list of one.
        """
        value = self.data.get(name)
        if value is None:
            return default
        if allowSingle and isinstance(value, str):
            return (value,)
        if not isinstance(value, list):
            raise self.error(
                name, f"expected a list of strings, got {_typeName(value)}"
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    self.source,
                    f"{self.keyOf(name)}[{index}]",
                    f"expected a string, got {_typeName(item)}",
                )
        return tuple(value)


_TOP_LEVEL_KEYS = ("server", "pools", "routes", "tls", "filters", "admin", "caches")
_TOP_LEVEL_COMING: tuple[str, ...] = ()
_SERVER_KEYS = (
    "listen",
    "access_log",
    "server_header",
    "max_body_size",
    "request_buffering",
    "idle_timeout",
    "max_header_size",
    "max_headers",
    "forwarded_headers",
    "via",
    "trusted_proxies",
    "hide_headers",
    "allow",
    "deny",
    "proxy_protocol",
    "max_connections_per_client",
    "max_request_line",
    "header_timeout",
    "body_timeout",
    "request_timeout",
    "workers",
    "drain_timeout",
    "access_log_format",
    "allow_connect",
    "tunnel_idle_timeout",
)
_SERVER_COMING: tuple[str, ...] = ()
_ADMIN_KEYS = ("listen", "users", "refresh", "metrics", "recent_errors")
ACCESS_LOG_FORMATS = ("combined", "json")
_POOL_KEYS = (
    "servers",
    "balance",
    "max_connections",
    "max_pending",
    "max_idle",
    "connect_timeout",
    "read_timeout",
    "idle_timeout",
    "pending_timeout",
    "host_header",
    "retries",
    "tls_ca",
    "tls_verify",
    "tls_server_name",
    "tls_client_certificate",
    "hash_on",
    "health",
    "outlier",
    "panic_threshold",
    "retry_budget",
    "retry_statuses",
    "slow_start",
)
_POOL_COMING: tuple[str, ...] = ()
_HEALTH_KEYS = ("path", "interval", "timeout", "statuses", "rise", "fall")
_OUTLIER_KEYS = (
    "consecutive_failures",
    "base_ejection",
    "max_ejection",
    "max_ejected_percent",
)
_RETRY_BUDGET_KEYS = ("percent", "min_retries", "window")
_SERVER_ENTRY_KEYS = ("url", "weight")
_STATIC_KEYS = (
    "index",
    "list_directories",
    "allow_hidden",
    "follow_symlinks_outside",
    "cache_control",
    "cache_control_by_extension",
    "mime_types",
)
_ROUTE_KEYS = (
    "path",
    "host",
    "pool",
    "static",
    "strip_prefix",
    "max_body_size",
    "request_buffering",
    "filters",
    "websocket",
    "cache",
    *_STATIC_KEYS,
)
_ROUTE_COMING: tuple[str, ...] = ()
_CACHE_KEYS = (
    "max_size",
    "max_object_size",
    "key",
    "default_ttl",
    "heuristic_fraction",
    "heuristic_max",
    "stale_while_revalidate",
    "stale_if_error",
    "coalesce",
    "coalesce_wait",
    "status_header",
    "purge_from",
)


def _parseBackendURL(url: str, source: str, key: str, weight: int = 1) -> BackendServer:
    """
    Validate one backend URL: C{http} or C{https}, a host, an optional port
    from 1 to 65535, and nothing else but an optional C{"/"} path.
    """
    expected = "expected http://HOST[:PORT] or https://HOST[:PORT]"
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(source, key, f"invalid backend URL {url!r} ({expected})")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(source, key, f"not a URL: {url!r} ({expected})")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(
            source,
            key,
            f"unsupported scheme {scheme!r} in {url!r} (expected http or https)",
        )
    for marker, what in (("?", "a query"), ("#", "a fragment")):
        if marker in rest:
            raise ConfigError(
                source, key, f"backend URL {url!r} must not contain {what}"
            )
    netloc, slash, path = rest.partition("/")
    if slash and path:
        raise ConfigError(
            source,
            key,
            f"backend URL {url!r} must not contain a path ('/{path}'); "
            "a backend URL names a server only",
        )
    if "@" in netloc:
        raise ConfigError(
            source, key, f"backend URL {url!r} must not contain user information"
        )
    portText: str | None
    if netloc.startswith("["):
        end = netloc.find("]")
        if end == -1:
            raise ConfigError(
                source, key, f"unterminated IPv6 address in backend URL {url!r}"
            )
        host = netloc[1:end].lower()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                source, key, f"invalid IPv6 address {host!r} in backend URL {url!r}"
            ) from None
        after = netloc[end + 1 :]
        if after and not after.startswith(":"):
            raise ConfigError(source, key, f"invalid backend URL {url!r} ({expected})")
        portText = after[1:] if after else None
    else:
        host, colon, portText = netloc.partition(":")
        host = host.lower().removesuffix(".") if host != "." else host
        if not colon:
            portText = None
        if not host:
            raise ConfigError(
                source, key, f"backend URL {url!r} has no host ({expected})"
            )
        if portText is not None and ":" in portText:
            raise ConfigError(
                source,
                key,
                f"invalid backend URL {url!r}: write IPv6 addresses in "
                "brackets, like http://[::1]:8001",
            )
        if not _HOST_NAME.match(host):
            raise ConfigError(
                source, key, f"invalid host {host!r} in backend URL {url!r}"
            )
    if portText:
        if not (portText.isascii() and portText.isdigit()):
            raise ConfigError(
                source, key, f"invalid port {portText!r} in backend URL {url!r}"
            )
        port = int(portText)
        if not 1 <= port <= 65535:
            raise ConfigError(
                source,
                key,
                f"port {port} in backend URL {url!r} is out of range "
                "(expected 1 to 65535)",
            )
    else:
        port = 80 if scheme == "http" else 443
    return BackendServer(url=url, scheme=scheme, host=host, port=port, weight=weight)


def backendServers(urls: Sequence[str], source: str = "<code>") -> tuple[
    BackendServer, ...
]:
    """
    The L{BackendServer}s of a pool, from their URLs: for embedders who
    build a L{PoolConfig} in code.

    @param urls: Backend URLs such as C{"http://127.0.0.1:8001"}.
    @param source: What errors name as their source.
    @raise ConfigError: For a malformed URL or a server listed twice.
    """
    keys = [f"servers[{index}]" for index in range(len(urls))]
    servers = tuple(
        _parseBackendURL(url, source, keys[index]) for index, url in enumerate(urls)
    )
    _checkDistinctServers(servers, source, keys)
    return servers


def _checkDistinctServers(
    servers: Sequence[BackendServer], source: str, keys: Sequence[str]
) -> None:
    """
    Reject a server listed twice in one pool.
    """
    seen: dict[tuple[str, str, int], int] = {}
    for index, server in enumerate(servers):
        address = (server.scheme, server.host, server.port)
        if address in seen:
            raise ConfigError(
                source,
                keys[index],
                f"{server.url!r} is the same server as {servers[seen[address]].url!r}",
            )
        seen[address] = index


def _parseServerEntry(value: object, source: str, key: str) -> BackendServer:
    """
    Parse one entry of a pool's C{servers}: a URL, or a table with C{url} and
    C{weight}.
    """
    if isinstance(value, str):
        return _parseBackendURL(value, source, key)
    if not isinstance(value, Mapping):
        raise ConfigError(
            source,
            key,
            'expected a URL string or a table like { url = "http://host:port", '
            f"weight = 2 }}, got {_typeName(value)}",
        )
    table = _Table(value, source, key)
    table.checkKeys(_SERVER_ENTRY_KEYS)
    url = table.optionalString("url")
    if url is None:
        raise table.error("url", "is required")
    weight = table.integer("weight", 1, 1)
    return _parseBackendURL(url, source, table.keyOf("url"), weight)


def _parseListen(
    endpoints: Sequence[str], source: str, keys: Sequence[str], listKey: str
) -> tuple[str, ...]:
    """
    Validate listening endpoints: at least one, each parseable, none twice.
    """
    if not endpoints:
        raise ConfigError(source, listKey, "must list at least one endpoint")
    for index, description in enumerate(endpoints):
        validateEndpoint(description, source, keys[index])
        if description in endpoints[:index]:
            raise ConfigError(
                source, keys[index], f"endpoint {description!r} is listed twice"
            )
    return tuple(endpoints)


def _resolveAccessLog(
    value: str | None, baseDirectory: str, source: str, key: str
) -> str | None:
    """
    C{"-"} stays as is; a file path is made absolute against C{baseDirectory}.
    """
    if value is None or value == "-":
        return value
    if not value:
        raise ConfigError(
            source,
            key,
            'must be "-" (standard output) or a file path; leave it out '
            "for no access log",
        )
    return os.path.abspath(os.path.join(baseDirectory, value))


def _resolveDirectory(value: str, baseDirectory: str, source: str, key: str) -> str:
    """
    Make a static directory absolute against C{baseDirectory} and check that
    it is a directory.
    """
    if not value:
        raise ConfigError(source, key, "must be a directory path, got an empty string")
    path = os.path.abspath(os.path.join(baseDirectory, os.path.expanduser(value)))
    if not os.path.exists(path):
        raise ConfigError(source, key, f"directory {path!r} does not exist")
    if not os.path.isdir(path):
        raise ConfigError(source, key, f"{path!r} is not a directory")
    return path


def _checkPath(path: str, source: str, key: str) -> str:
    """
    Check a route's path prefix.
    """
    if not path.startswith("/"):
        raise ConfigError(source, key, f"must start with '/', got {path!r}")
    if not _URL_PATH.match(path):
        raise ConfigError(
            source,
            key,
            f"invalid path {path!r} (no spaces or control characters; "
            "percent-encode anything else)",
        )
    for marker, what in (("?", "a query"), ("#", "a fragment")):
        if marker in path:
            raise ConfigError(source, key, f"path {path!r} must not contain {what}")
    return path


def _normalizeRouteHost(host: str, source: str, key: str) -> str:
    """
    Lowercase a route's host and check that it is a host name, a bracketed
    IPv6 address or a C{*.}-prefixed wildcard, without a port.
    """
    normalized = host.strip().lower()
    if normalized.endswith(".") and len(normalized) > 1:
        normalized = normalized[:-1]
    if not normalized:
        raise ConfigError(
            source, key, "must not be empty; leave it out to match any host"
        )
    if normalized.startswith("["):
        if not normalized.endswith("]"):
            raise ConfigError(
                source, key, f"invalid host {host!r}: a host must not include a port"
            )
        try:
            ipaddress.IPv6Address(normalized[1:-1])
        except ValueError:
            raise ConfigError(source, key, f"invalid IPv6 address {host!r}") from None
        return normalized
    if ":" in normalized:
        raise ConfigError(
            source,
            key,
            f"invalid host {host!r}: a host must not include a port "
            "(write IPv6 addresses in brackets)",
        )
    name = normalized.removeprefix("*.")
    if not _HOST_NAME.match(name):
        raise ConfigError(
            source,
            key,
            f'invalid host {host!r} (expected a host name like "example.com" '
            'or a wildcard like "*.example.com")',
        )
    return normalized


def _networks(table: _Table, name: str) -> tuple[str, ...]:
    """
    A list of IPv4 and IPv6 addresses and CIDR networks, normalized.
    """
    networks = []
    for index, network in enumerate(table.stringList(name, ())):
        try:
            networks.append(str(ipaddress.ip_network(network.strip(), strict=False)))
        except ValueError:
            raise ConfigError(
                table.source,
                f"{table.keyOf(name)}[{index}]",
                f"invalid network {network!r} (expected an IPv4 or IPv6 "
                'address or CIDR network like "10.0.0.0/8")',
            ) from None
    return tuple(networks)


_LISTENER_KEYS = (
    "endpoint",
    "allow",
    "deny",
    "proxy_protocol",
    "max_connections_per_client",
)


def _listenEntries(
    table: _Table, default: tuple[str, ...]
) -> tuple[tuple[str, ...], dict[str, ListenerConfig]]:
    """
    A C{listen} value: an endpoint string, or a list of endpoint strings and
    tables (C{{ endpoint = "...", allow = [...], proxy_protocol = true }}).

    @return: The endpoints, validated, and the L{ListenerConfig} of each
        one given as a table.
    """
    raw = table.data.get("listen")
    listKey = table.keyOf("listen")
    if raw is None:
        return _parseListen(default, table.source, [listKey], listKey), {}
    if isinstance(raw, str):
        raw, keys = [raw], [listKey]
    elif isinstance(raw, list):
        keys = [f"{listKey}[{i}]" for i in range(len(raw))]
    else:
        raise table.error(
            "listen", f"expected a list of strings, got {_typeName(raw)}"
        )
    endpoints: list[str] = []
    listeners: dict[str, ListenerConfig] = {}
    for item, key in zip(raw, keys, strict=True):
        if isinstance(item, str):
            endpoints.append(item)
            continue
        if not isinstance(item, Mapping):
            raise ConfigError(
                table.source,
                key,
                f"expected a string, got {_typeName(item)}",
            )
        entry = _Table(item, table.source, key)
        entry.checkKeys(_LISTENER_KEYS)
        endpoint = entry.optionalString("endpoint")
        if endpoint is None:
            raise entry.error("endpoint", 'is required: an endpoint like "tcp:8080"')
        endpoints.append(endpoint)
        listeners[endpoint] = ListenerConfig(
            allow=_networks(entry, "allow"),
            deny=_networks(entry, "deny"),
            proxyProtocol=entry.optionalBoolean("proxy_protocol"),
            maxConnectionsPerClient=(
                entry.integer("max_connections_per_client", 0, 0)
                if entry.has("max_connections_per_client")
                else None
            ),
        )
    return _parseListen(endpoints, table.source, keys, listKey), listeners


def _securityOptions(
    table: _Table, defaults: ServerConfig, listeners: Mapping[str, ListenerConfig]
) -> dict[str, Any]:
    """
    The C{[server]} keys of access control, connection limits and request
    hardening (see docs/security.rst), as L{ServerConfig} arguments.
    """
    return dict(
        allow=_networks(table, "allow"),
        deny=_networks(table, "deny"),
        proxyProtocol=table.boolean("proxy_protocol", defaults.proxyProtocol),
        maxConnectionsPerClient=table.integer(
            "max_connections_per_client", defaults.maxConnectionsPerClient, 0
        ),
        maxRequestLine=table.size("max_request_line", defaults.maxRequestLine, 16),
        headerTimeout=table.duration("header_timeout", defaults.headerTimeout),
        bodyTimeout=table.duration("body_timeout", defaults.bodyTimeout),
        requestTimeout=table.duration("request_timeout", defaults.requestTimeout),
        listeners=listeners,
    )


def _parseServer(value: object, source: str, baseDirectory: str) -> ServerConfig:
    """
    Parse the C{[server]} table.
    """
    table = _Table(value, source, "server")
    table.checkKeys(_SERVER_KEYS, _SERVER_COMING)
    defaults = ServerConfig()

    listen, listeners = _listenEntries(table, defaults.listen)

    accessLog = _resolveAccessLog(
        table.optionalString("access_log"),
        baseDirectory,
        source,
        table.keyOf("access_log"),
    )

    serverHeader = table.optionalString("server_header")
    if serverHeader is not None and not _HEADER_VALUE.match(serverHeader):
        raise table.error(
            "server_header",
            "must be printable ASCII, not empty, without leading or trailing "
            "spaces; leave it out to send no Server header",
        )

    via: str | None
    rawVia = table.data.get("via")
    if rawVia is None or rawVia is True:
        via = defaults.via
    elif rawVia is False or rawVia == "":
        via = None
    elif isinstance(rawVia, str):
        if not _VIA_PSEUDONYM.match(rawVia):
            raise table.error(
                "via",
                f"invalid pseudonym {rawVia!r} (one word of letters, digits "
                "and punctuation, no spaces)",
            )
        via = rawVia
    else:
        raise table.error(
            "via",
            f"expected a string or false, got {_typeName(rawVia)}",
        )

    trustedProxies = []
    for index, network in enumerate(
        table.stringList("trusted_proxies", defaults.trustedProxies)
    ):
        try:
            trustedProxies.append(str(ipaddress.ip_network(network, strict=False)))
        except ValueError:
            raise ConfigError(
                source,
                f"{table.keyOf('trusted_proxies')}[{index}]",
                f"invalid network {network!r} (expected an IPv4 or IPv6 "
                'address or CIDR network like "10.0.0.0/8")',
            ) from None

    hideHeaders = []
    for index, header in enumerate(
        table.stringList("hide_headers", defaults.hideHeaders)
    ):
        if not _TOKEN.match(header):
            raise ConfigError(
                source,
                f"{table.keyOf('hide_headers')}[{index}]",
                f"invalid header name {header!r}",
            )
        hideHeaders.append(header.lower())

    return ServerConfig(
        listen=listen,
        accessLog=accessLog,
        serverHeader=serverHeader,
        maxBodySize=table.size("max_body_size", defaults.maxBodySize),
        requestBuffering=table.boolean("request_buffering", defaults.requestBuffering),
        idleTimeout=table.timeout("idle_timeout", defaults.idleTimeout),
        maxHeaderSize=table.size("max_header_size", defaults.maxHeaderSize, 1),
        maxHeaders=table.integer("max_headers", defaults.maxHeaders, 1),
        forwardedHeaders=table.boolean("forwarded_headers", defaults.forwardedHeaders),
        via=via,
        trustedProxies=tuple(trustedProxies),
        hideHeaders=tuple(hideHeaders),
        **_securityOptions(table, defaults, listeners),
        workers=parseWorkers(
            table.data.get("workers", 1), source, table.keyOf("workers")
        ),
        drainTimeout=table.duration("drain_timeout", defaults.drainTimeout),
        accessLogFormat=_accessLogFormat(table),
        allowConnect=table.boolean("allow_connect", defaults.allowConnect),
        tunnelIdleTimeout=table.timeout(
            "tunnel_idle_timeout", defaults.tunnelIdleTimeout
        ),
    )


def parseWorkers(value: object, source: str, key: str) -> int:
    """
    The number of worker processes from C{workers = N | "auto"} (or the
    C{--workers} flag): C{"auto"} is the number of CPUs.

    @raise ConfigError: For anything but a positive integer or C{"auto"}.
    """
    if value == "auto":
        return os.cpu_count() or 1
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            source, key, f'expected a number of processes or "auto", got {value!r}'
        )
    if not 1 <= value <= 256:
        raise ConfigError(source, key, f"must be from 1 to 256, got {value}")
    return value


def _accessLogFormat(table: _Table) -> str:
    value = table.optionalString("access_log_format")
    if value is None:
        return "combined"
    if value not in ACCESS_LOG_FORMATS:
        raise table.error(
            "access_log_format",
            f'must be "combined" or "json", got {value!r}',
        )
    return value


#: The prefix of the password hashes of C{[admin] users}.
PASSWORD_HASH_PREFIX = "pbkdf2-sha256$"
_PASSWORD_HASH = re.compile(
    r"pbkdf2-sha256\$([0-9]{4,7})\$([A-Za-z0-9+/=]{8,})\$([A-Za-z0-9+/=]{43,44})\Z"
)


def _metricsAvailable() -> bool:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _parseAdmin(value: object, source: str) -> AdminConfig:
    """
    Parse the C{[admin]} table.
    """
    table = _Table(value, source, "admin")
    table.checkKeys(_ADMIN_KEYS)
    defaults = AdminConfig()
    listen = table.stringList("listen", defaults.listen, allowSingle=True)
    if isinstance(table.data.get("listen"), str):
        listenKeys = [table.keyOf("listen")]
    else:
        listenKeys = [f"{table.keyOf('listen')}[{i}]" for i in range(len(listen))]
    listen = _parseListen(listen, source, listenKeys, table.keyOf("listen"))
    users: list[tuple[str, str]] = []
    if table.has("users"):
        usersTable = _Table(table.data["users"], source, table.keyOf("users"))
        for name, hashed in usersTable.data.items():
            if not name or ":" in name:
                raise usersTable.error(name, "a user name can't be empty or hold ':'")
            if not isinstance(hashed, str) or not _PASSWORD_HASH.match(hashed):
                raise usersTable.error(
                    name,
                    "expected a password hash made by `python -m "
                    "twisted_rproxy.admin hash-password` (pbkdf2-sha256$...), "
                    "never the password itself",
                )
            users.append((name, hashed))
    metrics = table.optionalBoolean("metrics")
    if metrics and not _metricsAvailable():
        raise table.error(
            "metrics",
            "needs prometheus_client, which is not installed (pip install "
            "'twisted_rproxy[metrics]')",
        )
    return AdminConfig(
        listen=listen,
        users=tuple(users),
        refresh=table.duration("refresh", defaults.refresh),
        metrics=metrics,
        recentErrors=table.integer("recent_errors", defaults.recentErrors, 0),
    )


def _parsePool(
    name: str, value: object, source: str, baseDirectory: str = ""
) -> PoolConfig:
    """
    Parse one C{[pools.NAME]} table.
    """
    key = _joinKey("pools", name)
    if not name:
        raise ConfigError(source, key, "a pool name must not be empty")
    if not _POOL_NAME.match(name):
        raise ConfigError(
            source,
            key,
            f"invalid pool name {name!r} (use letters, digits, '_', '.' and '-')",
        )
    table = _Table(value, source, key)
    table.checkKeys(_POOL_KEYS, _POOL_COMING)

    rawServers = table.data.get("servers")
    if rawServers is None:
        raise table.error(
            "servers", 'is required: a list of backend URLs like "http://host:port"'
        )
    if not isinstance(rawServers, list):
        raise table.error(
            "servers",
            f"expected a list of backend URLs, got {_typeName(rawServers)}",
        )
    if not rawServers:
        raise table.error("servers", "must list at least one backend server")
    serverKeys = [f"{table.keyOf('servers')}[{i}]" for i in range(len(rawServers))]
    servers = tuple(
        _parseServerEntry(entry, source, serverKeys[index])
        for index, entry in enumerate(rawServers)
    )
    _checkDistinctServers(servers, source, serverKeys)

    defaults = PoolConfig(name=name, servers=servers)
    balance = table.optionalString("balance")
    if balance is None:
        balance = defaults.balance
    elif balance not in _BALANCERS:
        raise table.error(
            "balance",
            f"unsupported balancing method {balance!r} "
            f"(supported: {', '.join(_BALANCERS)})",
        )

    hostHeader = table.optionalString("host_header")
    if hostHeader == "preserve":
        hostHeader = None
    elif hostHeader is not None and not _HOST_HEADER_VALUE.match(hostHeader):
        raise table.error(
            "host_header",
            f'invalid value {hostHeader!r} (expected "preserve", "backend" '
            'or a host name like "app.example.com")',
        )

    return PoolConfig(
        name=name,
        servers=servers,
        balance=balance,
        maxConnections=table.integer("max_connections", defaults.maxConnections, 1),
        maxPending=table.integer("max_pending", defaults.maxPending, 0),
        maxIdle=table.integer("max_idle", defaults.maxIdle, 0),
        connectTimeout=table.timeout("connect_timeout", defaults.connectTimeout),
        readTimeout=table.timeout("read_timeout", defaults.readTimeout),
        idleTimeout=table.timeout("idle_timeout", defaults.idleTimeout),
        pendingTimeout=table.timeout("pending_timeout", defaults.pendingTimeout),
        hostHeader=hostHeader,
        retries=table.integer("retries", defaults.retries, 0),
        **_parsePoolBalancing(table, balance, defaults),
        **_parsePoolTLS(table, servers, baseDirectory or os.getcwd()),
    )


def _parsePoolBalancing(
    table: _Table, balance: str, defaults: PoolConfig
) -> dict[str, Any]:
    """
    Parse a pool's balancing, health and retry keys into L{PoolConfig}
    arguments.
    """
    hashOn = table.optionalString("hash_on")
    if hashOn is not None:
        if balance != "hash":
            raise table.error("hash_on", 'applies only to balance = "hash"')
        try:
            parseHashOn(hashOn)
        except ValueError as e:
            raise table.error("hash_on", str(e)) from None
    elif balance == "hash":
        hashOn = "client"
    health = None
    if table.has("health"):
        health = _parseHealth(
            _Table(table.data["health"], table.source, table.keyOf("health"))
        )
    outlier = None
    if table.has("outlier"):
        outlier = _parseOutlier(
            _Table(table.data["outlier"], table.source, table.keyOf("outlier"))
        )
    budget = defaults.retryBudget
    if table.has("retry_budget"):
        budget = _parseRetryBudget(
            _Table(
                table.data["retry_budget"], table.source, table.keyOf("retry_budget")
            )
        )
    retryStatuses = defaults.retryStatuses
    if table.has("retry_statuses"):
        retryStatuses = tuple(
            sorted({low for low, _ in _parseStatuses(table, "retry_statuses", 500)})
        )
    return {
        "hashOn": hashOn,
        "health": health,
        "outlier": outlier,
        "panicThreshold": table.number(
            "panic_threshold", defaults.panicThreshold, 0, 100
        ),
        "retryBudget": budget,
        "retryStatuses": retryStatuses,
        "slowStart": table.duration("slow_start", defaults.slowStart),
    }


def _parseStatuses(
    table: _Table, name: str, minimum: int = 100, ranges: bool = False
) -> tuple[tuple[int, int], ...]:
    """
    A list of HTTP statuses: integers, or with C{ranges} also strings
    C{"LOW-HIGH"} such as C{"200-399"}; as inclusive ranges.
    """
    value = table.data[name]
    expected = "a list of statuses" + (' (like 200 or "200-399")' if ranges else "")
    if not isinstance(value, list):
        raise table.error(name, f"expected {expected}, got {_typeName(value)}")
    if not value:
        raise table.error(name, "must list at least one status")
    out = []
    for index, item in enumerate(value):
        key = f"{table.keyOf(name)}[{index}]"
        if isinstance(item, str) and ranges:
            low, dash, high = item.partition("-")
            if not (dash and low.strip().isdigit() and high.strip().isdigit()):
                raise ConfigError(
                    table.source, key, f'invalid range {item!r} (like "200-399")'
                )
            pair = (int(low), int(high))
        elif isinstance(item, int) and not isinstance(item, bool):
            pair = (item, item)
        else:
            raise ConfigError(
                table.source, key, f"expected {expected}, got {_typeName(item)}"
            )
        if not (minimum <= pair[0] <= pair[1] <= 599):
            raise ConfigError(
                table.source,
                key,
                f"must be statuses from {minimum} to 599, got {item!r}",
            )
        out.append(pair)
    return tuple(out)


def _parseHealth(table: _Table) -> HealthCheckConfig:
    """
    Parse a pool's C{health} table.
    """
    table.checkKeys(_HEALTH_KEYS)
    defaults = HealthCheckConfig()
    path = table.optionalString("path")
    if path is None:
        path = defaults.path
    elif (
        not path.startswith("/")
        or not path.isascii()
        or any(c in path for c in " \r\n\t")
    ):
        raise table.error(
            "path", f'must be an ASCII path starting with "/", got {path!r}'
        )
    interval = table.timeout("interval", defaults.interval)
    timeout = table.timeout("timeout", defaults.timeout)
    if timeout > interval:
        raise table.error(
            "timeout", f"must not be longer than the interval ({interval:g}s)"
        )
    statuses = defaults.statuses
    if table.has("statuses"):
        statuses = _parseStatuses(table, "statuses", ranges=True)
    return HealthCheckConfig(
        path=path,
        interval=interval,
        timeout=timeout,
        statuses=statuses,
        rise=table.integer("rise", defaults.rise, 1),
        fall=table.integer("fall", defaults.fall, 1),
    )


def _parseOutlier(table: _Table) -> OutlierConfig:
    """
    Parse a pool's C{outlier} table.
    """
    table.checkKeys(_OUTLIER_KEYS)
    defaults = OutlierConfig()
    base = table.timeout("base_ejection", defaults.baseEjection)
    maximum = table.timeout("max_ejection", max(defaults.maxEjection, base))
    if maximum < base:
        raise table.error(
            "max_ejection", f"must not be shorter than base_ejection ({base:g}s)"
        )
    return OutlierConfig(
        consecutiveFailures=table.integer(
            "consecutive_failures", defaults.consecutiveFailures, 1
        ),
        baseEjection=base,
        maxEjection=maximum,
        maxEjectedPercent=table.number(
            "max_ejected_percent", defaults.maxEjectedPercent, 0, 100
        ),
    )


def _parseRetryBudget(table: _Table) -> RetryBudgetConfig:
    """
    Parse a pool's C{retry_budget} table.
    """
    table.checkKeys(_RETRY_BUDGET_KEYS)
    defaults = RetryBudgetConfig()
    return RetryBudgetConfig(
        percent=table.number("percent", defaults.percent, 0, 100),
        minRetries=table.integer("min_retries", defaults.minRetries, 0),
        window=table.timeout("window", defaults.window),
    )


def _parsePools(
    value: object, source: str, baseDirectory: str = ""
) -> dict[str, PoolConfig]:
    """
    Parse the C{pools} table of tables.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(
            source,
            "pools",
            f"expected a table of pools ([pools.NAME]), got {_typeName(value)}",
        )
    return {
        name: _parsePool(name, pool, source, baseDirectory)
        for name, pool in value.items()
    }


def _parseRoute(
    index: int,
    value: object,
    source: str,
    baseDirectory: str,
    pools: Mapping[str, PoolConfig],
) -> RouteConfig:
    """
    Parse one C{[[routes]]} table.
    """
    table = _Table(value, source, f"routes[{index}]")
    table.checkKeys(_ROUTE_KEYS, _ROUTE_COMING)

    path = table.optionalString("path")
    path = "/" if path is None else _checkPath(path, source, table.keyOf("path"))
    host = table.optionalString("host")
    if host is not None:
        host = _normalizeRouteHost(host, source, table.keyOf("host"))

    pool = table.optionalString("pool")
    static = table.optionalString("static")
    if pool is not None and static is not None:
        raise ConfigError(
            source, table.key, "must have exactly one of 'pool' or 'static', not both"
        )
    if pool is None and static is None:
        raise ConfigError(
            source,
            table.key,
            "must have exactly one of 'pool' or 'static', has neither",
        )
    if pool is not None and pool not in pools:
        defined = ", ".join(sorted(pools)) or "none"
        raise table.error("pool", f"no pool named {pool!r} (defined: {defined})")
    if static is not None:
        static = _resolveDirectory(static, baseDirectory, source, table.keyOf("static"))
        for name in ("strip_prefix", "request_buffering", "websocket"):
            if table.has(name):
                raise table.error(
                    name,
                    "applies to pool routes only (a static route serves its "
                    "directory under its path)",
                )

    staticOptions: dict[str, Any] = {}
    if static is not None:
        staticOptions = _parseStaticOptions(table)
    else:
        for name in _STATIC_KEYS:
            if table.has(name):
                raise table.error(name, "applies to static routes only")
    return RouteConfig(
        path=path,
        host=host,
        pool=pool,
        static=static,
        stripPrefix=table.boolean("strip_prefix", False),
        maxBodySize=table.optionalSize("max_body_size"),
        requestBuffering=table.optionalBoolean("request_buffering"),
        filters=table.stringList("filters", ()),
        websocket=table.boolean("websocket", True),
        cache=table.optionalString("cache"),
        **staticOptions,
    )


_EXTENSION = re.compile(r"\.?[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")


def _headerValue(value: str, source: str, key: str) -> str:
    if not _HEADER_VALUE.fullmatch(value):
        raise ConfigError(source, key, "must be printable ASCII (a header value)")
    return value


def _extensionTable(table: _Table, name: str, what: str) -> tuple[tuple[str, str], ...]:
    """
    A table of file extension to header value, such as
    C{{ woff2 = "max-age=31536000, immutable" }}.
    """
    value = table.data.get(name)
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise table.error(
            name, f"expected a table of extension = {what}, got {_typeName(value)}"
        )
    pairs = []
    for extension, item in value.items():
        key = _joinKey(table.keyOf(name), extension)
        if not _EXTENSION.fullmatch(extension):
            raise ConfigError(table.source, key, "is not a file extension")
        if not isinstance(item, str):
            raise ConfigError(
                table.source, key, f"expected a string, got {_typeName(item)}"
            )
        value = _headerValue(item, table.source, key)
        pairs.append((extension.lower().lstrip("."), value))
    return tuple(pairs)


def _parseStaticOptions(table: _Table) -> dict[str, Any]:
    """
    The keys of a static route, as L{RouteConfig} arguments.
    """
    index = table.stringList("index", ("index.html",), allowSingle=True)
    for position, name in enumerate(index):
        if not name or name in (".", "..") or any(c in name for c in "/\\\x00"):
            raise ConfigError(
                table.source,
                f"{table.keyOf('index')}[{position}]",
                f"{name!r} is not a file name",
            )
    cacheControl = table.optionalString("cache_control")
    if cacheControl is not None:
        cacheControl = _headerValue(
            cacheControl, table.source, table.keyOf("cache_control")
        )
    return {
        "index": index,
        "listDirectories": table.boolean("list_directories", False),
        "allowHidden": table.boolean("allow_hidden", False),
        "followSymlinksOutside": table.boolean("follow_symlinks_outside", False),
        "cacheControl": cacheControl,
        "cacheControlByExtension": _extensionTable(
            table, "cache_control_by_extension", "Cache-Control value"
        ),
        "mimeTypes": _extensionTable(table, "mime_types", "content type"),
    }


_TLS_KEYS = (
    "listen",
    "certificates",
    "protocols",
    "http2",
    "hsts",
    "redirect_http",
    "client_ca",
    "watch_interval",
)
_TLS_PROFILES = ("intermediate", "modern")
_CERTIFICATE_KEYS = ("certificate", "key")
#: The C{max-age} of C{hsts = true}: one year, as browsers' preload lists ask.
_HSTS_DEFAULT = 365 * 86400
#: Prefixes of endpoints that bring their own TLS.
_TLS_ENDPOINTS = ("ssl:", "tls:", "le:", "lets:", "txsni:")


def _resolveFile(value: str, baseDirectory: str, source: str, key: str) -> str:
    """
    Make a file path absolute against C{baseDirectory}.  Whether it can be
    read is checked with the other certificate checks (see
    L{twisted_rproxy.tls.checkTLSFiles}), so that a key and its certificate
    are reported together.
    """
    if not value:
        raise ConfigError(source, key, "must be a file path, got an empty string")
    return os.path.abspath(os.path.join(baseDirectory, os.path.expanduser(value)))


def _parseCertificateEntry(
    value: object, source: str, key: str, baseDirectory: str
) -> CertificateConfig:
    """
    One certificate: the path of a PEM file holding the key and the chain,
    or a table C{{ certificate = "c.pem", key = "k.pem" }}.
    """
    if isinstance(value, str):
        path = _resolveFile(value, baseDirectory, source, key)
        return CertificateConfig(certificate=path, key=path)
    if not isinstance(value, Mapping):
        raise ConfigError(
            source,
            key,
            "expected the path of a PEM file (key and chain) or a table like "
            '{ certificate = "c.pem", key = "k.pem" }, '
            f"got {_typeName(value)}",
        )
    table = _Table(value, source, key)
    table.checkKeys(_CERTIFICATE_KEYS)
    certificate = table.optionalString("certificate")
    if certificate is None:
        raise table.error("certificate", "is required: the certificate's PEM file")
    keyPath = table.optionalString("key")
    certificatePath = _resolveFile(
        certificate, baseDirectory, source, table.keyOf("certificate")
    )
    return CertificateConfig(
        certificate=certificatePath,
        key=certificatePath
        if keyPath is None
        else _resolveFile(keyPath, baseDirectory, source, table.keyOf("key")),
    )


def _parsePoolTLS(
    table: _Table, servers: Sequence[BackendServer], baseDirectory: str
) -> dict[str, Any]:
    """
    The C{tls_*} keys of a pool, as L{PoolConfig} arguments.
    """
    names = ("tls_ca", "tls_verify", "tls_server_name", "tls_client_certificate")
    given = [name for name in names if table.has(name)]
    if not given:
        return {}
    if not any(server.scheme == "https" for server in servers):
        raise table.error(
            given[0], "applies to https:// servers only; this pool has none"
        )
    # Any: the values are PoolConfig arguments of several types.
    result: dict[str, Any] = {"tlsVerify": table.boolean("tls_verify", True)}
    ca = table.optionalString("tls_ca")
    if ca is not None:
        result["tlsCA"] = _resolveFile(
            ca, baseDirectory, table.source, table.keyOf("tls_ca")
        )
    serverName = table.optionalString("tls_server_name")
    if serverName is not None:
        normalized = serverName.strip().lower().removesuffix(".")
        if not _HOST_NAME.match(normalized):
            raise table.error(
                "tls_server_name",
                f"invalid server name {serverName!r} (expected a host name "
                'like "app.internal")',
            )
        result["tlsServerName"] = normalized
    if table.has("tls_client_certificate"):
        result["tlsClientCertificate"] = _parseCertificateEntry(
            table.data["tls_client_certificate"],
            table.source,
            table.keyOf("tls_client_certificate"),
            baseDirectory,
        )
    return result


def _parseTLS(index: int, value: object, source: str, baseDirectory: str) -> TLSConfig:
    """
    Parse one C{[[tls]]} table.
    """
    table = _Table(value, source, f"tls[{index}]")
    table.checkKeys(_TLS_KEYS)
    if not table.has("listen"):
        raise ConfigError(
            source, table.keyOf("listen"), 'is required: endpoints like ["tcp:8443"]'
        )
    listen = table.stringList("listen", (), allowSingle=True)
    if isinstance(table.data.get("listen"), str):
        listenKeys = [table.keyOf("listen")]
    else:
        listenKeys = [f"{table.keyOf('listen')}[{i}]" for i in range(len(listen))]
    for description, listenKey in zip(listen, listenKeys, strict=True):
        if description.strip().lower().startswith(_TLS_ENDPOINTS):
            raise ConfigError(
                source,
                listenKey,
                f"{description!r} brings its own TLS; give a plain endpoint "
                'such as "tcp:8443": [[tls]] adds TLS from its certificates',
            )
    listen = _parseListen(listen, source, listenKeys, table.keyOf("listen"))

    rawCertificates = table.data.get("certificates")
    if rawCertificates is None:
        raise table.error(
            "certificates",
            'is required: a list of PEM files like ["site.pem"] or tables like '
            '{ certificate = "c.pem", key = "k.pem" }',
        )
    if isinstance(rawCertificates, (str, Mapping)):
        rawCertificates = [rawCertificates]
    if not isinstance(rawCertificates, list):
        raise table.error(
            "certificates",
            f"expected a list of certificates, got {_typeName(rawCertificates)}",
        )
    if not rawCertificates:
        raise table.error("certificates", "must list at least one certificate")
    certificates = tuple(
        _parseCertificateEntry(
            entry, source, f"{table.keyOf('certificates')}[{i}]", baseDirectory
        )
        for i, entry in enumerate(rawCertificates)
    )

    protocols = table.optionalString("protocols")
    if protocols is None:
        protocols = "intermediate"
    elif protocols not in _TLS_PROFILES:
        raise table.error(
            "protocols",
            f'unknown profile {protocols!r} (expected "intermediate": TLS 1.2 '
            'and 1.3, or "modern": TLS 1.3 only)',
        )

    hsts: int | None
    rawHsts = table.data.get("hsts")
    if rawHsts is None or rawHsts is False:
        hsts = None
    elif rawHsts is True:
        hsts = _HSTS_DEFAULT
    else:
        seconds = _parseDuration(rawHsts, source, table.keyOf("hsts"))
        if seconds != int(seconds):
            raise table.error("hsts", f"must be whole seconds, got {rawHsts!r}")
        hsts = int(seconds)

    clientCA = table.optionalString("client_ca")
    if clientCA is not None:
        clientCA = _resolveFile(
            clientCA, baseDirectory, source, table.keyOf("client_ca")
        )

    return TLSConfig(
        listen=listen,
        certificates=certificates,
        protocols=protocols,
        http2=table.boolean("http2", True),
        hsts=hsts,
        redirectHttp=table.boolean("redirect_http", False),
        clientCA=clientCA,
        watchInterval=table.timeout("watch_interval", 0.0) or None,
    )


def _parseTLSList(
    value: object, source: str, baseDirectory: str, server: ServerConfig
) -> tuple[TLSConfig, ...]:
    """
    Parse the C{[[tls]]} array of tables, and check what the tables must
    agree on.
    """
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(
            source,
            "tls",
            f"expected an array of tables ([[tls]]), got {_typeName(value)}",
        )
    groups = tuple(
        _parseTLS(index, group, source, baseDirectory)
        for index, group in enumerate(value)
    )
    seen = {description: "server.listen" for description in server.listen}
    for index, group in enumerate(groups):
        for position, description in enumerate(group.listen):
            if description in seen:
                raise ConfigError(
                    source,
                    f"tls[{index}].listen[{position}]",
                    f"endpoint {description!r} is already listed in "
                    f"{seen[description]}",
                )
            seen[description] = f"tls[{index}].listen"
        if group.hsts != groups[0].hsts:
            # The listeners share one site, which adds the header.
            raise ConfigError(
                source,
                f"tls[{index}].hsts",
                "must be the same in every [[tls]] table (tls[0] has "
                f"{'none' if groups[0].hsts is None else groups[0].hsts})",
            )
    redirecting = [i for i, group in enumerate(groups) if group.redirectHttp]
    if len(redirecting) > 1:
        raise ConfigError(
            source,
            f"tls[{redirecting[1]}].redirect_http",
            "only one [[tls]] table may redirect plain HTTP "
            f"(tls[{redirecting[0]}] does)",
        )
    return groups


def _parseFilter(name: str, value: object, source: str) -> FilterConfig:
    """
    Parse one C{[filters.NAME]} table: find its plugin and let the plugin
    validate the options (by building the filter once).
    """
    # Here, not at the top: the filter machinery imports twisted.web.
    from twisted_rproxy.filters import FilterOptionError, findFilterFactory

    key = _joinKey("filters", name)
    if not _POOL_NAME.match(name):
        raise ConfigError(
            source,
            key,
            f"invalid filter name {name!r} (use letters, digits, '_', '.' and '-')",
        )
    table = _Table(value, source, key)
    plugin = table.optionalString("plugin")
    if plugin is None:
        raise table.error(
            "plugin", 'is required: the name of a filter plugin, like "headers"'
        )
    try:
        factory = findFilterFactory(plugin)
    except LookupError as e:
        raise table.error("plugin", str(e.args[0])) from None
    options = {option: v for option, v in table.data.items() if option != "plugin"}
    try:
        factory.buildFilter(options)
    except FilterOptionError as e:
        # The plugin gives the option's path already dotted.
        optionKey = f"{key}.{e.option}" if e.option else key
        raise ConfigError(source, optionKey, e.message) from None
    except Exception as e:
        # A plugin's own bug or unexpected refusal: still one clear line.
        raise ConfigError(
            source,
            key,
            f"the {plugin!r} filter plugin refused its options: "
            f"{type(e).__name__}: {e}",
        ) from None
    return FilterConfig(name=name, plugin=plugin, options=options)


def _parseFilters(value: object, source: str) -> dict[str, FilterConfig]:
    """
    Parse the C{filters} table of tables.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(
            source,
            "filters",
            f"expected a table of filters ([filters.NAME]), got {_typeName(value)}",
        )
    return {name: _parseFilter(name, table, source) for name, table in value.items()}


def _checkRouteFilters(
    routes: Sequence[RouteConfig], filters: Mapping[str, FilterConfig], source: str
) -> None:
    """
    Reject a route naming a filter that is not defined, or one twice.
    """
    for index, route in enumerate(routes):
        for position, name in enumerate(route.filters):
            key = f"routes[{index}].filters[{position}]"
            if name not in filters:
                defined = ", ".join(sorted(filters)) or "none"
                raise ConfigError(
                    source, key, f"no filter named {name!r} (defined: {defined})"
                )
            if name in route.filters[:position]:
                raise ConfigError(source, key, f"filter {name!r} is listed twice")


def _parseCache(name: str, value: object, source: str) -> CacheConfig:
    """
    Parse one C{[caches.NAME]} table.
    """
    key = _joinKey("caches", name)
    if not _POOL_NAME.match(name):
        raise ConfigError(
            source,
            key,
            f"invalid cache name {name!r} (use letters, digits, '_', '.' and '-')",
        )
    table = _Table(value, source, key)
    table.checkKeys(_CACHE_KEYS)
    maxSize = table.size("max_size", 64 * 1024 * 1024, 1)
    maxObjectSize = table.size("max_object_size", min(maxSize, 1024 * 1024), 0)
    if maxObjectSize > maxSize:
        raise table.error(
            "max_object_size",
            f"must not be larger than max_size ({maxSize} bytes), got "
            f"{maxObjectSize} bytes",
        )
    parts = table.stringList("key", DEFAULT_CACHE_KEY)
    if not parts:
        raise table.error("key", "must name at least one part")
    for index, part in enumerate(parts):
        if part in _CACHE_KEY_PARTS:
            continue
        header = part[7:] if part.lower().startswith("header:") else ""
        if not header or not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", header):
            raise ConfigError(
                source,
                f"{table.keyOf('key')}[{index}]",
                f"unknown key part {part!r} (expected one of "
                f"{', '.join(DEFAULT_CACHE_KEY)} or header:NAME)",
            )
    networks = []
    for index, cidr in enumerate(table.stringList("purge_from", ())):
        try:
            networks.append(str(ipaddress.ip_network(cidr, strict=False)))
        except ValueError:
            raise ConfigError(
                source,
                f"{table.keyOf('purge_from')}[{index}]",
                f"not an IP address or network: {cidr!r}",
            ) from None
    return CacheConfig(
        name=name,
        maxSize=maxSize,
        maxObjectSize=maxObjectSize,
        key=parts,
        defaultTTL=table.duration("default_ttl", 0.0),
        heuristicFraction=table.number("heuristic_fraction", 0.1, 0.0, 1.0),
        heuristicMax=table.duration("heuristic_max", 86400.0),
        staleWhileRevalidate=table.duration("stale_while_revalidate", 0.0),
        staleIfError=table.duration("stale_if_error", 0.0),
        coalesce=table.boolean("coalesce", True),
        coalesceWait=table.timeout("coalesce_wait", 5.0),
        statusHeader=table.boolean("status_header", False),
        purgeFrom=tuple(networks),
    )


def _parseCaches(value: object, source: str) -> dict[str, CacheConfig]:
    """
    Parse the C{caches} table of tables.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(
            source,
            "caches",
            f"expected a table of caches ([caches.NAME]), got {_typeName(value)}",
        )
    return {name: _parseCache(name, table, source) for name, table in value.items()}


def _checkRouteCaches(
    routes: Sequence[RouteConfig], caches: Mapping[str, CacheConfig], source: str
) -> None:
    """
    Reject a route naming a cache that is not defined.
    """
    for index, route in enumerate(routes):
        if route.cache is not None and route.cache not in caches:
            defined = ", ".join(sorted(caches)) or "none"
            raise ConfigError(
                source,
                f"routes[{index}].cache",
                f"no cache named {route.cache!r} (defined: {defined})",
            )


def _checkDistinctRoutes(routes: Sequence[RouteConfig], source: str) -> None:
    """
    Reject a route with the same host and path as an earlier one.
    """
    seen: dict[tuple[str | None, str], int] = {}
    for index, route in enumerate(routes):
        where = (route.host, route.path)
        if where in seen:
            hostText = "any host" if route.host is None else f"host {route.host!r}"
            raise ConfigError(
                source,
                f"routes[{index}]",
                f"same host and path as routes[{seen[where]}] "
                f"({hostText}, path {route.path!r})",
            )
        seen[where] = index


def parseConfig(data: Mapping[str, object], source: str, baseDirectory: str) -> Config:
    """
    Validate an already parsed configuration.

    @param data: The parsed TOML document.
    @param source: The file named by errors and recorded in the result.
    @param baseDirectory: The directory against which relative paths
        (static directories, the access log) are resolved: the directory of
        the configuration file.
    @return: The validated configuration.
    @raise ConfigError: For the first mistake found.
    """
    top = _Table(data, source, "")
    top.checkKeys(_TOP_LEVEL_KEYS, _TOP_LEVEL_COMING)

    server = (
        _parseServer(data["server"], source, baseDirectory)
        if "server" in data
        else ServerConfig()
    )
    pools = _parsePools(data["pools"], source, baseDirectory) if "pools" in data else {}
    filters = _parseFilters(data["filters"], source) if "filters" in data else {}
    caches = _parseCaches(data["caches"], source) if "caches" in data else {}
    admin = _parseAdmin(data["admin"], source) if "admin" in data else None

    rawRoutes = data.get("routes")
    if rawRoutes is None:
        raise ConfigError(source, "routes", "at least one [[routes]] table is required")
    if not isinstance(rawRoutes, list):
        raise ConfigError(
            source,
            "routes",
            f"expected an array of tables ([[routes]]), got {_typeName(rawRoutes)}",
        )
    if not rawRoutes:
        raise ConfigError(source, "routes", "at least one [[routes]] table is required")
    routes = tuple(
        _parseRoute(index, route, source, baseDirectory, pools)
        for index, route in enumerate(rawRoutes)
    )
    _checkDistinctRoutes(routes, source)
    _checkRouteFilters(routes, filters, source)
    _checkRouteCaches(routes, caches, source)
    tls = (
        _parseTLSList(data["tls"], source, baseDirectory, server)
        if "tls" in data
        else ()
    )
    return Config(
        source=source,
        server=server,
        pools=pools,
        routes=routes,
        tls=tls,
        filters=filters,
        admin=admin,
        caches=caches,
    )


def loadConfig(path: str) -> Config:
    """
    Read and validate a TOML configuration file.

    @param path: The file's path; relative paths in the file are resolved
        against its directory.
    @return: The validated configuration, whose C{source} is C{path}.
    @raise ConfigError: If the file cannot be read, is not valid TOML, or
        holds a mistake.
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "", f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            path, "", f"invalid TOML: not UTF-8 text (byte offset {e.start})"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"invalid TOML: {e}") from None
    return parseConfig(data, path, os.path.dirname(os.path.abspath(path)))


def configFromArguments(
    listen: Sequence[str],
    backends: Sequence[str],
    static: str | None,
    staticPrefix: str = "/",
    accessLog: str | None = None,
) -> Config:
    """
    Build the configuration of the command-line mode (no file): one
    round-robin pool named C{"default"} holding C{backends}, and the routes
    C{static} on C{staticPrefix} (if given) then C{"/"} to the pool (if
    backends are given).  Relative paths are resolved against the current
    directory.

    @param listen: Server endpoint strings; empty means C{("tcp:8080",)}.
    @param backends: Backend URLs.
    @param static: A directory to serve, or L{None}.
    @param staticPrefix: The path under which C{static} is served.
    @param accessLog: C{"-"}, a file path, or L{None} for no access log.
    @return: The configuration, whose C{source} is L{COMMAND_LINE}.
    @raise ConfigError: Naming the option (C{"--listen"}, C{"--backend"},
        C{"--static"}, C{"--static-prefix"}, C{"--access-log"}) at fault.
    """
    source = COMMAND_LINE
    baseDirectory = os.getcwd()
    endpoints = tuple(listen) or _DEFAULT_LISTEN
    listenTuple = _parseListen(
        endpoints, source, ["--listen"] * len(endpoints), "--listen"
    )
    if not backends and static is None:
        raise ConfigError(
            source,
            "--backend",
            "nothing to serve: give at least one --backend URL or a --static directory",
        )
    servers = tuple(_parseBackendURL(url, source, "--backend") for url in backends)
    _checkDistinctServers(servers, source, ["--backend"] * len(servers))

    pools: dict[str, PoolConfig] = {}
    routes: list[RouteConfig] = []
    if static is not None:
        prefix = _checkPath(staticPrefix, source, "--static-prefix")
        if servers and prefix == "/":
            raise ConfigError(
                source,
                "--static-prefix",
                "static files and backends cannot both be served on '/'; "
                "give a --static-prefix such as /static/",
            )
        directory = _resolveDirectory(static, baseDirectory, source, "--static")
        routes.append(RouteConfig(path=prefix, static=directory))
    if servers:
        pools[_DEFAULT_POOL] = PoolConfig(name=_DEFAULT_POOL, servers=servers)
        routes.append(RouteConfig(path="/", pool=_DEFAULT_POOL))
    server = ServerConfig(
        listen=listenTuple,
        accessLog=_resolveAccessLog(accessLog, baseDirectory, source, "--access-log"),
    )
    return Config(source=source, server=server, pools=pools, routes=tuple(routes))
