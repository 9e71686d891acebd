"""
The C{[state]} table's value: L{StateConfig}, the shared Redis that several
proxies (worker processes, instances on other machines) keep their caches,
rate limits and locks in, and L{parseRedisURL}, which reads its C{redis}
URL once.

This module imports nothing of the configuration but L{base}, so that the
model can hold a L{StateConfig}; the table itself is read by
L{twisted_rproxy.config.statetable}.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import field, frozen

from twisted_rproxy.config.base import COMMAND_LINE, ConfigError

#: The values of C{on_error}: what a feature built on the shared state does
#: while Redis cannot be reached.
ON_ERROR = ("local", "open", "closed")

#: Redis' own port, when the URL gives none.
DEFAULT_REDIS_PORT = 6379

#: The default C{key_prefix}.
DEFAULT_KEY_PREFIX = "rproxy:"

#: The default C{timeout}, in seconds.
DEFAULT_STATE_TIMEOUT = 0.25

_SCHEMES = ("redis", "rediss", "unix")

_EXPECTED = (
    "expected redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss://... (TLS) or "
    "unix://[USER:PASSWORD@]/PATH[?db=DB]"
)

_DB = re.compile(r"[0-9]{1,9}\Z")

# What a host may hold: a DNS name or an IPv4 address (IPv6 literals are
# checked by urlsplit, between brackets).
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\Z")


@frozen
class StateConfig:
    """
    The shared state (C{[state]}): a Redis (or Valkey) server that several
    proxies use together.

    The URL is parsed once, into the fields below; C{url} and C{password}
    are left out of C{repr} so that a logged configuration holds no secret.

    @ivar url: The C{redis} URL as written (it may hold a password: log
        L{displayURL} instead).
    @ivar scheme: C{"redis"}, C{"rediss"} (TLS) or C{"unix"}.
    @ivar host: The host name or IP address (without the brackets of an
        IPv6 literal), or L{None} for a Unix socket.
    @ivar port: The TCP port (6379 when the URL gives none; unused for a
        Unix socket).
    @ivar path: The Unix socket's absolute path, or L{None} over TCP.
    @ivar db: The database number (C{SELECT}), 0 by default.
    @ivar username: The ACL user name (Redis 6 and later), percent-decoded,
        or L{None}.
    @ivar password: The password, percent-decoded, or L{None}.
    @ivar displayURL: The URL without its password, for logs and the admin
        page.
    @ivar keyPrefix: The prefix of every key the proxy writes.
    @ivar timeout: Seconds any one operation may take before it fails as an
        outage.
    @ivar onError: What features do while Redis is unreachable: C{"local"}
        (fall back to per-process state), C{"open"} (let requests through)
        or C{"closed"} (refuse them with 503).
    """

    url: str = field(repr=False)
    scheme: str
    host: str | None
    port: int
    path: str | None
    db: int
    username: str | None
    password: str | None = field(repr=False)
    displayURL: str
    keyPrefix: str = DEFAULT_KEY_PREFIX
    timeout: float = DEFAULT_STATE_TIMEOUT
    onError: str = "local"

    @property
    def tls(self) -> bool:
        """
        Whether the connection is made over TLS (C{rediss://}).
        """
        return self.scheme == "rediss"

    @classmethod
    def fromURL(
        cls,
        url: str,
        keyPrefix: str = DEFAULT_KEY_PREFIX,
        timeout: float = DEFAULT_STATE_TIMEOUT,
        onError: str = "local",
        source: str = COMMAND_LINE,
        key: str = "state.redis",
    ) -> StateConfig:
        """
        The L{StateConfig} of a Redis URL, for code that builds its
        configuration itself (an embedding application, tests).

        @param url: See L{parseRedisURL}.
        @param source: The file named by errors.
        @param key: The key named by errors.
        @raise ConfigError: If C{url} is not a Redis URL, or C{onError} is
            not one of L{ON_ERROR}, or C{timeout} is not positive.
        """
        if onError not in ON_ERROR:
            raise ConfigError(
                source,
                "state.on_error",
                f"must be one of {_choices()}, got {onError!r}",
            )
        if not timeout > 0:
            raise ConfigError(
                source, "state.timeout", f"must be greater than 0, got {timeout!r}"
            )
        return parseRedisURL(url, source, key, keyPrefix, timeout, onError)


def _choices() -> str:
    return ", ".join(f'"{value}"' for value in ON_ERROR)


def _redacted(url: str) -> str:
    """
    C{url} with the password of its user information (if any) replaced by
    C{***}, for error messages.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, tail = rest.partition("/")
    userinfo, at, hostport = authority.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hostport}{slash}{tail}"


def parseRedisURL(
    url: str,
    source: str,
    key: str,
    keyPrefix: str = DEFAULT_KEY_PREFIX,
    timeout: float = DEFAULT_STATE_TIMEOUT,
    onError: str = "local",
) -> StateConfig:
    """
    Parse a Redis URL into a L{StateConfig}.

    Accepted: C{redis://[USER:PASSWORD@]HOST[:PORT][/DB]}, the same with
    C{rediss://} (TLS, the server's certificate checked against the system's
    trust roots), and C{unix://[USER:PASSWORD@]/PATH[?db=DB]}.  The user
    name and password are percent-decoded (a C{@} or C{:} in a password is
    written C{%40}, C{%3A}).

    @param url: The URL as written.
    @param source: The file named by errors.
    @param key: The key named by errors (C{"state.redis"}).
    @return: The parsed configuration, with the other fields given.
    @raise ConfigError: For anything but such a URL; the message never holds
        the password.
    """
    shown = _redacted(url)

    def error(message: str) -> ConfigError:
        return ConfigError(source, key, f"{message} in {shown!r} ({_EXPECTED})")

    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(
            source,
            key,
            f"invalid Redis URL {shown!r}: spaces and control characters are "
            f"not allowed ({_EXPECTED})",
        )
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(source, key, f"not a URL: {shown!r} ({_EXPECTED})")
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise error(f"unsupported scheme {scheme!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        # urlsplit's messages hold no part of the URL ("Port out of range
        # 0-65535", "Invalid IPv6 URL", "Port could not be cast...").
        raise error(f"invalid URL: {e}") from None
    if parts.fragment or url.endswith("#"):
        raise error("a fragment (#...) is not allowed")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        password = None
    if username is not None and password is None:
        raise error("a user name needs a password (USER:PASSWORD@)")
    query = parse_qsl(parts.query, keep_blank_values=True) if parts.query else []
    if parts.query and not query:
        raise error(f"invalid query {parts.query!r}")
    host: str | None
    path: str | None
    if scheme == "unix":
        if parts.hostname or port is not None:
            raise error("a Unix socket URL has no host: write unix:///PATH")
        path = unquote(parts.path)
        if not path.startswith("/") or path == "/":
            raise error("a Unix socket URL needs the socket's absolute path")
        db = 0
        for name, value in query:
            if name != "db":
                raise error(f"unknown parameter {name!r} (only db=N is allowed)")
            if not _DB.match(value):
                raise error(f"the database must be a number, got {value!r}")
            db = int(value)
        host, port = None, DEFAULT_REDIS_PORT
        where = path + (f"?db={db}" if db else "")
    else:
        if query:
            raise error("parameters (?...) are not allowed: give the database as /DB")
        host = parts.hostname
        if not host:
            raise error("missing host")
        if ":" not in host and not _HOST.match(host):
            raise error(f"invalid host {host!r}")
        if port is None:
            if parts.netloc.endswith(":"):
                raise error("empty port")
            port = DEFAULT_REDIS_PORT
        elif not 1 <= port <= 65535:
            raise error(f"port {port} is out of range (expected 1 to 65535)")
        dbText = parts.path[1:] if parts.path.startswith("/") else parts.path
        if dbText and not _DB.match(dbText):
            raise error(
                f"the path must be a database number (/0, /1...), got {parts.path!r}"
            )
        db = int(dbText) if dbText else 0
        path = None
        hostText = f"[{host}]" if ":" in host else host
        where = f"{hostText}:{port}/{db}"
    userText = ""
    if password is not None:
        userText = f"{username or ''}:***@"
    return StateConfig(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        path=path,
        db=db,
        username=username,
        password=password,
        displayURL=f"{scheme}://{userText}{where}",
        keyPrefix=keyPrefix,
        timeout=timeout,
        onError=onError,
    )
