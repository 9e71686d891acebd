"""
Backend URLs: C{http(s)://HOST[:PORT]} and the unix-socket form
C{http(s)://unix:/PATH}; the server names that TLS over a unix socket
needs; and what C{--check} says of socket files that are missing.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import stat
import sys
from collections.abc import Sequence

from twisted_rproxy.config.model import (
    _HOST_NAME,
    BackendServer,
    Config,
    ConfigError,
)

#: What a unix-socket backend's authority starts with.
UNIX_PREFIX = "unix:"


#: The C{Host} of a unix-socket backend: what C{host_header = "backend"}
#: sends it, as nginx does for its unix upstreams.
UNIX_HOST = "localhost"


#: The longest socket path the system can connect to, in bytes: C{sun_path}
#: holds 108 bytes on Linux, 104 on the BSDs and macOS, with the final NUL.
MAX_SOCKET_PATH = 107 if sys.platform.startswith("linux") else 103


#: What a malformed TCP backend URL's error says is expected (the unix form
#: has errors of its own).
_EXPECTED = "expected http://HOST[:PORT] or https://HOST[:PORT]"


def _parseBackendURL(
    url: str,
    source: str,
    key: str,
    weight: int = 1,
    tlsServerName: str | None = None,
) -> BackendServer:
    """
    Validate one backend URL: C{http} or C{https}, then a host and an
    optional port from 1 to 65535, or C{unix:} and the absolute path of a
    unix socket; and nothing else but an optional C{"/"} path after a host.

    @param tlsServerName: The entry's own C{tls_server_name}, already
        checked (L{_serverName}), or L{None}; the caller checks that the
        server is an C{https} one.
    @raise ConfigError: Naming C{source} and C{key}.
    """
    expected = _EXPECTED
    if not url or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(source, key, f"invalid backend URL {url!r} ({expected})")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(source, key, f"not a URL: {url!r} ({expected})")
    scheme = scheme.lower()
    if scheme not in ("http", "https"):
        raise ConfigError(
            source,
            key,
            f"unsupported scheme {scheme!r} in {url!r} (expected http or https)",
        )
    for marker, what in (("?", "a query"), ("#", "a fragment")):
        if marker in rest:
            raise ConfigError(
                source, key, f"backend URL {url!r} must not contain {what}"
            )
    if rest[: len(UNIX_PREFIX)].lower() == UNIX_PREFIX:
        path = _socketPath(rest[len(UNIX_PREFIX) :], url, source, key)
        return BackendServer(
            url=url,
            scheme=scheme,
            host=UNIX_HOST,
            port=80 if scheme == "http" else 443,
            weight=weight,
            socketPath=path,
            tlsServerName=tlsServerName,
        )
    netloc, slash, path = rest.partition("/")
    if slash and path:
        raise ConfigError(
            source,
            key,
            f"backend URL {url!r} must not contain a path ('/{path}'); "
            "a backend URL names a server only",
        )
    if "@" in netloc:
        raise ConfigError(
            source, key, f"backend URL {url!r} must not contain user information"
        )
    host, port = _hostAndPort(netloc, scheme, url, source, key)
    return BackendServer(
        url=url,
        scheme=scheme,
        host=host,
        port=port,
        weight=weight,
        tlsServerName=tlsServerName,
    )


def _hostAndPort(
    netloc: str, scheme: str, url: str, source: str, key: str
) -> tuple[str, int]:
    """
    The host and port of a TCP backend URL's authority.
    """
    expected = _EXPECTED
    portText: str | None
    if netloc.startswith("["):
        end = netloc.find("]")
        if end == -1:
            raise ConfigError(
                source, key, f"unterminated IPv6 address in backend URL {url!r}"
            )
        host = netloc[1:end].lower()
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(
                source, key, f"invalid IPv6 address {host!r} in backend URL {url!r}"
            ) from None
        after = netloc[end + 1 :]
        if after and not after.startswith(":"):
            raise ConfigError(source, key, f"invalid backend URL {url!r} ({expected})")
        portText = after[1:] if after else None
    else:
        host, colon, portText = netloc.partition(":")
        host = host.lower().removesuffix(".") if host != "." else host
        if not colon:
            portText = None
        if not host:
            raise ConfigError(
                source, key, f"backend URL {url!r} has no host ({expected})"
            )
        if portText is not None and ":" in portText:
            raise ConfigError(
                source,
                key,
                f"invalid backend URL {url!r}: write IPv6 addresses in "
                "brackets, like http://[::1]:8001",
            )
        if not _HOST_NAME.match(host):
            raise ConfigError(
                source, key, f"invalid host {host!r} in backend URL {url!r}"
            )
    if not portText:
        return host, 80 if scheme == "http" else 443
    if not (portText.isascii() and portText.isdigit()):
        raise ConfigError(
            source, key, f"invalid port {portText!r} in backend URL {url!r}"
        )
    port = int(portText)
    if not 1 <= port <= 65535:
        raise ConfigError(
            source,
            key,
            f"port {port} in backend URL {url!r} is out of range "
            "(expected 1 to 65535)",
        )
    return host, port


def _socketPath(path: str, url: str, source: str, key: str) -> str:
    """
    Check the socket path of a C{unix:} backend URL and normalize it
    (C{/run/./app.sock} is C{/run/app.sock}).
    """
    example = "like http://unix:/run/app.sock"
    if not path:
        raise ConfigError(
            source, key, f"backend URL {url!r} names no socket path ({example})"
        )
    if path.startswith("@"):
        raise ConfigError(
            source,
            key,
            f"backend URL {url!r}: abstract unix sockets are not supported; "
            f"give the absolute path of a socket file ({example})",
        )
    if not path.startswith("/"):
        raise ConfigError(
            source,
            key,
            f"the socket path {path!r} in backend URL {url!r} must be absolute "
            f"({example})",
        )
    if ":" in path:
        raise ConfigError(
            source,
            key,
            f"the socket path {path!r} in backend URL {url!r} must not contain "
            "':' (a backend URL names a server only; the path a request goes "
            "to is the client's)",
        )
    normalized = os.path.normpath(path)
    if path.endswith("/") or normalized == "/":
        raise ConfigError(
            source,
            key,
            f"the socket path {path!r} in backend URL {url!r} names a "
            "directory, not a socket",
        )
    size = len(os.fsencode(normalized))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            source,
            key,
            f"the socket path {path!r} in backend URL {url!r} is {size} bytes "
            f"long; a unix socket path may be at most {MAX_SOCKET_PATH}",
        )
    return normalized


def _serverName(value: str, source: str, key: str) -> str:
    """
    A C{tls_server_name}: a host name, lowercased, without a final dot.
    """
    normalized = value.strip().lower().removesuffix(".")
    if not _HOST_NAME.match(normalized):
        raise ConfigError(
            source,
            key,
            f"invalid server name {value!r} (expected a host name like "
            '"app.internal")',
        )
    return normalized


def _checkUnixServerNames(
    servers: Sequence[BackendServer],
    poolServerName: str | None,
    verify: bool,
    source: str,
    keys: Sequence[str],
) -> None:
    """
    Reject an C{https://unix:} server that has no name to verify its
    certificate against: a socket path is not one, and C{localhost} would
    be a guess.

    @param poolServerName: The pool's C{tls_server_name}, or L{None}.
    @param verify: The pool's C{tls_verify}: without verification, no name
        is needed (and none is sent by SNI).
    """
    if poolServerName is not None or not verify:
        return
    for index, server in enumerate(servers):
        if (
            server.socketPath is not None
            and server.scheme == "https"
            and server.tlsServerName is None
        ):
            raise ConfigError(
                source,
                keys[index],
                f"{server.url!r} is https over a unix socket: give the name "
                "its certificate carries (verified, and sent by SNI) as the "
                "pool's tls_server_name or in the entry, like "
                f'{{ url = "{server.url}", tls_server_name = "app.internal" }}',
            )


def unixSocketWarnings(config: Config) -> list[str]:
    """
    What C{--check} (and start-up) warns of the unix-socket backends of
    C{config}: a socket file that does not exist, is not a socket, or that
    this user may not connect to. These are warnings, not errors: a
    backend started after the proxy creates its socket then.

    @return: One line per server, each naming its key and URL.
    """
    warnings: list[str] = []
    for name, pool in config.pools.items():
        for index, server in enumerate(pool.servers):
            path = server.socketPath
            if path is None:
                continue
            problem = _socketProblem(path)
            if problem is not None:
                warnings.append(
                    f"pools.{name}.servers[{index}]: {server.url}: {problem}"
                )
    return warnings


def _socketProblem(path: str) -> str | None:
    """
    Why connecting to the unix socket C{path} would fail now, or L{None}.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return (
            f"the socket {path} does not exist (yet): requests to this "
            "server fail until its backend listens there"
        )
    except OSError as e:
        reason = e.strerror or errno.errorcode.get(e.errno or 0, str(e))
        return f"the socket {path} cannot be checked: {reason}"
    if not stat.S_ISSOCK(mode):
        if stat.S_ISDIR(mode):
            kind = " but a directory"
        elif stat.S_ISREG(mode):
            kind = " but a regular file"
        else:
            kind = ""
        return (
            f"{path} is not a unix socket{kind}: requests to this server fail "
            "until its backend listens there"
        )
    if not os.access(path, os.W_OK):
        return (
            f"this user may not write to the socket {path}: connecting to it "
            "will be refused (permission denied)"
        )
    return None
