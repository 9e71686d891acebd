"""
HTTP/2 clients of the loopback tests, and the proxy they talk to.

Two clients, both blocking (run them in a thread with L{inThread}) over a
real TLS connection made by the standard library's C{ssl} with ALPN C{h2},
so that the proxy is seen by a TLS and HTTP/2 stack that is not its own:

  - L{tests.h2frames.RawH2}: frames built by hand, for the conformance
    and flood tests.
  - L{h2Exchange}: whole requests with the C{h2} package's client state
    machine (flow control and all): the behaviour-parity tests.

Every read is bounded: a wait that runs out is an L{AssertionError}, so no
test can hang on a server that says nothing.

L{H2ProxyCase} runs the real L{ProxyService} with a C{[[tls]]} listener
(C{http2 = true}) on 127.0.0.1 in front of real backends;
L{servedOverTLS} moves any test configuration's listeners onto such a
listener, so that existing loopback tests can run again over HTTP/2.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import trustme
from attrs import define, evolve, field
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, backendServer
from tests.loopback import LOCALHOST
from twisted_rproxy.config import (
    CertificateConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TLSConfig,
)
from twisted_rproxy.service import ProxyService

#: The client connection preface (RFC 9113 section 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: The name the test certificates hold and the clients ask for.
SERVER_NAME = "example.com"

# Error codes (RFC 9113 section 7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
FLOW_CONTROL_ERROR = 0x3
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers (RFC 9113 section 6.5.2).
HEADER_TABLE_SIZE = 0x1
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6

#: How long one expected frame or close may take before the test fails.
WAIT = 5.0


class TLSFiles:
    """
    A trustme CA and one certificate for L{SERVER_NAME}, in a temporary
    directory removed when the test ends.

    @ivar caPath: The CA certificate's PEM file, for clients.
    @ivar certificate: The certificate's key and chain in one PEM file.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = tempfile.mkdtemp()
        case.addCleanup(self._remove)
        ca = trustme.CA()
        self.caPath = os.path.join(self.directory, "ca.pem")
        ca.cert_pem.write_to_path(self.caPath)
        self.certificate = os.path.join(self.directory, "site.pem")
        leaf = ca.issue_cert(SERVER_NAME, LOCALHOST)
        leaf.private_key_and_cert_chain_pem.write_to_path(self.certificate)

    def _remove(self) -> None:
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def tlsConfig(self, **options: Any) -> TLSConfig:
        """
        A C{[[tls]]} group on an ephemeral port of 127.0.0.1 with HTTP/2
        offered, presenting this certificate.
        """
        options.setdefault("http2", True)
        return TLSConfig(
            listen=(f"tcp:0:interface={LOCALHOST}",),
            certificates=(CertificateConfig(self.certificate, self.certificate),),
            **options,
        )


def servedOverTLS(config: Config, files: TLSFiles) -> Config:
    """
    C{config} with its plain listeners replaced by one C{[[tls]]} listener
    offering HTTP/2, so that the first listening port is the TLS one.
    """
    return evolve(
        config,
        server=evolve(config.server, listen=()),
        tls=(files.tlsConfig(),),
    )


def proxyServiceOverTLS(files: TLSFiles) -> Callable[[Config, Any], ProxyService]:
    """
    A stand-in for L{ProxyService} that serves every configuration given to
    it over TLS (see L{servedOverTLS}): patched into a test module, it runs
    that module's tests over HTTP/2 unchanged.
    """

    def build(config: Config, reactor: Any) -> ProxyService:
        return ProxyService(servedOverTLS(config, files), reactor)

    return build


def clientContext(caPath: str, alpn: Sequence[str] = ("h2",)) -> ssl.SSLContext:
    """
    A client TLS context trusting C{caPath} and offering C{alpn}.
    """
    context = ssl.create_default_context(cafile=caPath)
    context.set_alpn_protocols(list(alpn))
    return context


def connectTLS(
    port: int, caPath: str, alpn: Sequence[str] = ("h2",), timeout: float = WAIT
) -> ssl.SSLSocket:
    """
    A TLS connection to 127.0.0.1:C{port} for L{SERVER_NAME}, handshake
    done.

    @raise AssertionError: If ALPN did not choose the first of C{alpn}.
    """
    raw = socket.create_connection((LOCALHOST, port), timeout=timeout)
    try:
        tls = clientContext(caPath, alpn).wrap_socket(raw, server_hostname=SERVER_NAME)
    except BaseException:
        raw.close()
        raise
    chosen = tls.selected_alpn_protocol()
    if chosen != alpn[0]:
        tls.close()
        raise AssertionError(f"ALPN chose {chosen!r}, not {alpn[0]!r}")
    return tls


def inThread(f: Callable[..., Any], *args: Any) -> Any:
    """
    Run a blocking client in a thread; a L{Deferred} of its result.
    """
    return deferToThread(f, *args)


@define
class H2Request:
    """
    One request for L{h2Exchange}.
    """

    path: str = "/"
    method: str = "GET"
    headers: list[tuple[str, str]] = field(factory=list)
    body: bytes = b""
    authority: str = SERVER_NAME
    scheme: str = "https"


@define
class H2Response:
    """
    One response as L{h2Exchange} received it.

    @ivar status: The C{:status}, or 0 if the stream was reset first.
    @ivar headers: The response headers, without pseudo-headers.
    @ivar reset: The error code of a RST_STREAM ending it, or L{None}.
    @ivar interim: The 1xx heads received before the final one.
    """

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(factory=list)
    reset: int | None = None
    interim: list[list[tuple[bytes, bytes]]] = field(factory=list)
    ended: bool = False
    bodySentAt: float | None = None

    def header(self, name: bytes) -> list[bytes]:
        """
        Every value of the header C{name}, in order.
        """
        lower = name.lower()
        return [v for n, v in self.headers if n == lower]


def _split(
    headers: Iterable[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    pseudo: dict[bytes, bytes] = {}
    regular = []
    for name, value in headers:
        name, value = bytes(name), bytes(value)
        if name.startswith(b":"):
            pseudo[name] = value
        else:
            regular.append((name, value))
    return pseudo, regular


def h2Exchange(
    port: int,
    caPath: str,
    requests: Sequence[H2Request],
    timeout: float = WAIT,
    sock: socket.socket | None = None,
) -> list[H2Response]:
    """
    Send C{requests} at once on one HTTP/2 connection (each on its own
    stream, bodies sent as flow control allows) and read their responses.

    @param sock: An open connection to use (it is not closed), or L{None}
        to open one to C{port}.
    @return: The responses, in the order of C{requests}.
    @raise AssertionError: If the connection closes, or C{timeout} seconds
        pass, before every stream ended.
    """
    own = sock is None
    tls = connectTLS(port, caPath) if sock is None else sock
    try:
        return _exchange(tls, requests, timeout)
    finally:
        if own:
            tls.close()


def _exchange(
    tls: socket.socket, requests: Sequence[H2Request], timeout: float
) -> list[H2Response]:
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True, header_encoding=None)
    )
    connection.initiate_connection()
    # A large connection window, so that the streams' windows decide.
    connection.increment_flow_control_window(2**30)
    responses: dict[int, H2Response] = {}
    bodies: dict[int, memoryview] = {}
    order = []
    for request in requests:
        streamID = connection.get_next_available_stream_id()
        order.append(streamID)
        responses[streamID] = H2Response()
        headers = [
            (":method", request.method),
            (":path", request.path),
            (":scheme", request.scheme),
            (":authority", request.authority),
            *request.headers,
        ]
        connection.send_headers(streamID, headers, end_stream=not request.body)
        if request.body:
            bodies[streamID] = memoryview(request.body)
    deadline = time.monotonic() + timeout
    while True:
        for streamID in list(bodies):
            if _sendBody(connection, streamID, bodies):
                tls.sendall(connection.data_to_send())
                responses[streamID].bodySentAt = time.monotonic()
        pending = connection.data_to_send()
        if pending:
            tls.sendall(pending)
        if all(r.ended for r in responses.values()):
            return [responses[s] for s in order]
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no end of every stream in {timeout} s: {responses}")
        if _pending(tls) == 0:
            ready, _, _ = select.select([tls], [], [], left)
            if not ready:
                continue
        try:
            data = tls.recv(65536)
        except (OSError, ssl.SSLError):
            data = b""
        if not data:
            raise AssertionError(f"connection closed before the end: {responses}")
        for event in connection.receive_data(data):
            _record(connection, event, responses, bodies)


def _pending(sock: socket.socket) -> int:
    """
    The bytes a TLS socket has decrypted but not returned yet (0 for a
    plain socket).
    """
    return sock.pending() if isinstance(sock, ssl.SSLSocket) else 0


def _sendBody(
    connection: h2.connection.H2Connection,
    streamID: int,
    bodies: dict[int, memoryview],
) -> bool:
    """
    Send as much of C{streamID}'s body as its window allows; whether it was
    all sent (and the stream ended).
    """
    body = bodies[streamID]
    try:
        window = connection.local_flow_control_window(streamID)
    except h2.exceptions.StreamClosedError:
        del bodies[streamID]
        return False
    size = min(window, connection.max_outbound_frame_size, len(body))
    while size > 0:
        connection.send_data(streamID, body[:size].tobytes())
        body = body[size:]
        window -= size
        size = min(window, connection.max_outbound_frame_size, len(body))
    if len(body):
        bodies[streamID] = body
        return False
    connection.end_stream(streamID)
    del bodies[streamID]
    return True


def _record(
    connection: h2.connection.H2Connection,
    event: h2.events.Event,
    responses: dict[int, H2Response],
    bodies: dict[int, memoryview],
) -> None:
    streamID = getattr(event, "stream_id", None)
    response = responses.get(streamID) if streamID is not None else None
    if isinstance(event, h2.events.ConnectionTerminated):
        raise AssertionError(f"GOAWAY({event.error_code}) from the server: {responses}")
    if response is None:
        return
    if isinstance(event, h2.events.InformationalResponseReceived):
        response.interim.append(_split(event.headers or ())[1])
    elif isinstance(event, h2.events.ResponseReceived):
        pseudo, response.headers = _split(event.headers or ())
        response.status = int(pseudo[b":status"])
    elif isinstance(event, h2.events.TrailersReceived):
        response.trailers = _split(event.headers or ())[1]
    elif isinstance(event, h2.events.DataReceived):
        response.body += event.data or b""
        if event.flow_controlled_length:
            connection.acknowledge_received_data(
                event.flow_controlled_length, event.stream_id
            )
    elif isinstance(event, h2.events.StreamEnded):
        response.ended = True
    elif isinstance(event, h2.events.StreamReset):
        response.reset = event.error_code
        response.ended = True
        bodies.pop(event.stream_id, None)


class H2ProxyCase(LoopbackTestCase):
    """
    Runs the real proxy with a C{[[tls]]} listener offering HTTP/2 in front
    of a backend, and HTTP/2 clients against it.
    """

    def setUp(self) -> None:
        super().setUp()
        self.files = TLSFiles(self)

    async def startH2Proxy(
        self,
        backendPort: int | None,
        server: dict[str, Any] | None = None,
        routes: Sequence[RouteConfig] | None = None,
        **tlsOptions: Any,
    ) -> int:
        """
        Start a L{ProxyService} whose only listener is TLS (with HTTP/2),
        routing C{/} (or C{routes}) to the backend on C{backendPort}.

        @return: The TLS port.
        """
        pools = {}
        if backendPort is not None:
            pools["app"] = PoolConfig(
                name="app", servers=(backendServer(backendPort),), retries=0
            )
        config = Config(
            source="test",
            server=ServerConfig(listen=(), **(server or {})),
            pools=pools,
            routes=tuple(routes or (RouteConfig(path="/", pool="app"),)),
            tls=(self.files.tlsConfig(**tlsOptions),),
        )
        return await self.startService(config)

    async def startService(self, config: Config) -> int:
        """
        Run C{config}; the port of its first listener.
        """
        self.service = ProxyService(config, reactor)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        listening = await self.service.whenListening()
        port: int = listening[0].getHost().port
        return port

    async def exchange(
        self, port: int, *requests: H2Request, timeout: float = WAIT
    ) -> list[H2Response]:
        """
        L{h2Exchange} in a thread.
        """
        result: list[H2Response] = await inThread(
            h2Exchange, port, self.files.caPath, list(requests), timeout
        )
        return result
