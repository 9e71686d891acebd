"""
HPACK (RFC 7541) for the proxy's HTTP/2 server: the L{Decoder} of the
header blocks a client sends, with its dynamic table, and the L{Encoder}
of the response heads.

The encoder uses no dynamic table (it sets its size to 0 in its first
block): each field is then encoded on its own, whatever came before, so
that the encoding of a field is computed once and kept
(L{Encoder.encode}). Static-table fields (C{:status 200}) are one byte,
the others a literal with the static table's name where it has it; no
Huffman coding, which costs more CPU than the bytes it saves on a
loopback or LAN hop.

The decoder checks a block as RFC 7541 section 4 to 6 say (indexes 0 or
out of range, a table size update after a field or above the table's
bound, integers and strings cut short, Huffman padding or C{EOS}): each is
an L{HPACKError}, which the connection answers with
C{GOAWAY(COMPRESSION_ERROR)}. Field names and values are checked as RFC
9113 section 8.2.1 says when they first arrive as literals; the fields of
the tables were so checked already.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

#: The static table (RFC 7541 appendix A), from index 1.
STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE

_STATIC_LENGTH = len(STATIC)

#: The static index of each name and value pair, and of each name.
_STATIC_FIELDS: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAMES: dict[bytes, int] = {}
for _index, _field in enumerate(STATIC, 1):
    _STATIC_FIELDS.setdefault(_field, _index)
    _STATIC_NAMES.setdefault(_field[0], _index)
del _index, _field

#: What a field name or value may not contain (RFC 9113 section 8.2.1):
#: names no control, space, uppercase or non-ASCII byte (a pseudo-header
#: field's leading colon aside); values no NUL, CR or LF, nor whitespace
#: at either end.
_BAD_NAME = re.compile(rb"[^\x21-\x40\x5b-\x7e]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]\Z")

#: Fields whose values an intermediary should never index.
_SENSITIVE = frozenset([b"authorization", b"proxy-authorization", b"set-cookie"])

#: Kept encodings (of short values, not of credentials or cookies) and
#: Huffman decodings, up to this many each.
_CACHE_SIZE = 4096


class HPACKError(Exception):
    """
    A header block does not decode: a C{COMPRESSION_ERROR}.
    """


class FieldError(Exception):
    """
    A field of a header block that decoded is not valid HTTP/2 (RFC 9113
    section 8.2.1): the request is malformed, a stream error.
    """


def _checkField(name: bytes, value: bytes) -> None:
    if not name or _BAD_NAME.search(name, 1 if name[0] == 0x3A else 0):
        raise FieldError(f"invalid field name {name[:64]!r}")
    if value and _BAD_VALUE.search(value):
        raise FieldError(f"invalid value of field {name[:64]!r}")


_huffmanCache: dict[bytes, bytes] = {}


def _huffman(data: bytes) -> bytes:
    value = _huffmanCache.get(data)
    if value is None:
        try:
            value = decode_huffman(data)
        except HPACKDecodingError as e:
            raise HPACKError(str(e)) from None
        if len(data) <= 128:
            if len(_huffmanCache) >= _CACHE_SIZE:
                _huffmanCache.clear()
            _huffmanCache[data] = value
    return value


class Decoder:
    """
    The decoding context of the header blocks of one connection.

    @ivar maxTableSize: The bound of the dynamic table, as advertised
        (C{SETTINGS_HEADER_TABLE_SIZE}): a size update above it is an
        error.
    @ivar maxListSize: Past this size of a header list (RFC 9113's count:
        32 bytes a field beyond its name and value), decoding stops with
        L{HPACKError}: the client is a flood.
    """

    def __init__(self, maxTableSize: int = 4096, maxListSize: int = 2**20) -> None:
        self.maxTableSize = maxTableSize
        self.maxListSize = maxListSize
        self._tableSize = maxTableSize
        self._table: deque[tuple[bytes, bytes]] = deque()
        self._size = 0

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index == 0:
            raise HPACKError("index 0")
        if index <= _STATIC_LENGTH:
            return STATIC[index - 1]
        try:
            return self._table[index - _STATIC_LENGTH - 1]
        except IndexError:
            raise HPACKError(f"index {index} out of range") from None

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = len(field[0]) + len(field[1]) + 32
        table = self._table
        limit = self._tableSize
        if size > limit:
            # RFC 7541 section 4.4: an entry larger than the table empties it.
            table.clear()
            self._size = 0
            return
        self._size += size
        table.appendleft(field)
        while self._size > limit:
            name, value = table.pop()
            self._size -= len(name) + len(value) + 32

    def _resize(self, size: int) -> None:
        if size > self.maxTableSize:
            raise HPACKError(f"table size {size} above {self.maxTableSize}")
        self._tableSize = size
        table = self._table
        while self._size > size:
            name, value = table.pop()
            self._size -= len(name) + len(value) + 32

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """
        Decode one header block.

        @return: The fields in order, as bytes.
        @raise HPACKError: If it does not decode (a C{COMPRESSION_ERROR}).
        @raise FieldError: If it decodes, and a new literal field is not
            valid (the rest of the block is decoded first, so that the
            context stays that of the client).
        """
        fields: list[tuple[bytes, bytes]] = []
        append = fields.append
        size = 0
        end = len(data)
        i = 0
        bad: FieldError | None = None
        while i < end:
            byte = data[i]
            if byte & 0x80:
                index = byte & 0x7F
                i += 1
                if index == 0x7F:
                    index, i = _integer(data, i, index)
                field = self._field(index)
            else:
                if byte & 0x40:
                    index = byte & 0x3F
                    prefix = 0x3F
                    indexing = True
                elif byte & 0x20:
                    if fields:
                        raise HPACKError("table size update after a field")
                    index = byte & 0x1F
                    i += 1
                    if index == 0x1F:
                        index, i = _integer(data, i, index)
                    self._resize(index)
                    continue
                else:
                    index = byte & 0x0F
                    prefix = 0x0F
                    indexing = False
                i += 1
                if index == prefix:
                    index, i = _integer(data, i, index)
                if index:
                    name = self._field(index)[0]
                else:
                    name, i = _string(data, i, end)
                value, i = _string(data, i, end)
                field = (name, value)
                try:
                    _checkField(name, value)
                except FieldError as e:
                    if bad is None:
                        bad = e
                if indexing:
                    self._add(field)
            size += len(field[0]) + len(field[1]) + 32
            if size > self.maxListSize:
                raise HPACKError("header list too large")
            append(field)
        if bad is not None:
            raise bad
        return fields


def _integer(data: bytes, i: int, value: int) -> tuple[int, int]:
    """
    The rest of an integer whose prefix was full (RFC 7541 section 5.1).
    """
    shift = 0
    end = len(data)
    while True:
        if i >= end:
            raise HPACKError("integer cut short")
        byte = data[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 28:
            raise HPACKError("integer too large")


def _string(data: bytes, i: int, end: int) -> tuple[bytes, int]:
    """
    A string literal (RFC 7541 section 5.2) at C{i}.
    """
    if i >= end:
        raise HPACKError("string cut short")
    byte = data[i]
    length = byte & 0x7F
    i += 1
    if length == 0x7F:
        length, i = _integer(data, i, length)
    stop = i + length
    if stop > end:
        raise HPACKError("string cut short")
    value = data[i:stop]
    if byte & 0x80:
        value = _huffman(value)
    return value, stop


def _encodeInteger(value: int, prefix: int, first: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes([first | value])
    out = bytearray([first | limit])
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encodeField(name: bytes, value: bytes) -> bytes:
    """
    One field, encoded without the dynamic table: its static index, or a
    literal not indexed (never indexed for credentials and cookies), with
    the static table's index of its name where it has one.
    """
    index = _STATIC_FIELDS.get((name, value))
    if index is not None:
        return bytes([0x80 | index])
    first = 0x10 if name in _SENSITIVE else 0x00
    nameIndex = _STATIC_NAMES.get(name)
    if nameIndex is not None:
        head = _encodeInteger(nameIndex, 4, first)
    else:
        head = bytes([first]) + _encodeInteger(len(name), 7, 0) + name
    return head + _encodeInteger(len(value), 7, 0) + value


_encoded: dict[tuple[bytes, bytes], bytes] = {}


class Encoder:
    """
    The encoding context of the response heads of one connection: no
    dynamic table (see the module's description).
    """

    _started = False

    def encode(self, fields: Iterable[tuple[bytes, bytes]]) -> bytes:
        """
        Encode one header block.
        """
        cache = _encoded
        parts = []
        if not self._started:
            # The dynamic table's size set to 0, whatever the client's
            # SETTINGS_HEADER_TABLE_SIZE is or becomes.
            self._started = True
            parts.append(b"\x20")
        for field in fields:
            encoded = cache.get(field)
            if encoded is None:
                name, value = field
                encoded = encodeField(name, value)
                if len(value) <= 128 and name not in _SENSITIVE:
                    if len(cache) >= _CACHE_SIZE:
                        cache.clear()
                    cache[field] = encoded
            parts.append(encoded)
        return b"".join(parts)
