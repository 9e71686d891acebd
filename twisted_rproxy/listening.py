"""
How the proxy opens its listening sockets: the endpoint description it
listens with (the configured one, with the listen queue length, the
C{backlog}, the listener asks for) and the adoption of a socket that a
supervising process opened (see L{twisted_rproxy.workers}).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort

from twisted_rproxy._twisted import closeWithoutShutdown
from twisted_rproxy.config import ServerConfig

#: The listen queue length of a listener whose configuration gives none, as
#: nginx's: Twisted's default of 50 overflows under a burst of connections
#: (the kernel then drops the SYNs past it, and those clients wait a second
#: or more to try again). The kernel caps it at C{net.core.somaxconn}.
DEFAULT_BACKLOG = 511

#: The endpoint types whose parser takes a C{backlog} argument, and the
#: position of that argument among their positional ones (the type
#: excepted).
_BACKLOG_POSITIONS = {"tcp": 2, "tcp6": 1, "unix": 2, "ssl": 6}


def _splitDescription(description: str) -> list[str]:
    """
    The colon-separated parts of an endpoint description, as Twisted's
    parser splits them (a backslash escapes the next character; the
    backslashes are kept).
    """
    parts: list[str] = []
    current: list[str] = []
    escaped = False
    for character in description:
        if escaped:
            current.append(character)
            escaped = False
        elif character == "\\":
            current.append(character)
            escaped = True
        elif character == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(character)
    parts.append("".join(current))
    return parts


def _isKeyword(part: str) -> bool:
    """
    Whether a part of a description is a C{key=value} argument: it holds an
    C{=} that no backslash escapes.
    """
    escaped = False
    for character in part:
        if escaped:
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == "=":
            return True
    return False


def withBacklog(description: str, backlog: int) -> str:
    """
    C{description} with C{backlog=BACKLOG} added, if it names an endpoint
    type that takes one (C{tcp}, C{tcp6}, C{unix}, C{ssl}) and does not give
    its own (as a keyword or positionally): the description's own wins.

    @param description: A Twisted server endpoint description, such as
        C{"tcp:8080:interface=127.0.0.1"}.
    @param backlog: The listen queue length.
    @return: The description to give to C{serverFromString}.
    """
    parts = _splitDescription(description)
    position = _BACKLOG_POSITIONS.get(parts[0].strip().lower())
    if position is None:
        return description
    positional = [part for part in parts[1:] if not _isKeyword(part)]
    keywords = [part.split("=", 1)[0] for part in parts[1:] if _isKeyword(part)]
    if len(positional) > position or "backlog" in keywords:
        return description
    return f"{description}:backlog={backlog}"


def listeningDescription(server: ServerConfig, description: str) -> str:
    """
    The endpoint description a listener on C{description} listens with:
    C{description} with its listener's C{backlog} (see
    L{twisted_rproxy.config.ListenerConfig}), or L{DEFAULT_BACKLOG}.

    @param server: The C{[server]} settings, which hold those of the
        listeners given as tables (of C{[server]} and C{[[tls]]}).
    @param description: The endpoint as configured.
    """
    listener = server.listeners.get(description)
    backlog = listener.backlog if listener is not None else None
    return withBacklog(description, DEFAULT_BACKLOG if backlog is None else backlog)


def adoptListener(
    reactor: Any, fileDescriptor: int, addressFamily: int, factory: Any
) -> IListeningPort:
    """
    Accept connections with C{factory} on a listening socket inherited from
    a supervising process, and close the inherited descriptor.

    The reactor listens on a copy of the descriptor (see
    L{IReactorSocket.adoptStreamPort
    <twisted.internet.interfaces.IReactorSocket.adoptStreamPort>}), and
    stopping that port closes the copy without shutting the shared socket
    down (the other processes go on accepting on it). The inherited one,
    left open, would hold the socket for as long as the process runs: with
    the supervisor gone, the socket would go on listening after the port
    stopped, and new connections would wait in its queue, unanswered.

    @param reactor: An L{IReactorSocket
        <twisted.internet.interfaces.IReactorSocket>} provider.
    @param fileDescriptor: The inherited listening socket.
    @param addressFamily: Its address family, such as C{socket.AF_INET}.
    @param factory: The factory of the accepted connections.
    """
    try:
        port: IListeningPort = reactor.adoptStreamPort(
            fileDescriptor, addressFamily, factory
        )
    finally:
        os.close(fileDescriptor)
    return port


def releaseListener(port: IListeningPort) -> Deferred[None] | None:
    """
    Stop C{port} and close this process's descriptor of its socket without
    shutting the socket down, so that other processes holding it (the
    workers) go on accepting until they stop listening themselves; the
    socket closes, and new connections are refused, when the last of them
    does.

    A plain C{stopListening} shuts a port it opened down (C{shutdown(2)}):
    every process that then polls the socket meets C{EINVAL} in its
    C{accept}, which twisted.web logs as an unhandled error.

    Twisted's TCP port is told so through the fence
    (L{twisted_rproxy._twisted.closeWithoutShutdown}).

    @return: What C{stopListening} returns (a L{Deferred} or L{None}).
    """
    closeWithoutShutdown(port)
    stopped: Deferred[None] | None = port.stopListening()
    return stopped
