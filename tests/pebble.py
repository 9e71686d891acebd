"""
L{PebbleCA}: a real ACME CA of the test's own on loopback: Debian's
C{pebble}, with C{pebble-challtestsrv} as its DNS server (answering every
name with 127.0.0.1, its own challenge servers off, so that the proxy
answers the challenges itself), and L{requirePebble}, which skips a test
without them (and fails it in CI, which must install them: C{.ci/run}
does).

Pebble's own TLS certificate is made at run time by trustme (the Debian
package ships none): L{PebbleCA.caBundle} is the file to trust.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import trustme

from tests.fixtures import freePort
from tests.loopback import LOCALHOST

#: Seconds pebble has to answer its directory after it is started.
START_TIMEOUT = 15.0


def requirePebble() -> tuple[str, str]:
    """
    The C{pebble} and C{pebble-challtestsrv} to run.

    @raise unittest.SkipTest: Without them, unless C{CI} is set.
    @raise AssertionError: Without them when C{CI} is set.
    """
    pebble = shutil.which("pebble")
    challtestsrv = shutil.which("pebble-challtestsrv")
    if pebble is not None and challtestsrv is not None:
        return pebble, challtestsrv
    if os.environ.get("CI"):
        raise AssertionError(
            "pebble and pebble-challtestsrv are not on PATH: CI must install "
            "them (.ci/run does, with apt-get install pebble)"
        )
    from twisted.trial.unittest import SkipTest

    raise SkipTest("pebble (a test ACME CA) is not installed: apt-get install pebble")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


class PebbleCA:
    """
    One pebble and its DNS server, stopped by L{stop} (by their PIDs).

    @ivar httpPort: Where pebble validates HTTP-01 challenges (the proxy's
        plain port).
    @ivar tlsPort: Where it validates TLS-ALPN-01 challenges (the proxy's
        TLS port).
    @ivar port: Pebble's ACME port.
    @ivar caBundle: The PEM file of the CA of pebble's own TLS certificate.
    @ivar directory: The temporary directory of its files.
    """

    def __init__(
        self,
        httpPort: int,
        tlsPort: int,
        validity: int | None = None,
        blocklist: tuple[str, ...] = (),
    ) -> None:
        """
        @param validity: The lifetime of the certificates it issues, in
            seconds (pebble's C{certificateValidityPeriod}), or L{None}
            for its default (years).
        @param blocklist: Domains it refuses to issue for.
        """
        self.pebble, self.challtestsrv = requirePebble()
        self.httpPort = httpPort
        self.tlsPort = tlsPort
        self.validity = validity
        self.blocklist = blocklist
        self.port = freePort()
        self.managementPort = freePort()
        self.directory = tempfile.mkdtemp(prefix="rproxy-pebble-")
        self.caBundle = os.path.join(self.directory, "pebble-ca.pem")
        self.logPath = os.path.join(self.directory, "pebble.log")
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[object] = []

    @property
    def directoryURL(self) -> str:
        """
        Its ACME directory URL.
        """
        return f"https://{LOCALHOST}:{self.port}/dir"

    def start(self) -> PebbleCA:
        """
        Start the DNS server and pebble, and wait until pebble answers its
        directory.

        @return: C{self}.
        """
        ca = trustme.CA()
        ca.cert_pem.write_to_path(self.caBundle)
        server = ca.issue_cert("localhost", LOCALHOST)
        certificate = os.path.join(self.directory, "cert.pem")
        key = os.path.join(self.directory, "key.pem")
        server.cert_chain_pems[0].write_to_path(certificate)
        server.private_key_pem.write_to_path(key)
        dnsPort = freePort()
        config: dict[str, object] = {
            "listenAddress": f"{LOCALHOST}:{self.port}",
            "managementListenAddress": f"{LOCALHOST}:{self.managementPort}",
            "certificate": certificate,
            "privateKey": key,
            "httpPort": self.httpPort,
            "tlsPort": self.tlsPort,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            "domainBlocklist": list(self.blocklist),
        }
        if self.validity is not None:
            config["certificateValidityPeriod"] = self.validity
        configPath = os.path.join(self.directory, "pebble-config.json")
        with open(configPath, "w") as f:
            json.dump({"pebble": config}, f)
        log = open(self.logPath, "ab")
        self._logs.append(log)
        self._processes.append(
            subprocess.Popen(
                [
                    self.challtestsrv,
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-dns01",
                    f"{LOCALHOST}:{dnsPort}",
                    "-management",
                    f"{LOCALHOST}:{freePort()}",
                    "-defaultIPv4",
                    LOCALHOST,
                    "-defaultIPv6",
                    "",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
        self._processes.append(
            subprocess.Popen(
                [
                    self.pebble,
                    "-config",
                    configPath,
                    "-dnsserver",
                    f"{LOCALHOST}:{dnsPort}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
            )
        )
        self._waitForDirectory()
        return self

    def _waitForDirectory(self) -> None:
        context = ssl.create_default_context(cafile=self.caBundle)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for process in self._processes:
                if process.poll() is not None:
                    self.stop()
                    raise AssertionError(
                        f"{process.args!r} exited at once: {self.log()[-2000:]}"
                    )
            try:
                with urllib.request.urlopen(
                    self.directoryURL, context=context, timeout=2
                ) as answer:
                    json.load(answer)
                return
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(
                        f"pebble did not answer within {START_TIMEOUT}s: "
                        f"{self.log()[-2000:]}"
                    ) from None
                time.sleep(0.1)

    def rootPEM(self) -> bytes:
        """
        The root certificate of the chains it issues (made at its start).
        """
        context = ssl.create_default_context(cafile=self.caBundle)
        url = f"https://{LOCALHOST}:{self.managementPort}/roots/0"
        with urllib.request.urlopen(url, context=context, timeout=5) as answer:
            data: bytes = answer.read()
        return data

    def log(self) -> str:
        """
        What pebble and its DNS server wrote.
        """
        try:
            with open(self.logPath, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def orders(self) -> int:
        """
        How many orders pebble was asked for.
        """
        return self.log().count("POST /order-plz")

    def stop(self) -> None:
        """
        Stop both processes (by PID) and remove the files.
        """
        processes, self._processes = self._processes, []
        for process in reversed(processes):
            _stop(process)
        logs, self._logs = self._logs, []
        for log in logs:
            log.close()  # type: ignore[attr-defined]

    def cleanUp(self) -> None:
        """
        L{stop}, then remove its directory.
        """
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def portIsFree(port: int) -> bool:
    """
    Whether nothing listens on 127.0.0.1:C{port}.
    """
    with socket.socket() as s:
        return s.connect_ex((LOCALHOST, port)) != 0
