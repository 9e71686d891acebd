"""
The C{[server]} and C{[admin]} tables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from twisted_rproxy.config.dnsentries import _parseResolvers
from twisted_rproxy.config.model import (
    _HEADER_VALUE,
    _TOKEN,
    _VIA_PSEUDONYM,
    AdminConfig,
    ConfigError,
    ListenerConfig,
    ServerConfig,
    _typeName,
)
from twisted_rproxy.config.values import (
    _networks,
    _parseListen,
    _resolveAccessLog,
    _Table,
)

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
    "min_body_rate",
    "min_body_rate_grace",
    "client_ip_headers",
    "resolvers",
    "h2c",
)


_SERVER_COMING: tuple[str, ...] = ()


_ADMIN_KEYS = ("listen", "users", "refresh", "metrics", "recent_errors")


ACCESS_LOG_FORMATS = ("combined", "json")


_LISTENER_KEYS = (
    "endpoint",
    "allow",
    "deny",
    "proxy_protocol",
    "max_connections_per_client",
    "backlog",
)

#: The largest C{backlog} of a listener (the kernel caps it lower, at
#: C{net.core.somaxconn}).
_MAX_BACKLOG = 65535


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
        raise table.error("listen", f"expected a list of strings, got {_typeName(raw)}")
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
            backlog=_backlog(entry),
        )
    return _parseListen(endpoints, table.source, keys, listKey), listeners


def _backlog(entry: _Table) -> int | None:
    """
    A listener table's C{backlog}: a whole number from 1 to L{_MAX_BACKLOG},
    or L{None} when it gives none.
    """
    if not entry.has("backlog"):
        return None
    backlog = entry.integer("backlog", 0, 1)
    if backlog > _MAX_BACKLOG:
        raise entry.error("backlog", f"must be at most {_MAX_BACKLOG}, got {backlog}")
    return backlog


def _headerNames(table: _Table, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """
    A list of header names, lowercased.
    """
    names = []
    for index, header in enumerate(table.stringList(name, default)):
        if not _TOKEN.match(header):
            raise ConfigError(
                table.source,
                f"{table.keyOf(name)}[{index}]",
                f"invalid header name {header!r}",
            )
        names.append(header.lower())
    return tuple(names)


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
        minBodyRate=table.size("min_body_rate", defaults.minBodyRate),
        minBodyRateGrace=table.duration(
            "min_body_rate_grace", defaults.minBodyRateGrace
        ),
        clientIPHeaders=_headerNames(
            table, "client_ip_headers", defaults.clientIPHeaders
        ),
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

    trustedProxies = _networks(table, "trusted_proxies", defaults.trustedProxies)

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
        resolvers=_parseResolvers(table),
        h2c=table.boolean("h2c", defaults.h2c),
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
