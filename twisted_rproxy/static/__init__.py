"""
Static files: L{StaticResource} serves one directory, in place of
L{twisted.web.static.File}, with what a reverse proxy in front of browsers
needs and nothing that could leak what lies outside the directory.

It refuses every way out of its root (C{..}, encoded slashes and
backslashes, NUL bytes, drive letters, overlong UTF-8, symbolic links that
leave the root) and hidden files with the same 404 page as a missing file;
answers conditional requests (C{If-None-Match}, C{If-Modified-Since},
C{If-Match}, C{If-Unmodified-Since}, C{If-Range}) from a strong ETag and the
modification time; serves single and multiple byte ranges; picks
precompressed C{.br} and C{.gz} siblings by the client's
C{Accept-Encoding}; and streams bodies in chunks of L{CHUNK_SIZE} bytes with
a pull producer, so that a file is never read whole into memory.

The decisions are pure functions of data, tested without a reactor:
L{parseRange}, L{parseAcceptEncoding}, L{chooseEncoding}, L{etagMatches},
L{parseHTTPDate}, L{contentTypeFor}, L{safeSegmentName}.

File reads are ordinary blocking reads in the reactor thread, as in
twisted.web's own L{File}: one chunk at a time, from the page cache for
files that are read often.

The decisions are plain functions in L{rules}; the resource and its file
producer are here.
"""

from __future__ import annotations

import html
import io
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import BinaryIO, cast
from urllib.parse import quote

from twisted.internet.interfaces import IPullProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from twisted_rproxy.pages import errorBody, renderError, setStatus
from twisted_rproxy.static.rules import (
    _ETAG_SUFFIX,
    _RAW_FORBIDDEN,
    _SIBLINGS,
    _UNSAFE_IN_LOCATION,
    MAX_RANGES,
    MIME_TYPES,
    _checkHeaderValue,
    _extensionLookup,
    _normalizeExtensions,
    chooseEncoding,
    contentTypeFor,
    etagMatches,
    makeETag,
    parseAcceptEncoding,
    parseHTTPDate,
    parseRange,
    safeSegmentName,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_INDEX",
    "MAX_RANGES",
    "MIME_TYPES",
    "StaticResource",
    "chooseEncoding",
    "contentTypeFor",
    "etagMatches",
    "makeETag",
    "parseAcceptEncoding",
    "parseHTTPDate",
    "parseRange",
    "safeSegmentName",
]


_log = Logger()


CHUNK_SIZE = 64 * 1024
"""
The most bytes read from a file, and written to the client, at a time.
"""


DEFAULT_INDEX = ("index.html",)
"""
The names of the file served for a directory, in order of preference.
"""


_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)


_NO_EXPIRES = re.compile(r"\b(?:no-store|no-cache|private)\b", re.IGNORECASE)


def _expiresFor(cacheControl: str, now: float) -> bytes | None:
    """
    The C{Expires} value matching a C{Cache-Control} value's C{max-age}, for
    HTTP/1.0 caches; L{None} when it has none or forbids shared caching.
    """
    if _NO_EXPIRES.search(cacheControl):
        return None
    match = _MAX_AGE.search(cacheControl)
    if match is None or len(match.group(1)) > 10:
        return None
    result: bytes = datetimeToString(int(now) + int(match.group(1)))
    return result


def _header(request: IRequest, name: bytes) -> bytes | None:
    """
    A request header's lines joined with commas, L{None} without any.
    """
    values = request.requestHeaders.getRawHeaders(name)
    if not values:
        return None
    return b", ".join(values)


def _renderPage(
    request: IRequest,
    status: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    contentType: bytes = b"text/html; charset=utf-8",
) -> None:
    """
    Answer C{request} with a small page and finish it: the proxy's error
    page for C{status} (as L{renderError}), with C{headers} added, such as
    C{Allow} on a 405.
    """
    if body is None:
        body = errorBody(status)
    setStatus(request, status)
    responseHeaders = request.responseHeaders
    for name, _ in list(responseHeaders.getAllRawHeaders()):
        if name.lower() not in (b"date", b"server", b"connection"):
            responseHeaders.removeHeader(name)
    responseHeaders.setRawHeaders(b"content-type", [contentType])
    responseHeaders.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
    if status >= 400:
        responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    for name, value in headers:
        responseHeaders.setRawHeaders(name, [value])
    if request.method != b"HEAD":
        request.write(body)
    request.finish()


_Piece = bytes | tuple[int, int]


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
        self, request: Request, file: BinaryIO, pieces: list[_Piece], chunkSize: int
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


class StaticResource(Resource):
    """
    The files under one directory, served for GET and HEAD.

    It is a leaf: what is left of the path (C{request.postpath}) names the
    file, whichever resource handed the request over (the proxy's router
    after a route's prefix, or any twisted.web tree it is mounted in).

    Responses carry C{ETag}, C{Last-Modified}, C{Accept-Ranges: bytes} and
    the configured C{Cache-Control} (and C{Expires} from its C{max-age}).
    Everything refused, missing or hidden gets the same 404 page.

    @ivar root: The directory served, as given.
    @ivar index: The names of the file served for a directory.
    @ivar listDirectories: Whether a directory without an index file gets
        an HTML listing (otherwise 404).
    @ivar allowHidden: Whether names starting with C{.} are served.
    @ivar followSymlinksOutside: Whether symbolic links that lead out of
        the root are followed.
    @ivar cacheControl: The C{Cache-Control} of every file, or L{None}.
    @ivar cacheControlByExtension: C{Cache-Control} values by extension,
        before C{cacheControl}.
    @ivar mimeTypes: Content types by extension, before L{MIME_TYPES}.
    @ivar chunkSize: The most bytes read from a file at a time.
    """

    isLeaf = True

    chunkSize = CHUNK_SIZE

    def __init__(
        self,
        root: str,
        *,
        index: Sequence[str] = DEFAULT_INDEX,
        listDirectories: bool = False,
        allowHidden: bool = False,
        followSymlinksOutside: bool = False,
        cacheControl: str | None = None,
        cacheControlByExtension: Mapping[str, str] | None = None,
        mimeTypes: Mapping[str, str] | None = None,
        reactor: IReactorTime | None = None,
    ) -> None:
        """
        @param root: The directory to serve.
        @param index: The names of the file served for a directory, tried
            in order.
        @param listDirectories: List directories that have no index file.
        @param allowHidden: Serve names that start with C{.} (C{..} never).
        @param followSymlinksOutside: Follow symbolic links out of C{root}.
        @param cacheControl: The C{Cache-Control} value for every file.
        @param cacheControlByExtension: C{Cache-Control} values by file
            extension (C{"woff2"}, C{".html"}), which win over
            C{cacheControl}.
        @param mimeTypes: C{Content-Type} values by extension, which win
            over L{MIME_TYPES}.
        @param reactor: The clock C{Expires} is computed from; the system
            time when L{None}.
        @raise ValueError: For a header value that is not printable ASCII.
        """
        Resource.__init__(self)
        self.root = root
        self._realRoot = os.path.realpath(root)
        self._rootPrefix = (
            self._realRoot
            if self._realRoot.endswith(os.sep)
            else self._realRoot + os.sep
        )
        for name in index:
            if safeSegmentName(name.encode("utf-8"), allowHidden=True) is None:
                raise ValueError(f"not a file name for an index: {name!r}")
        self.index = tuple(index)
        self.listDirectories = listDirectories
        self.allowHidden = allowHidden
        self.followSymlinksOutside = followSymlinksOutside
        if cacheControl is not None:
            _checkHeaderValue(cacheControl, "cacheControl")
        self.cacheControl = cacheControl
        self.cacheControlByExtension = _normalizeExtensions(
            cacheControlByExtension, "cacheControlByExtension"
        )
        self.mimeTypes = _normalizeExtensions(mimeTypes, "mimeTypes")
        self._reactor = reactor

    def _now(self) -> float:
        if self._reactor is not None:
            return self._reactor.seconds()
        return time.time()

    def openFile(self, path: str) -> BinaryIO:
        """
        Open a file for reading, without following a symbolic link in its
        last component (C{path} is a resolved path already) and without
        blocking on a FIFO.

        @param path: The resolved path of the file.
        @return: The open file, unbuffered: each read is one system call.
        @raise OSError: If it cannot be opened.
        """
        flags = os.O_RDONLY
        for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC", "O_BINARY"):
            flags |= getattr(os, name, 0)
        fd = os.open(path, flags)
        return io.FileIO(fd, "rb", closefd=True)

    def _contained(self, path: str) -> str | None:
        """
        The real path of C{path} if it is under the root (or symbolic links
        may leave it), else L{None}.
        """
        real = os.path.realpath(path)
        if self.followSymlinksOutside:
            return real
        if real == self._realRoot or real.startswith(self._rootPrefix):
            return real
        return None

    def _regularFile(self, path: str) -> str | None:
        """
        The real path of C{path} if it is a regular file under the root.
        """
        real = self._contained(path)
        if real is None:
            return None
        try:
            info = os.stat(real)
        except (OSError, ValueError):
            return None
        return real if stat.S_ISREG(info.st_mode) else None

    def render(self, request: IRequest) -> object:
        """
        Answer a request for the file or directory C{request.postpath}
        names.

        @return: L{NOT_DONE_YET}: the response is written here or by a
            producer.
        """
        if request.method not in (b"GET", b"HEAD"):
            _renderPage(request, 405, [(b"allow", b"GET, HEAD")])
            return NOT_DONE_YET
        path = request.path
        lowered = path.lower()
        if not path.startswith(b"/") or any(bad in lowered for bad in _RAW_FORBIDDEN):
            renderError(request, 404)
            return NOT_DONE_YET
        segments = list(request.postpath)
        trailingSlash = bool(segments) and segments[-1] == b""
        if trailingSlash:
            segments.pop()
        names: list[str] = []
        for segment in segments:
            name = safeSegmentName(segment, self.allowHidden)
            if name is None:
                renderError(request, 404)
                return NOT_DONE_YET
            names.append(name)
        candidate = os.path.join(self._realRoot, *names)
        real = self._contained(candidate)
        try:
            info = os.stat(real) if real is not None else None
        except (OSError, ValueError):
            info = None
        if real is None or info is None:
            renderError(request, 404)
        elif stat.S_ISDIR(info.st_mode):
            if not trailingSlash:
                self._redirectToDirectory(request)
            else:
                self._renderDirectory(request, candidate, real)
        elif stat.S_ISREG(info.st_mode) and not trailingSlash:
            self._renderFile(request, candidate)
        else:
            renderError(request, 404)
        return NOT_DONE_YET

    def _redirectToDirectory(self, request: IRequest) -> None:
        """
        Send C{/dir} to C{/dir/} with a 301, keeping the query string.
        """
        # One leading slash: "//host/" would send the client to another site.
        location = b"/" + request.path.lstrip(b"/") + b"/"
        _, question, query = request.uri.partition(b"?")
        if question:
            location += b"?" + query
        location = _UNSAFE_IN_LOCATION.sub(
            lambda match: b"%%%02X" % (match.group()[0],), location
        )
        escaped = html.escape(location.decode("ascii")).encode("ascii")
        body = (
            b'<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            b"<title>301 Moved Permanently</title></head>\n<body>"
            b'<h1>301 Moved Permanently</h1>\n<p><a href="%s">%s</a></p>'
            b"</body></html>\n" % (escaped, escaped)
        )
        _renderPage(request, 301, [(b"location", location)], body)

    def _renderDirectory(self, request: IRequest, candidate: str, real: str) -> None:
        """
        Serve a directory's index file, its listing, or a 404.
        """
        for name in self.index:
            indexPath = os.path.join(candidate, name)
            if self._regularFile(indexPath) is not None:
                self._renderFile(request, indexPath)
                return
        if not self.listDirectories:
            renderError(request, 404)
            return
        body = self._listing(request, real)
        if body is None:
            renderError(request, 404)
            return
        _renderPage(request, 200, [(b"cache-control", b"no-cache")], body)

    def _listing(self, request: IRequest, real: str) -> bytes | None:
        """
        A simple HTML listing of a directory: every entry that would be
        served, directories first marked with a slash.
        """
        entries: list[tuple[bool, str]] = []
        try:
            with os.scandir(real) as scan:
                for entry in scan:
                    name = entry.name
                    try:
                        name.encode("utf-8")
                    except UnicodeEncodeError:
                        continue
                    if safeSegmentName(name.encode("utf-8"), self.allowHidden) is None:
                        continue
                    if self._contained(entry.path) is None:
                        continue
                    try:
                        isDirectory = entry.is_dir()
                        if not isDirectory and not entry.is_file():
                            continue
                    except OSError:
                        continue
                    entries.append((not isDirectory, name))
        except OSError:
            return None
        entries.sort()
        title = html.escape(request.path.decode("utf-8", "replace"))
        lines = [
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
            f"<title>Index of {title}</title></head>\n<body>"
            f"<h1>Index of {title}</h1>\n<ul>"
        ]
        for isFile, name in entries:
            slash = "" if isFile else "/"
            href = quote(name, safe="") + slash
            lines.append(
                f'<li><a href="{html.escape(href)}">{html.escape(name)}{slash}</a></li>'
            )
        lines.append("</ul></body></html>\n")
        return "\n".join(lines).encode("utf-8")

    def _renderFile(self, request: IRequest, candidate: str) -> None:
        """
        Serve a regular file, or its precompressed sibling, whole or in
        ranges, or a 304, 412 or 416 about it.

        @param candidate: The file's path under the root as the request
            names it (before symbolic links are resolved): its name gives
            the type, and siblings are found next to it.
        """
        siblings: dict[str, str] = {}
        for siblingCoding, extension in _SIBLINGS:
            sibling = self._regularFile(candidate + extension)
            if sibling is not None:
                siblings[siblingCoding] = sibling
        coding = chooseEncoding(_header(request, b"accept-encoding"), siblings)
        path: str | None = (
            siblings[coding] if coding is not None else self._contained(candidate)
        )
        try:
            if path is None:
                raise FileNotFoundError(candidate)
            file = self.openFile(path)
        except (OSError, ValueError):
            renderError(request, 404)
            return
        try:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise FileNotFoundError(path)
        except OSError:
            file.close()
            renderError(request, 404)
            return
        if not self._respond(request, candidate, file, info, coding, bool(siblings)):
            file.close()

    def _respond(
        self,
        request: IRequest,
        candidate: str,
        file: BinaryIO,
        info: os.stat_result,
        coding: str | None,
        vary: bool,
    ) -> bool:
        """
        Write the response for an open file.

        @return: Whether a producer took the file over (otherwise the caller
            closes it).
        """
        size = info.st_size
        etag = makeETag(info, _ETAG_SUFFIX.get(coding or "", ""))
        modified = int(info.st_mtime)
        name = os.path.basename(candidate)
        contentType = contentTypeFor(name, self.mimeTypes).encode("ascii")
        validators: list[tuple[bytes, bytes]] = [
            (b"etag", etag),
            (b"last-modified", datetimeToString(modified)),
        ]
        cacheControl = (
            _extensionLookup(name, self.cacheControlByExtension) or self.cacheControl
        )
        if cacheControl is not None:
            validators.append((b"cache-control", cacheControl.encode("ascii")))
            expires = _expiresFor(cacheControl, self._now())
            if expires is not None:
                validators.append((b"expires", expires))
        if vary:
            validators.append((b"vary", b"Accept-Encoding"))

        failed = self._preconditionFailed(request, etag, modified)
        if failed is not None:
            if failed == 304:
                request.setResponseCode(304)
                for header, value in validators:
                    request.responseHeaders.setRawHeaders(header, [value])
                request.write(b"")
                request.finish()
            else:
                _renderPage(request, failed)
            return False

        headers = request.responseHeaders
        for header, value in validators:
            headers.setRawHeaders(header, [value])
        headers.setRawHeaders(b"accept-ranges", [b"bytes"])
        headers.setRawHeaders(b"x-content-type-options", [b"nosniff"])
        if coding is not None:
            headers.setRawHeaders(b"content-encoding", [coding.encode("ascii")])

        ranges = self._requestedRanges(request, etag, modified, size)
        pieces: list[_Piece]
        if ranges == []:
            _renderPage(
                request,
                416,
                [(b"content-range", b"bytes */%d" % (size,))]
                + ([(b"vary", b"Accept-Encoding")] if vary else []),
            )
            return False
        if ranges is None:
            headers.setRawHeaders(b"content-type", [contentType])
            pieces = [(0, size)]
            length = size
        elif len(ranges) == 1:
            first, last = ranges[0]
            request.setResponseCode(206)
            headers.setRawHeaders(b"content-type", [contentType])
            headers.setRawHeaders(
                b"content-range", [b"bytes %d-%d/%d" % (first, last, size)]
            )
            pieces = [(first, last - first + 1)]
            length = last - first + 1
        else:
            boundary = secrets.token_hex(16).encode("ascii")
            request.setResponseCode(206)
            headers.setRawHeaders(
                b"content-type", [b"multipart/byteranges; boundary=" + boundary]
            )
            pieces = []
            length = 0
            for number, (first, last) in enumerate(ranges):
                partHead = b"%s--%s\r\nContent-Type: %s\r\n" % (
                    b"\r\n" if number else b"",
                    boundary,
                    contentType,
                ) + b"Content-Range: bytes %d-%d/%d\r\n\r\n" % (first, last, size)
                pieces += [partHead, (first, last - first + 1)]
                length += len(partHead) + last - first + 1
            closing = b"\r\n--%s--\r\n" % (boundary,)
            pieces.append(closing)
            length += len(closing)
        headers.setRawHeaders(b"content-length", [b"%d" % (length,)])
        if request.method == b"HEAD" or length == 0:
            request.write(b"")
            request.finish()
            return False
        if getattr(request, "_disconnected", False):
            return False
        # Any twisted.web request (ProxyRequest among them) is a Request:
        # IRequest does not declare the producer and notification methods.
        _FileProducer(cast(Request, request), file, pieces, self.chunkSize).start()
        return True

    def _preconditionFailed(
        self, request: IRequest, etag: bytes, modified: int
    ) -> int | None:
        """
        Evaluate the preconditions in the order of RFC 9110 section 13.2.2.

        @return: 412 or 304 if one fails, L{None} to go on.
        """
        ifMatch = _header(request, b"if-match")
        if ifMatch is not None:
            if not etagMatches(ifMatch, etag, weak=False):
                return 412
        else:
            ifUnmodifiedSince = _header(request, b"if-unmodified-since")
            if ifUnmodifiedSince is not None:
                since = parseHTTPDate(ifUnmodifiedSince)
                if since is not None and modified > since:
                    return 412
        ifNoneMatch = _header(request, b"if-none-match")
        if ifNoneMatch is not None:
            if etagMatches(ifNoneMatch, etag, weak=True):
                return 304
        else:
            ifModifiedSince = _header(request, b"if-modified-since")
            if ifModifiedSince is not None:
                since = parseHTTPDate(ifModifiedSince)
                if since is not None and modified <= since:
                    return 304
        return None

    def _requestedRanges(
        self, request: IRequest, etag: bytes, modified: int, size: int
    ) -> list[tuple[int, int]] | None:
        """
        The ranges to serve, as L{parseRange} returns them; L{None} (the
        whole file) without a single C{Range} header or when C{If-Range}
        does not match.
        """
        values = request.requestHeaders.getRawHeaders(b"range")
        if not values or len(values) > 1:
            return None
        ifRange = _header(request, b"if-range")
        if ifRange is not None:
            ifRange = ifRange.strip(b" \t")
            if ifRange.startswith((b'"', b"W/")):
                # One entity tag, compared strongly: a weak one never matches.
                if b"," in ifRange or not etagMatches(ifRange, etag, weak=False):
                    return None
            elif parseHTTPDate(ifRange) != modified:
                return None
        return parseRange(values[0], size)
