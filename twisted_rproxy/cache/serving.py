"""
Answering a request from a stored response (L{serveEntry}): as it is, 304
to the client's matching conditional request, or 206 or 416 for its byte
ranges (with L{twisted_rproxy.rules.ranges}, as static files do).

A hit never touches the cache's child: the stored head is handed to the
proxy's head writer as C{passedHeaders} (plus C{Age}) and the body written
at once.
"""

from __future__ import annotations

from typing import Any

from twisted_rproxy.cache.keys import Pairs, requestPairs
from twisted_rproxy.cache.policy import notModified, notModifiedHeaders
from twisted_rproxy.cache.status import STATUS_HEADER
from twisted_rproxy.messages import CacheEntry
from twisted_rproxy.pages import reasonPhrase
from twisted_rproxy.rules.dates import parseHTTPDate
from twisted_rproxy.rules.ranges import (
    assemble,
    partialContent,
    requestedRanges,
    unsatisfiedRange,
)

__all__ = ["serveEntry"]

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
    request: Any, headers: Pairs, body: bytes
) -> tuple[int, bytes, Pairs, bytes] | None:
    """
    The status, reason, head and body of a 206 or 416 answering the
    C{Range} of C{request} from a stored 200; L{None} to serve it whole.
    """
    requestHeaders = request.requestHeaders
    rangeValues = requestHeaders.getRawHeaders(b"range")
    if not rangeValues:
        return None
    contentType, etag, lastModified = _validatorsOf(headers)
    size = len(body)
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
            b"",
        )
    partial = partialContent(ranges, size, contentType)
    replaced = {name.lower() for name, _ in partial.headers}
    replaced.add(b"content-length")
    kept = [(n, v) for n, v in headers if n.lower() not in replaced]
    return (
        206,
        reasonPhrase(206),
        kept + partial.headers + [(b"Content-Length", b"%d" % (partial.length,))],
        assemble(partial.pieces, body),
    )


def serveEntry(
    request: Any, entry: CacheEntry, label: bytes, age: float, statusHeader: bool
) -> None:
    """
    Answer C{request} from a stored response, and finish it: 200 (or its
    stored status), 304 for the client's matching conditional request, 206
    or 416 for its range.

    @param label: The C{X-Cache} status.
    @param age: The response's current age in seconds, its C{Age}.
    @param statusHeader: Whether to send C{X-Cache}.
    """
    status = entry.status
    reason = entry.reason
    headers = entry.headers
    body = entry.body
    requestHeaders = request.requestHeaders
    conditional = requestHeaders.hasHeader(
        b"if-none-match"
    ) or requestHeaders.hasHeader(b"if-modified-since")
    if conditional and 200 <= status < 300:
        if notModified(requestPairs(request), headers):
            status, reason, body = 304, b"Not Modified", b""
            headers = notModifiedHeaders(headers)
    elif status == 200 and request.method == b"GET":
        # RFC 9110 section 14.2: GET is the only method ranges apply to.
        ranged = _ranged(request, headers, body)
        if ranged is not None:
            status, reason, headers, body = ranged
    passed = headers + [(b"Age", b"%d" % (age,))]
    if statusHeader:
        passed.append((STATUS_HEADER, label))
    request.code = status
    request.code_message = reason or reasonPhrase(status)
    if hasattr(request, "passedHeaders"):
        request.passedHeaders = passed
    else:
        responseHeaders = request.responseHeaders
        for name, value in passed:
            responseHeaders.addRawHeader(name, value)
    request.write(body if request.method != b"HEAD" else b"")
    request.finish()
