"""
The C{[acme]} table's value: L{ACMEConfig}, the certificate authority the
proxy obtains the certificates of C{[[tls]] acme_domains} from (ACME v2,
RFC 8555), and the checks of single values it is made of (a domain name, an
e-mail address, the directory URL).

This module imports nothing of the configuration but L{base}, so that the
model can hold an L{ACMEConfig}; the table itself is read by
L{twisted_rproxy.config.acmetable}.
"""

from __future__ import annotations

import importlib.util
import re
from urllib.parse import urlsplit

from attrs import frozen

__all__ = [
    "ACME_EXTRA",
    "CHALLENGES",
    "ACMEConfig",
    "acmeClientAvailable",
    "domainNameProblem",
    "emailProblem",
    "directoryProblem",
]

#: What C{pip install} brings the ACME client library.
ACME_EXTRA = "pip install 'twisted_rproxy[acme]'"

#: The challenge types the proxy answers itself.
CHALLENGES = ("http-01", "tls-alpn-01")

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")
_IPV4 = re.compile(r"[0-9.]+\Z")


@frozen
class ACMEConfig:
    """
    Automatic certificates (C{[acme]}).

    @ivar directory: The URL of the CA's ACME v2 directory.
    @ivar email: The account's contact address, or L{None} for none.
    @ivar storage: The absolute path of the directory holding the account
        key, the certificates and their keys (made with mode 0700).
    @ivar caBundle: The absolute path of a PEM file of the CA certificates
        that the ACME server's own TLS certificate is checked against, or
        L{None} for the system's.
    @ivar challenge: C{"http-01"} (answered by the plain listeners of
        C{[server]}) or C{"tls-alpn-01"} (answered by the C{[[tls]]}
        listeners, RFC 8737).
    @ivar renewBefore: Seconds before expiry at which a certificate is
        renewed, or L{None} for a third of its lifetime.
    """

    directory: str
    storage: str
    email: str | None = None
    caBundle: str | None = None
    challenge: str = "http-01"
    renewBefore: float | None = None


def acmeClientAvailable() -> bool:
    """
    Whether the C{acme} library (certbot's, with josepy) is installed: it is
    the optional extra C{acme}.
    """
    return importlib.util.find_spec("acme") is not None


def domainNameProblem(name: str) -> str | None:
    """
    What is wrong with C{name} as a domain a certificate is ordered for, or
    L{None} if it is well formed: a DNS name of at least two labels, in
    lower case (the ASCII form of an internationalized name), optionally
    with one leading wildcard label (C{*.example.com}, which CAs issue by
    the DNS-01 challenge only: it is refused here, since the proxy answers
    http-01 and tls-alpn-01).
    """
    if not name:
        return "must not be empty"
    if name != name.strip() or any(c.isspace() for c in name):
        return f"{name!r} must not hold spaces"
    if name.startswith("*."):
        return (
            f"{name!r}: wildcard certificates need the dns-01 challenge, which "
            "the proxy cannot answer; list each name"
        )
    if name.endswith("."):
        return f"{name!r} must not end with a dot"
    if len(name) > 253:
        return f"{name!r} is longer than 253 characters"
    try:
        name.encode("ascii")
    except UnicodeEncodeError:
        return (
            f"{name!r} must be written in ASCII (the xn-- form of an "
            "internationalized name)"
        )
    if name != name.lower():
        return f"{name!r} must be written in lower case"
    labels = name.split(".")
    if len(labels) < 2:
        return f"{name!r} is not a fully qualified domain name"
    if _IPV4.match(name):
        return f"{name!r} is an IP address; list domain names"
    for label in labels:
        if not _LABEL.match(label):
            return f"{name!r} has an invalid label {label!r}"
    return None


def emailProblem(email: str) -> str | None:
    """
    What is wrong with C{email} as an account contact, or L{None}.
    """
    if not _EMAIL.match(email):
        return f"{email!r} is not an e-mail address like ops@example.com"
    domain = email.rpartition("@")[2]
    if "." not in domain or domain.startswith(".") or domain.endswith("."):
        return f"{email!r} is not an e-mail address like ops@example.com"
    return None


def directoryProblem(url: str) -> str | None:
    """
    What is wrong with C{url} as an ACME directory URL, or L{None}.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a malformed port
    except ValueError as e:
        return f"{url!r} is not a URL: {e}"
    if parts.scheme != "https":
        return (
            f"{url!r} must be an https:// URL (ACME servers are reached over "
            "TLS), such as https://acme-v02.api.letsencrypt.org/directory"
        )
    if not parts.hostname:
        return f"{url!r} has no host"
    if parts.fragment or any(c.isspace() for c in url):
        return f"{url!r} is not a valid directory URL"
    return None
