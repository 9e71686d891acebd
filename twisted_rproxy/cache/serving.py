"""
Answering a request from a stored response (L{serveEntry}): as it is, 304
to the client's matching conditional request, or 206 or 416 for its byte
ranges (with L{twisted_rproxy.rules.ranges}, as static files do).

A hit never touches the cache's child: the stored head is handed to the
proxy's head writer as C{passedHeaders} (plus C{Age}, and with the status
header on, C{X-Cache} and this cache's C{Cache-Status} member after any
stored one) and the body written at once.

An entry whose body stays in its store (the disk store's, for a large body)
has a C{bodyLength} and an C{openBody()} instead: its body (or the ranges
asked) is streamed from the store by the producer C{openBody} gives, with
backpressure (a slow client pauses the reads); the producer is stopped when
the client goes.  A body found broken as it is streamed cuts the response
(the connection is aborted, as when a backend fails mid-body); one gone
before its head is written is answered by C{onGone} (the cache asks the
backend instead).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.cache.keys import Pairs, requestPairs
from twisted_rproxy.cache.policy import notModified, notModifiedHeaders
from twisted_rproxy.cache.status import CACHE_STATUS, STATUS_HEADER
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.pages import reasonPhrase, renderError
from twisted_rproxy.rules.dates import parseHTTPDate
from twisted_rproxy.rules.ranges import (
    Piece,
    assemble,
    partialContent,
    requestedRanges,
    unsatisfiedRange,
)

__all__ = ["serveEntry"]

_log = Logger()


class StoredBody(Protocol):
    """
    What the C{openBody()} of an entry whose body stays in its store gives
    (a L{twisted_rproxy.cache.diskbody.BodyProducer}).
    """

    def producePieces(self, consumer: Any, pieces: list[Piece]) -> Deferred[None]:
        """
        Write C{pieces} (bytes, or C{(offset, length)} of the body) to
        C{consumer} as its streaming producer; fire when done, fail if
        stopped or if the body is found broken.
        """

    def stopProducing(self) -> None:
        """
        Stop: the client went.
        """

    def close(self) -> None:
        """
        Release the body without writing it.
        """


#: What a 416 keeps of the stored head.
_KEPT_BY_416 = (b"date", b"etag", b"last-modified")


def _validatorsOf(headers: Pairs) -> tuple[bytes | None, bytes | None, int | None]:
    """
    The C{Content-Type}, C{ETag} and C{Last-Modified} time of a stored
    head.
    """
    contentType = etag = None
    lastModified: int | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-type":
            contentType = value
        elif lower == b"etag" and etag is None:
            etag = value
        elif lower == b"last-modified" and lastModified is None:
            lastModified = parseHTTPDate(value)
    return contentType, etag, lastModified


def _ranged(
    request: Any, headers: Pairs, size: int
) -> tuple[int, bytes, Pairs, list[Piece]] | None:
    """
    The status, reason, head and body (as pieces) of a 206 or 416
    answering the C{Range} of C{request} from a stored 200 whose body is
    C{size} bytes; L{None} to serve it whole.
    """
    requestHeaders = request.requestHeaders
    rangeValues = requestHeaders.getRawHeaders(b"range")
    if not rangeValues:
        return None
    contentType, etag, lastModified = _validatorsOf(headers)
    ranges = requestedRanges(
        rangeValues,
        requestHeaders.getRawHeaders(b"if-range"),
        size,
        etag,
        lastModified,
    )
    if ranges is None:
        return None
    if not ranges:
        status, reason = 416, reasonPhrase(416)
        kept = [(n, v) for n, v in headers if n.lower() in _KEPT_BY_416]
        return (
            status,
            reason,
            kept + [unsatisfiedRange(size), (b"Content-Length", b"0")],
            [],
        )
    partial = partialContent(ranges, size, contentType)
    replaced = {name.lower() for name, _ in partial.headers}
    replaced.add(b"content-length")
    kept = [(n, v) for n, v in headers if n.lower() not in replaced]
    return (
        206,
        reasonPhrase(206),
        kept + partial.headers + [(b"Content-Length", b"%d" % (partial.length,))],
        partial.pieces,
    )


def serveEntry(
    request: Any,
    entry: CacheEntry,
    label: bytes,
    age: float,
    cacheStatus: bytes | None,
    onGone: Callable[[], None] | None = None,
) -> None:
    """
    Answer C{request} from a stored response, and finish it: 200 (or its
    stored status), 304 for the client's matching conditional request, 206
    or 416 for its range.

    @param label: The C{X-Cache} status.
    @param age: The response's current age in seconds, its C{Age}.
    @param cacheStatus: The cache's C{Cache-Status} member (RFC 9211) to
        send, with C{X-Cache}; L{None} to send neither.
    @param onGone: For an entry whose body stays in its store: called
        instead, before anything is written, if the body is no longer there
        (without it, the request is answered 503).
    """
    status = entry.status
    reason = entry.reason
    headers = entry.headers
    opener: Callable[[], Deferred[StoredBody | None]] | None = getattr(
        entry, "openBody", None
    )
    size: int = getattr(entry, "bodyLength", 0) if opener else len(entry.body)
    pieces: list[Piece] = [(0, size)]
    requestHeaders = request.requestHeaders
    conditional = requestHeaders.hasHeader(
        b"if-none-match"
    ) or requestHeaders.hasHeader(b"if-modified-since")
    if conditional and 200 <= status < 300:
        if notModified(requestPairs(request), headers):
            status, reason, pieces = 304, b"Not Modified", []
            headers = notModifiedHeaders(headers)
    elif status == 200 and request.method == b"GET":
        # RFC 9110 section 14.2: GET is the only method ranges apply to.
        ranged = _ranged(request, headers, size)
        if ranged is not None:
            status, reason, headers, pieces = ranged
    passed = headers + [(b"Age", b"%d" % (age,))]
    if cacheStatus is not None:
        passed.append((STATUS_HEADER, label))
        passed.append((CACHE_STATUS, cacheStatus))
    if request.method == b"HEAD":
        pieces = []
    if opener is None or all(isinstance(piece, bytes) for piece in pieces):
        _writeHead(request, status, reason, passed)
        body = entry.body
        request.write(body if pieces == [(0, size)] else assemble(pieces, body))
        request.finish()
        return
    opening = opener()
    opening.addCallback(_stream, request, status, reason, passed, pieces, onGone)
    opening.addErrback(_streamFailed, request)


def _writeHead(request: Any, status: int, reason: bytes, passed: Pairs) -> None:
    request.code = status
    request.code_message = reason or reasonPhrase(status)
    if hasattr(request, "passedHeaders"):
        request.passedHeaders = passed
    else:
        responseHeaders = request.responseHeaders
        for name, value in passed:
            responseHeaders.addRawHeader(name, value)


def _stream(
    producer: StoredBody | None,
    request: Any,
    status: int,
    reason: bytes,
    passed: Pairs,
    pieces: list[Piece],
    onGone: Callable[[], None] | None,
) -> None:
    """
    Answer C{request} with a body its store streams, once opened.
    """
    if requestGone(request):
        if producer is not None:
            producer.close()
        return
    if producer is None:
        if onGone is not None:
            onGone()
        else:
            renderError(request, 503)
        return
    _writeHead(request, status, reason, passed)
    request.notifyFinish().addErrback(lambda _: producer.stopProducing())
    # The head goes now, not with the first chunk read.
    request.write(b"")
    streaming = producer.producePieces(request, pieces)
    streaming.addCallbacks(_streamed, _streamFailed, (request,), errbackArgs=(request,))


def _streamed(_: None, request: Any) -> None:
    if not requestGone(request):
        request.finish()


def _streamFailed(failure: Failure, request: Any) -> None:
    """
    A stored body could not be written whole: the client went (nothing to
    do), or it is broken (the response is cut short).
    """
    if requestGone(request):
        return
    if not request.startedWriting:
        request.processingFailed(failure)
        return
    _log.warn(
        "Cache: a stored body failed while served ({why}): response cut",
        why=failure.getErrorMessage(),
    )
    # Only closing tells the client that the body is cut short; aborting an
    # HTTP/2 stream (which has a streamID and no transport of its own)
    # resets the stream, not the connection.
    channel = request.channel
    transport: Any = (
        channel if hasattr(channel, "streamID") else getattr(channel, "transport", None)
    )
    if transport is not None:
        transport.abortConnection()
