"""
Sizes (C{"64KiB"}, C{"10MB"}) and durations (C{"250ms"}, C{"5s"}) as they
are written in a configuration, read exactly (as fractions, where floats
round): L{sizeAmount}, L{durationAmount}. A string that is not one raises
L{UnitError}, whose message says what was expected; the configuration adds
the file and key (L{twisted_rproxy.config.units}).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction

__all__ = [
    "DURATION_EXPECTED",
    "SIZE_EXPECTED",
    "UnitError",
    "durationAmount",
    "sizeAmount",
]


class UnitError(ValueError):
    """
    A size or duration that is not one; its message says why.
    """


_SIZE_UNITS: Mapping[str, int] = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "kib": 2**10,
    "m": 10**6,
    "mb": 10**6,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gib": 2**30,
    "t": 10**12,
    "tb": 10**12,
    "tib": 2**40,
}


_SIZE_UNIT_NAMES = "B, K, KB, KiB, M, MB, MiB, G, GB, GiB, T, TB, TiB"


_DURATION_UNITS: Mapping[str, Fraction] = {
    "": Fraction(1),
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
    "d": Fraction(86400),
}


_DURATION_UNIT_NAMES = "ms, s, m, h, d"


_NUMBER_AND_UNIT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*\Z")

#: What a size is, for messages.
SIZE_EXPECTED = 'a number of bytes, or a string like "64KiB" or "10MB"'

#: What a duration is, for messages.
DURATION_EXPECTED = 'a number of seconds, or a string like "5s", "250ms", "2m" or "1h"'


def _amount(
    value: str,
    what: str,
    expected: str,
    units: Mapping[str, int | float | Fraction],
    unitNames: str,
) -> Fraction:
    """
    The exact amount a string such as C{"64KiB"} or C{"250ms"} stands for:
    a non-negative number and a unit of C{units} (case-insensitive).

    @raise UnitError: If it is negative or not such a string.
    """
    if value.strip().startswith("-"):
        raise UnitError(f"must not be negative, got {value!r}")
    match = _NUMBER_AND_UNIT.match(value)
    if match is None:
        raise UnitError(f"invalid {what} {value!r} (expected {expected})")
    number, unit = match.groups()
    multiplier = units.get(unit.lower())
    if multiplier is None:
        raise UnitError(
            f"unknown unit {unit!r} in {what} {value!r} (expected one of {unitNames})"
        )
    return Fraction(number) * Fraction(multiplier)


def sizeAmount(value: str) -> Fraction:
    """
    The number of bytes C{value} stands for: a number, optionally with a
    decimal fraction, then optional spaces, then an optional unit, case
    insensitive: C{B}; C{K}, C{KB} (1000), C{KiB} (1024); C{M}, C{MB},
    C{MiB}; C{G}, C{GB}, C{GiB}; C{T}, C{TB}, C{TiB}. It may be a fraction
    (C{"1.5B"}): whether that is allowed is the caller's to say.

    @raise UnitError: If C{value} is negative or not a size.
    """
    return _amount(value, "size", SIZE_EXPECTED, _SIZE_UNITS, _SIZE_UNIT_NAMES)


def durationAmount(value: str) -> Fraction:
    """
    The number of seconds C{value} stands for: a number, optionally with a
    decimal fraction, then optional spaces, then an optional unit, case
    insensitive: C{ms}, C{s}, C{m} (minutes), C{h}, C{d}.

    @raise UnitError: If C{value} is negative or not a duration.
    """
    return _amount(
        value, "duration", DURATION_EXPECTED, _DURATION_UNITS, _DURATION_UNIT_NAMES
    )
