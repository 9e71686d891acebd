"""
The C{[acme]} table (its value, L{ACMEConfig}, is in
L{twisted_rproxy.config.acme}), the C{acme_domains} of a C{[[tls]]} table,
and the checks of what they depend on: a plain listener for http-01, each
domain in one group only, a storage directory the proxy can write.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from twisted_rproxy.config.acme import (
    ACME_EXTRA,
    CHALLENGES,
    ACMEConfig,
    acmeClientAvailable,
    directoryProblem,
    domainNameProblem,
    emailProblem,
)
from twisted_rproxy.config.model import ConfigError, ServerConfig, TLSConfig
from twisted_rproxy.config.values import _resolveFile, _Table

_ACME_KEYS = (
    "directory",
    "email",
    "storage",
    "ca_bundle",
    "challenge",
    "renew_before",
)


def _storageProblem(path: str) -> str | None:
    """
    Why the proxy could not keep its files in C{path}, or L{None}: it must
    be a directory the proxy can write, or be creatable in one.
    """
    if os.path.exists(path):
        if not os.path.isdir(path):
            return f"{path!r} is not a directory"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{path!r} is not writable by this user"
        return None
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    if not os.path.isdir(parent):
        return f"{path!r} cannot be created: {parent!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path!r} cannot be created: {parent!r} is not writable by this user"
    return None


def _parseACME(value: object, source: str, baseDirectory: str) -> ACMEConfig:
    """
    Parse the C{[acme]} table.
    """
    table = _Table(value, source, "acme")
    table.checkKeys(_ACME_KEYS)
    directory = table.optionalString("directory")
    if directory is None:
        raise table.error(
            "directory",
            "is required: the CA's ACME v2 directory URL, such as "
            '"https://acme-staging-v02.api.letsencrypt.org/directory"',
        )
    problem = directoryProblem(directory)
    if problem is not None:
        raise table.error("directory", problem)
    email = table.optionalString("email")
    if email is not None:
        problem = emailProblem(email)
        if problem is not None:
            raise table.error("email", problem)
    storage = table.optionalString("storage")
    if storage is None:
        raise table.error(
            "storage",
            "is required: a directory for the account key and certificates, "
            'such as "/var/lib/rproxy/acme"',
        )
    if not storage.strip():
        raise table.error("storage", "must not be empty")
    storage = os.path.normpath(os.path.join(baseDirectory, storage))
    problem = _storageProblem(storage)
    if problem is not None:
        raise table.error("storage", problem)
    caBundle = table.optionalString("ca_bundle")
    if caBundle is not None:
        caBundle = _resolveFile(
            caBundle, baseDirectory, source, table.keyOf("ca_bundle")
        )
    challenge = table.optionalString("challenge")
    if challenge is None:
        challenge = "http-01"
    elif challenge not in CHALLENGES:
        raise table.error(
            "challenge",
            f'must be "http-01" or "tls-alpn-01", got {challenge!r}',
        )
    renewBefore = table.timeout("renew_before", 0.0) or None
    if not acmeClientAvailable():
        raise ConfigError(
            source,
            "acme",
            f"needs the acme library, which is not installed ({ACME_EXTRA})",
        )
    return ACMEConfig(
        directory=directory,
        storage=storage,
        email=email,
        caBundle=caBundle,
        challenge=challenge,
        renewBefore=renewBefore,
    )


def _parseACMEDomains(table: _Table) -> tuple[str, ...]:
    """
    The C{acme_domains} of a C{[[tls]]} table: well-formed names, each once.
    """
    domains = table.stringList("acme_domains", (), allowSingle=True)
    seen: set[str] = set()
    for index, domain in enumerate(domains):
        key = f"{table.keyOf('acme_domains')}[{index}]"
        problem = domainNameProblem(domain)
        if problem is not None:
            raise ConfigError(table.source, key, problem)
        if domain in seen:
            raise ConfigError(table.source, key, f"{domain!r} is listed twice")
        seen.add(domain)
    if table.has("acme_domains") and not domains:
        raise table.error("acme_domains", "must list at least one domain name")
    return domains


def _checkACME(
    acme: ACMEConfig | None,
    tls: Sequence[TLSConfig],
    server: ServerConfig,
    source: str,
) -> None:
    """
    Check that C{[acme]} and the C{acme_domains} of C{[[tls]]} fit
    together.
    """
    ordering = [index for index, group in enumerate(tls) if group.acmeDomains]
    if acme is None:
        if ordering:
            raise ConfigError(
                source,
                f"tls[{ordering[0]}].acme_domains",
                "needs an [acme] table (the CA's directory, storage)",
            )
        return
    if not ordering:
        raise ConfigError(
            source,
            "acme",
            "no [[tls]] table lists acme_domains: name the domains to obtain "
            "certificates for",
        )
    seen: dict[str, int] = {}
    for index in ordering:
        for position, domain in enumerate(tls[index].acmeDomains):
            if domain in seen:
                raise ConfigError(
                    source,
                    f"tls[{index}].acme_domains[{position}]",
                    f"{domain!r} is already listed in tls[{seen[domain]}].acme_domains",
                )
            seen[domain] = index
    if acme.challenge == "http-01" and not server.listen:
        raise ConfigError(
            source,
            "acme.challenge",
            '"http-01" is answered on a plain listener: list one in [server] '
            'listen (port 80 as the CA sees it), or use "tls-alpn-01"',
        )
