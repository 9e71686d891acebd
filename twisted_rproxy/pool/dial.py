"""
L{connectServer}: the one way the pool, its health checks and its tunnels
open a connection to a backend server, over TCP or a unix socket, with TLS
for C{https://}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.protocol import ClientFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

    from twisted_rproxy.config import BackendServer
    from twisted_rproxy.interfaces import IProxyReactor

__all__ = ["connectServer"]


def connectServer(
    reactor: IProxyReactor,
    server: BackendServer,
    factory: ClientFactory,
    creator: IOpenSSLClientConnectionCreator | None,
    timeout: float,
) -> None:
    """
    Connect C{factory} to C{server}: its unix socket
    (L{BackendServer.socketPath}) or its host and port, with TLS by
    C{creator} when it is an C{https} server.

    Either way C{factory} is told of a failure to connect (refused, no such
    socket file, timed out) by C{clientConnectionFailed}.

    @param creator: The TLS connection creator of an C{https} server (its
        name, trust roots and client certificate); ignored for C{http}.
    @param timeout: Seconds the connection (not its TLS handshake) may take.
    @raise ValueError: For an C{https} server without a C{creator}.
    """
    path = server.socketPath
    if server.scheme == "https":
        if creator is None:
            raise ValueError(f"{server.url}: an https server needs a TLS creator")
        if path is not None:
            # Twisted has no connectSSL for unix sockets; TLS over the
            # stream is what connectSSL does over TCP too. (The wrapping
            # factory is a ClientFactory; Twisted types it as another.)
            tlsFactory = TLSMemoryBIOFactory(creator, True, factory)
            reactor.connectUNIX(path, tlsFactory, timeout=timeout)  # type: ignore[arg-type]
            return
        reactor.connectSSL(
            server.host,
            server.port,
            factory,
            # connectSSL takes a connection creator too (Twisted 14.0+).
            creator,  # type: ignore[arg-type]
            timeout=timeout,
            bindAddress=None,
        )
    elif path is not None:
        reactor.connectUNIX(path, factory, timeout=timeout)
    else:
        reactor.connectTCP(server.host, server.port, factory, timeout=timeout)
