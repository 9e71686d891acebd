"""
Tests for what a L{twisted_rproxy.cache.store.MemoryStore}'s C{max_size}
counts: the memory its entries really take (traced with tracemalloc), for
small entries as for large ones, and the compact L{CacheEntry} that makes
small ones cheap.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.cache.policy import parseCacheControl, storedHeaders
from twisted_rproxy.cache.store import CacheEntry, MemoryStore

#: A response head as an nginx backend sends it (the hop-by-hop fields go
#: before storing, as the cache does).
_HEAD = (
    b"Server: nginx/1.22.1\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nLast-Modified: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b'Connection: keep-alive\r\nETag: "6592000-64"\r\nAccept-Ranges: bytes\r\n'
    b"Cache-Control: max-age=3600\r\nContent-Length: %d"
)


def _entry(number: int, bodySize: int, vary: bool = False) -> CacheEntry:
    """
    A stored response under a key of its own, made as the cache makes one
    from a backend's answer: every field, the body and the directives are
    objects of their own, as parsing makes them.
    """
    pairs: list[tuple[bytes, bytes]] = []
    for line in (_HEAD % (bodySize,)).split(b"\r\n"):
        name, value = line.split(b": ", 1)
        pairs.append((bytes(name), bytes(value)))
    if vary:
        pairs.append((b"Vary", b"Accept-Encoding"))
    responseCC = parseCacheControl(v for n, v in pairs if n == b"Cache-Control")
    return CacheEntry(
        key=b"http://example.test/item/%08d" % (number,),
        variant=b"gzip" if vary else b"",
        varyOn=(b"accept-encoding",) if vary else (),
        status=200,
        reason=b"OK",
        headers=storedHeaders(pairs, responseCC),
        body=bytes(bytearray(bodySize)),
        responseTime=1.7e9 + number,
        initialAge=float(number % 5),
        lifetime=3600.0 + number,
        cacheControl=responseCC,
    )


@contextmanager
def _traced() -> Iterator[list[int]]:
    """
    Trace allocations; yield a list that gets the bytes allocated and still
    held at the end of the block.
    """
    result: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield result
        gc.collect()
        result.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


class MaxSizeTests(SynchronousTestCase):
    """
    A full L{MemoryStore} holds about C{maxSize} bytes of memory, and never
    much more, whatever the size of its entries.
    """

    def fill(self, maxSize: int, bodySize: int, vary: bool = False) -> None:
        """
        Put entries of C{bodySize} bytes under distinct keys into a store
        of C{maxSize} until it has evicted as many as it holds; assert that
        the memory it holds then is within 0.7 and 1.25 times C{maxSize}
        (counting what is held, not less, and not far more).
        """
        with _traced() as held:
            store = MemoryStore(maxSize)
            number = 0
            while number < 10 or len(store) * 2 > number:
                self.assertTrue(store.put(_entry(number, bodySize, vary)))
                number += 1
        evicted = number - len(store)
        self.assertGreater(evicted, 0)
        self.assertLessEqual(store.size, maxSize)
        [used] = held
        ratio = used / maxSize
        self.assertLessEqual(
            ratio, 1.25, f"{len(store)} entries hold {used} bytes for {maxSize}"
        )
        self.assertGreaterEqual(
            ratio, 0.7, f"{len(store)} entries hold {used} bytes for {maxSize}"
        )
        # The store is full: no more than one more entry would fit.
        self.assertGreater(store.size, maxSize - _entry(0, bodySize, vary).size * 2)
        del store

    def test_smallEntries(self) -> None:
        """
        Entries of 100-byte bodies, whose head and bookkeeping cost more
        than the body, are counted for what they hold.
        """
        self.fill(2 * 1024 * 1024, 100)

    def test_emptyBodies(self) -> None:
        """
        Entries without a body still count what they hold.
        """
        self.fill(512 * 1024, 0)

    def test_varyingEntries(self) -> None:
        """
        Entries that C{Vary} selects count their variant's bookkeeping.
        """
        self.fill(1024 * 1024, 100, vary=True)

    def test_largeEntries(self) -> None:
        """
        Entries of 64 KiB bodies are counted for about their bodies.
        """
        self.fill(8 * 1024 * 1024, 64 * 1024)

    def test_sharedDirectivesCountedOnce(self) -> None:
        """
        Entries with the same C{Cache-Control} share one parsed copy,
        counted once: the store's size is its entries' sizes and that copy,
        and it goes with the last entry holding it.
        """
        store = MemoryStore(1024 * 1024)
        one, two = _entry(1, 10), _entry(2, 10)
        self.assertIsNot(one.cacheControl, two.cacheControl)
        store.put(one)
        afterOne = store.size
        self.assertGreater(afterOne, one.size)
        store.put(two)
        self.assertIs(one.cacheControl, two.cacheControl)
        self.assertEqual(store.size, afterOne + two.size)
        store.remove(one.key)
        self.assertEqual(store.size, afterOne + two.size - one.size)
        store.remove(two.key)
        self.assertEqual((store.size, len(store)), (0, 0))

    def test_resizedDirectives(self) -> None:
        """
        New directives of a stored entry (after a 304) are counted when the
        store is told; the old ones are no longer.
        """
        store = MemoryStore(1024 * 1024)
        entry = _entry(1, 10)
        store.put(entry)
        entry.cacheControl = parseCacheControl([b"max-age=60, must-revalidate"])
        entry.headers = entry.headers + [(b"X-Revalidated", b"1")]
        store.resized(entry)
        size = store.size
        self.assertGreater(size, entry.size)
        store.remove(entry.key)
        self.assertEqual((store.size, len(store)), (0, 0))

    def test_oneVariantOfSeveralEvicted(self) -> None:
        """
        The least recently put variant of a key goes first; the others
        stay, found under the key.
        """
        first, second = _entry(1, 10, vary=True), _entry(1, 10, vary=True)
        second.variant = b"br"
        store = MemoryStore(first.size + second.size + 4096)
        store.put(first)
        store.put(second)
        self.assertEqual(len(store), 2)
        store.setMaxSize(store.size - 1)
        self.assertEqual(store.get(first.key), [second])
        self.assertEqual(len(store), 1)


class CompactEntryTests(SynchronousTestCase):
    """
    L{CacheEntry} keeps its head as one bytes object, and its public
    attributes as they were.
    """

    def test_headersRoundTrip(self) -> None:
        """
        The headers read back are the pairs given, in order, a new list each
        time; assigning a list replaces them.
        """
        pairs = [(b"A", b"1"), (b"b", b"x: y, z"), (b"A", b""), (b"", b"odd")]
        entry = _entry(1, 10)
        entry.headers = pairs
        self.assertEqual(entry.headers, pairs)
        self.assertIsNot(entry.headers, entry.headers)
        entry.headers.append((b"C", b"lost"))
        self.assertEqual(entry.headers, pairs)
        entry.headers = []
        self.assertEqual(entry.headers, [])

    def test_constructorKeywords(self) -> None:
        """
        The constructor takes the keywords it always did, C{headers} among
        them.
        """
        entry = CacheEntry(
            key=b"k",
            variant=b"",
            varyOn=(),
            status=404,
            reason=b"Not Found",
            headers=[(b"Content-Length", b"0")],
            body=b"",
            responseTime=0.0,
            initialAge=0.0,
            lifetime=10.0,
        )
        self.assertEqual(entry.headers, [(b"Content-Length", b"0")])
        self.assertEqual((entry.status, entry.reason), (404, b"Not Found"))
        self.assertEqual(entry.size, entry.computeSize())
        self.assertFalse(entry.cacheControl.directives)

    def test_nulInHeaders(self) -> None:
        """
        A header holding a NUL (which no backend may send, but a caller
        could give) is kept as it is.
        """
        pairs = [(b"A", b"1\x002"), (b"B\x00", b"")]
        entry = _entry(1, 10)
        entry.headers = pairs
        self.assertEqual(entry.headers, pairs)
        self.assertGreater(entry.computeSize(), 0)

    def test_sizeCountsHeadAndBody(self) -> None:
        """
        The size grows with the head and the body, byte for byte (to the
        allocator's 16).
        """
        small, large = _entry(1, 100), _entry(1, 100 + 4096)
        # The body, and a digit more of Content-Length.
        self.assertLessEqual(abs(large.size - small.size - (4096 + 1)), 16)
        before = small.computeSize()
        small.headers = small.headers + [(b"X-Long", b"v" * 1000)]
        self.assertLessEqual(abs(small.computeSize() - before - (1000 + 7)), 16)
