"""
Tests of the apikey_filter example package, written with
L{twisted_rproxy.testing} as a filter author would.
"""

from __future__ import annotations

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

try:
    import apikey_filter
except ImportError:
    # Run from a checkout without installing the package.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import apikey_filter

from twisted_rproxy.filters import FilterOptionError
from twisted_rproxy.testing import CannedResource, FilterHarness


class ApiKeyTests(SynchronousTestCase):
    """
    The C{apikey} filter lets requests with a known key pass, without it.
    """

    def harness(self) -> FilterHarness:
        factory = apikey_filter.ApiKeyFactory()
        built = factory.buildFilter({"keys": ["k1", "k2"]})
        return FilterHarness([("keys", built)], CannedResource(chunks=[b"secret data"]))

    def test_knownKeyPasses(self) -> None:
        """
        A request with a known key reaches the backend, without the key.
        """
        harness = self.harness()
        response = harness.request(headers=[(b"Host", b"h"), (b"X-API-Key", b"k2")])
        self.assertEqual(response.code, 200)
        self.assertEqual(response.body, b"secret data")
        seen = harness.resource.requests[0][2]  # type: ignore[attr-defined]
        self.assertFalse(seen.hasHeader(b"x-api-key"))

    def test_missingOrWrongKeyIs401(self) -> None:
        """
        Without a key, or with an unknown one, the answer is 401 and the
        backend sees nothing.
        """
        harness = self.harness()
        for headers in ([(b"Host", b"h")], [(b"Host", b"h"), (b"X-API-Key", b"k3")]):
            response = harness.request(headers=headers)
            self.assertEqual(response.code, 401)
            self.assertEqual(response.header(b"www-authenticate"), [b"ApiKey"])
        self.assertEqual(harness.resource.requests, [])  # type: ignore[attr-defined]

    def test_badOptions(self) -> None:
        """
        Missing or malformed options are refused, naming the option.
        """
        factory = apikey_filter.ApiKeyFactory()
        for options, option in (
            ({}, "keys"),
            ({"keys": []}, "keys"),
            ({"keys": ["a", 3]}, "keys[1]"),
            ({"keys": ["a"], "header": "bad header"}, "header"),
            ({"keys": ["a"], "extra": 1}, "extra"),
        ):
            error = self.assertRaises(FilterOptionError, factory.buildFilter, options)
            self.assertEqual(error.option, option)


class StampTests(SynchronousTestCase):
    """
    The C{stamp} filter adds its header to every response.
    """

    def test_stampsResponses(self) -> None:
        """
        The stamp replaces a header of the same name from the backend.
        """
        built = apikey_filter.StampFactory().buildFilter(
            {"header": "X-Served-By", "value": "edge-1"}
        )
        harness = FilterHarness(
            [("stamp", built)],
            CannedResource(headers=[(b"X-Served-By", b"backend")], chunks=[b"x"]),
        )
        response = harness.request()
        self.assertEqual(response.header(b"x-served-by"), [b"edge-1"])
        self.assertEqual(response.body, b"x")

    def test_valueRequired(self) -> None:
        """
        A stamp without a value is refused.
        """
        error = self.assertRaises(
            FilterOptionError, apikey_filter.StampFactory().buildFilter, {}
        )
        self.assertEqual(error.option, "value")
