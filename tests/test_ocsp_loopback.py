"""
OCSP stapling end to end on 127.0.0.1: a real OCSP responder (a
twisted.web resource answering with L{ocsp.OCSPResponseBuilder}), the real
proxy from L{makeService} with a C{[[tls]]} listener whose certificates
name it, and a real pyOpenSSL client that asks for the status
(C{status_request}) and reads what is stapled.
"""

from __future__ import annotations

import datetime
import os
import socket
import struct
import tempfile
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from OpenSSL import SSL, crypto
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.fixtures import LoopbackTestCase, asyncTest, backendServer, freePort, sleep
from tests.loopback import LOCALHOST
from tests.test_ocsp import FakePKI
from twisted_rproxy.admin import Admin
from twisted_rproxy.adminpage import renderPage
from twisted_rproxy.config import (
    AdminConfig,
    CertificateConfig,
    Config,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    TLSConfig,
)
from twisted_rproxy.service import ProxyService, makeService

Leaf = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


class Responder(Resource):
    """
    An OCSP responder: POSTed requests are recorded and answered by
    C{answer}.
    """

    isLeaf = True

    def __init__(self, answer: Callable[[ocsp.OCSPRequest], bytes]) -> None:
        super().__init__()
        self.answer = answer
        self.requests: list[ocsp.OCSPRequest] = []

    def render_POST(self, request: Any) -> bytes:
        parsed = ocsp.load_der_ocsp_request(request.content.read())
        self.requests.append(parsed)
        request.setHeader(b"content-type", b"application/ocsp-response")
        return self.answer(parsed)


def handshake(port: int, serverName: str, root: x509.Certificate) -> tuple[bytes, int]:
    """
    A TLS handshake asking for the certificate's status (blocking; for a
    thread).

    @return: What was stapled (C{b""} for nothing) and the serial of the
        certificate served.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    store = context.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(root))
    context.set_verify(SSL.VERIFY_PEER, lambda conn, cert, errno, depth, ok: bool(ok))
    stapled: list[bytes] = []

    def received(connection: SSL.Connection, data: bytes, _: object) -> bool:
        stapled.append(data)
        return True

    context.set_ocsp_client_callback(received)
    sock = socket.create_connection((LOCALHOST, port), timeout=10)
    # Blocking (pyOpenSSL wants it), but never for more than 10 seconds.
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 10, 0))
    try:
        connection = SSL.Connection(context, sock)
        connection.set_tlsext_host_name(serverName.encode("ascii"))
        connection.request_ocsp()
        connection.set_connect_state()
        connection.do_handshake()
        peer = connection.get_peer_certificate(as_cryptography=True)
        assert peer is not None
        connection.shutdown()
    finally:
        sock.close()
    return (stapled[0] if stapled else b""), peer.serial_number


class OCSPStaplingTests(LoopbackTestCase):
    """
    The proxy fetches its certificates' OCSP responses and staples them;
    a responder that fails never fails a handshake.
    """

    def setUp(self) -> None:
        super().setUp()
        self.pki = FakePKI(datetime.datetime.now(datetime.timezone.utc))
        self.directory = tempfile.mkdtemp()
        self.addCleanup(self._removeFiles)

    def _removeFiles(self) -> None:
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def startResponder(
        self, answer: Callable[[ocsp.OCSPRequest], bytes]
    ) -> tuple[Responder, str]:
        responder = Responder(answer)
        port = reactor.listenTCP(0, Site(responder), interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        return responder, f"http://{LOCALHOST}:{port.getHost().port}/ocsp"

    async def startProxy(  # type: ignore[override]
        self, certificates: list[str], **tlsOptions: Any
    ) -> tuple[ProxyService, int]:
        backend = await self.startBackend()
        config = Config(
            source="test",
            server=ServerConfig(listen=("tcp:0:interface=127.0.0.1",)),
            pools={
                "app": PoolConfig(
                    name="app", servers=(backendServer(backend.portNumber),)
                )
            },
            routes=(RouteConfig(path="/", pool="app"),),
            tls=(
                TLSConfig(
                    listen=("tcp:0:interface=127.0.0.1",),
                    certificates=tuple(CertificateConfig(c, c) for c in certificates),
                    **tlsOptions,
                ),
            ),
        )
        service = makeService(config, reactor)
        service.startService()
        self.addCleanup(service.stopService)
        _, secure = await service.whenListening()
        return service, secure.getHost().port

    async def settled(self, service: ProxyService) -> list[dict[str, Any]]:
        """
        The admin's status of the certificates, once no first fetch is under
        way.
        """
        admin = Admin(service, AdminConfig(listen=()), reactor)
        for _ in range(500):
            certificates: list[dict[str, Any]] = admin.status()["certificates"]  # type: ignore[assignment]
            if all(c["ocsp"]["state"] != "pending" for c in certificates):
                return certificates
            await sleep(0.01)
        self.fail(f"OCSP fetches still pending: {certificates}")

    async def metrics(self, service: ProxyService) -> str:
        admin = Admin(service, AdminConfig(listen=(), metrics=True), reactor)
        return admin.renderMetrics(await admin.collect()).decode("utf-8")

    async def staple(self, port: int, name: str) -> tuple[bytes, int]:
        result: tuple[bytes, int] = await deferToThread(
            handshake, port, name, self.pki.root
        )
        return result

    def answerFor(
        self, leaves: list[Leaf], **options: Any
    ) -> Callable[[ocsp.OCSPRequest], bytes]:
        def answer(request: ocsp.OCSPRequest) -> bytes:
            [leaf] = [c for c, _ in leaves if c.serial_number == request.serial_number]
            return self.pki.response(leaf, **options)

        return answer

    @asyncTest
    async def test_staplesResponse(self) -> None:
        """
        Each certificate's good response is stapled to the handshakes that
        get it (SNI picks which), and the admin page and metrics say so.
        """
        leaves: list[Leaf] = []
        responder, url = self.startResponder(self.answerFor(leaves))
        leaves += [self.pki.leaf("a.test", url), self.pki.leaf("b.test", url)]
        paths = [self.pki.writeLeaf(self.directory, leaf) for leaf in leaves]
        service, port = await self.startProxy(paths)
        certificates = await self.settled(service)
        self.assertEqual([c["ocsp"]["state"] for c in certificates], ["stapled"] * 2)
        for name, (certificate, _) in zip(("a.test", "b.test"), leaves, strict=True):
            der, serial = await self.staple(port, name)
            self.assertEqual(serial, certificate.serial_number)
            response = ocsp.load_der_ocsp_response(der)
            self.assertEqual(response.serial_number, certificate.serial_number)
            self.assertEqual(response.certificate_status, ocsp.OCSPCertStatus.GOOD)
        self.assertEqual(
            sorted(r.serial_number for r in responder.requests),
            sorted(leaf[0].serial_number for leaf in leaves),
        )
        text = await self.metrics(service)
        self.assertIn(f'rproxy_tls_ocsp_stapled{{certificate="{paths[1]}"}} 1.0', text)
        self.assertIn(
            "rproxy_tls_certificate_expiry_timestamp_seconds{"
            f'certificate="{paths[0]}",names="a.test"}}',
            text,
        )
        admin = Admin(service, AdminConfig(listen=()), reactor)
        self.assertIn("stapled until", renderPage(admin.status(), 0))

    async def assertNothingStapled(
        self, answer: Callable[[ocsp.OCSPRequest], bytes] | None, error: str
    ) -> None:
        """
        With a responder that answers C{answer} (or none listening), the
        handshake works, nothing is stapled, and the status and metrics
        tell C{error}.
        """
        leaves: list[Leaf] = []
        if answer is None:
            url = f"http://{LOCALHOST}:{freePort()}/"
        else:
            _, url = self.startResponder(answer)
        leaves.append(self.pki.leaf("a.test", url))
        path = self.pki.writeLeaf(self.directory, leaves[0])
        service, port = await self.startProxy([path])
        [certificate] = await self.settled(service)
        self.assertEqual(certificate["ocsp"]["state"], "failing")
        self.assertIn(error, certificate["ocsp"]["last_error"])
        self.assertEqual(
            await self.staple(port, "a.test"), (b"", leaves[0][0].serial_number)
        )
        text = await self.metrics(service)
        self.assertIn(f'rproxy_tls_ocsp_stapled{{certificate="{path}"}} 0.0', text)
        self.assertIn(
            f'rproxy_tls_ocsp_fetch_errors_total{{certificate="{path}"}} 1.0', text
        )
        admin = Admin(service, AdminConfig(listen=()), reactor)
        self.assertIn("last error", renderPage(admin.status(), 0))
        await service.stopService()

    @asyncTest
    async def test_responderDown(self) -> None:
        """
        A responder that is down: the handshake works without a staple.
        """
        await self.assertNothingStapled(None, "refused")

    @asyncTest
    async def test_badAnswers(self) -> None:
        """
        Garbage, a REVOKED status, an answer about another certificate and
        an HTTP error are never stapled.
        """
        other = self.pki.leaf("other.test", "http://x.test/")[0]
        revoked = ocsp.OCSPCertStatus.REVOKED
        cases: list[tuple[Callable[[ocsp.OCSPRequest], bytes], str]] = [
            (lambda request: b"<html>not OCSP</html>", "not an OCSP response"),
            (
                lambda request: self.pki.response(self.leafFor(request), revoked),
                "REVOKED",
            ),
            (lambda request: self.pki.response(other), "not for this certificate"),
        ]
        for answer, error in cases:
            await self.assertNothingStapled(answer, error)

    def leafFor(self, request: ocsp.OCSPRequest) -> x509.Certificate:
        for name in os.listdir(self.directory):
            with open(os.path.join(self.directory, name), "rb") as f:
                for certificate in x509.load_pem_x509_certificates(f.read()):
                    if certificate.serial_number == request.serial_number:
                        return certificate
        raise KeyError(request.serial_number)

    @asyncTest
    async def test_httpError(self) -> None:
        """
        A responder answering an HTTP error is not stapled from.
        """

        class Failing(Responder):
            def render_POST(self, request: Any) -> bytes:
                request.setResponseCode(503)
                return b"busy"

        failing = Failing(lambda request: b"")
        port = reactor.listenTCP(0, Site(failing), interface=LOCALHOST)
        self.addCleanup(port.stopListening)
        leaf = self.pki.leaf("a.test", f"http://{LOCALHOST}:{port.getHost().port}/")
        service, tlsPort = await self.startProxy(
            [self.pki.writeLeaf(self.directory, leaf)]
        )
        [certificate] = await self.settled(service)
        self.assertIn("HTTP 503", certificate["ocsp"]["last_error"])
        self.assertEqual((await self.staple(tlsPort, "a.test"))[0], b"")

    @asyncTest
    async def test_withoutResponderOrDisabled(self) -> None:
        """
        A certificate naming no responder, or a group with C{ocsp_stapling}
        off, is served without any fetch.
        """
        responder, url = self.startResponder(lambda request: b"")
        plain = self.pki.writeLeaf(self.directory, self.pki.leaf("a.test", None))
        service, port = await self.startProxy([plain])
        [certificate] = await self.settled(service)
        self.assertEqual(certificate["ocsp"], {"state": "no responder"})
        self.assertEqual((await self.staple(port, "a.test"))[0], b"")
        named = self.pki.writeLeaf(self.directory, self.pki.leaf("b.test", url))
        service, port = await self.startProxy([named], ocspStapling=False)
        [certificate] = await self.settled(service)
        self.assertEqual(certificate["ocsp"], {"state": "off"})
        self.assertEqual((await self.staple(port, "b.test"))[0], b"")
        self.assertEqual(responder.requests, [])
