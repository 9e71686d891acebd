"""
The fence: every use of a private name of Twisted or pyOpenSSL, in this one
module, and nowhere else in the package.

Each is here because no public API does the job (or, where one does, it is
taken first and the private name is the fallback), and each has a test in
C{tests/test_fence.py} that fails, naming the installed Twisted or pyOpenSSL
version, when a release changes what it relies on. C{tox -e tests-oldest}
and C{tox -e tests-newest} run those tests against the oldest Twisted the
package supports and the newest.

Rule for the rest of the package: no C{._name} of another project's object;
add a function here, with its test.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Callable
from types import MethodType
from typing import Any, TypeVar

import OpenSSL
import twisted
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
)
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import connectionDone
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import (
    HAProxyProtocolWrapper as _HAProxyProtocolWrapper,
)
from twisted.python import context, log
from twisted.python.failure import Failure
from twisted.web.http import (
    HTTPChannel,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
)

_log = Logger()

#: The installed Twisted, for the fence tests' messages.
TWISTED_VERSION: str = twisted.__version__

#: The installed pyOpenSSL, for the fence tests' messages.
OPENSSL_VERSION: str = OpenSSL.__version__


# --- twisted.web.http.Request ---------------------------------------------


def requestGone(request: Any) -> bool:
    """
    Whether the connection of C{request} was lost before its response was
    finished.

    twisted.web's C{Request.connectionLost} sets C{_disconnected}; no public
    attribute tells it (C{notifyFinish} does, but only to those who asked
    before). A request of another kind (without the attribute) is taken as
    connected.
    """
    return getattr(request, "_disconnected", False) is True


def hasContentEncoder(request: Any) -> bool:
    """
    Whether twisted.web encodes C{request}'s response body (an
    L{twisted.web.resource.EncodingResourceWrapper}, such as gzip, chose an
    encoder for it: C{Request._encoder}). Its writes must then go through
    twisted.web's C{Request.write}, which encodes them.
    """
    return getattr(request, "_encoder", None) is not None


# --- twisted.web.http.HTTPChannel (server/channel.py) ---------------------

#: What a chunked body's decoder raises for framing it refuses: the channel
#: answers 400 and closes (twisted.web's C{_MalformedChunkedDataError}).
MalformedChunkedDataError: type[Exception] = _MalformedChunkedDataError


class ChunkedDecoder(_ChunkedTransferDecoder):
    """
    twisted.web's decoder of a chunked request body, refusing at once what
    it would wait on: a chunk-size line, the CRLF ending a chunk, or a
    trailer line ended by a bare LF (twisted.web waits for a CRLF that
    never comes). Each chunk size goes to L{checkChunkSize} before any of
    the chunk is read.

    Its states are twisted.web's private C{_dataReceived_*} methods, and it
    reads the line being received from C{_buffer}.
    """

    def checkChunkSize(self, length: int) -> None:
        """
        Check the size of the chunk about to be read (0 for the last).
        Every size is accepted here.

        @raise MalformedChunkedDataError: To refuse the body.
        """

    def _refuseBareLF(self) -> None:
        # The line being read ends at the first CRLF (or is not complete):
        # an LF before it is a bare one.
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if buffer.find(b"\n", 0, len(buffer) if end < 0 else end) >= 0:
            raise _MalformedChunkedDataError("Line ended by a bare LF")

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        self._refuseBareLF()
        if not _ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH(self):
            return False
        self.checkChunkSize(self.length)
        return True

    def _dataReceived_CRLF(self) -> bool:
        if self._buffer[:1] == b"\n":
            raise _MalformedChunkedDataError("Chunk ended by a bare LF")
        return _ChunkedTransferDecoder._dataReceived_CRLF(self)

    def _dataReceived_TRAILER(self) -> bool:
        self._refuseBareLF()
        return _ChunkedTransferDecoder._dataReceived_TRAILER(self)


_Decoder = TypeVar("_Decoder", bound=ChunkedDecoder)


class HTTPChannelBase(HTTPChannel):
    """
    twisted.web's L{HTTPChannel}, with what
    L{twisted_rproxy.server.ProxyHTTPChannel} reads and changes of its
    private parser state under public names.

    twisted.web keeps the request line being received in C{_command},
    C{_path} and C{_version}, the size of the head so far in
    C{_receivedHeaderSize} and C{_receivedHeaderCount}, whether a request
    line is awaited in C{_HTTPChannel__first_line}, pipelined data in
    C{_dataBuffer}, the body's decoder in C{_transferDecoder}, and answers
    a malformed request in C{_respondToBadRequestAndDisconnect}.
    """

    def requestLine(self) -> tuple[bytes, bytes, bytes]:
        """
        The method, target and version of the request whose head is being
        received (from its request line to C{allContentReceived}).
        """
        return self._command, self._path, self._version

    def setRequestTarget(self, target: bytes) -> None:
        """
        Make C{target} the target the request is received with.
        """
        self._path = target

    def awaitingRequestLine(self) -> bool:
        """
        Whether the line being received is a request line (no request head
        is under way).
        """
        return bool(getattr(self, "_HTTPChannel__first_line", 0))

    def headTooLarge(self) -> bool:
        """
        Whether the head received so far is past C{totalHeadersSize}.
        """
        size: int = self._receivedHeaderSize
        return size > self.totalHeadersSize

    def tooManyHeaders(self) -> bool:
        """
        Whether the head received so far has more than C{maxHeaders}
        headers.
        """
        count: int = self._receivedHeaderCount
        return count > self.maxHeaders

    @property
    def handlingRequest(self) -> bool:
        """
        Whether a request was received whole and its response is not done:
        twisted.web holds what the client sends next until it is.
        """
        return bool(self._handlingRequest)

    @handlingRequest.setter
    def handlingRequest(self, value: bool) -> None:
        self._handlingRequest = value

    def bufferedLine(self) -> bytes:
        """
        The start of a line received and not yet ended by a CRLF (the line
        receiver's buffer).
        """
        buffer: bytes = self._buffer
        return buffer

    def takeBufferedData(self) -> bytes:
        """
        Take what the client sent after the request being handled, which
        twisted.web read and holds until the response is done.
        """
        data = b"".join(getattr(self, "_dataBuffer", []))
        self._dataBuffer = []
        return data

    def loseConnection(self) -> None:
        """
        twisted.web's C{loseConnection} (the channel stops being the
        transport's producer, and the transport closes once what is queued
        is written), without a turn of the reactor (L{closeWhenWritten}).
        """
        producer: Any = self._networkProducer
        producer.unregisterProducer()
        closeWhenWritten(self.transport)

    def send100Continue(self) -> None:
        """
        Send the client an interim C{100 Continue} response.
        """
        HTTPChannel._send100Continue(self)

    def respondToBadRequest(self) -> None:
        """
        Answer a request twisted.web found malformed (its request line, a
        header, its length...): its 400 and close, unless a subclass
        answers otherwise.
        """
        HTTPChannel._respondToBadRequestAndDisconnect(self)

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.respondToBadRequest()

    def replaceChunkedDecoder(
        self,
        make: Callable[[Callable[[bytes], None], Callable[[bytes], None]], _Decoder],
    ) -> _Decoder | None:
        """
        If the body about to be read is chunked (twisted.web chose its own
        decoder for it), decode it with C{make(dataCallback,
        finishCallback)} instead.

        @return: The new decoder, or L{None} if the body is not chunked.
        """
        decoder = self._transferDecoder
        if type(decoder) is not _ChunkedTransferDecoder:
            return None
        replacement = make(decoder.dataCallback, decoder.finishCallback)
        self._transferDecoder = replacement
        return replacement


# --- twisted.internet.tcp: writing at the end of the reactor's turn --------

_PLAIN_TCP = (_TCPClient, _TCPServer)

#: The reason every connection closed here is lost with, as the reactor
#: keeps its own: one failure for all (a failure's making and its first
#: C{check} cost more than the rest of a close).
_CONNECTION_DONE = Failure(ConnectionDone())


def _closeNow(transport: Any) -> None:
    """
    Close C{transport}, which has nothing left to write, as the reactor
    does once a closing transport's queue is written (its C{connectionLost}
    stops reading and writing), but without C{shutdown(2)} before the
    C{close}.

    Twisted shuts a socket down first "just to be safe", though it says it
    is not needed (C{tcp._SocketCloser}, whose private C{_shouldShutdown}
    turns it off): the socket is close-on-exec, so this process holds its
    only descriptor, and its C{close} sends the same FIN (or the same RST,
    with unread data). One syscall fewer for every connection closed.
    """
    transport._shouldShutdown = False
    transport.connectionLost(_CONNECTION_DONE)


class _Batch(dict[Any, None]):
    """
    The plain TCP transports written to during a turn of the reactor (in
    the order of their first write), and the call that sends them.
    """

    __slots__ = ("call",)
    call: Any


#: By reactor, the batch of its current turn (L{writeBatched}).
_batches: dict[Any, _Batch] = {}


def writeBatched(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}; a plain TCP transport sends it, with
    everything else written to one this turn of the reactor, once the turn
    is over (L{_flush}), in one C{send} per transport.

    Twisted's own C{write} queues the data and asks the reactor to watch the
    socket for writability: two C{epoll_ctl} calls and a turn per response.
    Sending at once costs neither, but wakes the peer once per write (a
    client or a backend waiting in C{epoll_wait}): with many connections,
    twice the kernel time of sending what a turn wrote together. Here the
    data joins the transport's queue (as C{write} does, and pausing its
    producer past its buffer size the same way), and the transports of the
    turn are written by a call at the start of the next, before the reactor
    waits again. Other transports (TLS, memory) get an ordinary C{write}.

    It uses the transport's private queue (C{_tempDataBuffer},
    C{_tempDataLen}) and producer check (C{_maybePauseProducer}) of
    L{twisted.internet.abstract.FileDescriptor}: no public method queues
    without watching the socket.
    """
    if (
        type(transport) in _PLAIN_TCP
        and transport.connected
        and not transport.disconnecting
        and data
    ):
        reactor = transport.reactor
        batch = _batches.get(reactor)
        if batch is None:
            batch = _batches[reactor] = _Batch()
            batch.call = reactor.callLater(0, _flush, reactor)
        elif batch.call.cancelled:
            # A stopping reactor's pending calls are cancelled (as trial
            # does between tests): send what waits at its next turn.
            batch.call = reactor.callLater(0, _flush, reactor)
        if transport in batch:
            queued = transport.dataBuffer
        else:
            queued = transport.dataBuffer or transport._tempDataBuffer
            if not queued:
                batch[transport] = None
        if not queued:
            transport._tempDataBuffer.append(data)
            size = transport._tempDataLen = transport._tempDataLen + len(data)
            # Past the transport's buffer size, as much as the socket takes
            # goes now; only the rest pauses the producer.
            if size > transport.bufferSize and not _sendQueue(transport):
                transport._maybePauseProducer()
            return
    # A transport partly sent this turn, or with a queue of its own from
    # an earlier one: the rest is its own to write.
    transport.write(data)


def _flush(reactor: Any) -> None:
    """
    Write the transports written to during the last turn of C{reactor}, one
    C{send} each: what the socket does not take is left to the transport,
    watching the socket as after its own C{write} (as is an error, which
    the transport meets the ordinary way); a transport that was closing is
    closed once it has written everything.

    It leaves the unsent rest where the transport's C{doWrite} does
    (C{dataBuffer} from C{offset}), and skips a transport being aborted
    (C{tcp.Connection._aborting}).
    """
    batch = _batches.pop(reactor, None) or ()
    for transport in batch:
        if not transport.connected or transport._aborting:
            continue
        try:
            _send(transport)
        except Exception:
            # What the reactor does when doWrite raises (a producer asked
            # for more, failing).
            _log.failure("Writing to {transport} failed", transport=transport)
            transport.abortConnection()


def _sendQueue(transport: Any) -> bool:
    """
    Send the queue of C{transport} (written by L{writeBatched}) at once;
    what the socket does not take is left to the transport, watched, as is
    the whole queue on an error, which the transport meets the ordinary
    way.

    @return: Whether all of it went.
    """
    chunks = transport._tempDataBuffer
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    try:
        sent = transport.socket.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        transport.startWriting()
        return False
    transport._tempDataBuffer = []
    transport._tempDataLen = 0
    if sent < len(data):
        transport.dataBuffer = data
        transport.offset = sent
        transport.startWriting()
        return False
    return True


def _send(transport: Any) -> None:
    """
    Send what C{transport}, one of a batch (L{_flush}), has queued, then do
    what its C{doWrite} does once everything is written.
    """
    if transport.dataBuffer:
        # Partly sent already: the transport writes the rest.
        return
    if transport._tempDataBuffer and not _sendQueue(transport):
        return
    if transport.producer is not None and (
        not transport.streamingProducer or transport.producerPaused
    ):
        # A pull producer is asked for more, a paused one resumed.
        transport.producerPaused = False
        transport.producer.resumeProducing()
    elif transport.disconnecting:
        _closeNow(transport)


def closeWhenWritten(transport: Any) -> None:
    """
    Close C{transport} once what was written to it is (as its
    C{loseConnection} does), without a turn of the reactor for a plain TCP
    transport with no producer: at once if nothing is queued, else when its
    batch of this turn is written (L{writeBatched}).

    Twisted's C{loseConnection} waits for the socket to be writable before
    it closes, even with nothing queued: two C{epoll_ctl} calls, a turn and
    an empty C{send}, for every connection a C{Connection: close} ends.
    Closing at once is what its own C{loseConnection} does after a
    half-close (C{_writeDisconnected}); C{disconnecting} is set first, so
    that a line receiver stops parsing what it still holds.
    """
    if (
        type(transport) in _PLAIN_TCP
        and transport.connected
        and not transport.disconnecting
        and transport.producer is None
    ):
        queued = transport.dataBuffer or transport._tempDataBuffer
        if not queued:
            transport.disconnecting = True
            _closeNow(transport)
            return
        batch = _batches.get(transport.reactor)
        if batch is not None and transport in batch:
            # Closed by _flush, once written.
            transport.stopReading()
            transport.disconnecting = True
            return
    transport.loseConnection()


def localAddress(transport: Any, known: dict[Any, Any]) -> Any:
    """
    C{transport.getHost()}; for a connection accepted by a TCP port bound to
    one address (not a wildcard), that of the first connection the port
    accepted, kept in C{known} (by port): every connection of such a port
    has the same local address, and asking the socket (C{getsockname}) costs
    a syscall and an address object per connection.

    It finds the port of a C{tcp.Server} in its C{server} attribute, and the
    address the port was bound to in the port's C{interface}.
    """
    if type(transport) is not _TCPServer:
        return transport.getHost()
    port = transport.server
    host = known.get(port)
    if host is None:
        host = transport.getHost()
        if _boundToOne(getattr(port, "interface", "")):
            known[port] = host
    return host


def _boundToOne(interface: object) -> bool:
    """
    Whether C{interface}, the address a port was bound to, is one address
    (not empty, not C{0.0.0.0} or C{::}).
    """
    if not isinstance(interface, str):
        return False
    try:
        address = ipaddress.ip_address(interface.partition("%")[0])
    except ValueError:
        return False
    return not address.is_unspecified


# --- twisted.internet.epollreactor: the dispatch of each event ------------


def dispatchLeanly(reactor: Any) -> bool:
    """
    Make C{reactor}, if it is Twisted's epoll reactor, hand each event to
    its selectable as its own C{doPoll} does (L{_doPoll}), in the same log
    context, without the layers of C{log.callWithLogger} around each.

    C{callWithLogger} makes the legacy log's C{system} the selectable's
    C{logPrefix()} for the event, and logs what escapes it: through
    C{log.callWithContext} and the context tracker's own C{callWithContext},
    with an argument tuple and keyword dict made at each layer, and three
    copies of the context. That costs about 16,000 instructions per event,
    a tenth of a proxied request's own (two events: the client's request,
    the backend's response). L{_doPoll} pushes the same context on the
    tracker's stack itself: about 3,000.

    It uses the reactor's private C{_poller}, C{_selectables} and
    C{_doReadOrWrite}, as Twisted's C{doPoll} does.

    @return: Whether the reactor's dispatch was changed: not for another
        reactor, nor for one whose C{doIteration} was replaced already.
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:
        return False
    if type(reactor) is not EPollReactor or "doIteration" in vars(reactor):
        return False
    # An instance attribute: the class's doPoll stays Twisted's.
    reactor.doIteration = MethodType(_doPoll, reactor)  # type: ignore[method-assign]
    return True


def _doPoll(reactor: Any, timeout: float | None) -> None:
    """
    Twisted's C{EPollReactor.doPoll}, with C{log.callWithLogger}'s work for
    each event done inline: the log context of the event is a copy of the
    current one whose legacy log context has the selectable's
    C{logPrefix()} as its C{system}, and an exception escaping the event
    (or C{logPrefix}) is logged with that C{system}.
    """
    if timeout is None:
        timeout = -1
    try:
        events = reactor._poller.poll(timeout, len(reactor._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    if not events:
        return
    selectables = reactor._selectables
    doReadOrWrite = reactor._doReadOrWrite
    tracker: Any = context.theContextTracker
    contexts: list[dict[Any, Any]] = tracker.currentContext().contexts
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is None:
            continue
        try:
            system = selectable.logPrefix()
        except KeyboardInterrupt:
            raise
        except BaseException:
            system = "(buggy logPrefix method)"
            log.err(system=system)
        outer = contexts[-1]
        logContext = outer[log.ILogContext].copy()
        logContext["system"] = system
        eventContext = outer.copy()
        eventContext[log.ILogContext] = logContext
        contexts.append(eventContext)
        try:
            doReadOrWrite(selectable, fd, event)
        except KeyboardInterrupt:
            raise
        except BaseException:
            log.err(system=system)
        finally:
            contexts.pop()


# --- TLS: OpenSSL and twisted.internet._sslverify (tls) --------------------


def setKeyExchangeGroups(context: SSL.Context, groups: bytes) -> bool:
    """
    Restrict the key exchange groups C{context} offers and accepts to
    C{groups}, an OpenSSL list such as C{b"X25519:prime256v1"}.

    pyOpenSSL has no public way to (C{Context.set_tmp_ecdh} names one
    curve and leaves the other groups on); its own binding of OpenSSL's
    C{SSL_CTX_set1_curves_list} (C{OpenSSL._util.lib}, from cryptography
    47) does it, on the context's C{_context}.

    @return: Whether OpenSSL took the list; C{False} also when pyOpenSSL's
        binding is not where it was.
    """
    try:
        from OpenSSL._util import lib

        setCurves = lib.SSL_CTX_set1_curves_list
        raw = context._context
    except (ImportError, AttributeError):  # pragma: no cover
        return False
    return bool(setCurves(raw, groups))


def certificateOptions(
    certificate: x509.Certificate, key: CertificateIssuerPrivateKeyTypes
) -> dict[str, Any]:
    """
    The keyword arguments giving Twisted's C{CertificateOptions} a
    certificate and its private key as cryptography objects (directly, or
    through C{optionsForClientTLS}'s C{extraCertificateOptions}).

    Twisted documents them as pyOpenSSL's C{X509} and C{PKey}, which
    pyOpenSSL deprecates where C{CertificateOptions} hands them on as they
    are: C{Context.use_certificate} and C{use_privatekey}, which take
    cryptography objects (pyOpenSSL 24.3 and later).
    """
    return {"certificate": certificate, "privateKey": key}


# --- other -----------------------------------------------------------------


def connectionTransport(request: object) -> object | None:
    """
    The transport of the connection C{request} came on (the TLS one, for a
    request over TLS), or L{None}.

    An HTTP/1.1 request's channel has it as C{transport}. An HTTP/2
    request's channel is twisted.web's C{H2Stream}, whose C{transport} is
    L{None}: its C{H2Connection} (C{_conn}) has it, and no public name
    leads there.
    """
    channel = getattr(request, "channel", None)
    transport: object | None = getattr(channel, "transport", None)
    if transport is None:
        transport = getattr(getattr(channel, "_conn", None), "transport", None)
    return transport


class ProxyHeaderWrapper(_HAProxyProtocolWrapper):
    """
    Twisted's wrapper of a connection that starts with a PROXY protocol
    header (v1 or v2): once the header is read, C{getPeer} and C{getHost}
    give the addresses it names, and what follows goes to the wrapped
    protocol.

    Twisted makes it public only inside C{haproxy.proxyEndpoint}, which
    does not tell when the header was read; the class is
    C{twisted.protocols.haproxy._wrapper.HAProxyProtocolWrapper}, and it
    keeps the header in C{_proxyInfo}.
    """

    @property
    def proxyHeaderReceived(self) -> bool:
        """
        Whether the header was read (so that C{getPeer} is the client's).
        """
        return self._proxyInfo is not None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Typed, for the subclasses' calls (Twisted's is not annotated).
        _HAProxyProtocolWrapper.connectionLost(self, reason)


def closeWithoutShutdown(port: Any) -> None:
    """
    Make C{port}, a listening TCP port, close its socket without shutting
    it down first (C{shutdown(2)}), so that other processes holding the
    same socket go on accepting on it.

    Twisted's C{tcp.Port} shuts its socket down before closing it unless
    its private C{_shouldShutdown} is false (as Twisted makes it for an
    adopted socket). A port of another kind is left as it is.
    """
    if hasattr(port, "_shouldShutdown"):
        port._shouldShutdown = False
