"""
L{ACMEManager}: the certificates of C{[[tls]] acme_domains}, kept valid.

For each group it serves the stored certificate (if it covers the group's
domains and has not expired), renews it ahead of expiry (with jitter),
orders it when there is none, and retries a failed order with backoff
while the old certificate stays in service.  One process orders at a time
(L{OrderLock}); the others watch the storage and serve what it wrote.  The
blocking ACME calls run in the reactor's thread pool.
"""

from __future__ import annotations

import datetime
import random
import threading
from collections.abc import Callable, Sequence

from attrs import define, frozen
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_rproxy.acme.challenges import ChallengeResponder
from twisted_rproxy.acme.client import (
    BlockingACMEClient,
    OrderCancelled,
    describeACMEError,
)
from twisted_rproxy.acme.lock import FileLock, OrderLock, RedisLock
from twisted_rproxy.acme.runner import ACMEClient, SynchronousRunner, ThreadRunner
from twisted_rproxy.acme.schedule import renewalTime, retryDelay
from twisted_rproxy.acme.storage import ACMEStorage, newPrivateKeyPEM
from twisted_rproxy.config import ACME_EXTRA, ACMEConfig, TLSConfig, acmeClientAvailable
from twisted_rproxy.state import SharedState
from twisted_rproxy.tls.certificates import CertificateError, LoadedCertificate
from twisted_rproxy.tls.server import ServerTLS

__all__ = [
    "ACMEManager",
    "CertificateStatus",
    "STOP_TIMEOUT",
    "STORAGE_WATCH_INTERVAL",
    "certificateName",
]

_log = Logger()

#: Seconds between two looks at the storage for certificates that another
#: process wrote, and between two tries for the lock another process holds.
STORAGE_WATCH_INTERVAL = 10.0

#: Seconds L{ACMEManager.stop} waits for an order under way in its thread
#: to reach a step where it can stop (or to finish).
STOP_TIMEOUT = 10.0


def certificateName(domains: Sequence[str]) -> str:
    """
    The name a group's certificate is stored and shown under: its first
    domain.
    """
    return domains[0]


@frozen
class CertificateStatus:
    """
    What the admin page and C{/metrics} show of one managed certificate.

    @ivar name: Its name (its first domain).
    @ivar domains: The domains it is ordered for.
    @ivar notAfter: When the certificate served expires (seconds since the
        epoch), or L{None} while none was obtained.
    @ivar renewAt: When it is renewed or the next try is made, or L{None}.
    @ivar lastAttempt: When this process last ordered it, or L{None}.
    @ivar lastSuccess: When an order of this process last succeeded, or
        L{None}.
    @ivar lastError: Why the last order failed, or L{None} if it did not.
    @ivar failures: Orders failed in a row.
    """

    name: str
    domains: tuple[str, ...]
    notAfter: float | None
    renewAt: float | None
    lastAttempt: float | None
    lastSuccess: float | None
    lastError: str | None
    failures: int


@define
class _Managed:
    name: str
    domains: tuple[str, ...]
    serverTLS: ServerTLS
    current: LoadedCertificate | None = None
    stamp: object = None
    call: IDelayedCall | None = None
    renewAt: float | None = None
    lastAttempt: float | None = None
    lastSuccess: float | None = None
    lastError: str | None = None
    failures: int = 0
    ordering: bool = False


def _timestamp(moment: datetime.datetime) -> float:
    return moment.timestamp()


class ACMEManager:
    """
    Obtains and renews the certificates of the C{[[tls]]} groups that list
    C{acme_domains}, and serves them through those groups' L{ServerTLS}.

    @ivar config: The C{[acme]} table.
    @ivar storage: Its storage directory.
    @ivar responder: The answers to the challenges under way.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        config: ACMEConfig,
        groups: Sequence[tuple[TLSConfig, ServerTLS]],
        sharedState: SharedState | None = None,
        runner: ThreadRunner | SynchronousRunner | None = None,
        clientFactory: Callable[[bytes], ACMEClient] | None = None,
        random: Callable[[], float] = random.random,
        watchInterval: float = STORAGE_WATCH_INTERVAL,
        stopTimeout: float = STOP_TIMEOUT,
    ) -> None:
        """
        @param groups: Each C{[[tls]]} group with C{acme_domains}, and the
            L{ServerTLS} serving it.
        @param sharedState: The client of C{[state]}, for the Redis lock.
        @param runner: Where the blocking calls run (the reactor's threads).
        @param clientFactory: Makes the ACME client from the account key (a
            L{BlockingACMEClient} by default).
        @param random: Numbers from 0 to 1, for jitter.
        @param watchInterval: See L{STORAGE_WATCH_INTERVAL}.
        @param stopTimeout: See L{STOP_TIMEOUT}.
        """
        self.reactor = reactor
        self.config = config
        self.storage = ACMEStorage(config.storage)
        self.responder = ChallengeResponder(self.storage)
        self._runner = runner if runner is not None else ThreadRunner(reactor)
        self._clientFactory = clientFactory or self._defaultClient
        self._random = random
        self._watchInterval = watchInterval
        self._stopTimeout = stopTimeout
        self._managed = [
            _Managed(certificateName(group.acmeDomains), group.acmeDomains, serverTLS)
            for group, serverTLS in groups
            if group.acmeDomains
        ]
        for managed in self._managed:
            if config.challenge == "tls-alpn-01":
                managed.serverTLS.challengeCertificates = (
                    self.responder.tlsALPNCertificate
                )
        self._sharedState = sharedState
        self._redisLock = (
            RedisLock(reactor, sharedState, "order")
            if sharedState is not None
            else None
        )
        self._lock: OrderLock | None = None
        self._client: ACMEClient | None = None
        self._serial = DeferredLock()
        self._watcher: LoopingCall | None = None
        self._running = False
        #: Set by L{stop}: the order running in a thread gives up at its
        #: next step.  A new one for each L{start}.
        self._stopping = threading.Event()
        #: Renewals started (by their timers) and not finished.
        self._pending = 0
        self._idleWaiters: list[Deferred[None]] = []

    def _defaultClient(self, accountKey: bytes) -> ACMEClient:
        return BlockingACMEClient(
            self.config.directory, accountKey, self.config.email, self.config.caBundle
        )

    @property
    def sharedState(self) -> SharedState | None:
        """
        The client of C{[state]} whose Redis holds the order lock, or
        L{None} (the file lock in C{storage} only).
        """
        return self._sharedState

    def setSharedState(self, sharedState: SharedState | None) -> None:
        """
        Take the order lock in C{sharedState}'s Redis from now on (a reload
        replaced C{[state]}): a lock held now is freed where it was taken.
        """
        if sharedState is self._sharedState:
            return
        self._sharedState = sharedState
        self._redisLock = (
            RedisLock(self.reactor, sharedState, "order")
            if sharedState is not None
            else None
        )
        if self._lock is not None:
            self._lock.redisLock = self._redisLock

    @property
    def ordering(self) -> bool:
        """
        Whether a renewal is under way (an order in its thread, or the
        lock being taken).
        """
        return self._pending > 0

    @property
    def running(self) -> bool:
        """
        Whether it was started and not stopped since.
        """
        return self._running

    def status(self) -> list[CertificateStatus]:
        """
        The state of every managed certificate.
        """
        return [
            CertificateStatus(
                name=m.name,
                domains=m.domains,
                notAfter=_timestamp(m.current.notAfter) if m.current else None,
                renewAt=m.renewAt,
                lastAttempt=m.lastAttempt,
                lastSuccess=m.lastSuccess,
                lastError=m.lastError,
                failures=m.failures,
            )
            for m in self._managed
        ]

    def start(self) -> None:
        """
        Serve the stored certificates, and order or schedule the renewal of
        each.

        @raise RuntimeError: If the acme library is not installed.
        """
        if self._running:
            return
        if not acmeClientAvailable():
            raise RuntimeError(
                f"[acme] needs the acme library, which is not installed ({ACME_EXTRA})"
            )
        self._running = True
        self._stopping = threading.Event()
        try:
            self.storage.ensure()
        except OSError as e:
            _log.error(
                "ACME: cannot use the storage {path}: {error}",
                path=self.storage.directory,
                error=e.strerror or str(e),
            )
        self._lock = OrderLock(FileLock(self.storage.lockPath()), self._redisLock)
        for managed in self._managed:
            self._loadStored(managed)
            self._schedule(managed)
        watcher = self._watcher = LoopingCall(self._watchStorage)
        watcher.clock = self.reactor
        watcher.start(self._watchInterval, now=False).addErrback(
            lambda f: _log.failure("ACME: watching the storage failed", f)
        )

    def stop(self) -> Deferred[None]:
        """
        Stop renewing: nothing more is scheduled, and an order under way in
        its thread gives up at its next step (before its next request to the
        CA that starts something, or within seconds while polling).

        @return: A L{Deferred} that fires once the order under way has
            stopped and its lock is freed, or after the C{stopTimeout}
            given to the constructor (a warning says that the thread is
            left to finish on its own), at once when none is.
        """
        self._running = False
        self._stopping.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.running:
            watcher.stop()
        for managed in self._managed:
            self._cancel(managed)
        if not self._pending:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._idleWaiters.append(done)

        def giveUp() -> None:
            if done in self._idleWaiters:
                self._idleWaiters.remove(done)
                _log.warn(
                    "ACME: stopped without waiting longer than {timeout}s for "
                    "the order under way; its thread finishes on its own",
                    timeout=self._stopTimeout,
                )
                done.callback(None)

        timer = self.reactor.callLater(self._stopTimeout, giveUp)

        def finished(result: None) -> None:
            if timer.active():
                timer.cancel()

        return done.addCallback(finished)

    def _cancel(self, managed: _Managed) -> None:
        call, managed.call = managed.call, None
        if call is not None and call.active():
            call.cancel()

    def _now(self) -> float:
        return self.reactor.seconds()

    def _usable(
        self, certificate: LoadedCertificate | None, domains: Sequence[str]
    ) -> bool:
        return (
            certificate is not None
            and set(domains) <= set(certificate.names)
            and _timestamp(certificate.notAfter) > self._now()
        )

    def _loadStored(self, managed: _Managed) -> bool:
        """
        Serve the stored certificate if it changed and can be used.

        @return: Whether a new one is served.
        """
        stamp = self.storage.certificateStamp(managed.name)
        if stamp is None or stamp == managed.stamp:
            return False
        managed.stamp = stamp
        try:
            stored = self.storage.readCertificate(managed.name)
        except CertificateError as e:
            _log.error(
                "ACME: the stored certificate cannot be used: {error}", error=str(e)
            )
            return False
        if stored is None or not self._usable(stored, managed.domains):
            return False
        if managed.current is not None and (
            stored.certificate == managed.current.certificate
        ):
            return False
        self._install(managed, stored)
        return True

    def _install(self, managed: _Managed, certificate: LoadedCertificate) -> None:
        managed.current = certificate
        managed.serverTLS.setManagedCertificate(managed.name, certificate)
        _log.info(
            "ACME: serving the certificate of {domains}, valid until {notAfter}",
            domains=", ".join(managed.domains),
            notAfter=certificate.notAfter.isoformat(),
        )

    def _schedule(self, managed: _Managed, delay: float | None = None) -> None:
        """
        Plan the next look at C{managed}: its renewal, or a retry.
        """
        if not self._running:
            return
        self._cancel(managed)
        now = self._now()
        if delay is not None:
            at = now + delay
        elif managed.failures:
            at = now + retryDelay(managed.failures, self._random())
        elif self._usable(managed.current, managed.domains):
            assert managed.current is not None
            at = renewalTime(
                _timestamp(managed.current.notBefore),
                _timestamp(managed.current.notAfter),
                self.config.renewBefore,
                self._random(),
            )
        else:
            at = now
        managed.renewAt = at
        managed.call = self.reactor.callLater(max(at - now, 0.0), self._due, managed)

    def _watchStorage(self) -> None:
        for managed in self._managed:
            if not managed.ordering and self._loadStored(managed):
                managed.failures = 0
                self._schedule(managed)

    def _due(self, managed: _Managed) -> Deferred[None]:
        managed.call = None
        self._pending += 1
        renewing = self._serial.run(self._renew, managed)

        def unexpected(failure: Failure) -> None:
            _log.failure(
                "ACME: the renewal of {name} failed", failure, name=managed.name
            )
            self._schedule(managed, self._watchInterval)

        return renewing.addErrback(unexpected).addBoth(self._settled)

    def _settled(self, _: object) -> None:
        self._pending -= 1
        if not self._pending:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _renew(self, managed: _Managed) -> Deferred[None]:
        """
        Order C{managed}'s certificate, if no other process does and the
        storage does not hold a fresh one already.
        """
        if not self._running:
            return succeed(None)
        self._loadStored(managed)
        current = managed.current
        if self._usable(current, managed.domains) and not managed.failures:
            assert current is not None
            due = renewalTime(
                _timestamp(current.notBefore),
                _timestamp(current.notAfter),
                self.config.renewBefore,
                1.0,
            )
            if due > self._now():
                # Another process renewed it meanwhile.
                self._schedule(managed)
                return succeed(None)
        lock = self._lock
        assert lock is not None

        def lockFailed(failure: Failure) -> None:
            # An error reply of Redis (not an outage, which falls back to
            # the file lock): try again later.
            _log.error(
                "ACME: cannot take the order lock: {error}; next try in {delay}s",
                error=failure.getErrorMessage(),
                delay=self._watchInterval,
            )
            self._schedule(managed, self._watchInterval)

        def locked(taken: bool) -> Deferred[None] | None:
            if not taken:
                # Another process orders: look at the storage again soon.
                self._schedule(managed, self._watchInterval)
                return None
            # What the lock holder before us may just have written.
            self._loadStored(managed)
            if self._usable(managed.current, managed.domains) and (
                managed.current is not current
            ):
                managed.failures = 0
                self._schedule(managed)
                return lock.release()
            return self._order(managed).addBoth(
                lambda result: lock.release().addCallback(lambda _: result)
            )

        try:
            acquiring = lock.acquire()
        except OSError as e:
            acquiring = Deferred()
            acquiring.errback(Failure(e))
        return acquiring.addCallbacks(locked, lockFailed)

    def _order(self, managed: _Managed) -> Deferred[None]:
        managed.ordering = True
        managed.lastAttempt = self._now()
        runner = self._runner
        responder = self.responder
        challenge = self.config.challenge
        stopping = self._stopping
        _log.info(
            "ACME: ordering a certificate for {domains} from {directory}",
            domains=", ".join(managed.domains),
            directory=self.config.directory,
        )

        def publish(kind: str, name: str, keyAuthorization: str) -> None:
            runner.callInReactor(responder.publish, kind, name, keyAuthorization)

        def withdraw(kind: str, name: str) -> None:
            if stopping.is_set():
                # The reactor may no longer run calls (it is stopping): its
                # dictionaries change atomically, and the file is removed
                # here.
                responder.withdraw(kind, name)
            else:
                runner.callInReactor(responder.withdraw, kind, name)

        def checkpoint() -> None:
            if stopping.is_set():
                raise OrderCancelled(
                    f"the order for {', '.join(managed.domains)} was cancelled: "
                    "the proxy is stopping"
                )

        def blocking() -> tuple[bytes, bytes]:
            checkpoint()
            client = self._client
            if client is None:
                accountKey = self.storage.accountKey(self.config.directory)
                client = self._clientFactory(accountKey)
                url = client.register()
                self.storage.saveAccountURL(self.config.directory, url)
                self._client = client
            keyPEM = newPrivateKeyPEM()
            chain = client.order(
                managed.domains,
                keyPEM,
                challenge,
                publish,
                withdraw,
                cancelled=stopping.is_set,
            )
            # Kept even when stopping: the CA issued it, the next start
            # serves it.
            self.storage.writeCertificate(managed.name, chain, keyPEM)
            return chain, keyPEM

        def succeeded(_: tuple[bytes, bytes]) -> None:
            managed.ordering = False
            managed.lastSuccess = self._now()
            managed.lastError = None
            managed.failures = 0
            managed.stamp = None
            try:
                stored = self.storage.readCertificate(managed.name)
            except CertificateError as e:
                self._failed(managed, f"the certificate issued cannot be used: {e}")
                return
            if stored is not None and self._running:
                self._install(managed, stored)
            managed.stamp = self.storage.certificateStamp(managed.name)
            self._schedule(managed)

        def failed(failure: Failure) -> None:
            managed.ordering = False
            if failure.check(OrderCancelled):
                _log.info("ACME: {reason}", reason=failure.getErrorMessage())
                return
            self._failed(managed, describeACMEError(failure.value or Exception()))

        return runner.run(blocking).addCallbacks(succeeded, failed)

    def _failed(self, managed: _Managed, reason: str) -> None:
        managed.failures += 1
        managed.lastError = reason
        # An account may have been the trouble: register again next time.
        self._client = None
        self._schedule(managed)
        _log.error(
            "ACME: the order for {domains} failed ({failures} in a row): "
            "{reason}; {serving}; next try at {next}",
            domains=", ".join(managed.domains),
            failures=managed.failures,
            reason=reason,
            serving=(
                "the current certificate stays in service"
                if managed.current is not None
                else "no certificate from the CA yet"
            ),
            next=datetime.datetime.fromtimestamp(
                managed.renewAt or self._now(), datetime.timezone.utc
            ).isoformat(),
        )
