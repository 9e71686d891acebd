"""
Tests for L{twisted_rproxy.rules.units}: sizes and durations as written,
read exactly.
"""

from __future__ import annotations

from fractions import Fraction

from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.rules.units import UnitError, durationAmount, sizeAmount


class UnitsTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        self.assertEqual(sizeAmount("64KiB"), 65536)
        self.assertEqual(sizeAmount("10 mb"), 10**7)
        self.assertEqual(sizeAmount("1.5B"), Fraction(3, 2))

    def test_durations(self) -> None:
        self.assertEqual(durationAmount("250ms"), Fraction(1, 4))
        self.assertEqual(durationAmount("2m"), 120)
        self.assertEqual(durationAmount("7"), 7)

    def test_errors(self) -> None:
        """
        The message says what is wrong, without file or key (the caller's).
        """
        for call, text, message in [
            (sizeAmount, "-1K", "must not be negative, got '-1K'"),
            (sizeAmount, "ten", "invalid size 'ten' (expected a number of bytes"),
            (durationAmount, "5 fortnights", "unknown unit 'fortnights'"),
        ]:
            error = self.assertRaises(UnitError, call, text)
            self.assertTrue(str(error).startswith(message), str(error))
