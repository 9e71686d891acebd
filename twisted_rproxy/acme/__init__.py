"""
Automatic HTTPS: the certificates of C{[[tls]] acme_domains}, obtained from
the ACME v2 CA of C{[acme]} (RFC 8555) and renewed by the proxy itself.

The C{acme} library (certbot's, with josepy) speaks the protocol; it is the
optional extra C{acme}, and this package imports without it (starting an
L{ACMEManager} says what to install).  The modules, each importing only
those before it:

  - L{schedule <twisted_rproxy.acme.schedule>}: when to renew, and the
    backoff after failures (pure functions);
  - L{storage <twisted_rproxy.acme.storage>}: the files under C{storage}
    (0700 directories, 0600 files, written atomically);
  - L{lock <twisted_rproxy.acme.lock>}: one process orders at a time (a
    file lock, a Redis lock with C{[state]});
  - L{challenges <twisted_rproxy.acme.challenges>}: the answers to
    HTTP-01 and TLS-ALPN-01 (RFC 8737) challenges;
  - L{client <twisted_rproxy.acme.client>}: the protocol, blocking, run in
    a thread;
  - L{runner <twisted_rproxy.acme.runner>}: where the blocking calls run
    (the reactor's threads);
  - L{manager <twisted_rproxy.acme.manager>}: L{ACMEManager}, which keeps
    the certificates valid and serves them.
"""

from __future__ import annotations

from twisted_rproxy.acme.challenges import (
    ACME_TLS_1,
    ChallengeResponder,
    HTTP01Resource,
    tlsALPNCertificate,
)
from twisted_rproxy.acme.client import (
    ACMEError,
    BlockingACMEClient,
    OrderCancelled,
    describeACMEError,
)
from twisted_rproxy.acme.lock import FileLock, OrderLock, RedisLock
from twisted_rproxy.acme.manager import (
    ACMEManager,
    CertificateStatus,
    certificateName,
)
from twisted_rproxy.acme.runner import SynchronousRunner, ThreadRunner
from twisted_rproxy.acme.schedule import renewalTime, retryDelay
from twisted_rproxy.acme.storage import ACMEStorage, writeAtomically

__all__ = [
    "ACME_TLS_1",
    "ACMEError",
    "ACMEManager",
    "ACMEStorage",
    "BlockingACMEClient",
    "CertificateStatus",
    "ChallengeResponder",
    "FileLock",
    "HTTP01Resource",
    "OrderCancelled",
    "OrderLock",
    "RedisLock",
    "SynchronousRunner",
    "ThreadRunner",
    "certificateName",
    "describeACMEError",
    "renewalTime",
    "retryDelay",
    "tlsALPNCertificate",
    "writeAtomically",
]
