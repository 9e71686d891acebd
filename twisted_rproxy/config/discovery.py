"""
L{DiscoveryConfig}: one DNS discovery entry of a pool's C{servers}
(C{{ dns = "app.internal", port = 8000 }} or
C{{ srv = "_http._tcp.api.internal" }}), as data. It is parsed in
L{twisted_rproxy.config.dnsentries}.
"""

from __future__ import annotations

from attrs import frozen

#: How often a discovery entry is resolved again when it gives no
#: C{refresh}, in seconds (sooner when the records' TTL is shorter).
DEFAULT_REFRESH = 30.0


#: The shortest time between two resolutions of one entry, in seconds:
#: the floor of C{refresh} and of the records' TTL.
MIN_REFRESH = 1.0


#: The port of a C{[server] resolvers} entry that gives none.
DNS_PORT = 53


#: The two kinds of discovery entry: one server per A/AAAA record of a
#: name, or one per SRV record.
DISCOVERY_KINDS = ("dns", "srv")


@frozen
class DiscoveryConfig:
    """
    One DNS discovery entry of a pool.

    @ivar kind: C{"dns"}: every A and AAAA record of C{name} is a server
        on C{port}; C{"srv"}: every SRV record of C{name} is a server, on
        the record's target, port, weight and priority.
    @ivar name: The name resolved, lowercased, without a final dot.
    @ivar port: For C{"dns"}, the servers' port; L{None} for C{"srv"}.
    @ivar refresh: Seconds between two resolutions (at most the records'
        TTL when that is shorter; at least L{MIN_REFRESH}).
    @ivar weight: For C{"dns"}, the weight of every server found; C{"srv"}
        servers take the records' weights.
    @ivar scheme: C{"http"} or C{"https"}: how the servers found are
        spoken to.
    @ivar tlsServerName: For C{https}, the name the servers' certificates
        are verified against and that SNI sends, or L{None} for the pool's
        C{tls_server_name}, else the name resolved (C{"dns"}) or the
        record's target (C{"srv"}).
    @ivar key: The entry's key in its file (C{"pools.app.servers[1]"}),
        which logs and the status name it by.
    """

    kind: str
    name: str
    port: int | None = None
    refresh: float = DEFAULT_REFRESH
    weight: int = 1
    scheme: str = "http"
    tlsServerName: str | None = None
    key: str = ""

    def describe(self) -> str:
        """
        The entry in a few words, for logs and the status: C{"dns
        app.internal port 8000"}, C{"srv _http._tcp.api.internal"}.
        """
        if self.port is None:
            return f"{self.kind} {self.name}"
        return f"{self.kind} {self.name} port {self.port}"
