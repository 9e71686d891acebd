"""
Sizes (C{"64KiB"}, C{"10MB"}) and durations (C{"250ms"}, C{"5s"}) in the
configuration: read by L{twisted_rproxy.rules.units}, checked here, with
errors that name the file and key.
"""

from __future__ import annotations

import math
from fractions import Fraction

from twisted_rproxy.config.model import ConfigError, _typeName
from twisted_rproxy.rules.units import UnitError, durationAmount, sizeAmount


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
    try:
        size = sizeAmount(value)
    except UnitError as e:
        raise ConfigError(source, key, str(e)) from None
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
        try:
            exact: Fraction | int | float = durationAmount(value)
        except UnitError as e:
            raise ConfigError(source, key, str(e)) from None
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
