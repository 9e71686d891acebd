"""
The values that cross modules: what the server, the filters, the cache and
the proxy hand each other, and what a backend pool takes and reports.

  - to a pool: L{BackendRequest} (with a L{RequestBodyStream} for a body
    streamed as it arrives), and from it the L{BackendError}s;
  - filter hooks: L{RequestContext}, L{ResponseHead}, L{FilterResponse};
  - cache stores: L{CacheEntry}.

They are defined here, below L{twisted_rproxy.interfaces}, so that the
interfaces can name them; the modules that use them re-export them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO

from attrs import define, field, frozen, setters
from twisted.internet.interfaces import IPushProducer, IReactorTime, ISSLTransport
from twisted.web.http import RESPONSES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from twisted_rproxy._twisted import connectionTransport
from twisted_rproxy.pages import errorBody
from twisted_rproxy.rules.cachecontrol import CacheControl, parseCacheControl

__all__ = [
    "ENTRY_OVERHEAD",
    "IDEMPOTENT_METHODS",
    "VARIANT_OVERHEAD",
    "BackendError",
    "BackendProtocolError",
    "BackendRequest",
    "BackendTimeout",
    "BackendUnavailable",
    "CacheEntry",
    "FilterResponse",
    "NoHealthyServers",
    "PoolClosed",
    "PoolOverloaded",
    "RequestBodyStream",
    "RequestContext",
    "ResponseHead",
]


#: Methods that RFC 9110 section 9.2.2 calls idempotent: safe to send again.
IDEMPOTENT_METHODS = frozenset(
    [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"]
)


class BackendError(Exception):
    """
    A request could not be completed by the pool's backends.

    @cvar status: The status the proxy answers the client with.
    """

    status = 502


class BackendUnavailable(BackendError):
    """
    No connection could be made: refused, unreachable, or closed before
    answering.
    """


class BackendTimeout(BackendError):
    """
    The backend did not connect or answer in time.
    """

    status = 504


class BackendProtocolError(BackendError):
    """
    The backend's response was not well-formed HTTP/1.1.
    """


class PoolOverloaded(BackendError):
    """
    Every server is at its connection limit and the pool's queue is full,
    or the request waited in it for too long.
    """

    status = 503


class NoHealthyServers(PoolOverloaded):
    """
    Every server of the pool is down or ejected, and its panic threshold
    is 0 (so it does not fall back on them).
    """


class PoolClosed(BackendError):
    """
    The pool was shut down.
    """

    status = 503


@define
class BackendRequest:
    """
    One request to forward: method, target, headers already rewritten for
    the backend, and the body.

    @ivar body: The whole body as L{bytes}, or a seekable binary file of
        C{bodyLength} bytes, for a buffered request; or L{None} when the
        body streams from C{bodyStream}.
    @ivar bodyStream: For a streamed request, the source of the body as it
        arrives from the client (see L{IRequestBodyStream}).
    @ivar hashKey: What a C{balance = "hash"} pool places the request by
        (see L{BackendPool.hashOn}); L{None} otherwise.
    """

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes | IO[bytes] | None = b""
    bodyLength: int = 0
    bodyStream: RequestBodyStream | None = None
    hostFromBackend: bool = False
    hashKey: bytes | None = None

    @property
    def replayable(self) -> bool:
        """
        Whether the request may be sent again after a failed attempt: an
        idempotent method whose body we still hold.
        """
        return self.bodyStream is None and self.method in IDEMPOTENT_METHODS


class RequestBodyStream:
    """
    The body of a client request that is forwarded as it arrives.

    The client side calls L{dataReceived} and L{finished}; the backend
    connection calls L{startStreaming} with its write callbacks. Data that
    arrives before a backend connection is ready is held, and the client
    is paused (through C{clientProducer}) until it is taken.

    @ivar length: The body's length when the client gave a Content-Length,
        else L{None} (the backend then gets it chunked).
    """

    _maxHeld = 65536

    def __init__(self, length: int | None, clientProducer: IPushProducer) -> None:
        self.length = length
        self._client = clientProducer
        self._held: list[bytes] = []
        self._heldSize = 0
        self._done = False
        self._pausedClient = False
        self._write: Callable[[bytes], None] | None = None
        self._finish: Callable[[], None] | None = None
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        """
        A piece of the body arrived from the client.
        """
        self.received += len(data)
        if self._write is not None:
            self._write(data)
            return
        self._held.append(data)
        self._heldSize += len(data)
        if self._heldSize > self._maxHeld and not self._pausedClient:
            self._pausedClient = True
            self._client.pauseProducing()

    @property
    def complete(self) -> bool:
        """
        Whether the whole body has arrived from the client.
        """
        return self._done

    def finished(self) -> None:
        """
        The whole body arrived from the client.
        """
        self._done = True
        if self._finish is not None:
            self._finish()

    def startStreaming(
        self, write: Callable[[bytes], None], finish: Callable[[], None]
    ) -> None:
        """
        Deliver the body, from now on, to C{write}, and its end to C{finish}.
        """
        self._write = write
        self._finish = finish
        held, self._held, self._heldSize = self._held, [], 0
        for data in held:
            write(data)
        if self._pausedClient:
            self._pausedClient = False
            self._client.resumeProducing()
        if self._done:
            finish()

    def stopStreaming(self) -> None:
        """
        The backend connection is gone: hold nothing more for it.
        """
        self._write = self._finish = None
        self._held = []

    # IPushProducer, registered with the backend transport for backpressure.
    def pauseProducing(self) -> None:
        self._client.pauseProducing()

    def resumeProducing(self) -> None:
        self._client.resumeProducing()

    def stopProducing(self) -> None:
        self.stopStreaming()


def _toBytes(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


_Text = str | bytes


def _headerPairs(
    headers: Mapping[_Text, _Text] | Sequence[tuple[_Text, _Text]],
) -> tuple[tuple[bytes, bytes], ...]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((_toBytes(name), _toBytes(value)) for name, value in items)


@frozen
class FilterResponse:
    """
    A complete response with which a request or error hook answers.

    @ivar code: The status code.
    @ivar headers: C{(name, value)} pairs (or a mapping), L{str} or
        L{bytes}; C{Content-Length} is added.
    @ivar body: The body, as bytes (not sent for C{HEAD}).
    """

    code: int
    headers: tuple[tuple[bytes, bytes], ...] = field(default=(), converter=_headerPairs)
    body: bytes = b""

    @classmethod
    def redirect(cls, location: str | bytes, code: int = 302) -> FilterResponse:
        """
        A redirect to C{location}.
        """
        return cls(code, [(b"Location", _toBytes(location))])

    @classmethod
    def error(cls, code: int) -> FilterResponse:
        """
        The proxy's own error page for C{code} (4xx or 5xx).
        """
        return cls(
            code,
            [
                (b"Content-Type", b"text/html; charset=utf-8"),
                (b"Cache-Control", b"no-store"),
            ],
            errorBody(code),
        )


@define
class ResponseHead:
    """
    The head of a response, as response hooks see and change it.

    @ivar code: The status code. Change it and, unless C{phrase} is changed
        too, the standard reason phrase follows.
    @ivar phrase: The reason phrase, as bytes.
    @ivar headers: Every response header (those a backend sent and those
        the proxy set), to change in place.
    """

    code: int
    phrase: bytes
    headers: Headers


@define(eq=False)
class RequestContext:
    """
    What the hooks of one request share, passed to every hook: no globals,
    no attributes stuck on the request.

    @ivar request: The request.
    @ivar reactor: The reactor, for timers and clients (treq) in hooks.
    @ivar route: The L{twisted_rproxy.config.RouteConfig} of the route that
        took the request (its C{path}, C{host}, C{pool} or C{static},
        C{filters}), or L{None} for a chain mounted in an application's
        own tree.
    @ivar clientAddress: The client's IP address (C{""} if unknown).
    @ivar started: When the chain received the request
        (C{reactor.seconds()}).
    @ivar timings: Named moments: C{"requestFiltered"} (the request hooks
        are done), C{"responseStarted"} (the head is about to be written),
        C{"finished"}; add your own with L{mark}.
    @ivar data: Free for filters: a hook leaves values here for a later
        hook of the same request, its own or another filter's.
    """

    request: IRequest
    reactor: IReactorTime
    route: object = None
    clientAddress: str = ""
    started: float = 0.0
    timings: dict[str, float] = field(factory=dict)
    data: dict[str, object] = field(factory=dict)

    def mark(self, name: str) -> float:
        """
        Record the time of the moment C{name} in L{timings}; return it.
        """
        now = self.reactor.seconds()
        self.timings[name] = now
        return now

    def elapsed(self) -> float:
        """
        Seconds since the chain received the request.
        """
        return self.reactor.seconds() - self.started

    @property
    def tlsPeer(self) -> object:
        """
        The client's TLS certificate (an C{OpenSSL.crypto.X509}), or
        L{None} when the connection is not TLS or the client sent none.
        """
        # An HTTP/2 stream's TLS transport is its connection's.
        transport = connectionTransport(self.request)
        if not ISSLTransport.providedBy(transport):
            return None
        try:
            return transport.getPeerCertificate()
        except Exception:
            # Not negotiated yet, or the connection is gone: no peer.
            return None


#: Bytes counted for each entry beyond the objects it holds: its place in a
#: store's index (an ordered dict's slot and link, amortized over the dict's
#: spare room), as measured with tracemalloc; see L{CacheEntry.computeSize}.
ENTRY_OVERHEAD = 112

#: Bytes counted in addition for an entry that C{Vary} selects: its share of
#: the dict of its primary key's variants.
VARIANT_OVERHEAD = 128

#: Separates the names and values of a stored head (see L{_packHead}).
_NUL = b"\x00"

#: The standard reason phrases, so that entries share one object each.
_REASONS = {phrase: phrase for phrase in RESPONSES.values()}


def _held(obj: object) -> int:
    """
    The bytes the allocator hands out for C{obj}: its size rounded up to
    the 16 bytes that pymalloc (and malloc) align blocks to.
    """
    return (sys.getsizeof(obj) + 15) & ~15


def _bytesHeld(data: bytes) -> int:
    # The empty bytes object is a shared singleton.
    return _held(data) if data else 0


#: A float or a large int: each entry holds three floats, its size, and a
#: status above 256 (smaller ints are shared).
_NUMBER = _held(1.0e9)


def _packHead(
    headers: Iterable[tuple[bytes, bytes]],
) -> bytes | tuple[tuple[bytes, bytes], ...]:
    """
    Stored headers as one bytes object: names and values alternating,
    separated by NUL (which no field holds: RFC 9110 section 5.5).  Two
    small objects a field would otherwise cost, and their tuple, are most
    of what a small entry holds.  Headers with a NUL are kept as a tuple.
    """
    fields: list[bytes] = []
    for name, value in headers:
        fields.append(name)
        fields.append(value)
    packed = _NUL.join(fields)
    if packed.count(_NUL) != max(len(fields) - 1, 0):
        return tuple(zip(fields[::2], fields[1::2], strict=True))
    return packed


def _sharedReason(reason: bytes) -> bytes:
    return _REASONS.get(reason, reason)


@define(eq=False)
class CacheEntry:
    """
    One stored response, held compactly: its headers are one bytes object
    (L{headers} makes the list of pairs on each read) and a standard reason
    phrase is shared.

    @ivar key: The primary cache key (see L{twisted_rproxy.cache.resource}).
    @ivar variant: The secondary key: the normalized values of the request
        headers named by C{Vary} (C{b""} without C{Vary}).
    @ivar varyOn: The lowercased names listed in C{Vary}.
    @ivar status: The status code.
    @ivar reason: The reason phrase.
    @ivar body: The whole body.
    @ivar responseTime: When the response (or its last revalidation)
        arrived.
    @ivar initialAge: Its corrected initial age then (RFC 9111 section
        4.2.3).
    @ivar lifetime: Its freshness lifetime, in seconds.
    @ivar cacheControl: Its parsed C{Cache-Control}.  Entries with the same
        directives may share one (a L{twisted_rproxy.cache.MemoryStore}
        does, and counts it once); it is never changed in place.
    @ivar size: The bytes the entry is counted for (L{computeSize}).
    @ivar countedControl: What the store that holds this entry counted its
        C{cacheControl} under (L{None} until one does).
    """

    key: bytes
    variant: bytes
    varyOn: tuple[bytes, ...]
    status: int
    reason: bytes = field(converter=_sharedReason)
    _head: bytes | tuple[tuple[bytes, bytes], ...] = field(
        alias="headers", converter=_packHead, on_setattr=setters.NO_OP, repr=False
    )
    body: bytes = field(repr=False)
    responseTime: float
    initialAge: float
    lifetime: float
    cacheControl: CacheControl = field(factory=lambda: parseCacheControl([]))
    size: int = field(init=False)
    countedControl: tuple[type, str] | None = field(
        init=False, default=None, repr=False
    )

    @size.default
    def _size(self) -> int:
        return self.computeSize()

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """
        The stored headers (C{Content-Length} always among them), in order:
        a new list on each read, so change them by assigning a list (then
        tell the store, L{twisted_rproxy.interfaces.ICacheStore.resized}).
        """
        head = self._head
        if isinstance(head, bytes):
            # Pairs of the fields; none for the empty head.
            fields = iter(head.split(_NUL))
            return list(zip(fields, fields, strict=False))
        return list(head)

    @headers.setter
    def headers(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        self._head = _packHead(headers)

    def computeSize(self) -> int:
        """
        The bytes this entry is counted for: what the objects it holds
        take in memory (as C{sys.getsizeof} sees them, rounded as the
        allocator rounds), and L{ENTRY_OVERHEAD} for its place in a store.
        Not its C{cacheControl}, which entries may share: the store counts
        each one it holds once.
        """
        size = ENTRY_OVERHEAD + _held(self) + 4 * _NUMBER
        size += _bytesHeld(self.key) + _bytesHeld(self.variant)
        size += _bytesHeld(self.body)
        if self.reason is not _REASONS.get(self.reason):
            size += _bytesHeld(self.reason)
        if not -5 <= self.status <= 256:
            # Larger ints are objects of their own.
            size += _NUMBER
        if self.varyOn:
            size += VARIANT_OVERHEAD + _held(self.varyOn)
            size += sum(_bytesHeld(name) for name in self.varyOn)
        head = self._head
        if isinstance(head, bytes):
            size += _bytesHeld(head)
        else:
            size += _held(head) + sum(
                _held(pair) + _bytesHeld(pair[0]) + _bytesHeld(pair[1]) for pair in head
            )
        return size
