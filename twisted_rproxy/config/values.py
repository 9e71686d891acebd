"""
Reading single values: endpoints, backend URLs, paths (sizes and durations
are in L{twisted_rproxy.config.units}), and L{_Table}, the typed accessors
whose errors name the full key.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar, cast

from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactor

from twisted_rproxy.config.backendurl import _parseBackendURL as _parseBackendURL
from twisted_rproxy.config.backendurl import _serverName
from twisted_rproxy.config.model import (
    _BARE_KEY,
    _HEADER_VALUE,
    _HOST_NAME,
    _URL_PATH,
    NOT_SUPPORTED,
    BackendServer,
    CertificateConfig,
    ConfigError,
    _typeName,
)
from twisted_rproxy.config.units import (
    _parseDuration,
    _parseSize,
)
from twisted_rproxy.rules.networks import parseNetworks


def _joinKey(prefix: str, name: str) -> str:
    """
    Append one key to a dotted key path, quoting it as TOML would if it is
    not a bare key.
    """
    part = name if _BARE_KEY.match(name) else json.dumps(name)
    return f"{prefix}.{part}" if prefix else part


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


_SERVER_ENTRY_KEYS = ("url", "weight", "tls_server_name")


def backendServers(
    urls: Sequence[str], source: str = "<code>"
) -> tuple[BackendServer, ...]:
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
    seen: dict[tuple[str, str, int, str | None], int] = {}
    for index, server in enumerate(servers):
        address = (server.scheme, server.host, server.port, server.socketPath)
        if address in seen:
            raise ConfigError(
                source,
                keys[index],
                f"{server.url!r} is the same server as {servers[seen[address]].url!r}",
            )
        seen[address] = index


def _parseServerEntry(value: object, source: str, key: str) -> BackendServer:
    """
    Parse one entry of a pool's C{servers}: a URL, or a table with C{url},
    C{weight} and (for an C{https} server) C{tls_server_name}.
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
    serverName = table.optionalString("tls_server_name")
    if serverName is not None:
        serverName = _serverName(serverName, source, table.keyOf("tls_server_name"))
    server = _parseBackendURL(url, source, table.keyOf("url"), weight, serverName)
    if serverName is not None and server.scheme != "https":
        raise table.error(
            "tls_server_name", f"applies to https:// servers only, not {url!r}"
        )
    return server


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


def _networks(
    table: _Table, name: str, default: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """
    A list of IPv4 and IPv6 addresses and CIDR networks, normalized (the
    rules of L{twisted_rproxy.rules.networks}, which reads them again).
    """
    networks = []
    for index, network in enumerate(table.stringList(name, default)):
        try:
            networks.append(str(parseNetworks([network])[0]))
        except ValueError:
            raise ConfigError(
                table.source,
                f"{table.keyOf(name)}[{index}]",
                f"invalid network {network!r} (expected an IPv4 or IPv6 "
                'address or CIDR network like "10.0.0.0/8")',
            ) from None
    return tuple(networks)


_EXTENSION = re.compile(r"\.?[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*")


def _headerValue(value: str, source: str, key: str) -> str:
    if not _HEADER_VALUE.fullmatch(value):
        raise ConfigError(source, key, "must be printable ASCII (a header value)")
    return value


_CERTIFICATE_KEYS = ("certificate", "key")


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


T = TypeVar("T")


def _namedTables(
    value: object, source: str, key: str, parseOne: Callable[[str, object], T]
) -> dict[str, T]:
    """
    Parse a table of named tables (C{[pools.NAME]}, C{[filters.NAME]},
    C{[caches.NAME]}): each C{NAME} with C{parseOne(NAME, table)}.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(
            source,
            key,
            f"expected a table of {key} ([{key}.NAME]), got {_typeName(value)}",
        )
    return {name: parseOne(name, table) for name, table in value.items()}
