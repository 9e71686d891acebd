"""
Sizes (C{"64KiB"}, C{"10MB"}) and durations (C{"250ms"}, C{"5s"}), read
exactly and checked, with errors that name the file and key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction

from twisted_rproxy.config.model import ConfigError, _typeName

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


def parseSize(value: str | int, source: str, key: str) -> int:
    """
    Parse a size in bytes.

    An integer is a number of bytes.  A string is a number, optionally with
    a decimal fraction, then optional spaces, then an optional unit, case
    insensitive: C{B}; C{K}, C{KB} (1000), C{KiB} (1024); C{M}, C{MB}, C{MiB};
    C{G}, C{GB}, C{GiB}; C{T}, C{TB}, C{TiB}.  So C{"64KiB"} is 65536,
    C{"10MB"} and C{"10M"} are 10000000, C{"1.5 KiB"} is 1536.

    @param value: The size as written.
    @param source: The file named by the error, if any.
    @param key: The key named by the error, if any.
    @return: The size in bytes, at least 0.
    @raise ConfigError: If C{value} is negative, not a whole number of
        bytes, or not a size at all.
    """
    return _parseSize(value, source, key)


def _numberWithUnit(
    value: str,
    source: str,
    key: str,
    what: str,
    expected: str,
    units: Mapping[str, int | float | Fraction],
    unitNames: str,
) -> Fraction:
    """
    The exact amount a string such as C{"64KiB"} or C{"250ms"} stands for:
    a non-negative number and a unit of C{units} (case-insensitive).
    """
    if value.strip().startswith("-"):
        raise ConfigError(source, key, f"must not be negative, got {value!r}")
    match = _NUMBER_AND_UNIT.match(value)
    if match is None:
        raise ConfigError(
            source, key, f"invalid {what} {value!r} (expected {expected})"
        )
    number, unit = match.groups()
    multiplier = units.get(unit.lower())
    if multiplier is None:
        raise ConfigError(
            source,
            key,
            f"unknown unit {unit!r} in {what} {value!r} (expected one of {unitNames})",
        )
    return Fraction(number) * Fraction(multiplier)


def _parseSize(value: object, source: str, key: str) -> int:
    """
    L{parseSize} of any parsed TOML value, so that a wrong type gets the same
    clear message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(
            source,
            key,
            "expected a size (a number of bytes, or a string like "
            f'"64KiB" or "10MB"), got {_typeName(value)}',
        )
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(source, key, f"must not be negative, got {value}")
        return value
    # Fractions are exact where floats and Decimal's default context round.
    size = _numberWithUnit(
        value,
        source,
        key,
        "size",
        'a number of bytes, or a string like "64KiB" or "10MB"',
        _SIZE_UNITS,
        _SIZE_UNIT_NAMES,
    )
    if size.denominator != 1:
        raise ConfigError(source, key, f"size {value!r} is not a whole number of bytes")
    return size.numerator


def parseDuration(value: str | int | float, source: str, key: str) -> float:
    """
    Parse a duration in seconds.

    A number (integer or float) is a number of seconds.  A string is a
    number, optionally with a decimal fraction, then optional spaces, then an
    optional unit, case insensitive: C{ms}, C{s}, C{m} (minutes), C{h}, C{d}.
    So C{"250ms"} is 0.25, C{"1.5s"} is 1.5, C{"2m"} is 120.

    @param value: The duration as written.
    @param source: The file named by the error, if any.
    @param key: The key named by the error, if any.
    @return: The duration in seconds, at least 0 and finite.
    @raise ConfigError: If C{value} is negative, infinite, not a number or
        not a duration at all.
    """
    return _parseDuration(value, source, key)


def _parseDuration(value: object, source: str, key: str) -> float:
    """
    L{parseDuration} of any parsed TOML value, so that a wrong type gets the
    same clear message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(
            source,
            key,
            "expected a duration (a number of seconds, or a string like "
            f'"5s" or "250ms"), got {_typeName(value)}',
        )
    if isinstance(value, str):
        exact: Fraction | int | float = _numberWithUnit(
            value,
            source,
            key,
            "duration",
            'a number of seconds, or a string like "5s", "250ms", "2m" or "1h"',
            _DURATION_UNITS,
            _DURATION_UNIT_NAMES,
        )
    else:
        if value < 0:
            raise ConfigError(source, key, f"must not be negative, got {value}")
        exact = value
    try:
        seconds = float(exact)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ConfigError(source, key, f"duration {value!r} is not finite")
    return seconds
