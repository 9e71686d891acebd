"""
Tests for L{twisted_rproxy.balance}: the balancers and the hash keys, pure,
with unit and property tests.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twisted_rproxy.balance import (
    HashBalancer,
    HashOn,
    LeastRequestsBalancer,
    RandomTwoBalancer,
    RoundRobinBalancer,
    balancerFor,
    parseHashOn,
    requestHashKey,
)
from twisted_rproxy.config import BackendServer
from twisted_rproxy.interfaces import IBalancer
from twisted_rproxy.pool import BackendRequest
from twisted_rproxy.pool import RoundRobinBalancer as PoolRoundRobin


class FakeServer:
    """
    What a balancer reads of a L{twisted_rproxy.pool.Backend}.
    """

    def __init__(self, name: str, weight: int = 1, inFlight: int = 0) -> None:
        self.name = name
        self.weight = weight
        self.inFlight = inFlight
        self.available = True
        self.server = BackendServer(
            url=f"http://{name}:80", scheme="http", host=name, port=80, weight=weight
        )

    def __repr__(self) -> str:
        return f"<{self.name}>"


def servers(*weights: int) -> list[Any]:
    return [FakeServer(f"s{i}", w) for i, w in enumerate(weights)]


def assertNear(
    testCase: SynchronousTestCase, actual: float, expected: float, delta: float
) -> None:
    """
    Fail unless C{actual} is within C{delta} of C{expected}.
    """
    if abs(actual - expected) > delta:
        testCase.fail(f"{actual!r} is not within {delta!r} of {expected!r}")


def keyed(key: bytes | None) -> BackendRequest:
    return BackendRequest(b"GET", b"/", [], hashKey=key)


class InterfaceTests(SynchronousTestCase):
    """
    Every balancer is an L{IBalancer}, made by name.
    """

    def test_providesIBalancer(self) -> None:
        """
        Each method name gives an L{IBalancer} of the right class.
        """
        for name, cls in [
            ("round-robin", RoundRobinBalancer),
            ("least-requests", LeastRequestsBalancer),
            ("random-two", RandomTwoBalancer),
            ("hash", HashBalancer),
        ]:
            balancer = balancerFor(name)
            self.assertIsInstance(balancer, cls)
            self.assertTrue(verifyObject(IBalancer, balancer))
        self.assertRaises(ValueError, balancerFor, "fastest")

    def test_poolReexportsRoundRobin(self) -> None:
        """
        C{twisted_rproxy.pool.RoundRobinBalancer} is still importable.
        """
        self.assertIs(PoolRoundRobin, RoundRobinBalancer)


class LeastRequestsTests(SynchronousTestCase):
    """
    L{LeastRequestsBalancer} picks the least loaded server per weight.
    """

    def test_picksFewestInFlight(self) -> None:
        """
        The server with the fewest requests in flight wins.
        """
        pool = servers(1, 1, 1)
        pool[0].inFlight, pool[1].inFlight, pool[2].inFlight = 5, 1, 3
        balancer = LeastRequestsBalancer()
        self.assertEqual({balancer.pick(pool, None).name for _ in range(5)}, {"s1"})

    def test_weightScalesLoad(self) -> None:
        """
        A server of weight 4 with 3 in flight beats one of weight 1 with 1.
        """
        pool = servers(1, 4)
        pool[0].inFlight, pool[1].inFlight = 1, 3
        self.assertEqual(LeastRequestsBalancer().pick(pool, None).name, "s1")

    def test_tiesTakeTurns(self) -> None:
        """
        Idle servers are picked in turn, not always the first.
        """
        pool = servers(1, 1, 1)
        balancer = LeastRequestsBalancer()
        picks = Counter(balancer.pick(pool, None).name for _ in range(30))
        self.assertEqual(picks, {"s0": 10, "s1": 10, "s2": 10})

    def test_skipsUnavailable(self) -> None:
        """
        A server at its limit is skipped; none available gives L{None}.
        """
        pool = servers(1, 1)
        pool[1].inFlight = 9
        pool[0].available = False
        balancer = LeastRequestsBalancer()
        self.assertEqual(balancer.pick(pool, None).name, "s1")
        pool[1].available = False
        self.assertIsNone(balancer.pick(pool, None))


class RandomTwoTests(SynchronousTestCase):
    """
    L{RandomTwoBalancer}: the better of two random servers.
    """

    def test_prefersLessLoaded(self) -> None:
        """
        With one server much busier than the others, it gets far fewer
        picks than its fair share; the idle ones share the rest.
        """
        pool = servers(1, 1, 1, 1)
        pool[0].inFlight = 50
        balancer = RandomTwoBalancer(random.Random(7).random)
        picks = Counter(balancer.pick(pool, None).name for _ in range(4000))
        # It loses every pair it is drawn in.
        self.assertEqual(picks["s0"], 0)
        for name in ["s1", "s2", "s3"]:
            assertNear(self, picks[name] / 4000, 1 / 3, delta=0.05)

    @settings(max_examples=15, deadline=None)
    @given(st.lists(st.integers(1, 5), min_size=2, max_size=5), st.integers(0, 2**32))
    def test_equalLoadFollowsWeights(self, weights: list[int], seed: int) -> None:
        """
        With equal loads, the share of picks follows the weights, roughly:
        a heavier server is never picked less than a lighter one by much.
        """
        pool = servers(*weights)
        balancer = RandomTwoBalancer(random.Random(seed).random)
        picks = Counter(balancer.pick(pool, None).name for _ in range(2000))
        self.assertEqual(sum(picks.values()), 2000)
        for a in pool:
            for b in pool:
                if a.weight >= 2 * b.weight:
                    self.assertGreater(picks[a.name], picks[b.name])

    def test_singleOrNone(self) -> None:
        """
        One available server is taken without drawing; none gives L{None}.
        """
        pool = servers(1, 1)
        pool[0].available = False

        def noRandom() -> float:
            raise AssertionError("drew")

        balancer = RandomTwoBalancer(noRandom)
        self.assertEqual(balancer.pick(pool, None).name, "s1")
        pool[1].available = False
        self.assertIsNone(balancer.pick(pool, None))


class HashTests(SynchronousTestCase):
    """
    L{HashBalancer}: consistent hashing with virtual nodes.
    """

    def test_sameKeySameServer(self) -> None:
        """
        A key always goes to the same server, even from a new balancer
        (another worker process).
        """
        pool = servers(1, 1, 1)
        first = HashBalancer()
        second = HashBalancer()
        for i in range(100):
            key = b"client-%d" % (i,)
            self.assertIs(
                first.pick(pool, keyed(key)), second.pick(list(pool), keyed(key))
            )

    @settings(max_examples=20, deadline=None)
    @given(st.integers(2, 8), st.integers(0, 2**32))
    def test_addingServerMovesAboutOneNth(self, count: int, seed: int) -> None:
        """
        Adding one server to N moves about 1/(N+1) of the keys, all of them
        to the new server.
        """
        rng = random.Random(seed)
        keys = [rng.randbytes(8) for _ in range(1000)]
        before = servers(*([1] * count))
        after = before + [FakeServer("new")]
        balancer = HashBalancer()
        placedBefore = [balancer.pick(before, keyed(k)) for k in keys]
        placedAfter = [balancer.pick(after, keyed(k)) for k in keys]
        moved = [
            (b, a) for b, a in zip(placedBefore, placedAfter, strict=True) if a is not b
        ]
        self.assertTrue(all(a.name == "new" for _, a in moved))
        share = len(moved) / len(keys)
        assertNear(self, share, 1 / (count + 1), delta=0.5 / (count + 1))

    @settings(max_examples=20, deadline=None)
    @given(st.lists(st.integers(1, 4), min_size=2, max_size=5))
    def test_distributionMatchesWeights(self, weights: list[int]) -> None:
        """
        Keys spread over the servers in proportion to their weights.
        """
        pool = servers(*weights)
        balancer = HashBalancer()
        picks = Counter(
            balancer.pick(pool, keyed(b"%d" % (i,))).name for i in range(4000)
        )
        total = sum(weights)
        for server in pool:
            assertNear(
                self, picks[server.name] / 4000, server.weight / total, delta=0.07
            )

    def test_removedServerKeysOnly(self) -> None:
        """
        Removing a server moves only its own keys.
        """
        pool = servers(1, 1, 1, 1)
        balancer = HashBalancer()
        keys = [b"%d" % (i,) for i in range(1000)]
        placed = {k: balancer.pick(pool, keyed(k)) for k in keys}
        smaller = pool[:2] + pool[3:]
        for key in keys:
            now = balancer.pick(smaller, keyed(key))
            if placed[key] is not pool[2]:
                self.assertIs(now, placed[key])

    def test_unavailableWalksOn(self) -> None:
        """
        A key whose server is at its limit goes to another; none available
        gives L{None}.
        """
        pool = servers(1, 1)
        balancer = HashBalancer()
        owner = balancer.pick(pool, keyed(b"k"))
        owner.available = False
        other = balancer.pick(pool, keyed(b"k"))
        self.assertIsNot(other, owner)
        other.available = False
        self.assertIsNone(balancer.pick(pool, keyed(b"k")))

    def test_noKeyRoundRobin(self) -> None:
        """
        A request without a key is placed by round robin.
        """
        pool = servers(1, 1)
        balancer = HashBalancer()
        picks = Counter(balancer.pick(pool, keyed(None)).name for _ in range(10))
        self.assertEqual(picks, {"s0": 5, "s1": 5})


class HashKeyTests(SynchronousTestCase):
    """
    L{parseHashOn} and L{requestHashKey}.
    """

    def headers(self, **values: list[bytes]) -> Any:
        table = {k.replace("_", "-").encode(): v for k, v in values.items()}
        return lambda name: table.get(name)

    def test_parse(self) -> None:
        """
        The three forms parse; header and cookie names are lowercased.
        """
        self.assertEqual(parseHashOn("client"), HashOn("client"))
        self.assertEqual(parseHashOn("header:X-User"), HashOn("header", b"x-user"))
        self.assertEqual(parseHashOn("cookie:SID"), HashOn("cookie", b"sid"))
        for bad in ["", "header", "body:x", "header:a b", "cookie:"]:
            self.assertRaises(ValueError, parseHashOn, bad)

    def test_client(self) -> None:
        """
        C{client} hashes the client address.
        """
        self.assertEqual(
            requestHashKey(HashOn("client"), "10.0.0.1", self.headers()), b"10.0.0.1"
        )

    def test_header(self) -> None:
        """
        C{header:NAME} hashes its values; absent, no key.
        """
        hashOn = HashOn("header", b"x-user")
        self.assertEqual(
            requestHashKey(hashOn, "h", self.headers(x_user=[b"alice"])), b"alice"
        )
        self.assertIsNone(requestHashKey(hashOn, "h", self.headers()))

    def test_cookie(self) -> None:
        """
        C{cookie:NAME} finds the cookie in any C{Cookie} header.
        """
        hashOn = HashOn("cookie", b"sid")
        headers = self.headers(cookie=[b"a=1", b"theme=dark; SID=xyz ; b=2"])
        self.assertEqual(requestHashKey(hashOn, "h", headers), b"xyz")
        self.assertIsNone(requestHashKey(hashOn, "h", self.headers(cookie=[b"sidx=1"])))
        self.assertIsNone(requestHashKey(hashOn, "h", self.headers()))
