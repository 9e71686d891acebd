"""
Tests for the header rules of L{twisted_rproxy.proxy}: pure functions of
data.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.proxy import (
    ForwardingPolicy,
    connectionTokens,
    downstreamHeaders,
    upstreamHeaders,
)

CLIENT = [
    (b"Host", [b"example.com"]),
    (b"User-Agent", [b"curl"]),
    (b"Accept", [b"*/*"]),
]


def names(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [name.lower() for name, _ in headers]


def value(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    found = [v for n, v in headers if n.lower() == name]
    return b"|".join(found) if found else None


class UpstreamHeadersTests(SynchronousTestCase):
    """
    L{upstreamHeaders} rewrites a client's headers for a backend.
    """

    def test_endToEndHeadersKept(self) -> None:
        """
        End-to-end headers pass unchanged, in order, with Host first.
        """
        out = upstreamHeaders(
            CLIENT,
            ForwardingPolicy(via=None, forwardedHeaders=False),
            "192.0.2.1",
            False,
            b"example.com",
        )
        self.assertEqual(
            out,
            [(b"Host", b"example.com"), (b"User-Agent", b"curl"), (b"Accept", b"*/*")],
        )

    def test_hopByHopRemoved(self) -> None:
        """
        The hop-by-hop headers of RFC 9110 section 7.6.1, those named in
        Connection, Expect and the client's framing headers are removed.
        """
        headers = CLIENT + [
            (b"Connection", [b"keep-alive, X-Private", b"x-other"]),
            (b"Keep-Alive", [b"timeout=5"]),
            (b"Proxy-Connection", [b"keep-alive"]),
            (b"TE", [b"trailers"]),
            (b"Trailer", [b"X-T"]),
            (b"Transfer-Encoding", [b"chunked"]),
            (b"Upgrade", [b"websocket"]),
            (b"X-Private", [b"secret"]),
            (b"X-Other", [b"secret"]),
            (b"Expect", [b"100-continue"]),
            (b"Content-Length", [b"10"]),
            (b"Content-Type", [b"text/plain"]),
        ]
        out = upstreamHeaders(
            headers,
            ForwardingPolicy(via=None, forwardedHeaders=False),
            "192.0.2.1",
            False,
            b"example.com",
        )
        self.assertEqual(
            names(out), [b"host", b"user-agent", b"accept", b"content-type"]
        )

    def test_forwardedHeadersAdded(self) -> None:
        """
        X-Forwarded-For, -Proto and -Host describe the client's request.
        """
        out = upstreamHeaders(
            CLIENT, ForwardingPolicy(), "192.0.2.1", True, b"example.com"
        )
        self.assertEqual(value(out, b"x-forwarded-for"), b"192.0.2.1")
        self.assertEqual(value(out, b"x-forwarded-proto"), b"https")
        self.assertEqual(value(out, b"x-forwarded-host"), b"example.com")

    def test_untrustedForwardedHeadersReplaced(self) -> None:
        """
        X-Forwarded-* from a client that is not a trusted proxy are
        replaced: a client can't spoof its address.
        """
        headers = CLIENT + [
            (b"X-Forwarded-For", [b"10.9.9.9"]),
            (b"X-Forwarded-Proto", [b"https"]),
            (b"X-Forwarded-Host", [b"evil.example"]),
        ]
        out = upstreamHeaders(
            headers, ForwardingPolicy(), "192.0.2.1", False, b"example.com"
        )
        self.assertEqual(value(out, b"x-forwarded-for"), b"192.0.2.1")
        self.assertEqual(value(out, b"x-forwarded-proto"), b"http")
        self.assertEqual(value(out, b"x-forwarded-host"), b"example.com")

    def test_trustedProxyExtended(self) -> None:
        """
        From a trusted proxy, X-Forwarded-For is extended with its address
        and its -Proto and -Host are believed.
        """
        headers = CLIENT + [
            (b"X-Forwarded-For", [b"203.0.113.7, 10.0.0.2"]),
            (b"X-Forwarded-Proto", [b"https"]),
            (b"X-Forwarded-Host", [b"public.example"]),
        ]
        policy = ForwardingPolicy(trustedProxies=("10.0.0.0/8",))
        out = upstreamHeaders(headers, policy, "10.1.2.3", False, b"internal")
        self.assertEqual(
            value(out, b"x-forwarded-for"), b"203.0.113.7, 10.0.0.2, 10.1.2.3"
        )
        self.assertEqual(value(out, b"x-forwarded-proto"), b"https")
        self.assertEqual(value(out, b"x-forwarded-host"), b"public.example")

    def test_trustedIPv6(self) -> None:
        """
        Trusted networks may be IPv6.
        """
        policy = ForwardingPolicy(trustedProxies=("2001:db8::/32",))
        self.assertTrue(policy.trusts("2001:db8::1"))
        self.assertFalse(policy.trusts("2001:db9::1"))
        self.assertFalse(policy.trusts("not an address"))

    def test_clientIPHeadersFromUntrustedRemoved(self) -> None:
        """
        From a client that is not a trusted proxy, every header naming the
        client (X-Real-IP, True-Client-IP and the rest of the default list,
        in any case) is removed; other headers stay.
        """
        spoofed = [
            (b"X-Real-IP", [b"10.0.0.1"]),
            (b"True-Client-IP", [b"10.0.0.2"]),
            (b"x-client-ip", [b"10.0.0.3"]),
            (b"CF-Connecting-IP", [b"10.0.0.4"]),
            (b"Fastly-Client-IP", [b"10.0.0.5"]),
            (b"X-Cluster-Client-IP", [b"10.0.0.6"]),
        ]
        for policy in (
            ForwardingPolicy(),
            ForwardingPolicy(forwardedHeaders=False),
            ForwardingPolicy(trustedProxies=("10.0.0.0/8",)),
        ):
            out = upstreamHeaders(
                CLIENT + spoofed, policy, "192.0.2.1", False, b"example.com"
            )
            self.assertEqual([n for n in names(out) if b"ip" in n], [], (policy, out))
            self.assertEqual(value(out, b"user-agent"), b"curl")

    def test_clientIPHeadersFromTrustedKept(self) -> None:
        """
        From a trusted proxy, the headers naming the client pass as they
        are.
        """
        headers = CLIENT + [
            (b"X-Real-IP", [b"203.0.113.7"]),
            (b"True-Client-IP", [b"203.0.113.8"]),
        ]
        for forwarded in (True, False):
            policy = ForwardingPolicy(
                trustedProxies=("10.0.0.0/8",), forwardedHeaders=forwarded
            )
            out = upstreamHeaders(headers, policy, "10.1.2.3", False, b"internal")
            self.assertEqual(value(out, b"x-real-ip"), b"203.0.113.7")
            self.assertEqual(value(out, b"true-client-ip"), b"203.0.113.8")

    def test_clientIPHeadersConfigurable(self) -> None:
        """
        The list of client-IP headers is the policy's: a header left out of
        it passes, one added to it is removed.
        """
        headers = CLIENT + [
            (b"X-Real-IP", [b"10.0.0.1"]),
            (b"X-Origin-IP", [b"10.0.0.2"]),
        ]
        policy = ForwardingPolicy(clientIPHeaders=frozenset([b"x-origin-ip"]))
        out = upstreamHeaders(headers, policy, "192.0.2.1", False, b"example.com")
        self.assertEqual(value(out, b"x-real-ip"), b"10.0.0.1")
        self.assertIsNone(value(out, b"x-origin-ip"))

    def test_untrustedForwardedRemoved(self) -> None:
        """
        RFC 7239 C{Forwarded} from an untrusted client is removed (not
        extended), as C{X-Forwarded-For} is replaced.
        """
        headers = CLIENT + [(b"Forwarded", [b"for=10.0.0.1"])]
        out = upstreamHeaders(
            headers, ForwardingPolicy(), "192.0.2.1", False, b"example.com"
        )
        self.assertIsNone(value(out, b"forwarded"))

    def test_viaAppended(self) -> None:
        """
        This proxy adds itself to Via, after what came before.
        """
        headers = CLIENT + [(b"Via", [b"1.0 upstream"])]
        out = upstreamHeaders(
            headers, ForwardingPolicy(), "192.0.2.1", False, b"example.com", b"1.1"
        )
        self.assertEqual(value(out, b"via"), b"1.0 upstream, 1.1 twisted_rproxy")

    def test_hostPolicies(self) -> None:
        """
        Host is the client's by default, absent for C{"backend"} (the pool
        sets it), or a literal.
        """
        preserve = upstreamHeaders(
            CLIENT, ForwardingPolicy(), "192.0.2.1", False, b"example.com"
        )
        self.assertEqual(value(preserve, b"host"), b"example.com")
        backend = upstreamHeaders(
            CLIENT,
            ForwardingPolicy(hostHeader="backend"),
            "192.0.2.1",
            False,
            b"example.com",
        )
        self.assertIsNone(value(backend, b"host"))
        literal = upstreamHeaders(
            CLIENT,
            ForwardingPolicy(hostHeader="app.internal"),
            "192.0.2.1",
            False,
            b"example.com",
        )
        self.assertEqual(value(literal, b"host"), b"app.internal")


class DownstreamHeadersTests(SynchronousTestCase):
    """
    L{downstreamHeaders} filters a backend's response headers.
    """

    def test_hidesBackendIdentity(self) -> None:
        """
        Server and X-Powered-By are hidden by default.
        """
        headers = [
            (b"Server", b"Apache/2.4.1"),
            (b"X-Powered-By", b"PHP/5"),
            (b"Content-Type", b"text/html"),
        ]
        self.assertEqual(
            downstreamHeaders(headers, ForwardingPolicy()),
            [(b"Content-Type", b"text/html")],
        )

    def test_hopByHopRemoved(self) -> None:
        """
        Hop-by-hop headers and those the backend names in Connection are
        removed; duplicates such as Set-Cookie are kept.
        """
        headers = [
            (b"Connection", b"close, X-Internal"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Internal", b"node-7"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
        self.assertEqual(
            downstreamHeaders(headers, ForwardingPolicy()),
            [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")],
        )

    def test_configurableHideList(self) -> None:
        """
        The hide list is the policy's.
        """
        policy = ForwardingPolicy(hideHeaders=frozenset([b"x-debug"]))
        headers = [(b"Server", b"s"), (b"X-Debug", b"d")]
        self.assertEqual(downstreamHeaders(headers, policy), [(b"Server", b"s")])

    def test_connectionTokens(self) -> None:
        """
        Connection values are split on commas, trimmed and lowercased.
        """
        self.assertEqual(
            connectionTokens([b"Keep-Alive ,X-A", b"x-b"]),
            frozenset([b"keep-alive", b"x-a", b"x-b"]),
        )
        self.assertEqual(connectionTokens(None), frozenset())
