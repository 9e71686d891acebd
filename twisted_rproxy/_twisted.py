"""
The fence: every use of a private name of Twisted or pyOpenSSL, in this one
module, and nowhere else in the package.

Each is here because no public API does the job (or, where one does, it is
taken first and the private name is the fallback), and each has a test in
C{tests/test_fence.py} that fails, naming the installed Twisted or pyOpenSSL
version, when a release changes what it relies on. C{tox -e tests-oldest}
and C{tox -e tests-newest} run those tests against the oldest Twisted the
package supports and the newest.

Rule for the rest of the package: no C{._name} of another project's object;
add a function here, with its test.
"""

from __future__ import annotations

from typing import Any

import twisted
from twisted.internet.tcp import Client as _TCPClient
from twisted.internet.tcp import Server as _TCPServer

#: The installed Twisted, for the fence tests' messages.
TWISTED_VERSION: str = twisted.__version__


# --- twisted.web.http.Request ---------------------------------------------


def requestGone(request: Any) -> bool:
    """
    Whether the connection of C{request} was lost before its response was
    finished.

    twisted.web's C{Request.connectionLost} sets C{_disconnected}; no public
    attribute tells it (C{notifyFinish} does, but only to those who asked
    before). A request of another kind (without the attribute) is taken as
    connected.
    """
    return getattr(request, "_disconnected", False) is True


# --- twisted.web.http.HTTPChannel (server/channel.py) ---------------------


# --- twisted.internet.tcp: writing without a reactor turn -------------------

_PLAIN_TCP = (_TCPClient, _TCPServer)


def writeThrough(transport: Any, data: bytes) -> None:
    """
    Write C{data} to a plain TCP transport at once when nothing is queued
    before it, and leave only what the socket did not take to the
    transport.

    A Twisted transport queues every write until the reactor's next turn,
    which costs a turn and two C{epoll_ctl} calls; a request head, or a
    small response, almost always fits in the socket buffer at once. Other
    transports (TLS, memory) get an ordinary C{write}.

    It reads the transport's private queue (C{dataBuffer} and
    C{_tempDataBuffer} of L{twisted.internet.abstract.FileDescriptor}): no
    public attribute says whether a write is pending.
    """
    if (
        type(transport) in _PLAIN_TCP
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and not transport.disconnecting
    ):
        try:
            sent = transport.socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let the transport meet the error the ordinary way.
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


# --- TLS: OpenSSL and twisted.internet._sslverify (tls) --------------------


# --- other -----------------------------------------------------------------
