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

The package: L{model} (the classes), L{values} (single values), and one
module per group of tables (L{server}, L{pools}, L{routes}, L{statetable}
for C{[state]}, whose value is in L{state}).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from attrs import evolve

from twisted_rproxy.config.acme import ACME_EXTRA, ACMEConfig, acmeClientAvailable
from twisted_rproxy.config.acmetable import _checkACME, _parseACME
from twisted_rproxy.config.backendurl import (
    _checkUnixServerNames,
    unixSocketWarnings,
)
from twisted_rproxy.config.model import (
    _DEFAULT_LISTEN,
    _DEFAULT_POOL,
    CLIENT_IP_HEADERS,
    COMMAND_LINE,
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_CACHE_KEY,
    NOT_SUPPORTED,
    AdminConfig,
    BackendServer,
    CacheConfig,
    CertificateConfig,
    Config,
    ConfigError,
    FilterConfig,
    HealthCheckConfig,
    ListenerConfig,
    OutlierConfig,
    PoolConfig,
    RetryBudgetConfig,
    RouteConfig,
    ServerConfig,
    TLSConfig,
    _typeName,
)
from twisted_rproxy.config.pools import (
    _parsePools,
    _parseTLSList,
)
from twisted_rproxy.config.routes import (
    FilterOptionError,
    FilterValidator,
    _checkDistinctRoutes,
    _checkRouteCaches,
    _checkRouteFilters,
    _parseCaches,
    _parseFilters,
    _parseRoute,
    setFilterValidator,
)
from twisted_rproxy.config.server import (
    ACCESS_LOG_FORMATS,
    PASSWORD_HASH_PREFIX,
    _parseAdmin,
    _parseServer,
    parseWorkers,
)
from twisted_rproxy.config.state import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_REDIS_PORT,
    DEFAULT_STATE_TIMEOUT,
    ON_ERROR,
    StateConfig,
    parseRedisURL,
)
from twisted_rproxy.config.statetable import (
    REDIS_EXTRA,
    _checkCacheStores,
    _parseState,
    redisClientAvailable,
)
from twisted_rproxy.config.units import parseDuration, parseSize
from twisted_rproxy.config.values import (
    _checkDistinctServers,
    _checkPath,
    _parseBackendURL,
    _parseListen,
    _resolveAccessLog,
    _resolveDirectory,
    _Table,
    backendServers,
    validateEndpoint,
)

__all__ = [
    "ACME_EXTRA",
    "ACMEConfig",
    "acmeClientAvailable",
    "FilterOptionError",
    "FilterValidator",
    "setFilterValidator",
    "ACCESS_LOG_FORMATS",
    "AdminConfig",
    "BackendServer",
    "backendServers",
    "CacheConfig",
    "CertificateConfig",
    "CLIENT_IP_HEADERS",
    "COMMAND_LINE",
    "Config",
    "ConfigError",
    "configFromArguments",
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_CACHE_KEY",
    "FilterConfig",
    "HealthCheckConfig",
    "ListenerConfig",
    "loadConfig",
    "NOT_SUPPORTED",
    "OutlierConfig",
    "parseConfig",
    "parseDuration",
    "parseSize",
    "parseWorkers",
    "PASSWORD_HASH_PREFIX",
    "PoolConfig",
    "RetryBudgetConfig",
    "RouteConfig",
    "ServerConfig",
    "StateConfig",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_REDIS_PORT",
    "DEFAULT_STATE_TIMEOUT",
    "ON_ERROR",
    "parseRedisURL",
    "REDIS_EXTRA",
    "redisClientAvailable",
    "TLSConfig",
    "unixSocketWarnings",
    "validateEndpoint",
]


_TOP_LEVEL_KEYS = (
    "server",
    "pools",
    "routes",
    "tls",
    "filters",
    "admin",
    "caches",
    "state",
    "acme",
)


_TOP_LEVEL_COMING: tuple[str, ...] = ()


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
    # [state] first: a filter that shares its state needs one.
    state = _parseState(data["state"], source) if "state" in data else None
    filters = (
        _parseFilters(data["filters"], source, state) if "filters" in data else {}
    )
    caches = (
        _parseCaches(data["caches"], source, baseDirectory) if "caches" in data else {}
    )
    admin = _parseAdmin(data["admin"], source) if "admin" in data else None
    _checkCacheStores(caches, state, source)

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
    tls: tuple[TLSConfig, ...] = ()
    if "tls" in data:
        tls, tlsListeners = _parseTLSList(data["tls"], source, baseDirectory, server)
        if tlsListeners:
            # One table of listener settings for every endpoint, [server]'s
            # and [[tls]]'s (they are distinct: _parseTLSList checks it).
            server = evolve(server, listeners={**server.listeners, **tlsListeners})
    acme = _parseACME(data["acme"], source, baseDirectory) if "acme" in data else None
    _checkACME(acme, tls, server, source)
    return Config(
        source=source,
        server=server,
        pools=pools,
        routes=routes,
        tls=tls,
        filters=filters,
        admin=admin,
        caches=caches,
        state=state,
        acme=acme,
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
    # No --tls-server-name: an https://unix: backend needs a file.
    _checkUnixServerNames(servers, None, True, source, ["--backend"] * len(servers))

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
