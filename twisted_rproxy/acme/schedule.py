"""
When to act on a certificate: the renewal time ahead of its expiry (with
jitter, so that many proxies started together do not all order at once),
and the delay before the next try after a failure (exponential backoff).

Pure functions of numbers (seconds since the epoch): the manager gives
them the time and a random number, the tests give them fixed ones.
"""

from __future__ import annotations

__all__ = [
    "JITTER_FRACTION",
    "MAX_JITTER",
    "MAX_RETRY_DELAY",
    "RETRY_DELAY",
    "effectiveRenewBefore",
    "renewalTime",
    "retryDelay",
]

#: Renewal starts up to this fraction of C{renew_before} earlier.
JITTER_FRACTION = 0.1

#: And never more than this many seconds earlier (one day).
MAX_JITTER = 86400.0

#: The delay before the first retry after a failed order.
RETRY_DELAY = 60.0

#: The longest delay between two tries (six hours).
MAX_RETRY_DELAY = 6 * 3600.0


def effectiveRenewBefore(
    notBefore: float, notAfter: float, renewBefore: float | None
) -> float:
    """
    How long before expiry a certificate is renewed: C{renewBefore}, or a
    third of the lifetime when it is L{None}; never more than half the
    lifetime, so that a CA issuing shorter certificates than C{renew_before}
    expects is not asked for a new one as soon as one is issued.

    @param notBefore: The start of the certificate's validity.
    @param notAfter: Its end.
    @param renewBefore: C{[acme] renew_before}, in seconds, or L{None}.
    """
    lifetime = max(notAfter - notBefore, 0.0)
    if renewBefore is None:
        return lifetime / 3
    return min(renewBefore, lifetime / 2)


def renewalTime(
    notBefore: float, notAfter: float, renewBefore: float | None, jitter: float
) -> float:
    """
    When to renew a certificate.

    @param jitter: A number from 0 to 1 (a random one): the renewal moves
        that fraction of its jitter window earlier (C{JITTER_FRACTION} of
        the renewal period, at most C{MAX_JITTER}).
    @return: The time to renew at: from C{notAfter - before - window} to
        C{notAfter - before}, where C{before} is L{effectiveRenewBefore}.
    """
    before = effectiveRenewBefore(notBefore, notAfter, renewBefore)
    window = min(before * JITTER_FRACTION, MAX_JITTER)
    jitter = min(max(jitter, 0.0), 1.0)
    return notAfter - before - window * jitter


def retryDelay(
    failures: int,
    jitter: float,
    base: float = RETRY_DELAY,
    maximum: float = MAX_RETRY_DELAY,
) -> float:
    """
    The delay before trying again after C{failures} failures in a row:
    C{base}, doubled after each failure up to C{maximum}, then moved by up to
    a fifth either way by C{jitter}.

    @param failures: How many tries failed in a row (at least 1).
    @param jitter: A number from 0 to 1.
    """
    exponent = min(max(failures - 1, 0), 32)
    delay = min(base * 2.0**exponent, maximum)
    jitter = min(max(jitter, 0.0), 1.0)
    return delay * (0.8 + 0.4 * jitter)
