"""
The interfaces of twisted_rproxy, in one place.

Implementations declare them with C{@implementer}; third parties implement
them to plug their own pieces in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
)
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    # Only for annotations: twisted_rproxy.pool imports this module.
    from twisted_rproxy.pool import Backend, BackendRequest


class IProxyReactor(IReactorTCP, IReactorSSL, IReactorTime, IReactorCore):
    """
    The reactor the proxy's pieces are given: TCP and TLS sockets, time,
    and the core (system event triggers). Only C{twisted_rproxy.tap}
    imports the global reactor; everything else takes one of these.
    """


class IBackendServer(Interface):
    """
    One backend server as a balancer sees it.
    """

    weight = Attribute("The server's relative weight, an L{int} >= 1.")
    available = Attribute(
        "L{True} when the server can take one more request now (it is not "
        "at its connection limit)."
    )


class IBalancer(Interface):
    """
    Chooses the backend server for each request of a pool.

    A balancer is pure bookkeeping: it sees the servers and answers; it does
    no I/O and reads no clock.
    """

    def pick(servers: list[Backend], request: BackendRequest) -> Backend | None:
        """
        Choose a server for a request.

        @param servers: The pool's servers, a list of
            L{twisted_rproxy.pool.Backend} (each an L{IBackendServer}); the
            balancer reads it and does not change it.
        @param request: The L{twisted_rproxy.pool.BackendRequest} to place.
        @return: One of C{servers} whose C{available} is true, or L{None}
            when none can take the request now.
        """


class IResponseReceiver(Interface):
    """
    What a L{twisted_rproxy.pool.BackendPool} reports one exchange's
    progress to: the response head, the body as it arrives, the end, or why
    it failed.
    """

    def responseStarted(
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        connection: object,
    ) -> None:
        """
        The backend's final (non-1xx) response head arrived.

        @param connection: An L{twisted.internet.interfaces.IPushProducer}
            for the backend connection's reading, so that the receiver can
            pause the backend while its own consumer is slow.
        """

    def responseData(data: bytes) -> None:
        """
        A piece of the (de-chunked) response body arrived.
        """

    def responseFinished() -> None:
        """
        The response body is complete.
        """

    def requestFailed(reason: object) -> None:
        """
        The exchange failed; C{reason} is a
        L{twisted_rproxy.pool.BackendError}. Called at most once, either
        before C{responseStarted} (no response byte was received) or after
        it (the response was cut short).
        """
