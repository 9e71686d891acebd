"""
The built-in C{compress} filter: gzip, and brotli when the optional
C{brotli} package is installed, for the responses worth compressing,
negotiated from the client's C{Accept-Encoding}.

Configuration::

    [filters.compress]
    plugin = "compress"
    level = 4                    # gzip level, 1 (fast) to 9 (small)
    brotli_quality = 3           # brotli quality, 0 to 11
    min_size = "256B"            # smaller bodies (by Content-Length) are left alone
    types = ["text/*", "application/json", "image/svg+xml"]
    encodings = ["br", "gzip"]   # offered codings; the first wins a q-value tie

A response is compressed when all of these hold: its status is 200 or
another final status with a body (not 204, 206 or 304); it has no
C{Content-Encoding} and no C{Content-Range} yet, and its C{Cache-Control}
does not say C{no-transform}; its C{Content-Type} is one of C{types}
(C{+json} and C{+xml} structured types too); its C{Content-Length}, when
it has one, is at least C{min_size}; and the client accepts one of the
codings with a q-value above 0 (C{*} counts; C{identity;q=0} alone does
not make the proxy compress: it sends the body as it is).

A compressed response gets C{Content-Encoding}, loses C{Content-Length}
(it is sent chunked) and C{Accept-Ranges}, and its C{ETag} is made weak:
the bytes differ from the uncompressed representation's. Every response of
a compressible type gets C{Vary: Accept-Encoding}, compressed or not, so
that caches keep the variants apart. The body is compressed as it streams:
each piece is flushed, so the first bytes leave before the last arrive.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.plugin import IPlugin
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.filteroptions import FilterOptions
from twisted_rproxy.filters import FilterOptionError, RequestContext, ResponseHead
from twisted_rproxy.interfaces import IBodyTransform, IFilterFactory, IResponseFilter
from twisted_rproxy.rules.negotiation import parseAcceptEncoding

_brotli: Any
try:
    # The brotli package ships no type information.
    import brotli as _brotli  # type: ignore[import-untyped, no-redef]
except ImportError:  # pragma: no cover - depends on the optional extra
    _brotli = None

#: The content types compressed by default: text, and the structured text
#: formats of the web. Images, audio, video and archives are compressed
#: already.
DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/javascript",
    "application/x-javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/rss+xml",
    "application/atom+xml",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
)

#: The default gzip level and brotli quality, chosen by measurement
#: (benchmarks/compression.py; docs/compression.rst, "Choosing the level"):
#: the knee of CPU time against bytes saved on HTML, JSON and JavaScript.
DEFAULT_LEVEL = 4
DEFAULT_BROTLI_QUALITY = 3

_KNOWN_ENCODINGS = ("br", "gzip")
_NO_BODY = frozenset([204, 206, 304])


def brotliAvailable() -> bool:
    """
    Whether the optional C{brotli} package is installed.
    """
    return _brotli is not None


@frozen
class CompressionPolicy:
    """
    What the C{compress} filter compresses, and how hard.

    @ivar encodings: The offered codings, C{"br"} and/or C{"gzip"}, in
        preference order for q-value ties.
    @ivar types: Content types compressed: C{"type/subtype"} or
        C{"type/*"}, lowercased.
    @ivar minSize: Bodies known to be smaller than this are not compressed.
    @ivar level: The gzip level, 1 to 9.
    @ivar brotliQuality: The brotli quality, 0 to 11.
    """

    encodings: tuple[str, ...] = ("br", "gzip") if _brotli is not None else ("gzip",)
    types: tuple[str, ...] = DEFAULT_TYPES
    minSize: int = 256
    level: int = DEFAULT_LEVEL
    brotliQuality: int = DEFAULT_BROTLI_QUALITY


def typeMatches(contentType: bytes | None, types: Sequence[str]) -> bool:
    """
    Whether a C{Content-Type} value is one of C{types}.

    Parameters are ignored; C{"text/*"} matches any text type; structured
    syntax suffixes C{+json} and C{+xml} always match.
    """
    if not contentType:
        return False
    mediaType = contentType.split(b";", 1)[0].strip().lower().decode("latin-1")
    major, _, minor = mediaType.partition("/")
    if not minor:
        return False
    if minor.endswith("+json") or minor.endswith("+xml"):
        return True
    return mediaType in types or f"{major}/*" in types


def chooseCoding(acceptEncoding: bytes | None, encodings: Sequence[str]) -> str | None:
    """
    The coding to compress with, from a client's C{Accept-Encoding}.

    @param acceptEncoding: The header's value, or L{None} without one (no
        coding: RFC 9110 section 12.5.3 lets the server choose, and
        clients that decode say so).
    @param encodings: The offered codings in preference order.
    @return: The accepted coding with the highest q-value (the earlier in
        C{encodings} on a tie), or L{None}.
    """
    if acceptEncoding is None:
        return None
    accepted = parseAcceptEncoding(acceptEncoding)
    best = None
    bestQuality = 0.0
    for coding in encodings:
        quality = accepted.get(coding, accepted.get("*", 0.0))
        if quality > bestQuality:
            best, bestQuality = coding, quality
    return best


def _first(headers: Headers, name: bytes) -> bytes | None:
    values = headers.getRawHeaders(name)
    return values[0] if values else None


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    return [
        token.strip().lower()
        for value in headers.getRawHeaders(name, [])
        for token in value.split(b",")
    ]


def compressible(
    policy: CompressionPolicy, code: int, responseHeaders: Headers
) -> tuple[bool, bool]:
    """
    Whether a response is to be compressed for a client that accepts an
    offered coding.

    @return: Whether it is, and whether it varies with C{Accept-Encoding}
        (its type is compressible; a body smaller than C{minSize} is not
        compressed but varies).
    """
    if code < 200 or code in _NO_BODY:
        return False, False
    if responseHeaders.hasHeader(b"content-range"):
        return False, False
    encoding = _first(responseHeaders, b"content-encoding")
    if encoding is not None and encoding.strip().lower() != b"identity":
        return False, False
    if b"no-transform" in _tokens(responseHeaders, b"cache-control"):
        return False, False
    if not typeMatches(_first(responseHeaders, b"content-type"), policy.types):
        return False, False
    length = _first(responseHeaders, b"content-length")
    if length is not None and length.isdigit() and int(length) < policy.minSize:
        return False, True
    return True, True


def decide(
    policy: CompressionPolicy,
    code: int,
    requestHeaders: Headers,
    responseHeaders: Headers,
) -> tuple[str | None, bool]:
    """
    Whether and how to compress a response.

    @return: The coding to compress with (or L{None}), and whether the
        response varies with C{Accept-Encoding} (its type is compressible).
    """
    compress, varies = compressible(policy, code, responseHeaders)
    if not compress:
        return None, varies
    accept = requestHeaders.getRawHeaders(b"accept-encoding")
    coding = chooseCoding(b",".join(accept) if accept else None, policy.encodings)
    return coding, True


def weakTag(etag: bytes) -> bytes:
    """
    The C{ETag} of a compressed response, from its identity one's: weak,
    since its bytes differ (a weak tag is left as it is).
    """
    return b"W/" + etag if etag.startswith(b'"') else etag


@implementer(IBodyTransform)
class GzipTransform:
    """
    Compresses a body with gzip as it streams, flushing each piece.
    """

    def __init__(self, level: int) -> None:
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, 31)

    def transform(self, data: bytes) -> bytes:
        if not data:
            return b""
        compressor = self._compressor
        return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

    def flush(self) -> bytes:
        return self._compressor.flush(zlib.Z_FINISH)


@implementer(IBodyTransform)
class BrotliTransform:
    """
    Compresses a body with brotli as it streams, flushing each piece.
    """

    def __init__(self, quality: int) -> None:
        assert _brotli is not None
        self._compressor: Any = _brotli.Compressor(quality=quality)

    def transform(self, data: bytes) -> bytes:
        if not data:
            return b""
        compressor = self._compressor
        return bytes(compressor.process(data)) + bytes(compressor.flush())

    def flush(self) -> bytes:
        return bytes(self._compressor.finish())


def _addVary(headers: Headers) -> None:
    tokens = _tokens(headers, b"vary")
    if b"*" in tokens or b"accept-encoding" in tokens:
        return
    headers.addRawHeader(b"vary", b"Accept-Encoding")


@implementer(IResponseFilter)
class CompressFilter:
    """
    Compresses the responses its policy says to.

    On a route with a cache, it is also what compresses the variants the
    cache stores (a L{twisted_rproxy.cache.coding.VariantCoder}: see
    L{twisted_rproxy.tree}): a response is compressed as it enters the
    cache, and the filter leaves the coded variants the cache serves
    alone, as it leaves any response already coded.
    """

    def __init__(self, policy: CompressionPolicy) -> None:
        self.policy = policy

    def negotiate(self, acceptEncoding: bytes | None) -> bytes:
        """
        The coding a client gets for a compressible response: C{b"gzip"},
        C{b"br"} or C{b"identity"} (see L{chooseCoding}).
        """
        coding = chooseCoding(acceptEncoding, self.policy.encodings)
        return b"identity" if coding is None else coding.encode("ascii")

    def encodeVariant(
        self, code: int, headers: Headers, coding: bytes
    ) -> tuple[IBodyTransform | None, bool]:
        """
        Make a response's head that of its variant in C{coding} (one that
        L{negotiate} gave), if it is compressible: as for the client of
        L{filterResponse}, the coding being negotiated already.

        @return: The transform that compresses its body, or L{None}; and
            whether the response varies with C{Accept-Encoding}.
        """
        compress, varies = compressible(self.policy, code, headers)
        if varies:
            _addVary(headers)
        name = coding.decode("ascii")
        if not compress or name not in self.policy.encodings:
            return None, varies
        return self._encode(headers, name), True

    def codedValidator(self, etag: bytes) -> bytes:
        """
        The C{ETag} of a compressed variant (L{weakTag}).
        """
        return weakTag(etag)

    def filterResponse(
        self, request: IRequest, context: RequestContext, head: ResponseHead
    ) -> IBodyTransform | None:
        headers = head.headers
        if head.code == 304:
            self._notModified(request, headers)
            return None
        coding, varies = decide(self.policy, head.code, request.requestHeaders, headers)
        if varies:
            _addVary(headers)
        if coding is None:
            return None
        return self._encode(headers, coding)

    def _encode(self, headers: Headers, coding: str) -> IBodyTransform:
        """
        Make C{headers} those of a response compressed with C{coding}; the
        transform that compresses its body.
        """
        headers.setRawHeaders(b"content-encoding", [coding.encode("ascii")])
        headers.removeHeader(b"content-length")
        headers.removeHeader(b"accept-ranges")
        etag = _first(headers, b"etag")
        if etag is not None:
            headers.setRawHeaders(b"etag", [weakTag(etag)])
        if coding == "br":
            return BrotliTransform(self.policy.brotliQuality)
        return GzipTransform(self.policy.level)

    def _notModified(self, request: IRequest, headers: Headers) -> None:
        """
        A 304 carries the validators and Vary its 200 would have had (RFC
        9110 section 15.4.5): when the client takes a compressed variant,
        the ETag is weak and the response varies with Accept-Encoding. A
        304 seldom names its type; one that names an incompressible type is
        left alone.
        """
        contentType = _first(headers, b"content-type")
        if contentType is not None and not typeMatches(contentType, self.policy.types):
            return
        accept = request.requestHeaders.getRawHeaders(b"accept-encoding")
        acceptEncoding = b",".join(accept) if accept else None
        if chooseCoding(acceptEncoding, self.policy.encodings) is None:
            return
        _addVary(headers)
        etag = _first(headers, b"etag")
        if etag is not None:
            headers.setRawHeaders(b"etag", [weakTag(etag)])


def parsePolicy(options: Mapping[str, object]) -> CompressionPolicy:
    """
    The policy of a C{[filters.NAME]} table of the C{compress} plugin.

    @raise FilterOptionError: Naming the bad option.
    """
    read = FilterOptions(options)
    read.checkKeys(["level", "brotli_quality", "min_size", "types", "encodings"])
    level = read.integer("level", DEFAULT_LEVEL, 1, 9)
    quality = read.integer("brotli_quality", DEFAULT_BROTLI_QUALITY, 0, 11)
    minSize = read.size("min_size", 256)
    types: tuple[str, ...] = DEFAULT_TYPES
    if read.has("types"):
        written = read.stringList("types", ())
        for index, contentType in enumerate(written):
            if "/" not in contentType:
                raise read.error(
                    f"types[{index}]",
                    f'expected a content type such as "text/*", got {contentType!r}',
                )
        types = tuple(t.strip().lower() for t in written)
    encodings = CompressionPolicy().encodings
    if read.has("encodings"):
        offered = read.stringList("encodings", (), allowEmpty=False)
        for index, coding in enumerate(offered):
            if coding not in _KNOWN_ENCODINGS:
                raise read.error(
                    f"encodings[{index}]",
                    f"expected one of 'br', 'gzip', got {coding!r}",
                )
        if "br" in offered and _brotli is None:
            raise FilterOptionError(
                "encodings",
                "br needs the optional brotli package "
                "(pip install 'twisted_rproxy[brotli]')",
            )
        encodings = tuple(dict.fromkeys(offered))
    return CompressionPolicy(
        encodings=encodings,
        types=types,
        minSize=minSize,
        level=level,
        brotliQuality=quality,
    )


@implementer(IPlugin, IFilterFactory)
class CompressFactory:
    """
    The C{compress} filter plugin.
    """

    name = "compress"

    def buildFilter(self, options: Mapping[str, object]) -> CompressFilter:
        return CompressFilter(parsePolicy(options))


#: What getPlugins finds.
compress = CompressFactory()
