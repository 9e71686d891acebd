"""
Tests for L{twisted_rproxy.tls}: certificate loading and checks, the choice
of a certificate by SNI, the C{[[tls]]} and pool C{tls_*} configuration,
and loopback tests of the real listeners (SNI, ALPN and HTTP/2, protocol
versions, reload, HSTS, redirects, client certificates) and of https
backends.

Certificates are made at run time by trustme; no private key is committed.
Clients run in threads with the standard library's C{ssl} (and the C{h2}
package for HTTP/2), so that the proxy is seen by a TLS stack that is not
its own.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import socket
import ssl
import sys
import tempfile
import warnings
from typing import Any

import h2.config
import h2.connection
import h2.events
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.ssl import CertificateOptions
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from tests.fixtures import LoopbackTestCase, asyncTest
from tests.loopback import (
    LOCALHOST,
    RecordedRequest,
    RecordingBackend,
    Reply,
    finalCount,
    parseResponses,
)
from twisted_rproxy import _twisted, tap
from twisted_rproxy.config import (
    BackendServer,
    CertificateConfig,
    Config,
    ConfigError,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TLSConfig,
    loadConfig,
    parseConfig,
)
from twisted_rproxy.filters import RequestContext
from twisted_rproxy.service import ProxyService
from twisted_rproxy.tls import (
    CertificateError,
    HTTPSRedirect,
    ServerTLS,
    checkTLSFiles,
    chooseCertificate,
    clientCertificateSubject,
    loadCertificate,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_TIMEOUT = 10.0


def writeLeaf(directory: str, name: str, leaf: trustme.LeafCert) -> str:
    """
    Write a certificate's key and chain in one PEM file; return its path.
    """
    path = os.path.join(directory, name)
    leaf.private_key_and_cert_chain_pem.write_to_path(path)
    return path


class _Files:
    """
    A temporary directory holding a CA and certificates made by trustme.
    """

    def __init__(self, case: SynchronousTestCase) -> None:
        self.directory = tempfile.mkdtemp()
        case.addCleanup(self._remove)
        self.ca = trustme.CA()
        self.caPath = os.path.join(self.directory, "ca.pem")
        self.ca.cert_pem.write_to_path(self.caPath)

    def _remove(self) -> None:
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def leaf(self, fileName: str, *names: str, **kwargs: Any) -> str:
        return writeLeaf(self.directory, fileName, self.ca.issue_cert(*names, **kwargs))

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


class ChooseCertificateTests(SynchronousTestCase):
    """
    Tests for L{chooseCertificate}.
    """

    byName = {
        "example.com": 1,
        "www.example.com": 1,
        "*.example.org": 2,
        "a.example.org": 3,
    }

    def test_exact(self) -> None:
        """
        A name held by a certificate picks it, whatever its case.
        """
        self.assertEqual(chooseCertificate("www.example.com", self.byName), 1)
        self.assertEqual(chooseCertificate("WWW.Example.COM.", self.byName), 1)

    def test_wildcardOneLabel(self) -> None:
        """
        A wildcard covers exactly one label, and an exact name beats it.
        """
        self.assertEqual(chooseCertificate("b.example.org", self.byName), 2)
        self.assertEqual(chooseCertificate("a.example.org", self.byName), 3)
        self.assertEqual(chooseCertificate("x.b.example.org", self.byName), 0)
        self.assertEqual(chooseCertificate("example.org", self.byName), 0)

    def test_default(self) -> None:
        """
        No SNI, or an unknown name, gets the default.
        """
        self.assertEqual(chooseCertificate(None, self.byName), 0)
        self.assertEqual(chooseCertificate("", self.byName, default=4), 4)
        self.assertEqual(chooseCertificate("other.net", self.byName), 0)


class LoadCertificateTests(SynchronousTestCase):
    """
    Tests for L{loadCertificate} and L{checkTLSFiles}.
    """

    def setUp(self) -> None:
        self.files = _Files(self)

    def test_combinedFile(self) -> None:
        """
        One PEM file with the key and the chain loads, with the names of its
        subject alternative names.
        """
        path = self.files.leaf("site.pem", "example.com", "*.example.org", "127.0.0.1")
        loaded = loadCertificate(CertificateConfig(path, path))
        self.assertEqual(loaded.names, ("example.com", "*.example.org", "127.0.0.1"))

    def test_separateFiles(self) -> None:
        """
        A certificate and its key in two files load.
        """
        leaf = self.files.ca.issue_cert("example.com")
        certificate = self.files.path("c.pem")
        key = self.files.path("k.pem")
        leaf.cert_chain_pems[0].write_to_path(certificate)
        leaf.private_key_pem.write_to_path(key)
        self.assertEqual(
            loadCertificate(CertificateConfig(certificate, key)).names, ("example.com",)
        )

    def test_missingFile(self) -> None:
        """
        A missing file is named, with the reason.
        """
        path = self.files.path("nope.pem")
        with self.assertRaises(CertificateError) as raised:
            loadCertificate(CertificateConfig(path, path))
        self.assertIn(
            f"cannot read the certificate file {path!r}", str(raised.exception)
        )

    def test_noKey(self) -> None:
        """
        A certificate file without a key says so.
        """
        path = self.files.path("c.pem")
        self.files.ca.issue_cert("example.com").cert_chain_pems[0].write_to_path(path)
        with self.assertRaises(CertificateError) as raised:
            loadCertificate(CertificateConfig(path, path))
        self.assertIn("no PEM private key", str(raised.exception))

    def test_mismatchedKey(self) -> None:
        """
        A key that is not the certificate's is refused.
        """
        certificate = self.files.path("c.pem")
        key = self.files.path("k.pem")
        self.files.ca.issue_cert("a.example").cert_chain_pems[0].write_to_path(
            certificate
        )
        self.files.ca.issue_cert("b.example").private_key_pem.write_to_path(key)
        with self.assertRaises(CertificateError) as raised:
            loadCertificate(CertificateConfig(certificate, key))
        self.assertIn("does not match the certificate", str(raised.exception))

    def test_garbage(self) -> None:
        """
        A file that is no PEM certificate says so.
        """
        path = self.files.path("junk.pem")
        with open(path, "w") as f:
            f.write("not a certificate\n")
        with self.assertRaises(CertificateError) as raised:
            loadCertificate(CertificateConfig(path, path))
        self.assertIn("no PEM certificate", str(raised.exception))

    def _config(self, tls: str, pools: str = "") -> Config:
        text = (
            '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
            + pools
            + '[[routes]]\npool = "app"\n'
            + tls
        )
        return parseConfig(tomllib.loads(text), "rproxy.toml", self.files.directory)

    def test_checkNamesTheKey(self) -> None:
        """
        L{checkTLSFiles} turns a bad certificate into a L{ConfigError} naming
        the file and the key.
        """
        self.files.leaf("good.pem", "example.com")
        config = self._config(
            '[[tls]]\nlisten = ["tcp:0"]\ncertificates = ["good.pem", "missing.pem"]\n'
        )
        with self.assertRaises(ConfigError) as raised:
            checkTLSFiles(config)
        self.assertEqual(raised.exception.key, "tls[0].certificates[1]")
        self.assertIn("missing.pem", raised.exception.message)

    def test_checkExpiredIsAWarning(self) -> None:
        """
        An expired certificate is a warning, not an error.
        """
        past = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
        self.files.leaf(
            "old.pem",
            "example.com",
            not_before=past - datetime.timedelta(days=30),
            not_after=past,
        )
        config = self._config(
            '[[tls]]\nlisten = ["tcp:0"]\ncertificates = ["old.pem"]\n'
        )
        warnings = checkTLSFiles(config)
        self.assertEqual(len(warnings), 1)
        self.assertIn("tls[0].certificates[0]: the certificate", warnings[0])
        self.assertIn("expired on 2020-01-01", warnings[0])

    def test_checkPoolFiles(self) -> None:
        """
        A pool's C{tls_ca} that cannot be read is reported under its key.
        """
        config = self._config(
            "",
            '[pools.secure]\nservers = ["https://127.0.0.1:8443"]\n'
            'tls_ca = "nope.pem"\n',
        )
        with self.assertRaises(ConfigError) as raised:
            checkTLSFiles(config)
        self.assertEqual(raised.exception.key, "pools.secure.tls_ca")


class TLSConfigTests(SynchronousTestCase):
    """
    Tests for the C{[[tls]]} table and the pools' C{tls_*} keys.
    """

    def parse(self, text: str) -> Config:
        base = (
            '[pools.app]\nservers = ["https://127.0.0.1:8443"]\n'
            '[[routes]]\npool = "app"\n'
        )
        return parseConfig(tomllib.loads(base + text), "f.toml", "/etc/rproxy")

    def assertError(self, text: str, key: str, message: str) -> None:
        with self.assertRaises(ConfigError) as raised:
            self.parse(text)
        self.assertEqual(raised.exception.key, key)
        self.assertIn(message, raised.exception.message)

    def test_full(self) -> None:
        """
        Every key of C{[[tls]]} is read; paths are resolved against the
        configuration's directory.
        """
        config = self.parse(
            """
[[tls]]
listen = ["tcp:8443"]
certificates = ["site.pem", { certificate = "c.pem", key = "/k/k.pem" }]
protocols = "modern"
http2 = false
hsts = "30d"
redirect_http = true
client_ca = "clients.pem"
watch_interval = "10s"
"""
        )
        self.assertEqual(
            config.tls,
            (
                TLSConfig(
                    listen=("tcp:8443",),
                    certificates=(
                        CertificateConfig(
                            "/etc/rproxy/site.pem", "/etc/rproxy/site.pem"
                        ),
                        CertificateConfig("/etc/rproxy/c.pem", "/k/k.pem"),
                    ),
                    protocols="modern",
                    http2=False,
                    hsts=30 * 86400,
                    redirectHttp=True,
                    clientCA="/etc/rproxy/clients.pem",
                    watchInterval=10.0,
                ),
            ),
        )

    def test_defaults(self) -> None:
        """
        The intermediate profile, HTTP/2, no HSTS, no redirect by default.
        """
        (tls,) = self.parse(
            '[[tls]]\nlisten = "tcp:8443"\ncertificates = "s.pem"\n'
        ).tls
        self.assertEqual(
            (tls.protocols, tls.http2, tls.hsts, tls.redirectHttp, tls.watchInterval),
            ("intermediate", True, None, False, None),
        )

    def test_errors(self) -> None:
        """
        Mistakes in C{[[tls]]} name their key.
        """
        good = 'listen = ["tcp:8443"]\ncertificates = ["s.pem"]\n'
        self.assertError(
            "[[tls]]\n" + good + "protocol = 1\n",
            "tls[0].protocol",
            "unknown key (did you mean protocols?)",
        )
        self.assertError(
            "[[tls]]\n" + good + 'protocols = "old"\n',
            "tls[0].protocols",
            "unknown profile 'old'",
        )
        self.assertError(
            '[[tls]]\ncertificates = ["s.pem"]\n', "tls[0].listen", "is required"
        )
        self.assertError(
            '[[tls]]\nlisten = ["tcp:8443"]\n', "tls[0].certificates", "is required"
        )
        self.assertError(
            '[[tls]]\nlisten = ["ssl:8443"]\ncertificates = ["s.pem"]\n',
            "tls[0].listen[0]",
            "brings its own TLS",
        )
        self.assertError(
            '[[tls]]\nlisten = ["tcp:8443"]\ncertificates = [{ key = "k.pem" }]\n',
            "tls[0].certificates[0].certificate",
            "is required",
        )
        self.assertError(
            '[server]\nlisten = ["tcp:8443"]\n[[tls]]\n' + good,
            "tls[0].listen[0]",
            "already listed in server.listen",
        )
        self.assertError(
            "[[tls]]\n"
            + good
            + 'hsts = "1d"\n[[tls]]\nlisten = ["tcp:9443"]\ncertificates = ["s.pem"]\n',
            "tls[1].hsts",
            "must be the same in every [[tls]] table",
        )

    def test_poolKeys(self) -> None:
        """
        A pool's C{tls_*} keys are read.
        """
        config = parseConfig(
            tomllib.loads(
                """
[pools.app]
servers = ["https://10.0.0.1"]
tls_ca = "ca.pem"
tls_verify = false
tls_server_name = "App.Internal"
tls_client_certificate = { certificate = "me.pem", key = "me.key" }
[[routes]]
pool = "app"
"""
            ),
            "f.toml",
            "/etc/rproxy",
        )
        pool = config.pools["app"]
        self.assertEqual(
            (pool.tlsCA, pool.tlsVerify, pool.tlsServerName, pool.tlsClientCertificate),
            (
                "/etc/rproxy/ca.pem",
                False,
                "app.internal",
                CertificateConfig("/etc/rproxy/me.pem", "/etc/rproxy/me.key"),
            ),
        )

    def test_poolKeysNeedHTTPS(self) -> None:
        """
        C{tls_*} keys on a pool without https servers are refused.
        """
        with self.assertRaises(ConfigError) as raised:
            parseConfig(
                tomllib.loads(
                    '[pools.app]\nservers = ["http://10.0.0.1"]\ntls_verify = false\n'
                    '[[routes]]\npool = "app"\n'
                ),
                "f.toml",
                "/",
            )
        self.assertEqual(raised.exception.key, "pools.app.tls_verify")


class ExampleTests(SynchronousTestCase):
    """
    The TLS examples load.
    """

    examples = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")

    def test_tlsExample(self) -> None:
        """
        C{examples/tls.toml} loads, with its certificate files relative to
        it.
        """
        config = loadConfig(os.path.join(self.examples, "tls.toml"))
        (tls,) = config.tls
        self.assertEqual(
            tls.certificates[0].key,
            os.path.join(self.examples, "tls-demo", "server.key"),
        )
        self.assertTrue(tls.redirectHttp)
        self.assertEqual(tls.hsts, 86400)

    def test_commentedOutTables(self) -> None:
        """
        The commented-out C{[[tls]]} and https pool of
        C{examples/rproxy.toml} are valid once uncommented.
        """
        with open(os.path.join(self.examples, "rproxy.toml")) as f:
            text = f.read()
        start = text.index("# [[tls]]")
        end = text.index("# Filters:")
        block = re.sub(
            r"^# (\[|[a-z_]+ = |    |\])", r"\1", text[start:end], flags=re.MULTILINE
        )
        uncommented = text[:start] + block + text[end:]
        self.assertNotEqual(uncommented, text)
        config = parseConfig(tomllib.loads(uncommented), "rproxy.toml", self.examples)
        self.assertEqual(len(config.tls[0].certificates), 2)
        self.assertEqual(config.tls[0].hsts, 365 * 86400)
        self.assertEqual(config.pools["secure"].tlsServerName, "app.internal")


class ClientSubjectTests(SynchronousTestCase):
    """
    Tests for L{clientCertificateSubject}.
    """

    def test_subject(self) -> None:
        """
        The subject of the peer certificate of an HTTP/1.1 channel's
        transport, or of an HTTP/2 stream's connection; L{None} without one.
        """
        from OpenSSL import crypto

        leaf = trustme.CA().issue_cert("alice.example", common_name="alice")
        certificate = crypto.load_certificate(
            crypto.FILETYPE_PEM, leaf.cert_chain_pems[0].bytes()
        )

        @implementer(ISSLTransport)
        class Transport:
            def __init__(self, peer: object) -> None:
                self.peer = peer

            def getPeerCertificate(self) -> object:
                return self.peer

        class Channel:
            pass

        class Stream:
            pass

        http1 = Channel()
        http1.transport = Transport(certificate)  # type: ignore[attr-defined]
        stream = Stream()
        stream._conn = Channel()  # type: ignore[attr-defined]
        stream._conn.transport = Transport(certificate)  # type: ignore[attr-defined]
        plain = Channel()
        plain.transport = object()  # type: ignore[attr-defined]
        anonymous = Channel()
        anonymous.transport = Transport(None)  # type: ignore[attr-defined]
        for channel, expected in [
            (http1, "CN=alice"),
            (stream, "CN=alice"),
            (plain, None),
            (anonymous, None),
        ]:
            request = DummyRequest([])
            request.channel = channel
            subject = clientCertificateSubject(request)
            if expected is None:
                self.assertIsNone(subject)
            else:
                assert subject is not None
                self.assertIn(expected, subject)
            # What filters see: the same certificate, HTTP/2 included.
            context = RequestContext(request, Clock())
            peer = context.tlsPeer
            if expected is None:
                self.assertIsNone(peer)
            else:
                self.assertIs(peer, certificate)


class RedirectTests(SynchronousTestCase):
    """
    Tests for L{HTTPSRedirect}.
    """

    def render(
        self, resource: HTTPSRedirect, host: bytes | None, uri: bytes
    ) -> DummyRequest:
        request = DummyRequest([])
        request.uri = uri
        if host is not None:
            request.requestHeaders.setRawHeaders(b"host", [host])
        body = resource.render(request)
        if isinstance(body, bytes):
            request.write(body)
            request.finish()
        return request

    def test_redirect(self) -> None:
        """
        The same host and target, over https, on the TLS port (left out
        when 443).
        """
        request = self.render(HTTPSRedirect(8443), b"example.com:8080", b"/a?b=1")
        self.assertEqual(request.responseCode, 301)
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"location"),
            [b"https://example.com:8443/a?b=1"],
        )
        request = self.render(HTTPSRedirect(443), b"[::1]", b"/")
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"location"), [b"https://[::1]/"]
        )

    def test_badHost(self) -> None:
        """
        No C{Host}, or one that would change the URL, gets 400.
        """
        for host in [None, b"evil.com/x", b"a@b"]:
            request = self.render(HTTPSRedirect(443), host, b"/")
            self.assertEqual(request.responseCode, 400, host)


class CheckCommandTests(SynchronousTestCase):
    """
    C{twistd rproxy --check} reads the certificates (L{tap.Options}).
    """

    def setUp(self) -> None:
        self.files = _Files(self)
        self.out = io.StringIO()
        self.err = io.StringIO()
        self.patch(sys, "stdout", self.out)
        self.patch(sys, "stderr", self.err)

    def check(self, certificates: str) -> int:
        path = self.files.path("rproxy.toml")
        with open(path, "w") as f:
            f.write(
                '[pools.app]\nservers = ["http://127.0.0.1:8001"]\n'
                '[[routes]]\npool = "app"\n'
                f'[[tls]]\nlisten = ["tcp:0"]\ncertificates = [{certificates}]\n'
            )
        with self.assertRaises(SystemExit) as raised:
            tap.Options().parseOptions(["--check", "--config", path])
        code = raised.exception.code
        assert isinstance(code, int)
        return code

    def test_mismatchedKey(self) -> None:
        """
        A key that is not the certificate's: status 1, one line naming the
        file, the key and both paths.
        """
        leaf = self.files.ca.issue_cert("example.com")
        leaf.cert_chain_pems[0].write_to_path(self.files.path("c.pem"))
        self.files.ca.issue_cert("other").private_key_pem.write_to_path(
            self.files.path("k.pem")
        )
        code = self.check('{ certificate = "c.pem", key = "k.pem" }')
        self.assertEqual(code, 1)
        error = self.err.getvalue()
        self.assertEqual(error.count("\n"), 1, error)
        self.assertIn("rproxy.toml: tls[0].certificates[0]: the private key in", error)
        self.assertIn("k.pem' does not match the certificate in", error)
        self.assertNotIn("Traceback", error)

    def test_expiredWarns(self) -> None:
        """
        An expired certificate: status 0, and a warning.
        """
        past = datetime.datetime(2021, 6, 1, tzinfo=datetime.timezone.utc)
        self.files.leaf(
            "old.pem",
            "example.com",
            not_before=past - datetime.timedelta(days=1),
            not_after=past,
        )
        self.assertEqual(self.check('"old.pem"'), 0)
        self.assertIn(
            "warning: tls[0].certificates[0]: the certificate", self.err.getvalue()
        )
        self.assertIn("expired on 2021-06-01", self.err.getvalue())
        self.assertIn("configuration OK", self.out.getvalue())


class ReloadSignalTests(SynchronousTestCase):
    """
    What SIGHUP runs (L{tap._reload}).
    """

    def test_certificatesWithoutFile(self) -> None:
        """
        A configuration from the command line reloads the certificates.
        """
        calls: list[str] = []

        class Service:
            def reloadCertificates(self) -> bool:
                calls.append("certificates")
                return True

        tap._reload(Service(), None)  # type: ignore[arg-type]
        self.assertEqual(calls, ["certificates"])


class WatchTests(SynchronousTestCase):
    """
    Tests for L{ServerTLS} reloading.
    """

    def test_watchReloadsChangedFiles(self) -> None:
        """
        With C{watch_interval}, a changed file is read again when the
        interval passes; a broken file keeps the old certificate.
        """
        files = _Files(self)
        path = files.leaf("site.pem", "old.example")
        serverTLS = ServerTLS(
            TLSConfig(
                listen=("tcp:0",),
                certificates=(CertificateConfig(path, path),),
                watchInterval=5.0,
            )
        )
        clock = Clock()
        serverTLS.startWatching(clock)
        self.addCleanup(serverTLS.stopWatching)
        files.leaf("site.pem", "new.example")
        os.utime(path, ns=(1, 1))
        clock.advance(4)
        self.assertEqual(serverTLS.certificates[0].names, ("old.example",))
        clock.advance(1)
        self.assertEqual(serverTLS.certificates[0].names, ("new.example",))
        with open(path, "w") as f:
            f.write("broken")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock.advance(5)
        self.assertEqual(serverTLS.certificates[0].names, ("new.example",))
        self.assertTrue(
            any("keeping the certificate" in e.get("log_format", "") for e in events)
        )
        clock.advance(5)
        self.assertEqual(serverTLS.certificates[0].names, ("new.example",))


# Clients, run in threads.


def _clientContext(
    caPath: str,
    alpn: list[str] | None = None,
    maximum: ssl.TLSVersion | None = None,
    clientCertificate: str | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=caPath)
    if alpn is not None:
        context.set_alpn_protocols(alpn)
    if maximum is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
            context.maximum_version = maximum
            # Old versions need old ciphers; OpenSSL's security level 0
            # allows them to be offered at all.
            context.set_ciphers("ALL:@SECLEVEL=0")
    if clientCertificate is not None:
        context.load_cert_chain(clientCertificate)
    return context


def connectTLS(
    port: int, serverName: str | None, context: ssl.SSLContext
) -> ssl.SSLSocket:
    """
    Connect and complete the handshake (blocking; for a thread).
    """
    sock = socket.create_connection((LOCALHOST, port), timeout=_TIMEOUT)
    try:
        if serverName is None:
            context.check_hostname = False
        tls = context.wrap_socket(sock, server_hostname=serverName)
    except BaseException:
        sock.close()
        raise
    return tls


def peerNames(tls: ssl.SSLSocket) -> list[str]:
    """
    The DNS names of the certificate the server presented.
    """
    certificate = tls.getpeercert()
    assert certificate is not None
    return [
        value for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS"
    ]


def http1Exchange(tls: ssl.SSLSocket, path: str, host: str = "example.com") -> Any:
    """
    Send one GET on an open TLS connection and read its response.
    """
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    received = b""
    enough = finalCount(1)
    for _ in range(1000):
        if enough(received):
            break
        data = tls.recv(65536)
        if not data:
            break
        received += data
    responses, _ = parseResponses(received)
    return responses[0]


def h2Exchange(
    tls: ssl.SSLSocket,
    method: str,
    path: str,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
) -> tuple[dict[bytes, bytes], bytes]:
    """
    One HTTP/2 request on an open TLS connection, with the h2 package.

    @return: The response headers (pseudo-headers included) and body.
    """
    connection = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=True)
    )
    connection.initiate_connection()
    streamID = connection.get_next_available_stream_id()
    requestHeaders = [
        (":method", method),
        (":path", path),
        (":scheme", "https"),
        (":authority", "example.com"),
    ] + (headers or [])
    connection.send_headers(streamID, requestHeaders, end_stream=not body)
    if body:
        connection.send_data(streamID, body, end_stream=True)
    tls.sendall(connection.data_to_send())
    responseHeaders: dict[bytes, bytes] = {}
    responseBody = b""
    for _ in range(1000):
        data = tls.recv(65536)
        if not data:
            raise AssertionError("connection closed before the response ended")
        ended = False
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                responseHeaders.update(
                    (bytes(n), bytes(v)) for n, v in event.headers or ()
                )
            elif isinstance(event, h2.events.DataReceived):
                responseBody += event.data or b""
                connection.acknowledge_received_data(
                    event.flow_controlled_length or 0, streamID
                )
            elif isinstance(event, h2.events.StreamEnded):
                ended = True
            elif isinstance(event, h2.events.StreamReset):
                responseHeaders[b":reset"] = b"%d" % (event.error_code or 0,)
                ended = True
        pending = connection.data_to_send()
        if pending:
            tls.sendall(pending)
        if ended:
            return responseHeaders, responseBody
    raise AssertionError("no end of stream")


class TLSListenerTests(LoopbackTestCase):
    """
    The real proxy with C{[[tls]]} listeners on 127.0.0.1, and real TLS
    clients.
    """

    def setUp(self) -> None:
        super().setUp()
        self.files = _Files(self)

    async def startTLSProxy(
        self,
        backendPort: int,
        certificates: list[str],
        server: dict[str, Any] | None = None,
        **tlsOptions: Any,
    ) -> tuple[ProxyService, int, int]:
        """
        Run a L{ProxyService} with one plain and one TLS listener in front of
        one backend.

        @return: The service, the plain port and the TLS port.
        """
        pool = PoolConfig(
            name="app",
            servers=(
                BackendServer(
                    url=f"http://{LOCALHOST}:{backendPort}",
                    scheme="http",
                    host=LOCALHOST,
                    port=backendPort,
                ),
            ),
        )
        tls = TLSConfig(
            listen=("tcp:0:interface=127.0.0.1",),
            certificates=tuple(CertificateConfig(c, c) for c in certificates),
            **tlsOptions,
        )
        config = Config(
            source="test",
            server=ServerConfig(
                listen=("tcp:0:interface=127.0.0.1",), **(server or {})
            ),
            pools={"app": pool},
            routes=(RouteConfig(path="/", pool="app"),),
            tls=(tls,),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        plain, secure = await service.whenListening()
        return service, plain.getHost().port, secure.getHost().port

    async def inThread(self, f: Any, *args: Any) -> Any:
        return await deferToThread(f, *args)

    @asyncTest
    async def test_sniPicksCertificate(self) -> None:
        """
        Each SNI name gets the certificate holding it (exact or wildcard),
        with ALPN; no SNI, or an unknown name, gets the first certificate.
        """
        backend = await self.startBackend()
        default = self.files.leaf("default.pem", "default.test")
        site = self.files.leaf("site.pem", "example.com", "www.example.com")
        wildcard = self.files.leaf("wild.pem", "*.example.org")
        _, _, port = await self.startTLSProxy(
            backend.portNumber, [default, site, wildcard]
        )
        caPath = self.files.caPath

        def namesFor(serverName: str | None) -> list[str]:
            context = _clientContext(caPath, alpn=["h2", "http/1.1"])
            if serverName is None or serverName == "unknown.test":
                context.check_hostname = False
            with connectTLS(port, serverName, context) as tls:
                # Whichever certificate answers, ALPN works the same.
                self.assertEqual(tls.selected_alpn_protocol(), "h2")
                return peerNames(tls)

        for name, expected in [
            ("www.example.com", ["example.com", "www.example.com"]),
            ("example.com", ["example.com", "www.example.com"]),
            ("a.example.org", ["*.example.org"]),
            ("unknown.test", ["default.test"]),
            (None, ["default.test"]),
        ]:
            self.assertEqual(await self.inThread(namesFor, name), expected, name)

    @asyncTest
    async def test_http1OverTLS(self) -> None:
        """
        An HTTP/1.1 request over TLS is proxied, marked https for the
        backend, and gets the HSTS header; the plain listener's does not.
        """
        backend = await self.startBackend()
        site = self.files.leaf("site.pem", "example.com")
        _, plainPort, port = await self.startTLSProxy(
            backend.portNumber, [site], hsts=86400
        )
        caPath = self.files.caPath

        def get() -> Any:
            with connectTLS(port, "example.com", _clientContext(caPath)) as tls:
                return http1Exchange(tls, "/hello")

        response = await self.inThread(get)
        self.assertEqual((response.status, response.body), (200, b"/hello"))
        self.assertEqual(
            response.header(b"strict-transport-security"), [b"max-age=86400"]
        )
        self.assertEqual(backend.requests[-1].header(b"x-forwarded-proto"), [b"https"])
        _, plain = await self.rawExchange(
            plainPort, b"GET /plain HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual(plain[0].status, 200)
        self.assertNotIn(b"strict-transport-security", plain[0].headerNames())

    @asyncTest
    async def test_http2(self) -> None:
        """
        ALPN negotiates h2, and HTTP/2 requests go through the same route to
        the same backend: a GET, a POST with a body, and a body over the
        limit refused with 413.
        """
        backend = await self.startBackend()
        site = self.files.leaf("site.pem", "example.com")
        _, _, port = await self.startTLSProxy(
            backend.portNumber, [site], server={"maxBodySize": 100}, hsts=60
        )
        caPath = self.files.caPath

        def exchanges() -> list[Any]:
            results: list[Any] = []
            for method, path, body in [
                ("GET", "/h2/get?x=1", b""),
                ("POST", "/h2/post", b"hello body"),
                ("POST", "/h2/big", b"x" * 1000),
            ]:
                context = _clientContext(caPath, alpn=["h2", "http/1.1"])
                with connectTLS(port, "example.com", context) as tls:
                    results.append(tls.selected_alpn_protocol())
                    headers = [("content-length", str(len(body)))] if body else []
                    results.append(h2Exchange(tls, method, path, body, headers))
            return results

        results = await self.inThread(exchanges)
        self.assertEqual(results[0::2], ["h2", "h2", "h2"])
        (getHeaders, getBody), (postHeaders, postBody), (bigHeaders, _) = results[1::2]
        self.assertEqual((getHeaders[b":status"], getBody), (b"200", b"/h2/get?x=1"))
        self.assertEqual(getHeaders[b"strict-transport-security"], b"max-age=60")
        self.assertEqual((postHeaders[b":status"], postBody), (b"200", b"/h2/post"))
        self.assertEqual(bigHeaders[b":status"], b"413")
        self.assertEqual(
            [(r.method, r.target, r.body) for r in backend.requests],
            [(b"GET", b"/h2/get?x=1", b""), (b"POST", b"/h2/post", b"hello body")],
        )
        self.assertEqual(backend.requests[0].header(b"host"), [b"example.com"])
        self.assertEqual(backend.requests[0].header(b"x-forwarded-proto"), [b"https"])

    @asyncTest
    async def test_http2Errors(self) -> None:
        """
        Over HTTP/2, a backend that closes without answering gets the
        proxy's 502 page, and a response cut short resets the stream
        instead of ending it as if whole.
        """

        def handler(request: RecordedRequest) -> Reply:
            if request.target == b"/drop":
                return Reply(drop=True)
            return Reply(
                raw=b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
                closeAfter=True,
            )

        backend = await self.startBackend(handler)
        site = self.files.leaf("site.pem", "example.com")
        _, _, port = await self.startTLSProxy(backend.portNumber, [site])
        caPath = self.files.caPath

        def exchange(path: str) -> tuple[dict[bytes, bytes], bytes]:
            context = _clientContext(caPath, alpn=["h2"])
            with connectTLS(port, "example.com", context) as tls:
                return h2Exchange(tls, "GET", path)

        headers, body = await self.inThread(exchange, "/drop")
        self.assertEqual(headers[b":status"], b"502")
        self.assertIn(b"502 Bad Gateway", body)
        headers, body = await self.inThread(exchange, "/short")
        self.assertEqual(headers[b":status"], b"200")
        self.assertIn(b":reset", headers)
        self.assertEqual(body, b"short")

    @asyncTest
    async def test_http2Off(self) -> None:
        """
        With C{http2 = false}, ALPN chooses http/1.1.
        """
        backend = await self.startBackend()
        site = self.files.leaf("site.pem", "example.com")
        _, _, port = await self.startTLSProxy(backend.portNumber, [site], http2=False)
        caPath = self.files.caPath

        def alpn() -> str | None:
            context = _clientContext(caPath, alpn=["h2", "http/1.1"])
            with connectTLS(port, "example.com", context) as tls:
                return tls.selected_alpn_protocol()

        self.assertEqual(await self.inThread(alpn), "http/1.1")

    @asyncTest
    async def test_oldProtocolsRefused(self) -> None:
        """
        A client that speaks at most TLS 1.1 cannot connect; with the modern
        profile, neither can one that speaks at most TLS 1.2.  (If the
        local OpenSSL cannot offer TLS 1.1 at all the handshake fails on the
        client's side; it fails either way.)
        """
        backend = await self.startBackend()
        site = self.files.leaf("site.pem", "example.com")
        _, _, intermediate = await self.startTLSProxy(backend.portNumber, [site])
        _, _, modern = await self.startTLSProxy(
            backend.portNumber, [site], protocols="modern"
        )
        caPath = self.files.caPath

        def attempt(port: int, maximum: ssl.TLSVersion) -> str:
            try:
                with connectTLS(
                    port, "example.com", _clientContext(caPath, maximum=maximum)
                ) as tls:
                    return f"connected with {tls.version()}"
            except (ssl.SSLError, ConnectionError) as e:
                return f"refused: {e}"

        # The server's "protocol version" alert; or, from a client library
        # that cannot offer the old version, its own refusal.
        refusals = (
            "PROTOCOL_VERSION",
            "NO_PROTOCOLS_AVAILABLE",
            "UNSUPPORTED_PROTOCOL",
        )
        for version in [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]:
            result = await self.inThread(attempt, intermediate, version)
            self.assertTrue(result.startswith("refused"), result)
            self.assertTrue(any(r in result for r in refusals), result)
        result = await self.inThread(attempt, modern, ssl.TLSVersion.TLSv1_2)
        self.assertIn("PROTOCOL_VERSION", result)
        result = await self.inThread(attempt, intermediate, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(result, "connected with TLSv1.2")
        result = await self.inThread(attempt, modern, ssl.TLSVersion.TLSv1_3)
        self.assertEqual(result, "connected with TLSv1.3")

    @asyncTest
    async def test_reload(self) -> None:
        """
        After a reload, new handshakes get the new certificate while an
        established connection goes on working; a broken file keeps the
        certificate in service.
        """
        backend = await self.startBackend()
        path = self.files.leaf("site.pem", "example.com", "old.example.com")
        service, _, port = await self.startTLSProxy(backend.portNumber, [path])
        caPath = self.files.caPath

        def openAndGet() -> tuple[ssl.SSLSocket, list[str], Any]:
            tls = connectTLS(port, "example.com", _clientContext(caPath))
            return tls, peerNames(tls), http1Exchange(tls, "/first")

        old, oldNames, first = await self.inThread(openAndGet)
        self.addCleanup(old.close)
        self.assertEqual(
            (oldNames, first.status), (["example.com", "old.example.com"], 200)
        )

        self.files.leaf("site.pem", "example.com", "new.example.com")
        self.assertTrue(service.reloadCertificates())

        def namesNow() -> list[str]:
            with connectTLS(port, "example.com", _clientContext(caPath)) as tls:
                return peerNames(tls)

        self.assertEqual(
            await self.inThread(namesNow), ["example.com", "new.example.com"]
        )
        second = await self.inThread(http1Exchange, old, "/second")
        self.assertEqual((second.status, second.body), (200, b"/second"))

        with open(path, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nbroken\n")
        self.assertFalse(service.reloadCertificates())
        self.assertEqual(
            await self.inThread(namesNow), ["example.com", "new.example.com"]
        )

    @asyncTest
    async def test_redirectHTTP(self) -> None:
        """
        With C{redirect_http}, the plain listener redirects to the TLS one.
        """
        backend = await self.startBackend()
        site = self.files.leaf("site.pem", "example.com")
        _, plainPort, port = await self.startTLSProxy(
            backend.portNumber, [site], redirectHttp=True
        )
        _, responses = await self.rawExchange(
            plainPort, b"GET /a?b HTTP/1.1\r\nHost: example.com\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 301)
        self.assertEqual(
            responses[0].header(b"location"),
            [b"https://example.com:%d/a?b" % (port,)],
        )
        self.assertEqual(backend.requests, [])

    @asyncTest
    async def test_clientCertificates(self) -> None:
        """
        With C{client_ca}, a client without a certificate of that CA is
        refused, and one with it is served.
        """
        backend = await self.startBackend()
        site = self.files.leaf("site.pem", "example.com")
        clients = trustme.CA()
        clientCA = self.files.path("clients.pem")
        clients.cert_pem.write_to_path(clientCA)
        alice = writeLeaf(
            self.files.directory, "alice.pem", clients.issue_cert("alice@example.com")
        )
        mallory = self.files.leaf("mallory.pem", "mallory@example.com")
        _, _, port = await self.startTLSProxy(
            backend.portNumber, [site], clientCA=clientCA
        )
        caPath = self.files.caPath

        def get(certificate: str | None) -> str:
            context = _clientContext(caPath, clientCertificate=certificate)
            try:
                with connectTLS(port, "example.com", context) as tls:
                    return str(http1Exchange(tls, "/me").status)
            except (ssl.SSLError, ConnectionError, IndexError) as e:
                return f"refused: {type(e).__name__}"

        self.assertEqual(await self.inThread(get, alice), "200")
        self.assertTrue((await self.inThread(get, None)).startswith("refused"))
        self.assertTrue((await self.inThread(get, mallory)).startswith("refused"))
        self.assertEqual(len(backend.requests), 1)


class HTTPSBackendTests(LoopbackTestCase):
    """
    Pools with C{https://} servers: verification, SNI and names.
    """

    def setUp(self) -> None:
        super().setUp()
        self.files = _Files(self)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    async def startTLSBackend(
        self, *names: str, clientCA: trustme.CA | None = None
    ) -> RecordingBackend:
        """
        A L{RecordingBackend} behind TLS with a certificate for C{names};
        with C{clientCA}, it requires a client certificate of that CA.
        """
        leaf = self.files.ca.issue_cert(*names)
        verify: dict[str, Any] = {}
        if clientCA is not None:
            verify = {
                "verify": True,
                "requireCertificate": True,
                "caCerts": [_x509(clientCA.cert_pem.bytes())],
            }
        options = CertificateOptions(
            **_twisted.certificateOptions(
                x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()),
                serialization.load_pem_private_key(
                    leaf.private_key_pem.bytes(), password=None
                ),
            ),
            **verify,
        )
        backend = RecordingBackend(reactor)
        endpoint = TCP4ServerEndpoint(reactor, 0, interface=LOCALHOST)
        backend.port = await endpoint.listen(
            TLSMemoryBIOFactory(options, False, backend)
        )
        self.addCleanup(lambda: Deferred.fromCoroutine(backend.stop()))
        return backend

    async def startHTTPSProxy(
        self, backend: RecordingBackend, **poolOptions: Any
    ) -> int:
        port = backend.portNumber
        pool = PoolConfig(
            name="app",
            servers=(
                BackendServer(
                    url=f"https://{LOCALHOST}:{port}",
                    scheme="https",
                    host=LOCALHOST,
                    port=port,
                ),
            ),
            **poolOptions,
        )
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={"app": pool},
            routes=(RouteConfig(path="/", pool="app"),),
        )
        service = ProxyService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        (listening,) = await service.whenListening()
        proxyPort: int = listening.getHost().port
        return proxyPort

    def logged(self, text: str) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in self.events if text in formatEvent(e)]

    @asyncTest
    async def test_verifiedBackend(self) -> None:
        """
        A backend whose certificate names its address and is issued by
        C{tls_ca} is used.
        """
        backend = await self.startTLSBackend("127.0.0.1")
        port = await self.startHTTPSProxy(backend, tlsCA=self.files.caPath)
        _, responses = await self.rawExchange(
            port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual((responses[0].status, responses[0].body), (200, b"/ok"))

    @asyncTest
    async def test_serverName(self) -> None:
        """
        C{tls_server_name} is the name verified (and sent by SNI).
        """
        backend = await self.startTLSBackend("app.internal")
        port = await self.startHTTPSProxy(
            backend, tlsCA=self.files.caPath, tlsServerName="app.internal"
        )
        _, responses = await self.rawExchange(
            port, b"GET /sni HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 200)

    @asyncTest
    async def test_wrongName(self) -> None:
        """
        A backend whose certificate is for another name gets 502, and the
        log says why.
        """
        backend = await self.startTLSBackend("other.example")
        port = await self.startHTTPSProxy(backend, tlsCA=self.files.caPath)
        _, responses = await self.rawExchange(
            port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 502)
        self.assertEqual(backend.requests, [])
        lines = self.logged("does not match the server name")
        self.assertTrue(lines, [e.get("log_format") for e in self.events])
        self.assertIn(f"https://{LOCALHOST}:{backend.portNumber}", lines[0])

    @asyncTest
    async def test_untrustedCA(self) -> None:
        """
        A backend whose certificate comes from a CA not trusted gets 502,
        and the log says the verification failed.
        """
        backend = await self.startTLSBackend("127.0.0.1")
        otherCA = self.files.path("other-ca.pem")
        trustme.CA().cert_pem.write_to_path(otherCA)
        port = await self.startHTTPSProxy(backend, tlsCA=otherCA)
        _, responses = await self.rawExchange(
            port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 502)
        self.assertTrue(self.logged("certificate verify failed"))

    @asyncTest
    async def test_clientCertificate(self) -> None:
        """
        A backend that requires a client certificate gets the pool's
        C{tls_client_certificate}; without one, the client gets 502.
        """
        clients = trustme.CA()
        backend = await self.startTLSBackend("127.0.0.1", clientCA=clients)
        proxyCertificate = writeLeaf(
            self.files.directory, "proxy.pem", clients.issue_cert("proxy.internal")
        )
        port = await self.startHTTPSProxy(
            backend,
            tlsCA=self.files.caPath,
            tlsClientCertificate=CertificateConfig(proxyCertificate, proxyCertificate),
        )
        _, responses = await self.rawExchange(
            port, b"GET /m HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual((responses[0].status, responses[0].body), (200, b"/m"))
        anonymous = await self.startHTTPSProxy(backend, tlsCA=self.files.caPath)
        _, responses = await self.rawExchange(
            anonymous, b"GET /anonymous HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 502)
        self.assertEqual([r.target for r in backend.requests], [b"/m"])

    @asyncTest
    async def test_verifyOff(self) -> None:
        """
        C{tls_verify = false} accepts any certificate, with a warning at
        start-up.
        """
        backend = await self.startTLSBackend("other.example")
        port = await self.startHTTPSProxy(backend, tlsVerify=False)
        self.assertTrue(self.logged("NOT verified"))
        _, responses = await self.rawExchange(
            port, b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
        )
        self.assertEqual(responses[0].status, 200)


def _x509(pem: bytes) -> Any:
    from OpenSSL import crypto

    return crypto.load_certificate(crypto.FILETYPE_PEM, pem)
