"""
OCSP stapling for the certificates of the C{[[tls]]} listeners.

For each certificate served whose Authority Information Access names an
OCSP responder, L{OCSPStapler} asks the responder for the certificate's
status (RFC 6960, over HTTP POST), checks the answer (L{checkResponse}:
signed by the issuer or by a responder the issuer delegated to, for this
certificate, status good, times sane) and keeps its DER; the handshake of a
client that asks (the C{status_request} extension, RFC 6066) gets it
stapled (L{OCSPStapler.install}). The response is fetched again halfway
through its validity (with jitter); a failed fetch is retried with backoff
and the last good response goes on being stapled until its C{nextUpdate},
then is dropped.

A handshake never waits for a responder: it gets what is cached, or
nothing.

The decisions (which responder, whether an answer may be stapled, when to
fetch again) are functions of data in L{twisted_rproxy.tls.ocspcheck};
L{OCSPStapler} does the I/O (Twisted's HTTP client,
L{twisted.web.client.Agent}) on the reactor it is given.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterable
from typing import Any

from attrs import define
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IConsumer, IDelayedCall
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from twisted_rproxy.interfaces import IProxyReactor
from twisted_rproxy.tls.certificates import LoadedCertificate
from twisted_rproxy.tls.ocspcheck import (
    CheckedResponse,
    OCSPError,
    OCSPStatus,
    checkResponse,
    fingerprint,
    issuerOf,
    ocspRequest,
    refreshDelay,
    responderURL,
    retryDelay,
    utcText,
)

__all__ = ["MAX_RESPONSE_SIZE", "Fetcher", "OCSPStapler"]

_log = Logger()

#: The largest responder answer read, in bytes (a response with its
#: responder's certificate is a few KiB).
MAX_RESPONSE_SIZE = 64 * 1024


@define
class _Entry:
    """
    What the stapler keeps of one certificate with a responder.
    """

    certificate: LoadedCertificate
    url: str
    issuer: x509.Certificate | None
    staple: CheckedResponse | None = None
    lastSuccess: float | None = None
    lastError: str | None = None
    lastErrorTime: float | None = None
    failures: int = 0
    errors: int = 0
    call: IDelayedCall | None = None
    fetching: Deferred[bytes] | None = None


#: What fetches a response: called with the responder URL and the DER
#: request, fires with the DER answer.
Fetcher = Callable[[str, bytes], "Deferred[bytes]"]


def _describe(failure: Failure) -> str:
    error = failure.value
    if isinstance(error, OCSPError):
        return str(error)
    if isinstance(error, TimeoutError):
        return "no answer in time"
    reasons = getattr(error, "reasons", None)
    if reasons:
        error = reasons[0].value
    name = type(error).__name__
    text = str(error) or name
    return text if name in text else f"{name}: {text}"


def _datetime(seconds: float | None) -> datetime.datetime | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


class OCSPStapler:
    """
    Fetches, checks, caches and refreshes the OCSP responses of the
    certificates served, and staples them to handshakes.

    A L{twisted_rproxy.tls.ServerTLS} tells it what it serves
    (L{serve}) and installs its callback on each context (L{install}).
    Fetches start with L{start} and end with L{stop}.

    @ivar reactor: Its clock (the wall clock), and the network of its
        fetches.
    @ivar timeout: Seconds a fetch may take, connection to last byte.
    @ivar running: Whether it fetches.
    """

    def __init__(
        self,
        reactor: IProxyReactor,
        fetch: Fetcher | None = None,
        timeout: float = 10.0,
        randomFraction: Callable[[], float] = random.random,
    ) -> None:
        """
        @param fetch: What fetches a response (L{Fetcher}); by default an
            HTTP POST with Twisted's L{Agent}.
        @param randomFraction: The source of the schedule's jitter.
        """
        self.reactor = reactor
        self.timeout = timeout
        self.running = False
        self._fetch = fetch if fetch is not None else self._post
        self._random = randomFraction
        self._owners: dict[int, frozenset[bytes]] = {}
        self._entries: dict[bytes, _Entry] = {}
        self._client: Any = None

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(
            self.reactor.seconds(), datetime.timezone.utc
        )

    def serve(self, owner: object, certificates: Iterable[LoadedCertificate]) -> None:
        """
        Say which certificates C{owner} (a listener group) serves now, in
        place of those it served before. Certificates no owner serves any
        longer are forgotten (their fetches cancelled); new ones with a
        responder are fetched (at once, when running).
        """
        keys = set()
        for certificate in certificates:
            url = responderURL(certificate.certificate)
            if url is None:
                continue
            key = fingerprint(certificate.certificate)
            keys.add(key)
            if key not in self._entries:
                entry = _Entry(certificate, url, issuerOf(certificate))
                self._entries[key] = entry
                if entry.issuer is None:
                    entry.lastError = (
                        "the issuer's certificate is not in the certificate "
                        "file's chain: no OCSP request can be made"
                    )
                    entry.lastErrorTime = self.reactor.seconds()
                    _log.warn(
                        "OCSP stapling off for {path}: {error}",
                        path=certificate.config.certificate,
                        error=entry.lastError,
                    )
                elif self.running:
                    self._schedule(entry, 0)
        self._owners[id(owner)] = frozenset(keys)
        wanted = set().union(*self._owners.values())
        for key in [key for key in self._entries if key not in wanted]:
            self._forget(self._entries.pop(key))

    def _forget(self, entry: _Entry) -> None:
        call, entry.call = entry.call, None
        if call is not None and call.active():
            call.cancel()
        fetching, entry.fetching = entry.fetching, None
        if fetching is not None:
            fetching.cancel()

    def start(self) -> None:
        """
        Fetch the response of every certificate served, then keep them
        fresh.
        """
        if self.running:
            return
        self.running = True
        for entry in self._entries.values():
            if entry.issuer is not None and entry.fetching is None:
                self._schedule(entry, 0)

    def stop(self) -> None:
        """
        Stop fetching: cancel the fetches under way and the timers. The
        responses held are stapled until they expire.
        """
        self.running = False
        for entry in self._entries.values():
            self._forget(entry)
        client, self._client = self._client, None
        if client is not None:
            client[1].closeCachedConnections()

    def install(self, context: SSL.Context, certificate: LoadedCertificate) -> None:
        """
        Staple C{certificate}'s response, when one is held, to the
        handshakes of C{context} whose client asks for it.
        """
        context.set_ocsp_server_callback(
            self._stapleCallback, fingerprint(certificate.certificate)
        )

    def _stapleCallback(self, connection: SSL.Connection, key: bytes | None) -> bytes:
        try:
            return self.stapleFor(key) if key is not None else b""
        except Exception:  # pragma: no cover - a handshake must not fail for it
            _log.failure("OCSP stapling failed")
            return b""

    def stapleFor(self, key: bytes) -> bytes:
        """
        The response to staple for the certificate whose L{fingerprint} is
        C{key}: the one held while it has not expired, else nothing (an
        expired one is dropped).
        """
        entry = self._entries.get(key)
        if entry is None or entry.staple is None:
            return b""
        if entry.staple.expires <= self._now():
            _log.warn(
                "OCSP response for {path} expired at {expires}; no longer stapled",
                path=entry.certificate.config.certificate,
                expires=utcText(entry.staple.expires),
            )
            entry.staple = None
            return b""
        return entry.staple.der

    def statusOf(self, certificate: LoadedCertificate) -> OCSPStatus | None:
        """
        The OCSP state of a certificate served, or L{None} if it names no
        responder.
        """
        entry = self._entries.get(fingerprint(certificate.certificate))
        if entry is None:
            return None
        self.stapleFor(fingerprint(certificate.certificate))
        call = entry.call
        staple = entry.staple
        return OCSPStatus(
            responder=entry.url,
            stapledUntil=staple.expires if staple is not None else None,
            thisUpdate=staple.thisUpdate if staple is not None else None,
            lastSuccess=_datetime(entry.lastSuccess),
            lastError=entry.lastError,
            lastErrorTime=_datetime(entry.lastErrorTime),
            failures=entry.failures,
            errors=entry.errors,
            nextAttempt=_datetime(call.getTime())
            if call is not None and call.active()
            else None,
        )

    def _schedule(self, entry: _Entry, delay: float) -> None:
        if entry.call is not None and entry.call.active():
            entry.call.cancel()
        entry.call = self.reactor.callLater(delay, self._fetchNow, entry)

    def _fetchNow(self, entry: _Entry) -> None:
        entry.call = None
        assert entry.issuer is not None
        request = ocspRequest(entry.certificate.certificate, entry.issuer)
        body = request.public_bytes(serialization.Encoding.DER)
        try:
            fetching = self._fetch(entry.url, body)
        except Exception:
            fetching = fail()
        entry.fetching = fetching
        fetching.addCallback(self._accept, entry)
        fetching.addErrback(self._failed, entry)

    def _accept(self, der: bytes, entry: _Entry) -> None:
        entry.fetching = None
        assert entry.issuer is not None
        now = self._now()
        checked = checkResponse(der, entry.certificate.certificate, entry.issuer, now)
        first = entry.staple is None
        entry.staple = checked
        entry.lastSuccess = self.reactor.seconds()
        entry.failures = 0
        (_log.info if first else _log.debug)(
            "OCSP response for {path} stapled until {expires}",
            path=entry.certificate.config.certificate,
            expires=utcText(checked.expires),
        )
        if self.running:
            self._schedule(entry, refreshDelay(checked, now, self._random()))

    def _failed(self, failure: Failure, entry: _Entry) -> None:
        entry.fetching = None
        if failure.check(CancelledError) and not self.running:
            return
        if self._entries.get(fingerprint(entry.certificate.certificate)) is not entry:
            return
        entry.failures += 1
        entry.errors += 1
        entry.lastError = _describe(failure)
        entry.lastErrorTime = self.reactor.seconds()
        now = self._now()
        remaining = None
        if entry.staple is not None:
            if entry.staple.expires <= now:
                entry.staple = None
            else:
                remaining = (entry.staple.expires - now).total_seconds()
        delay = retryDelay(entry.failures, self._random(), remaining)
        _log.error(
            "OCSP fetch for {path} from {url} failed: {error}; {held}, "
            "next try in {delay:.0f}s",
            path=entry.certificate.config.certificate,
            url=entry.url,
            error=entry.lastError,
            held=(
                f"stapling the last good response until {utcText(entry.staple.expires)}"
                if entry.staple is not None
                else "nothing stapled"
            ),
            delay=delay,
        )
        if self.running:
            self._schedule(entry, delay)

    def _post(self, url: str, body: bytes) -> Deferred[bytes]:
        """
        POST an OCSP request to a responder (RFC 6960 A.1) with Twisted's
        L{Agent} (no redirects followed): the answer's body, if it is a
        200, within L{timeout} and L{MAX_RESPONSE_SIZE}.
        """
        from twisted.web.client import Agent, HTTPConnectionPool

        if self._client is None:
            pool = HTTPConnectionPool(self.reactor, persistent=False)
            agent = Agent(self.reactor, connectTimeout=self.timeout, pool=pool)
            self._client = (agent, pool)
        agent = self._client[0]

        async def fetch() -> bytes:
            response = await agent.request(
                b"POST",
                url.encode("ascii"),
                Headers(
                    {
                        b"Content-Type": [b"application/ocsp-request"],
                        b"Accept": [b"application/ocsp-response"],
                    }
                ),
                _BytesProducer(body),
            )
            if response.code != 200:
                response.deliverBody(_Discard())
                raise OCSPError(f"the responder answered HTTP {response.code}")
            done: Deferred[bytes] = Deferred()
            response.deliverBody(_Collect(done, MAX_RESPONSE_SIZE))
            return await done

        return Deferred.fromCoroutine(fetch()).addTimeout(self.timeout, self.reactor)


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body known whole: written at once.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return Deferred.fromCoroutine(_done())

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


async def _done() -> None:
    return None


class _Collect(Protocol):
    """
    Collects a response body of at most C{limit} bytes into C{done}; a
    longer one is cut off (the connection dropped) and fails it.
    """

    def __init__(self, done: Deferred[bytes], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(
                OCSPError(f"the responder's answer is over {self.limit} bytes")
            )
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


class _Discard(Protocol):
    """
    Reads a response body to its end, keeping nothing.
    """

    def dataReceived(self, data: bytes) -> None:
        pass
