"""
Balancing: which server of a pool takes each request.

Everything here is pure bookkeeping over the servers a pool hands in (each
an L{IBackendServer}): no reactor, no clock, no I/O, and the random source
of L{RandomTwoBalancer} is injected. The pool calls C{pick} once per
request, so each balancer is kept to a few microseconds and allocates
nothing per request beyond what it must.

Four methods, named as in C{[pools.NAME] balance}:

 - C{"round-robin"}: L{RoundRobinBalancer}, smooth weighted round robin;
 - C{"least-requests"}: L{LeastRequestsBalancer}, fewest requests in
   flight per unit of weight;
 - C{"random-two"}: L{RandomTwoBalancer}, the better of two servers drawn
   at random ("power of two choices");
 - C{"hash"}: L{HashBalancer}, consistent hashing of a request key (the
   client address, a header or a cookie: see L{requestHashKey}) on a ring
   of virtual nodes, so that adding or removing one server of N moves
   about 1/N of the keys.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING

from zope.interface import implementer

from twisted_rproxy.config.hashing import BALANCERS, HashOn, parseHashOn
from twisted_rproxy.interfaces import IBackendServer, IBalancer

if TYPE_CHECKING:
    from twisted_rproxy.messages import BackendRequest

__all__ = [
    "BALANCERS",
    "HashBalancer",
    "HashOn",
    "LeastRequestsBalancer",
    "RandomTwoBalancer",
    "RoundRobinBalancer",
    "balancerFor",
    "hashKey",
    "parseHashOn",
    "requestHashKey",
]


@implementer(IBalancer)
class RoundRobinBalancer:
    """
    Smooth weighted round robin (as nginx does it): over a cycle each server
    gets requests in proportion to its weight, interleaved rather than in
    bursts, skipping servers that are at their limit.
    """

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def pick(
        self, servers: Sequence[IBackendServer], request: object
    ) -> IBackendServer | None:
        if len(servers) == 1:
            only = servers[0]
            return only if only.available else None
        current = self._current
        best = None
        bestWeight = 0
        total = 0
        for server in servers:
            if not server.available:
                continue
            key = id(server)
            weight = current.get(key, 0) + server.weight
            current[key] = weight
            total += server.weight
            if best is None or weight > bestWeight:
                best, bestWeight = server, weight
        if best is not None:
            current[id(best)] = bestWeight - total
        if len(current) > 4 * len(servers) + 16:
            # Servers come and go with reloads and health: forget the old.
            live = {id(server) for server in servers}
            for key in [k for k in current if k not in live]:
                del current[key]
        return best


@implementer(IBalancer)
class LeastRequestsBalancer:
    """
    The available server with the fewest requests in flight relative to its
    weight; ties go to the servers in turn, so that an idle pool is still
    spread evenly.
    """

    def __init__(self) -> None:
        self._turn = 0

    def pick(
        self, servers: Sequence[IBackendServer], request: object
    ) -> IBackendServer | None:
        count = len(servers)
        if count == 1:
            only = servers[0]
            return only if only.available else None
        turn = self._turn = (self._turn + 1) % count if count else 0
        best = None
        bestLoad = 0
        bestWeight = 1
        for index in range(count):
            server = servers[(turn + index) % count]
            if not server.available:
                continue
            # (inFlight + 1) / weight, compared without division: a lighter
            # server is "fuller" at the same count.
            load = server.inFlight + 1
            weight = server.weight
            if best is None or load * bestWeight < bestLoad * weight:
                best, bestLoad, bestWeight = server, load, weight
        return best


@implementer(IBalancer)
class RandomTwoBalancer:
    """
    Power of two random choices: draw two distinct available servers at
    random, in proportion to their weights, and take the one with fewer
    requests in flight per unit of weight. Nearly as good as least
    requests, without its herding onto one server after a change.

    @param random: A source of floats in [0, 1) (C{random.Random().random}
        by default); injected so that tests are deterministic.
    """

    def __init__(self, random: Callable[[], float] | None = None) -> None:
        self._random = random if random is not None else _defaultRandom()

    def _draw(
        self, servers: Sequence[IBackendServer], total: int, skip: object
    ) -> IBackendServer:
        point = self._random() * total
        for server in servers:
            if server is skip or not server.available:
                continue
            point -= server.weight
            if point < 0:
                return server
        # Floating point rounding at the very end of the range.
        for server in reversed(servers):
            if server is not skip and server.available:
                return server
        raise AssertionError("no server to draw")  # pragma: no cover

    def pick(
        self, servers: Sequence[IBackendServer], request: object
    ) -> IBackendServer | None:
        total = 0
        candidates = 0
        last = None
        for server in servers:
            if server.available:
                total += server.weight
                candidates += 1
                last = server
        if candidates <= 1:
            return last
        first = self._draw(servers, total, None)
        second = self._draw(servers, total - first.weight, first)
        if (second.inFlight + 1) * first.weight < (first.inFlight + 1) * second.weight:
            return second
        return first


def _defaultRandom() -> Callable[[], float]:
    # Balancing is no secret: a fast, seeded-from-the-OS Mersenne Twister.
    return random.Random().random


def hashKey(data: bytes) -> int:
    """
    The 64-bit ring position of C{data}.

    The same in every process (unlike L{hash}), so that worker processes and
    restarts agree on where a key goes.
    """
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@implementer(IBalancer)
class HashBalancer:
    """
    Consistent hashing of the request's C{hashKey} on a ring of virtual
    nodes: each server owns C{weight * replicas} points placed by hashing
    its URL, and a key goes to the first point after its own hash. The
    points of a server do not depend on the others, so adding or removing
    one server of N moves only the keys that it gains or held, about 1/N.

    A server at its limit passes its keys to the next server on the ring;
    a request without a key (no such header or cookie) is placed by round
    robin.

    @param replicas: Virtual nodes per unit of weight; more spreads keys
        more evenly, at the cost of a bigger ring.
    """

    def __init__(self, replicas: int = 160) -> None:
        self._replicas = replicas
        self._servers: Sequence[IBackendServer] | None = None
        self._rings: dict[
            tuple[int, ...], tuple[list[int], Sequence[IBackendServer]]
        ] = {}
        self._points: list[int] = []
        self._owners: Sequence[IBackendServer] = []
        self._fallback = RoundRobinBalancer()

    def _ring(self, servers: Sequence[IBackendServer]) -> None:
        # The pool hands in the same list object until a server's health
        # changes (it never changes a list it handed in), so the ring is
        # found by identity; the few other lists (those of failover
        # retries) by the servers they hold.
        if servers is self._servers:
            return
        key = tuple(map(id, servers))
        ring = self._rings.get(key)
        if ring is None:
            entries = []
            for server in servers:
                url = server.server.url.encode("utf-8")
                for replica in range(server.server.weight * self._replicas):
                    entries.append((hashKey(b"%s#%d" % (url, replica)), server))
            entries.sort(key=lambda entry: entry[0])
            # The cached rings hold their servers, so no id in a key is
            # reused while it is cached.
            ring = ([point for point, _ in entries], [owner for _, owner in entries])
            if len(self._rings) >= 8:
                self._rings.clear()
            self._rings[key] = ring
        self._servers = servers
        self._points, self._owners = ring

    def pick(
        self, servers: Sequence[IBackendServer], request: BackendRequest
    ) -> IBackendServer | None:
        key = request.hashKey if request is not None else None
        if key is None:
            return self._fallback.pick(servers, request)
        self._ring(servers)
        owners = self._owners
        if not owners:
            return None
        size = len(owners)
        start = bisect_left(self._points, hashKey(key))
        if start == size:
            start = 0
        owner = owners[start]
        if owner.available:
            return owner
        # Walk on to the next available server; bounded by the ring's size.
        for index in range(start + 1, start + size):
            owner = owners[index % size]
            if owner.available:
                return owner
        return None


def requestHashKey(
    hashOn: HashOn,
    clientAddress: str,
    headers: Callable[[bytes], Sequence[bytes] | None],
) -> bytes | None:
    """
    The key a hashing pool places a request by.

    @param clientAddress: The client's IP address.
    @param headers: Looks up a lowercased header name's raw values (such as
        C{request.requestHeaders.getRawHeaders}).
    @return: The key, or L{None} when the request has no such header or
        cookie.
    """
    if hashOn.source == "client":
        return clientAddress.encode("ascii", "replace")
    if hashOn.source == "header":
        values = headers(hashOn.name)
        return b",".join(values) if values else None
    cookies = headers(b"cookie")
    if not cookies:
        return None
    wanted = hashOn.name
    for line in cookies:
        for pair in line.split(b";"):
            name, equals, value = pair.partition(b"=")
            if equals and name.strip().lower() == wanted:
                return value.strip()
    return None


def balancerFor(balance: str) -> IBalancer:
    """
    A new balancer for a C{balance} method name (one of L{BALANCERS}).

    @raise ValueError: For an unknown name.
    """
    if balance == "round-robin":
        return RoundRobinBalancer()
    if balance == "least-requests":
        return LeastRequestsBalancer()
    if balance == "random-two":
        return RandomTwoBalancer()
    if balance == "hash":
        return HashBalancer()
    raise ValueError(f"unknown balancing method {balance!r}")
