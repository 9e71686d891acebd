"""
L{DiskStore}: an L{ICacheStore} of files in a directory (C{store = "disk"},
C{path}), for caches larger than memory, as nginx's C{proxy_cache} is used.

Only the index is in memory: each entry's key, variant, file size, the
time until which it is of use and its C{Vary} names.  Bodies and heads are
on disk (L{twisted_rproxy.cache.diskformat} has the layout), read and
written in the reactor's thread pool, never in the reactor's thread.

  - Bounded: the files indexed take at most C{max_size} bytes; the least
    recently used go first.
  - Atomic: a file is written under a temporary name, flushed and renamed,
    so a crash never leaves a half entry to serve; the temporary files of a
    crashed process, and files that are not whole entries, are removed.
  - Restarts: on start, the index is rebuilt from the directory, in the
    background; meanwhile, a lookup of a key not yet indexed reads the
    key's files directly.
  - Several processes (workers, or proxies on one machine) may share the
    directory: each has its own index, learns of the others' entries when
    it looks up a key it does not know, and every C{RESCAN_INTERVAL}
    rebuilds its index from the directory (dropping what others removed).
    A file evicted or replaced by one while another reads it stays
    readable to that reader (POSIX).  A C{PURGE} of a key removes its files
    whoever wrote them; a purge by prefix removes the keys this process
    has indexed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.cache.diskbody import (
    STREAM_ABOVE,
    BodyProducer,
    DiskEntry,
    probeKey,
    readEntryFile,
)
from twisted_rproxy.cache.diskformat import (
    CorruptEntry,
    ScannedFile,
    StoredHead,
    copyWithHead,
    encodePrefix,
    entryFile,
    prepareDirectory,
    removeFile,
    removeKeyFiles,
    removeKeysFiles,
    scanDirectory,
    writeEntryFile,
)
from twisted_rproxy.cache.diskindex import DiskIndex, IndexRecord, RemovalLog
from twisted_rproxy.cache.diskstreams import (
    PREFIX_ROOM,
    WRITE_BACKLOG,
    StreamedBodies,
)
from twisted_rproxy.cache.policy import FreshnessLimits, currentAge, usefulFor
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.messages import CacheEntry

__all__ = [
    "DiskEntry",
    "MAX_VARIANTS",
    "PREFIX_ROOM",
    "STREAM_ABOVE",
    "WRITE_BACKLOG",
    "RESCAN_INTERVAL",
    "STALE_TEMPORARY",
    "VALIDATOR_RETENTION",
    "DiskStore",
]

_log = Logger()
_T = TypeVar("_T")

#: Seconds a response with a validator is kept past its usable life, so
#: that a revalidation answered 304 finds its body.
VALIDATOR_RETENTION = 3600.0

#: The most variants (C{Vary}) kept per primary key; past it, the least
#: recently used go.
MAX_VARIANTS = 32

#: Seconds between two rebuilds of the index from the directory.
RESCAN_INTERVAL = 600.0

#: Seconds after which a temporary file is removed even if the process
#: that writes it still runs.
STALE_TEMPORARY = 3600.0

#: Seconds between two warnings of the same kind.
_COMPLAINT_INTERVAL = 60.0

#: Runs a blocking function in a thread: C{(function, *args) -> Deferred}.
RunInThread = Callable[..., "Deferred[Any]"]


@implementer(ICacheStore)
class DiskStore(StreamedBodies):
    """
    The entries of one cache (C{[caches.NAME]} with C{store = "disk"}) as
    files under C{config.path}.

    @ivar config: The cache's configuration.
    @ivar path: The directory.
    @ivar maxSize: The most bytes of files indexed.
    @ivar index: The L{DiskIndex} of the entries this process knows of.
    @ivar loaded: Fires once the index has been rebuilt from the directory
        at start.
    @ivar stats: Operations counted: C{hits}, C{misses}, C{stored},
        C{evicted}, C{expired}, C{corrupt} (files found not whole and
        removed), C{errors} (reads and writes that failed), C{streamed}
        (bodies opened to be streamed from disk).
    @ivar streamAbove: Bodies longer than this are left on disk by C{get}
        (the entry is a L{DiskEntry}) and streamed when served.
    @ivar producers: The bodies being streamed from disk now.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: CacheConfig,
        runInThread: RunInThread | None = None,
        validatorRetention: float = VALIDATOR_RETENTION,
        maxVariants: int = MAX_VARIANTS,
        rescanInterval: float = RESCAN_INTERVAL,
        streamAbove: int = STREAM_ABOVE,
    ) -> None:
        """
        @param reactor: The clock, and unless C{runInThread} is given, the
            L{IReactorThreads} whose thread pool does the file operations.
        @param config: See L{config}; C{config.path} must be set.
        @param runInThread: Runs the blocking file operations (tests give
            one that runs them at once).
        @param validatorRetention: See L{VALIDATOR_RETENTION}.
        @param maxVariants: See L{MAX_VARIANTS}.
        @param rescanInterval: See L{RESCAN_INTERVAL}.
        @param streamAbove: See L{streamAbove}.
        @raise ValueError: Without C{config.path}.
        @raise TypeError: Without C{runInThread}, for a reactor without
            threads.
        """
        if not config.path:
            raise ValueError(f'caches.{config.name}.path: needed with store = "disk"')
        if runInThread is None:
            if not IReactorThreads.providedBy(reactor):
                raise TypeError("the disk store needs a reactor with threads")
            threads: Any = reactor

            def runInThread(function: Callable[..., _T], *args: Any) -> Deferred[_T]:
                return deferToThreadPool(
                    threads, threads.getThreadPool(), function, *args
                )

        self._run: RunInThread = runInThread
        self._clock = reactor
        self.path = config.path
        self.index = DiskIndex()
        self.validatorRetention = validatorRetention
        self.maxVariants = maxVariants
        self.rescanInterval = rescanInterval
        self.streamAbove = streamAbove
        self.producers: set[BodyProducer] = set()
        self.stats = dict.fromkeys(
            ("hits", "misses", "stored", "evicted", "expired", "corrupt", "errors"), 0
        )
        self.stats["streamed"] = 0
        self.reconfigure(config)
        #: Operations in thread, for L{close}.
        self._pending: set[Deferred[Any]] = set()
        #: Files being removed: a lookup must not learn of them again.
        self._removing: dict[str, int] = {}
        self._removals = RemovalLog()
        self._started = reactor.seconds()
        self._lastScan = self._started
        self._scanning: Deferred[None] | None = None
        self._complained: dict[str, float] = {}
        self.closed = False
        self.loaded = self.rescan()

    @property
    def size(self) -> int:
        """
        The bytes of the files indexed.
        """
        return self.index.size

    def __len__(self) -> int:
        return len(self.index)

    def status(self) -> dict[str, object]:
        """
        What the admin page shows of this store.
        """
        return {
            "store": "disk",
            "path": self.path,
            "entries": len(self),
            "bytes": self.size,
            "max_bytes": self.maxSize,
            "scanning": self._scanning is not None,
            "streaming": len(self.producers),
            **self.stats,
        }

    def reconfigure(self, config: CacheConfig) -> None:
        """
        Take the settings of C{config} (a reload's, of the same C{path}),
        evicting what no longer fits.
        """
        self.config = config
        self.limits = FreshnessLimits(
            heuristicFraction=config.heuristicFraction,
            heuristicMax=config.heuristicMax,
            defaultTTL=config.defaultTTL,
            staleWhileRevalidate=config.staleWhileRevalidate,
            staleIfError=config.staleIfError,
        )
        self.setMaxSize(config.maxSize)

    def setMaxSize(self, maxSize: int) -> None:
        """
        Change the bound, evicting what no longer fits.
        """
        self.maxSize = maxSize
        self._evict()

    def close(self) -> Deferred[None]:
        """
        Stop rescanning; fire once the file operations under way are done.
        """
        self.closed = True
        done: Deferred[Any] = DeferredList(list(self._pending))
        return done.addCallback(lambda _: None)

    # -- reading --------------------------------------------------------------

    def get(self, key: bytes) -> list[CacheEntry] | Deferred[list[CacheEntry]]:
        self._maybeRescan()
        now = self._clock.seconds()
        variants = self.index.variants(key)
        if not variants:
            probing = self._inThread(
                probeKey, self.path, key, now, self.streamAbove, self.openBody
            )
            return probing.addCallbacks(
                self._probed, self._readFailed, (key,), errbackArgs=(key,)
            )
        live = []
        for record in variants:
            if record.usefulUntil <= now:
                self.stats["expired"] += 1
                self._drop(record, True)
            else:
                self.index.touch(record)
                live.append(record)
        if not live:
            self.stats["misses"] += 1
            return []
        reading = self._inThread(self._readAll, [r.relative for r in live])
        return reading.addCallbacks(
            self._read, self._readFailed, (live,), errbackArgs=(key,)
        )

    def _readAll(
        self, relatives: list[str]
    ) -> list[tuple[StoredHead, CacheEntry] | None | Exception]:
        # In a thread: every variant of one key.
        results: list[tuple[StoredHead, CacheEntry] | None | Exception] = []
        for relative in relatives:
            try:
                results.append(
                    readEntryFile(self.path, relative, self.streamAbove, self.openBody)
                )
            except (CorruptEntry, OSError) as e:
                results.append(e)
        return results

    def _read(
        self,
        results: list[tuple[StoredHead, CacheEntry] | None | Exception],
        records: list[IndexRecord],
    ) -> list[CacheEntry]:
        entries = []
        for record, result in zip(records, results, strict=True):
            if isinstance(result, tuple):
                entries.append(result[1])
                continue
            if isinstance(result, CorruptEntry):
                self.stats["corrupt"] += 1
                self._complain("corrupt", "a file was not a whole entry: removed")
            elif isinstance(result, Exception):
                self.stats["errors"] += 1
                self._complain("read", f"an entry could not be read ({result})")
            # Gone (evicted by another process), or not readable.
            self.index.drop(record)
        self.stats["hits" if entries else "misses"] += 1
        return entries

    def _probed(
        self,
        result: tuple[list[tuple[str, StoredHead, CacheEntry]], int],
        key: bytes,
    ) -> list[CacheEntry]:
        found, removed = result
        entries = []
        now = self._clock.seconds()
        for relative, head, entry in found:
            if relative in self._removing or self._removals.removedSince(key):
                continue
            entries.append(entry)
            if self.index.record(key, head.variant) is None:
                self.index.add(
                    IndexRecord(
                        key,
                        head.variant,
                        relative,
                        head.fileSize,
                        head.usefulUntil,
                        head.varyOn,
                        now,
                    )
                )
        self.stats["hits" if entries else "misses"] += 1
        self._evict()
        return entries

    def _readFailed(self, failure: Failure, key: bytes) -> list[CacheEntry]:
        self.stats["errors"] += 1
        self._complain("read", f"a lookup failed ({failure.getErrorMessage()})")
        return []

    # -- writing --------------------------------------------------------------

    def put(self, entry: CacheEntry) -> bool | Deferred[bool]:
        self._maybeRescan()
        prepared = self._prepare(entry, len(entry.body))
        if prepared is None:
            return False
        relative = entryFile(entry.key, entry.variant)
        started = self._removals.writeStarted()
        writing = self._inThread(
            writeEntryFile, self.path, relative, prepared[0], entry.body
        )
        return writing.addBoth(
            self._written,
            entry.key,
            entry.variant,
            relative,
            prepared[1],
            entry.varyOn,
            started,
        )

    def _written(
        self,
        result: int | Failure,
        key: bytes,
        variant: bytes,
        relative: str,
        usefulUntil: float,
        varyOn: tuple[bytes, ...],
        started: int,
    ) -> bool:
        removed = self._removals.writeEnded(started, key)
        if isinstance(result, Failure):
            self.stats["errors"] += 1
            self._complain(
                "write", f"an entry could not be written ({result.getErrorMessage()})"
            )
            return False
        if removed:
            # Purged while it was written: what the purge meant to remove.
            self._removeFile(relative)
            return False
        self.index.add(
            IndexRecord(
                key,
                variant,
                relative,
                result,
                usefulUntil,
                varyOn,
                self._clock.seconds(),
            )
        )
        self.stats["stored"] += 1
        for extra in self.index.extraVariants(key, variant, self.maxVariants):
            self._removeFile(extra.relative)
        self._evict()
        return self.index.record(key, variant) is not None

    def resized(self, entry: CacheEntry) -> Deferred[None] | None:
        record = self.index.record(entry.key, entry.variant)
        if record is None:
            return None
        now = self._clock.seconds()
        seconds = self._usefulFor(entry, now)
        if seconds <= 0:
            self._drop(record, True)
            return None
        try:
            prefix = encodePrefix(entry, now + seconds)
        except ValueError:
            self._drop(record, True)
            return None
        copying = self._inThread(copyWithHead, self.path, record.relative, prefix)

        def copied(result: int | Failure) -> None:
            if self.index.record(entry.key, entry.variant) is not record:
                return
            if isinstance(result, Failure):
                self.stats["errors"] += 1
                self._complain(
                    "write", f"a head could not be updated ({result.getErrorMessage()})"
                )
                self._drop(record, False)
                return
            self.index.resize(record, result)
            record.usefulUntil = now + seconds
            self._evict()

        return copying.addBoth(copied)

    def _usefulFor(self, entry: CacheEntry, now: float) -> float:
        age = currentAge(entry.initialAge, entry.responseTime, now)
        return usefulFor(
            age,
            entry.lifetime,
            entry.cacheControl,
            entry.headers,
            self.limits,
            self.validatorRetention,
        )

    # -- removing ---------------------------------------------------------------

    def remove(self, key: bytes) -> int | Deferred[int]:
        self._removals.removed(key, False)
        for record in self.index.variants(key):
            self.index.drop(record)
        return self._inThread(removeKeyFiles, self.path, key)

    def purge(self, prefix: bytes) -> int | Deferred[int]:
        self._removals.removed(prefix, True)
        keys = [k for k in self.index.keys() if k.startswith(prefix)]
        for key in keys:
            for record in self.index.variants(key):
                self.index.drop(record)
        removing = self._inThread(removeKeysFiles, self.path, keys)
        return removing

    def keys(self) -> Iterator[bytes]:
        return iter(self.index.keys())

    # -- the index --------------------------------------------------------------

    def _drop(self, record: IndexRecord, removeFile: bool) -> None:
        if self.index.drop(record) and removeFile:
            self._removeFile(record.relative)

    def _removeFile(self, relative: str) -> None:
        removing = self._removing
        removing[relative] = removing.get(relative, 0) + 1

        def done(result: object) -> None:
            left = removing[relative] - 1
            if left:
                removing[relative] = left
            else:
                del removing[relative]

        self._inThread(removeFile, self.path, relative).addBoth(done)

    def _evict(self) -> None:
        for record in self.index.overflow(self.maxSize):
            self.stats["evicted"] += 1
            self._removeFile(record.relative)

    # -- rebuilding the index ---------------------------------------------------

    def _maybeRescan(self) -> None:
        if (
            self._scanning is None
            and not self.closed
            and self._clock.seconds() - self._lastScan >= self.rescanInterval
        ):
            self.rescan()

    def rescan(self) -> Deferred[None]:
        """
        Rebuild the index from the directory, in the background: add the
        entries found there (written by another process, or before a
        restart) as the least recently used, drop those whose files are
        gone, remove the files that are of no further use or not whole and
        the temporary files of writes that will never finish.

        @return: A Deferred that fires when done (never failing: a
            directory that cannot be read is logged).
        """
        if self._scanning is not None:
            return _chained(self._scanning)
        scanning = Deferred.fromCoroutine(self._rescan())
        self._scanning = scanning

        def done(_: object) -> None:
            self._scanning = None
            self._lastScan = self._clock.seconds()

        scanning.addBoth(done)
        return _chained(scanning)

    async def _rescan(self) -> None:
        began = self._clock.seconds()
        try:
            directories = await self._inThread(
                prepareDirectory, self.path, self._started, STALE_TEMPORARY, began
            )
        except Exception as e:
            self.stats["errors"] += 1
            self._complain("scan", f"the directory cannot be used ({e})")
            return
        found: list[ScannedFile] = []
        for directory in directories:
            if self.closed:
                return
            try:
                files, expired, corrupt = await self._inThread(
                    scanDirectory, self.path, directory, self._clock.seconds()
                )
            except Exception as e:
                self.stats["errors"] += 1
                self._complain("scan", f"{directory} could not be read ({e})")
                continue
            found.extend(files)
            self.stats["expired"] += expired
            self.stats["corrupt"] += corrupt
            if corrupt:
                self._complain("corrupt", f"{corrupt} files not whole: removed")
        self._merge(found, began)

    def _merge(self, found: list[ScannedFile], began: float) -> None:
        def skip(key: bytes, relative: str) -> bool:
            return relative in self._removing or self._removals.removedSince(key)

        self.index.merge(found, began, skip)
        self._evict()

    # -- helpers ------------------------------------------------------------------

    def _inThread(self, function: Callable[..., _T], *args: Any) -> Deferred[_T]:
        running: Deferred[_T] = self._run(function, *args)
        self._pending.add(running)

        def finished(result: _T | Failure) -> _T | Failure:
            self._pending.discard(running)
            return result

        return running.addBoth(finished)

    def _complain(self, kind: str, message: str) -> None:
        now = self._clock.seconds()
        if now - self._complained.get(kind, -_COMPLAINT_INTERVAL) < _COMPLAINT_INTERVAL:
            return
        self._complained[kind] = now
        _log.warn(
            "Cache {name} (disk, {path}): {message}",
            name=self.config.name,
            path=self.path,
            message=message,
        )


def _chained(d: Deferred[None]) -> Deferred[None]:
    """
    A Deferred that fires when C{d} does, leaving C{d}'s result alone.
    """
    result: Deferred[None] = Deferred()

    def fire(_: object) -> object:
        result.callback(None)
        return _

    d.addBoth(fire)
    return result
