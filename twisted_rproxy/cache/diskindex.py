"""
L{DiskIndex}: what the disk cache store (L{twisted_rproxy.cache.diskstore})
keeps in memory of its entries, and no more: each one's key, variant, file,
file size, the time until which it is of use and its C{Vary} names, in
least recently used order.  Data only: the store does the file operations
its changes call for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from twisted_rproxy.cache.diskformat import ScannedFile

__all__ = ["DiskIndex", "IndexRecord"]


class IndexRecord:
    """
    One entry of the index.

    @ivar key: Its primary key.
    @ivar variant: Its variant.
    @ivar relative: Its file, relative to the cache's path.
    @ivar size: What the file takes on disk (L{diskUsage} of its size).
    @ivar usefulUntil: Until when it is of use (seconds since the epoch).
    @ivar varyOn: The names of its C{Vary}.
    @ivar since: When this process last wrote it or learnt of it.
    """

    __slots__ = ("key", "variant", "relative", "size", "usefulUntil", "varyOn", "since")

    def __init__(
        self,
        key: bytes,
        variant: bytes,
        relative: str,
        size: int,
        usefulUntil: float,
        varyOn: tuple[bytes, ...],
        since: float,
    ) -> None:
        self.key = key
        self.variant = variant
        self.relative = relative
        self.size = diskUsage(size)
        self.usefulUntil = usefulUntil
        self.varyOn = varyOn
        self.since = since


#: The unit a file's size is rounded up to: the block of common file
#: systems (ext4, XFS), so that a cache of small entries stays within its
#: C{max_size} on disk, not only in the bytes of its files.
DISK_BLOCK = 4096

#: What an entry costs beside its blocks: its name in its directory, its
#: inode.
ENTRY_DISK_OVERHEAD = 256


def diskUsage(size: int) -> int:
    """
    What a file of C{size} bytes is counted for against a disk store's
    C{max_size}: its blocks, and the cost of its name and inode.
    """
    return -(-size // DISK_BLOCK) * DISK_BLOCK + ENTRY_DISK_OVERHEAD


class DiskIndex:
    """
    The records of the entries a store knows of, least recently used
    first.

    @ivar size: What their files take on disk.
    """

    def __init__(self) -> None:
        self.size = 0
        self._records: OrderedDict[tuple[bytes, bytes], IndexRecord] = OrderedDict()
        self._variants: dict[bytes, dict[bytes, IndexRecord]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def keys(self) -> list[bytes]:
        """
        The primary keys indexed.
        """
        return list(self._variants)

    def variants(self, key: bytes) -> list[IndexRecord]:
        """
        The records of C{key}'s variants.
        """
        return list(self._variants.get(key, {}).values())

    def record(self, key: bytes, variant: bytes) -> IndexRecord | None:
        """
        The record of one variant, if indexed.
        """
        return self._records.get((key, variant))

    def touch(self, record: IndexRecord) -> None:
        """
        Count a use of C{record} (it goes last for eviction).
        """
        self._records.move_to_end((record.key, record.variant))

    def add(self, record: IndexRecord, leastRecent: bool = False) -> None:
        """
        Index C{record}, replacing the record of the same key and variant,
        as the most recently used (or the least, with C{leastRecent}).
        """
        ident = (record.key, record.variant)
        old = self._records.get(ident)
        if old is not None:
            self.drop(old)
        self._records[ident] = record
        self._variants.setdefault(record.key, {})[record.variant] = record
        self.size += record.size
        if leastRecent:
            self._records.move_to_end(ident, last=False)

    def resize(self, record: IndexRecord, size: int) -> None:
        """
        Account for C{record}'s file being C{size} bytes now.
        """
        size = diskUsage(size)
        if self._records.get((record.key, record.variant)) is record:
            self.size += size - record.size
        record.size = size

    def drop(self, record: IndexRecord) -> bool:
        """
        Forget C{record}, if it is the one indexed.

        @return: Whether it was.
        """
        ident = (record.key, record.variant)
        if self._records.get(ident) is not record:
            return False
        del self._records[ident]
        self.size -= record.size
        variants = self._variants[record.key]
        del variants[record.variant]
        if not variants:
            del self._variants[record.key]
        return True

    def overflow(self, maxSize: int) -> list[IndexRecord]:
        """
        Forget the least recently used records until the rest take at most
        C{maxSize} bytes.

        @return: Those forgotten, whose files are to be removed.
        """
        dropped = []
        records = self._records
        while self.size > maxSize and records:
            record = next(iter(records.values()))
            self.drop(record)
            dropped.append(record)
        return dropped

    def extraVariants(self, key: bytes, kept: bytes, most: int) -> list[IndexRecord]:
        """
        Forget the least recently used variants of C{key} beyond C{most}
        (never C{kept}).

        @return: Those forgotten, whose files are to be removed.
        """
        extra = len(self._variants.get(key, {})) - most
        if extra <= 0:
            return []
        ordered = [
            r for r in self._records.values() if r.key == key and r.variant != kept
        ]
        dropped = ordered[:extra]
        for record in dropped:
            self.drop(record)
        return dropped

    def merge(
        self,
        found: Iterable[ScannedFile],
        began: float,
        skip: Callable[[bytes, str], bool],
    ) -> None:
        """
        Bring the index in line with the files found by a scan of the
        directory that began at C{began}: those not indexed are added as the
        least recently used (the oldest first), records written before the
        scan whose files were not found are forgotten.

        @param skip: Whether a file found (its key and relative name) must
            not be indexed (it is being removed).
        """
        seen = set()
        for scanned in sorted(found, key=lambda s: s.mtime, reverse=True):
            head = scanned.head
            ident = (head.key, head.variant)
            seen.add(ident)
            if ident in self._records or skip(head.key, scanned.relative):
                continue
            self.add(
                IndexRecord(
                    head.key,
                    head.variant,
                    scanned.relative,
                    head.fileSize,
                    head.usefulUntil,
                    head.varyOn,
                    began,
                ),
                leastRecent=True,
            )
        for ident, record in list(self._records.items()):
            if ident not in seen and record.since < began:
                self.drop(record)


class RemovalLog:
    """
    The removals (C{PURGE}) made while writes were under way in threads,
    so that a write that ends after the removal of its key does not bring
    the entry back.
    """

    def __init__(self) -> None:
        self._started = 0
        self._pending = 0
        # (writes started before it, key or prefix, whether a prefix)
        self._removals: list[tuple[int, bytes, bool]] = []

    def writeStarted(self) -> int:
        """
        Note a write beginning.

        @return: Its number, for L{writeEnded}.
        """
        number = self._started
        self._started += 1
        self._pending += 1
        return number

    def writeEnded(self, number: int, key: bytes) -> bool:
        """
        Note the end of the write numbered C{number}, of C{key}.

        @return: Whether C{key} was removed since it began.
        """
        removed = self.removedSince(key, number)
        self._pending -= 1
        if not self._pending:
            self._removals = []
        return removed

    def removed(self, what: bytes, isPrefix: bool) -> None:
        """
        Note the removal of key C{what} (or of the keys starting with it).
        """
        if self._pending:
            self._removals.append((self._started, what, isPrefix))

    def removedSince(self, key: bytes, number: int = -1) -> bool:
        """
        Whether C{key} was removed after the write numbered C{number} began
        (with C{-1}: while any write now under way was).
        """
        for count, what, isPrefix in self._removals:
            if count > number and (key.startswith(what) if isPrefix else key == what):
                return True
        return False
