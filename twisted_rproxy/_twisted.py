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


# --- TLS: OpenSSL and twisted.internet._sslverify (tls) --------------------


# --- other -----------------------------------------------------------------
