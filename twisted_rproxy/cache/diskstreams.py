"""
The disk cache store's bodies streamed both ways
(L{twisted_rproxy.cache.diskstore}): L{BodyWriter} appends the body of a
response to its entry's temporary file as it arrives, in order, a write in
the thread pool at a time, and ends it with the entry's head and a rename,
atomically; L{StreamedBodies} is the store's side of it, and of the
bodies it serves from their files (L{twisted_rproxy.cache.diskbody}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.cache.diskbody import BodyProducer, DiskEntry, RunInThread
from twisted_rproxy.cache.diskformat import (
    CorruptEntry,
    appendPieces,
    discardEntryFile,
    encodePrefix,
    entryFile,
    fileSize,
    finishEntryFile,
    startEntryFile,
)
from twisted_rproxy.cache.diskindex import DiskIndex, RemovalLog
from twisted_rproxy.config import CacheConfig
from twisted_rproxy.interfaces import ICacheBodyWriter
from twisted_rproxy.messages import CacheEntry

__all__ = ["PREFIX_ROOM", "WRITE_BACKLOG", "BodyWriter", "StreamedBodies"]

#: The bytes left for an entry's head beyond what it takes when its body
#: starts (its C{Content-Length} and times are only known at the end).
PREFIX_ROOM = 512

#: The most bytes of a body arriving that may wait for the disk: past it,
#: the disk cannot keep up, and the response is not stored.
WRITE_BACKLOG = 16 * 1024 * 1024


class _Store(Protocol):
    """
    What L{StreamedBodies} uses of the L{DiskStore} it is part of.
    """

    _run: RunInThread
    _clock: IReactorTime
    _removals: RemovalLog
    path: str
    index: DiskIndex
    config: CacheConfig
    maxSize: int
    closed: bool
    stats: dict[str, int]
    producers: set[BodyProducer]

    def _inThread(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]: ...

    def _complain(self, kind: str, message: str) -> None: ...

    def _removeFile(self, relative: str) -> None: ...

    def _maybeRescan(self) -> None: ...

    def _usefulFor(self, entry: CacheEntry, now: float) -> float: ...

    def _written(
        self,
        result: int | Failure,
        key: bytes,
        variant: bytes,
        relative: str,
        usefulUntil: float,
        varyOn: tuple[bytes, ...],
        started: int,
    ) -> bool: ...

    def _opened(
        self, producer: BodyProducer | None, relative: str
    ) -> BodyProducer | None: ...

    def _openFailed(
        self, failure: Failure, entry: CacheEntry, relative: str
    ) -> None: ...

    def _bodyCorrupt(self, key: bytes, variant: bytes, relative: str) -> None: ...

    def _prepare(
        self, entry: CacheEntry, bodyLength: int, padTo: int = 0
    ) -> tuple[bytes, float] | None: ...

    def _finishWriter(
        self, writer: BodyWriter, entry: CacheEntry
    ) -> bool | Deferred[bool]: ...


class StreamedBodies:
    """
    The part of L{twisted_rproxy.cache.diskstore.DiskStore} that streams
    bodies: from their files to clients (L{openBody}), and from responses
    to new files (L{openWriter}).
    """

    def openBody(self: _Store, entry: CacheEntry) -> Deferred[BodyProducer | None]:
        """
        A producer of C{entry}'s stored body, read from its file a chunk at
        a time in the thread pool, for a body too large to hold in memory.
        A body found not whole while streamed is removed.

        @return: A Deferred firing with the L{BodyProducer} (its file
            open, so that an eviction does not cut it short), or L{None} if
            the entry is no longer stored (or, for a L{DiskEntry}, its file
            holds another body now, or is broken).
        """
        relative = entryFile(entry.key, entry.variant)
        expected = None
        if isinstance(entry, DiskEntry):
            expected = (entry.bodyLength, entry.bodyCRC)
        elif self.index.record(entry.key, entry.variant) is None:
            return succeed(None)
        opening = self._inThread(
            BodyProducer.open, self._run, self.path, relative, expected
        )
        return opening.addCallbacks(
            self._opened, self._openFailed, (relative,), errbackArgs=(entry, relative)
        )

    def _opened(
        self: _Store, producer: BodyProducer | None, relative: str
    ) -> BodyProducer | None:
        if producer is not None:
            self.stats["streamed"] += 1
            self.producers.add(producer)
            producer.onClose = self.producers.discard
            producer.onCorrupt = lambda p: self._bodyCorrupt(
                p.head.key, p.head.variant, relative
            )
        return producer

    def _openFailed(
        self: _Store, failure: Failure, entry: CacheEntry, relative: str
    ) -> None:
        if failure.check(CorruptEntry):
            self._bodyCorrupt(entry.key, entry.variant, relative)
        else:
            self.stats["errors"] += 1
            self._complain("read", f"a body could not be opened ({failure.value})")
        return None

    def _bodyCorrupt(self: _Store, key: bytes, variant: bytes, relative: str) -> None:
        self.stats["corrupt"] += 1
        self._complain("corrupt", "a body was not whole: its entry removed")
        record = self.index.record(key, variant)
        if record is not None:
            self.index.drop(record)
        self._removeFile(relative)

    def _prepare(
        self: _Store, entry: CacheEntry, bodyLength: int, padTo: int = 0
    ) -> tuple[bytes, float] | None:
        # The prefix of entry's file and until when it is of use; None if
        # it is not to be stored.
        if bodyLength > self.config.maxObjectSize:
            return None
        now = self._clock.seconds()
        seconds = self._usefulFor(entry, now)
        if seconds <= 0:
            return None
        try:
            prefix = encodePrefix(entry, now + seconds, padTo)
        except ValueError:
            return None
        if fileSize(len(prefix), bodyLength) > self.maxSize:
            return None
        return prefix, now + seconds

    def openWriter(self: _Store, entry: CacheEntry) -> BodyWriter | None:
        """
        A writer of the body of the response that will become C{entry}
        (its head as known when the body starts), which appends the body
        to a temporary file as it arrives, in the thread pool, and once
        finished writes its head and renames it, as L{put} does.

        @return: The writer, or L{None} if such an entry is not stored.
        """
        self._maybeRescan()
        prepared = self._prepare(entry, 0)
        if prepared is None or self.closed:
            return None
        reserve = len(prepared[0]) + PREFIX_ROOM
        return BodyWriter(
            self._inThread,
            self.path,
            reserve,
            min(self.config.maxObjectSize, self.maxSize - fileSize(reserve, 0)),
            WRITE_BACKLOG,
            self._finishWriter,
        )

    def _finishWriter(
        self: _Store, writer: BodyWriter, entry: CacheEntry
    ) -> bool | Deferred[bool]:
        if writer.discarded:
            if writer.failure is not None:
                self.stats["errors"] += 1
                self._complain(
                    "write",
                    f"a body could not be written ({writer.failure.getErrorMessage()})",
                )
            return False
        prepared = self._prepare(entry, writer.length, writer.reserve)
        if prepared is None or len(prepared[0]) != writer.reserve:
            writer.discard()
            return False
        relative = entryFile(entry.key, entry.variant)
        started = self._removals.writeStarted()
        writing = writer.commit(relative, prepared[0])
        return writing.addBoth(
            self._written,
            entry.key,
            entry.variant,
            relative,
            prepared[1],
            entry.varyOn,
            started,
        )


@implementer(ICacheBodyWriter)
class BodyWriter:
    """
    The body of a new entry, appended to its temporary file as it arrives,
    in order, one write in a thread at a time (those that arrive meanwhile
    are written together next); finished with the entry's head by the
    store (L{commit}), or discarded.

    @ivar reserve: The room left for the entry's prefix.
    @ivar maxLength: The longest body it takes: past it, it discards.
    @ivar backlog: The most bytes waiting for the disk: past it (the disk
        cannot keep up), it discards.
    @ivar length: The bytes of body written to it.
    @ivar discarded: Whether it was discarded (nothing is left on disk).
    @ivar failure: What failed, if a file operation did.
    """

    def __init__(
        self,
        runInThread: RunInThread,
        root: str,
        reserve: int,
        maxLength: int,
        backlog: int,
        finisher: Callable[[BodyWriter, CacheEntry], bool | Deferred[bool]],
    ) -> None:
        """
        @param runInThread: Runs the blocking file operations.
        @param root: The cache's directory.
        @param finisher: What L{finish} hands the complete entry to (the
            store, which calls L{commit} or L{discard}).
        """
        self._run = runInThread
        self._root = root
        self.reserve = reserve
        self.maxLength = maxLength
        self.backlog = backlog
        self.length = 0
        self.discarded = False
        self.failure: Failure | None = None
        self._finisher = finisher
        self._file: tuple[str, BinaryIO] | None = None
        self._queue: list[bytes] = []
        self._waiting = 0
        self._checksum = 0
        self._busy = True
        self._drained: Deferred[None] | None = None
        runInThread(startEntryFile, root, reserve).addBoth(self._opened)

    def _opened(self, result: tuple[str, BinaryIO] | Failure) -> None:
        self._busy = False
        if isinstance(result, Failure):
            self._failed(result)
            return
        self._file = result
        if self.discarded:
            self._discardFile()
            return
        self._pump()

    def write(self, data: bytes) -> None:
        if self.discarded or not data:
            return
        self.length += len(data)
        self._waiting += len(data)
        if self.length > self.maxLength or self._waiting > self.backlog:
            self.discard()
            return
        self._queue.append(data)
        self._pump()

    def _pump(self) -> None:
        if self._busy or self._file is None:
            return
        if not self._queue:
            drained, self._drained = self._drained, None
            if drained is not None:
                drained.callback(None)
            return
        pieces, self._queue = self._queue, []
        self._busy = True
        writing = self._run(appendPieces, self._file[1], pieces, self._checksum)
        writing.addBoth(self._appended, sum(len(p) for p in pieces))

    def _appended(self, result: int | Failure, size: int) -> None:
        self._busy = False
        self._waiting -= size
        if isinstance(result, Failure):
            self._failed(result)
            return
        self._checksum = result
        if self.discarded:
            self._discardFile()
            return
        self._pump()

    def _failed(self, failure: Failure) -> None:
        if self.failure is None:
            self.failure = failure
        self.discard()

    def finish(self, entry: CacheEntry) -> bool | Deferred[bool]:
        return self._finisher(self, entry)

    def commit(self, relative: str, prefix: bytes) -> Deferred[int]:
        """
        Once every piece is written: the file's trailer and C{prefix}, and
        its rename to C{relative} (see L{finishEntryFile}).

        @return: A Deferred firing with the size of the file, or failing if
            it was discarded or could not be written (nothing is left).
        """
        return Deferred.fromCoroutine(self._commit(relative, prefix))

    async def _commit(self, relative: str, prefix: bytes) -> int:
        if not self.discarded and (self._busy or self._queue or self._file is None):
            drained: Deferred[None] = Deferred()
            self._drained = drained
            await drained
        if self.discarded or self._file is None:
            raise OSError(f"the body was not written ({self._reason()})")
        (temporary, f), self._file = self._file, None
        self.discarded = True
        size: int = await self._run(
            finishEntryFile,
            self._root,
            temporary,
            f,
            prefix,
            self.length,
            self._checksum,
            relative,
        )
        return size

    def _reason(self) -> str:
        if self.failure is not None:
            return self.failure.getErrorMessage()
        return "discarded"

    def discard(self) -> None:
        if self.discarded:
            return
        self.discarded = True
        self._queue = []
        self._discardFile()
        drained, self._drained = self._drained, None
        if drained is not None:
            drained.callback(None)

    def _discardFile(self) -> None:
        if self._file is not None and not self._busy:
            (temporary, f), self._file = self._file, None
            self._run(discardEntryFile, temporary, f)
