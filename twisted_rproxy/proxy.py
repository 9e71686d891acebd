"""
The proxy resource: forwards one request through a L{BackendPool} and
streams the response back to the client.

The header rules are plain functions of data (L{upstreamHeaders},
L{downstreamHeaders}), so that they are tested without a reactor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from io import BytesIO
from typing import IO, Any

from attrs import field, frozen
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from twisted_rproxy._twisted import requestGone
from twisted_rproxy.balance import requestHashKey
from twisted_rproxy.config import CLIENT_IP_HEADERS
from twisted_rproxy.interfaces import (
    IInterimReceiver,
    IProxyRequest,
    IResponseReceiver,
    ITunnelChannel,
)
from twisted_rproxy.pages import errorBody, reasonPhrase, renderError
from twisted_rproxy.pool import (
    BackendError,
    BackendPool,
    BackendRequest,
    PoolOverloaded,
    RequestBodyStream,
)
from twisted_rproxy.rules.headers import HOP_BY_HOP, connectionTokens
from twisted_rproxy.rules.networks import Network, inNetworks, parseNetworks
from twisted_rproxy.upgrade import Tunnel, upgradeRequested

_log = Logger()

#: Buffered bodies up to this size are sent from memory.
_READ_WHOLE = 1024 * 1024


_REQUEST_SKIP = HOP_BY_HOP | {b"expect", b"content-length", b"host"}
_REQUEST_SKIP_FORWARDED = _REQUEST_SKIP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    # RFC 7239: believed from trusted proxies only, like X-Forwarded-*.
    b"forwarded",
}
# Connection options that name no header.
_CONNECTION_OPTIONS = frozenset([b"close", b"keep-alive"])


@frozen
class ForwardingPolicy:
    """
    How requests are rewritten on their way to a pool, and responses on
    their way back.

    @ivar forwardedHeaders: Add C{X-Forwarded-For}, C{-Proto} and C{-Host}.
    @ivar via: The pseudonym this proxy gives itself in C{Via}, or L{None}
        for no C{Via}.
    @ivar trustedProxies: Networks whose C{X-Forwarded-*} headers are
        believed and extended; from anyone else they are replaced.
    @ivar hostHeader: L{None} to forward the client's C{Host}, C{"backend"}
        for the chosen server's C{host:port}, or a literal value.
    @ivar hideHeaders: Lowercased names of backend response headers that
        clients never see.
    @ivar responseHidden: Every response header name that is not passed
        on: the hop-by-hop ones and C{hideHeaders}.
    @ivar clientIPHeaders: Lowercased names of request headers that name
        the client (C{X-Real-IP}, C{True-Client-IP}...): passed on from
        trusted proxies only, dropped from anyone else, who could name any
        address they like.
    """

    forwardedHeaders: bool = True
    via: bytes | None = b"twisted_rproxy"
    trustedProxies: tuple[Network, ...] = field(default=(), converter=parseNetworks)
    hostHeader: str | None = None
    hideHeaders: frozenset[bytes] = frozenset([b"server", b"x-powered-by"])
    responseHidden: frozenset[bytes] = field(init=False)
    clientIPHeaders: frozenset[bytes] = frozenset(
        name.encode("ascii") for name in CLIENT_IP_HEADERS
    )
    # The request headers not passed on as they are, for a trusted peer and
    # for anyone else: computed once, looked up for every header.
    _skipTrusted: frozenset[bytes] = field(init=False)
    _skipUntrusted: frozenset[bytes] = field(init=False)

    @responseHidden.default
    def _responseHidden(self) -> frozenset[bytes]:
        return HOP_BY_HOP | self.hideHeaders

    @_skipTrusted.default
    def _skipTrustedDefault(self) -> frozenset[bytes]:
        return _REQUEST_SKIP_FORWARDED if self.forwardedHeaders else _REQUEST_SKIP

    @_skipUntrusted.default
    def _skipUntrustedDefault(self) -> frozenset[bytes]:
        return self._skipTrusted | self.clientIPHeaders

    def requestSkipped(self, trustedPeer: bool) -> frozenset[bytes]:
        """
        The lowercased names of the request headers that are not passed on
        as they are (some are rewritten, see L{upstreamHeaders}).

        @param trustedPeer: Whether the request comes from a trusted proxy.
        """
        return self._skipTrusted if trustedPeer else self._skipUntrusted

    def trusts(self, address: str) -> bool:
        """
        Whether C{address} is a trusted proxy.
        """
        return inNetworks(address, self.trustedProxies)


def upstreamHeaders(
    headers: Iterable[tuple[bytes, Sequence[bytes]]],
    policy: ForwardingPolicy,
    clientAddress: str,
    secure: bool,
    host: bytes | None,
    version: bytes = b"1.1",
) -> list[tuple[bytes, bytes]]:
    """
    The headers to send a backend for a client request.

    Hop-by-hop headers, those named in C{Connection}, framing headers and
    C{Expect} are dropped (the proxy frames the body itself), and so are the
    policy's client-IP headers unless C{clientAddress} is a trusted proxy;
    C{Host} is set by the policy; the forwarding headers are added.

    @param headers: The client's headers, as C{(name, [values])} pairs.
    @param clientAddress: The client's IP address.
    @param secure: Whether the client connection is TLS.
    @param host: The client's C{Host} value, if it sent one.
    @param version: The client's HTTP version number, for C{Via}.
    @return: C{(name, value)} pairs.
    """
    forwarded = policy.forwardedHeaders
    trustedPeer = policy.trusts(clientAddress)
    dropped = policy.requestSkipped(trustedPeer)
    trusted = forwarded and trustedPeer
    out: list[tuple[bytes, bytes]] = []
    named: frozenset[bytes] = frozenset()
    forwardedFor: list[bytes] = []
    forwardedProto: bytes | None = None
    forwardedHost: bytes | None = None
    forwardedElements: list[bytes] = []
    via: list[bytes] = []
    for name, values in headers:
        lower = name.lower()
        if lower in dropped:
            if lower == b"connection":
                named = connectionTokens(values) - _CONNECTION_OPTIONS
            elif trusted:
                if lower == b"x-forwarded-for":
                    forwardedFor.extend(values)
                elif lower == b"x-forwarded-proto":
                    forwardedProto = values[-1]
                elif lower == b"x-forwarded-host":
                    forwardedHost = values[-1]
                elif lower == b"forwarded":
                    forwardedElements.extend(values)
            continue
        if lower == b"via":
            via.extend(values)
            continue
        for value in values:
            out.append((name, value))
    if named:
        out = [(name, value) for name, value in out if name.lower() not in named]
    hostHeader = policy.hostHeader
    if hostHeader is None:
        if host is not None:
            out.insert(0, (b"Host", host))
    elif hostHeader != "backend":
        # (For "backend", the pool adds the chosen server's own authority.)
        out.insert(0, (b"Host", hostHeader.encode("ascii")))
    if forwarded:
        forwardedFor.append(clientAddress.encode("ascii"))
        out.append((b"X-Forwarded-For", b", ".join(forwardedFor)))
        out.append(
            (b"X-Forwarded-Proto", forwardedProto or (b"https" if secure else b"http"))
        )
        forwardedHost = forwardedHost or host
        if forwardedHost is not None:
            out.append((b"X-Forwarded-Host", forwardedHost))
        if forwardedElements:
            # A trusted proxy's Forwarded goes on with this hop added.
            node = clientAddress.encode("ascii")
            if b":" in node:
                node = b"[" + node + b"]"
            forwardedElements.append(b'for="' + node + b'"')
            out.append((b"Forwarded", b", ".join(forwardedElements)))
    if policy.via is not None:
        via.append(version + b" " + policy.via)
    if via:
        out.append((b"Via", b", ".join(via)))
    return out


def downstreamHeaders(
    headers: Sequence[tuple[bytes, bytes]], policy: ForwardingPolicy
) -> list[tuple[bytes, bytes]]:
    """
    The headers of a backend response that the client gets.

    Hop-by-hop headers, those named in C{Connection}, and the policy's
    hidden headers are dropped.
    """
    hidden = policy.responseHidden
    out = []
    named: frozenset[bytes] = frozenset()
    for header in headers:
        lower = header[0].lower()
        if lower in hidden:
            if lower == b"connection":
                value = header[1].lower()
                if value != b"keep-alive" and value != b"close":
                    named |= connectionTokens([value]) - _CONNECTION_OPTIONS
            continue
        out.append(header)
    if named:
        out = [(name, value) for name, value in out if name.lower() not in named]
    return out


#: The C{Allow} value of a 405 refusing C{TRACE}: the methods forwarded.
FORWARDED_METHODS = b"GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"


def refuseMethod(request: IRequest, allow: bytes) -> None:
    """
    Answer C{request} with the proxy's 405 page and an C{Allow} header.

    @param allow: The C{Allow} value: the methods that are served.
    """
    body = errorBody(405)
    request.setResponseCode(405)
    headers = request.responseHeaders
    headers.setRawHeaders(b"allow", [allow])
    headers.setRawHeaders(b"content-type", [b"text/html; charset=utf-8"])
    headers.setRawHeaders(b"content-length", [b"%d" % (len(body),)])
    headers.setRawHeaders(b"cache-control", [b"no-store"])
    request.write(body)
    request.finish()


@implementer(IResponseReceiver, IInterimReceiver)
class _ProxyExchange:
    """
    Carries one backend response to the client's request, and the interim
    (1xx) responses before it.
    """

    __slots__ = ("request", "proxied", "policy", "handle", "producing")

    def __init__(
        self, request: Request, policy: ForwardingPolicy, proxied: bool
    ) -> None:
        # A twisted.web Request, providing IProxyRequest when proxied.
        self.request: Any = request
        #: Whether the request provides IProxyRequest (asked once).
        self.proxied = proxied
        self.policy = policy
        self.handle: object = None
        self.producing = False

    def interimResponse(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        Pass an interim response (C{103 Early Hints}, C{102 Processing}...)
        on to the client at once, without its hop-by-hop and hidden
        headers, as RFC 9110 section 15.2 asks of a proxy. It goes straight
        to the client connection (L{IProxyRequest.writeInterim}): a cache
        or a filter watching the response sees only the final one, and its
        headers never join the final response's. A request that does not
        provide L{IProxyRequest} (the proxy embedded in another C{Site})
        does not get it.
        """
        if not self.proxied:
            return
        self.request.writeInterim(
            status,
            reason or reasonPhrase(status),
            downstreamHeaders(headers, self.policy),
        )

    def responseStarted(
        self,
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        connection: Any,
    ) -> None:
        request = self.request
        request.code = status
        request.code_message = reason or reasonPhrase(status)
        passed = downstreamHeaders(headers, self.policy)
        if self.proxied:
            request.passedHeaders = passed
            started = request.upstreamStarted
            if started is not None:
                now = connection.backend.pool.clock.seconds()
                request.upstreamTime = now - started
            request.upstreamServer = connection.backend.server.url
        else:
            responseHeaders = request.responseHeaders
            for name, value in passed:
                if name[0] in b"Dd" and name.lower() == b"date":
                    # The backend's date replaces one set earlier.
                    responseHeaders.setRawHeaders(name, [value])
                else:
                    responseHeaders.addRawHeader(name, value)
        if requestGone(request) or connection.bodyBuffered:
            # Nothing to pause when the whole body is already here.
            return
        request.registerProducer(connection, True)
        self.producing = True

    def responseData(self, data: bytes) -> None:
        self.request.write(data)

    def responseFinished(self) -> None:
        # The exchange and its pool handle refer to each other: letting go
        # of the handle lets reference counting free both (and the request)
        # at once, instead of leaving a cycle per request to the garbage
        # collector.
        self.handle = None
        request = self.request
        if self.producing:
            self.producing = False
            request.unregisterProducer()
        if not requestGone(request):
            request.finish()

    def requestFailed(self, reason: BackendError) -> None:  # type: ignore[override]
        self.handle = None
        request = self.request
        if self.producing:
            self.producing = False
            request.unregisterProducer()
        if requestGone(request):
            return
        if request.startedWriting:
            # The response is cut short: only closing tells the client so.
            # Aborting an HTTP/2 stream (which has a streamID and no
            # transport of its own) resets the stream, not the connection.
            channel = request.channel
            transport: Any = (
                channel
                if hasattr(channel, "streamID")
                else getattr(channel, "transport", None)
            )
            if transport is not None:
                transport.abortConnection()
            return
        retryAfter = 1 if isinstance(reason, PoolOverloaded) else None
        onError = None
        if self.proxied:
            request.passedHeaders = None
            # A route's error filters (twisted_rproxy.filters) may answer
            # instead.
            onError = request.onBackendError

        def fallback() -> None:
            renderError(request, reason.status, retryAfter)

        if onError is not None:
            onError(reason, fallback)
            return
        fallback()

    def clientGone(self, reason: Failure) -> None:
        handle = self.handle
        if handle is not None:
            self.handle = None
            handle.cancel()  # type: ignore[attr-defined]


class ProxyResource(Resource):
    """
    Forwards every request under it to a L{BackendPool}.

    @ivar pool: Where requests go.
    @ivar policy: How their headers are rewritten.
    @ivar stripPrefix: A path prefix removed from the request target before
        it is forwarded (C{b"/api"} forwards C{/api/users} as C{/users}),
        or C{b""}.
    @ivar websocket: Whether WebSocket upgrades are tunnelled to the pool
        (other C{Upgrade} requests are forwarded as plain requests, the
        C{Upgrade} header removed, as RFC 9110 allows).
    @ivar tunnelIdleTimeout: Seconds a tunnel may stay silent.
    @ivar allowTrace: Whether C{TRACE} requests are forwarded. When not
        (the default), they are answered 405 here: a backend that echoes
        one would show a script the client's cookies and credentials
        (cross-site tracing).
    """

    isLeaf = True

    def __init__(
        self,
        pool: BackendPool,
        policy: ForwardingPolicy | None = None,
        stripPrefix: bytes = b"",
        websocket: bool = True,
        tunnelIdleTimeout: float = 300.0,
        allowTrace: bool = False,
    ) -> None:
        super().__init__()
        self.pool = pool
        self.policy = policy if policy is not None else ForwardingPolicy()
        self.stripPrefix = stripPrefix.rstrip(b"/")
        self.websocket = websocket
        self.tunnelIdleTimeout = tunnelIdleTimeout
        self.allowTrace = allowTrace
        self._seconds = pool.clock.seconds

    def render(self, request: IRequest) -> object:
        """
        Forward C{request}; the response is written as it arrives.

        @param request: A L{twisted.web.server.Request} (the proxy needs its
            producer registration and connection state, which L{IRequest}
            does not declare).
        """
        assert isinstance(request, Request)
        if request.method == b"TRACE" and not self.allowTrace:
            refuseMethod(request, FORWARDED_METHODS)
            return NOT_DONE_YET
        policy = self.policy
        target = request.uri
        if self.stripPrefix and target.startswith(self.stripPrefix):
            target = target[len(self.stripPrefix) :]
            if not target.startswith(b"/"):
                target = b"/" + target
        requestHeaders = request.requestHeaders
        hostValues = requestHeaders.getRawHeaders(b"host")
        host = hostValues[0] if hostValues else None
        client = request.getClientAddress()
        clientHost = getattr(client, "host", "") or ""
        # The connection's peer, when trusted proxies named another client:
        # the forwarding headers are extended with the peer.
        peerHost = getattr(request, "peerHost", None) or clientHost
        proto = request.clientproto
        version = proto.split(b"/", 1)[-1] if proto else b"1.1"
        headers = upstreamHeaders(
            requestHeaders.getAllRawHeaders(),
            policy,
            peerHost,
            request.isSecure(),
            host,
            version,
        )
        # The contract's attributes, when the request provides it.
        proxied: Any = request if IProxyRequest.providedBy(request) else None
        if proxied is not None:
            proxied.upstreamStarted = self._seconds()
            if (
                proxied.connectTarget is not None
                or (self.websocket and requestHeaders.hasHeader(b"upgrade"))
            ) and self._tunnel(request, target, headers):
                return NOT_DONE_YET
        stream: RequestBodyStream | None = (
            proxied.bodyStream if proxied is not None else None
        )
        body: bytes | IO[bytes] | None
        length = 0
        if stream is not None:
            body = None
        else:
            content = request.content
            if content is None:
                body = b""
            elif isinstance(content, BytesIO):
                body = content.getvalue()
                length = len(body)
            else:
                content.seek(0, 2)
                length = content.tell()
                content.seek(0)
                # Small bodies go in one write; large ones are sent from the
                # file as the backend connection takes them.
                body = content.read() if length <= _READ_WHOLE else content
        backendRequest = BackendRequest(
            request.method,
            target,
            headers,
            body,
            length,
            stream,
            hostFromBackend=policy.hostHeader == "backend",
        )
        hashOn = self.pool.hashOn
        if hashOn is not None:
            # Only hashing pools pay for the key.
            backendRequest.hashKey = requestHashKey(
                hashOn, clientHost, requestHeaders.getRawHeaders
            )
        exchange = _ProxyExchange(request, policy, proxied is not None)
        handle = self.pool.submit(backendRequest, exchange)
        if not handle.done:
            exchange.handle = handle
            if proxied is not None:
                # Cheaper than a Deferred from notifyFinish for each request.
                proxied.onConnectionLost = exchange.clientGone
            else:
                request.notifyFinish().addErrback(exchange.clientGone)
        return NOT_DONE_YET

    def _tunnel(
        self, request: Any, target: bytes, headers: list[tuple[bytes, bytes]]
    ) -> bool:
        """
        Tunnel a C{CONNECT} or a WebSocket upgrade (see
        L{twisted_rproxy.upgrade}).

        @return: Whether the request was taken (tunnelled or refused); any
            other upgrade is left to be forwarded as a plain request.
        """
        connect = request.connectTarget
        upgrade = None
        if connect is None:
            upgrade = upgradeRequested(request.method, request.requestHeaders)
            if upgrade != b"websocket" or request.method != b"GET":
                upgrade = None
        if not ITunnelChannel.providedBy(request.channel) or (
            connect is None and upgrade is None
        ):
            if connect is not None:
                # HTTP/2 has no CONNECT tunnels here.
                renderError(request, 405)
                return True
            return False
        policy = self.policy
        tunnel = Tunnel(
            self.pool.clock,
            request,
            self.pool,
            connect if connect is not None else target,
            [(n, v) for n, v in headers if connect is None or n.lower() != b"host"]
            + ([(b"Host", connect)] if connect is not None else []),
            upgrade,
            self.tunnelIdleTimeout,
            policy.hideHeaders,
            hostFromBackend=policy.hostHeader == "backend" and connect is None,
        )
        tunnel.start()
        return True
