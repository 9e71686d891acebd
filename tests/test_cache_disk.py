"""
Tests of the disk cache store (L{twisted_rproxy.cache.diskstore}): its
index, bounds and LRU order, atomic files and what it does with files that
are not whole, on a memory clock with file operations run at once; then
real proxies (L{ProxyService}) with a disk cache, restarted and sharing a
directory, and a real process killed while it writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, sleep
from tests.loopback import Reply
from twisted_rproxy.cache import DiskStore, MemoryStore, buildStores
from twisted_rproxy.cache.diskbody import ProducingStopped
from twisted_rproxy.cache.diskformat import (
    TEMPORARY,
    entryFile,
    writeEntryFile,
)
from twisted_rproxy.cache.diskindex import DISK_BLOCK, diskUsage
from twisted_rproxy.cache.policy import parseCacheControl
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    ConfigError,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    parseConfig,
)
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.service import ProxyService


def _runNow(function: Any, *args: Any) -> Deferred[Any]:
    return maybeDeferred(function, *args)


def _entry(
    key: bytes,
    body: bytes = b"body",
    variant: bytes = b"",
    maxAge: int = 60,
    now: float = 0.0,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> CacheEntry:
    headers = [
        (b"Cache-Control", b"max-age=%d" % (maxAge,)),
        (b"Content-Length", b"%d" % (len(body),)),
        *(extra or []),
    ]
    return CacheEntry(
        key=key,
        variant=variant,
        varyOn=(b"accept-language",) if variant else (),
        status=200,
        reason=b"OK",
        headers=headers,
        body=body,
        responseTime=now,
        initialAge=0.0,
        lifetime=float(maxAge),
        cacheControl=parseCacheControl([headers[0][1]]),
    )


def _dead() -> int:
    """
    The id of a process that has ended.
    """
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


class DiskStoreTests(SynchronousTestCase):
    """
    L{DiskStore} on a memory clock, its file operations run at once.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.path = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", self.path]))

    def store(self, maxSize: int = 1 << 20, **options: Any) -> DiskStore:
        config = CacheConfig(name="main", maxSize=maxSize, store="disk", path=self.path)
        store = DiskStore(self.clock, config, _runNow, **options)
        self.successResultOf(store.loaded)
        return store

    def put(self, store: DiskStore, entry: CacheEntry) -> bool:
        result = store.put(entry)
        return result if isinstance(result, bool) else self.successResultOf(result)

    def get(self, store: DiskStore, key: bytes) -> list[CacheEntry]:
        result = store.get(key)
        return result if isinstance(result, list) else self.successResultOf(result)

    def files(self) -> list[str]:
        found = []
        for directory, _, names in os.walk(self.path):
            for name in names:
                found.append(os.path.relpath(os.path.join(directory, name), self.path))
        return sorted(found)

    def test_storesAndReads(self) -> None:
        """
        A stored entry is read back whole, head and body, from one file.
        """
        store = self.store()
        entry = _entry(b"GET http://a/x", b"hello" * 1000, now=1000)
        self.assertTrue(self.put(store, entry))
        self.assertEqual(self.files(), [entryFile(entry.key, b"")])
        (got,) = self.get(store, entry.key)
        self.assertEqual(
            (got.key, got.status, got.headers, got.body, got.lifetime),
            (entry.key, 200, entry.headers, entry.body, 60.0),
        )
        self.assertEqual(got.cacheControl, entry.cacheControl)
        self.assertEqual(len(store), 1)
        self.assertEqual(
            store.size,
            diskUsage(os.path.getsize(os.path.join(self.path, self.files()[0]))),
        )
        self.assertEqual(self.get(store, b"GET http://a/other"), [])
        self.assertEqual((store.stats["hits"], store.stats["misses"]), (1, 1))

    def test_smallEntriesBoundedOnDisk(self) -> None:
        """
        Entries are counted for the blocks their files take, not their
        bytes alone: a store of many small entries keeps what it takes on
        disk (the files' blocks as the file system counts them) within
        C{max_size}, and its directories (one level of at most 256) add a
        few blocks each.
        """
        maxSize = 4 << 20
        store = self.store(maxSize=maxSize)
        for n in range(2000):
            self.put(store, _entry(b"GET http://a/%d" % (n,), b"x" * 100, now=1000))
        self.assertLess(len(store), 2000)
        self.assertLessEqual(store.size, maxSize)
        files = directories = 0
        for directory, names, fileNames in os.walk(self.path):
            directories += sum(
                os.stat(os.path.join(directory, n)).st_blocks * 512 for n in names
            )
            files += sum(
                os.stat(os.path.join(directory, n)).st_blocks * 512 for n in fileNames
            )
        self.assertLessEqual(files, maxSize)
        self.assertLessEqual(directories, 257 * 4 * DISK_BLOCK)

    def test_boundedLeastRecentlyUsedFirst(self) -> None:
        """
        The files take at most C{max_size}: the least recently used entry
        goes (file and all) when a new one needs room.
        """
        probe = self.store(maxSize=1 << 20)
        self.put(probe, _entry(b"k0", b"x" * 1000, now=1000))
        one = probe.size
        probe.remove(b"k0")
        store = self.store(maxSize=3 * one)
        for name in (b"k1", b"k2", b"k3"):
            self.assertTrue(self.put(store, _entry(name, b"x" * 1000, now=1000)))
        self.get(store, b"k1")
        self.put(store, _entry(b"k4", b"x" * 1000, now=1000))
        self.assertEqual(sorted(store.keys()), [b"k1", b"k3", b"k4"])
        self.assertLessEqual(store.size, store.maxSize)
        self.assertNotIn(entryFile(b"k2", b""), self.files())
        self.assertEqual(len(self.files()), 3)
        self.assertEqual(store.stats["evicted"], 1)
        store.setMaxSize(one)
        self.assertEqual(list(store.keys()), [b"k4"])

    def test_refusesWhatCannotBeStored(self) -> None:
        """
        A body over C{max_object_size}, an entry larger than the store and
        a response of no further use are not stored.
        """
        store = self.store(maxSize=2000)
        self.assertFalse(self.put(store, _entry(b"big", b"x" * 3000, now=1000)))
        self.assertFalse(self.put(store, _entry(b"old", b"x", maxAge=0, now=1000)))
        self.assertEqual((self.files(), len(store)), ([], 0))

    def test_indexRebuiltOnStart(self) -> None:
        """
        A new store on the same directory (a restart) indexes the entries
        found there, the oldest as the least recently used.
        """
        store = self.store()
        for name in (b"a", b"b", b"c"):
            self.put(store, _entry(name, name * 10, now=1000))
        os.utime(os.path.join(self.path, entryFile(b"b", b"")), (1, 1))
        again = self.store()
        self.assertEqual((len(again), again.size), (3, store.size))
        self.assertEqual(self.get(again, b"c")[0].body, b"c" * 10)
        again.setMaxSize(again.size - 1)
        self.assertEqual(sorted(again.keys()), [b"a", b"c"])

    def test_expiredRemovedOnStart(self) -> None:
        """
        Entries past their useful life are removed when found.
        """
        store = self.store()
        self.put(store, _entry(b"short", maxAge=10, now=1000))
        self.put(store, _entry(b"long", maxAge=1000, now=1000))
        self.clock.advance(20)
        again = self.store()
        self.assertEqual(list(again.keys()), [b"long"])
        self.assertEqual(len(self.files()), 1)
        self.assertEqual(self.get(store, b"short"), [])

    def test_partialWritesNotServedAndRemoved(self) -> None:
        """
        What a crash mid-write leaves (a temporary file of a process gone;
        a truncated file under an entry's name) is never served, and is
        removed at start.
        """
        store = self.store()
        entry = _entry(b"k", b"x" * 5000, now=1000)
        self.put(store, entry)
        name = os.path.join(self.path, entryFile(b"k", b""))
        with open(name, "r+b") as f:
            f.truncate(os.path.getsize(name) - 100)
        temporary = os.path.join(self.path, TEMPORARY, f"{_dead()}-abcd.tmp")
        with open(temporary, "wb") as f:
            f.write(b"RPXDISK1 partial")
        again = self.store()
        self.assertEqual(self.get(again, b"k"), [])
        self.assertEqual(self.files(), [])
        self.assertEqual(again.stats["corrupt"], 1)

    def test_corruptFileNotServed(self) -> None:
        """
        A file whose body was altered is a miss when read, and removed.
        """
        store = self.store()
        self.put(store, _entry(b"k", b"x" * 5000, now=1000))
        name = os.path.join(self.path, entryFile(b"k", b""))
        with open(name, "r+b") as f:
            f.seek(-200, os.SEEK_END)
            f.write(b"y")
        self.assertEqual(self.get(store, b"k"), [])
        self.assertEqual((self.files(), len(store)), ([], 0))
        self.assertEqual(store.stats["corrupt"], 1)

    def test_variantsRemoveAndPurge(self) -> None:
        """
        The variants of a key are read together; C{remove} takes every
        variant, C{purge} every key of a prefix, files included.
        """
        store = self.store()
        for variant in (b"fr", b"de"):
            self.put(store, _entry(b"GET /a", variant, variant, now=1000))
        self.put(store, _entry(b"GET /b", now=1000))
        self.put(store, _entry(b"POST /c", now=1000))
        bodies = sorted(e.body for e in self.get(store, b"GET /a"))
        self.assertEqual(bodies, [b"de", b"fr"])
        self.assertEqual(self.successResultOf(store.remove(b"GET /a")), 2)
        self.assertEqual(self.get(store, b"GET /a"), [])
        self.assertEqual(self.successResultOf(store.purge(b"GET ")), 1)
        self.assertEqual(list(store.keys()), [b"POST /c"])
        self.assertEqual(len(self.files()), 1)

    def test_tooManyVariants(self) -> None:
        """
        Past C{maxVariants}, a key's least recently used variants go.
        """
        store = self.store(maxVariants=2)
        for variant in (b"1", b"2", b"3"):
            self.put(store, _entry(b"k", variant, variant, now=1000))
        self.assertEqual(sorted(e.variant for e in self.get(store, b"k")), [b"2", b"3"])
        self.assertEqual(len(self.files()), 2)

    def test_resizedKeepsBody(self) -> None:
        """
        After a revalidation, the new head replaces the old in the file;
        the body stays.
        """
        store = self.store()
        entry = _entry(b"k", b"body" * 100, now=1000)
        self.put(store, entry)
        entry.headers = [*entry.headers, (b"ETag", b'"new"')]
        self.successResultOf(store.resized(entry))  # type: ignore[arg-type]
        (got,) = self.get(self.store(), b"k")
        self.assertIn((b"ETag", b'"new"'), got.headers)
        self.assertEqual(got.body, b"body" * 100)
        self.assertEqual(
            store.size,
            diskUsage(os.path.getsize(os.path.join(self.path, self.files()[0]))),
        )

    def test_sharedDirectory(self) -> None:
        """
        Two stores on one directory (two workers): what one stores, the
        other finds; what one removes, the other no longer serves.
        """
        a, b = self.store(), self.store()
        self.put(a, _entry(b"k", b"from a", now=1000))
        self.assertEqual([e.body for e in self.get(b, b"k")], [b"from a"])
        self.assertEqual(len(b), 1)
        self.successResultOf(a.remove(b"k"))
        self.assertEqual(self.get(b, b"k"), [])
        self.assertEqual(len(b), 0)

    def test_rescanForgetsWhatOthersRemoved(self) -> None:
        """
        A rescan drops from the index the entries another process removed,
        so that the bytes counted are those on disk.
        """
        a, b = self.store(), self.store()
        self.put(a, _entry(b"k", now=1000))
        self.get(b, b"k")
        self.successResultOf(a.remove(b"k"))
        self.clock.advance(1)
        self.successResultOf(b.rescan())
        self.assertEqual((len(b), b.size), (0, 0))

    def test_purgeWhileWriting(self) -> None:
        """
        An entry whose write ends after a purge of its key is not kept.
        """
        pending: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

        def later(function: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append((d, function, args))
            return d

        config = CacheConfig(name="main", store="disk", path=self.path)
        store = DiskStore(self.clock, config, later)
        while pending:
            d, function, args = pending.pop(0)
            d.callback(function(*args))
        writing = store.put(_entry(b"k", now=1000))
        assert isinstance(writing, Deferred)
        store.purge(b"k")
        while pending:
            d, function, args = pending.pop(0)
            d.callback(function(*args))
        self.assertFalse(self.successResultOf(writing))
        self.assertEqual((len(store), self.files()), (0, []))

    def test_unusableDirectory(self) -> None:
        """
        A path that cannot be a directory makes every lookup a miss and
        every store fail, counted as errors; nothing raises.
        """
        blocker = os.path.join(self.path, "file")
        open(blocker, "w").close()
        config = CacheConfig(name="main", store="disk", path=blocker)
        store = DiskStore(self.clock, config, _runNow)
        self.successResultOf(store.loaded)
        self.assertFalse(self.put(store, _entry(b"k", now=1000)))
        self.assertEqual(self.get(store, b"k"), [])
        self.assertGreaterEqual(store.stats["errors"], 2)
        self.flushLoggedErrors()

    def test_bodyProducer(self) -> None:
        """
        C{openBody} streams a stored body (or a range of it) to a consumer
        a chunk at a time, pausing when asked; stopping closes the file.
        """
        store = self.store(maxSize=4 << 20)
        body = os.urandom(600 * 1024)
        entry = _entry(b"k", body, now=1000)
        self.put(store, entry)
        producer = self.successResultOf(store.openBody(entry))
        assert producer is not None
        transport = StringTransport()
        done = producer.startProducing(transport, 10, len(body) - 20)
        self.successResultOf(done)
        self.assertEqual(transport.value(), body[10:-10])
        self.assertIsNone(transport.producer)
        self.assertIsNone(producer._file)

        producer = self.successResultOf(store.openBody(entry))
        assert producer is not None
        transport = StringTransport()
        transport.registerProducer = lambda p, s: p.pauseProducing()  # type: ignore[method-assign]
        stopping = producer.startProducing(transport)
        self.assertNoResult(stopping)
        producer.stopProducing()
        self.failureResultOf(stopping, ProducingStopped)
        self.assertIsNone(producer._file)
        store.remove(b"k")
        self.assertIsNone(self.successResultOf(store.openBody(entry)))

    def test_buildStoresKeepsDiskStore(self) -> None:
        """
        A reload keeps the disk store of an unchanged C{path}, given the
        new bound; another path gets a new store.
        """
        config = CacheConfig(name="main", store="disk", path=self.path)
        stores = buildStores({"main": config}, reactor=reactor)
        store = stores["main"]
        self.assertIsInstance(store, DiskStore)
        smaller = CacheConfig(name="main", store="disk", path=self.path, maxSize=1000)
        again = buildStores({"main": smaller}, stores, reactor=reactor)
        self.assertIs(again["main"], store)
        self.assertEqual(store.maxSize, 1000)
        other = CacheConfig(name="main", store="disk", path=self.path + "/other")
        self.assertIsNot(
            buildStores({"main": other}, again, reactor=reactor)["main"], store
        )
        memory = CacheConfig(name="main")
        self.assertIsInstance(buildStores({"main": memory}, again)["main"], MemoryStore)
        self.assertRaises(ValueError, buildStores, {"main": config})


class DiskConfigTests(SynchronousTestCase):
    """
    C{store = "disk"} and C{path} in C{[caches.NAME]}.
    """

    def parse(self, cache: dict[str, Any], base: str = "/") -> Config:
        return parseConfig(
            {
                "server": {"listen": ["tcp:8080"]},
                "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
                "caches": {"main": cache},
                "routes": [{"path": "/", "pool": "app", "cache": "main"}],
            },
            "rproxy.toml",
            base,
        )

    def error(self, cache: dict[str, Any], base: str = "/") -> str:
        return str(self.assertRaises(ConfigError, self.parse, cache, base))

    def test_pathResolved(self) -> None:
        """
        A relative C{path} is taken from the configuration's directory; one
        that does not exist yet is fine if it can be created.
        """
        base = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, base)
        config = self.parse({"store": "disk", "path": "cache/main"}, base)
        self.assertEqual(
            config.caches["main"].path, os.path.join(base, "cache", "main")
        )
        self.assertEqual(config.caches["main"].store, "disk")

    def test_errors(self) -> None:
        """
        Each mistake names the file and key.
        """
        self.assertIn(
            'rproxy.toml: caches.main.path: is needed with store = "disk"',
            self.error({"store": "disk"}),
        )
        self.assertIn(
            'caches.main.path: is only for store = "disk"',
            self.error({"path": "/tmp"}),
        )
        self.assertIn(
            'caches.main.store: must be "memory", "redis" or "disk"',
            self.error({"store": "ssd"}),
        )
        base = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, base)
        os.chmod(base, 0o500)
        self.addCleanup(os.chmod, base, 0o700)
        if os.access(base, os.W_OK):
            self.skipTest("running as a user who may write anywhere")
        self.assertIn(
            "caches.main.path: directory",
            self.error({"store": "disk", "path": "sub"}, base),
        )
        self.assertIn(
            "cannot be created", self.error({"store": "disk", "path": "sub"}, base)
        )
        self.assertIn(
            "is not writable", self.error({"store": "disk", "path": "."}, base)
        )


class DiskProxyTests(LoopbackTestCase):
    """
    Real L{ProxyService}s with a disk cache in front of a real backend.
    """

    timeout = 60

    def setUp(self) -> None:
        super().setUp()
        self.path = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", self.path]))

    async def startCaching(self, backendPort: int) -> tuple[ProxyService, int]:
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backendPort),), retries=0
                )
            },
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={
                "main": CacheConfig(
                    name="main",
                    statusHeader=True,
                    store="disk",
                    path=self.path,
                    maxObjectSize=4 << 20,
                )
            },
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        store = service.cacheStores["main"]
        assert isinstance(store, DiskStore)
        self.addCleanup(store.close)
        await store.loaded
        listening = await service.whenListening()
        return service, listening[0].getHost().port

    async def fetch(self, port: int, path: str) -> tuple[bytes, bytes]:
        response = await self.httpClient().get(
            f"http://127.0.0.1:{port}{path}", headers={b"Host": [b"disk.test"]}
        )
        body = await response.content()
        return (response.headers.getRawHeaders(b"x-cache") or [b""])[0], body

    async def cachingBackend(self) -> Any:
        return await self.startBackend(
            lambda r: Reply(
                headers=[(b"Cache-Control", b"max-age=60")],
                body=r.target * 1000,
            )
        )

    @asyncTest
    async def test_hitAfterRestart(self) -> None:
        """
        A response stored by one proxy process is a hit for the next one
        on the same directory; the backend is asked once.
        """
        backend = await self.cachingBackend()
        first, port = await self.startCaching(backend.portNumber)
        self.assertEqual(await self.fetch(port, "/a"), (b"MISS", b"/a" * 1000))
        store = first.cacheStores["main"]
        assert isinstance(store, DiskStore)
        for _ in range(200):
            if len(store):
                break
            await sleep(0.01)
        await first.stopService()
        await store.close()
        _, port = await self.startCaching(backend.portNumber)
        self.assertEqual(await self.fetch(port, "/a"), (b"HIT", b"/a" * 1000))
        self.assertEqual(len(backend.requests), 1)

    @asyncTest
    async def test_twoProxiesShareDirectory(self) -> None:
        """
        Two proxies on one directory: what one stores is a hit at the
        other.
        """
        backend = await self.cachingBackend()
        a, portA = await self.startCaching(backend.portNumber)
        _, portB = await self.startCaching(backend.portNumber)
        self.assertEqual((await self.fetch(portA, "/s"))[0], b"MISS")
        store = a.cacheStores["main"]
        for _ in range(200):
            if len(store):  # type: ignore[arg-type]
                break
            await sleep(0.01)
        self.assertEqual(await self.fetch(portB, "/s"), (b"HIT", b"/s" * 1000))
        self.assertEqual(len(backend.requests), 1)


_WRITER = textwrap.dedent(
    """
    import sys, time
    from twisted_rproxy.cache.diskformat import writeEntryFile

    def body():
        yield b"x" * 65536
        sys.stdout.write("writing\\n")
        sys.stdout.flush()
        time.sleep(30)
        yield b"y"

    writeEntryFile(sys.argv[1], sys.argv[2], sys.argv[3].encode(), body())
    """
)


class CrashTests(SynchronousTestCase):
    """
    A real process killed while it writes an entry.
    """

    def test_killedMidWrite(self) -> None:
        """
        A process killed mid-write leaves no entry under its name; the
        next store on the directory serves none and removes the temporary
        file.
        """
        path = tempfile.mkdtemp()
        self.addCleanup(lambda: subprocess.call(["rm", "-rf", path]))
        relative = entryFile(b"k", b"")
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, path, relative, "prefix"],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.getcwd()},
        )
        try:
            assert writer.stdout is not None
            self.assertEqual(writer.stdout.readline(), b"writing\n")
            self.assertEqual(len(os.listdir(os.path.join(path, TEMPORARY))), 1)
        finally:
            writer.kill()
            writer.wait()
            if writer.stdout is not None:
                writer.stdout.close()
        self.assertFalse(os.path.exists(os.path.join(path, relative)))
        clock = Clock()
        config = CacheConfig(name="main", store="disk", path=path)
        store = DiskStore(clock, config, _runNow)
        self.successResultOf(store.loaded)
        result = store.get(b"k")
        self.assertEqual(self.successResultOf(result), [])  # type: ignore[arg-type]
        self.assertEqual(os.listdir(os.path.join(path, TEMPORARY)), [])
        # The same function, not killed, leaves a whole file under the name.
        writeEntryFile(path, relative, b"p", [b"body"])
        self.assertEqual(os.listdir(os.path.join(path, TEMPORARY)), [])
