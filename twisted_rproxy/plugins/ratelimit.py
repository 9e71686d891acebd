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
    shared = false       # true: the buckets live in [state] (Redis)

Requests without the key's header share one bucket (the empty key).

Without C{shared}, each process keeps its own buckets (with N workers a
client gets N times the limit: C{--check} and the start warn about it).
With C{shared = true}, every worker and instance using the same C{[state]}
takes its tokens from one bucket per key in Redis
(L{twisted_rproxy.state.ratelimit}), one round trip per request; while
Redis cannot be reached, C{[state] on_error} decides: C{"local"} takes
the token from this process's own bucket, C{"open"} lets the request
through, C{"closed"} answers 503.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.filteroptions import FilterOptions
from twisted_rproxy.filters import FilterOptionError, FilterResponse, RequestContext
from twisted_rproxy.interfaces import (
    IFilterEnvironment,
    IFilterFactory,
    IRequestFilter,
)
from twisted_rproxy.pages import errorBody
from twisted_rproxy.policies import RateTable
from twisted_rproxy.state import SharedState, StateUnavailable
from twisted_rproxy.state.ratelimit import RateDecision, SharedRateLimit

_KEYS = ("rate", "burst", "key", "delay", "max_keys", "shared")

#: The least time between two log lines about unexpected failures of the
#: shared bucket (an outage is logged by the shared state itself, once).
UNEXPECTED_LOG_INTERVAL = 60.0

_log = Logger()


def refusal(retryAfter: float) -> FilterResponse:
    """
    The 429 answer to a request without a token: C{Retry-After} in whole
    seconds (at least 1) until there is one.
    """
    retry = max(1, math.ceil(retryAfter))
    return FilterResponse(
        429,
        [
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Cache-Control", b"no-store"),
            (b"Retry-After", b"%d" % (retry,)),
        ],
        errorBody(429),
    )


def unavailable() -> FilterResponse:
    """
    The 503 answer of C{on_error = "closed"} while the shared buckets cannot
    be reached: the proxy's own page, saying nothing of why.
    """
    return FilterResponse(
        503,
        [
            (b"Content-Type", b"text/html; charset=utf-8"),
            (b"Cache-Control", b"no-store"),
        ],
        errorBody(503),
    )


def _wait(reactor: IReactorTime, seconds: float) -> Deferred[None]:
    """
    A L{Deferred} firing with L{None} in C{seconds}; cancelling it (the
    client went away) cancels its timer.
    """
    calls: list[IDelayedCall] = []

    def cancel(waiting: Deferred[None]) -> None:
        if calls and calls[0].active():
            calls[0].cancel()

    waiting: Deferred[None] = Deferred(cancel)
    calls.append(reactor.callLater(seconds, waiting.callback, None))
    return waiting


@implementer(IRequestFilter)
class RateLimitFilter:
    """
    Takes a token for each request: from its L{RateTable}, or from the
    shared bucket in Redis when it has one.

    @ivar table: The buckets of this process (for a shared filter: those
        used while Redis cannot be reached, with C{on_error = "local"}).
    @ivar header: The lowercased header whose value is the key, or L{None}
        for the client address.
    @ivar maxDelay: The longest a request waits for its token.
    @ivar shared: The shared buckets, or L{None} to keep them here.
    """

    def __init__(
        self,
        table: RateTable,
        header: bytes | None,
        maxDelay: float,
        shared: SharedRateLimit | None = None,
    ) -> None:
        self.table = table
        self.header = header
        self.maxDelay = maxDelay
        self.shared = shared
        self._lastUnexpected: float | None = None

    def keyOf(self, request: IRequest, context: RequestContext) -> object:
        """
        The bucket's key for C{request}.
        """
        if self.header is None:
            return context.clientAddress
        values = request.requestHeaders.getRawHeaders(self.header)
        return values[0] if values else b""

    def sharedKeyOf(self, key: object) -> bytes:
        """
        The part of a shared bucket's Redis key that names C{key}: a client
        address as it is; a header's value (an API key, a secret) as a
        digest, which is also of bounded length whatever the client sends.
        """
        if isinstance(key, str):
            return key.encode("utf-8")
        assert isinstance(key, bytes)
        return hashlib.blake2b(key, digest_size=16).hexdigest().encode("ascii")

    def filterRequest(self, request: IRequest, context: RequestContext) -> Any:
        key = self.keyOf(request, context)
        if self.shared is None:
            return self.takeLocal(key, context.reactor)
        taking = self.shared.take(self.sharedKeyOf(key))
        return taking.addCallbacks(
            self._decided,
            self._sharedFailed,
            callbackArgs=(context.reactor,),
            errbackArgs=(key, context.reactor),
        )

    def takeLocal(self, key: object, reactor: IReactorTime) -> object:
        """
        Take a token of this process's bucket for C{key}.

        @return: L{None} to serve the request now, a 429 L{FilterResponse},
            or a L{Deferred} firing when the request may go on.
        """
        now = reactor.seconds()
        delay = self.table.take(key, now, self.maxDelay)
        if delay is None:
            return refusal(self.table.retryAfter(key, now))
        if delay == 0:
            return None
        return _wait(reactor, delay)

    def _decided(self, decision: RateDecision, reactor: IReactorTime) -> object:
        if not decision.allowed:
            return refusal(decision.wait)
        if decision.wait <= 0:
            return None
        return _wait(reactor, decision.wait)

    def _sharedFailed(
        self, failure: Failure, key: object, reactor: IReactorTime
    ) -> object:
        """
        The shared bucket could not decide: do what C{on_error} says.
        """
        if failure.check(CancelledError):
            # The client went away: nobody waits for an answer.
            return failure
        assert self.shared is not None
        state = self.shared.state
        if not failure.check(StateUnavailable):
            # Redis answered, but not as the script does (a key of another
            # program's, a script refused): worth a line now and then.
            now = reactor.seconds()
            last = self._lastUnexpected
            if last is None or now - last >= UNEXPECTED_LOG_INTERVAL:
                self._lastUnexpected = now
                _log.failure(
                    "Shared rate limit {name!r}: Redis failed the bucket; "
                    'on_error = "{onError}" applies',
                    failure,
                    name=self.shared.name,
                    onError=state.onError,
                )
        if state.onError == "open":
            return None
        if state.onError == "closed":
            return unavailable()
        return self.takeLocal(key, reactor)


def _number(options: Mapping[str, object], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FilterOptionError(name, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise FilterOptionError(name, f"expected a finite number, got {value!r}")
    return float(value)


def _header(options: Mapping[str, object]) -> bytes | None:
    keyOption = options.get("key", "client")
    if not isinstance(keyOption, str) or not (
        keyOption == "client"
        or (keyOption.startswith("header:") and keyOption[7:].strip())
    ):
        raise FilterOptionError(
            "key", f'expected "client" or "header:NAME", got {keyOption!r}'
        )
    if keyOption == "client":
        return None
    return keyOption[7:].strip().lower().encode("latin-1")


@implementer(IPlugin, IFilterFactory)
class RateLimitFactory:
    """
    The C{rate_limit} filter plugin.
    """

    name = "rate_limit"

    def buildFilter(
        self,
        options: Mapping[str, object],
        environment: IFilterEnvironment | None = None,
    ) -> RateLimitFilter:
        """
        Build the filter of C{options}.

        @param environment: Where the filter runs: C{shared = true} needs
            its C{sharedState}; without one (as when called with the
            options alone) the filter can only keep its buckets itself.
        """
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
        header = _header(options)
        read = FilterOptions(options)
        maxDelay = read.duration("delay", 0.0)
        shared = options.get("shared", False)
        if not isinstance(shared, bool):
            # (Its message predates FilterOptions; tests pin it.)
            raise FilterOptionError("shared", f"expected true or false, got {shared!r}")
        table = RateTable(rate, int(burst), int(maxKeys))
        if not shared:
            workers = environment.workers if environment is not None else 1
            if environment is not None and workers > 1:
                environment.warn(
                    f"the limit applies per worker: with {workers} workers a "
                    f"client gets up to {workers} times rate and burst; "
                    "set shared = true (with a [state] table) for one limit"
                )
            return RateLimitFilter(table, header, maxDelay)
        sharedState = environment.sharedState if environment is not None else None
        if environment is None or sharedState is None:
            raise FilterOptionError(
                "shared",
                "needs a [state] table (the shared Redis) to keep the buckets "
                "in: add one, or remove shared = true",
            )
        limit = SharedRateLimit(
            cast(SharedState, sharedState),
            str(environment.name),
            rate,
            int(burst),
            maxDelay,
        )
        return RateLimitFilter(table, header, maxDelay, limit)


#: What getPlugins finds.
rateLimit = RateLimitFactory()
