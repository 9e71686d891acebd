"""
What a proxied request leaves to Python's cyclic garbage collector.

A request whose objects refer to each other in a cycle is freed only by a
collection, which walks every object young enough for its generation; a
cycle per request made the collector run after every few dozen requests
and its full collections (tens of milliseconds with a proxy's objects)
were what held back the slowest requests (issue #18: the p99 of a
keep-alive load). Freed by reference counting instead, a request costs the
collector nothing.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.memory import Proxy
from twisted_rproxy import tap

REQUEST = b"GET /page HTTP/1.1\r\nHost: example.com\r\n\r\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
)


@contextmanager
def cyclicGarbage() -> Iterator[Counter[str]]:
    """
    Count, by type, the objects that only the cyclic collector freed
    while the block ran (the block's own automatic collections included).
    """
    found: Counter[str] = Counter()
    enabled = gc.isenabled()
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.update(
            f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
        )
    finally:
        gc.set_debug(0)
        del gc.garbage[:]
        if enabled:
            gc.enable()


def requestObjects(found: Counter[str]) -> dict[str, int]:
    """
    The objects of C{found} that exist once per request: the request, its
    headers, its exchange with the pool and its backend request.
    """
    perRequest = (
        "ProxyRequest",
        "Headers",
        "_ProxyExchange",
        "_Exchange",
        "BackendRequest",
    )
    return {
        name: n for name, n in found.items() if name.rsplit(".", 1)[-1] in perRequest
    }


class ProxiedRequestGarbageTests(SynchronousTestCase):
    """
    A proxied request, its exchange with the pool and its backend request
    are freed by reference counting when the response is done.
    """

    def roundTrips(self, count: int, each: Callable[[Proxy], None]) -> Counter[str]:
        proxy = Proxy()
        # A first request opens the backend connection; what it creates once
        # (the connection, the pool's state) is not what is counted.
        each(proxy)
        with cyclicGarbage() as found:
            for _ in range(count):
                each(proxy)
        return found

    def test_keptAlive(self) -> None:
        """
        Requests on a kept-alive client connection, each answered by the
        backend, leave no cycle behind.
        """
        state: dict[str, object] = {}

        def each(proxy: Proxy) -> None:
            if "client" not in state:
                state["client"] = proxy.client()
            client, clientTransport = state["client"]  # type: ignore[misc]
            client.dataReceived(REQUEST)
            if not proxy.backends:
                proxy.acceptBackend()
            backend, backendTransport = proxy.backends[-1]
            backend.dataReceived(RESPONSE)
            self.assertIn(b"hello", clientTransport.value())
            clientTransport.clear()
            backendTransport.clear()

        found = self.roundTrips(50, each)
        self.assertEqual(dict(found), {})

    def test_clientConnectionPerRequest(self) -> None:
        """
        A client connection per request (as with C{Connection: close}),
        closed after its response, leaves no cycle behind either.
        """

        def each(proxy: Proxy) -> None:
            client, clientTransport = proxy.client()
            client.dataReceived(REQUEST)
            if not proxy.backends:
                proxy.acceptBackend()
            backend, backendTransport = proxy.backends[-1]
            backend.dataReceived(RESPONSE)
            self.assertIn(b"hello", clientTransport.value())
            client.connectionLost(Failure(ConnectionDone()))
            backendTransport.clear()

        # A StringTransport keeps its producer (the channel) after the
        # connection is lost, which a TCP transport does not: the
        # connection's own objects are not counted here.
        found = self.roundTrips(50, each)
        self.assertEqual(requestObjects(found), {})

    def test_clientGoneBeforeResponse(self) -> None:
        """
        A client that goes away while its request waits for the backend
        leaves no request, exchange or backend request for the collector.
        """

        def each(proxy: Proxy) -> None:
            client, clientTransport = proxy.client()
            client.dataReceived(REQUEST)
            if not proxy.backends:
                proxy.acceptBackend()
            client.connectionLost(Failure(ConnectionDone()))
            # The backend connection carrying it was given up: a new one is
            # dialled for the next request.
            proxy.backends.clear()

        found = self.roundTrips(20, each)
        self.assertEqual(requestObjects(found), {})


class FreezeStartupObjectsTests(SynchronousTestCase):
    """
    L{tap.freezeStartupObjects} takes the objects alive at start-up out of
    the collector's walks.
    """

    def test_frozen(self) -> None:
        """
        After it, the objects that were alive are in the permanent
        generation: a full collection no longer walks them; and the young
        generation is collected less often.
        """
        self.addCleanup(gc.unfreeze)
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        gc.unfreeze()
        walked = len(gc.get_objects())
        tap.freezeStartupObjects()
        self.assertGreater(gc.get_freeze_count(), walked // 2)
        self.assertLess(len(gc.get_objects()), walked // 2)
        self.assertEqual(gc.get_threshold()[0], tap.YOUNG_THRESHOLD)
