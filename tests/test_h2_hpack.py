"""
Tests for L{twisted_rproxy.h2.hpack}: RFC 7541's examples, blocks of the
C{hpack} library's encoder, the errors, and the encoder read back by the
C{hpack} library's decoder.
"""

from __future__ import annotations

import hpack
from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.h2.hpack import Decoder, Encoder, FieldError, HPACKError

_C3 = [
    "828684410f7777772e6578616d706c652e636f6d",
    "828684be58086e6f2d6361636865",
    "828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565",
]
_C4 = [
    "828684418cf1e3c2e5f23a6ba0ab90f4ff",
    "828684be5886a8eb10649cbf",
    "828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf",
]
_REQUESTS = [
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]


class DecoderTests(SynchronousTestCase):
    """
    L{Decoder}.
    """

    def test_rfcExamples(self) -> None:
        """
        The request examples of RFC 7541 appendix C.3 (literals) and C.4
        (Huffman), each a sequence on one context.
        """
        for blocks in (_C3, _C4):
            decoder = Decoder()
            self.assertEqual(
                [decoder.decode(bytes.fromhex(b)) for b in blocks], _REQUESTS
            )

    def test_libraryBlocks(self) -> None:
        """
        What the C{hpack} library encodes, with its dynamic table evicting
        (a table of 256 bytes), decodes to the same fields.
        """
        encoder = hpack.Encoder()
        encoder.header_table_size = 256
        decoder = Decoder()
        for n in range(50):
            fields = [
                (b":method", b"GET"),
                (b":path", b"/item/%d" % (n % 7,)),
                (b"user-agent", b"agent %d" % (n % 3,) * 10),
                (b"cookie", b"session=%d" % (n,)),
                (b"authorization", b"secret"),
            ]
            self.assertEqual(decoder.decode(encoder.encode(fields)), fields)

    def test_errors(self) -> None:
        """
        What does not decode is an L{HPACKError}.
        """
        for data in (
            b"\x80",  # index 0
            b"\xbf\x20",  # index 93: out of range of an empty table
            b"\xff",  # integer cut short
            b"\x00\x05ab",  # string cut short
            b"\x82\x20",  # table size update after a field
            b"\x3f\xe2\x1f",  # table size update above 4096
            b"\x00\x81\xff\x81\x00",  # Huffman padding of 8 bits
            b"\x00\x84\xff\xff\xff\xff\x00",  # EOS
        ):
            with self.assertRaises(HPACKError, msg=repr(data)):
                Decoder().decode(data)

    def test_listTooLarge(self) -> None:
        decoder = Decoder(maxListSize=100)
        with self.assertRaises(HPACKError):
            decoder.decode(b"\x00\x01a\x7f\x00" + b"x" * 127)

    def test_invalidFieldKeepsContext(self) -> None:
        """
        A field of invalid name is a L{FieldError} once the block is
        decoded: the fields it added to the table are there for the next.
        """
        decoder = Decoder()
        first = b"\x40\x01A\x01x" + b"\x40\x03abc\x03def"
        with self.assertRaises(FieldError):
            decoder.decode(first)
        self.assertEqual(decoder.decode(b"\xbe"), [(b"abc", b"def")])

    def test_invalidValues(self) -> None:
        for value in (b"a\r\nb", b" lead", b"trail\t", b"nul\x00"):
            block = b"\x00\x01a" + bytes([len(value)]) + value
            with self.assertRaises(FieldError, msg=repr(value)):
                Decoder().decode(block)


class EncoderTests(SynchronousTestCase):
    """
    L{Encoder}.
    """

    def test_readBack(self) -> None:
        """
        What it encodes the C{hpack} library decodes, block after block;
        the first block sets the table's size to 0.
        """
        encoder = Encoder()
        decoder = hpack.Decoder()
        heads = [
            [(b":status", b"200"), (b"content-type", b"text/html")],
            [(b":status", b"404"), (b"x-long", b"v" * 300), (b"set-cookie", b"a=b")],
            [(b":status", b"200"), (b"server", b"nginx"), (b"x-custom", b"1")],
        ]
        blocks = [encoder.encode(head) for head in heads]
        self.assertEqual(blocks[0][:1], b"\x20")
        self.assertEqual(blocks[0][1:2], b"\x88")
        for head, block in zip(heads, blocks, strict=True):
            self.assertEqual(decoder.decode(block, raw=True), head)
        self.assertEqual(decoder.header_table.maxsize, 0)

    def test_sensitiveNeverIndexed(self) -> None:
        encoder = Encoder()
        encoder.encode([])
        self.assertEqual(encoder.encode([(b"set-cookie", b"a")])[:1], b"\x1f")
        self.assertEqual(encoder.encode([(b"x-a", b"a")])[:1], b"\x00")
