"""
L{StaticResource}: the files under one directory, served for GET and HEAD
(see L{twisted_rproxy.static}).
"""

from __future__ import annotations

import io
import os
import stat
import time
from collections.abc import Mapping, Sequence
from typing import BinaryIO, cast

from twisted.internet.interfaces import IReactorTime
from twisted.web.http import datetimeToString
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.pages import renderError
from twisted_rproxy.rules.ranges import (
    Piece,
    partialContent,
    requestedRanges,
    unsatisfiedRange,
)
from twisted_rproxy.static.pages import (
    _header,
    _renderPage,
    listingBody,
    redirectBody,
)
from twisted_rproxy.static.producer import CHUNK_SIZE, _FileProducer
from twisted_rproxy.static.rules import (
    _ETAG_SUFFIX,
    _RAW_FORBIDDEN,
    _SIBLINGS,
    _UNSAFE_IN_LOCATION,
    _checkHeaderValue,
    _expiresFor,
    _extensionLookup,
    _normalizeExtensions,
    chooseEncoding,
    contentTypeFor,
    makeETag,
    preconditionFailed,
    safeSegmentName,
)

__all__ = ["DEFAULT_INDEX", "StaticResource"]


DEFAULT_INDEX = ("index.html",)
"""
The names of the file served for a directory, in order of preference.
"""


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
        body = redirectBody(location)
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
        return listingBody(request.path, entries)

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

        failed = preconditionFailed(
            _header(request, b"if-match"),
            _header(request, b"if-unmodified-since"),
            _header(request, b"if-none-match"),
            _header(request, b"if-modified-since"),
            etag,
            modified,
        )
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

        requestHeaders = request.requestHeaders
        ranges = requestedRanges(
            requestHeaders.getRawHeaders(b"range"),
            requestHeaders.getRawHeaders(b"if-range"),
            size,
            etag,
            modified,
        )
        pieces: list[Piece]
        if ranges == []:
            _renderPage(
                request,
                416,
                [unsatisfiedRange(size)]
                + ([(b"vary", b"Accept-Encoding")] if vary else []),
            )
            return False
        if ranges is None:
            headers.setRawHeaders(b"content-type", [contentType])
            pieces = [(0, size)]
            length = size
        else:
            request.setResponseCode(206)
            if len(ranges) == 1:
                headers.setRawHeaders(b"content-type", [contentType])
            partial = partialContent(ranges, size, contentType)
            for header, value in partial.headers:
                headers.setRawHeaders(header, [value])
            pieces, length = partial.pieces, partial.length
        headers.setRawHeaders(b"content-length", [b"%d" % (length,)])
        if request.method == b"HEAD" or length == 0:
            request.write(b"")
            request.finish()
            return False
        if requestGone(request):
            return False
        # Any twisted.web request (ProxyRequest among them) is a Request:
        # IRequest does not declare the producer and notification methods.
        _FileProducer(cast(Request, request), file, pieces, self.chunkSize).start()
        return True
