"""
L{ProxyRequest}: a request whose body is size-checked before it is read,
buffered or streamed as its route says, and whose proxied response head is
written without a round trip through twisted.web's L{Headers}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from io import BytesIO
from typing import Any
from urllib.parse import unquote_to_bytes as unquote

from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import (
    NO_BODY_CODES,
    datetimeToString,
    parse_qs,
    toChunk,
)
from twisted.web.server import Request
from zope.interface import implementer

from twisted_rproxy._twisted import hasContentEncoder, requestGone
from twisted_rproxy.h2.head import CONNECTION_HEADERS
from twisted_rproxy.h2.stream import H2StreamChannel
from twisted_rproxy.interfaces import IProxyRequest
from twisted_rproxy.messages import RequestBodyStream
from twisted_rproxy.pages import reasonPhrase, renderError
from twisted_rproxy.server.channel import ProxyHTTPChannel

_log = Logger()


#: What the body policy answers: the largest body accepted, and whether
#: the body is buffered (L{True}) or streamed to the backend.
BodyPolicy = Callable[["ProxyRequest"], tuple[int, bool]]


# No second is -1: the first call always formats a date.
_dateCache: tuple[int, bytes] = (-1, b"")


def _discard(data: bytes) -> None:
    pass


def _releaseInterceptors(request: ProxyRequest) -> None:
    """
    Drop the C{write} and C{finish} that response interceptors (see
    L{twisted_rproxy.intercept}) installed on a finished C{request}.

    Each is a bound method of an object that holds the request: a cycle
    that only the garbage collector would free, for every request of a
    route with filters or a cache. Once the response is finished nothing
    more goes through them (a later C{write} raises, as it does through
    them); the class's own methods take their place.
    """
    attributes = request.__dict__
    for name in ("write", "finish"):
        installed = attributes.get(name)
        if installed is not None and getattr(installed, "__self__", None) is not None:
            del attributes[name]


def httpDate(now: float) -> bytes:
    """
    The RFC 9110 C{Date} value for C{now}, computed once a second.
    """
    global _dateCache
    second = int(now)
    if _dateCache[0] != second:
        _dateCache = (second, datetimeToString(second))
    return _dateCache[1]


@implementer(IProxyRequest)
class ProxyRequest(Request):
    """
    A request whose body is size-checked before it is read, and buffered or
    streamed as its route says: the proxy's L{IProxyRequest}.

    @ivar bodyStream: For a streamed body, the L{RequestBodyStream} the
        proxy forwards from; L{None} when the body is buffered in
        C{content}.
    @ivar route: The route that takes the request, once the router found
        it.
    @ivar passedHeaders: Response headers passed on from a backend as they
        are (already filtered); written after those of C{responseHeaders}.
    @ivar onConnectionLost: Called with the reason if the client connection
        is lost before the response is finished.
    @ivar onBackendError: Called as C{onBackendError(error, fallback)} in
        place of the proxy's error page when the backend fails before a
        response started (set by the route's error filters), or L{None}.
    @ivar startedAt: Reactor time when the request's head was in.
    @ivar upstreamStarted: Reactor time when it was handed to a pool, or
        L{None} if it was not.
    @ivar upstreamTime: Seconds from then to the backend's response head,
        or L{None}.
    @ivar upstreamServer: The URL of the backend server that answered, or
        L{None}.
    @ivar cacheStatus: What a cache made of the request (C{"hit"},
        C{"miss"}, ...), or L{None} when no cache saw it.
    @ivar connectTarget: The target of an allowed C{CONNECT} request (its
        C{uri} is then C{b"/"}, for routing).
    @ivar lostStatus: The status the access log gives the request if its
        connection is lost before a response started: L{None} for 499
        (the client left, as nginx logs it), or the status of the proxy's
        own reason to close it.
    @ivar streaming: Whether the body is forwarded as it arrives (the
        request was processed once its headers were in), rather than
        buffered first.
    """

    # An HTTPChannel of ours or an HTTP/2 stream: attributes twisted.web's types
    # don't declare (site, transport, persistent...). None once twisted.web
    # let go of it (it deletes the attribute when a request is done).
    channel: Any = None
    bodyStream: RequestBodyStream | None = None
    route: object = None
    passedHeaders: list[tuple[bytes, bytes]] | None = None
    onConnectionLost: Callable[[Failure], object] | None = None
    onBackendError: Callable[[Any, Callable[[], None]], object] | None = None
    #: The connection's peer address, when trusted proxies in front named
    #: another client (which C{getClientAddress} then returns).
    peerHost: str | None = None
    startedAt = 0.0
    upstreamStarted: float | None = None
    upstreamTime: float | None = None
    upstreamServer: str | None = None
    cacheStatus: str | None = None
    connectTarget: bytes | None = None
    lostStatus: int | None = None
    _maxBody: int | None = None
    _received = 0
    streaming = False
    #: Whether the head went out with a length (L{_writeHead}): the body's
    #: writes go straight to the channel, until the connection is lost.
    _bodyDirect = False

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        """
        Set the response status; without C{message}, its registered reason
        phrase (L{reasonPhrase}), where twisted.web would write C{Unknown
        Status} for codes it does not know (429, 431, 451...).
        """
        Request.setResponseCode(
            self, code, reasonPhrase(code) if message is None else message
        )

    def headersReceived(self, length: int | None) -> int | None:
        """
        Decide how to take the body, once the method, target and headers
        are known and before any of the body is read.

        @param length: The body's C{Content-Length}, L{None} for a chunked
            body.
        @return: L{None} to go on, or the status to refuse the request with.
        """
        site = self.channel.site
        self.startedAt = site.reactor.seconds()
        if self.method == b"CONNECT":
            if not site.config.allowConnect:
                return 405
            # Routed as a request for "/" of its Host; the proxy resource
            # tunnels it (see twisted_rproxy.upgrade).
            self.connectTarget = self.uri
            self.uri = b"/"
        maxBody, buffered = site.bodyPolicy(self)
        if length is not None and length > maxBody:
            return 413
        self._maxBody = maxBody
        self.streaming = not buffered and length != 0
        return None

    @property
    def maxBody(self) -> int | None:
        """
        The largest body accepted, once the headers are in (L{None}
        before, or once the body was refused).
        """
        return self._maxBody

    @property
    def bodyReceived(self) -> int:
        """
        How many body bytes have arrived (without the chunked framing).
        """
        return self._received

    def gotLength(self, length: int | None) -> None:
        if self._maxBody is None or not self.streaming:
            # Buffered (or on a channel that did not ask headersReceived).
            Request.gotLength(self, length)
            return
        self.content = BytesIO()
        self.bodyStream = RequestBodyStream(length, self.channel.bodyProducer())
        # Process now, with the body still to come: the proxy forwards it as
        # it arrives.
        self.args = {}
        self.path = self.uri.split(b"?", 1)[0]
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._maxBody is not None and self._received > self._maxBody:
            self.refuseBody()
            return
        stream = self.bodyStream
        if stream is not None:
            stream.dataReceived(data)
        elif self.content is not None:
            self.content.write(data)

    def refuseBody(self) -> None:
        """
        Refuse the body, past its limit (413): the connection (or HTTP/2
        stream) carries nothing more of it.
        """
        channel = self.channel
        if channel is None or self.finished:
            return
        channel.persistent = False
        if self.bodyStream is not None:
            self.bodyStream.stopStreaming()
            # The backend's exchange, which had the body streamed to it, is
            # abandoned: its response must not follow the refusal.
            callback, self.onConnectionLost = self.onConnectionLost, None
            if callback is not None:
                callback(Failure(ConnectionDone("The request body was refused")))
            if self.producer is not None:
                self.unregisterProducer()
        # HTTP/1.1 stops reading; an HTTP/2 stream stays refused (None would
        # mean its headers are still to come).
        self._maxBody = None if type(channel) is ProxyHTTPChannel else 0
        if not self.startedWriting and not self.finished:
            renderError(self, 413)
        elif type(channel) is ProxyHTTPChannel:
            channel.forceClose()
        else:
            channel.abortConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.streaming:
            stream = self.bodyStream
            if stream is not None:
                stream.finished()
            return
        if self.channel is None or self.finished:
            # Refused (413) or abandoned before the body was complete.
            return
        if self.connectTarget is not None:
            path = b"/"
        # twisted.web's requestReceived, without its parsing of a form in a
        # POST body (which reads it whole, and refuses a malformed one): the
        # body is the backend's. Newer Twisted's Site can be told so
        # (parsePOSTFormSubmission); 24.7's cannot.
        content = self.content
        if content is not None:
            content.seek(0, 0)
        self.method, self.uri = command, path
        self.clientproto = version
        self.path, separator, query = path.partition(b"?")
        self.args = parse_qs(query, 1) if separator else {}
        self.process()

    def process(self) -> None:
        # Unlike twisted.web's, this sets no Date or Server header here: the
        # first write adds them unless the response has its own.
        site = self.channel.site
        self.site = site
        self.prepath = []
        self.postpath = list(map(unquote, self.path[1:].split(b"/")))
        if self.path == b"*":
            self._answerStar()
            return
        try:
            resource = site.getResourceFor(self)
            self.render(resource)
        except BaseException:
            self.processingFailed(Failure())

    def _answerStar(self) -> None:
        """
        Answer a request for C{*} as twisted.web does: C{OPTIONS *} (a probe
        of the server) gets an empty 200, any other method a 405.
        """
        if self.method == b"OPTIONS":
            self.setResponseCode(200)
        else:
            self.setResponseCode(405)
            self.setHeader(b"Allow", b"OPTIONS")
        self.setHeader(b"Content-Length", b"0")
        self.finish()

    def write(self, data: bytes) -> None:
        if self._bodyDirect:
            # What twisted.web's Request.write does once the head of a body
            # of known length is out, without its two layers of checks per
            # piece of the body.
            if self.finished:
                raise RuntimeError(
                    "Request.write called on a request after Request.finish "
                    "was called."
                )
            if data:
                self.sentLength += len(data)
                self.channel.write(data)
            return
        if not self.startedWriting and self.channel is not None:
            passed = self.passedHeaders
            if passed is not None:
                channelType: object = type(self.channel)
                if (
                    self.cookies
                    or self.etag is not None
                    or self.lastModified is not None
                ):
                    # Set through twisted.web's own API (a filter's response
                    # hook may call addCookie): only its head writer adds
                    # them.
                    channelType = None
                if channelType is ProxyHTTPChannel:
                    self._writeHead(passed, data)
                    return
                if channelType is H2StreamChannel:
                    self._writeHeadHTTP2(passed, data)
                    return
                self.passedHeaders = None
                for name, value in passed:
                    self.responseHeaders.addRawHeader(name, value)
            self._addOwnHeaders()
        Request.write(self, data)

    def writeInterim(
        self, status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bool:
        """
        Send the client an interim (1xx) response now, ahead of the final
        one (see L{IProxyRequest.writeInterim}): over HTTP/1.1 its status
        line and C{headers}, over HTTP/2 a C{HEADERS} frame that does not
        end the stream; never to an HTTP/1.0 client (RFC 9110 section
        15.2). The request's own status and headers are untouched.

        @param headers: Header lines already checked (no CR, LF or NUL, token
            names: the backend parser's) and rewritten for the client.
        @return: Whether it was sent.
        """
        channel = self.channel
        if (
            channel is None
            or self.startedWriting
            or self.finished
            or requestGone(self)
            or not 100 <= status < 200
        ):
            return False
        if type(channel) is ProxyHTTPChannel:
            if self.clientproto != b"HTTP/1.1" or channel.tunnel is not None:
                return False
            head = [b"HTTP/1.1 %d " % (status,), reason, b"\r\n"]
            for name, value in headers:
                head += (name, b": ", value, b"\r\n")
            head.append(b"\r\n")
            channel.writeSequence(head)
            return True
        if type(channel) is H2StreamChannel:
            return channel.writeInterim(status, headers)
        return False

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

        The head is the one twisted.web's writer would make of C{passed}
        folded into C{responseHeaders} (with the proxy's C{Date}, C{Server}
        and C{Strict-Transport-Security}), so that a response whose
        headers are all in C{responseHeaders} (C{passed} empty: a filter's
        hooks saw them) is written the same way.
        """
        self.startedWriting = 1
        code = self.code
        version = self.clientproto
        channel = self.channel
        site = channel.site
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
        hsts = site.hstsHeader
        if hsts is not None and not channel.isSecure():
            hsts = None
        passedDate = hasDate
        framing: Sequence[bytes] = ()
        for name, values in self.responseHeaders.getAllRawHeaders():
            lower = name.lower()
            if lower == b"content-length":
                hasLength = True
            elif lower == b"date":
                if passedDate:
                    # The backend's replaces it (see foldPassedHeaders).
                    continue
                hasDate = True
            elif lower == b"server":
                hasServer = True
            elif lower == b"transfer-encoding":
                # Kept unless the body is chunked here, which says so
                # itself (as twisted.web's writer replaces it).
                framing = values
                continue
            elif lower == b"strict-transport-security" and hsts is not None:
                # The proxy's policy replaces it.
                continue
            for value in values:
                head += (name, b": ", value, b"\r\n")
        if not hasDate:
            head += (b"Date: ", httpDate(site.reactor.seconds()), b"\r\n")
        serverHeader = getattr(site, "serverHeader", None)
        if serverHeader and not hasServer:
            head += (b"Server: ", serverHeader, b"\r\n")
        if hsts is not None:
            # The proxy's own policy, for every response over TLS.
            head += (b"Strict-Transport-Security: ", hsts, b"\r\n")
        chunked = not noBody and not hasLength and version == b"HTTP/1.1"
        if not chunked:
            for value in framing:
                head += (b"Transfer-Encoding: ", value, b"\r\n")
        if noBody:
            head.append(b"\r\n")
            channel.writeSequence(head)
            self.write = _discard  # type: ignore[method-assign]
            return
        if chunked:
            self.chunked = 1
            head.append(b"Transfer-Encoding: chunked\r\n\r\n")
            if data:
                head += toChunk(data)
        else:
            head.append(b"\r\n")
            head.append(data)
            self._bodyDirect = not hasContentEncoder(self)
        self.sentLength += len(data)
        channel.writeSequence(head)

    def _writeHeadHTTP2(self, passed: list[tuple[bytes, bytes]], data: bytes) -> None:
        """
        L{_writeHead} for an HTTP/2 stream: the head as the list of fields
        its C{HEADERS} frame carries (lowercase names), handed to the
        stream with the first body bytes.
        """
        self.startedWriting = 1
        code = self.code
        noBody = self.method == b"HEAD" or code in NO_BODY_CODES
        head = [(b":status", b"%d" % (code,))]
        channel = self.channel
        site = channel.site
        hsts = site.hstsHeader
        if hsts is not None and not channel.isSecure():
            hsts = None
        passedDate = hasServer = False
        for name, value in passed:
            lower = name.lower()
            if lower in CONNECTION_HEADERS:
                continue
            passedDate = passedDate or lower == b"date"
            head.append((lower, value))
        hasDate = passedDate
        # As _writeHead: the backend's Date replaces one set here, and the
        # proxy's HSTS policy a hook's.
        for name, values in self.responseHeaders.getAllRawHeaders():
            lower = name.lower()
            if lower in CONNECTION_HEADERS:
                continue
            if lower == b"date":
                if passedDate:
                    continue
                hasDate = True
            elif lower == b"server":
                hasServer = True
            elif lower == b"strict-transport-security" and hsts is not None:
                continue
            for value in values:
                head.append((lower, value))
        if not hasDate:
            head.append((b"date", httpDate(site.reactor.seconds())))
        serverHeader = getattr(site, "serverHeader", None)
        if serverHeader and not hasServer:
            head.append((b"server", serverHeader))
        if hsts is not None:
            head.append((b"strict-transport-security", hsts))
        if noBody:
            channel.writeHead(head)
            self.write = _discard  # type: ignore[method-assign]
            return
        self.sentLength += len(data)
        channel.writeHead(head, data)

    def connectionLost(self, reason: Failure) -> None:
        # Processed (by a filter, the cache or a backend) and not finished:
        # the access log has a line for it still (Request.finish writes the
        # others).
        site = self.site if not self.finished else None
        # Writes go through twisted.web again, which drops them now.
        self._bodyDirect = False
        Request.connectionLost(self, reason)
        callback = self.onConnectionLost
        if callback is not None:
            self.onConnectionLost = None
            callback(reason)
        if site is not None:
            if not self.startedWriting:
                self.code = self.lostStatus or 499
            site.log(self)

    def finish(self) -> None:
        self.onConnectionLost = None
        self.onBackendError = None
        if self.streaming and self.bodyStream is not None:
            if not self.bodyStream.complete and self.channel is not None:
                # The rest of the body is still on the wire: the connection
                # can't carry another request.
                self.channel.persistent = False
        Request.finish(self)
        if self.finished:
            _releaseInterceptors(self)
