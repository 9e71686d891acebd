"""
The arithmetic of DNS discovery, as functions of data: which servers an
answer means (L{addressServers} for C{dns} entries, L{serviceServers} for
C{srv} ones), when to ask again (L{refreshDelay}, L{retryDelay}), and the
failover order of SRV priorities (L{failoverTier}). The resolver that
asks is L{twisted_rproxy.pool.discovery}.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

from attrs import frozen

from twisted_rproxy.config import BackendServer
from twisted_rproxy.config.discovery import MIN_REFRESH, DiscoveryConfig

__all__ = [
    "ServiceRecord",
    "addressServers",
    "failoverTier",
    "refreshDelay",
    "retryDelay",
    "serverURL",
    "serviceServers",
]


@frozen
class ServiceRecord:
    """
    One SRV record of an answer (RFC 2782).

    @ivar target: The target host name, lowercased, without a final dot;
        empty for C{"."} (the service is not offered there).
    """

    priority: int
    weight: int
    port: int
    target: str


def serverURL(scheme: str, host: str, port: int) -> str:
    """
    The URL a discovered server is shown and found by:
    C{"http://10.0.0.5:8000"}, C{"http://[fd00::5]:8000"}.
    """
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def _addressOrder(address: str) -> tuple[int, int]:
    """
    IPv4 before IPv6, each in numeric order: a stable order of servers
    from one answer to the next.
    """
    parsed = ipaddress.ip_address(address)
    return (parsed.version, int(parsed))


def _normalAddresses(addresses: Iterable[str]) -> list[str]:
    """
    The valid addresses among C{addresses}, normalized, once each, in
    L{_addressOrder}.
    """
    found = set()
    for address in addresses:
        try:
            found.add(str(ipaddress.ip_address(address)))
        except ValueError:
            continue
    return sorted(found, key=_addressOrder)


def _tlsName(
    entry: DiscoveryConfig, name: str, poolServerName: str | None
) -> str | None:
    """
    The C{tlsServerName} of an C{https} server found by C{entry} under
    C{name}: the entry's own, else none when the pool has one (it
    applies), else C{name}.
    """
    if entry.scheme != "https":
        return None
    if entry.tlsServerName is not None:
        return entry.tlsServerName
    return None if poolServerName is not None else name


def addressServers(
    entry: DiscoveryConfig,
    addresses: Iterable[str],
    poolServerName: str | None = None,
) -> tuple[BackendServer, ...]:
    """
    The servers of a C{dns} entry whose name has the A and AAAA records
    C{addresses}: one per address, on the entry's port, with its weight.

    @param poolServerName: The pool's C{tls_server_name}, or L{None}.
    """
    port = entry.port if entry.port is not None else 0
    return tuple(
        BackendServer(
            url=serverURL(entry.scheme, address, port),
            scheme=entry.scheme,
            host=address,
            port=port,
            weight=entry.weight,
            tlsServerName=_tlsName(entry, entry.name, poolServerName),
        )
        for address in _normalAddresses(addresses)
    )


def serviceServers(
    entry: DiscoveryConfig,
    records: Iterable[ServiceRecord],
    addressesOf: Mapping[str, Sequence[str]],
    poolServerName: str | None = None,
) -> tuple[BackendServer, ...]:
    """
    The servers of an C{srv} entry whose name has the SRV C{records}: one
    per record, on the first address of its target (IPv4 first), its
    port, weight (0 counts as 1: our weights start at 1) and priority, as
    a rank: the servers of the answer's lowest priority have priority 0
    (the same as URL servers and those of other entries' lowest), the next
    ones 1, and so on.

    A record whose target is C{"."} or has no address is left out. Two
    records of one address and port make one server: of the lowest
    priority, then the highest weight.

    @param addressesOf: The addresses of each target name.
    @param poolServerName: The pool's C{tls_server_name}, or L{None}.
    """
    chosen: dict[tuple[str, int], ServiceRecord] = {}
    addressOf: dict[tuple[str, int], str] = {}
    for record in records:
        if not record.target or not 1 <= record.port <= 65535:
            continue
        addresses = _normalAddresses(addressesOf.get(record.target, ()))
        if not addresses:
            continue
        where = (addresses[0], record.port)
        known = chosen.get(where)
        if known is None or (record.priority, -record.weight) < (
            known.priority,
            -known.weight,
        ):
            chosen[where] = record
            addressOf[where] = addresses[0]
    ranks = {
        p: rank for rank, p in enumerate(sorted({r.priority for r in chosen.values()}))
    }
    servers = [
        BackendServer(
            url=serverURL(entry.scheme, address, port),
            scheme=entry.scheme,
            host=address,
            port=port,
            weight=max(record.weight, 1),
            tlsServerName=_tlsName(entry, record.target, poolServerName),
            priority=ranks[record.priority],
        )
        for (address, port), record in chosen.items()
    ]
    servers.sort(key=lambda s: (s.priority, _addressOrder(s.host), s.port))
    return tuple(servers)


def refreshDelay(refresh: float, ttls: Iterable[int]) -> float:
    """
    Seconds until an entry whose answer had records of C{ttls} is resolved
    again: its C{refresh}, or the shortest TTL when that is shorter; never
    less than L{MIN_REFRESH}.
    """
    delay = min([refresh, *ttls])
    return max(float(delay), MIN_REFRESH)


def retryDelay(failures: int, refresh: float) -> float:
    """
    Seconds until an entry whose last C{failures} resolutions failed in a
    row is tried again: 1, 2, 4, ... seconds, up to its C{refresh}.
    """
    if failures < 1:
        return max(refresh, MIN_REFRESH)
    delay = MIN_REFRESH * float(2 ** min(failures - 1, 16))
    return max(min(delay, refresh), MIN_REFRESH)


class _Server(Protocol):
    @property
    def server(self) -> BackendServer: ...

    @property
    def up(self) -> bool: ...

    @property
    def ejected(self) -> bool: ...


_S = TypeVar("_S", bound=_Server)


def failoverTier(servers: Sequence[_S]) -> list[_S]:
    """
    The failover order of priorities (L{BackendServer.priority}): of
    C{servers} (those ready to serve), the ones of the lowest priority
    that has a healthy server (C{up} and not C{ejected}); the servers of
    a higher priority serve only while no server of a lower one is
    healthy. When no server is healthy, all of them (a panic may use
    them).

    @return: A new list, in the order of C{servers}.
    """
    healthy = [s for s in servers if s.up and not s.ejected]
    if not healthy:
        return list(servers)
    lowest = min(s.server.priority for s in healthy)
    return [s for s in servers if s.server.priority == lowest]
