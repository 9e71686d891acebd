"""
Stored responses (L{CacheEntry}) and the in-memory L{MemoryStore}, an
L{ICacheStore} bounded in bytes that evicts the least recently used
entries first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from zope.interface import implementer

from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.messages import ENTRY_OVERHEAD, CacheEntry

__all__ = ["CacheEntry", "MemoryStore", "ENTRY_OVERHEAD"]


@implementer(ICacheStore)
class MemoryStore:
    """
    Entries in memory, at most C{maxSize} bytes of them (as counted by
    L{CacheEntry.size}); the least recently used go first when a new one
    needs room.

    @ivar maxSize: The bound, in bytes.
    @ivar size: The bytes in use.
    """

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self.size = 0
        # (key, variant) -> entry, least recently used first.
        self._entries: OrderedDict[tuple[bytes, bytes], CacheEntry] = OrderedDict()
        # key -> its variants, for lookups by primary key.
        self._variants: dict[bytes, dict[bytes, CacheEntry]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> list[CacheEntry]:
        variants = self._variants.get(key)
        if not variants:
            return []
        entries = list(variants.values())
        move = self._entries.move_to_end
        for entry in entries:
            move((key, entry.variant))
        return entries

    def put(self, entry: CacheEntry) -> bool:
        if entry.size > self.maxSize:
            return False
        self._drop(entry.key, entry.variant)
        self._entries[entry.key, entry.variant] = entry
        self._variants.setdefault(entry.key, {})[entry.variant] = entry
        self.size += entry.size
        self._evict()
        return True

    def resized(self, entry: CacheEntry) -> None:
        """
        Account again for C{entry}, whose headers changed (after a 304).
        """
        stored = self._entries.get((entry.key, entry.variant))
        if stored is not entry:
            return
        size = entry.computeSize()
        self.size += size - entry.size
        entry.size = size
        self._evict()

    def remove(self, key: bytes) -> int:
        variants = self._variants.get(key)
        if not variants:
            return 0
        count = 0
        for variant in list(variants):
            count += self._drop(key, variant)
        return count

    def purge(self, prefix: bytes) -> int:
        count = 0
        for key in [k for k in self._variants if k.startswith(prefix)]:
            count += self.remove(key)
        return count

    def keys(self) -> Iterator[bytes]:
        return iter(list(self._variants))

    def setMaxSize(self, maxSize: int) -> None:
        """
        Change the bound, evicting what no longer fits.
        """
        self.maxSize = maxSize
        self._evict()

    def _drop(self, key: bytes, variant: bytes) -> int:
        entry = self._entries.pop((key, variant), None)
        if entry is None:
            return 0
        self.size -= entry.size
        variants = self._variants[key]
        del variants[variant]
        if not variants:
            del self._variants[key]
        return 1

    def _evict(self) -> None:
        entries = self._entries
        while self.size > self.maxSize and entries:
            key, variant = next(iter(entries))
            self._drop(key, variant)
