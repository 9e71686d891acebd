"""
The built-in C{rate_limit} filter: a token bucket per client address (or
per value of a request header), answering 429 with C{Retry-After} past
the rate, or delaying requests a little first, as nginx's C{limit_req}
does.

Configuration::

    [filters.api-limit]
    plugin = "rate_limit"
    rate = 10            # requests per second, sustained
    burst = 20           # requests at once above the rate
    key = "client"       # or "header:X-Api-Key"
    delay = "0s"         # how long a request may wait for its token
    max_keys = 100000    # buckets kept (least recently used forgotten)

Requests without the key's header share one bucket (the empty key).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.config import ConfigError, parseDuration
from twisted_rproxy.filters import FilterOptionError, FilterResponse, RequestContext
from twisted_rproxy.interfaces import IFilterFactory, IRequestFilter
from twisted_rproxy.pages import errorBody
from twisted_rproxy.policies import RateTable

_KEYS = ("rate", "burst", "key", "delay", "max_keys")


@implementer(IRequestFilter)
class RateLimitFilter:
    """
    Takes a token of its L{RateTable} for each request.

    @ivar table: The buckets.
    @ivar header: The lowercased header whose value is the key, or L{None}
        for the client address.
    @ivar maxDelay: The longest a request waits for its token.
    """

    def __init__(self, table: RateTable, header: bytes | None, maxDelay: float) -> None:
        self.table = table
        self.header = header
        self.maxDelay = maxDelay

    def keyOf(self, request: IRequest, context: RequestContext) -> object:
        """
        The bucket's key for C{request}.
        """
        if self.header is None:
            return context.clientAddress
        values = request.requestHeaders.getRawHeaders(self.header)
        return values[0] if values else b""

    def filterRequest(self, request: IRequest, context: RequestContext) -> Any:
        key = self.keyOf(request, context)
        now = context.reactor.seconds()
        delay = self.table.take(key, now, self.maxDelay)
        if delay is None:
            retry = max(1, math.ceil(self.table.retryAfter(key, now)))
            return FilterResponse(
                429,
                [
                    (b"Content-Type", b"text/html; charset=utf-8"),
                    (b"Cache-Control", b"no-store"),
                    (b"Retry-After", b"%d" % (retry,)),
                ],
                errorBody(429),
            )
        if delay == 0:
            return None
        waiting: Deferred[None] = Deferred()
        call = context.reactor.callLater(delay, waiting.callback, None)
        # A client gone while it waits must not leave the timer behind.
        waiting.addErrback(lambda f: call.cancel() if call.active() else None)
        return waiting


def _number(options: Mapping[str, object], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FilterOptionError(name, f"expected a number, got {value!r}")
    return float(value)


@implementer(IPlugin, IFilterFactory)
class RateLimitFactory:
    """
    The C{rate_limit} filter plugin.
    """

    name = "rate_limit"

    def buildFilter(self, options: Mapping[str, object]) -> RateLimitFilter:
        for key in options:
            if key not in _KEYS:
                raise FilterOptionError(
                    key, f"unknown key (expected one of {', '.join(_KEYS)})"
                )
        if "rate" not in options:
            raise FilterOptionError("rate", "is required: requests per second")
        rate = _number(options, "rate", 0)
        if rate <= 0:
            raise FilterOptionError("rate", f"must be greater than 0, got {rate:g}")
        burst = _number(options, "burst", max(1.0, rate))
        maxKeys = _number(options, "max_keys", 100000)
        for name, value in (("burst", burst), ("max_keys", maxKeys)):
            if value != int(value) or value < 1:
                raise FilterOptionError(
                    name, f"must be a whole number >= 1, got {value:g}"
                )
        keyOption = options.get("key", "client")
        header: bytes | None = None
        if not isinstance(keyOption, str) or not (
            keyOption == "client"
            or (keyOption.startswith("header:") and len(keyOption) > 7)
        ):
            raise FilterOptionError(
                "key", f'expected "client" or "header:NAME", got {keyOption!r}'
            )
        if keyOption != "client":
            header = keyOption[7:].strip().lower().encode("latin-1")
        delayOption = options.get("delay", 0)
        if not isinstance(delayOption, (str, int, float)) or isinstance(
            delayOption, bool
        ):
            raise FilterOptionError(
                "delay", f"expected a duration, got {delayOption!r}"
            )
        try:
            maxDelay = parseDuration(delayOption, "", "delay")
        except ConfigError as e:
            raise FilterOptionError("delay", e.message) from None
        if maxDelay < 0:
            raise FilterOptionError("delay", "must not be negative")
        return RateLimitFilter(
            RateTable(rate, int(burst), int(maxKeys)), header, maxDelay
        )


#: What getPlugins finds.
rateLimit = RateLimitFactory()
