"""
The body of a static file's response: L{_FileProducer} streams pieces of
the file (and the literal heads of multipart parts) to the request, at most
L{CHUNK_SIZE} bytes of the file at a time, with a pull producer, so that a
file is never read whole into memory.

File reads are ordinary blocking reads in the reactor thread, as in
twisted.web's own L{File<twisted.web.static.File>}: one chunk at a time,
from the page cache for files that are read often.
"""

from __future__ import annotations

from typing import BinaryIO

from twisted.internet.interfaces import IPullProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from twisted_rproxy.rules.ranges import Piece

__all__ = ["CHUNK_SIZE"]

_log = Logger()


CHUNK_SIZE = 64 * 1024
"""
The most bytes read from a file, and written to the client, at a time.
"""


@implementer(IPullProducer)
class _FileProducer:
    """
    Writes the pieces of a response body to a request, at most
    L{CHUNK_SIZE} bytes of the file at a time, then finishes the request.

    A piece is literal bytes (the parts' headers of a multipart body) or
    C{(offset, length)} of the file.  The file is closed when the body is
    written, when the client goes away, or when the file turns out shorter
    than it was (the connection is then closed: the response cannot be
    completed).
    """

    def __init__(
        self, request: Request, file: BinaryIO, pieces: list[Piece], chunkSize: int
    ) -> None:
        self._request = request
        self._file: BinaryIO | None = file
        self._pieces = pieces
        self._chunkSize = chunkSize
        self._position = -1

    def start(self) -> None:
        """
        Register with the request and stream from the next reactor turns.
        """
        self._request.notifyFinish().addBoth(self._requestDone)
        self._request.registerProducer(self, False)

    def _requestDone(self, result: object) -> None:
        # Fired when the request is finished or its connection is lost; the
        # failure of a lost connection is handled here.
        self.stopProducing()

    def resumeProducing(self) -> None:
        file = self._file
        if file is None:
            return
        output: list[bytes] = []
        pieces = self._pieces
        while pieces:
            piece = pieces[0]
            if isinstance(piece, bytes):
                output.append(piece)
                del pieces[0]
                continue
            offset, length = piece
            wanted = min(length, self._chunkSize)
            try:
                if self._position != offset:
                    file.seek(offset)
                data = file.read(wanted)
            except OSError as e:
                _log.error("Cannot read a static file: {error}", error=e)
                data = b""
            if not data:
                self._abort()
                return
            self._position = offset + len(data)
            if len(data) == length:
                del pieces[0]
            else:
                pieces[0] = (offset + len(data), length - len(data))
            output.append(data)
            break
        if output:
            self._request.write(b"".join(output))
        if self._file is None:
            # Writing lost the connection.
            return
        if not pieces:
            self.stopProducing()
            self._request.unregisterProducer()
            self._request.finish()

    def _abort(self) -> None:
        """
        Give up a body that cannot be completed: the file got shorter.
        """
        _log.warn("A static file changed size while it was served")
        self.stopProducing()
        self._request.unregisterProducer()
        channel = getattr(self._request, "channel", None)
        if channel is not None:
            channel.loseConnection()

    def stopProducing(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()
