"""
L{StrictChunkedDecoder}: the decoder of a chunked request body, with the
proxy's limits on chunk sizes.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted_rproxy._twisted import ChunkedDecoder, MalformedChunkedDataError
from twisted_rproxy.hardening import MAX_CHUNK_SIZE


class StrictChunkedDecoder(ChunkedDecoder):
    """
    A decoder of chunked request bodies that refuses at once a chunk-size,
    chunk-end or trailer line ended by a bare LF (see L{ChunkedDecoder}), a
    chunk size past L{MAX_CHUNK_SIZE} (an overflow in the backends'
    parsers), and one that takes the body past C{maxBody} (C{tooLarge} is
    called first).

    @ivar maxBody: The largest body accepted, once the request knows it.
    """

    maxBody: int | None = None
    _declared = 0

    def __init__(
        self,
        dataCallback: Callable[[bytes], None],
        finishCallback: Callable[[bytes], None],
        tooLarge: Callable[[], None],
    ) -> None:
        ChunkedDecoder.__init__(self, dataCallback, finishCallback)
        self._tooLarge = tooLarge

    def checkChunkSize(self, length: int) -> None:
        if length > MAX_CHUNK_SIZE:
            raise MalformedChunkedDataError("Chunk size overflows")
        self._declared += length
        maxBody = self.maxBody
        if maxBody is not None and self._declared > maxBody:
            self._tooLarge()
            raise MalformedChunkedDataError("Chunk size past the body limit")
