"""
Security policies: who may connect, how often, and which address is the
client's.

The decisions are plain functions and small classes of data (L{AccessList},
L{realClient}, L{RateTable}); the listener-level enforcement is
L{ListenerPolicyFactory}, a L{WrappingFactory} put in front of a listener's
factory (before TLS and HTTP), which closes a refused connection as soon as
its peer address is known: at accept time, or once the PROXY protocol
header gave the real one.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from attrs import field, frozen
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, IProtocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from twisted_rproxy._twisted import ProxyHeaderWrapper
from twisted_rproxy.config import ServerConfig

# Re-exported: they were defined here.
from twisted_rproxy.rules.networks import Network, inNetworks, parseAddress
from twisted_rproxy.rules.networks import parseNetworks as parseNetworks

_log = Logger()

@frozen
class AccessList:
    """
    Allow and deny lists of networks.

    An address is refused when a deny network holds it, or when there are
    allow networks and none holds it; anything not an IP address (a UNIX
    socket peer) is allowed only when the allow list is empty.

    @ivar allow: Networks allowed; empty allows every address not denied.
    @ivar deny: Networks refused, whatever C{allow} says.
    """

    allow: tuple[Network, ...] = field(default=(), converter=parseNetworks)
    deny: tuple[Network, ...] = field(default=(), converter=parseNetworks)

    def __bool__(self) -> bool:
        return bool(self.allow or self.deny)

    def allows(self, address: str) -> bool:
        """
        Whether C{address} (an IP address as text) may pass.
        """
        ip = parseAddress(address)
        if ip is None:
            return not self.allow
        if self.deny and inNetworks(ip, self.deny):
            return False
        return not self.allow or inNetworks(ip, self.allow)


# RFC 7239: for=node, where node is a token or a quoted string holding
# an IPv4 address, "[IPv6]" with an optional port, or an obfuscated name.
_FORWARDED_FOR = re.compile(rb'(?:^|[;,\s])for\s*=\s*("[^"]*"|[^;,\s]*)', re.I)


def forwardedFor(values: Sequence[bytes]) -> list[str]:
    """
    The C{for=} nodes of C{Forwarded} header values (RFC 7239), in order,
    as IP address text; a node that is not an address (C{unknown}, an
    obfuscated C{_name}) is kept as it is, so that it stops the search in
    L{realClient}.
    """
    nodes = []
    for value in values:
        for match in _FORWARDED_FOR.finditer(value):
            node = match.group(1).strip(b'"').decode("latin-1")
            if node.startswith("["):
                node = node[1 : node.find("]")] if "]" in node else node[1:]
            elif node.count(":") == 1:
                # IPv4 with a port.
                node = node.split(":", 1)[0]
            nodes.append(node)
    return nodes


def xForwardedFor(values: Sequence[bytes]) -> list[str]:
    """
    The addresses of C{X-Forwarded-For} header values, in order.
    """
    return [
        item.strip(b" \t").decode("latin-1")
        for value in values
        for item in value.split(b",")
        if item.strip(b" \t")
    ]


def realClient(peer: str, chain: Sequence[str], trusted: Sequence[Network]) -> str:
    """
    The client's address: the peer's, unless the peer is a trusted proxy,
    in which case the forwarding chain is read from the right and the
    first address that is not a trusted proxy is the client.

    Addresses added by untrusted hops cannot be believed, so the walk stops
    at the first of them; a chain made only of trusted proxies gives its
    leftmost address; a node that is no IP address ends the walk at the
    last address believed.

    @param peer: The address of the connection's peer.
    @param chain: The addresses of C{Forwarded} (or C{X-Forwarded-For}),
        client first.
    @param trusted: The trusted proxies' networks.
    """
    client = peer
    ip = parseAddress(client)
    for node in reversed(chain):
        if ip is None or not inNetworks(ip, trusted):
            break
        nodeIP = parseAddress(node)
        if nodeIP is None:
            break
        client, ip = str(nodeIP), nodeIP
    return client


class RateTable:
    """
    Token buckets by key (a client address, a header value), in a table of
    bounded size: past C{maxKeys}, the bucket used least recently is
    forgotten (a forgotten client starts again with a full bucket, the
    price of bounded memory under many distinct clients).

    @ivar rate: Tokens added per second.
    @ivar burst: The bucket's size: requests allowed at once above the rate.
    @ivar maxKeys: The most buckets kept.
    """

    def __init__(self, rate: float, burst: int, maxKeys: int) -> None:
        if rate <= 0 or burst < 1 or maxKeys < 1:
            raise ValueError("rate must be > 0, burst and maxKeys >= 1")
        self.rate = rate
        self.burst = burst
        self.maxKeys = maxKeys
        # key -> (tokens, time of the last update); newest at the end.
        self._buckets: OrderedDict[object, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: object, now: float, maxDelay: float = 0.0) -> float | None:
        """
        Take a token for a request of C{key} at C{now}.

        @param maxDelay: The longest a request may wait for its token
            (nginx's C{limit_req} without C{nodelay}): tokens may be taken
            ahead, by as much as this.
        @return: 0 to serve the request now, the seconds to delay it by, or
            L{None} to refuse it.
        """
        buckets = self._buckets
        entry = buckets.pop(key, None)
        if entry is None:
            tokens = float(self.burst)
            if len(buckets) >= self.maxKeys:
                buckets.popitem(last=False)
        else:
            tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
        tokens -= 1.0
        if tokens >= 0:
            buckets[key] = (tokens, now)
            return 0.0
        delay = -tokens / self.rate
        if delay <= maxDelay:
            # The token is spent ahead of time: the bucket goes negative.
            buckets[key] = (tokens, now)
            return delay
        buckets[key] = (tokens + 1.0, now)
        return None

    def retryAfter(self, key: object, now: float) -> float:
        """
        Seconds until C{key} has a token again.
        """
        entry = self._buckets.get(key)
        if entry is None:
            return 0.0
        tokens = min(float(self.burst), entry[0] + (now - entry[1]) * self.rate)
        return max(0.0, (1.0 - tokens) / self.rate)


@frozen
class ListenerPolicy:
    """
    What a listener checks of each connection before TLS and HTTP.

    @ivar access: Addresses allowed to connect.
    @ivar maxConnectionsPerClient: The most connections open at once from
        one address, or 0 for no limit.
    @ivar proxyProtocol: Whether connections start with a PROXY protocol
        header (v1 or v2), whose source address is the client's.
    """

    access: tuple[AccessList, ...] = ()
    maxConnectionsPerClient: int = 0
    proxyProtocol: bool = False

    def __bool__(self) -> bool:
        return bool(self.access or self.maxConnectionsPerClient or self.proxyProtocol)

    def allows(self, address: str) -> bool:
        """
        Whether every access list lets C{address} in.
        """
        return all(access.allows(address) for access in self.access)


def listenerPolicy(server: ServerConfig, endpoint: str) -> ListenerPolicy:
    """
    The policy of the listener on C{endpoint}: C{[server]}'s settings and
    those given for the endpoint itself (both access lists apply; the
    endpoint's own limit and PROXY protocol choice win).
    """
    access = []
    if server.allow or server.deny:
        access.append(AccessList(server.allow, server.deny))
    listener = server.listeners.get(endpoint)
    limit = server.maxConnectionsPerClient
    proxyProtocol = server.proxyProtocol
    if listener is not None:
        if listener.allow or listener.deny:
            access.append(AccessList(listener.allow, listener.deny))
        if listener.maxConnectionsPerClient is not None:
            limit = listener.maxConnectionsPerClient
        if listener.proxyProtocol is not None:
            proxyProtocol = listener.proxyProtocol
    return ListenerPolicy(tuple(access), limit, proxyProtocol)


def policedFactory(factory: Any, policy: ListenerPolicy) -> Any:
    """
    C{factory} behind C{policy}, or C{factory} itself when the policy
    checks nothing (a listener without rules costs nothing).
    """
    return ListenerPolicyFactory(factory, policy) if policy else factory


def _hostOf(address: IAddress | None) -> str:
    return str(getattr(address, "host", "") or "")


class _PolicedProtocol(ProtocolWrapper):
    """
    A connection admitted by a L{ListenerPolicyFactory}: it is counted
    until it closes.
    """

    factory: ListenerPolicyFactory
    _counted: str | None = None

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        counted, self._counted = self._counted, None
        if counted is not None:
            self.factory.release(counted)
        ProtocolWrapper.connectionLost(self, reason)


class _ProxiedProtocol(ProxyHeaderWrapper):
    """
    A connection that starts with a PROXY protocol header: admitted or
    closed once the header names the client.
    """

    factory: ListenerPolicyFactory
    _counted: str | None = None
    _admitted = False

    def dataReceived(self, data: bytes) -> None:
        if self._admitted:
            self.wrappedProtocol.dataReceived(data)
            return
        # Parse the header without passing anything on yet: what follows
        # it is passed only once the real client is admitted.
        forward: list[bytes] = []
        wrapped = self.wrappedProtocol
        self.wrappedProtocol = _Collector(forward)  # type: ignore[assignment]
        try:
            ProxyHeaderWrapper.dataReceived(self, data)
        finally:
            self.wrappedProtocol = wrapped
        if not self.proxyHeaderReceived:
            return
        host = _hostOf(self.getPeer())
        if not self.factory.admit(host):
            self._admitted = False
            assert self.transport is not None
            self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        self._admitted = True
        self._counted = host
        for piece in forward:
            wrapped.dataReceived(piece)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        counted, self._counted = self._counted, None
        if counted is not None:
            self.factory.release(counted)
        ProxyHeaderWrapper.connectionLost(self, reason)


class _Collector:
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    def dataReceived(self, data: bytes) -> None:
        self.pieces.append(data)


class ListenerPolicyFactory(WrappingFactory):
    """
    Applies a L{ListenerPolicy} to a listener's connections: a refused
    connection is closed before the wrapped factory (TLS, HTTP) reads a
    byte of it.

    @ivar policy: The policy.
    @ivar counts: Open connections by client address (only addresses with
        some; its size is bounded by the open connections).
    """

    def __init__(self, wrappedFactory: Any, policy: ListenerPolicy) -> None:
        WrappingFactory.__init__(self, wrappedFactory)  # type: ignore[arg-type]
        self.policy = policy
        self.counts: dict[str, int] = {}
        self.refused = 0

    def admit(self, host: str) -> bool:
        """
        Count a connection from C{host}, or refuse it.
        """
        policy = self.policy
        if policy.access and not policy.allows(host):
            self.refused += 1
            _log.debug("Connection from {host} refused by access rules", host=host)
            return False
        limit = policy.maxConnectionsPerClient
        if limit:
            count = self.counts.get(host, 0)
            if count >= limit:
                self.refused += 1
                _log.debug(
                    "Connection from {host} refused: {limit} open already",
                    host=host,
                    limit=limit,
                )
                return False
            self.counts[host] = count + 1
        return True

    def release(self, host: str) -> None:
        """
        A connection from C{host} admitted by L{admit} closed.
        """
        if not self.policy.maxConnectionsPerClient:
            return
        count = self.counts.get(host, 0) - 1
        if count > 0:
            self.counts[host] = count
        else:
            self.counts.pop(host, None)

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        if self.policy.proxyProtocol:
            # The address is the balancer's: decided after the header.
            wrapped = self.wrappedFactory.buildProtocol(addr)
            if wrapped is None:
                return None
            return _ProxiedProtocol(self, wrapped)  # type: ignore[arg-type]
        host = _hostOf(addr)
        if not self.admit(host):
            # Returning None makes the port close the socket at once.
            return None
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            self.release(host)
            return None
        protocol = _PolicedProtocol(self, wrapped)  # type: ignore[arg-type]
        protocol._counted = host
        return protocol

    def logPrefix(self) -> str:
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if prefix is not None else type(self.wrappedFactory).__name__
        return f"{name} (policy)"


def resolveClient(request: Any, trusted: Sequence[Network]) -> None:
    """
    Make C{request}'s client address the one the trusted proxies in front
    report (L{realClient} of its C{Forwarded}, or else C{X-Forwarded-For},
    chain), keeping the peer's in C{request.peerHost}: what the HTTP/1.1
    channel and HTTP/2 streams both do once a request's head is in.
    """
    host = getattr(request.client, "host", None)
    if not host:
        return
    headers = request.requestHeaders
    values = headers.getRawHeaders(b"forwarded")
    chain = (
        forwardedFor(values)
        if values
        else xForwardedFor(headers.getRawHeaders(b"x-forwarded-for") or [])
    )
    client = realClient(host, chain, trusted)
    if client != host:
        request.peerHost = host
        if ":" in client:
            request.client = IPv6Address("TCP", client, 0)
        else:
            request.client = IPv4Address("TCP", client, 0)
