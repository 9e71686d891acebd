"""
Bodies of the disk cache store (L{twisted_rproxy.cache.diskstore}) read
from disk, a chunk at a time, each chunk read in the thread pool: a body
of any size is never held in memory, and the reactor's thread never waits
for the disk.

  - L{readEntryFile} and L{probeKey} read entries (in a thread); a body
    larger than C{streamAbove} stays on disk: the entry is a L{DiskEntry},
    whose C{openBody} gives a L{BodyProducer}.
  - L{BodyProducer} writes a stored body (or ranges of it) to a consumer as
    the consumer asks for more, checking the body's CRC32 when it writes it
    whole.

L{twisted_rproxy.cache.diskstreams} has the other way, a body written as it
arrives.
"""

from __future__ import annotations

import os
import zlib
from collections import deque
from collections.abc import Callable
from typing import IO, Any

import attrs
from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_rproxy.cache.diskformat import (
    CHUNK,
    CorruptEntry,
    StoredHead,
    entryFile,
    keyFiles,
    readBody,
    readHead,
    removeFile,
)
from twisted_rproxy.messages import CacheEntry

__all__ = [
    "STREAM_ABOVE",
    "BodyProducer",
    "DiskEntry",
    "ProducingStopped",
    "probeKey",
    "readEntryFile",
]

#: Bodies longer than this stay on disk when their entry is read, and are
#: streamed from the file when served; shorter ones are read whole.
STREAM_ABOVE = 64 * 1024

#: Runs a blocking function in a thread: C{(function, *args) -> Deferred}.
RunInThread = Callable[..., "Deferred[Any]"]

#: A piece of a body to write: bytes as they are, or C{(offset, length)}
#: of the stored body (L{twisted_rproxy.rules.ranges.Piece}).
Piece = bytes | tuple[int, int]


class ProducingStopped(Exception):
    """
    The consumer stopped the producer before the body was written whole.
    """


@define(eq=False)
class DiskEntry(CacheEntry):
    """
    A stored entry read without its body (C{body} is empty), which stays in
    its file.

    @ivar bodyLength: The length of the body.
    @ivar bodyCRC: Its CRC32, as the file states it.
    @ivar opener: What L{openBody} calls with the entry (the store's
        C{openBody}), or L{None}.
    """

    bodyLength: int = field(kw_only=True, default=0)
    bodyCRC: int = field(kw_only=True, default=0)
    opener: Callable[[DiskEntry], Deferred[BodyProducer | None]] | None = field(
        kw_only=True, default=None, repr=False
    )

    @classmethod
    def fromHead(
        cls,
        head: StoredHead,
        opener: Callable[[DiskEntry], Deferred[BodyProducer | None]] | None,
    ) -> DiskEntry:
        """
        The entry of C{head}, its body left in the file.

        @raise CorruptEntry: If the head cannot be read.
        """
        entry = head.entry(b"")
        values: dict[str, Any] = {}
        for attribute in attrs.fields(CacheEntry):
            if attribute.init:
                # What the constructor takes (the headers' list, not their
                # packed form).
                name = attribute.alias or attribute.name
                values[name] = getattr(
                    entry, name if hasattr(entry, name) else attribute.name
                )
        return cls(
            **values, bodyLength=head.bodyLength, bodyCRC=head.bodyCRC, opener=opener
        )

    def openBody(self) -> Deferred[BodyProducer | None]:
        """
        A producer of the body, from the entry's file.

        @return: A Deferred firing with the L{BodyProducer}, or with L{None}
            if the file is gone, broken, or holds another body now.
        """
        if self.opener is None:
            raise ValueError("an entry of no store")
        return self.opener(self)


def readEntryFile(
    root: str,
    relative: str,
    streamAbove: int | None = None,
    opener: Callable[[DiskEntry], Deferred[BodyProducer | None]] | None = None,
) -> tuple[StoredHead, CacheEntry] | None:
    """
    Read the entry in C{relative} (blocking: run it in a thread); one that
    is not whole is removed.

    @param streamAbove: Leave a body longer than this in the file (the
        entry is then a L{DiskEntry} given C{opener}); L{None} to read
        every body whole.
    @return: Its head and the entry, or L{None} if the file is gone.
    @raise CorruptEntry: If it was not a whole entry (and is now removed).
    @raise OSError: If it could not be read.
    """
    try:
        with open(os.path.join(root, relative), "rb") as f:
            head = readHead(f)
            if streamAbove is not None and head.bodyLength > streamAbove:
                return head, DiskEntry.fromHead(head, opener)
            entry = head.entry(readBody(f, head))
    except FileNotFoundError:
        return None
    except CorruptEntry:
        removeFile(root, relative)
        raise
    return head, entry


def probeKey(
    root: str,
    key: bytes,
    now: float,
    streamAbove: int | None = None,
    opener: Callable[[DiskEntry], Deferred[BodyProducer | None]] | None = None,
) -> tuple[list[tuple[str, StoredHead, CacheEntry]], int]:
    """
    Read every variant of C{key} found on disk (written by any process),
    removing those of no further use and those that are not whole.

    @param streamAbove: See L{readEntryFile}.
    @param opener: See L{readEntryFile}.
    @return: The relative name, head and entry of each, and how many files
        were removed.
    """
    directory, prefix = keyFiles(key)
    try:
        names = os.listdir(os.path.join(root, directory))
    except (FileNotFoundError, NotADirectoryError):
        return [], 0
    found = []
    removed = 0
    for name in names:
        if not name.startswith(prefix):
            continue
        relative = os.path.join(directory, name)
        try:
            read = readEntryFile(root, relative, streamAbove, opener)
        except CorruptEntry:
            removed += 1
            continue
        if read is None:
            continue
        head, entry = read
        if head.key != key or entryFile(key, head.variant) != relative:
            continue
        if head.usefulUntil <= now:
            removed += removeFile(root, relative)
            continue
        found.append((relative, head, entry))
    return found, removed


def _readPiece(
    fd: int, size: int, offset: int, checksum: int | None
) -> tuple[bytes, int | None]:
    # In a thread: a chunk, and the CRC32 of the body up to its end.
    data = os.pread(fd, size, offset)
    return data, None if checksum is None else zlib.crc32(data, checksum)


@implementer(IPushProducer)
class BodyProducer:
    """
    The body of one stored entry, from its open file (which stays readable
    if the entry is evicted or replaced meanwhile).

    @ivar head: The entry's head, read from the file.
    @ivar length: The bytes it writes (all of the body, or the ranges
        asked).
    @ivar written: The bytes it wrote so far.
    @ivar paused: Whether the consumer paused it.
    @ivar onCorrupt: Called with the producer when the file turns out not
        to hold the body its head states (cut short, or another checksum).
    @ivar onClose: Called with the producer once its file is closed.
    """

    def __init__(
        self, runInThread: RunInThread, file: IO[bytes], head: StoredHead
    ) -> None:
        self._run = runInThread
        self._file: IO[bytes] | None = file
        self.head = head
        self.length = head.bodyLength
        self.written = 0
        self.paused = False
        self.onCorrupt: Callable[[BodyProducer], None] | None = None
        self.onClose: Callable[[BodyProducer], None] | None = None
        self._pieces: deque[Piece] = deque()
        self._checksum: int | None = None
        self._consumer: IConsumer | None = None
        self._done: Deferred[None] | None = None
        self._reading = False

    @classmethod
    def open(
        cls,
        runInThread: RunInThread,
        root: str,
        relative: str,
        expected: tuple[int, int] | None = None,
    ) -> BodyProducer | None:
        """
        Open the entry in C{relative} and read its head (blocking: run it in
        a thread).

        @param expected: The length and CRC32 of the body wanted: a file
            that holds another (replaced since) is not used.
        @return: Its producer, or L{None} if it is gone (or holds another
            body).
        @raise CorruptEntry: If it is not a whole entry.
        """
        try:
            f = open(os.path.join(root, relative), "rb")
        except FileNotFoundError:
            return None
        try:
            head = readHead(f)
        except BaseException:
            f.close()
            raise
        if expected is not None and expected != (head.bodyLength, head.bodyCRC):
            f.close()
            return None
        return cls(runInThread, f, head)

    def startProducing(
        self, consumer: IConsumer, start: int = 0, length: int | None = None
    ) -> Deferred[None]:
        """
        Write the body (or C{length} bytes of it from C{start}) to
        C{consumer}, registered as its streaming producer.

        @return: See L{producePieces}.
        @raise ValueError: For a range outside the body.
        """
        end = self.head.bodyLength if length is None else start + length
        return self.producePieces(consumer, [(start, end - start)])

    def producePieces(self, consumer: IConsumer, pieces: list[Piece]) -> Deferred[None]:
        """
        Write C{pieces} to C{consumer}, registered as its streaming
        producer: bytes as they are, C{(offset, length)} read from the body.
        The body written whole is checked against its CRC32, and its last
        chunk only written if it matches.

        @return: A Deferred that fires when they are written (the producer
            unregistered and the file closed), or fails with
            L{ProducingStopped} if the consumer stopped it, or
            L{CorruptEntry} if the file was cut short or did not match.
        @raise ValueError: For a range outside the body, or a second use.
        """
        if self._done is not None or self._file is None:
            raise ValueError("a body producer is used once")
        size = self.head.bodyLength
        for piece in pieces:
            if not isinstance(piece, bytes) and not (
                piece[0] >= 0 and piece[1] >= 0 and piece[0] + piece[1] <= size
            ):
                self.close()
                raise ValueError(f"range {piece} outside a body of {size}")
        self._pieces = deque(p for p in pieces if isinstance(p, bytes) or p[1])
        self.length = sum(len(p) if isinstance(p, bytes) else p[1] for p in pieces)
        if pieces == [(0, size)]:
            self._checksum = 0
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        consumer.registerProducer(self, True)
        self._next()
        return done

    def close(self) -> None:
        """
        Close the file, if no read is under way (else once it ends).
        """
        if self._file is not None and not self._reading:
            self._file.close()
            self._file = None
            if self.onClose is not None:
                self.onClose(self)

    def _next(self) -> None:
        pieces = self._pieces
        while not (self.paused or self._reading or self._file is None):
            if not pieces:
                self._finish(None)
                return
            piece = pieces[0]
            if isinstance(piece, bytes):
                pieces.popleft()
                self._write(piece)
                continue
            self._reading = True
            offset, left = piece
            reading = self._run(
                _readPiece,
                self._file.fileno(),
                min(CHUNK, left),
                self.head.bodyOffset + offset,
                self._checksum,
            )
            reading.addBoth(self._chunkRead)
            return

    def _write(self, data: bytes) -> None:
        assert self._consumer is not None
        self.written += len(data)
        self._consumer.write(data)

    def _chunkRead(self, result: tuple[bytes, int | None] | Failure) -> None:
        self._reading = False
        if self._done is None:
            # Stopped meanwhile.
            self.close()
            return
        if isinstance(result, Failure):
            self._finish(result)
            return
        data, checksum = result
        if not data:
            self._corrupt("the body's file was cut short")
            return
        offset, left = self._pieces[0]
        left -= len(data)
        if left:
            self._pieces[0] = (offset + len(data), left)
        else:
            self._pieces.popleft()
        self._checksum = checksum
        if checksum is not None and not left and checksum != self.head.bodyCRC:
            self._corrupt("the body's checksum does not match")
            return
        self._write(data)
        self._next()

    def _corrupt(self, why: str) -> None:
        if self.onCorrupt is not None:
            self.onCorrupt(self)
        self._finish(Failure(CorruptEntry(why)))

    def _finish(self, result: Failure | None) -> None:
        done, self._done = self._done, None
        consumer, self._consumer = self._consumer, None
        self.close()
        if consumer is not None:
            consumer.unregisterProducer()
        if done is not None:
            if result is None:
                done.callback(None)
            else:
                done.errback(result)

    # IPushProducer

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if self._done is not None:
            self._next()

    def stopProducing(self) -> None:
        done, self._done = self._done, None
        self._consumer = None
        self.close()
        if done is not None:
            done.errback(ProducingStopped())
