"""
How the disk cache store (L{twisted_rproxy.cache.diskstore}) lays an entry
out in a file, and where the file goes: pure functions of bytes, with the
blocking file operations the store runs in its threads (L{writeEntryFile},
L{readHead}, L{readBody}, L{copyWithHead}, L{scanDirectory}).

Under the cache's C{path}, an entry of primary key C{K} (C{H} its SHA1 in
hexadecimal) and variant C{V} (C{VH} its SHA1) is the file
C{H[0:2]/H-VH}: every variant of a key sits in one of 256 directories,
found by the prefix C{H-} (one level, so that directories cost at most a
few hundred KiB however few entries there are).  A file is::

    MAGIC (8 bytes) | meta length (4, big-endian) | meta (JSON) |
    meta CRC32 (4) | body | body length (8) | body CRC32 (4) | END (8)

The meta holds the key, the variant, the time until which the entry is of
use (C{u}, seconds since the epoch) and its head as
L{twisted_rproxy.cache.redisformat.encodeHead} writes it.  The body's length
and checksum come after it, so that a body can be written as it arrives.

A file is written under C{tmp/PID-RANDOM.tmp}, flushed to disk, then
renamed to its name: a reader sees the whole old file or the whole new one,
and a crash leaves at most a temporary file, which the next start removes.
A file of the wrong size or checksum is not served, and removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import BinaryIO

from attrs import frozen

from twisted_rproxy.cache.redisformat import decodeEntry, encodeHead
from twisted_rproxy.messages import CacheEntry

__all__ = [
    "CHUNK",
    "CorruptEntry",
    "StoredHead",
    "TEMPORARY",
    "appendPieces",
    "copyWithHead",
    "discardEntryFile",
    "encodePrefix",
    "encodeTrailer",
    "entryFile",
    "finishEntryFile",
    "keyFiles",
    "readBody",
    "readHead",
    "scanDirectory",
    "startEntryFile",
    "writeEntryFile",
]

MAGIC = b"RPXDISK1"
END = b"RPXEND01"
_HEADER = struct.Struct(">8sI")
_CRC = struct.Struct(">I")
_TRAILER = struct.Struct(">QI8s")

#: The bytes read or written at a time.
CHUNK = 256 * 1024

#: The largest meta read (a head larger than this is not stored).
MAX_META = 1024 * 1024

#: The directory of files being written, under the cache's path.
TEMPORARY = "tmp"


class CorruptEntry(ValueError):
    """
    A file that is not a whole entry (truncated, altered, of another
    format).
    """


@frozen
class StoredHead:
    """
    What the start of an entry's file says, without the body.

    @ivar key: The primary key.
    @ivar variant: The variant.
    @ivar usefulUntil: Until when (seconds since the epoch) it is of use.
    @ivar head: The encoded head (see L{encodeHead}).
    @ivar varyOn: The names listed in its C{Vary}.
    @ivar bodyOffset: Where its body starts in the file.
    @ivar bodyLength: The length of its body.
    @ivar fileSize: The size of the file.
    @ivar bodyCRC: The CRC32 of its body, as its trailer states it.
    """

    key: bytes
    variant: bytes
    usefulUntil: float
    head: bytes
    varyOn: tuple[bytes, ...]
    bodyOffset: int
    bodyLength: int
    fileSize: int
    bodyCRC: int = 0

    def entry(self, body: bytes) -> CacheEntry:
        """
        The entry, with C{body}.

        @raise CorruptEntry: If the head cannot be read.
        """
        try:
            return decodeEntry(self.key, self.variant, self.head, body)
        except ValueError as e:
            raise CorruptEntry(str(e)) from None


def _hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def keyFiles(key: bytes) -> tuple[str, str]:
    """
    The directory (relative to the cache's path) of C{key}'s files, and the
    prefix of their names.
    """
    h = _hex(key)
    return h[0:2], h + "-"


def entryFile(key: bytes, variant: bytes) -> str:
    """
    The file of one variant, relative to the cache's path.
    """
    directory, prefix = keyFiles(key)
    return os.path.join(directory, prefix + _hex(variant))


def encodePrefix(entry: CacheEntry, usefulUntil: float, padTo: int = 0) -> bytes:
    """
    What an entry's file starts with: magic, meta and its checksum.

    @param padTo: The length it is to have (the room a body written as it
        arrived left before itself): the meta is padded with spaces, which
        JSON ignores.  A prefix that is longer anyway is not padded.
    @raise ValueError: If the head is larger than L{MAX_META}.
    """
    meta = json.dumps(
        {
            "k": entry.key.decode("latin-1"),
            "v": entry.variant.decode("latin-1"),
            "u": usefulUntil,
            "h": encodeHead(entry).decode("ascii"),
        },
        separators=(",", ":"),
    ).encode("ascii")
    if len(meta) > MAX_META:
        raise ValueError(f"a head of {len(meta)} bytes is too large to store")
    meta += b" " * (padTo - _HEADER.size - len(meta) - _CRC.size)
    return _HEADER.pack(MAGIC, len(meta)) + meta + _CRC.pack(zlib.crc32(meta))


def encodeTrailer(bodyLength: int, bodyCRC: int) -> bytes:
    """
    What an entry's file ends with.
    """
    return _TRAILER.pack(bodyLength, bodyCRC, END)


def fileSize(prefixLength: int, bodyLength: int) -> int:
    """
    The size of an entry's file.
    """
    return prefixLength + bodyLength + _TRAILER.size


def _parseMeta(meta: bytes) -> tuple[bytes, bytes, float, bytes, tuple[bytes, ...]]:
    try:
        data = json.loads(meta)
        head = data["h"].encode("ascii")
        varyOn = tuple(name.encode("latin-1") for name in json.loads(head)["y"])
        return (
            data["k"].encode("latin-1"),
            data["v"].encode("latin-1"),
            float(data["u"]),
            head,
            varyOn,
        )
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeError) as e:
        raise CorruptEntry(f"malformed meta: {e!r}") from None


def readHead(f: BinaryIO) -> StoredHead:
    """
    Read and check the head of the entry in the open file C{f} (its size,
    meta checksum and trailer), leaving C{f} at the start of the body.

    @raise CorruptEntry: If the file is not a whole entry.
    """
    size = os.fstat(f.fileno()).st_size
    f.seek(0)
    start = f.read(_HEADER.size)
    if len(start) < _HEADER.size:
        raise CorruptEntry("truncated")
    magic, metaLength = _HEADER.unpack(start)
    if magic != MAGIC:
        raise CorruptEntry("not an entry of this format")
    if metaLength > MAX_META:
        raise CorruptEntry("meta too large")
    meta = f.read(metaLength)
    checksum = f.read(_CRC.size)
    if len(meta) < metaLength or len(checksum) < _CRC.size:
        raise CorruptEntry("truncated")
    if _CRC.unpack(checksum)[0] != zlib.crc32(meta):
        raise CorruptEntry("meta checksum mismatch")
    bodyOffset = _HEADER.size + metaLength + _CRC.size
    bodyLength = size - bodyOffset - _TRAILER.size
    if bodyLength < 0:
        raise CorruptEntry("truncated")
    f.seek(bodyOffset + bodyLength)
    trailer = f.read(_TRAILER.size)
    if len(trailer) < _TRAILER.size:
        raise CorruptEntry("truncated")
    stated, bodyCRC, end = _TRAILER.unpack(trailer)
    if end != END or stated != bodyLength:
        raise CorruptEntry("truncated or altered (trailer mismatch)")
    f.seek(bodyOffset)
    key, variant, usefulUntil, head, varyOn = _parseMeta(meta)
    return StoredHead(
        key, variant, usefulUntil, head, varyOn, bodyOffset, bodyLength, size, bodyCRC
    )


def readBody(f: BinaryIO, head: StoredHead) -> bytes:
    """
    Read the whole body of C{head}'s entry from C{f}, a chunk at a time,
    and check it against its checksum.

    @raise CorruptEntry: If it does not match.
    """
    f.seek(head.bodyOffset)
    pieces = []
    checksum = 0
    remaining = head.bodyLength
    while remaining > 0:
        piece = f.read(min(CHUNK, remaining))
        if not piece:
            raise CorruptEntry("truncated while read")
        checksum = zlib.crc32(piece, checksum)
        pieces.append(piece)
        remaining -= len(piece)
    trailer = f.read(_TRAILER.size)
    if len(trailer) < _TRAILER.size:
        raise CorruptEntry("truncated while read")
    _, stated, _ = _TRAILER.unpack(trailer)
    if stated != checksum:
        raise CorruptEntry("body checksum mismatch")
    return b"".join(pieces)


def _temporaryFile(root: str) -> tuple[str, BinaryIO]:
    """
    A new temporary file under C{root}, named after this process.
    """
    directory = os.path.join(root, TEMPORARY)
    os.makedirs(directory, exist_ok=True)
    name = os.path.join(directory, f"{os.getpid()}-{os.urandom(8).hex()}.tmp")
    return name, open(name, "xb")


def _commit(root: str, temporary: str, f: BinaryIO, relative: str) -> None:
    """
    Flush C{f} to disk, close it and rename it to C{relative}.
    """
    f.flush()
    os.fsync(f.fileno())
    f.close()
    final = os.path.join(root, relative)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(temporary, final)


def writeEntryFile(
    root: str, relative: str, prefix: bytes, body: bytes | Iterable[bytes]
) -> int:
    """
    Write an entry atomically (a temporary file, flushed, renamed): C{prefix}
    (see L{encodePrefix}) then C{body}, or the pieces it yields as they
    come.  Nothing is left behind when it fails.

    @return: The size of the file written.
    @raise OSError: If it could not be written.
    """
    temporary, f = _temporaryFile(root)
    try:
        f.write(prefix)
        checksum = 0
        length = 0
        for piece in bodyPieces(body) if isinstance(body, bytes) else body:
            f.write(piece)
            checksum = zlib.crc32(piece, checksum)
            length += len(piece)
        f.write(encodeTrailer(length, checksum))
        _commit(root, temporary, f, relative)
    except BaseException:
        f.close()
        _unlink(temporary)
        raise
    return fileSize(len(prefix), length)


def startEntryFile(root: str, reserve: int) -> tuple[str, BinaryIO]:
    """
    Begin an entry whose body is written as it arrives: a temporary file
    with C{reserve} bytes of room for the prefix, which is only known at
    the end (L{finishEntryFile}).

    @return: The temporary file's path and the file, open at the body.
    """
    temporary, f = _temporaryFile(root)
    try:
        f.write(bytes(reserve))
    except BaseException:
        discardEntryFile(temporary, f)
        raise
    return temporary, f


def appendPieces(f: BinaryIO, pieces: list[bytes], checksum: int) -> int:
    """
    Append C{pieces} of a body to the file L{startEntryFile} opened.

    @param checksum: The CRC32 of the body written before them.
    @return: The CRC32 of the body with them.
    """
    for piece in pieces:
        f.write(piece)
        checksum = zlib.crc32(piece, checksum)
    return checksum


def finishEntryFile(
    root: str,
    temporary: str,
    f: BinaryIO,
    prefix: bytes,
    bodyLength: int,
    checksum: int,
    relative: str,
) -> int:
    """
    End an entry L{startEntryFile} began: its trailer, then its C{prefix}
    in the room left for it (L{encodePrefix} padded to it), flushed and
    renamed to C{relative}.  Nothing is left behind when it fails.

    @return: The size of the file written.
    @raise OSError: If it could not be written.
    @raise ValueError: If C{prefix} is not of the length reserved.
    """
    try:
        if fileSize(len(prefix), bodyLength) != f.tell() + _TRAILER.size:
            raise ValueError("the prefix does not fit the room left for it")
        f.write(encodeTrailer(bodyLength, checksum))
        f.flush()
        os.pwrite(f.fileno(), prefix, 0)
        _commit(root, temporary, f, relative)
    except BaseException:
        discardEntryFile(temporary, f)
        raise
    return fileSize(len(prefix), bodyLength)


def discardEntryFile(temporary: str, f: BinaryIO) -> None:
    """
    Close and remove the temporary file of an entry not finished.
    """
    f.close()
    _unlink(temporary)


def bodyPieces(body: bytes) -> Iterator[memoryview]:
    """
    C{body} in pieces of L{CHUNK} bytes, without copies.
    """
    view = memoryview(body)
    for offset in range(0, len(body), CHUNK):
        yield view[offset : offset + CHUNK]


def copyWithHead(root: str, relative: str, prefix: bytes) -> int:
    """
    Give the entry in C{relative} a new head (after a revalidation): write a
    new file with C{prefix} and the old body, atomically.

    @return: The size of the new file.
    @raise OSError: If the old file is gone or nothing could be written.
    @raise CorruptEntry: If the old file is not a whole entry.
    """
    with open(os.path.join(root, relative), "rb") as old:
        head = readHead(old)
        remaining = head.bodyLength + _TRAILER.size
        temporary, f = _temporaryFile(root)
        try:
            f.write(prefix)
            while remaining > 0:
                piece = old.read(min(CHUNK, remaining))
                if not piece:
                    raise CorruptEntry("truncated while copied")
                f.write(piece)
                remaining -= len(piece)
            _commit(root, temporary, f, relative)
        except BaseException:
            f.close()
            _unlink(temporary)
            raise
    return fileSize(len(prefix), head.bodyLength)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def removeStaleTemporaries(root: str, since: float, maxAge: float, now: float) -> int:
    """
    Remove the temporary files of writes that will never finish: those of
    processes no longer running, those of this process older than C{since}
    (a previous process of the same id), and any older than C{maxAge}.

    @return: How many were removed.
    """
    directory = os.path.join(root, TEMPORARY)
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for item in entries:
        pid, _, _ = item.name.partition("-")
        try:
            mtime = item.stat().st_mtime
            owner = int(pid)
        except (OSError, ValueError):
            owner, mtime = -1, 0.0
        if (
            owner <= 0
            or not _alive(owner)
            or (owner == os.getpid() and mtime < since)
            or now - mtime > maxAge
        ):
            removed += _unlink(item.path)
    return removed


@frozen
class ScannedFile:
    """
    One entry file found by L{scanDirectory}.

    @ivar relative: Its name under the cache's path.
    @ivar head: Its head.
    @ivar mtime: When it was written.
    """

    relative: str
    head: StoredHead
    mtime: float


def scanDirectory(
    root: str, directory: str, now: float
) -> tuple[list[ScannedFile], int, int]:
    """
    Read the heads of the entry files under C{directory} (one of the first
    level, relative to C{root}), removing those of no further use (past
    their C{usefulUntil}) and those that are not whole entries.

    @return: The files kept, how many were expired and how many corrupt.
    """
    found: list[ScannedFile] = []
    expired = corrupt = 0
    top = os.path.join(root, directory)
    try:
        items = sorted(os.scandir(top), key=lambda item: item.name)
    except (FileNotFoundError, NotADirectoryError):
        return found, 0, 0
    for item in items:
        if not item.is_file(follow_symlinks=False):
            continue
        relative = os.path.join(directory, item.name)
        try:
            with open(item.path, "rb") as f:
                head = readHead(f)
                mtime = os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            continue
        except (CorruptEntry, OSError):
            corrupt += _unlink(item.path)
            continue
        if entryFile(head.key, head.variant) != relative:
            corrupt += _unlink(item.path)
            continue
        if head.usefulUntil <= now:
            expired += _unlink(item.path)
            continue
        found.append(ScannedFile(relative, head, mtime))
    return found, expired, corrupt


def removeKeyFiles(root: str, key: bytes) -> int:
    """
    Remove every file of C{key} (whichever process wrote it).

    @return: How many were removed.
    """
    directory, prefix = keyFiles(key)
    try:
        names = os.listdir(os.path.join(root, directory))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return sum(
        _unlink(os.path.join(root, directory, name))
        for name in names
        if name.startswith(prefix)
    )


def removeKeysFiles(root: str, keys: list[bytes]) -> int:
    """
    Remove every file of each of C{keys}.

    @return: How many were removed.
    """
    return sum(removeKeyFiles(root, key) for key in keys)


def removeFile(root: str, relative: str) -> bool:
    """
    Remove one entry's file, if it is still there.
    """
    return _unlink(os.path.join(root, relative))


def prepareDirectory(root: str, since: float, maxAge: float, now: float) -> list[str]:
    """
    Create the cache's directory if needed, remove the temporary files left
    by writes that will never finish (see L{removeStaleTemporaries}), and
    list the first-level directories of entries.

    @raise OSError: If the directory cannot be created or read.
    """
    os.makedirs(os.path.join(root, TEMPORARY), exist_ok=True)
    if not os.access(root, os.W_OK | os.X_OK):
        raise PermissionError(f"{root!r} is not writable")
    removeStaleTemporaries(root, since, maxAge, now)
    return sorted(
        item.name
        for item in os.scandir(root)
        if len(item.name) == 2
        and all(c in "0123456789abcdef" for c in item.name)
        and item.is_dir(follow_symlinks=False)
    )
