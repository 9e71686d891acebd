"""
L{H2StreamChannel}: one HTTP/2 stream as the twisted.web channel of its
request, so that the proxy's resources (proxy, filters, cache, static
files, compression) serve it as they serve an HTTP/1.1 request.

The stream writes nothing itself: it keeps the response head and the body
written to it, and its connection (L{twisted_rproxy.h2.connection}) asks it
to queue them as frames (L{sendPending}) once per reactor turn, when the
peer's window opens, or when the transport has room again.
Small writes of one turn so become one DATA frame, and a head with a small
body one C{send}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from typing import Protocol as TypingProtocol

from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from twisted_rproxy.h2.head import RequestHead, responseFields
from twisted_rproxy.h2.limits import CANCEL, INTERNAL_ERROR, NO_ERROR, H2Limits
from twisted_rproxy.hardening import checkHead
from twisted_rproxy.pages import renderError
from twisted_rproxy.policies import resolveClient

_log = Logger()

#: Past this many bytes written and not yet sent, a streaming producer
#: (the backend connection) is paused; it is resumed once all are sent.
HIGH_WATER = 65536


class StreamOwner(TypingProtocol):
    """
    What a stream needs of its connection
    (L{twisted_rproxy.h2.connection.H2ServerConnection} provides it).
    """

    limits: H2Limits
    site: Any
    transport: Any
    #: Whether the transport asked for no more data for now.
    writePaused: bool
    trustedProxies: tuple[Any, ...]
    #: The largest frame the client takes.
    maxFrameSize: int

    def seconds(self) -> float:
        """
        The reactor's time.
        """

    def streamChanged(self, stream: H2StreamChannel) -> None:
        """
        C{stream} has something to send: ask it at the next flush.
        """

    def sendHeaders(
        self, stream: H2StreamChannel, fields: list[tuple[bytes, bytes]], end: bool
    ) -> None:
        """
        Queue a header block of C{stream}.
        """

    def sendData(self, stream: H2StreamChannel, data: bytes, end: bool) -> None:
        """
        Queue a C{DATA} frame of C{stream}.
        """

    def window(self, stream: H2StreamChannel) -> int:
        """
        How much of C{stream}'s body may be sent now.
        """

    def resetStream(self, streamID: int, code: int) -> None:
        """
        Queue an C{RST_STREAM}.
        """

    def acknowledge(self, stream: H2StreamChannel, length: int) -> None:
        """
        C{stream}'s request body took C{length} more bytes.
        """

    def streamDone(self, stream: H2StreamChannel) -> None:
        """
        C{stream} sent its end (or was reset): it no longer counts.
        """

    def scheduleFlush(self) -> None:
        """
        Write what is queued at the end of this turn.
        """

    def getPeer(self) -> Any:
        """
        The client's address.
        """

    def getHost(self) -> Any:
        """
        The address it connected to.
        """

    def isSecure(self) -> bool:
        """
        Whether the connection is TLS.
        """


@implementer(IPushProducer)
class H2StreamChannel:
    """
    One HTTP/2 stream, as the channel of its twisted.web request: what
    L{twisted.web.http.Request} and L{twisted_rproxy.server.ProxyRequest}
    call on an L{HTTPChannel} (C{write}, C{writeHeaders}, C{getPeer},
    C{registerProducer}, C{requestDone}...), and the producer of the
    request body (L{bodyProducer}): pausing it stops opening the client's
    flow-control window.

    @ivar streamID: The stream's identifier.
    @ivar site: The site (the request's C{channel.site}).
    @ivar factory: The same site (twisted.web logs through C{factory}).
    @ivar transport: The connection's transport (where a filter finds the
        client's TLS certificate).
    @ivar request: The stream's request once its head is in, or L{None}.
    @ivar command: The request method.
    @ivar uri: The request target.
    @ivar sendWindow: The stream's window for what the proxy sends.
    @ivar recvWindow: How much more of the body the client may send.
    @ivar unacknowledged: Body bytes taken and not yet given back to the
        client's window.
    @ivar remoteClosed: Whether the client ended the stream.
    @ivar declaredLength: The body's C{Content-Length}, or L{None}.
    @ivar receivedLength: The body bytes received.
    """

    persistent = False
    sendWindow = 65535
    recvWindow = 65535
    unacknowledged = 0
    remoteClosed = False
    declaredLength: int | None = None
    receivedLength = 0
    request: Any = None
    command = b""
    uri = b""
    #: When the last byte of the request body arrived.
    lastData = 0.0
    #: When the body's rate clock started (or restarted, after a pause by
    #: the backend), and the body bytes received since.
    bodyStart = 0.0
    bodyReceived = 0
    _head: list[tuple[bytes, bytes]] | None = None
    _headSent = False
    _ending = False
    _ended = False
    _closed = False
    _requestEnded = False
    _discard = False
    _bodyPaused = False
    _unacked = 0
    _producer: Any = None
    _streaming = False
    _producerPaused = False

    def __init__(self, streamID: int, owner: StreamOwner) -> None:
        self.streamID = streamID
        self._owner = owner
        self.site = self.factory = owner.site
        self.transport = owner.transport
        self._out: list[bytes] = []
        self._outSize = 0

    # --- the request's head, body and end, from the connection -----------

    def receiveHead(self, head: RequestHead, ended: bool) -> None:
        """
        The request's header block arrived: make its request, check its
        head as HTTP/1.1 heads are checked, and let it decide how to take
        the body (refused, buffered or streamed).

        @param head: The block, decoded and checked.
        @param ended: Whether the block ended the stream (no body).
        """
        limits = self._owner.limits
        self._requestEnded = ended
        self.command = method = head.method
        self.uri = target = head.target
        request = self.request = self.site.requestFactory(self, queued=False)
        request.requestHeaders = requestHeaders = Headers(head.fields)
        request.method = method
        request.uri = target
        request.clientproto = b"HTTP/2"
        if head.size > limits.maxHeaderListSize or head.count > limits.maxHeaders:
            self._refuse(431)
            return
        status, target = checkHead(
            method, target, b"HTTP/2", requestHeaders, limits.maxRequestLine
        )
        if status:
            self._refuse(status)
            return
        request.uri = self.uri = target
        if self._owner.trustedProxies:
            resolveClient(request, self._owner.trustedProxies)
        length = head.length(ended)
        refused = request.headersReceived(length)
        if refused is not None:
            self._refuse(refused)
            return
        self.lastData = self.bodyStart = self._owner.seconds()
        request.gotLength(length)
        expect = requestHeaders.getRawHeaders(b"expect")
        if (
            expect
            and expect[0].lower() == b"100-continue"
            and not ended
            and not request.startedWriting
        ):
            self.writeInterim(100, ())
        if ended:
            self._complete()

    def _refuse(self, status: int) -> None:
        """
        Answer the request with C{status} from its head alone: its body is
        not read.
        """
        self._discard = True
        renderError(self.request, status)

    def receiveData(self, data: bytes, flowLength: int) -> None:
        """
        A piece of the request body arrived.

        @param flowLength: What it counted against the window (padding
            included), given back to the client once the body is taken.
        """
        request = self.request
        if self._discard or request is None or self._closed:
            self._acknowledge(flowLength)
            return
        self.lastData = self._owner.seconds()
        self.bodyReceived += len(data)
        request.handleContentChunk(data)
        if self._bodyPaused:
            # Taken, but the backend is not reading: the client waits until
            # it does (the window is opened on resumeProducing).
            self._unacked += flowLength
        else:
            self._acknowledge(flowLength)

    def _acknowledge(self, length: int) -> None:
        if length and not self._closed:
            self._owner.acknowledge(self, length)

    def receiveEnd(self) -> None:
        """
        The client ended the stream: the request is whole.
        """
        if self._requestEnded:
            return
        self._requestEnded = True
        if not self._discard:
            self._complete()
        elif self._ended:
            self._owner.streamDone(self)

    def _complete(self) -> None:
        request = self.request
        if request is not None and not self._discard:
            request.requestReceived(self.command, self.uri, b"HTTP/2")

    @property
    def receivingBody(self) -> bool:
        """
        Whether the proxy waits for more of the request body (its timeout
        runs).
        """
        return (
            self.request is not None
            and not self._requestEnded
            and not self._discard
            and not self._bodyPaused
            and not self._closed
        )

    @property
    def awaitingBody(self) -> bool:
        """
        Whether more of the request body is to come (read or paused).
        """
        return (
            self.request is not None
            and not self._requestEnded
            and not self._discard
            and not self._closed
        )

    def bodyTooSlow(self) -> None:
        """
        No byte of the body arrived within the body timeout, or it fell
        below the minimum rate: refuse the request with 408, or, once its
        response (or its forwarding) started, reset the stream.
        """
        request = self.request
        if request is None or self._closed:
            return
        self._discard = True
        if not request.startedWriting and not request.streaming:
            renderError(request, 408)
            return
        request.lostStatus = 408
        self.abortConnection(CANCEL)

    def peerReset(self) -> None:
        """
        The client reset the stream.
        """
        self._lose(Failure(ConnectionDone("The client reset the stream")))

    def connectionLost(self, reason: Failure) -> None:
        """
        The connection is gone.
        """
        self._lose(reason)

    def _lose(self, reason: Failure) -> None:
        if self._closed:
            return
        self._closed = True
        self._out = []
        self._outSize = 0
        self._head = None
        request = self.request
        if request is not None and not request.finished:
            request.connectionLost(reason)
        self._owner.streamDone(self)

    # --- the twisted.web channel ------------------------------------------

    def getPeer(self) -> Any:
        return self._owner.getPeer()

    def getHost(self) -> Any:
        return self._owner.getHost()

    def isSecure(self) -> bool:
        return self._owner.isSecure()

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        """
        The response head, from twisted.web's C{Request.write}.
        """
        head = responseFields(code, headers.getAllRawHeaders())
        self.writeHead(head)

    def writeHead(self, head: list[tuple[bytes, bytes]], data: bytes = b"") -> None:
        """
        The response head (C{:status} first, lowercase names, no field
        HTTP/2 forbids), and the first bytes of its body.
        """
        if self._closed or self._headSent or self._head is not None:
            return
        self._head = head
        self._owner.streamChanged(self)
        if data:
            self.write(data)

    def writeInterim(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """
        Send an interim (1xx) head now, ahead of the final one: a
        C{HEADERS} frame that does not end the stream.

        @return: Whether it was sent (not once the final head was written,
            nor after a reset).
        """
        if self._closed or self._headSent or self._head is not None:
            return False
        block = responseFields(
            b"%d" % (status,), [(name, [value]) for name, value in headers]
        )
        self._owner.sendHeaders(self, block, False)
        self._owner.scheduleFlush()
        return True

    def write(self, data: bytes) -> None:
        if self._closed or self._ending or not data:
            return
        self._out.append(data)
        self._outSize += len(data)
        self._owner.streamChanged(self)
        if self._streaming and not self._producerPaused and self._outSize > HIGH_WATER:
            self._producerPaused = True
            self._producer.pauseProducing()

    def writeSequence(self, iovec: list[bytes]) -> None:
        self.write(b"".join(iovec))

    def requestDone(self, request: object) -> None:
        """
        The response is complete: end the stream once its body is sent.
        """
        if self._closed or self._ending:
            return
        self._ending = True
        self._owner.streamChanged(self)

    def loseConnection(self) -> None:
        """
        Give up the response: reset the stream unless it is complete.
        """
        if not self._ending:
            self.abortConnection()

    def abortConnection(self, code: int = INTERNAL_ERROR) -> None:
        """
        Reset the stream: its response is cut short.
        """
        if self._closed:
            return
        self._owner.resetStream(self.streamID, code)
        self._owner.scheduleFlush()
        self._lose(Failure(ConnectionAborted("The stream was reset")))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise ValueError(
                f"registering producer {producer} before previous one "
                f"({self._producer}) was unregistered"
            )
        self._producer = producer
        self._streaming = streaming
        self._producerPaused = False
        # A pull producer is asked for data from the next flush on.
        self._owner.streamChanged(self)

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producerPaused = False

    # --- the request body's producer -------------------------------------

    def bodyProducer(self) -> IPushProducer:
        """
        The producer a streamed request body pauses while no backend takes
        it: the stream itself.
        """
        return self

    def pauseProducing(self) -> None:
        self._bodyPaused = True

    def resumeProducing(self) -> None:
        self._bodyPaused = False
        # The backend, not the client, held the body back: its rate counts
        # from now.
        self.lastData = self.bodyStart = self._owner.seconds()
        self.bodyReceived = 0
        unacked, self._unacked = self._unacked, 0
        self._acknowledge(unacked)

    def stopProducing(self) -> None:
        self._discard = True
        self.abortConnection(CANCEL)

    # --- sending, asked by the connection --------------------------------

    def sendPending(self) -> None:
        """
        Queue what can be sent now: the head, the body up to the window (in
        frames of the peer's largest size), the end; then pause or resume
        the producer.
        """
        if self._closed:
            return
        owner = self._owner
        head = self._head
        if head is not None:
            self._head = None
            self._headSent = True
            if self._ending and not self._outSize:
                owner.sendHeaders(self, head, True)
                self._sentEnd()
                return
            owner.sendHeaders(self, head, False)
        if self._outSize:
            if not owner.writePaused:
                self._sendBody(owner)
        elif self._ending and not self._ended:
            if not self._headSent:
                # finish() without a head: twisted.web always writes one;
                # an empty 200 to be safe.
                self._headSent = True
                owner.sendHeaders(self, [(b":status", b"200")], True)
            else:
                owner.sendData(self, b"", True)
            self._sentEnd()
            return
        self._updateProducer()

    def _sendBody(self, owner: StreamOwner) -> None:
        window = owner.window(self)
        if window <= 0:
            return
        frameSize = owner.maxFrameSize
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        size = len(data)
        sent = 0
        while sent < size and window > 0:
            n = min(window, frameSize, size - sent)
            last = sent + n == size
            piece = data if n == size else data[sent : sent + n]
            owner.sendData(self, piece, last and self._ending)
            sent += n
            window -= n
        if sent == size:
            self._out = []
            self._outSize = 0
            if self._ending:
                self._sentEnd()
        else:
            self._out = [data[sent:]]
            self._outSize = size - sent

    def _sentEnd(self) -> None:
        self._ended = True
        self._producer = None
        if not self._requestEnded and not self._closed:
            # RFC 9113 section 8.1: a complete response before the whole
            # request; NO_ERROR asks the client to stop sending its body.
            self._discard = True
            self._owner.resetStream(self.streamID, NO_ERROR)
        self._closed = True
        self._owner.streamDone(self)

    def _updateProducer(self) -> None:
        producer = self._producer
        if producer is None:
            return
        blocked = self._outSize > 0
        if self._streaming:
            if blocked and not self._producerPaused:
                self._producerPaused = True
                producer.pauseProducing()
            elif not blocked and self._producerPaused:
                self._producerPaused = False
                producer.resumeProducing()
        elif not blocked and not self._owner.writePaused:
            producer.resumeProducing()

    @property
    def hasPending(self) -> bool:
        """
        Whether body bytes wait for the window or the transport.
        """
        return self._outSize > 0 and not self._closed


StreamFactory = Callable[[int, StreamOwner], H2StreamChannel]
