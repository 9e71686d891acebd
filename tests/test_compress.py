"""
Tests for the built-in C{compress} filter (L{twisted_rproxy.plugins.compress}):
negotiation, the rules for what is compressed, the streaming transforms,
and the filter's changes to response heads.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any
from unittest import SkipTest

import brotli  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from twisted_rproxy.filters import FilterOptionError, ResponseHead
from twisted_rproxy.interfaces import IBodyTransform, IFilterFactory, IResponseFilter
from twisted_rproxy.plugins.compress import (
    DEFAULT_BROTLI_QUALITY,
    DEFAULT_LEVEL,
    BrotliTransform,
    CompressFilter,
    CompressionPolicy,
    GzipTransform,
    chooseCoding,
    compress,
    decide,
    parsePolicy,
    typeMatches,
)


def headers(**values: str) -> Headers:
    result = Headers()
    for name, value in values.items():
        result.addRawHeader(name.replace("_", "-").encode(), value.encode())
    return result


class NegotiationTests(SynchronousTestCase):
    """
    L{chooseCoding} picks a coding from C{Accept-Encoding} (RFC 9110
    section 12.5.3).
    """

    OFFERED = ("br", "gzip")

    def test_table(self) -> None:
        """
        Each Accept-Encoding case gives the expected coding.
        """
        cases = [
            (None, None),
            (b"", None),
            (b"gzip", "gzip"),
            (b"br", "br"),
            (b"gzip, deflate, br", "br"),
            (b"gzip;q=1.0, br;q=0.5", "gzip"),
            (b"br;q=0, gzip;q=0.1", "gzip"),
            (b"gzip;q=0, br;q=0", None),
            (b"*", "br"),
            (b"*;q=0", None),
            (b"*;q=0.5, br;q=0", "gzip"),
            (b"identity", None),
            (b"identity;q=0", None),
            (b"deflate", None),
            (b"GZIP", "gzip"),
            (b"x-gzip", "gzip"),
            (b"gzip;q=bogus, br", "br"),
            (b" gzip ; q=0.8 , br ; q=0.8 ", "br"),
        ]
        for header, expected in cases:
            self.assertEqual(chooseCoding(header, self.OFFERED), expected, header)

    def test_offerOrderBreaksTies(self) -> None:
        """
        On equal q-values, the coding offered first wins.
        """
        self.assertEqual(chooseCoding(b"br, gzip", ("gzip", "br")), "gzip")
        self.assertEqual(chooseCoding(b"br", ("gzip",)), None)


class DecideTests(SynchronousTestCase):
    """
    L{decide} compresses only what is worth it and allowed.
    """

    policy = CompressionPolicy(encodings=("br", "gzip"))
    accepts = headers(accept_encoding="gzip, br")

    def test_compressibleTextCompressed(self) -> None:
        """
        A large enough text response to a client that accepts br gets br,
        and varies with Accept-Encoding.
        """
        response = headers(
            content_type="text/html; charset=utf-8", content_length="5000"
        )
        self.assertEqual(decide(self.policy, 200, self.accepts, response), ("br", True))

    def test_notCompressed(self) -> None:
        """
        Bodiless statuses, ranges, encoded bodies, no-transform and
        incompressible types are left alone.
        """
        text = {"content_type": "text/plain"}
        cases = [
            (204, headers(**text)),
            (304, headers(**text)),
            (206, headers(content_range="bytes 0-9/100", **text)),
            (200, headers(content_range="bytes 0-9/100", **text)),
            (200, headers(content_encoding="gzip", **text)),
            (200, headers(cache_control="public, no-transform", **text)),
            (200, headers(content_type="image/png")),
            (200, headers(content_type="video/mp4")),
            (200, headers()),
            (101, headers(**text)),
        ]
        for code, response in cases:
            self.assertEqual(
                decide(self.policy, code, self.accepts, response),
                (None, False),
                (code, list(response.getAllRawHeaders())),
            )

    def test_smallBodyVariesButIsNotCompressed(self) -> None:
        """
        A compressible body under C{minSize} is not compressed, but still
        varies with Accept-Encoding.
        """
        response = headers(content_type="application/json", content_length="100")
        self.assertEqual(decide(self.policy, 200, self.accepts, response), (None, True))

    def test_unknownLengthCompressed(self) -> None:
        """
        A body of unknown length (chunked) is compressed.
        """
        response = headers(content_type="application/json")
        self.assertEqual(decide(self.policy, 200, self.accepts, response), ("br", True))

    def test_clientWithoutAcceptEncoding(self) -> None:
        """
        A client that says nothing gets the body as it is.
        """
        response = headers(content_type="text/css")
        self.assertEqual(decide(self.policy, 200, Headers(), response), (None, True))

    def test_types(self) -> None:
        """
        Types match exactly, by C{type/*}, or by a C{+json}/C{+xml} suffix;
        parameters and case are ignored.
        """
        types = ("text/*", "application/json")
        self.assertTrue(typeMatches(b"TEXT/HTML; charset=utf-8", types))
        self.assertTrue(typeMatches(b"application/json", types))
        self.assertTrue(typeMatches(b"application/problem+json", types))
        self.assertTrue(typeMatches(b"application/vnd.api+xml", types))
        self.assertFalse(typeMatches(b"application/octet-stream", types))
        self.assertFalse(typeMatches(b"json", types))
        self.assertFalse(typeMatches(None, types))


class TransformTests(SynchronousTestCase):
    """
    The transforms compress as the body streams.
    """

    @given(st.lists(st.binary(max_size=3000), max_size=8))
    def test_gzipRoundTrip(self, pieces: list[bytes]) -> None:
        """
        The gzip output of any piecewise body decompresses to the body.
        """
        transform = GzipTransform(6)
        out = b"".join(transform.transform(p) for p in pieces) + transform.flush()
        self.assertEqual(gzip.decompress(out), b"".join(pieces))

    @given(st.lists(st.binary(max_size=3000), max_size=8))
    def test_brotliRoundTrip(self, pieces: list[bytes]) -> None:
        """
        The brotli output of any piecewise body decompresses to the body.
        """
        transform = BrotliTransform(4)
        out = b"".join(transform.transform(p) for p in pieces) + transform.flush()
        self.assertEqual(brotli.decompress(out), b"".join(pieces))

    def test_eachPieceLeavesAtOnce(self) -> None:
        """
        Each piece is flushed: what has been sent so far decompresses to
        everything given so far (server-sent events and slow pages are not
        held back).
        """
        transform = GzipTransform(6)
        decompressor = zlib.decompressobj(31)
        first = transform.transform(b"event: one\n\n")
        self.assertEqual(decompressor.decompress(first), b"event: one\n\n")
        second = transform.transform(b"event: two\n\n")
        self.assertEqual(decompressor.decompress(second), b"event: two\n\n")

    def test_providesIBodyTransform(self) -> None:
        """
        Both transforms are L{IBodyTransform}s.
        """
        self.assertTrue(verifyObject(IBodyTransform, GzipTransform(1)))
        self.assertTrue(verifyObject(IBodyTransform, BrotliTransform(1)))


class FilterTests(SynchronousTestCase):
    """
    L{CompressFilter} rewrites the head of what it compresses.
    """

    class Request:
        def __init__(self, acceptEncoding: str | None) -> None:
            self.requestHeaders = Headers()
            if acceptEncoding is not None:
                self.requestHeaders.addRawHeader(
                    b"accept-encoding", acceptEncoding.encode()
                )

    def respond(
        self, acceptEncoding: str | None, **response: str
    ) -> tuple[object, Headers]:
        head = ResponseHead(200, b"OK", headers(**response))
        compressFilter = CompressFilter(CompressionPolicy(encodings=("gzip",)))
        result = compressFilter.filterResponse(
            self.Request(acceptEncoding),  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            head,
        )
        return result, head.headers

    def test_compressedHead(self) -> None:
        """
        A compressed response gets Content-Encoding and Vary, loses
        Content-Length and Accept-Ranges, and its ETag is made weak.
        """
        transform, result = self.respond(
            "gzip",
            content_type="text/html",
            content_length="9000",
            accept_ranges="bytes",
            etag='"abc"',
            vary="Origin",
        )
        self.assertIsInstance(transform, GzipTransform)
        self.assertEqual(result.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(result.getRawHeaders(b"vary"), [b"Origin", b"Accept-Encoding"])
        self.assertEqual(result.getRawHeaders(b"etag"), [b'W/"abc"'])
        self.assertFalse(result.hasHeader(b"content-length"))
        self.assertFalse(result.hasHeader(b"accept-ranges"))

    def test_uncompressedVariantVaries(self) -> None:
        """
        The uncompressed variant of a compressible type says Vary too, and
        keeps its length and strong ETag.
        """
        transform, result = self.respond(
            None, content_type="text/html", content_length="9000", etag='"abc"'
        )
        self.assertIsNone(transform)
        self.assertEqual(result.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        self.assertEqual(result.getRawHeaders(b"content-length"), [b"9000"])
        self.assertEqual(result.getRawHeaders(b"etag"), [b'"abc"'])

    def test_notModifiedMatchesCompressedVariant(self) -> None:
        """
        A 304 for a client that takes gzip carries the weak ETag and the
        Vary of the compressed 200 it validates; for one that takes no
        coding, it is left alone.
        """
        compressFilter = CompressFilter(CompressionPolicy(encodings=("gzip",)))
        head = ResponseHead(304, b"Not Modified", headers(etag='"v1"'))
        result = compressFilter.filterResponse(
            self.Request("gzip"),
            None,
            head,  # type: ignore[arg-type]
        )
        self.assertIsNone(result)
        self.assertEqual(head.headers.getRawHeaders(b"etag"), [b'W/"v1"'])
        self.assertEqual(head.headers.getRawHeaders(b"vary"), [b"Accept-Encoding"])
        plain = ResponseHead(304, b"Not Modified", headers(etag='"v1"'))
        compressFilter.filterResponse(
            self.Request(None),
            None,
            plain,  # type: ignore[arg-type]
        )
        self.assertEqual(plain.headers.getRawHeaders(b"etag"), [b'"v1"'])
        self.assertFalse(plain.headers.hasHeader(b"vary"))

    def test_varyNotDuplicated(self) -> None:
        """
        An existing Vary that covers Accept-Encoding (or is *) is kept.
        """
        _, result = self.respond(
            "gzip", content_type="text/html", vary="accept-encoding"
        )
        self.assertEqual(result.getRawHeaders(b"vary"), [b"accept-encoding"])
        _, result = self.respond("gzip", content_type="text/html", vary="*")
        self.assertEqual(result.getRawHeaders(b"vary"), [b"*"])


class OptionsTests(SynchronousTestCase):
    """
    The plugin validates its options.
    """

    def test_plugin(self) -> None:
        """
        The module's C{compress} object is the C{compress} filter factory.
        """
        self.assertTrue(verifyObject(IFilterFactory, compress))
        self.assertEqual(compress.name, "compress")
        self.assertTrue(verifyObject(IResponseFilter, compress.buildFilter({})))

    def test_options(self) -> None:
        """
        Good options make the policy.
        """
        policy = parsePolicy(
            {
                "level": 9,
                "brotli_quality": 11,
                "min_size": "1KiB",
                "types": ["text/html", "Application/JSON"],
                "encodings": ["gzip", "br"],
            }
        )
        self.assertEqual(
            policy,
            CompressionPolicy(
                encodings=("gzip", "br"),
                types=("text/html", "application/json"),
                minSize=1024,
                level=9,
                brotliQuality=11,
            ),
        )

    def test_badOptions(self) -> None:
        """
        Each bad option is named in the error.
        """
        cases = [
            ({"level": 0}, "level"),
            ({"level": "6"}, "level"),
            ({"level": True}, "level"),
            ({"brotli_quality": 12}, "brotli_quality"),
            ({"min_size": "lots"}, "min_size"),
            ({"min_size": [1]}, "min_size"),
            ({"types": "text/html"}, "types"),
            ({"types": ["html"]}, "types[0]"),
            ({"encodings": ["gzip", "deflate"]}, "encodings[1]"),
            ({"encodings": []}, "encodings"),
            ({"lvl": 5}, "lvl"),
        ]
        for options, option in cases:
            error = self.assertRaises(FilterOptionError, parsePolicy, options)
            self.assertEqual(error.option, option, options)


_CHECKOUT = Path(__file__).resolve().parent.parent


def _loadBenchmark() -> Any:
    """
    benchmarks/compression.py of this checkout, as a module, with the
    names of its helper modules (the corpus, the knee) as attributes.
    """
    path = _CHECKOUT / "benchmarks" / "compression.py"
    if not path.exists():
        raise SkipTest("no benchmarks/ beside the tests")
    name = "_rproxy_bench_compression"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up while the module runs.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    # It put the folder on sys.path and imported these.
    for helper in ("compressioncorpus", "compressionknee"):
        for attribute, value in vars(sys.modules[helper]).items():
            if not attribute.startswith("__"):
                setattr(module, attribute, getattr(module, attribute, value))
    return module


class DefaultLevelTests(SynchronousTestCase):
    """
    The default levels are those docs/compression.rst gives, and were
    chosen by benchmarks/compression.py.
    """

    def _docs(self) -> str:
        path = _CHECKOUT / "docs" / "compression.rst"
        if not path.exists():
            raise SkipTest("no docs/ beside the tests")
        return path.read_text(encoding="utf-8")

    def test_policyAndOptionsAgree(self) -> None:
        """
        The policy's defaults are the module's constants, and an empty
        C{[filters.NAME]} table gets them.
        """
        policy = CompressionPolicy()
        self.assertEqual(
            (policy.level, policy.brotliQuality),
            (DEFAULT_LEVEL, DEFAULT_BROTLI_QUALITY),
        )
        parsed = parsePolicy({})
        self.assertEqual(
            (parsed.level, parsed.brotliQuality),
            (DEFAULT_LEVEL, DEFAULT_BROTLI_QUALITY),
        )

    def test_optionsTable(self) -> None:
        """
        The options table of the documentation gives the defaults.
        """
        documented = {}
        for line in self._docs().splitlines():
            match = re.match(r"``(level|brotli_quality)``\s+``(\d+)``", line)
            if match:
                documented[match.group(1)] = int(match.group(2))
        self.assertEqual(
            documented,
            {"level": DEFAULT_LEVEL, "brotli_quality": DEFAULT_BROTLI_QUALITY},
        )

    def test_choosingTheLevel(self) -> None:
        """
        The "Choosing the level" section names the defaults and the command
        that measures them, and the module's example configuration shows
        them.
        """
        docs = self._docs()
        self.assertIn("\nChoosing the level\n------------------\n", docs)
        section = docs.split("\nChoosing the level\n", 1)[1]
        self.assertIn(
            f"``level = {DEFAULT_LEVEL}`` and "
            f"``brotli_quality = {DEFAULT_BROTLI_QUALITY}``",
            section,
        )
        self.assertIn("python benchmarks/compression.py", section)
        doc = sys.modules[GzipTransform.__module__].__doc__ or ""
        self.assertIn(f"level = {DEFAULT_LEVEL} ", doc)
        self.assertIn(f"brotli_quality = {DEFAULT_BROTLI_QUALITY} ", doc)


class BenchmarkCorpusTests(SynchronousTestCase):
    """
    benchmarks/compression.py measures the same bodies on every run, and
    chooses its knee as documented.
    """

    SIZES = (2048, 16384)

    def test_deterministic(self) -> None:
        """
        Two builds of the corpus give the same bodies, within a process and
        in another process with another hash seed.
        """
        bench = _loadBenchmark()
        first, notes = bench.buildCorpus(sizes=self.SIZES)
        second, _ = bench.buildCorpus(sizes=self.SIZES)
        self.assertEqual(first, second)
        self.assertTrue(first)
        script = (
            "import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('b', sys.argv[1])\n"
            "m = sys.modules['b'] = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(m)\n"
            "bodies, _ = m.buildCorpus(sizes=(2048, 16384))\n"
            "print(' '.join(f'{b.kind}:{b.size}:{b.digest}' for b in bodies))\n"
        )
        env = dict(os.environ, PYTHONHASHSEED="12345")
        output = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(_CHECKOUT / "benchmarks" / "compression.py"),
            ],
            capture_output=True,
            env=env,
            check=True,
            timeout=120,
            text=True,
        ).stdout.split()
        self.assertEqual(
            output, [f"{b.kind}:{b.size}:{b.digest}" for b in first], notes
        )

    def test_bodies(self) -> None:
        """
        Each body is of its kind and at most its size: HTML pages of exactly
        the size, JSON that parses, JavaScript when some is installed.
        """
        bench = _loadBenchmark()
        bodies, notes = bench.buildCorpus(sizes=self.SIZES)
        kinds = {(b.kind, b.size): b.data for b in bodies}
        for size in self.SIZES:
            html = kinds["html", size]
            self.assertEqual(len(html), size)
            self.assertTrue(html.startswith(b"<!DOCTYPE html>"))
            data = kinds["json", size]
            self.assertLessEqual(len(data), size)
            self.assertGreater(len(data), size // 2)
            document = json.loads(data)
            self.assertEqual(document["count"], len(document["results"]))
            if ("js", size) in kinds:
                self.assertEqual(len(kinds["js", size]), size)
            else:
                self.assertTrue(any(note.startswith("js:") for note in notes))

    def test_measuresTheFilterTransforms(self) -> None:
        """
        A measurement's output is what the filter sends for the body in
        those pieces, and decodes to the body.
        """
        bench = _loadBenchmark()
        body = bench.jsonBody(16384)
        [row] = [
            r
            for r in bench.measure(
                [bench.Body("json", 16384, body)], [("gzip", [4])], 4096, 1, 0.0, 0.0
            )
            if r.pieces == "4KiB"
        ]
        transform = GzipTransform(4)
        pieces = [body[i : i + 4096] for i in range(0, len(body), 4096)]
        sent = b"".join(transform.transform(p) for p in pieces) + transform.flush()
        self.assertEqual(row.bytesOut, len(sent))
        self.assertEqual(gzip.decompress(sent), body)
        self.assertGreater(row.cpuUs, 0)

    def test_knee(self) -> None:
        """
        The knee is the level with the least CPU plus transfer time; within
        the tolerance of it, the cheapest in CPU.
        """
        bench = _loadBenchmark()

        def level(n: int, cpu: float, out: int) -> Any:
            return bench.Level("gzip", n, "whole", cpu, 10_000, out)

        levels = [level(1, 100, 3000), level(2, 200, 2500), level(3, 1000, 2400)]
        bench.markHull(levels)
        # At 1 byte per µs: 3100, 2700, 3400.
        self.assertEqual(bench.knee(levels, 1.0, 0.0).level, 2)
        # At 100 bytes per µs the CPU dominates.
        self.assertEqual(bench.knee(levels, 100.0, 0.0).level, 1)
        # Level 1 is within 15 % of level 2's 2700 and cheaper.
        self.assertEqual(bench.knee(levels, 1.0, 0.15).level, 1)
        self.assertEqual([lv.onHull for lv in levels], [True, True, True])
        self.assertEqual(levels[1].marginal, 5.0)
