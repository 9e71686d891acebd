"""
The fence (L{twisted_rproxy._twisted}): each private Twisted or pyOpenSSL
name it relies on still means what it did. A failure here names the
installed version: the fence function must change for it (and the oldest
and newest supported releases be run again: tox -e tests-oldest,tests-newest).
"""

from __future__ import annotations

from twisted.internet import abstract, tcp
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from twisted_rproxy import _twisted
from twisted_rproxy._twisted import TWISTED_VERSION


def _changed(what: str) -> str:
    return f"Twisted {TWISTED_VERSION} changed {what}: update twisted_rproxy._twisted"


class RequestTests(SynchronousTestCase):
    """
    What the fence reads of twisted.web's L{Request}.
    """

    def test_requestGone(self) -> None:
        request = Request(DummyChannel())
        message = _changed("Request._disconnected")
        self.assertFalse(_twisted.requestGone(request), message)
        request.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(_twisted.requestGone(request), message)

    def test_otherRequest(self) -> None:
        """
        A request-like object without the attribute is connected.
        """
        self.assertFalse(_twisted.requestGone(object()))


# --- twisted.web.http.HTTPChannel -----------------------------------------


# --- twisted.internet.tcp: writeThrough -----------------------------------


class _Reactor:
    def addWriter(self, writer: object) -> None:
        pass

    def removeWriter(self, writer: object) -> None:
        pass


class WriteThroughTests(SynchronousTestCase):
    """
    What L{_twisted.writeThrough} reads of a transport: a write not yet
    sent shows in C{dataBuffer} or C{_tempDataBuffer}.
    """

    def test_pendingWriteVisible(self) -> None:
        for kind in (tcp.Server, tcp.Client):
            self.assertTrue(
                issubclass(kind, abstract.FileDescriptor),
                _changed(f"{kind.__name__}'s base class"),
            )
        transport = abstract.FileDescriptor(reactor=_Reactor())  # type: ignore[arg-type]
        message = _changed("FileDescriptor.dataBuffer/_tempDataBuffer")
        self.assertFalse(transport.dataBuffer, message)
        self.assertEqual(transport._tempDataBuffer, [], message)
        transport.connected = True
        transport.write(b"queued")
        self.assertTrue(
            transport.dataBuffer or transport._tempDataBuffer, message
        )

    def test_otherTransport(self) -> None:
        """
        A transport that is not plain TCP gets an ordinary write.
        """
        transport = StringTransport()
        _twisted.writeThrough(transport, b"data")
        self.assertEqual(transport.value(), b"data")


# --- TLS --------------------------------------------------------------------


# --- other ------------------------------------------------------------------
