"""
The C{[state]} table (its value, L{StateConfig}, is in
L{twisted_rproxy.config.state}), and the checks of what depends on it: a
cache's C{store = "redis"}.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from twisted_rproxy.config.model import CacheConfig, ConfigError
from twisted_rproxy.config.state import (
    DEFAULT_KEY_PREFIX,
    DEFAULT_STATE_TIMEOUT,
    ON_ERROR,
    StateConfig,
    parseRedisURL,
)
from twisted_rproxy.config.values import _joinKey, _Table

_STATE_KEYS = ("redis", "key_prefix", "timeout", "on_error")

#: What C{pip install} brings the Redis client.
REDIS_EXTRA = "pip install 'twisted_rproxy[redis]'"


def redisClientAvailable() -> bool:
    """
    Whether txredisapi, the Redis client that L{twisted_rproxy.state} uses,
    is installed (it is the optional extra C{redis}).
    """
    return importlib.util.find_spec("txredisapi") is not None


def _parseState(value: object, source: str) -> StateConfig:
    """
    Parse the C{[state]} table.
    """
    table = _Table(value, source, "state")
    table.checkKeys(_STATE_KEYS)
    url = table.optionalString("redis")
    if url is None:
        raise table.error(
            "redis",
            "is required: the URL of the shared Redis, such as "
            '"redis://127.0.0.1:6379/0"',
        )
    keyPrefix = table.optionalString("key_prefix")
    if keyPrefix is None:
        keyPrefix = DEFAULT_KEY_PREFIX
    elif any(c.isspace() or not c.isprintable() for c in keyPrefix):
        raise table.error("key_prefix", "must not hold spaces or control characters")
    elif len(keyPrefix.encode("utf-8")) > 256:
        raise table.error("key_prefix", "must be at most 256 bytes long")
    onError = table.optionalString("on_error")
    if onError is None:
        onError = "local"
    elif onError not in ON_ERROR:
        choices = ", ".join(f'"{choice}"' for choice in ON_ERROR)
        raise table.error("on_error", f"must be one of {choices}, got {onError!r}")
    timeout = table.timeout("timeout", DEFAULT_STATE_TIMEOUT)
    state = parseRedisURL(
        url, source, table.keyOf("redis"), keyPrefix, timeout, onError
    )
    if not redisClientAvailable():
        raise table.error(
            "redis",
            f"needs txredisapi, which is not installed ({REDIS_EXTRA})",
        )
    return state


def _checkCacheStores(
    caches: Mapping[str, CacheConfig], state: StateConfig | None, source: str
) -> None:
    """
    Reject a cache stored in Redis (C{store = "redis"}) without C{[state]}.
    """
    if state is not None:
        return
    for name, cache in caches.items():
        if cache.store == "redis":
            raise ConfigError(
                source,
                _joinKey(_joinKey("caches", name), "store"),
                '"redis" needs a [state] table (its redis URL) to store in',
            )
