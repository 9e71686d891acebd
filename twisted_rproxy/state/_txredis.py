"""
The fence around txredisapi: the one module that imports it, opens its lazy
connection pools, and reads the three things of a pool that its public API
does not tell (each checked by C{tests/test_state.py}, which fails loudly
when a txredisapi release changes them).

txredisapi connects and reconnects on the global reactor (its endpoints and
retry timers are made inside it); the operations' timeouts are ours, on the
reactor L{twisted_rproxy.state.SharedState} is given.
"""

from __future__ import annotations

import inspect
from typing import Any

from twisted.internet.ssl import optionsForClientTLS

from twisted_rproxy.config.state import StateConfig

txredisapi: Any
try:
    # txredisapi ships no type information.
    import txredisapi  # type: ignore[import-untyped, no-redef]
except ImportError:  # pragma: no cover: the optional extra "redis"
    txredisapi = None

#: The seconds a connection attempt may take: more than an operation may
#: (a connection is made once, then kept), but not so long that a dropped
#: SYN holds up the next attempt.
CONNECT_TIMEOUT = 5.0


def clientAvailable() -> bool:
    """
    Whether txredisapi is installed.
    """
    return txredisapi is not None


def responseErrors() -> tuple[type[Exception], ...]:
    """
    The exception txredisapi raises for a Redis error reply (C{-ERR ...}).
    """
    return (txredisapi.ResponseError,) if txredisapi is not None else ()


def connectionErrors() -> tuple[type[Exception], ...]:
    """
    The exceptions txredisapi raises when a connection is missing or lost
    (its C{TimeoutError}, a reply that did not come, is one of them).
    """
    return (txredisapi.ConnectionError,) if txredisapi is not None else ()


def connectPool(config: StateConfig, poolSize: int) -> Any:
    """
    Open a lazy pool of C{poolSize} connections to the Redis of C{config}:
    it returns at once, connects in the background and reconnects with
    backoff by itself.

    Values are not decoded (C{charset=None}: bulk replies are L{bytes}) and
    numbers are not guessed (C{convertNumbers=False}: an integer reply is an
    L{int}, a bulk reply stays L{bytes}).  A reply later than
    C{config.timeout} drops its connection (C{replyTimeout}), so that a
    hung server does not pile up commands.

    @return: txredisapi's connection handler.
    @raise RuntimeError: If txredisapi is missing, or too old for an ACL
        user name.
    """
    if txredisapi is None:
        raise RuntimeError(
            "state.redis: the shared state needs txredisapi, which is not "
            "installed (pip install 'twisted_rproxy[redis]')"
        )
    options: dict[str, Any] = {
        # Database 0 is every connection's own: no SELECT round trip (and
        # one less way for a slow server to fail a new connection).
        "dbid": config.db or None,
        "poolsize": poolSize,
        "reconnect": True,
        "charset": None,
        "password": config.password,
        "connectTimeout": max(CONNECT_TIMEOUT, config.timeout),
        "replyTimeout": config.timeout,
        "convertNumbers": False,
    }
    if config.username is not None:
        options["username"] = config.username
    if config.scheme == "unix":
        connect = txredisapi.lazyUnixConnectionPool
        options["path"] = config.path
    else:
        connect = txredisapi.lazyConnectionPool
        options["host"] = config.host
        options["port"] = config.port
        if config.tls:
            # Verified against the system's trust roots and the host name;
            # txredisapi's own default (ClientContextFactory) verifies
            # nothing.
            assert config.host is not None
            options["ssl_context_factory"] = optionsForClientTLS(config.host)
    unknown = set(options) - set(inspect.signature(connect).parameters)
    if unknown:
        raise RuntimeError(
            f"state.redis: this txredisapi does not take {', '.join(sorted(unknown))}"
            " (pip install 'twisted_rproxy[redis]' brings a recent one)"
        )
    handler = connect(**options)
    # A lazy pool's "connected" Deferred fails when a connection is refused
    # for good (a wrong password): nobody else waits on it, and we report
    # outages ourselves, so it must not be logged as an unhandled error.
    handler._connected.addErrback(lambda failure: None)
    return handler


def poolSize(handler: Any) -> int:
    """
    How many of the pool's connections are up and ready (authenticated, the
    database selected).
    """
    size: int = handler._factory.size
    return size


def poolGaveUp(handler: Any) -> bool:
    """
    Whether the pool stopped reconnecting: txredisapi stops for good when
    C{AUTH} or C{SELECT} fails on a new connection (a wrong password, or a
    server too slow to answer them), or once disconnected.
    """
    return bool(handler._factory.stopped)
