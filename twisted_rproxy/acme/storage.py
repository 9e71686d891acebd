"""
The files of automatic certificates under C{[acme] storage}: the account
key and URL of each CA, each certificate with its key, and the answers to
challenges under way (so that every worker and every instance sharing the
directory answers the CA, whichever of them ordered).

The directories are made with mode 0700 and every file with mode 0600; a
file is written to a temporary name, flushed to disk, then renamed over the
old one, so that a reader (another worker watching the directory) sees the
old file or the new one, never half of one.  A certificate and its key are
one file, so that they change together.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from twisted_rproxy.config import CertificateConfig
from twisted_rproxy.tls.certificates import LoadedCertificate, loadCertificate

__all__ = [
    "ACMEStorage",
    "FileStamp",
    "newPrivateKeyPEM",
    "writeAtomically",
]

#: A file's modification time (ns) and size, or L{None} when it is absent.
FileStamp = tuple[int, int] | None

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}\Z")


def newPrivateKeyPEM() -> bytes:
    """
    A new ECDSA P-256 private key (for an account or a certificate), as
    unencrypted PKCS#8 PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _temporary(path: str, data: bytes, mode: int) -> str:
    directory, name = os.path.split(path)
    for attempt in range(100):
        temporary = os.path.join(directory, f".{name}.{os.getpid()}.{attempt}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            continue
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temporary)
            raise
        os.close(fd)
        return temporary
    raise FileExistsError(f"cannot make a temporary file beside {path!r}")


def _syncDirectory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def writeAtomically(path: str, data: bytes, mode: int = 0o600) -> None:
    """
    Replace the file at C{path} with C{data}, all at once.

    @param mode: The new file's permissions.
    @raise OSError: If it cannot be written; the old file is left as it was.
    """
    temporary = _temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    _syncDirectory(os.path.dirname(path) or ".")


def _createOnce(path: str, data: bytes, mode: int = 0o600) -> bytes:
    """
    Write C{data} at C{path} unless a file is there already; return what
    the file holds then (another process may have been first).
    """
    temporary = _temporary(path, data, mode)
    try:
        os.link(temporary, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    with open(path, "rb") as f:
        return f.read()


def _stamp(path: str) -> FileStamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class ACMEStorage:
    """
    The C{[acme] storage} directory.

    @ivar directory: Its absolute path.
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _path(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def ensure(self) -> None:
        """
        Make the directory and its subdirectories (mode 0700), or restrict
        them to that mode if they exist.

        @raise OSError: If that cannot be done.
        """
        for path in (
            self.directory,
            self._path("accounts"),
            self._path("certificates"),
            self._path("challenges"),
        ):
            os.makedirs(path, 0o700, exist_ok=True)
            if os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o700)

    def _accountDirectory(self, directoryURL: str) -> str:
        host = urlsplit(directoryURL).hostname or "ca"
        digest = hashlib.sha256(directoryURL.encode("utf-8")).hexdigest()[:16]
        path = self._path("accounts", f"{host}-{digest}")
        os.makedirs(path, 0o700, exist_ok=True)
        return path

    def accountKey(self, directoryURL: str) -> bytes:
        """
        The PEM private key of the account at the CA of C{directoryURL},
        made (once, even with several processes) when there is none.
        """
        path = os.path.join(self._accountDirectory(directoryURL), "key.pem")
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return _createOnce(path, newPrivateKeyPEM())

    def accountURL(self, directoryURL: str) -> str | None:
        """
        The URL of the account registered at the CA, if one was.
        """
        path = os.path.join(self._accountDirectory(directoryURL), "account.json")
        try:
            with open(path, "rb") as f:
                value = json.loads(f.read()).get("url")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def saveAccountURL(self, directoryURL: str, url: str) -> None:
        """
        Keep the URL of the account registered at the CA.
        """
        path = os.path.join(self._accountDirectory(directoryURL), "account.json")
        data = json.dumps({"directory": directoryURL, "url": url}).encode("utf-8")
        writeAtomically(path, data)

    def certificatePath(self, name: str) -> str:
        """
        The file holding the certificate C{name} (its chain, then its key).
        """
        return self._path("certificates", name + ".pem")

    def certificateStamp(self, name: str) -> FileStamp:
        """
        The stamp of the certificate file C{name}, to tell when it changed.
        """
        return _stamp(self.certificatePath(name))

    def readCertificate(self, name: str) -> LoadedCertificate | None:
        """
        The certificate C{name} as stored, or L{None} if there is none.

        @raise twisted_rproxy.tls.CertificateError: If the file cannot be
            used.
        """
        path = self.certificatePath(name)
        if not os.path.exists(path):
            return None
        return loadCertificate(CertificateConfig(certificate=path, key=path))

    def writeCertificate(self, name: str, fullChainPEM: bytes, keyPEM: bytes) -> None:
        """
        Store the certificate C{name}: its chain (leaf first) and its key.
        """
        data = fullChainPEM.rstrip(b"\n") + b"\n" + keyPEM
        writeAtomically(self.certificatePath(name), data)

    def _challengePath(self, kind: str, name: str) -> str | None:
        if not _TOKEN.match(name.replace(".", "_")):
            return None
        return self._path("challenges", f"{kind}-{name}")

    def publishChallenge(self, kind: str, name: str, keyAuthorization: str) -> None:
        """
        Keep the answer to a challenge: C{kind} is C{"http-01"} (C{name} is
        the token) or C{"tls-alpn-01"} (C{name} is the domain).

        @raise ValueError: If C{name} cannot be a file name.
        """
        path = self._challengePath(kind, name)
        if path is None:
            raise ValueError(f"not a challenge name: {name!r}")
        writeAtomically(path, keyAuthorization.encode("ascii"))

    def readChallenge(self, kind: str, name: str) -> str | None:
        """
        The answer to a challenge published by any process, or L{None}.
        """
        path = self._challengePath(kind, name)
        if path is None:
            return None
        try:
            with open(path, "rb") as f:
                return f.read(4096).decode("ascii", "replace")
        except OSError:
            return None

    def removeChallenge(self, kind: str, name: str) -> None:
        """
        Forget the answer to a challenge.
        """
        path = self._challengePath(kind, name)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def lockPath(self) -> str:
        """
        The file that the processes sharing the storage lock to order.
        """
        return self._path("order.lock")
