"""
IP networks and addresses, as access lists, trusted proxies and the
cache's C{purge_from} match clients against them: one set of rules for all.

An address is read as a socket reports it: an IPv6 zone (C{fe80::1%eth0})
is dropped, and an IPv4-mapped IPv6 address (C{::ffff:192.0.2.1}, how a
dual-stack socket reports an IPv4 peer) is its IPv4 address, so that IPv4
networks hold it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["Address", "Network", "inNetworks", "parseAddress", "parseNetworks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parseNetworks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """
    Networks from addresses and CIDR strings (host bits allowed:
    C{10.1.2.3/8} is C{10.0.0.0/8}).

    @raise ValueError: For a string that is neither.
    """
    return tuple(ipaddress.ip_network(cidr.strip(), strict=False) for cidr in cidrs)


def parseAddress(address: str) -> Address | None:
    """
    The IP address in C{address}, or L{None} if it is not one (a UNIX
    socket's path, an empty string).
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def inNetworks(address: str | Address | None, networks: Sequence[Network]) -> bool:
    """
    Whether C{address} (a string as L{parseAddress} reads it, or a parsed
    one) is in one of C{networks}; an address that is not one is in none.
    """
    if not networks or address is None:
        return False
    ip = parseAddress(address) if isinstance(address, str) else address
    if ip is None:
        return False
    # A network of the other IP version never holds the address.
    return any(ip in network for network in networks)
