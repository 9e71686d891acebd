"""
L{BlockingACMEClient}'s cancellation at its step boundaries (what
L{ACMEManager.stop} relies on), without a CA.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.acme import ACMEStorage, BlockingACMEClient, OrderCancelled
from twisted_rproxy.acme.client import POLL_WINDOW, _pollAuthorizations


class _PollingACME:
    """
    The part of the library's C{ClientV2} that L{_pollAuthorizations}
    uses: pending for C{rounds} rounds, then valid.
    """

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.calls: list[datetime.datetime] = []

    def poll_authorizations(self, orderr: object, deadline: datetime.datetime) -> str:
        from acme import errors

        self.calls.append(deadline)
        if len(self.calls) <= self.rounds:
            raise errors.TimeoutError()
        return "polled"


class CancellationTests(SynchronousTestCase):
    """
    L{BlockingACMEClient.order} gives up at its step boundaries once its
    C{cancelled} says so.
    """

    def test_cancelledBeforeStart(self) -> None:
        """
        A cancelled order raises L{OrderCancelled} before any request to
        the CA (none could be answered: the directory URL is unroutable).
        """
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory, True)
        key = ACMEStorage(directory).accountKey("https://ca.invalid/dir")
        client = BlockingACMEClient("https://ca.invalid/dir", key)
        with self.assertRaises(OrderCancelled) as caught:
            client.order(
                ["app.example.com"],
                b"",
                "http-01",
                lambda *a: None,
                lambda *a: None,
                cancelled=lambda: True,
            )
        self.assertIn("app.example.com", str(caught.exception))
        self.assertIsNone(client.accountURL)

    def test_pollingRoundsCheckCancel(self) -> None:
        """
        Polling goes in short rounds with a look at the cancellation
        between them, until the authorizations are done.
        """
        acme = _PollingACME(rounds=2)
        checks: list[int] = []
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
        result = _pollAuthorizations(acme, None, deadline, lambda: checks.append(1))
        self.assertEqual(result, "polled")
        self.assertEqual(len(acme.calls), 3)
        self.assertEqual(len(checks), 3)
        for roundEnd in acme.calls:
            self.assertLessEqual(roundEnd, deadline)
            self.assertLessEqual(
                roundEnd - datetime.datetime.now(),
                datetime.timedelta(seconds=POLL_WINDOW),
            )

    def test_pollingCancelled(self) -> None:
        """
        A cancellation seen between two rounds ends the polling.
        """
        acme = _PollingACME(rounds=100)
        checks: list[int] = []

        def checkpoint() -> None:
            checks.append(1)
            if len(checks) == 3:
                raise OrderCancelled("cancelled")

        deadline = datetime.datetime.now() + datetime.timedelta(seconds=60)
        with self.assertRaises(OrderCancelled):
            _pollAuthorizations(acme, None, deadline, checkpoint)
        self.assertEqual(len(acme.calls), 2)

    def test_pollingTimesOutAtDeadline(self) -> None:
        """
        Past the order's deadline, the library's timeout is raised.
        """
        from acme import errors

        acme = _PollingACME(rounds=100)
        deadline = datetime.datetime.now() - datetime.timedelta(seconds=1)
        with self.assertRaises(errors.TimeoutError):
            _pollAuthorizations(acme, None, deadline, lambda: None)
        self.assertEqual(len(acme.calls), 1)
