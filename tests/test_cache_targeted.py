"""
Tests for targeted cache control (RFC 9213: C{CDN-Cache-Control}), the
Structured Field parser it relies on (RFC 8941,
L{twisted_rproxy.rules.structured}), and the reading of C{Age} (RFC 9111
section 5.1): pure functions, the cache in a memory proxy, and the real
proxy on loopback.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer
from tests.loopback import ParsedResponse, Reply
from tests.memory import Proxy, backend, responsesOf
from twisted_rproxy.cache.policy import (
    FreshnessLimits,
    ageSeconds,
    correctedInitialAge,
    freshnessLifetime,
    isStorable,
    parseCacheControl,
)
from twisted_rproxy.config import (
    CacheConfig,
    Config,
    ConfigError,
    PoolConfig,
    RouteConfig,
    ServerConfig,
)
from twisted_rproxy.config.routes import _parseCache
from twisted_rproxy.rules.cachecontrol import (
    directivesFor,
    freshnessHeaders,
    parseTargeted,
)
from twisted_rproxy.rules.structured import (
    StructuredFieldError,
    Token,
    parseDictionary,
    parseItem,
    parseList,
    serializeNameItem,
    serializeString,
    serializeToken,
)
from twisted_rproxy.service import ProxyService

CDN = (b"cdn-cache-control",)
NONE = parseCacheControl(())
LIMITS = FreshnessLimits()


class StructuredFieldTests(SynchronousTestCase):
    """
    RFC 8941 parsing, strict as section 4.2 asks.
    """

    def test_dictionary(self) -> None:
        """
        Section 4.2.2: members with values, bare keys as Boolean true,
        parameters, inner lists; a repeated key keeps its last value.
        """
        parsed = parseDictionary(b'a=1, b, c="x y";p=?0, d=(t 2);q, a=2.5')
        self.assertEqual(
            parsed,
            {
                "a": (2.5, {}),
                "b": (True, {}),
                "c": ("x y", {"p": False}),
                "d": ([(Token("t"), {}), (2, {})], {"q": True}),
            },
        )
        self.assertIsInstance(parsed["d"][0][0][0], Token)  # type: ignore[index]

    def test_fieldLinesCombined(self) -> None:
        """
        Section 4.2: several field lines are one comma-separated value.
        """
        self.assertEqual(
            parseDictionary([b"max-age=60", b"no-store"]),
            {"max-age": (60, {}), "no-store": (True, {})},
        )

    def test_dictionaryErrors(self) -> None:
        """
        Section 4.2.2 and 4.2.3.3: uppercase keys, trailing commas, text
        after a member, non-ASCII bytes fail the whole field.
        """
        for bad in (
            b"Max-Age=60",
            b"max-age=60,",
            b"max-age=60 x",
            b"max-age=60;",
            b"a=\xff",
            b"a=(1",
            b'a="unterminated',
            b'a="bad\\q"',
            b"a=?2",
            b"=1",
            b"a=1,,b",
        ):
            with self.assertRaises(StructuredFieldError, msg=bad):
                parseDictionary(bad)

    def test_numbers(self) -> None:
        """
        Section 4.2.4: Integers up to 15 digits, Decimals up to 12 integer
        and 3 fractional digits.
        """
        self.assertEqual(parseItem(b"-999999999999999"), (-999999999999999, {}))
        self.assertEqual(parseItem(b"1.125"), (1.125, {}))
        for bad in (b"1234567890123456", b"1.", b"1.1234", b"1234567890123.1", b"-"):
            with self.assertRaises(StructuredFieldError, msg=bad):
                parseItem(bad)

    def test_otherItems(self) -> None:
        """
        Sections 4.2.5 to 4.2.8: Strings with escapes, Tokens, Byte
        Sequences (padding optional), Booleans.
        """
        self.assertEqual(parseItem(b'"a\\"b\\\\"'), ('a"b\\', {}))
        self.assertEqual(parseItem(b"*foo/bar:1"), (Token("*foo/bar:1"), {}))
        self.assertEqual(parseItem(b":aGk=:"), (b"hi", {}))
        self.assertEqual(parseItem(b":aGk:"), (b"hi", {}))
        self.assertEqual(parseItem(b"?1"), (True, {}))
        with self.assertRaises(StructuredFieldError):
            parseItem(b":a*b:")

    def test_list(self) -> None:
        """
        Section 4.2.1: members separated by commas and optional white
        space; an empty field is an empty list.
        """
        self.assertEqual(
            parseList(b'cache; hit, "CDN X";fwd=uri-miss'),
            [
                (Token("cache"), {"hit": True}),
                ("CDN X", {"fwd": Token("uri-miss")}),
            ],
        )
        self.assertEqual(parseList(b"  "), [])

    def test_serialize(self) -> None:
        """
        Section 4.1: a name is a Token when it can be, else a String;
        neither is refused.
        """
        self.assertEqual(serializeNameItem("main"), b"main")
        self.assertEqual(serializeNameItem("1st"), b'"1st"')
        self.assertEqual(serializeString('a"\\'), b'"a\\"\\\\"')
        with self.assertRaises(ValueError):
            serializeToken("1x")
        with self.assertRaises(ValueError):
            serializeNameItem("caf\u00e9")

    @given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)))
    def test_stringRoundTrip(self, text: str) -> None:
        """
        Any printable ASCII text serializes as a String that parses back.
        """
        self.assertEqual(parseItem(serializeString(text)), (text, {}))

    @given(st.binary(max_size=40))
    def test_parserNeverCrashes(self, data: bytes) -> None:
        """
        Any bytes parse or fail with L{StructuredFieldError}, nothing else.
        """
        for parse in (parseList, parseDictionary, parseItem):
            try:
                parse(data)
            except StructuredFieldError:
                pass


class TargetedDirectivesTests(SynchronousTestCase):
    """
    RFC 9213 sections 2.1 and 2.2: which field's directives a cache obeys.
    """

    def test_targetedWins(self) -> None:
        """
        Section 2.1: a valid targeted field is used, and C{Cache-Control}
        ignored.
        """
        cc = directivesFor(
            [(b"Cache-Control", b"no-store"), (b"CDN-Cache-Control", b"max-age=60")],
            CDN,
        )
        self.assertEqual(cc.directives, {b"max-age": b"60"})
        self.assertEqual(cc.field, b"cdn-cache-control")
        self.assertTrue(cc.targeted)

    def test_firstValidInListOrder(self) -> None:
        """
        Section 2.1: the first field of the target list (in its order, not
        the response's) with a valid, non-empty value.
        """
        targets = (b"example-cdn-cache-control", b"cdn-cache-control")
        headers = [
            (b"CDN-Cache-Control", b"max-age=10"),
            (b"Example-CDN-Cache-Control", b"max-age=20"),
        ]
        self.assertEqual(directivesFor(headers, targets).directives[b"max-age"], b"20")
        invalid = [
            (b"CDN-Cache-Control", b"max-age=10"),
            (b"Example-CDN-Cache-Control", b"Max-Age=20"),
        ]
        cc = directivesFor(invalid, targets)
        self.assertEqual((cc.field, cc.directives), (CDN[0], {b"max-age": b"10"}))

    def test_invalidFallsBack(self) -> None:
        """
        Section 2.2: a targeted field that does not parse as a Dictionary,
        or is empty, is ignored as if absent: C{Cache-Control} applies.
        """
        for value in (b"max-age=60,", b"MAX-AGE=60", b"", b"max-age=60; ="):
            cc = directivesFor(
                [(b"Cache-Control", b"max-age=5"), (b"CDN-Cache-Control", value)], CDN
            )
            self.assertEqual(cc.field, b"cache-control", value)
            self.assertEqual(cc.seconds(b"max-age"), 5)
            self.assertFalse(cc.targeted)

    def test_wrongTypesIgnored(self) -> None:
        """
        Section 2.2: a directive whose value is not of the type its
        definition implies is ignored (the rest of the field is used):
        C{max-age} must be a non-negative Integer, C{no-store} Boolean
        true, C{no-cache} and C{private} true or a String.
        """
        for value in (b'max-age="60"', b"max-age=6.0", b"max-age=-1", b"max-age"):
            cc = parseTargeted([value + b", public"])
            assert cc is not None
            self.assertEqual(cc.directives, {b"public": None}, value)
        cc = parseTargeted([b"no-store=?0, must-revalidate=?1, no-cache=foo, x=1"])
        assert cc is not None
        self.assertEqual(cc.directives, {b"must-revalidate": None, b"x": b"1"})
        cc = parseTargeted([b'private="set-cookie, x-user", max-age=60'])
        assert cc is not None
        self.assertEqual(cc.fieldNames(b"private"), {b"set-cookie", b"x-user"})
        self.assertEqual(cc.seconds(b"max-age"), 60)

    def test_noTargets(self) -> None:
        """
        An empty target list turns the feature off: C{Cache-Control} only.
        """
        cc = directivesFor(
            [(b"Cache-Control", b"max-age=5"), (b"CDN-Cache-Control", b"no-store")],
            (),
        )
        self.assertEqual(cc.directives, {b"max-age": b"5"})

    def test_expiresIgnored(self) -> None:
        """
        Section 2.1: with a targeted field in use, C{Expires} is ignored
        too: a response with no freshness in it is not made fresh by
        C{Expires}, nor storable for it.
        """
        headers = [
            (b"Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            (b"Expires", b"Mon, 01 Jan 2024 01:00:00 GMT"),
            (b"CDN-Cache-Control", b"must-revalidate"),
        ]
        cc = directivesFor(headers, CDN)
        used = freshnessHeaders(headers, cc)
        self.assertNotIn(b"Expires", [name for name, _ in used])
        self.assertEqual(freshnessLifetime(302, cc, used, LIMITS), 0.0)
        self.assertFalse(isStorable(b"GET", 302, NONE, cc, used, False))
        plain = directivesFor(headers[:2], CDN)
        self.assertEqual(
            freshnessLifetime(302, plain, freshnessHeaders(headers[:2], plain), LIMITS),
            3600.0,
        )

    def test_targetedPrivateAndNoStore(self) -> None:
        """
        Section 2.1: caches using a targeted field implement its
        C{no-store} and C{private}: not stored, whatever Cache-Control says.
        """
        for value in (b"no-store", b"private"):
            headers = [(b"Cache-Control", b"public, max-age=60")]
            headers.append((b"CDN-Cache-Control", value))
            cc = directivesFor(headers, CDN)
            self.assertFalse(isStorable(b"GET", 200, NONE, cc, headers, False))


class AgeTests(SynchronousTestCase):
    """
    RFC 9111 section 5.1: the C{Age} a backend sends.
    """

    def test_plainInteger(self) -> None:
        """
        A non-negative integer counts, at most 2**31 (section 1.2.2).
        """
        self.assertEqual(ageSeconds(b"30"), 30)
        self.assertEqual(ageSeconds(b" 7 "), 7)
        self.assertEqual(ageSeconds(b"9" * 30), 2**31)

    def test_invalidIgnored(self) -> None:
        """
        Anything else (a sign, a fraction, a word, nothing) is ignored: 0.
        """
        for value in (b"-1", b"1.5", b"abc", b"", b"+5", b"1e3", b"\xd9\xa3", None):
            self.assertEqual(ageSeconds(value), 0, value)

    def test_listFirstMember(self) -> None:
        """
        A list-based value: its first member is used, the rest discarded
        (then the first is checked as a lone value).
        """
        self.assertEqual(ageSeconds(b"10, 20"), 10)
        self.assertEqual(ageSeconds(b"10,10"), 10)
        self.assertEqual(ageSeconds(b"x, 20"), 0)

    def test_correctedInitialAge(self) -> None:
        """
        An invalid C{Age} adds nothing to the corrected initial age; the
        first line of several is the one read.
        """
        self.assertEqual(correctedInitialAge([(b"Age", b"-100")], 10, 12), 2)
        self.assertEqual(
            correctedInitialAge([(b"Age", b"5"), (b"Age", b"50")], 10, 12), 7
        )


def _get(target: bytes = b"/a") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: example.test\r\n\r\n"


def _answer(headers: bytes, body: bytes = b"body") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        + headers
        + b"Content-Length: %d\r\n\r\n" % (len(body),)
        + body
    )


class _Proxy(Proxy):
    def __init__(self, **options: Any) -> None:
        super().__init__(
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)},
            caches={"main": CacheConfig(name="main", statusHeader=True, **options)},
        )

    def fetch(self, data: bytes, answer: bytes) -> ParsedResponse:
        return _one(self.roundTrip(data, answer))

    def get(self, data: bytes) -> list[ParsedResponse]:
        transport: StringTransport = self.exchange(data)[1]
        return responsesOf(transport)


def _one(transport: StringTransport) -> ParsedResponse:
    responses = responsesOf(transport)
    if len(responses) != 1:
        raise AssertionError(f"not one response: {transport.value()!r}")
    return responses[0]


class CacheResourceTargetedTests(SynchronousTestCase):
    """
    The cache obeys its targeted fields, on a memory proxy.
    """

    def test_cdnMaxAgeOverridesNoStore(self) -> None:
        """
        C{CDN-Cache-Control: max-age=60} makes a response stored and fresh
        for 60 seconds although C{Cache-Control} says C{no-store}; both
        fields are passed on to the client (RFC 9213 section 3 lets a cache
        remove it; this one keeps it).
        """
        proxy = _Proxy()
        first = proxy.fetch(
            _get(),
            _answer(b"Cache-Control: no-store\r\nCDN-Cache-Control: max-age=60\r\n"),
        )
        self.assertEqual(first.header(b"x-cache"), [b"MISS"])
        proxy.reactor.advance(59)
        [second] = proxy.get(_get())
        self.assertEqual(second.header(b"x-cache"), [b"HIT"])
        self.assertEqual(second.header(b"cdn-cache-control"), [b"max-age=60"])
        self.assertEqual(second.header(b"cache-control"), [b"no-store"])
        proxy.reactor.advance(2)
        self.assertEqual(proxy.get(_get()), [])

    def test_cdnNoStoreOverridesMaxAge(self) -> None:
        """
        C{CDN-Cache-Control: no-store} keeps a response that Cache-Control
        allows out of the store.
        """
        proxy = _Proxy()
        proxy.fetch(
            _get(),
            _answer(b"Cache-Control: max-age=60\r\nCDN-Cache-Control: no-store\r\n"),
        )
        self.assertEqual(proxy.get(_get()), [])

    def test_invalidTargetedIgnored(self) -> None:
        """
        An invalid targeted field is as if absent: C{Cache-Control} rules.
        """
        proxy = _Proxy()
        proxy.fetch(
            _get(),
            _answer(b"Cache-Control: max-age=60\r\nCDN-Cache-Control: no-store,\r\n"),
        )
        [second] = proxy.get(_get())
        self.assertEqual(second.header(b"x-cache"), [b"HIT"])

    def test_configuredTargets(self) -> None:
        """
        C{targeted} names the fields, most specific first; an empty list
        turns targeted fields off.
        """
        proxy = _Proxy(targeted=("Acme-Cache-Control", "CDN-Cache-Control"))
        proxy.fetch(
            _get(),
            _answer(
                b"CDN-Cache-Control: no-store\r\nAcme-Cache-Control: max-age=60\r\n"
            ),
        )
        [second] = proxy.get(_get())
        self.assertEqual(second.header(b"x-cache"), [b"HIT"])
        off = _Proxy(targeted=())
        off.fetch(
            _get(),
            _answer(b"Cache-Control: max-age=60\r\nCDN-Cache-Control: no-store\r\n"),
        )
        [hit] = off.get(_get())
        self.assertEqual(hit.header(b"x-cache"), [b"HIT"])

    def test_targetedMustRevalidate(self) -> None:
        """
        A targeted C{must-revalidate} forbids serving stale, even to a
        client's C{max-stale}.
        """
        proxy = _Proxy()
        proxy.fetch(
            _get(),
            _answer(
                b"Cache-Control: max-age=1\r\nCDN-Cache-Control: max-age=1, "
                b'must-revalidate\r\nETag: "x"\r\n'
            ),
        )
        proxy.reactor.advance(5)
        responses = proxy.get(
            b"GET /a HTTP/1.1\r\nHost: example.test\r\nCache-Control: max-stale\r\n\r\n"
        )
        self.assertEqual(responses, [])

    def test_entryReadBack(self) -> None:
        """
        An entry read back from a store that keeps no parsed directives
        (Redis, disk: its C{cacheControl} parsed from C{Cache-Control}
        alone) is judged by its targeted field all the same.
        """
        proxy = _Proxy()
        proxy.fetch(
            _get(),
            _answer(b"Cache-Control: max-age=60\r\nCDN-Cache-Control: no-cache\r\n"),
        )
        store = proxy.service.router.routes[0].resource.store
        [key] = list(store.keys())
        [entry] = store.get(key)
        self.assertTrue(entry.cacheControl.targeted)
        entry.cacheControl = parseCacheControl([b"max-age=60"])
        self.assertEqual(proxy.get(_get()), [])
        self.assertTrue(entry.cacheControl.targeted)
        self.assertEqual(entry.cacheControl.directives, {b"no-cache": None})


class ConfigTests(SynchronousTestCase):
    """
    The C{targeted} key of C{[caches.NAME]}.
    """

    def test_default(self) -> None:
        """
        By default a cache obeys C{CDN-Cache-Control}.
        """
        self.assertEqual(
            _parseCache("c", {}, "f.toml").targeted, ("CDN-Cache-Control",)
        )
        self.assertEqual(CacheConfig(name="c").targeted, ("CDN-Cache-Control",))

    def test_listAndEmpty(self) -> None:
        """
        A list of field names, or none.
        """
        config = _parseCache("c", {"targeted": ["A-Cache-Control", "B"]}, "f.toml")
        self.assertEqual(config.targeted, ("A-Cache-Control", "B"))
        self.assertEqual(_parseCache("c", {"targeted": []}, "f.toml").targeted, ())

    def test_errors(self) -> None:
        """
        A bad entry is an error naming the file and the key.
        """
        for value, message in (
            ("CDN-Cache-Control", "expected a list of strings"),
            (["bad name"], "not a header field name"),
            (["Cache-Control"], "list targeted fields only"),
            (["X", "x"], "listed twice"),
            ([3], "expected a string"),
        ):
            with self.assertRaises(ConfigError) as raised:
                _parseCache("c", {"targeted": value}, "f.toml")
            text = str(raised.exception)
            self.assertIn("f.toml", text)
            self.assertIn("caches.c.targeted", text)
            self.assertIn(message, text)


class TargetedLoopbackTests(LoopbackTestCase):
    """
    The real proxy in front of a real backend obeys C{CDN-Cache-Control}.
    """

    @asyncTest
    async def test_cdnCacheControl(self) -> None:
        """
        A backend that tells browsers C{no-cache} and the CDN
        C{max-age=60} is fetched once for two client requests; one whose
        C{CDN-Cache-Control} is invalid is fetched each time
        (C{Cache-Control: no-store} then rules).
        """
        backendSite = await self.startBackend(
            lambda r: Reply(
                headers=[
                    (b"Cache-Control", b"no-store"),
                    (
                        b"CDN-Cache-Control",
                        b"max-age=60" if r.target == b"/ok" else b'max-age="60"x',
                    ),
                ],
                body=r.target,
            )
        )
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backendSite.portNumber),)
                )
            },
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            caches={"main": CacheConfig(name="main", statusHeader=True)},
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        port = (await service.whenListening())[0].getHost().port
        client = self.httpClient()
        seen = []
        for path in ("/ok", "/ok", "/bad", "/bad"):
            response = await client.get(f"http://127.0.0.1:{port}{path}")
            body = await response.content()
            self.assertEqual(body, path.encode())
            seen.append(response.headers.getRawHeaders(b"x-cache")[0])
        self.assertEqual(seen, [b"MISS", b"HIT", b"MISS", b"MISS"])
        self.assertEqual(
            [r.target for r in backendSite.requests], [b"/ok", b"/bad", b"/bad"]
        )


_NAMES = st.sampled_from(
    [
        b"Cache-Control",
        b"cache-control",
        b"CDN-Cache-Control",
        b"cdn-cache-CONTROL",
        b"Content-Type",
        b"X-Cache",
        b"Expires",
    ]
)
_VALUES = st.sampled_from(
    [b"max-age=60", b"no-store", b"private", b"s-maxage=5", b"", b"text/plain"]
)


class DirectivesOfTests(SynchronousTestCase):
    """
    The capture reads a response's directives where they are among its
    headers, remembering where they are for a layout of header names: the
    same directives as L{directivesFor} of every header.
    """

    @given(
        st.lists(st.tuples(_NAMES, _VALUES), max_size=6),
        st.lists(st.tuples(_NAMES, _VALUES), max_size=3),
        st.sampled_from([(), CDN, CDN + (b"x-cache",)]),
    )
    def test_sameAsEveryHeader(
        self,
        passed: list[tuple[bytes, bytes]],
        added: list[tuple[bytes, bytes]],
        targeted: tuple[bytes, ...],
    ) -> None:
        from twisted.web.http_headers import Headers

        from twisted_rproxy.cache.capture import _directivesOf, responsePairs

        headers = Headers()
        for name, value in added:
            headers.addRawHeader(name, value)

        class Response:
            passedHeaders = passed
            responseHeaders = headers

        expected = directivesFor(responsePairs(Response()), targeted)
        # Twice: the second time from the remembered places.
        for _ in range(2):
            self.assertEqual(_directivesOf(passed, headers, targeted), expected)
