"""
HTTP dates (RFC 9110 section 5.6.7): the three formats a recipient accepts.
"""

from __future__ import annotations

import calendar
import re
import time

_MONTHS = {
    name: number
    for number, name in enumerate(
        [b"jan", b"feb", b"mar", b"apr", b"may", b"jun"]
        + [b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"],
        start=1,
    )
}


_IMF_DATE = re.compile(
    rb"[A-Za-z]{3}, (\d\d) ([A-Za-z]{3}) (\d{4}) (\d\d):(\d\d):(\d\d) GMT"
)


_RFC850_DATE = re.compile(
    rb"[A-Za-z]{6,9}, (\d\d)-([A-Za-z]{3})-(\d\d) (\d\d):(\d\d):(\d\d) GMT"
)


_ASCTIME_DATE = re.compile(
    rb"[A-Za-z]{3} ([A-Za-z]{3}) ([ \d]\d) (\d\d):(\d\d):(\d\d) (\d{4})"
)


def parseHTTPDate(value: bytes) -> int | None:
    """
    Seconds since the epoch of an HTTP-date in any of the three forms of
    RFC 9110 section 5.6.7 (C{Sun, 06 Nov 1994 08:49:37 GMT}, the obsolete
    RFC 850 and asctime forms).

    @param value: The field value.
    @return: The time, or L{None} if C{value} is not a valid HTTP-date.
    """
    value = value.strip(b" \t")
    match = _IMF_DATE.fullmatch(value)
    if match is not None:
        day, month, year, hour, minute, second = match.groups()
        fullYear = int(year)
    else:
        match = _RFC850_DATE.fullmatch(value)
        if match is not None:
            day, month, year, hour, minute, second = match.groups()
            # RFC 9110: a two-digit year more than 50 years in the future
            # is in the past century.
            fullYear = 2000 + int(year)
            if fullYear > time.gmtime().tm_year + 50:
                fullYear -= 100
        else:
            match = _ASCTIME_DATE.fullmatch(value)
            if match is None:
                return None
            month, day, hour, minute, second, year = match.groups()
            fullYear = int(year)
    monthNumber = _MONTHS.get(month.lower())
    if monthNumber is None:
        return None
    fields = (int(day), int(hour), int(minute), int(second))
    if not (1 <= fields[0] <= 31 and fields[1] < 24 and fields[2] < 60):
        return None
    if fields[3] > 60:
        return None
    return calendar.timegm((fullYear, monthNumber, *fields, 0, 0, 0))
