"""
Shared fixtures of the memory-reactor tests: a whole L{ProxyService} on a
L{MemoryReactorClock}, whose clients are L{StringTransport}s fed raw bytes
and whose backend connections are answered by hand.

Nothing here opens a socket; the loopback fixtures are in
L{tests.fixtures}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from tests.loopback import ParsedResponse, parseResponses
from twisted_rproxy.config import (
    AdminConfig,
    BackendServer,
    CacheConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.service import ProxyService

#: The address every memory client connects from.
CLIENT_ADDRESS = IPv4Address("TCP", "192.0.2.7", 5555)


def backend(port: int) -> BackendServer:
    """
    The L{BackendServer} of an HTTP backend on 127.0.0.1:C{port} (never
    connected to: the memory reactor only records the attempt).
    """
    return BackendServer(
        url=f"http://127.0.0.1:{port}", scheme="http", host="127.0.0.1", port=port
    )


class Proxy:
    """
    A L{ProxyService} on a memory reactor, its clients and its backend
    connections.

    @ivar backends: Every backend connection accepted by L{acceptBackend},
        as (protocol, transport), in order.
    """

    def __init__(
        self,
        routes: tuple[RouteConfig, ...] = (RouteConfig(path="/", pool="app"),),
        pools: dict[str, PoolConfig] | None = None,
        caches: Mapping[str, CacheConfig] | None = None,
        admin: AdminConfig | None = None,
        **server: Any,
    ) -> None:
        self.reactor = MemoryReactorClock()
        pools = pools or {"app": PoolConfig(name="app", servers=(backend(8001),))}
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0",), **server),
            pools=pools,
            routes=routes,
            caches=dict(caches or {}),
            admin=admin,
        )
        self.service = ProxyService(config, self.reactor)  # type: ignore[arg-type]
        self.backends: list[tuple[Any, StringTransport]] = []

    def client(self) -> tuple[Any, StringTransport]:
        """
        A new client connection to the proxy's site.
        """
        return connectClient(self.service.site)

    def acceptBackend(self, index: int = -1) -> tuple[Any, StringTransport]:
        """
        Complete the connection attempt C{index} of the reactor's
        C{tcpClients}: the backend's side is a L{StringTransport}.
        """
        _, _, factory, _, _ = self.reactor.tcpClients[index]
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.backends.append((protocol, transport))
        return protocol, transport

    def exchange(self, data: bytes) -> tuple[Any, StringTransport]:
        """
        Send C{data} on a new client connection.
        """
        protocol, transport = self.client()
        protocol.dataReceived(data)
        return protocol, transport

    def snapshot(self) -> tuple[int, list[int]]:
        """
        How many backend connection attempts there were, and how many bytes
        each accepted backend connection was sent: for L{backendSince}.
        """
        return len(self.reactor.tcpClients), [len(t.value()) for _, t in self.backends]

    def backendSince(self, snapshot: tuple[int, list[int]]) -> Any:
        """
        The backend connection that was sent a request since C{snapshot}:
        a new one (accepted here), or a kept-alive one that got more bytes.

        @raise AssertionError: If none was.
        """
        attempts, sizes = snapshot
        if len(self.reactor.tcpClients) > attempts:
            protocol, _ = self.acceptBackend(attempts)
            return protocol
        for (protocol, transport), size in zip(self.backends, sizes, strict=False):
            if len(transport.value()) > size:
                return protocol
        raise AssertionError("no backend connection was sent a request")

    def roundTrip(self, data: bytes, answer: bytes) -> StringTransport:
        """
        Send C{data} on a new client connection, and answer the request it
        causes, as the backend, with C{answer}, on whichever backend
        connection the pool chose.

        @return: The client's transport.
        """
        snapshot = self.snapshot()
        _, transport = self.exchange(data)
        self.backendSince(snapshot).dataReceived(answer)
        return transport


def connectClient(site: Site) -> tuple[Any, StringTransport]:
    """
    A new connection to C{site} from L{CLIENT_ADDRESS}, on a
    L{StringTransport}.
    """
    protocol = site.buildProtocol(CLIENT_ADDRESS)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "192.0.2.1", 80), peerAddress=CLIENT_ADDRESS
    )
    protocol.makeConnection(transport)
    return protocol, transport


def adminGet(
    proxy: Proxy, target: bytes, authorization: bytes | None = None
) -> ParsedResponse:
    """
    One request to the proxy's admin site, on a connection closed after
    it.
    """
    assert proxy.service.admin is not None
    protocol, transport = connectClient(proxy.service.admin.site)
    extra = b""
    if authorization is not None:
        extra = b"Authorization: " + authorization + b"\r\n"
    protocol.dataReceived(
        b"GET " + target + b" HTTP/1.1\r\nHost: admin\r\n" + extra + b"\r\n"
    )
    [response] = responsesOf(transport)
    # Closing cancels the channel's timeout, a call on the global reactor.
    protocol.connectionLost(Failure(ConnectionDone()))
    return response


def responsesOf(
    transport: StringTransport, methods: list[bytes] | None = None
) -> list[ParsedResponse]:
    """
    The complete responses written to a client's C{transport} so far.
    """
    responses, _ = parseResponses(
        transport.value(), methods, closed=transport.disconnecting
    )
    return responses
