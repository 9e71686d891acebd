"""
The C{[[routes]]}, C{[filters.NAME]} and C{[caches.NAME]} tables, and the
checks across routes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted_rproxy.config.model import (
    _CACHE_KEY_PARTS,
    _POOL_NAME,
    DEFAULT_CACHE_KEY,
    CacheConfig,
    ConfigError,
    FilterConfig,
    PoolConfig,
    RouteConfig,
    _typeName,
)
from twisted_rproxy.config.state import StateConfig
from twisted_rproxy.config.values import (
    _EXTENSION,
    _checkPath,
    _headerValue,
    _joinKey,
    _namedTables,
    _networks,
    _normalizeRouteHost,
    _resolveDirectory,
    _Table,
)

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
    "allow_trace",
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
    "targeted",
    "purge_from",
    "store",
    "local_size",
    "local_ttl",
    "path",
)

#: The values of a cache's C{store}.
CACHE_STORES = ("memory", "redis", "disk")


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
        if table.has("allow_trace"):
            raise table.error(
                "allow_trace",
                "applies to pool routes only (a static route answers TRACE with 405)",
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
        allowTrace=table.boolean("allow_trace", False),
        **staticOptions,
    )


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


class FilterOptionError(Exception):
    """
    A filter's option is wrong; raised by L{IFilterFactory.buildFilter}.

    The configuration reports it as C{filters.NAME.OPTION: MESSAGE}.

    @ivar option: The option's key, dotted for a nested one
        (C{"response.set"}), or C{""} for the table as a whole.
    @ivar message: What is wrong and, where useful, what is expected.
    """

    def __init__(self, option: str, message: str) -> None:
        super().__init__(option, message)
        self.option = option
        self.message = message

    def __str__(self) -> str:
        return f"{self.option}: {self.message}" if self.option else self.message


#: Checks a filter's plugin name and options (see L{setFilterValidator}):
#: called with the plugin's name, the options, the filter's name and the
#: configuration's C{[state]} (or L{None}).
FilterValidator = Callable[[str, dict[str, object], str, StateConfig | None], None]

_filterValidator: FilterValidator | None = None


def setFilterValidator(validator: FilterValidator) -> None:
    """
    Install the check of C{[filters.NAME]} tables: given a plugin name,
    its options, the filter's name and the C{[state]} the filter may share
    its state in (L{None} without one), it raises L{LookupError} for an
    unknown plugin and L{FilterOptionError} for a wrong option.

    The configuration is data only and knows no plugins, so the filter
    machinery (L{twisted_rproxy.filters}, which the package imports) installs
    its check here as it is imported.
    """
    global _filterValidator
    _filterValidator = validator


def _parseFilter(
    name: str, value: object, source: str, state: StateConfig | None = None
) -> FilterConfig:
    """
    Parse one C{[filters.NAME]} table: find its plugin and let the plugin
    validate the options (by building the filter once, knowing whether
    there is a C{[state]} to share it in).
    """
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
    options = {option: v for option, v in table.data.items() if option != "plugin"}
    validate = _filterValidator
    if validate is None:
        return FilterConfig(name=name, plugin=plugin, options=options)
    try:
        validate(plugin, options, name, state)
    except LookupError as e:
        raise table.error("plugin", str(e.args[0])) from None
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


def _parseFilters(
    value: object, source: str, state: StateConfig | None = None
) -> dict[str, FilterConfig]:
    """
    Parse the C{filters} table of tables.
    """
    return _namedTables(
        value,
        source,
        "filters",
        lambda name, table: _parseFilter(name, table, source, state),
    )


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


def _parseCache(
    name: str, value: object, source: str, baseDirectory: str = ""
) -> CacheConfig:
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
    targeted = _targetedFields(table, source)
    networks = _networks(table, "purge_from")
    store = table.optionalString("store")
    if store is None:
        store = "memory"
    elif store not in CACHE_STORES:
        raise table.error(
            "store", f'must be "memory", "redis" or "disk", got {store!r}'
        )
    path = table.optionalString("path")
    if store == "disk":
        if path is None:
            raise table.error("path", 'is needed with store = "disk" (a directory)')
        path = _cacheDirectory(path, baseDirectory, source, table.keyOf("path"))
    elif path is not None:
        raise table.error("path", 'is only for store = "disk"')
    localSize = table.size("local_size", 0, 0)
    if localSize and store != "redis":
        raise table.error("local_size", 'is only for store = "redis"')
    localTTL = table.timeout("local_ttl", 1.0)
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
        targeted=targeted,
        purgeFrom=tuple(networks),
        store=store,
        localSize=localSize,
        localTTL=localTTL,
        path=path or "",
    )


def _targetedFields(table: _Table, source: str) -> tuple[str, ...]:
    """
    A cache's C{targeted}: the field names of its RFC 9213 target list,
    distinct, none of them C{Cache-Control} itself.
    """
    fields = table.stringList("targeted", ("CDN-Cache-Control",))
    seen: set[str] = set()
    for index, name in enumerate(fields):
        where = f"{table.keyOf('targeted')}[{index}]"
        if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
            raise ConfigError(source, where, f"not a header field name: {name!r}")
        if name.lower() == "cache-control":
            raise ConfigError(
                source,
                where,
                "Cache-Control is what applies when no targeted field does; "
                "list targeted fields only (like CDN-Cache-Control)",
            )
        if name.lower() in seen:
            raise ConfigError(source, where, f"{name!r} is listed twice")
        seen.add(name.lower())
    return fields


def _cacheDirectory(value: str, baseDirectory: str, source: str, key: str) -> str:
    """
    The absolute path of a disk cache's directory, which must be writable,
    or creatable (its nearest existing parent writable).
    """
    if not value:
        raise ConfigError(source, key, "must be a directory path, got an empty string")
    path = os.path.abspath(
        os.path.join(baseDirectory or os.getcwd(), os.path.expanduser(value))
    )
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(source, key, f"{existing!r} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == path:
            raise ConfigError(source, key, f"directory {path!r} is not writable")
        raise ConfigError(
            source,
            key,
            f"directory {path!r} does not exist and cannot be created "
            f"({existing!r} is not writable)",
        )
    return path


def _parseCaches(
    value: object, source: str, baseDirectory: str = ""
) -> dict[str, CacheConfig]:
    """
    Parse the C{caches} table of tables.
    """
    return _namedTables(
        value,
        source,
        "caches",
        lambda name, table: _parseCache(name, table, source, baseDirectory),
    )


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
