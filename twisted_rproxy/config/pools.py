"""
The C{[pools.NAME]} tables (balancing, health, outliers, retries, TLS to
backends) and the C{[[tls]]} tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from twisted_rproxy.config.acmetable import _parseACMEDomains
from twisted_rproxy.config.backendurl import _checkUnixServerNames, _serverName
from twisted_rproxy.config.dnsentries import (
    _checkDistinctDiscovery,
    _parseDiscoveryEntry,
    isDiscoveryEntry,
)
from twisted_rproxy.config.hashing import parseHashOn
from twisted_rproxy.config.model import (
    _BALANCERS,
    _HOST_HEADER_VALUE,
    _POOL_NAME,
    BackendServer,
    ConfigError,
    HealthCheckConfig,
    ListenerConfig,
    OutlierConfig,
    PoolConfig,
    RetryBudgetConfig,
    ServerConfig,
    TLSConfig,
    _typeName,
)
from twisted_rproxy.config.server import _listenEntries
from twisted_rproxy.config.units import _parseDuration
from twisted_rproxy.config.values import (
    _checkDistinctServers,
    _joinKey,
    _namedTables,
    _parseCertificateEntry,
    _parseServerEntry,
    _resolveFile,
    _Table,
)

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
    allKeys = [f"{table.keyOf('servers')}[{i}]" for i in range(len(rawServers))]
    # URLs and tables with a url are servers; tables with dns or srv find
    # servers at run time.
    serverKeys = [
        key
        for key, entry in zip(allKeys, rawServers, strict=True)
        if not isDiscoveryEntry(entry)
    ]
    servers = tuple(
        _parseServerEntry(entry, source, allKeys[index])
        for index, entry in enumerate(rawServers)
        if not isDiscoveryEntry(entry)
    )
    _checkDistinctServers(servers, source, serverKeys)
    discovery = tuple(
        _parseDiscoveryEntry(entry, source, allKeys[index])
        for index, entry in enumerate(rawServers)
        if isDiscoveryEntry(entry)
    )
    _checkDistinctDiscovery(discovery, source)

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
        discovery=discovery,
        **_parsePoolBalancing(table, balance, defaults),
        **_parsePoolTLS(
            table,
            servers,
            baseDirectory or os.getcwd(),
            serverKeys,
            any(entry.scheme == "https" for entry in discovery),
        ),
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
    return _namedTables(
        value,
        source,
        "pools",
        lambda name, pool: _parsePool(name, pool, source, baseDirectory),
    )


_TLS_KEYS = (
    "listen",
    "certificates",
    "protocols",
    "http2",
    "hsts",
    "redirect_http",
    "client_ca",
    "watch_interval",
    "ocsp_stapling",
    "acme_domains",
)


_TLS_PROFILES = ("intermediate", "modern")


#: The C{max-age} of C{hsts = true}: one year, as browsers' preload lists ask.
_HSTS_DEFAULT = 365 * 86400


#: Prefixes of endpoints that bring their own TLS.
_TLS_ENDPOINTS = ("ssl:", "tls:", "le:", "lets:", "txsni:")


def _parsePoolTLS(
    table: _Table,
    servers: Sequence[BackendServer],
    baseDirectory: str,
    serverKeys: Sequence[str],
    discoversHTTPS: bool,
) -> dict[str, Any]:
    """
    The C{tls_*} keys of a pool, as L{PoolConfig} arguments.

    @param serverKeys: The key of each of C{servers}.
    @param discoversHTTPS: Whether a discovery entry of the pool finds
        C{https} servers.
    """
    names = ("tls_ca", "tls_verify", "tls_server_name", "tls_client_certificate")
    given = [name for name in names if table.has(name)]
    if not given:
        _checkUnixServerNames(servers, None, True, table.source, serverKeys)
        return {}
    if not discoversHTTPS and not any(server.scheme == "https" for server in servers):
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
        result["tlsServerName"] = _serverName(
            serverName, table.source, table.keyOf("tls_server_name")
        )
    _checkUnixServerNames(
        servers,
        result.get("tlsServerName"),
        result["tlsVerify"],
        table.source,
        serverKeys,
    )
    if table.has("tls_client_certificate"):
        result["tlsClientCertificate"] = _parseCertificateEntry(
            table.data["tls_client_certificate"],
            table.source,
            table.keyOf("tls_client_certificate"),
            baseDirectory,
        )
    return result


def _parseTLS(
    index: int, value: object, source: str, baseDirectory: str
) -> tuple[TLSConfig, dict[str, ListenerConfig]]:
    """
    Parse one C{[[tls]]} table.

    @return: The group, and the L{ListenerConfig} of each of its endpoints
        given as a table.
    """
    table = _Table(value, source, f"tls[{index}]")
    table.checkKeys(_TLS_KEYS)
    if not table.has("listen"):
        raise ConfigError(
            source, table.keyOf("listen"), 'is required: endpoints like ["tcp:8443"]'
        )
    rawListen = table.data["listen"]
    items = rawListen if isinstance(rawListen, list) else [rawListen]
    for position, item in enumerate(items):
        description = item.get("endpoint") if isinstance(item, Mapping) else item
        if isinstance(description, str) and description.strip().lower().startswith(
            _TLS_ENDPOINTS
        ):
            listenKey = table.keyOf("listen")
            if isinstance(rawListen, list):
                listenKey = f"{listenKey}[{position}]"
            raise ConfigError(
                source,
                listenKey,
                f"{description!r} brings its own TLS; give a plain endpoint "
                'such as "tcp:8443": [[tls]] adds TLS from its certificates',
            )
    # The same entries as [server] listen: strings, or tables with a
    # listener's own settings.
    listen, listeners = _listenEntries(table, ())

    acmeDomains = _parseACMEDomains(table)
    rawCertificates = table.data.get("certificates", [] if acmeDomains else None)
    if rawCertificates is None:
        raise table.error(
            "certificates",
            'is required: a list of PEM files like ["site.pem"] or tables like '
            '{ certificate = "c.pem", key = "k.pem" } (or acme_domains)',
        )
    if isinstance(rawCertificates, (str, Mapping)):
        rawCertificates = [rawCertificates]
    if not isinstance(rawCertificates, list):
        raise table.error(
            "certificates",
            f"expected a list of certificates, got {_typeName(rawCertificates)}",
        )
    if not rawCertificates and not acmeDomains:
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

    group = TLSConfig(
        listen=listen,
        certificates=certificates,
        protocols=protocols,
        http2=table.boolean("http2", True),
        hsts=hsts,
        redirectHttp=table.boolean("redirect_http", False),
        clientCA=clientCA,
        watchInterval=table.timeout("watch_interval", 0.0) or None,
        ocspStapling=table.boolean("ocsp_stapling", True),
        acmeDomains=acmeDomains,
    )
    return group, listeners


def _parseTLSList(
    value: object, source: str, baseDirectory: str, server: ServerConfig
) -> tuple[tuple[TLSConfig, ...], dict[str, ListenerConfig]]:
    """
    Parse the C{[[tls]]} array of tables, and check what the tables must
    agree on.

    @return: The groups, and the L{ListenerConfig} of each endpoint given
        as a table in their C{listen} lists.
    """
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise ConfigError(
            source,
            "tls",
            f"expected an array of tables ([[tls]]), got {_typeName(value)}",
        )
    parsed = [
        _parseTLS(index, group, source, baseDirectory)
        for index, group in enumerate(value)
    ]
    groups = tuple(group for group, _ in parsed)
    listeners = {
        endpoint: listener
        for _, groupListeners in parsed
        for endpoint, listener in groupListeners.items()
    }
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
    return groups, listeners
