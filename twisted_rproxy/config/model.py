"""
The configuration's classes: frozen attrs values (L{ConfigError} and the
patterns values are checked against are in L{twisted_rproxy.config.base}).
"""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

from twisted_rproxy.config.acme import ACMEConfig
from twisted_rproxy.config.base import _BARE_KEY as _BARE_KEY
from twisted_rproxy.config.base import _HEADER_VALUE as _HEADER_VALUE
from twisted_rproxy.config.base import _HOST_HEADER_VALUE as _HOST_HEADER_VALUE
from twisted_rproxy.config.base import _HOST_LABEL as _HOST_LABEL
from twisted_rproxy.config.base import _HOST_NAME as _HOST_NAME
from twisted_rproxy.config.base import _POOL_NAME as _POOL_NAME
from twisted_rproxy.config.base import _TOKEN as _TOKEN
from twisted_rproxy.config.base import _URL_PATH as _URL_PATH
from twisted_rproxy.config.base import _VIA_PSEUDONYM as _VIA_PSEUDONYM
from twisted_rproxy.config.base import COMMAND_LINE as COMMAND_LINE
from twisted_rproxy.config.base import NOT_SUPPORTED as NOT_SUPPORTED
from twisted_rproxy.config.base import ConfigError as ConfigError
from twisted_rproxy.config.base import _typeName as _typeName
from twisted_rproxy.config.discovery import DiscoveryConfig
from twisted_rproxy.config.hashing import BALANCERS, HashOn, parseHashOn
from twisted_rproxy.config.state import StateConfig

_BALANCERS = BALANCERS


_DEFAULT_LISTEN = ("tcp:8080",)


_DEFAULT_POOL = "default"


CLIENT_IP_HEADERS = (
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
)
"""
The request headers that other proxies and CDNs use to name the client
(C{Forwarded} and C{X-Forwarded-For} have rules of their own): the default
of L{ServerConfig.clientIPHeaders}.
"""


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
    @ivar socketPath: For a unix-socket server (C{"http://unix:/run/app.sock"}),
        the absolute path of its socket, normalized; its C{host} is then
        C{"localhost"} (the C{Host} that C{host_header = "backend"} sends) and
        its C{port} the scheme's default. L{None} for a TCP server.
    @ivar tlsServerName: For an C{https} server, its own name to verify and
        send by SNI (a server entry's C{tls_server_name}), before the pool's
        L{PoolConfig.tlsServerName}; else L{None}.
    @ivar priority: The failover order (an SRV record's priority): while a
        server of the lowest priority is healthy, only those serve.
    """

    url: str
    scheme: str
    host: str
    port: int
    weight: int = 1
    socketPath: str | None = None
    tlsServerName: str | None = None
    priority: int = 0


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
    @ivar servers: The servers given as URLs, in file order.
    @ivar discovery: The DNS discovery entries (C{dns}, C{srv}), whose
        servers join C{servers} at run time; at least one of the two.
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
    #: C{hashOn} parsed (for C{balance = "hash"}, C{"client"} by default),
    #: or L{None} for other methods; derived, not given.
    hashBy: HashOn | None = field(init=False, eq=False)
    health: HealthCheckConfig | None = None
    outlier: OutlierConfig | None = None
    panicThreshold: float = 50.0
    retryBudget: RetryBudgetConfig = RetryBudgetConfig()
    retryStatuses: tuple[int, ...] = (502, 503, 504)
    slowStart: float = 0.0
    discovery: tuple[DiscoveryConfig, ...] = ()

    @hashBy.default
    def _hashBy(self) -> HashOn | None:
        if self.balance != "hash":
            return None
        return parseHashOn(self.hashOn or "client")


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
    @ivar allowTrace: Whether C{TRACE} requests are forwarded to the pool;
        when not, they are answered 405.
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
    allowTrace: bool = False


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
    @ivar statusHeader: Whether responses carry C{X-Cache} and a
        C{Cache-Status} member (RFC 9211) naming the cache.
    @ivar targeted: The targeted cache-control fields (RFC 9213) this
        cache obeys before C{Cache-Control}, most specific first; empty
        for C{Cache-Control} alone.
    @ivar purgeFrom: Networks (CIDR) allowed to send C{PURGE}.
    @ivar store: Where entries are kept: C{"memory"} (this process),
        C{"redis"} (the shared C{[state]}, seen by every proxy using it) or
        C{"disk"} (files under C{path}).
    @ivar path: With C{store = "disk"}, the absolute path of the directory
        of its files (C{""} otherwise).
    @ivar localSize: With C{store = "redis"}, the bytes of an in-process
        layer in front of Redis (0 for none).
    @ivar localTTL: The longest the in-process layer answers for a key
        without asking Redis again: how late a PURGE made elsewhere may be
        seen here.
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
    targeted: tuple[str, ...] = ("CDN-Cache-Control",)
    purgeFrom: tuple[str, ...] = ()
    store: str = "memory"
    localSize: int = 0
    localTTL: float = 1.0
    path: str = ""


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
    The settings of one listening endpoint, given as a table in a C{listen}
    list of C{[server]} or C{[[tls]]} (C{{ endpoint = "tcp:8081",
    proxy_protocol = true }}). Its security settings apply on top of
    C{[server]}'s: a connection must pass both access lists.

    @ivar allow: Networks (normalized CIDR strings) allowed to connect;
        empty for any.
    @ivar deny: Networks refused.
    @ivar proxyProtocol: Whether connections start with a PROXY protocol
        header, or L{None} for C{[server]}'s setting.
    @ivar maxConnectionsPerClient: This listener's per-client connection
        limit, or L{None} for C{[server]}'s.
    @ivar backlog: The length of the socket's queue of connections not
        yet accepted, or L{None} for the default
        (L{twisted_rproxy.listening.DEFAULT_BACKLOG}); a C{backlog=} in the
        endpoint string wins.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    proxyProtocol: bool | None = None
    maxConnectionsPerClient: int | None = None
    backlog: int | None = None


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
    @ivar minBodyRate: The slowest average rate, in bytes per second, at
        which a request body may arrive once C{minBodyRateGrace} has passed
        (408 below it, as Kestrel's C{MinRequestBodyDataRate}); 0 for no
        limit.
    @ivar minBodyRateGrace: Seconds a request body has before its rate is
        checked.
    @ivar clientIPHeaders: Lowercased names of the request headers that
        name the client to a backend (C{X-Real-IP} and the like): passed on
        from C{trustedProxies} only, removed from any other client.
    @ivar listeners: L{ListenerConfig} by endpoint string, for the
        endpoints given as tables in C{listen} (of C{[server]} or
        C{[[tls]]}).
    @ivar resolvers: The C{(address, port)} of the DNS servers that DNS
        discovery asks, or empty for the system's (C{/etc/resolv.conf}).
    @ivar h2c: Whether a plain (not TLS) connection that starts with the
        HTTP/2 connection preface speaks HTTP/2 (prior knowledge, for a
        proxy behind a TLS-terminating balancer); others stay HTTP/1.1.
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
    minBodyRate: int = 240
    minBodyRateGrace: float = 5.0
    clientIPHeaders: tuple[str, ...] = CLIENT_IP_HEADERS
    listeners: Mapping[str, ListenerConfig] = field(factory=dict)
    workers: int = 1
    drainTimeout: float = 30.0
    accessLogFormat: str = "combined"
    allowConnect: bool = False
    tunnelIdleTimeout: float = 300.0
    resolvers: tuple[tuple[str, int], ...] = ()
    h2c: bool = False


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
    @ivar certificates: The certificates (at least one without
        C{acmeDomains}); the client's SNI
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
    @ivar ocspStapling: Whether the OCSP responses of the certificates that
        name a responder are fetched and stapled to handshakes.
    @ivar acmeDomains: The domains of the certificate obtained from the CA
        of C{[acme]} for this group (one certificate naming them all), beside
        or instead of C{certificates}.
    """

    listen: tuple[str, ...]
    certificates: tuple[CertificateConfig, ...]
    protocols: str = "intermediate"
    http2: bool = True
    hsts: int | None = None
    redirectHttp: bool = False
    clientCA: str | None = None
    watchInterval: float | None = None
    ocspStapling: bool = True
    acmeDomains: tuple[str, ...] = ()


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
    @ivar state: The shared Redis (C{[state]}), or L{None} for state kept
        in each process.
    @ivar acme: The CA of automatic certificates (C{[acme]}), or L{None}.
    """

    source: str
    server: ServerConfig
    pools: Mapping[str, PoolConfig]
    routes: tuple[RouteConfig, ...]
    tls: tuple[TLSConfig, ...] = ()
    filters: Mapping[str, FilterConfig] = field(factory=dict)
    admin: AdminConfig | None = None
    caches: Mapping[str, CacheConfig] = field(factory=dict)
    state: StateConfig | None = None
    acme: ACMEConfig | None = None
