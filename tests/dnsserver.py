"""
A real DNS server for the discovery tests: twisted.names serving a zone
that a test changes while it runs, on a free UDP port of 127.0.0.1 (and
the same TCP port, for truncated answers); and backends (twisted.web
Sites) on the loopback addresses 127.0.0.2, 127.0.0.3, ... that share
one port, as the servers of one C{dns} entry do.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.names import authority, common, dns, server
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

LOOPBACK = "127.0.0.1"


class ZoneAuthority(authority.FileAuthority):
    """
    An authority for one zone whose records are set in code, at any time.
    """

    def __init__(self, zone: str, ttl: int = 1) -> None:
        common.ResolverBase.__init__(self)
        self.zone = zone.encode()
        self.soa = (
            self.zone,
            dns.Record_SOA(
                mname=b"ns." + self.zone,
                rname=b"admin." + self.zone,
                serial=1,
                refresh=ttl,
                retry=ttl,
                expire=ttl,
                minimum=ttl,
                ttl=ttl,
            ),
        )
        self.records: dict[bytes, list[Any]] = {}

    def setAddresses(self, name: str, addresses: Sequence[str], ttl: int = 1) -> None:
        """
        Make C{addresses} (IPv4 or IPv6) the A and AAAA records of C{name}.
        """
        records: list[Any] = [
            r for r in self.records.get(name.encode(), []) if r.TYPE not in (1, 28)
        ]
        for address in addresses:
            if ":" in address:
                records.append(dns.Record_AAAA(address, ttl=ttl))
            else:
                records.append(dns.Record_A(address, ttl=ttl))
        self._set(name, records)

    def setServices(
        self, name: str, services: Sequence[tuple[int, int, int, str]], ttl: int = 1
    ) -> None:
        """
        Make C{services}, each C{(priority, weight, port, target)}, the
        SRV records of C{name}.
        """
        self._set(
            name,
            [
                dns.Record_SRV(priority, weight, port, target, ttl=ttl)
                for priority, weight, port, target in services
            ],
        )

    def _set(self, name: str, records: list[Any]) -> None:
        key = name.lower().encode()
        if records:
            self.records[key] = records
        else:
            self.records.pop(key, None)


class DNSServer:
    """
    A twisted.names server of a L{ZoneAuthority} on 127.0.0.1, over UDP
    and TCP on the same port.
    """

    def __init__(self, zone: ZoneAuthority) -> None:
        self.zone = zone
        self.factory = server.DNSServerFactory(authorities=[zone])
        self.factory.noisy = False
        self.protocol = dns.DNSDatagramProtocol(self.factory)
        self.protocol.noisy = False
        self.ports: list[IListeningPort] = []
        self.port = 0

    def start(self) -> None:
        """
        Listen on a port free for both UDP and TCP (a few tries).
        """
        for _ in range(20):
            # A protocol of its own each time: one whose port is stopping
            # (stopListening is not done at once for UDP) is still attached
            # to it.
            self.protocol = dns.DNSDatagramProtocol(self.factory)
            self.protocol.noisy = False
            udp = reactor.listenUDP(0, self.protocol, interface=LOOPBACK)
            port = udp.getHost().port
            try:
                tcp = reactor.listenTCP(port, self.factory, interface=LOOPBACK)
            except CannotListenError:
                udp.stopListening()
                continue
            self.ports = [udp, tcp]
            self.port = port
            return
        raise RuntimeError("no port free for both UDP and TCP")

    def stop(self) -> Deferred[Any]:
        """
        Stop answering (the port stays unanswered: queries time out).
        """
        ports, self.ports = self.ports, []
        stopping = [maybeDeferred(port.stopListening) for port in ports]
        for connection in list(self.factory.connections):
            connection.transport.loseConnection()
        from twisted.internet.defer import gatherResults

        return gatherResults(stopping)

    @property
    def resolver(self) -> str:
        """
        This server as a C{[server] resolvers} entry.
        """
        return f"{LOOPBACK}:{self.port}"


class NamedResource(Resource):
    """
    Answers every request with the name of its backend, after C{delay}
    seconds, or with 503 when not C{healthy}; counts the requests it got
    (but not those of C{/health}, the health checks' path).
    """

    isLeaf = True

    def __init__(self, name: str, delay: float = 0.0) -> None:
        super().__init__()
        self.name = name
        self.delay = delay
        self.requests = 0
        self.healthy = True

    def render_GET(self, request: Request) -> Any:
        if request.path != b"/health":
            self.requests += 1
        if not self.healthy:
            request.setResponseCode(503)
            return b"unhealthy"
        body = self.name.encode()
        if not self.delay:
            return body

        def finish() -> None:
            if not request.finished and not request._disconnected:  # type: ignore[attr-defined]
                request.write(body)
                request.finish()

        call = reactor.callLater(self.delay, finish)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET


def canListen(address: str, port: int = 0) -> bool:
    """
    Whether a TCP socket can listen on C{address} (IPv6 loopback, say).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        s = socket.socket(family)
    except OSError:
        return False
    try:
        s.bind((address, port))
    except OSError:
        return False
    finally:
        s.close()
    return True


def listenAll(
    sites: Sequence[tuple[str, Site]], attempts: int = 20
) -> tuple[int, list[IListeningPort]]:
    """
    Listen with each C{(address, site)} on one port, the same for all.

    @return: The port, and the listening ports.
    """
    for _ in range(attempts):
        first = reactor.listenTCP(0, sites[0][1], interface=sites[0][0])
        port = first.getHost().port
        ports = [first]
        try:
            for address, site in sites[1:]:
                ports.append(reactor.listenTCP(port, site, interface=address))
        except CannotListenError:
            for listening in ports:
                listening.stopListening()
            continue
        return port, ports
    raise RuntimeError("no port free on every address")
