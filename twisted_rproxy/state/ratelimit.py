"""
Rate limits shared through Redis: L{SharedRateLimit}, one bucket per key
for every worker and instance that uses the same C{[state]}, decided by
L{RATE_LIMIT_SCRIPT} in one atomic round trip per request.

The script is GCRA (the generic cell rate algorithm), which is the token
bucket of L{twisted_rproxy.policies.RateTable} written as one number: the
theoretical arrival time (TAT), the moment at which the bucket would be
full again.  A bucket with C{tokens} tokens at C{now} has
C{TAT = now + (burst - tokens) / rate}; taking a token moves the TAT one
emission interval (C{1 / rate}) later; a request is served now while the
new TAT is at most C{burst} intervals ahead, served after a delay while it
is at most C{burst} intervals plus the delay allowed ahead, and refused
otherwise (the TAT then stays as it was, as the local table's tokens do).
So both limiters answer the same requests in the same way.

Time is Redis' own (C{TIME}), so that proxies whose clocks differ share
one bucket correctly; the key expires (C{PX}) when the bucket would be
full again, which is when forgetting it changes nothing: Redis holds one
small key per client active within the last C{burst / rate} seconds.
"""

from __future__ import annotations

import math

from attrs import frozen
from twisted.internet.defer import Deferred

from twisted_rproxy.state.client import Script, SharedState

#: The script: C{KEYS[1]} the bucket; C{ARGV} the emission interval, the
#: bucket's size (C{burst} intervals) and the delay allowed, all three in
#: microseconds.  It answers C{{1, delay}} (served, after C{delay}
#: microseconds, 0 for now) or C{{0, retry}} (refused; a token in C{retry}
#: microseconds).  Half a microsecond of slack absorbs the rounding of an
#: interval that is not a whole number of microseconds.
RATE_LIMIT_SCRIPT = Script(
    """
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local maxDelay = tonumber(ARGV[3])
-- Redis before 5 replicates scripts whole, refusing a write after TIME
-- unless told to replicate effects; later ones always do.
if redis.replicate_commands then
  redis.replicate_commands()
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then
  tat = now
end
local newTat = tat + interval
local delay = newTat - now - capacity
if delay > maxDelay + 0.5 then
  return {0, math.ceil(delay)}
end
redis.call('SET', KEYS[1], string.format('%.0f', newTat),
           'PX', string.format('%.0f', math.max(1, math.ceil((newTat - now) / 1000))))
if delay < 0.5 then
  return {1, 0}
end
return {1, math.ceil(delay)}
"""
)


@frozen
class RateDecision:
    """
    What the shared bucket decided for one request.

    @ivar allowed: Whether the request may be served.
    @ivar wait: When allowed, the seconds it must wait for its token (0:
        serve it now); when refused, the seconds until a token is there
        (what C{Retry-After} says).
    """

    allowed: bool
    wait: float


class UnexpectedReply(Exception):
    """
    Redis answered the script with something it does not answer: another
    program wrote the bucket's key, or the script is not ours.
    """


def _decision(reply: object) -> RateDecision:
    if (
        not isinstance(reply, list)
        or len(reply) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in reply)
        or reply[0] not in (0, 1)
        or reply[1] < 0
    ):
        raise UnexpectedReply(f"the rate-limit script answered {reply!r}")
    return RateDecision(bool(reply[0]), reply[1] / 1e6)


class SharedRateLimit:
    """
    The buckets of one rate-limit filter in the shared Redis, under
    C{state.key("rl", name, clientKey)}.

    @ivar state: The shared state.
    @ivar name: The filter's name, part of every key.
    @ivar rate: Tokens added per second.
    @ivar burst: The bucket's size.
    @ivar maxDelay: The longest, in seconds, a request may wait for a token
        taken ahead.
    """

    def __init__(
        self,
        state: SharedState,
        name: str,
        rate: float,
        burst: int,
        maxDelay: float = 0.0,
    ) -> None:
        if rate <= 0 or burst < 1 or maxDelay < 0 or not math.isfinite(rate):
            raise ValueError("rate must be > 0, burst >= 1 and maxDelay >= 0")
        self.state = state
        self.name = name
        self.rate = rate
        self.burst = burst
        self.maxDelay = maxDelay
        interval = 1e6 / rate
        # Formatted once: the same three arguments go with every request.
        self._args = (
            _number(interval),
            _number(interval * burst),
            _number(maxDelay * 1e6),
        )
        self._prefix = state.key("rl", name, "")

    def keyFor(self, clientKey: bytes) -> bytes:
        """
        The Redis key of C{clientKey}'s bucket.
        """
        return self._prefix + clientKey

    def take(self, clientKey: bytes) -> Deferred[RateDecision]:
        """
        Take a token of C{clientKey}'s bucket.

        @return: A L{Deferred} firing with the L{RateDecision}, or failing
            with L{twisted_rproxy.state.StateUnavailable} when Redis cannot
            be reached in time, with L{UnexpectedReply}, or with Redis' own
            error for the script.
        """
        result = self.state.evalScript(
            RATE_LIMIT_SCRIPT, [self._prefix + clientKey], self._args
        )
        return result.addCallback(_decision)


def _number(value: float) -> str:
    """
    A number as the script reads it (C{tonumber}), exactly enough.
    """
    return repr(float(value))
