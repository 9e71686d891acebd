"""
Tests for L{twisted_rproxy.rules.networks}, the one reading of networks and
client addresses, and for those who use it.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.proxy import ForwardingPolicy
from twisted_rproxy.rules.networks import inNetworks, parseAddress, parseNetworks


class NetworksTests(SynchronousTestCase):
    def test_hostBitsAllowed(self) -> None:
        self.assertEqual(
            [str(n) for n in parseNetworks(["10.1.2.3/8", " ::1 "])],
            ["10.0.0.0/8", "::1/128"],
        )

    def test_notANetwork(self) -> None:
        self.assertRaises(ValueError, parseNetworks, ["10.0.0.300"])

    def test_mappedAndZoned(self) -> None:
        """
        An IPv4-mapped IPv6 address is its IPv4 address; a zone is dropped.
        """
        self.assertEqual(str(parseAddress("::ffff:192.0.2.1")), "192.0.2.1")
        self.assertEqual(str(parseAddress("fe80::1%eth0")), "fe80::1")
        self.assertIsNone(parseAddress("/run/rproxy.sock"))

    def test_inNetworks(self) -> None:
        networks = parseNetworks(["10.0.0.0/8", "2001:db8::/32"])
        self.assertTrue(inNetworks("10.2.3.4", networks))
        self.assertTrue(inNetworks("::ffff:10.2.3.4", networks))
        self.assertTrue(inNetworks("2001:db8::1", networks))
        self.assertFalse(inNetworks("192.0.2.1", networks))
        self.assertFalse(inNetworks("", networks))
        self.assertFalse(inNetworks("10.2.3.4", ()))

    def test_forwardingPolicyTrustsMappedPeer(self) -> None:
        """
        A trusted proxy seen through a dual-stack socket (as an IPv4-mapped
        IPv6 address) is trusted for its forwarding headers, as the
        channel's reading of the client address already trusted it.
        """
        policy = ForwardingPolicy(trustedProxies=["10.0.0.0/8"])
        self.assertTrue(policy.trusts("10.0.0.5"))
        self.assertTrue(policy.trusts("::ffff:10.0.0.5"))
        self.assertFalse(policy.trusts("::ffff:192.0.2.1"))
        self.assertFalse(policy.trusts("not an address"))
