"""
L{ProxySite}: the proxy's twisted.web site, building its channels and
requests with the configured limits, keeping the open connections for a
graceful stop, and writing the access log.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from typing import IO, Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter, datetimeToLogString
from twisted.web.resource import IResource
from twisted.web.server import Site

from twisted_rproxy.config import ServerConfig
from twisted_rproxy.h2.connection import H2ServerConnection
from twisted_rproxy.h2.limits import H2Limits
from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.policies import parseNetworks
from twisted_rproxy.server.channel import ProxyHTTPChannel
from twisted_rproxy.server.request import BodyPolicy, ProxyRequest
from twisted_rproxy.server.timeouts import IdleSweep, RequestGuard

_log = Logger()


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
    @ivar connections: The open client connections.
    @ivar requestObserver: Called with each finished request (metrics and
        the admin page's recent errors), or L{None}.
    @ivar draining: Whether a graceful stop is under way.
    """

    requestFactory = ProxyRequest
    #: The class of the channels L{buildProtocol} makes (and configures).
    protocol = ProxyHTTPChannel  # type: ignore[assignment]
    displayTracebacks = False
    noisy = False
    memoryBodyLimit = 1024 * 1024
    #: The C{Strict-Transport-Security} value added to responses over TLS,
    #: or L{None}.
    hstsHeader: bytes | None = None
    requestObserver: Callable[[ProxyRequest], object] | None = None
    draining = False

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
            # ProxyRequest parses no form in a POST body (Twisted 24.7's
            # Site has no parsePOSTFormSubmission to say so).
            timeout=config.idleTimeout or None,
            reactor=reactor,
        )
        self.config = config
        serverHeader = config.serverHeader
        self.serverHeader = serverHeader.encode() if serverHeader else None
        defaultPolicy = (config.maxBodySize, config.requestBuffering)
        self.bodyPolicy: BodyPolicy = bodyPolicy or (lambda request: defaultPolicy)
        self._trustedNetworks = parseNetworks(config.trustedProxies)
        guard = RequestGuard(
            headerTimeout=config.headerTimeout,
            bodyTimeout=config.bodyTimeout,
            requestTimeout=config.requestTimeout,
            minBodyRate=config.minBodyRate,
            minBodyRateGrace=config.minBodyRateGrace,
        )
        self._requestGuard = guard if guard else None
        self.connections: set[ProxyHTTPChannel] = set()
        #: By listening port bound to one address, the local address of its
        #: connections (see L{twisted_rproxy._twisted.localAddress}).
        self.localAddresses: dict[object, object] = {}
        idle = config.idleTimeout
        #: The idle timer of the HTTP/1.1 connections, when they have one:
        #: a connection idles out up to a second late (a quarter of the
        #: timeout, for one under four seconds).
        self.idleSweep = (
            IdleSweep(reactor, self.connections, min(1.0, idle / 4)) if idle else None
        )
        #: What an HTTP/2 connection accepts: the HTTP/1.1 limits' own
        #: counterparts.
        self.h2Limits = H2Limits(
            maxHeaderListSize=config.maxHeaderSize,
            maxHeaders=config.maxHeaders,
            maxRequestLine=config.maxRequestLine,
            idleTimeout=config.idleTimeout or 0.0,
            headerTimeout=config.headerTimeout,
            bodyTimeout=config.bodyTimeout,
            minBodyRate=config.minBodyRate,
            minBodyRateGrace=config.minBodyRateGrace,
        )
        self._callLater = reactor.callLater
        self._accessLog: TextIO | None = None
        self._formatLine: Callable[[ProxyRequest], str] = (
            self._jsonLine if config.accessLogFormat == "json" else self._combinedLine
        )
        self._drainCall: IDelayedCall | None = None
        # No second is -1: the first line formats its date.
        self._accessLogDate: tuple[int, str] = (-1, "")

    def acceptableProtocols(self) -> list[bytes]:
        """
        No protocols for Twisted to negotiate: each C{[[tls]]} context sets
        its own ALPN list (C{h2} only where C{http2} is on).

        Twisted up to 24.x applied the wrapped factory's protocols to the
        context of every TLS connection (C{TLSMemoryBIOFactory}), which
        would offer C{h2} where it is off, and change a context after a
        connection was made (an error in recent pyOpenSSL). An empty list
        leaves the context as it is; later Twisted does not ask.
        """
        return []

    def buildProtocol(self, addr: object) -> ProxyHTTPChannel:  # type: ignore[override]
        """
        The channel of a connection: what twisted.web's C{Site},
        C{HTTPFactory} and C{Factory} each set in turn (in one call, for
        every connection accepted), and the configured limits. It speaks
        HTTP/1.1 and switches to HTTP/2 when TLS negotiates it (or, with
        C{h2c}, when a plain connection starts with its preface).
        """
        channel = ProxyHTTPChannel()
        channel.factory = self
        channel.requestFactory = self.requestFactory
        channel.idleSweep = self.idleSweep
        channel.acceptedFrom = addr
        # twisted.web's own attributes, which Twisted types narrower (an
        # int timeout, a callLater of the protocol's own).
        web: Any = channel
        web.site = self
        web.callLater = self._callLater
        web.timeOut = self.timeOut
        config = self.config
        channel.maxHeaders = config.maxHeaders
        channel.totalHeadersSize = config.maxHeaderSize
        if config.h2c:
            channel.h2c = True
        self._configureHardening(channel)
        return channel

    def buildHTTP2(self) -> H2ServerConnection:
        """
        The protocol of a connection that speaks HTTP/2.
        """
        return H2ServerConnection(self, self.h2Limits, self._trustedNetworks)

    def _configureHardening(self, channel: ProxyHTTPChannel) -> None:
        """
        Give C{channel} the request limits, timeouts and trusted proxies of
        the configuration.
        """
        config = self.config
        channel.maxRequestLine = config.maxRequestLine
        # A longer line is refused by lineLengthExceeded, with its status.
        channel.MAX_LENGTH = max(config.maxRequestLine, config.maxHeaderSize)
        channel.trustedProxies = self._trustedNetworks
        channel.requestGuard = self._requestGuard

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
        if self.idleSweep is not None:
            self.idleSweep.stop()
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

    def log(self, request: ProxyRequest) -> None:  # type: ignore[override]
        observer = self.requestObserver
        if observer is not None:
            observer(request)
        accessLog = self._accessLog
        if accessLog is not None:
            try:
                accessLog.write(self._formatLine(request) + "\n")
            except (OSError, ValueError) as e:
                _log.error("Cannot write the access log: {error}", error=e)

    def _accessLogTime(self) -> str:
        """
        The access log's time of now, formatted once a second (as
        twisted.web's own log does).
        """
        second = int(self.reactor.seconds())
        cached = self._accessLogDate
        if cached[0] != second:
            cached = self._accessLogDate = (second, datetimeToLogString(second))
        return cached[1]

    def _times(self, request: ProxyRequest) -> tuple[float, float | None]:
        started = request.startedAt
        elapsed = self.reactor.seconds() - started if started else 0.0
        return max(elapsed, 0.0), request.upstreamTime

    def _combinedLine(self, request: ProxyRequest) -> str:
        """
        The combined log format, then the request time and the upstream
        time in seconds ("-" when no backend answered), as nginx's
        C{$request_time $upstream_response_time}.
        """
        elapsed, upstream = self._times(request)
        line = combinedLogFormatter(self._accessLogTime(), request)
        upstreamText = "-" if upstream is None else f"{upstream:.3f}"
        return f"{line} {elapsed:.3f} {upstreamText}"

    def _jsonLine(self, request: ProxyRequest) -> str:
        """
        One JSON object per line (see docs/operations.rst for its fields).
        """
        elapsed, upstream = self._times(request)
        headers = request.requestHeaders
        route = request.route
        address = request.getClientAddress()
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime()),
            "remote_addr": getattr(address, "host", "-"),
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "protocol": (request.clientproto or b"").decode("latin-1"),
            "status": request.code,
            "bytes_sent": request.sentLength,
            "host": (headers.getRawHeaders(b"host") or [b""])[0].decode("latin-1"),
            "referer": (headers.getRawHeaders(b"referer") or [b""])[0].decode(
                "latin-1"
            ),
            "user_agent": (headers.getRawHeaders(b"user-agent") or [b""])[0].decode(
                "latin-1"
            ),
            "route": getattr(route, "label", None),
            "upstream": request.upstreamServer,
            "request_time": round(elapsed, 6),
            "upstream_time": None if upstream is None else round(upstream, 6),
        }
        return json.dumps(record, separators=(",", ":"))

    def drain(self, timeout: float) -> Deferred[None]:
        """
        The graceful stop of the connections (the listeners are already
        closed): idle connections close now, busy ones after their
        response; past C{timeout} seconds the rest are cut.

        @return: A L{Deferred} that fires once every connection is closed.
        """
        self.draining = True
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + timeout

        def check() -> None:
            self._drainCall = None
            force = self.reactor.seconds() >= deadline
            if force and self.connections:
                _log.warn(
                    "Drain timeout: closing {count} busy connections",
                    count=len(self.connections),
                )
            for connection in list(self.connections):
                if connection.closeIfIdle(force):
                    # Closing may take a moment: stop counting it.
                    self.connections.discard(connection)
            if not self.connections:
                done.callback(None)
                return
            self._drainCall = self.reactor.callLater(0.05, check)

        check()
        return done
