"""
Parsing DNS discovery: a pool's C{servers} entries C{{ dns = "NAME", port
= PORT }} and C{{ srv = "_SERVICE._PROTO.NAME" }}, and C{[server]
resolvers}. Nothing is resolved here: C{--check} does no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from twisted_rproxy.config.backendurl import _serverName
from twisted_rproxy.config.discovery import (
    DEFAULT_REFRESH,
    DISCOVERY_KINDS,
    DNS_PORT,
    MIN_REFRESH,
    DiscoveryConfig,
)
from twisted_rproxy.config.model import _HOST_NAME, ConfigError, _typeName
from twisted_rproxy.config.values import _Table

_DNS_KEYS = ("dns", "port", "refresh", "weight", "scheme", "tls_server_name")


_SRV_KEYS = ("srv", "refresh", "scheme", "tls_server_name")


#: Keys of a C{dns} entry that an C{srv} entry takes from its records.
_FROM_RECORDS = {"port": "port", "weight": "weight", "priority": "priority"}


def isDiscoveryEntry(value: object) -> bool:
    """
    Whether a C{servers} entry is a discovery entry (a table with a C{dns}
    or C{srv} key) rather than a server.
    """
    return isinstance(value, Mapping) and any(k in value for k in DISCOVERY_KINDS)


def _parseDiscoveryEntry(value: object, source: str, key: str) -> DiscoveryConfig:
    """
    Parse one discovery entry of a pool's C{servers}.

    @raise ConfigError: Naming C{source} and C{key} (or the key in the
        entry that is wrong).
    """
    table = _Table(value, source, key)
    if all(kind in table.data for kind in DISCOVERY_KINDS):
        raise ConfigError(
            source, key, "give either dns (A/AAAA records) or srv (SRV records)"
        )
    kind = "dns" if "dns" in table.data else "srv"
    if kind == "srv":
        for name in table.data:
            if name in _FROM_RECORDS:
                raise table.error(
                    name,
                    f"an srv entry takes each server's {_FROM_RECORDS[name]} "
                    "from its SRV record; give it in a dns entry only",
                )
    table.checkKeys(_DNS_KEYS if kind == "dns" else _SRV_KEYS)
    name = _dnsName(table, kind)
    port = None
    if kind == "dns":
        if not table.has("port"):
            raise table.error(
                "port",
                "is required: the port of every server found, like "
                f'{{ dns = "{name}", port = 8000 }}',
            )
        port = table.integer("port", 0, 1)
        if port > 65535:
            raise table.error("port", f"must be from 1 to 65535, got {port}")
    refresh = table.timeout("refresh", DEFAULT_REFRESH)
    if refresh < MIN_REFRESH:
        raise table.error(
            "refresh", f"must be at least {MIN_REFRESH:g}s, got {refresh:g}s"
        )
    scheme = table.optionalString("scheme")
    if scheme is None:
        scheme = "http"
    elif scheme not in ("http", "https"):
        raise table.error("scheme", f'expected "http" or "https", got {scheme!r}')
    serverName = table.optionalString("tls_server_name")
    if serverName is not None:
        if scheme != "https":
            raise table.error(
                "tls_server_name", 'applies to scheme = "https" entries only'
            )
        serverName = _serverName(serverName, source, table.keyOf("tls_server_name"))
    return DiscoveryConfig(
        kind=kind,
        name=name,
        port=port,
        refresh=refresh,
        weight=table.integer("weight", 1, 1),
        scheme=scheme,
        tlsServerName=serverName,
        key=key,
    )


def _dnsName(table: _Table, kind: str) -> str:
    """
    The name of a discovery entry, lowercased and without a final dot.
    """
    raw = table.data[kind]
    example = "app.internal" if kind == "dns" else "_http._tcp.api.internal"
    if not isinstance(raw, str):
        raise table.error(
            kind, f'expected a name like "{example}", got {_typeName(raw)}'
        )
    name = raw.strip().lower().removesuffix(".")
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise table.error(
            kind,
            f"{raw!r} is an IP address, not a name to resolve: list it as a "
            f'server URL like "http://{raw}:8000"',
        )
    labels = name.split(".")
    if (
        not _HOST_NAME.match(name)
        or len(name) > 253
        or any(len(label) > 63 for label in labels)
    ):
        raise table.error(
            kind, f'invalid DNS name {raw!r} (expected a name like "{example}")'
        )
    if kind == "srv" and (
        len(labels) < 3 or not all(label.startswith("_") for label in labels[:2])
    ):
        raise table.error(
            kind,
            f"invalid SRV name {raw!r}: expected _SERVICE._PROTOCOL.NAME, like "
            f'"{example}"',
        )
    return name


def _checkDistinctDiscovery(entries: Sequence[DiscoveryConfig], source: str) -> None:
    """
    Reject a discovery entry given twice in one pool (the same kind, name,
    port and scheme).
    """
    seen: dict[tuple[str, str, int | None, str], str] = {}
    for entry in entries:
        identity = (entry.kind, entry.name, entry.port, entry.scheme)
        if identity in seen:
            raise ConfigError(
                source,
                entry.key,
                f"the same discovery entry as {seen[identity]} ({entry.describe()})",
            )
        seen[identity] = entry.key


def _parseResolvers(table: _Table) -> tuple[tuple[str, int], ...]:
    """
    C{[server] resolvers}: a list of DNS server addresses, C{"IP"} or
    C{"IP:PORT"} (C{"[IPv6]:PORT"}, or a bare IPv6 address).

    @return: The C{(address, port)} pairs; empty when the key is not given
        (the system's resolvers).
    """
    if not table.has("resolvers"):
        return ()
    value = table.data["resolvers"]
    example = '["127.0.0.1:53"]'
    if not isinstance(value, list):
        raise table.error(
            "resolvers",
            f"expected a list of DNS server addresses like {example}, got "
            f"{_typeName(value)}",
        )
    if not value:
        raise table.error(
            "resolvers",
            "must list at least one DNS server; leave it out to use the "
            "system's (/etc/resolv.conf)",
        )
    out = []
    for index, item in enumerate(value):
        key = f"{table.keyOf('resolvers')}[{index}]"
        if not isinstance(item, str):
            raise ConfigError(
                table.source, key, f"expected a string, got {_typeName(item)}"
            )
        out.append(_resolverAddress(item, table.source, key))
    return tuple(out)


def _resolverAddress(text: str, source: str, key: str) -> tuple[str, int]:
    """
    One C{resolvers} entry as C{(address, port)}.
    """
    expected = 'expected "IP" or "IP:PORT", like "127.0.0.1:53" or "[::1]:53"'
    value = text.strip()
    portText: str | None = None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ConfigError(source, key, f"invalid DNS server {text!r} ({expected})")
        portText = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, _, portText = value.partition(":")
    else:
        host = value
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            source,
            key,
            f"invalid DNS server {text!r}: a DNS server is given by its IP "
            f"address, not a name ({expected})",
        ) from None
    port = DNS_PORT
    if portText is not None:
        if not (portText.isascii() and portText.isdigit()) or not (
            1 <= int(portText) <= 65535
        ):
            raise ConfigError(
                source,
                key,
                f"invalid port {portText!r} in DNS server {text!r} (expected "
                "1 to 65535)",
            )
        port = int(portText)
    return str(address), port
