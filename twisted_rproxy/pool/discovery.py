"""
L{ServerDiscovery}: DNS discovery of a pool's servers with twisted.names.

Each C{dns} or C{srv} entry of a pool (L{DiscoveryConfig}) is resolved at
start, then again at its C{refresh} (sooner when its records' TTL is
shorter); its answer becomes servers (L{twisted_rproxy.discovery}) and
the pool's server set is its URL servers plus every entry's last good
answer (L{twisted_rproxy.pool.BackendPool.updateServers}: servers that
leave drain, new ones slow start). A failed or empty answer keeps the last
good servers, is logged once per streak of failures, shows in the pool's
status, and is retried sooner, with backoff.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IResolver
from twisted.logger import Logger
from twisted.names import dns
from twisted.names import error as dnserror
from twisted.python.failure import Failure

from twisted_rproxy.config import BackendServer, PoolConfig
from twisted_rproxy.config.discovery import DNS_PORT, DiscoveryConfig
from twisted_rproxy.discovery import (
    ServiceRecord,
    addressServers,
    refreshDelay,
    retryDelay,
    serviceServers,
)
from twisted_rproxy.pool.status import DiscoverySource, DiscoveryStatus

__all__ = [
    "RESOLVE_TIMEOUT",
    "ServerDiscovery",
    "makeResolver",
    "parseResolvConf",
]

_log = Logger()


#: Seconds after which a query is sent again, then given up: a query
#: fails after their sum (and is retried with backoff).
RESOLVE_TIMEOUT = (1, 3)


#: Where the system names its DNS servers.
RESOLV_CONF = "/etc/resolv.conf"


_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (dnserror.DNSNameError, "no such name (NXDOMAIN)"),
    (dnserror.DNSServerError, "the DNS server failed (SERVFAIL)"),
    (dnserror.DNSQueryRefusedError, "the DNS server refused the query (REFUSED)"),
    (dnserror.DNSFormatError, "the DNS server found the query malformed (FORMERR)"),
    (
        dnserror.DNSNotImplementedError,
        "the DNS server does not implement this kind of query (NOTIMP)",
    ),
    (dnserror.DNSQueryTimeoutError, "no answer (timed out)"),
)


def _reason(failure: Failure) -> str:
    """
    What a failed query says, in a few words.
    """
    for kind, text in _REASONS:
        if failure.check(kind):
            return text
    if failure.check(TimeoutError) or type(failure.value).__name__ == "TimeoutError":
        return "no answer (timed out)"
    return failure.getErrorMessage() or type(failure.value).__name__


def parseResolvConf(text: str) -> list[tuple[str, int]]:
    """
    The DNS servers a C{resolv.conf(5)} names (its C{nameserver} lines),
    or C{127.0.0.1} when it names none, as the C library does.
    """
    servers = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            servers.append((words[1], DNS_PORT))
    return servers or [("127.0.0.1", DNS_PORT)]


def makeResolver(
    reactor: IReactorTime, resolvers: Sequence[tuple[str, int]] = ()
) -> IResolver:
    """
    The resolver DNS discovery asks: a twisted.names client of
    C{resolvers} (C{[server] resolvers}), or of the system's DNS servers
    (read once from L{RESOLV_CONF} now) when there are none.

    @param reactor: Provides time, UDP and TCP (twisted.names needs all
        three).
    """
    from twisted.names import client

    servers = list(resolvers)
    if not servers:
        try:
            with open(RESOLV_CONF, encoding="utf-8", errors="replace") as f:
                servers = parseResolvConf(f.read())
        except OSError:
            servers = parseResolvConf("")
    resolver: IResolver = client.Resolver(servers=servers, reactor=reactor)
    return resolver


def closeResolver(resolver: IResolver) -> None:
    """
    Close the TCP connections C{resolver} keeps (a truncated answer is
    asked again over TCP, whose connection twisted.names keeps open).
    """
    for protocol in list(getattr(resolver, "connections", None) or ()):
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            transport.loseConnection()


class DiscoveredPool(Protocol):
    """
    What L{ServerDiscovery} needs of the pool whose servers it finds.
    """

    name: str
    config: PoolConfig
    discovery: DiscoverySource | None

    def updateServers(self, servers: Sequence[BackendServer]) -> None:
        """
        Make C{servers} the pool's server set.
        """


class _Failed(Exception):
    """
    A resolution gave no servers: why.
    """


@define
class _Lookup:
    """
    The outcome of one query: its answer and additional records, or why
    it failed (C{error}); a name that does not exist is an empty answer.
    """

    records: list[dns.RRHeader] = field(factory=list)
    error: str | None = None
    missing: bool = False


@define
class _EntryState:
    """
    One discovery entry's state: its last good servers and its record of
    failures.
    """

    config: DiscoveryConfig
    servers: tuple[BackendServer, ...] = ()
    #: The last good servers of each address family (C{dns} entries): an
    #: answer whose AAAA query failed keeps the IPv6 servers it had.
    byType: dict[int, tuple[BackendServer, ...]] = field(factory=dict)
    lastResolution: float | None = None
    lastSuccess: float | None = None
    lastError: str | None = None
    failures: int = 0
    call: IDelayedCall | None = None
    resolving: Deferred[None] | None = None

    def status(self) -> DiscoveryStatus:
        call = self.call
        return DiscoveryStatus(
            entry=self.config.describe(),
            key=self.config.key,
            servers=tuple(server.url for server in self.servers),
            lastResolution=self.lastResolution,
            lastSuccess=self.lastSuccess,
            lastError=self.lastError,
            failures=self.failures,
            nextResolution=call.getTime() if call is not None else None,
        )


def _address(record: dns.RRHeader) -> str | None:
    """
    The address of an A or AAAA record, else L{None}.
    """
    payload: Any = record.payload
    if record.type == dns.A:
        return socket.inet_ntop(socket.AF_INET, payload.address)
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


def _hostName(name: object) -> str:
    """
    A C{dns.Name} as a lowercased host name without a final dot.
    """
    raw = getattr(name, "name", b"")
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
    return text.lower().removesuffix(".")


class ServerDiscovery:
    """
    The DNS discovery of one pool's servers: each of its
    C{config.discovery} entries, resolved by C{resolver} at its refresh.
    It is the pool's L{DiscoverySource}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        resolver: IResolver,
        pool: DiscoveredPool,
        previous: ServerDiscovery | None = None,
        timeout: Sequence[int] = RESOLVE_TIMEOUT,
    ) -> None:
        """
        @param previous: The discovery this one replaces (on a reload): an
            entry of both starts with the servers it had, so that the new
            pool is not empty until its first answer.
        @param timeout: The query timeouts (see L{RESOLVE_TIMEOUT}).
        """
        self._clock = clock
        self._resolver = resolver
        self._pool = pool
        self._timeout = tuple(timeout)
        self._entries = [_EntryState(entry) for entry in pool.config.discovery]
        if previous is not None:
            known = {state.config: state for state in previous._entries}
            for state in self._entries:
                old = known.get(state.config)
                if old is not None:
                    state.servers, state.byType = old.servers, dict(old.byType)
                    state.lastResolution = old.lastResolution
                    state.lastSuccess = old.lastSuccess
        self._pushed: tuple[BackendServer, ...] | None = None
        self.running = False
        pool.discovery = self

    @property
    def pool(self) -> DiscoveredPool:
        """
        The pool whose servers it finds.
        """
        return self._pool

    def start(self) -> None:
        """
        Give the pool the servers known already (from the discovery this
        one replaces), and resolve every entry now.
        """
        if self.running:
            return
        self.running = True
        self._push()
        for state in self._entries:
            self._resolve(state)

    def stop(self) -> Deferred[None]:
        """
        Resolve no more.

        @return: A L{Deferred} that fires once the queries under way are
            over (answered or timed out: at most the sum of the timeouts).
        """
        self.running = False
        waiting = []
        for state in self._entries:
            if state.call is not None:
                state.call.cancel()
                state.call = None
            if state.resolving is not None:
                waiting.append(state.resolving)
        return DeferredList(waiting).addCallback(lambda _: None)

    def status(self) -> tuple[DiscoveryStatus, ...]:
        """
        The state of each entry.
        """
        return tuple(state.status() for state in self._entries)

    def _push(self) -> None:
        """
        Give the pool its URL servers and every entry's last good servers,
        if that changed.
        """
        servers = self._pool.config.servers + tuple(
            server for state in self._entries for server in state.servers
        )
        if servers == self._pushed:
            return
        self._pushed = servers
        self._pool.updateServers(servers)

    def _resolve(self, state: _EntryState) -> None:
        state.call = None
        if not self.running:
            return
        resolving = Deferred.fromCoroutine(self._resolveEntry(state))
        if not resolving.called:
            state.resolving = resolving

    async def _resolveEntry(self, state: _EntryState) -> None:
        entry = state.config
        try:
            if entry.kind == "srv":
                servers, ttls, partial = await self._answerSRV(entry)
            else:
                servers, ttls, partial = await self._answerDNS(state)
        except _Failed as e:
            self._failed(state, str(e))
        except Exception:
            # Not a DNS answer: a mistake of ours, which must not stop
            # discovery (nor the proxy).
            _log.failure(
                "Pool {pool}: {entry}: resolution failed",
                pool=self._pool.name,
                entry=entry.describe(),
            )
            self._failed(state, "internal error (see the log)")
        else:
            self._succeeded(state, servers, ttls, partial)
        finally:
            state.resolving = None

    def _schedule(self, state: _EntryState, delay: float) -> None:
        if self.running:
            state.call = self._clock.callLater(delay, self._resolve, state)

    def _succeeded(
        self,
        state: _EntryState,
        servers: tuple[BackendServer, ...],
        ttls: list[int],
        partial: str | None,
    ) -> None:
        if not self.running:
            return
        now = self._clock.seconds()
        entry = state.config
        if state.failures:
            _log.info(
                "Pool {pool}: {entry} resolves again ({count} servers) after "
                "{failures} failures",
                pool=self._pool.name,
                entry=entry.describe(),
                count=len(servers),
                failures=state.failures,
            )
        state.failures = 0
        state.lastResolution = state.lastSuccess = now
        state.lastError = partial
        if servers != state.servers:
            _log.info(
                "Pool {pool}: {entry}: {urls}",
                pool=self._pool.name,
                entry=entry.describe(),
                urls=", ".join(s.url for s in servers),
            )
        state.servers = servers
        self._push()
        self._schedule(state, refreshDelay(entry.refresh, ttls))

    def _failed(self, state: _EntryState, reason: str) -> None:
        if not self.running:
            return
        entry = state.config
        state.failures += 1
        state.lastResolution = self._clock.seconds()
        state.lastError = reason
        delay = retryDelay(state.failures, entry.refresh)
        if state.failures == 1:
            kept = (
                f"keeping the {len(state.servers)} servers of its last answer"
                if state.servers
                else "the pool has no server from it yet"
            )
            _log.warn(
                "Pool {pool}: {entry}: resolution failed: {reason}; {kept} "
                "(retried with backoff, logged again when it resolves)",
                pool=self._pool.name,
                entry=entry.describe(),
                reason=reason,
                kept=kept,
            )
        self._schedule(state, delay)

    async def _lookup(self, method: Callable[..., Deferred[Any]], name: str) -> _Lookup:
        """
        One query: C{method} of the resolver (C{lookupAddress}...) for
        C{name}, as a L{_Lookup} (it does not fail).
        """
        try:
            answers, _, additional = await method(name, self._timeout)
        except dnserror.DNSNameError:
            return _Lookup(missing=True)
        except Exception:
            return _Lookup(error=_reason(Failure()))
        return _Lookup(records=list(answers) + list(additional))

    async def _addresses(self, name: str) -> tuple[_Lookup, _Lookup]:
        """
        The A and AAAA queries of C{name}, asked at once.
        """
        resolver = self._resolver
        a, aaaa = await gatherResults(
            [
                Deferred.fromCoroutine(self._lookup(resolver.lookupAddress, name)),
                Deferred.fromCoroutine(self._lookup(resolver.lookupIPV6Address, name)),
            ]
        )
        return a, aaaa

    async def _answerDNS(
        self, state: _EntryState
    ) -> tuple[tuple[BackendServer, ...], list[int], str | None]:
        """
        The servers of a C{dns} entry's A and AAAA records.

        @raise _Failed: When both queries failed, or the answer has no
            address (the last good servers stay then).
        """
        entry = state.config
        poolName = self._pool.config.tlsServerName
        lookups = await self._addresses(entry.name)
        byType: dict[int, tuple[BackendServer, ...]] = {}
        errors: list[str] = []
        ttls: list[int] = []
        for recordType, label, lookup in zip(
            (dns.A, dns.AAAA), ("A", "AAAA"), lookups, strict=True
        ):
            if lookup.error is not None:
                errors.append(f"{label}: {lookup.error}")
                byType[recordType] = state.byType.get(recordType, ())
                continue
            used = [r for r in lookup.records if r.type == recordType]
            ttls += [r.ttl for r in used]
            addresses = [a for a in map(_address, used) if a is not None]
            byType[recordType] = addressServers(entry, addresses, poolName)
        if len(errors) == 2:
            raise _Failed("; ".join(errors))
        servers = byType[dns.A] + byType[dns.AAAA]
        if not servers:
            if errors:
                raise _Failed("; ".join(errors))
            if all(lookup.missing for lookup in lookups):
                raise _Failed("no such name (NXDOMAIN)")
            raise _Failed("the answer has no A or AAAA record")
        state.byType = byType
        return servers, ttls, "; ".join(errors) or None

    async def _answerSRV(
        self, entry: DiscoveryConfig
    ) -> tuple[tuple[BackendServer, ...], list[int], None]:
        """
        The servers of an C{srv} entry's SRV records, on their targets'
        addresses (from the answer's additional records, else asked).

        @raise _Failed: When the query or a target's queries failed, or the
            answer gives no server.
        """
        lookup = await self._lookup(self._resolver.lookupService, entry.name)
        if lookup.error is not None:
            raise _Failed(lookup.error)
        if lookup.missing:
            raise _Failed("no such name (NXDOMAIN)")
        records: list[ServiceRecord] = []
        ttls: list[int] = []
        addressesOf: dict[str, list[str]] = {}
        for record in lookup.records:
            payload: Any = record.payload
            if record.type == dns.SRV:
                ttls.append(record.ttl)
                records.append(
                    ServiceRecord(
                        priority=payload.priority,
                        weight=payload.weight,
                        port=payload.port,
                        target=_hostName(payload.target),
                    )
                )
            address = _address(record)
            if address is not None:
                ttls.append(record.ttl)
                addressesOf.setdefault(_hostName(record.name), []).append(address)
        if not records:
            raise _Failed("the answer has no SRV record")
        targets = sorted({r.target for r in records if r.target} - set(addressesOf))
        for target, lookups in zip(
            targets,
            await gatherResults(
                [Deferred.fromCoroutine(self._addresses(t)) for t in targets]
            ),
            strict=True,
        ):
            errors = [q.error for q in lookups if q.error is not None]
            if errors:
                raise _Failed(f"the target {target}: {errors[0]}")
            for query in lookups:
                for record in query.records:
                    address = _address(record)
                    if address is not None:
                        ttls.append(record.ttl)
                        addressesOf.setdefault(target, []).append(address)
        servers = serviceServers(
            entry, records, addressesOf, self._pool.config.tlsServerName
        )
        if not servers:
            raise _Failed("no SRV target has an address")
        return servers, ttls, None
