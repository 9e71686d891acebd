"""
Tests of the disk cache store's bodies streamed both ways
(L{twisted_rproxy.cache.diskbody}, L{twisted_rproxy.cache.diskstreams}): on
a memory clock with file operations run at once, then real proxies
(L{ProxyService}) with a disk cache in front of a real backend sending
large bodies, measured with tracemalloc.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import tracemalloc
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.h2client import (
    H2Request,
    H2Response,
    TLSFiles,
    h2Exchange,
    inThread,
    proxyServiceOverTLS,
)
from tests.loopback import Reply
from twisted_rproxy.cache import DiskStore
from twisted_rproxy.cache.diskbody import BodyProducer, DiskEntry
from twisted_rproxy.cache.diskformat import TEMPORARY, entryFile
from twisted_rproxy.cache.diskstreams import BodyWriter
from twisted_rproxy.cache.policy import parseCacheControl
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.service import ProxyService

_PATTERN = bytes(range(256)) * 1024


def _pattern(size: int) -> bytes:
    """
    The body the test backend sends for C{Reply(bigBody=size)}.
    """
    return (_PATTERN * (size // len(_PATTERN) + 1))[:size]


def _runNow(function: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args)


def _entry(key: bytes, body: bytes = b"", length: int | None = None) -> CacheEntry:
    size = len(body) if length is None else length
    headers = [
        (b"Cache-Control", b"max-age=60"),
        (b"Content-Length", b"%d" % (size,)),
    ]
    return CacheEntry(
        key=key,
        variant=b"",
        varyOn=(),
        status=200,
        reason=b"OK",
        headers=headers,
        body=body,
        responseTime=1000.0,
        initialAge=0.0,
        lifetime=60.0,
        cacheControl=parseCacheControl([b"max-age=60"]),
    )


def _openFiles(under: str) -> list[str]:
    """
    The files under C{under} this process has open.
    """
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(os.path.join("/proc/self/fd", fd))
        except OSError:
            continue
        if target.startswith(under):
            found.append(target)
    return found


class _ManualThreads:
    """
    Runs file operations when told to, one at a time, in order.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, function: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((d, function, args))
        return d

    def runAll(self) -> None:
        for _ in range(1000):
            if not self.calls:
                return
            d, function, args = self.calls.pop(0)
            maybeDeferred(function, *args).chainDeferred(d)


class StreamedStoreTests(SynchronousTestCase):
    """
    L{DiskStore}'s streamed bodies on a memory clock, its file operations
    run at once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", self.path]))

    def store(self, runInThread: Any = _runNow, **options: Any) -> DiskStore:
        options.setdefault("maxSize", 64 << 20)
        config = CacheConfig(name="main", store="disk", path=self.path, **options)
        store = DiskStore(self.clock, config, runInThread)
        if isinstance(runInThread, _ManualThreads):
            runInThread.runAll()
        self.successResultOf(store.loaded)
        return store

    def get(self, store: DiskStore, key: bytes) -> list[CacheEntry]:
        result = store.get(key)
        return result if isinstance(result, list) else self.successResultOf(result)

    def write(self, store: DiskStore, key: bytes, pieces: list[bytes]) -> bool:
        writer = store.openWriter(_entry(key))
        assert writer is not None
        for piece in pieces:
            writer.write(piece)
        result = writer.finish(_entry(key, length=sum(map(len, pieces))))
        return result if isinstance(result, bool) else self.successResultOf(result)

    def temporaries(self) -> list[str]:
        return os.listdir(os.path.join(self.path, TEMPORARY))

    def stream(self, entry: CacheEntry, pieces: list[Any] | None = None) -> Any:
        opened = entry.openBody()  # type: ignore[attr-defined]
        producer = self.successResultOf(opened)
        assert isinstance(producer, BodyProducer)
        transport = StringTransport()
        if pieces is None:
            done = producer.startProducing(transport)
        else:
            done = producer.producePieces(transport, pieces)
        return producer, transport, done

    def test_largeBodyLeftOnDisk(self) -> None:
        """
        C{get} reads a small body whole; a body larger than C{streamAbove}
        stays on disk: the entry is a L{DiskEntry} with its length, whose
        producer streams it.
        """
        store = self.store()
        small, large = b"s" * 1000, os.urandom(300 * 1024)
        self.assertTrue(self.write(store, b"small", [small]))
        self.assertTrue(self.write(store, b"large", [large[:1000], large[1000:]]))
        (got,) = self.get(store, b"small")
        self.assertNotIsInstance(got, DiskEntry)
        self.assertEqual(got.body, small)
        (got,) = self.get(store, b"large")
        assert isinstance(got, DiskEntry)
        self.assertEqual((got.body, got.bodyLength), (b"", len(large)))
        self.assertIn((b"Content-Length", b"%d" % (len(large),)), got.headers)
        producer, transport, done = self.stream(got)
        self.successResultOf(done)
        self.assertEqual(transport.value(), large)
        self.assertEqual(store.stats["streamed"], 1)
        self.assertEqual(store.producers, set())
        self.assertEqual(_openFiles(self.path), [])
        self.assertEqual(self.temporaries(), [])

    def test_writerAppendsInOrder(self) -> None:
        """
        Pieces written while a write runs in a thread are written together
        next, in order; the entry is renamed into place only once finished.
        """
        threads = _ManualThreads()
        store = self.store(threads)
        writer = store.openWriter(_entry(b"k"))
        assert writer is not None
        pieces = [os.urandom(100 * 1024) for _ in range(5)]
        for piece in pieces:
            writer.write(piece)
        finishing = writer.finish(_entry(b"k", length=500 * 1024))
        assert isinstance(finishing, Deferred)
        self.assertNoResult(finishing)
        self.assertFalse(os.path.exists(os.path.join(self.path, entryFile(b"k", b""))))
        threads.runAll()
        self.assertTrue(self.successResultOf(finishing))
        self.assertEqual(self.temporaries(), [])
        (got,) = self.get(self.store(), b"k")
        _, transport, done = self.stream(got)
        self.successResultOf(done)
        self.assertEqual(transport.value(), b"".join(pieces))

    def test_writerDiscards(self) -> None:
        """
        A writer given more than C{max_object_size}, or discarded, leaves
        nothing on disk; its C{finish} stores nothing.  A store declines
        what it would not store.
        """
        store = self.store(maxObjectSize=1000)
        writer = store.openWriter(_entry(b"k"))
        assert writer is not None
        writer.write(b"x" * 600)
        writer.write(b"x" * 600)
        self.assertTrue(writer.discarded)
        self.assertFalse(writer.finish(_entry(b"k", length=1200)))
        writer = store.openWriter(_entry(b"j"))
        assert writer is not None
        writer.write(b"y" * 10)
        writer.discard()
        self.assertFalse(writer.finish(_entry(b"j", length=10)))
        self.assertEqual(self.temporaries(), [])
        self.assertEqual(len(store), 0)
        uncacheable = _entry(b"n")
        uncacheable.lifetime = 0.0
        self.assertIsNone(store.openWriter(uncacheable))

    def test_writerFailure(self) -> None:
        """
        A write that fails (the directory gone) stores nothing, is counted
        and logged, and leaves no file open.
        """
        store = self.store()
        writer = store.openWriter(_entry(b"k"))
        assert isinstance(writer, BodyWriter)
        subprocess.call(["rm", "-rf", self.path])
        writer.write(b"z" * 100)
        result = writer.finish(_entry(b"k", length=100))
        stored = result if isinstance(result, bool) else self.successResultOf(result)
        self.assertFalse(stored)
        self.assertEqual(store.stats["errors"], 1)
        self.assertEqual(_openFiles(self.path), [])

    def test_corruptBodyCutAndRemoved(self) -> None:
        """
        A body altered on disk is found out at its end, by its CRC32: its
        last chunk is not written, the stream fails, and the entry is
        removed.
        """
        store = self.store()
        body = os.urandom(600 * 1024)
        self.assertTrue(self.write(store, b"k", [body]))
        path = os.path.join(self.path, entryFile(b"k", b""))
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        (got,) = self.get(store, b"k")
        _, transport, done = self.stream(got)
        self.failureResultOf(done).trap(ValueError)
        # All but the last chunk read.
        self.assertEqual(len(transport.value()), len(body) - len(body) % (256 << 10))
        self.assertFalse(os.path.exists(path))
        self.assertEqual((len(store), store.stats["corrupt"]), (0, 1))
        self.assertEqual(_openFiles(self.path), [])
        self.flushLoggedErrors()

    def test_truncatedWhileStreamed(self) -> None:
        """
        A file cut short while its body is streamed ends the stream with a
        failure, and the entry is removed.
        """
        store = self.store()
        body = os.urandom(600 * 1024)
        self.write(store, b"k", [body])
        (got,) = self.get(store, b"k")
        producer = self.successResultOf(got.openBody())  # type: ignore[attr-defined]
        assert producer is not None
        os.truncate(os.path.join(self.path, entryFile(b"k", b"")), 300 * 1024)
        transport = StringTransport()
        failed = producer.startProducing(transport)
        self.failureResultOf(failed).trap(ValueError)
        self.assertEqual(len(store), 0)

    def test_replacedBodyNotOpened(self) -> None:
        """
        An entry read before its file was replaced by another body does not
        open the new one (its head would not match it).
        """
        store = self.store()
        self.write(store, b"k", [b"a" * (100 * 1024)])
        (old,) = self.get(store, b"k")
        self.write(store, b"k", [b"b" * (100 * 1024)])
        self.assertIsNone(self.successResultOf(old.openBody()))  # type: ignore[attr-defined]
        (new,) = self.get(store, b"k")
        self.assertIsNotNone(self.successResultOf(new.openBody()))  # type: ignore[attr-defined]

    def test_pieces(self) -> None:
        """
        C{producePieces} writes bytes as they are and ranges of the body
        (as a multipart 206 needs), pausing when asked.
        """
        store = self.store()
        body = os.urandom(100 * 1024)
        self.write(store, b"k", [body])
        (got,) = self.get(store, b"k")
        producer, transport, done = self.stream(
            got, [b"--a\r\n", (0, 10), b"\r\n--b\r\n", (90000, 5), b"--end"]
        )
        self.successResultOf(done)
        self.assertEqual(
            transport.value(),
            b"--a\r\n" + body[:10] + b"\r\n--b\r\n" + body[90000:90005] + b"--end",
        )
        self.assertEqual(producer.length, producer.written)

    def test_pausedAndStopped(self) -> None:
        """
        A paused producer reads nothing more until resumed; stopped, it
        closes its file.
        """
        threads = _ManualThreads()
        store = self.store(threads)
        writer = store.openWriter(_entry(b"k"))
        assert writer is not None
        writer.write(b"p" * (1 << 20))
        finishing = writer.finish(_entry(b"k", length=1 << 20))
        threads.runAll()
        self.successResultOf(finishing)  # type: ignore[arg-type]
        getting = store.get(b"k")
        threads.runAll()
        (got,) = self.successResultOf(getting)  # type: ignore[arg-type]
        opening = got.openBody()  # type: ignore[attr-defined]
        threads.runAll()
        producer = self.successResultOf(opening)
        transport = StringTransport()
        done = producer.startProducing(transport)
        threads.runAll()
        self.assertEqual(len(transport.value()), 1 << 20)
        self.successResultOf(done)

        opening = got.openBody()  # type: ignore[attr-defined]
        threads.runAll()
        producer = self.successResultOf(opening)
        transport = StringTransport()
        done = producer.startProducing(transport)
        producer.pauseProducing()
        threads.runAll()
        read = len(transport.value())
        self.assertLess(read, 1 << 20)
        self.assertEqual(threads.calls, [])
        producer.resumeProducing()
        self.assertEqual(len(threads.calls), 1)
        producer.stopProducing()
        threads.runAll()
        self.failureResultOf(done)
        self.assertEqual(store.producers, set())
        self.assertEqual(_openFiles(self.path), [])


class _Counting(Protocol):
    """
    A raw HTTP/1.1 client that keeps the head of one response and only the
    length and digest of its body, so that it holds none of it.
    """

    def __init__(self) -> None:
        self.head = b""
        self.length = 0
        self.digest = hashlib.sha256()
        self.closed: Deferred[None] = Deferred()
        self.complete: Deferred[None] = Deferred()
        self.expected: int | None = None
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        if self.expected is None:
            self._buffer += data
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            self.head = head
            self.expected = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self.expected = int(value)
            data = rest
        self.length += len(data)
        self.digest.update(data)
        if self.length >= self.expected and not self.complete.called:
            self.complete.callback(None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.closed.callback(None)


def _t(client: Protocol) -> Any:
    """
    A client's TCP transport.
    """
    return client.transport


class _StreamingCase(LoopbackTestCase):
    """
    A real L{ProxyService} with a disk cache in front of a real backend
    sending an 8 MiB body.
    """

    timeout = 60
    size = 8 << 20

    def setUp(self) -> None:
        super().setUp()
        self.path = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", self.path]))
        self.body = _pattern(self.size)
        self.sha = hashlib.sha256(self.body).hexdigest()

    async def start(self) -> tuple[DiskStore, int, Any]:
        backend = await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"max-age=60"), (b"ETag", b'"big"')],
                bigBody=self.size,
            )
        )
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backend.portNumber),)
                )
            },
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={
                "main": CacheConfig(
                    name="main",
                    statusHeader=True,
                    store="disk",
                    path=self.path,
                    maxSize=256 << 20,
                    maxObjectSize=64 << 20,
                )
            },
        )
        service = ProxyService(config, reactor)  # type: ignore[arg-type]
        service.startService()
        self.addCleanup(service.stopService)
        store = service.cacheStores["main"]
        assert isinstance(store, DiskStore)
        self.addCleanup(store.close)
        await store.loaded
        listening = await service.whenListening()
        return store, listening[0].getHost().port, backend  # type: ignore[attr-defined]

    async def connect(self, port: int, slow: bool = False) -> _Counting:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        client = await endpoint.connect(Factory.forProtocol(_Counting))
        assert isinstance(client, _Counting)
        if slow:
            # Not reading: the receive buffer stays at its initial size.
            _t(client).pauseProducing()

        def close() -> None:
            if not client.closed.called:
                _t(client).abortConnection()

        self.addCleanup(close)
        return client

    async def request(
        self, port: int, method: bytes = b"GET", extra: bytes = b""
    ) -> _Counting:
        client = await self.connect(port)
        _t(client).write(
            method + b" /big HTTP/1.1\r\nHost: disk.test\r\n" + extra + b"\r\n"
        )
        if method == b"HEAD":
            for _ in range(500):
                if client.expected is not None:
                    break
                await sleep(0.01)
        else:
            await client.complete
        return client

    async def stored(self, store: DiskStore) -> None:
        for _ in range(500):
            if len(store):
                return
            await sleep(0.01)
        self.fail("the response was not stored")

    async def idle(self, store: DiskStore) -> None:
        for _ in range(500):
            if not store.producers and not _openFiles(self.path):
                return
            await sleep(0.01)
        self.fail(f"files left open: {_openFiles(self.path)}")


class StreamingProxyTests(_StreamingCase):
    """
    Large bodies through a disk cache, over HTTP/1.1.
    """

    @asyncTest
    async def test_missAndHitStreamed(self) -> None:
        """
        The miss is written to disk as it arrives, and the hit streamed
        from it: the process never holds the body (tracemalloc's peak stays
        far below its size); no file is left open.
        """
        store, port, backend = await self.start()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            miss = await self.request(port)
            await self.stored(store)
            missPeak = tracemalloc.get_traced_memory()[1]
            tracemalloc.reset_peak()
            hit = await self.request(port)
            hitPeak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertIn(b"X-Cache: MISS", miss.head)
        self.assertIn(b"X-Cache: HIT", hit.head)
        for client in (miss, hit):
            self.assertEqual(
                (client.length, client.digest.hexdigest()), (self.size, self.sha)
            )
        # The test's own backend and client run in this process too and
        # buffer a few socket writes, and a miss's pieces wait in memory
        # while the disk thread catches up (the writer allows up to
        # WRITE_BACKLOG): peaks up to ~4.4 MiB were seen on the miss. A body
        # held whole would be the 8 MiB and more (its pieces, then joined).
        self.assertLess(missPeak, self.size * 3 // 4)
        self.assertLess(hitPeak, self.size // 2)
        self.assertEqual(len(backend.requests), 1)
        self.assertEqual(store.stats["streamed"], 1)
        self.assertEqual(os.listdir(os.path.join(self.path, TEMPORARY)), [])
        await self.idle(store)

    @asyncTest
    async def test_rangesHeadAndConditional(self) -> None:
        """
        A range of a stored large body is a 206 from disk (one range, and
        several as multipart); HEAD and a matching conditional request open
        no file.
        """
        store, port, backend = await self.start()
        await self.request(port)
        await self.stored(store)
        ranged = await self.request(port, extra=b"Range: bytes=1000-1999\r\n")
        self.assertTrue(ranged.head.startswith(b"HTTP/1.1 206 "))
        self.assertIn(b"Content-Range: bytes 1000-1999/%d" % (self.size,), ranged.head)
        self.assertEqual(
            ranged.digest.hexdigest(), hashlib.sha256(self.body[1000:2000]).hexdigest()
        )
        several = await self.request(port, extra=b"Range: bytes=0-9,-10\r\n")
        self.assertTrue(several.head.startswith(b"HTTP/1.1 206 "))
        self.assertIn(b"multipart/byteranges", several.head)
        self.assertEqual(store.stats["streamed"], 2)
        head = await self.request(port, b"HEAD")
        self.assertIn(b"Content-Length: %d" % (self.size,), head.head)
        notModified = await self.request(port, extra=b'If-None-Match: "big"\r\n')
        self.assertTrue(notModified.head.startswith(b"HTTP/1.1 304 "))
        self.assertEqual(store.stats["streamed"], 2)
        self.assertEqual(len(backend.requests), 1)
        await self.idle(store)

    @asyncTest
    async def test_slowClientPausesReads(self) -> None:
        """
        A client that does not read pauses the file reads (the producer is
        paused, most of the body unread); once it reads, it gets it whole.
        """
        store, port, _ = await self.start()
        await self.request(port)
        await self.stored(store)
        client = await self.connect(port, slow=True)
        _t(client).write(b"GET /big HTTP/1.1\r\nHost: disk.test\r\n\r\n")
        producer = None
        for _ in range(500):
            if store.producers:
                (producer,) = store.producers
                if producer.paused:
                    break
            await sleep(0.01)
        assert producer is not None
        self.assertTrue(producer.paused)
        await sleep(0.2)
        # Still paused: at most the chunk being read when paused came on.
        self.assertTrue(producer.paused)
        self.assertLess(producer.written, self.size)
        _t(client).resumeProducing()
        await client.complete
        self.assertEqual(
            (client.length, client.digest.hexdigest()), (self.size, self.sha)
        )
        await self.idle(store)

    @asyncTest
    async def test_clientGoneClosesFile(self) -> None:
        """
        A client that goes away mid-body stops the producer and closes the
        file.
        """
        store, port, _ = await self.start()
        await self.request(port)
        await self.stored(store)
        client = await self.connect(port, slow=True)
        _t(client).write(b"GET /big HTTP/1.1\r\nHost: disk.test\r\n\r\n")
        for _ in range(500):
            if store.producers and _openFiles(self.path):
                break
            await sleep(0.01)
        self.assertEqual(len(_openFiles(self.path)), 1)
        _t(client).abortConnection()
        await client.closed
        await self.idle(store)
        self.assertEqual(len(store), 1)

    @asyncTest
    async def test_corruptBodyAbortsAndRemoves(self) -> None:
        """
        A stored body found altered as it is streamed cuts the response
        (the client gets less than its C{Content-Length} and the connection
        closes) and removes the entry: the next request is a miss.
        """
        store, port, backend = await self.start()
        await self.request(port)
        await self.stored(store)
        (relative,) = [
            os.path.relpath(os.path.join(d, n), self.path)
            for d, _, names in os.walk(self.path)
            for n in names
            if not d.endswith(TEMPORARY)
        ]
        path = os.path.join(self.path, relative)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 2)
            f.write(b"\0corrupt\0")
        client = await self.connect(port)
        _t(client).write(b"GET /big HTTP/1.1\r\nHost: disk.test\r\n\r\n")
        await client.closed
        self.assertIn(b"X-Cache: HIT", client.head)
        self.assertLess(client.length, self.size)
        self.assertEqual((len(store), store.stats["corrupt"]), (0, 1))
        for _ in range(200):
            if not os.path.exists(path):
                break
            await sleep(0.01)
        self.assertFalse(os.path.exists(path))
        again = await self.request(port)
        self.assertIn(b"X-Cache: MISS", again.head)
        self.assertEqual(len(backend.requests), 2)
        await self.idle(store)
        self.flushLoggedErrors()


class StreamingOverHTTP2Tests(_StreamingCase):
    """
    The same proxy, served over TLS and HTTP/2: a hit's body and a range
    of it are streamed from disk to an HTTP/2 stream.
    """

    def setUp(self) -> None:
        super().setUp()
        self.files = TLSFiles(self)
        self.patch(
            sys.modules[__name__], "ProxyService", proxyServiceOverTLS(self.files)
        )

    async def h2Get(self, port: int, headers: list[tuple[str, str]]) -> H2Response:
        request = H2Request(path="/big", headers=headers)
        (response,) = await inThread(h2Exchange, port, self.files.caPath, [request])
        assert isinstance(response, H2Response)
        return response

    @asyncTest
    async def test_hitStreamedOverHTTP2(self) -> None:
        """
        A miss then a hit, whole, and a range of it, over HTTP/2.
        """
        store, port, backend = await self.start()
        miss = await self.h2Get(port, [])
        self.assertEqual((miss.status, miss.header(b"x-cache")), (200, [b"MISS"]))
        await self.stored(store)
        hit = await self.h2Get(port, [])
        self.assertEqual((hit.status, hit.header(b"x-cache")), (200, [b"HIT"]))
        self.assertEqual(hashlib.sha256(hit.body).hexdigest(), self.sha)
        ranged = await self.h2Get(port, [("range", "bytes=-100")])
        self.assertEqual((ranged.status, ranged.body), (206, self.body[-100:]))
        self.assertEqual(store.stats["streamed"], 2)
        self.assertEqual(len(backend.requests), 1)
        await self.idle(store)
