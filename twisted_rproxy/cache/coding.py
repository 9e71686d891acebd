"""
Compressed variants stored by a cache: with a L{VariantCoder} (the
C{compress} filter of the route, see L{twisted_rproxy.tree}), a response
is compressed once, as it enters the cache (L{Encoding}, installed under
the cache's capture so that the capture sees the coded bytes), and stored
as its coded variant; a hit for a client that accepts that coding is
served from the stored bytes, compressing nothing.

The stored variant is selected by the coding negotiated from the request
(L{requestCoding}: C{gzip}, C{br} or C{identity}), not by the
C{Accept-Encoding} header as written (L{twisted_rproxy.cache.keys.CODING}):
a URL has at most one variant per offered coding, plus the identity one,
however many spellings of the header its clients send. A client that
accepts no coding, or asks for a range, gets the identity variant, fetched
and stored by itself: it keeps its exact length, its strong C{ETag} and its
ranges, and no hit decodes anything.

The coded variant's C{ETag} is made weak (its bytes are not the identity
variant's); revalidating it asks the backend with both that tag and the
strong one it came from (L{revalidators}), and the backend's 304 is given
the coded variant's validator (so that it selects, and updates, the stored
variant).
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.cache.keys import CODING, Pairs
from twisted_rproxy.cache.policy import validators
from twisted_rproxy.intercept import ResponseInterceptor, foldPassedHeaders
from twisted_rproxy.interfaces import IBodyTransform
from twisted_rproxy.messages import CacheEntry

__all__ = ["IDENTITY", "Encoding", "VariantCoder", "requestCoding", "revalidators"]

_log = Logger()

#: The coding of the identity variant.
IDENTITY = b"identity"


class VariantCoder(Protocol):
    """
    What a cache needs of what compresses the variants it stores (the
    C{compress} filter, L{twisted_rproxy.plugins.compress.CompressFilter}).
    """

    def negotiate(self, acceptEncoding: bytes | None) -> bytes:
        """
        The coding a client gets for a compressible response.

        @param acceptEncoding: Its C{Accept-Encoding} (values joined), or
            L{None} without one.
        @return: An offered coding (C{b"gzip"}, C{b"br"}), or L{IDENTITY}.
        """

    def encodeVariant(
        self, code: int, headers: Any, coding: bytes
    ) -> tuple[IBodyTransform | None, bool]:
        """
        Make a response's head (twisted.web C{Headers}) that of its variant
        in C{coding}, if it is to be compressed.

        @return: The transform that compresses its body (L{None}: it is
            not compressed), and whether the response varies with the
            coding (its type is compressible).
        """

    def codedValidator(self, etag: bytes) -> bytes:
        """
        The C{ETag} of a coded variant, from the identity one's.
        """


class CodedCapture(Protocol):
    """
    What an L{Encoding} reads of, and tells, the capture of its response
    (L{twisted_rproxy.cache.capture._Capture}).

    @ivar coding: Set to the negotiated coding when the response varies
        with it (it is then stored by coding).
    """

    coding: bytes | None
    stale: CacheEntry | None
    revalidating: bool


def _first(values: list[bytes] | None) -> bytes | None:
    return b",".join(values) if values else None


def requestCoding(coder: VariantCoder, pairs: Pairs) -> bytes:
    """
    The coding of the variant a request selects (a
    L{twisted_rproxy.cache.keys.Negotiate}): a request for a range gets
    the identity variant (no coded response is served in ranges).

    @param pairs: The request's header fields, names lowercased.
    """
    accepted = []
    for name, value in pairs:
        if name == b"range":
            return IDENTITY
        if name == b"accept-encoding":
            accepted.append(value)
    return coder.negotiate(_first(accepted))


def isCoded(entry: CacheEntry) -> bool:
    """
    Whether a stored response is a coded variant stored by coding.
    """
    if CODING not in entry.varyOn:
        return False
    return any(name.lower() == b"content-encoding" for name, _ in entry.headers)


def revalidators(entry: CacheEntry) -> Pairs:
    """
    The conditional headers that revalidate a stored response (see
    L{validators}); for a coded variant, whose weak tag the backend never
    sent, C{If-None-Match} names the strong tag too (the backend compares
    weakly, RFC 9110 section 13.1.2, and may know only that one).
    """
    pairs = validators(entry.headers)
    if not isCoded(entry):
        return pairs
    out = []
    for name, value in pairs:
        if name == b"If-None-Match" and value.startswith(b'W/"'):
            value = value[2:] + b", " + value
        out.append((name, value))
    return out


class Encoding(ResponseInterceptor):
    """
    Compresses a response the cache fetches into the variant it stores,
    before its capture sees it; then steps aside for responses it leaves
    alone.
    """

    __slots__ = ("coder", "capture", "coding", "transform", "failed")

    def __init__(
        self, request: Any, coder: VariantCoder, capture: CodedCapture, coding: bytes
    ) -> None:
        """
        @param request: The request the cache sends to its child, after
            its capture is installed.
        @param coder: What compresses.
        @param capture: The capture of the response.
        @param coding: The coding negotiated for the client's request (see
            L{requestCoding}; a revalidation's request lacks its C{Range}).
        """
        self.coder = coder
        self.capture = capture
        self.coding = coding
        self.transform: IBodyTransform | None = None
        self.failed = False
        ResponseInterceptor.__init__(self, request)

    def head(self) -> None:
        request = self.request
        capture = self.capture
        code = request.code
        if code == 304:
            stale = capture.stale
            if stale is not None and capture.revalidating and isCoded(stale):
                # The 304 validates the coded variant: it carries its tag.
                foldPassedHeaders(request)
                headers = request.responseHeaders
                etag = headers.getRawHeaders(b"etag")
                if etag:
                    headers.setRawHeaders(b"etag", [self.coder.codedValidator(etag[0])])
            self.detach()
            return
        # The compressor changes the head: every header must be seen.
        foldPassedHeaders(request)
        coding = self.coding
        transform, varies = self.coder.encodeVariant(
            code, request.responseHeaders, coding
        )
        if varies:
            capture.coding = coding
        if transform is None:
            self.detach()
            return
        self.transform = transform

    def body(self, data: bytes) -> None:
        if self.failed:
            return
        transform = self.transform
        if transform is not None and data:
            try:
                data = transform.transform(data)
            except Exception:
                self._failed()
                return
            if not data and self.request.startedWriting:
                return
        self.downWrite(data)

    def end(self) -> None:
        if self.failed:
            # Never finished as if whole: nothing of it is stored.
            return
        transform, self.transform = self.transform, None
        # Whatever answers next (a stored response, after an error that a
        # stale one replaces) is not compressed again.
        self.detach()
        if transform is not None:
            try:
                rest = transform.flush()
            except Exception:
                self._failed()
                return
            if rest:
                self.downWrite(rest)
        self.downFinish()

    def _failed(self) -> None:
        """
        The compressor failed mid-body: the response can't be completed;
        cut it (its capture stores nothing of a response never finished).
        """
        _log.failure("Cache: compressing a response failed: cut", Failure())
        self.failed = True
        self.transform = None
        request = self.request
        channel = getattr(request, "channel", None)
        transport = getattr(channel, "transport", None)
        target = transport if transport is not None else channel
        abort = getattr(target, "abortConnection", None)
        if abort is not None:
            abort()
        elif target is not None:
            target.loseConnection()
