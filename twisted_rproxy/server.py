"""
The client-facing endpoint: the L{ProxySite}, its HTTP/1.1 channel and
request class, body size limits, request-body streaming and the access log.

twisted.web reads a request's whole body before it calls C{render}. The
proxy needs two things it does not offer: refusing an oversized body from
its C{Content-Length} before reading it (413), and forwarding a body while
it arrives (C{request_buffering = false}). L{ProxyHTTPChannel} asks the
request what to do once the headers are in, and L{ProxyRequest} either
buffers the body (in memory, or in a temporary file past
L{ProxySite.memoryBodyLimit}) or starts processing at once and streams it.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from io import BytesIO
from typing import IO, Any, TextIO
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    NO_BODY_CODES,
    HTTPChannel,
    _GenericHTTPChannelProtocol,
    combinedLogFormatter,
    datetimeToString,
    toChunk,
)
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from twisted_rproxy.config import ServerConfig
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.pages import renderError
from twisted_rproxy.pool import RequestBodyStream, writeThrough

_log = Logger()

#: What the body policy answers: the largest body accepted, and whether
#: the body is buffered (L{True}) or streamed to the backend.
BodyPolicy = Callable[["ProxyRequest"], tuple[int, bool]]

# No second is -1: the first call always formats a date.
_dateCache: tuple[int, bytes] = (-1, b"")


def _discard(data: bytes) -> None:
    pass


def httpDate(now: float) -> bytes:
    """
    The RFC 9110 C{Date} value for C{now}, computed once a second.
    """
    global _dateCache
    second = int(now)
    if _dateCache[0] != second:
        _dateCache = (second, datetimeToString(second))
    return _dateCache[1]


class ProxyRequest(Request):
    """
    A request whose body is size-checked before it is read, and buffered or
    streamed as its route says.

    @ivar bodyStream: For a streamed body, the L{RequestBodyStream} the
        proxy forwards from; L{None} when the body is buffered in
        C{content}.
    @ivar route: The route that takes the request, once the router found
        it.
    @ivar passedHeaders: Response headers passed on from a backend as they
        are (already filtered); written after those of C{responseHeaders}.
    @ivar onConnectionLost: Called with the reason if the client connection
        is lost before the response is finished.
    """

    # An HTTPChannel of ours or an H2Stream: attributes twisted.web's types
    # don't declare (site, transport, persistent...). None once twisted.web
    # let go of it (it deletes the attribute when a request is done).
    channel: Any = None
    bodyStream: RequestBodyStream | None = None
    route: object = None
    passedHeaders: list[tuple[bytes, bytes]] | None = None
    onConnectionLost: Callable[[Failure], object] | None = None
    _maxBody: int | None = None
    _received = 0
    _streaming = False
    _refusal: int | None = None

    def headersReceived(self, length: int | None) -> int | None:
        """
        Decide how to take the body, once the method, target and headers
        are known and before any of the body is read.

        @param length: The body's C{Content-Length}, L{None} for a chunked
            body.
        @return: L{None} to go on, or the status to refuse the request with.
        """
        site = self.channel.site
        maxBody, buffered = site.bodyPolicy(self)
        if length is not None and length > maxBody:
            return 413
        self._maxBody = maxBody
        self._streaming = not buffered and length != 0
        return None

    def gotLength(self, length: int | None) -> None:
        if self._maxBody is None:
            # Only HTTP/2 streams get here: ProxyHTTPChannel asks
            # headersReceived first.
            self._streamHeadersReceived(length)
            return
        if not self._streaming:
            Request.gotLength(self, length)
            return
        self.content = BytesIO()
        self.bodyStream = RequestBodyStream(length, self.channel.transport)
        # Process now, with the body still to come: the proxy forwards it as
        # it arrives.
        self.args = {}
        self.path = self.uri.split(b"?", 1)[0]
        self.process()

    def _streamHeadersReceived(self, length: int | None) -> None:
        """
        L{headersReceived} for an HTTP/2 stream, whose body is always
        buffered (an H2Stream has no transport of its own to pause).
        """
        channel = self.channel
        # The pseudo-headers come first in an HTTP/2 header block, so the
        # stream knows them by the time the length is known.
        self.method = getattr(channel, "command", self.method)
        self.uri = getattr(channel, "path", self.uri)
        self.clientproto = b"HTTP/2"
        refusal = self.headersReceived(length)
        self._streaming = False
        if refusal is not None:
            # The stream can't answer before its constructor returns: the
            # refusal is sent with the first body bytes (see _refuseBody), or
            # when the request ends.
            self._maxBody = 0
            self._refusal = refusal
            return
        Request.gotLength(self, length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._maxBody is not None and self._received > self._maxBody:
            self._refuseBody()
            return
        stream = self.bodyStream
        if stream is not None:
            stream.dataReceived(data)
        elif self.content is not None:
            self.content.write(data)

    def _refuseBody(self) -> None:
        channel = self.channel
        if channel is None or self.finished:
            return
        channel.persistent = False
        if self.bodyStream is not None:
            self.bodyStream.stopStreaming()
        # HTTP/1.1 stops reading; an HTTP/2 stream stays refused (None would
        # mean its headers are still to come).
        self._maxBody = None if type(channel) is ProxyHTTPChannel else 0
        if not self.startedWriting and not self.finished:
            renderError(self, self._refusal or 413)
        elif type(channel) is ProxyHTTPChannel:
            channel.forceClose()
        else:
            channel.abortConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._streaming:
            stream = self.bodyStream
            if stream is not None:
                stream.finished()
            return
        if self.channel is None or self.finished:
            # Refused (413) or abandoned before the body was complete.
            return
        if self._refusal is not None:
            # An HTTP/2 request refused from its headers, without a body.
            renderError(self, self._refusal)
            return
        Request.requestReceived(self, command, path, version)

    def process(self) -> None:
        # Unlike twisted.web's, this sets no Date or Server header here: the
        # first write adds them unless the response has its own.
        site = self.channel.site
        self.site = site
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._handleStar()
            return
        try:
            resource = site.getResourceFor(self)
            self.render(resource)
        except BaseException:
            self.processingFailed(Failure())

    def write(self, data: bytes) -> None:
        if not self.startedWriting and self.channel is not None:
            passed = self.passedHeaders
            if passed is not None:
                if type(self.channel) is ProxyHTTPChannel:
                    self._writeHead(passed, data)
                    return
                # HTTP/2: through twisted.web's own header handling.
                self.passedHeaders = None
                for name, value in passed:
                    self.responseHeaders.addRawHeader(name, value)
            self._addOwnHeaders()
        Request.write(self, data)

    def _addOwnHeaders(self) -> None:
        headers = self.responseHeaders
        site = self.channel.site
        if not headers.hasHeader(b"date"):
            headers.setRawHeaders(b"date", [httpDate(site.reactor.seconds())])
        serverHeader = getattr(site, "serverHeader", None)
        if serverHeader and not headers.hasHeader(b"server"):
            headers.setRawHeaders(b"server", [serverHeader])
        hsts = getattr(site, "hstsHeader", None)
        if hsts is not None and self.channel.isSecure():
            headers.setRawHeaders(b"strict-transport-security", [hsts])

    def _writeHead(self, passed: list[tuple[bytes, bytes]], data: bytes) -> None:
        """
        Write the response head and the first body bytes in one go, with
        the backend's headers as they are (the pool validated them) and no
        round trip through a L{Headers} object.
        """
        self.startedWriting = 1
        code = self.code
        version = self.clientproto
        noBody = self.method == b"HEAD" or code in NO_BODY_CODES
        head = [version, b" %d " % (code,), self.code_message, b"\r\n"]
        hasLength = hasDate = hasServer = False
        for name, value in passed:
            first = name[0]
            if first in b"Cc":
                hasLength = hasLength or name.lower() == b"content-length"
            elif first in b"Dd":
                hasDate = hasDate or name.lower() == b"date"
            head += (name, b": ", value, b"\r\n")
        for name, values in self.responseHeaders.getAllRawHeaders():
            lower = name.lower()
            hasDate = hasDate or lower == b"date"
            hasServer = hasServer or lower == b"server"
            for value in values:
                head += (name, b": ", value, b"\r\n")
        site = self.channel.site
        if not hasDate:
            head += (b"Date: ", httpDate(site.reactor.seconds()), b"\r\n")
        serverHeader = getattr(site, "serverHeader", None)
        if serverHeader and not hasServer:
            head += (b"Server: ", serverHeader, b"\r\n")
        hsts = site.hstsHeader
        if hsts is not None and self.channel.isSecure():
            # The proxy's own policy, for every response over TLS.
            head += (b"Strict-Transport-Security: ", hsts, b"\r\n")
        if noBody:
            head.append(b"\r\n")
            self.channel.writeSequence(head)
            self.write = _discard  # type: ignore[method-assign]
            return
        if not hasLength and version == b"HTTP/1.1":
            self.chunked = 1
            head.append(b"Transfer-Encoding: chunked\r\n\r\n")
            if data:
                head += toChunk(data)
        else:
            head.append(b"\r\n")
            head.append(data)
        self.sentLength += len(data)
        self.channel.writeSequence(head)

    def connectionLost(self, reason: Failure) -> None:
        Request.connectionLost(self, reason)
        callback = self.onConnectionLost
        if callback is not None:
            self.onConnectionLost = None
            callback(reason)

    def finish(self) -> None:
        self.onConnectionLost = None
        if self._streaming and self.bodyStream is not None:
            if not self.bodyStream.complete and self.channel is not None:
                # The rest of the body is still on the wire: the connection
                # can't carry another request.
                self.channel.persistent = False
        Request.finish(self)


class ProxyHTTPChannel(HTTPChannel):
    """
    An HTTP/1.1 channel that lets its request refuse or stream the body
    once the headers are in (see L{ProxyRequest.headersReceived}).
    """

    # A TCP or TLS transport; ITransport does not declare abortConnection.
    transport: Any
    _closing = False
    _host: object = None
    _secure: bool | None = None

    # The idle timeout. twisted.web's channel cancels its timer when a
    # request arrives and makes a new one when it is done: two heap
    # operations per request. Here one timer is kept, and checks the time of
    # the last activity when it fires.
    _idleCall: Any = None
    _idlePeriod: float | None = None
    _lastActivity = 0.0

    def connectionMade(self) -> None:
        self._seconds = self.factory.reactor.seconds
        HTTPChannel.connectionMade(self)

    def setTimeout(self, period: float | None) -> float | None:
        previous = self._idlePeriod
        self._idlePeriod = period
        # Twisted declares timeOut an int; a period may have a fraction.
        self.timeOut = period  # type: ignore[assignment]
        if period is not None:
            self._lastActivity = self._seconds()
            if self._idleCall is None:
                self._idleCall = self.callLater(period, self._checkIdle)
        return previous

    def resetTimeout(self) -> None:
        if self._idlePeriod is not None:
            self._lastActivity = self._seconds()

    def _checkIdle(self) -> None:
        self._idleCall = None
        period = self._idlePeriod
        if period is None:
            return
        idle = self._seconds() - self._lastActivity
        if idle < period:
            self._idleCall = self.callLater(period - idle, self._checkIdle)
        else:
            self.timeoutConnection()

    def stopIdleTimer(self) -> None:
        """
        Cancel the idle timer for good (the connection is closed, or was
        handed over to HTTP/2).
        """
        self._idlePeriod = None
        call, self._idleCall = self._idleCall, None
        if call is not None and call.active():
            call.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        HTTPChannel.connectionLost(self, reason)
        self.stopIdleTimer()

    def getHost(self) -> object:
        # Asked for every request; the answer is the connection's.
        host = self._host
        if host is None:
            host = self._host = HTTPChannel.getHost(self)
        return host

    def isSecure(self) -> bool:
        secure = self._secure
        if secure is None:
            secure = self._secure = bool(HTTPChannel.isSecure(self))
        return secure

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        request.method = self._command
        request.uri = self._path
        request.clientproto = self._version
        self.persistent = self.checkPersistence(request, self._version)
        refusal = request.headersReceived(self.length)
        if refusal is not None:
            self.persistent = False
            self._handlingRequest = True
            self.setTimeout(None)
            renderError(request, refusal)
            self._closing = True
            return
        request.gotLength(self.length)
        expect = request.requestHeaders.getRawHeaders(b"expect")
        if (
            expect
            and expect[0].lower() == b"100-continue"
            and self._version == b"HTTP/1.1"
            and not request.startedWriting
        ):
            self._send100Continue()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        HTTPChannel.dataReceived(self, data)

    def allContentReceived(self) -> None:
        if self._closing or not self.requests:
            return
        HTTPChannel.allContentReceived(self)

    def loseConnection(self) -> None:
        self._closing = True
        HTTPChannel.loseConnection(self)

    def write(self, data: bytes) -> None:
        writeThrough(self.transport, data)

    def writeSequence(self, iovec: list[bytes]) -> None:
        writeThrough(self.transport, b"".join(iovec))

    def forceClose(self) -> None:
        """
        Close now, whatever is in flight: a response can't be completed.
        """
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()


class _ChannelSwitcher(_GenericHTTPChannelProtocol):
    """
    twisted.web's wrapper that hands a TLS connection to HTTP/2 when ALPN
    chose it; this one also stops the HTTP/1.1 channel's idle timer then.
    """

    def dataReceived(self, data: bytes) -> None:
        channel: Any = self._channel
        _GenericHTTPChannelProtocol.dataReceived(self, data)
        if self._channel is not channel and isinstance(channel, ProxyHTTPChannel):
            channel.stopIdleTimer()


class ProxySite(Site):
    """
    The proxy's twisted.web site: L{ProxyRequest}s on L{ProxyHTTPChannel}s,
    the configured limits, and the access log.

    @ivar bodyPolicy: Called with each request once its headers are in;
        returns the largest body accepted and whether to buffer it. The
        service sets it from the routes; by default every request gets the
        server-wide settings.
    @ivar memoryBodyLimit: Buffered bodies up to this size stay in memory;
        larger or chunked ones go to a temporary file.
    """

    requestFactory = ProxyRequest
    displayTracebacks = False
    noisy = False
    memoryBodyLimit = 1024 * 1024
    #: The C{Strict-Transport-Security} value added to responses over TLS,
    #: or L{None}.
    hstsHeader: bytes | None = None

    def __init__(
        self,
        resource: IResource,
        config: ServerConfig,
        reactor: IProxyReactor,
        bodyPolicy: BodyPolicy | None = None,
    ) -> None:
        Site.__init__(
            self,
            resource,
            parsePOSTFormSubmission=False,
            timeout=config.idleTimeout or None,
            reactor=reactor,
        )
        self.config = config
        serverHeader = config.serverHeader
        self.serverHeader = serverHeader.encode() if serverHeader else None
        defaultPolicy = (config.maxBodySize, config.requestBuffering)
        self.bodyPolicy: BodyPolicy = bodyPolicy or (lambda request: defaultPolicy)
        self._accessLog: TextIO | None = None

    def protocol(self) -> _ChannelSwitcher:
        # twisted.web's own factory does this with a plain HTTPChannel; the
        # wrapper switches to HTTP/2 when TLS negotiates it.
        channel = ProxyHTTPChannel()
        channel.maxHeaders = self.config.maxHeaders
        channel.totalHeadersSize = self.config.maxHeaderSize
        return _ChannelSwitcher(channel)

    def getContentFile(self, length: int | None) -> IO[bytes]:
        """
        Where a buffered request body is kept.
        """
        if length is not None and length <= self.memoryBodyLimit:
            return BytesIO()
        return tempfile.TemporaryFile()

    def startFactory(self) -> None:
        path = self.config.accessLog
        if path is not None and self._accessLog is None:
            if path == "-":
                self._accessLog = sys.__stdout__
            else:
                self._accessLog = open(path, "a", buffering=1, encoding="utf-8")
        Site.startFactory(self)

    def stopFactory(self) -> None:
        log, self._accessLog = self._accessLog, None
        if log is not None and log is not sys.__stdout__:
            log.close()
        Site.stopFactory(self)

    def reopenAccessLog(self) -> None:
        """
        Close and reopen the access log file (after it was rotated).
        """
        path = self.config.accessLog
        if path is None or path == "-":
            return
        old = self._accessLog
        self._accessLog = open(path, "a", buffering=1, encoding="utf-8")
        if old is not None:
            old.close()

    def log(self, request: Request) -> None:  # type: ignore[override]
        accessLog = self._accessLog
        if accessLog is not None:
            line = combinedLogFormatter(self._logDateTime, request)
            try:
                accessLog.write(line + "\n")
            except (OSError, ValueError) as e:
                _log.error("Cannot write the access log: {error}", error=e)
