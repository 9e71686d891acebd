"""
The state several proxies share (C{[state]}): L{SharedState}, the client of
the shared Redis, with L{Script} (a Lua script it runs by digest) and
L{StateUnavailable} (what an operation fails with while Redis cannot be
reached).

It sits between the pure decisions and the I/O layer, so that both the
Redis cache store (I/O) and the filter plugins (a shared rate limit) build
on it.  txredisapi, the Redis client, is the optional extra C{redis}:
without it this package imports, and L{SharedState.start} says what to
install.
"""

from twisted_rproxy.state.client import (
    MAX_REOPEN_DELAY,
    POOL_SIZE,
    Script,
    SharedState,
    StateUnavailable,
)

__all__ = [
    "MAX_REOPEN_DELAY",
    "POOL_SIZE",
    "Script",
    "SharedState",
    "StateUnavailable",
]
