"""
Stored responses (L{CacheEntry}) and the in-memory L{MemoryStore}, an
L{ICacheStore} bounded in bytes that evicts the least recently used
entries first.

The bound is what the entries cost in memory, not only their bodies: each
entry counts the objects it holds (L{CacheEntry.computeSize}) and its place
in the store's index; parsed C{Cache-Control} directives are shared by the
entries that have the same, and counted once.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import attrs
from zope.interface import implementer

from twisted_rproxy.interfaces import ICacheStore
from twisted_rproxy.messages import ENTRY_OVERHEAD, VARIANT_OVERHEAD, CacheEntry
from twisted_rproxy.rules.cachecontrol import CacheControl, parseCacheControl

__all__ = ["CacheEntry", "MemoryStore", "ENTRY_OVERHEAD", "VARIANT_OVERHEAD"]

#: The directives of a response without any: one object, costing nothing.
_NO_DIRECTIVES = parseCacheControl(())

#: What a shared C{Cache-Control} is known by: its type and its repr (which,
#: for an attrs class, shows every field).
_ControlKey = tuple[type, str]


def _deepSize(obj: object, seen: set[int] | None = None) -> int:
    """
    The bytes C{obj} and what it holds take (each object once, rounded up
    to the allocator's 16 bytes): for the attrs values, dicts, sequences,
    bytes, strings and numbers a parsed C{Cache-Control} is made of.
    """
    if obj is None or isinstance(obj, bool | type):
        return 0
    if seen is None:
        seen = set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = (sys.getsizeof(obj) + 15) & ~15
    kind: Any = type(obj)
    if attrs.has(kind):
        for attribute in attrs.fields(kind):
            size += _deepSize(getattr(obj, attribute.name), seen)
    elif isinstance(obj, dict):
        for name, value in obj.items():
            size += _deepSize(name, seen) + _deepSize(value, seen)
    elif isinstance(obj, tuple | list | set | frozenset):
        for item in obj:
            size += _deepSize(item, seen)
    return size


#: A shared C{Cache-Control}'s place in the store's table: the dict's slot,
#: the key's tuple and its L{_Shared} record.
_SHARED_OVERHEAD = 256


@attrs.define
class _Shared:
    """
    Directives that entries of a store share.

    @ivar key: What they are known by, the one copy of it (entries keep it
        in their C{countedControl}).
    @ivar control: The one copy of them.
    @ivar holders: How many of the store's entries hold it.
    @ivar cost: The bytes it is counted for.
    """

    key: _ControlKey
    control: CacheControl
    holders: int
    cost: int


@implementer(ICacheStore)
class MemoryStore:
    """
    Entries in memory, at most C{maxSize} bytes of them (as counted by
    L{CacheEntry.size}, and each distinct C{Cache-Control} once); the least
    recently used go first when a new one needs room.

    @ivar maxSize: The bound, in bytes.
    @ivar size: The bytes in use.
    """

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self.size = 0
        self._count = 0
        # Primary key -> its entry, or (for several variants) a dict of
        # them by variant, least recently used first: most keys have one
        # entry, and a dict for each would cost more than a small entry.
        self._entries: OrderedDict[bytes, CacheEntry | dict[bytes, CacheEntry]] = (
            OrderedDict()
        )
        # The directives the entries share.
        self._controls: dict[_ControlKey, _Shared] = {}

    def __len__(self) -> int:
        return self._count

    def get(self, key: bytes) -> list[CacheEntry]:
        stored = self._entries.get(key)
        if stored is None:
            return []
        self._entries.move_to_end(key)
        if isinstance(stored, CacheEntry):
            return [stored]
        return list(stored.values())

    def put(self, entry: CacheEntry) -> bool:
        if entry.size + self._controlCost(entry.cacheControl) > self.maxSize:
            return False
        key = entry.key
        self._drop(key, entry.variant)
        entries = self._entries
        stored = entries.get(key)
        if stored is None:
            entries[key] = entry
        else:
            if isinstance(stored, CacheEntry):
                stored = entries[key] = {stored.variant: stored}
            stored[entry.variant] = entry
            entries.move_to_end(key)
        self._count += 1
        self._share(entry)
        self.size += entry.size
        self._evict()
        return True

    def resized(self, entry: CacheEntry) -> None:
        """
        Account again for C{entry}, whose headers or directives changed
        (after a 304).
        """
        if self._find(entry.key, entry.variant) is not entry:
            return
        if entry.countedControl != self._controlKey(entry.cacheControl):
            self._release(entry)
            self._share(entry)
        size = entry.computeSize()
        self.size += size - entry.size
        entry.size = size
        self._evict()

    def remove(self, key: bytes) -> int:
        stored = self._entries.get(key)
        if stored is None:
            return 0
        if isinstance(stored, CacheEntry):
            return self._drop(key, stored.variant)
        return sum(self._drop(key, variant) for variant in list(stored))

    def purge(self, prefix: bytes) -> int:
        count = 0
        for key in [k for k in self._entries if k.startswith(prefix)]:
            count += self.remove(key)
        return count

    def keys(self) -> Iterator[bytes]:
        return iter(list(self._entries))

    def setMaxSize(self, maxSize: int) -> None:
        """
        Change the bound, evicting what no longer fits.
        """
        self.maxSize = maxSize
        self._evict()

    def _find(self, key: bytes, variant: bytes) -> CacheEntry | None:
        stored = self._entries.get(key)
        if isinstance(stored, CacheEntry):
            return stored if stored.variant == variant else None
        return None if stored is None else stored.get(variant)

    def _drop(self, key: bytes, variant: bytes) -> int:
        entries = self._entries
        stored = entries.get(key)
        if stored is None:
            return 0
        if isinstance(stored, CacheEntry):
            if stored.variant != variant:
                return 0
            entry = stored
            del entries[key]
        else:
            found = stored.pop(variant, None)
            if found is None:
                return 0
            entry = found
            if len(stored) == 1:
                # Back to one entry, in the same place of the order.
                [entries[key]] = stored.values()
        self._count -= 1
        self.size -= entry.size
        self._release(entry)
        return 1

    def _evict(self) -> None:
        entries = self._entries
        while self.size > self.maxSize and entries:
            key, stored = next(iter(entries.items()))
            if isinstance(stored, CacheEntry):
                self._drop(key, stored.variant)
            else:
                # The variant put longest ago.
                self._drop(key, next(iter(stored)))

    @staticmethod
    def _controlKey(control: CacheControl) -> _ControlKey | None:
        if control is _NO_DIRECTIVES:
            return None
        return (type(control), repr(control))

    def _controlCost(self, control: CacheControl) -> int:
        """
        The bytes holding C{control} would add: nothing if it is shared
        already.
        """
        key = self._controlKey(control)
        if key is None or key in self._controls:
            return 0
        return _deepSize(control) + _deepSize(key) + _SHARED_OVERHEAD

    def _share(self, entry: CacheEntry) -> None:
        """
        Make C{entry} hold the shared copy of its directives, counting them
        if it is the first to.
        """
        control = entry.cacheControl
        key = self._controlKey(control)
        if key is None:
            entry.countedControl = None
            return
        shared = self._controls.get(key)
        if shared is None:
            cost = self._controlCost(control)
            shared = self._controls[key] = _Shared(key, control, 0, cost)
            self.size += cost
        entry.cacheControl = shared.control
        entry.countedControl = shared.key
        shared.holders += 1

    def _release(self, entry: CacheEntry) -> None:
        """
        C{entry} no longer holds the directives it was counted for: the
        last one to hold them takes their bytes away.
        """
        key = entry.countedControl
        entry.countedControl = None
        if key is None:
            return
        shared = self._controls.get(key)
        if shared is None:
            # Counted by another store.
            return
        shared.holders -= 1
        if not shared.holders:
            del self._controls[key]
            self.size -= shared.cost
