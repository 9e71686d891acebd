"""
Tests for L{twisted_rproxy.cache.resource.CacheResource} in a whole
L{ProxyService} on a memory reactor: clients fed raw bytes, the backend's
connections answered by hand, time moved with the reactor's clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.loopback import ParsedResponse
from tests.memory import Proxy, backend, responsesOf
from twisted_rproxy.config import CacheConfig, PoolConfig, RouteConfig

_BODY = b"0123456789"


def _response(
    body: bytes = _BODY, cacheControl: bytes = b"max-age=60", extra: bytes = b""
) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nCache-Control: " + cacheControl + b"\r\n"
        b'ETag: "v1"\r\n' + extra + b"Content-Length: %d\r\n\r\n" % (len(body),) + body
    )


def _get(target: bytes = b"/a", extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: example.test\r\n" + extra + b"\r\n"


class CachingProxy(Proxy):
    """
    A memory proxy whose only route is cached by a cache called C{main},
    with C{X-Cache} on.
    """

    def __init__(self, **cacheOptions: Any) -> None:
        options = {"statusHeader": True, **cacheOptions}
        super().__init__(
            routes=(RouteConfig(path="/", pool="app", cache="main"),),
            pools={"app": PoolConfig(name="app", servers=(backend(8001),), retries=0)},
            caches={"main": CacheConfig(name="main", **options)},
        )

    def get(self, data: bytes) -> StringTransport:
        """
        Send one request on a new client connection.
        """
        _, transport = self.exchange(data)
        return transport

    def backendRequests(self) -> bytes:
        """
        Everything every backend connection was sent.
        """
        return b"".join(transport.value() for _, transport in self.backends)

    def fetch(self, data: bytes, answer: bytes) -> ParsedResponse:
        """
        Send one request on a new client connection; answer it as the
        backend with C{answer}.
        """
        return _only(self.roundTrip(data, answer))


def _only(transport: StringTransport) -> ParsedResponse:
    responses = responsesOf(transport)
    if len(responses) != 1:
        raise AssertionError(f"not one response: {transport.value()!r}")
    return responses[0]


class HitAndMissTests(SynchronousTestCase):
    """
    Fresh responses are stored and answered from the store.
    """

    def test_missThenHit(self) -> None:
        """
        The first request goes to the backend (C{MISS}); the second is
        answered from the store (C{HIT}) with an C{Age}, and the backend
        sees nothing more.
        """
        proxy = CachingProxy()
        first = proxy.fetch(_get(), _response())
        self.assertEqual((first.status, first.body), (200, _BODY))
        self.assertEqual(first.header(b"x-cache"), [b"MISS"])
        proxy.reactor.advance(7)
        second = _only(proxy.get(_get()))
        self.assertEqual((second.status, second.body), (200, _BODY))
        self.assertEqual(second.header(b"x-cache"), [b"HIT"])
        self.assertEqual(second.header(b"age"), [b"7"])
        self.assertEqual(second.header(b"etag"), [b'"v1"'])
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        self.assertEqual(proxy.backendRequests().count(b"GET /a "), 1)
        resource = proxy.service.router.routes[0].resource
        self.assertEqual((resource.stats[b"MISS"], resource.stats[b"HIT"]), (1, 1))

    def test_otherTargetMisses(self) -> None:
        """
        A stored response answers its own target only.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(b"/a"), _response())
        other = _get(b"/b")
        transport = proxy.get(other)
        self.assertEqual(responsesOf(transport), [])
        self.assertIn(b"GET /b ", proxy.backendRequests())

    def test_staleGoesToBackend(self) -> None:
        """
        Once its C{max-age} is over, a stored response is not served as it
        is: the request goes to the backend, with the stored validator.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response(cacheControl=b"max-age=10"))
        proxy.reactor.advance(11)
        transport = proxy.get(_get())
        self.assertEqual(responsesOf(transport), [])
        self.assertIn(b'If-None-Match: "v1"\r\n', proxy.backendRequests())

    def test_noStoreNotStored(self) -> None:
        """
        A C{no-store} response is passed on and not stored: the next
        request goes to the backend again.
        """
        proxy = CachingProxy()
        first = proxy.fetch(_get(), _response(cacheControl=b"no-store"))
        self.assertEqual(first.header(b"x-cache"), [b"MISS"])
        second = proxy.fetch(_get(), _response(cacheControl=b"no-store"))
        self.assertEqual(second.header(b"x-cache"), [b"MISS"])
        self.assertEqual(proxy.backendRequests().count(b"GET /a "), 2)

    def test_postBypasses(self) -> None:
        """
        A POST is passed on (C{BYPASS}) and invalidates what is stored for
        its target.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        post = b"POST /a HTTP/1.1\r\nHost: example.test\r\nContent-Length: 1\r\n\r\nx"
        posted = proxy.fetch(post, b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(posted.header(b"x-cache"), [b"BYPASS"])
        self.assertEqual(responsesOf(proxy.get(_get())), [])
        self.assertEqual(proxy.backendRequests().count(b"GET /a "), 2)


class CoalescingTests(SynchronousTestCase):
    """
    Concurrent misses for one key wait for a single backend request.
    """

    def test_concurrentMissesShareOneBackendRequest(self) -> None:
        """
        Three clients asking for the same target at once cause one backend
        request; all three get the response when it arrives.
        """
        proxy = CachingProxy()
        transports = [proxy.get(_get()) for _ in range(3)]
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        protocol, backendTransport = proxy.acceptBackend()
        self.assertEqual(backendTransport.value().count(b"GET /a "), 1)
        protocol.dataReceived(_response())
        for transport in transports:
            self.assertEqual(_only(transport).body, _BODY)
        self.assertEqual(
            [_only(t).header(b"x-cache") for t in transports],
            [[b"MISS"], [b"HIT"], [b"HIT"]],
        )
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_waiterGoesAloneAfterCoalesceWait(self) -> None:
        """
        A request waiting on another's backend request goes to the backend
        itself once C{coalesceWait} is over.
        """
        proxy = CachingProxy(coalesceWait=2.0)
        proxy.get(_get())
        waiting = proxy.get(_get())
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        proxy.reactor.advance(1.9)
        self.assertEqual(len(proxy.reactor.tcpClients), 1)
        proxy.reactor.advance(0.2)
        self.assertEqual(len(proxy.reactor.tcpClients), 2)
        protocol, _ = proxy.acceptBackend()
        protocol.dataReceived(_response(b"alone"))
        self.assertEqual(_only(waiting).body, b"alone")

    def test_unstorableAnswerSendsWaitersToBackend(self) -> None:
        """
        When the shared backend response cannot be stored, each waiter then
        makes a backend request of its own.
        """
        proxy = CachingProxy()
        proxy.get(_get())
        waiting = proxy.get(_get())
        protocol, _ = proxy.acceptBackend()
        snapshot = proxy.snapshot()
        protocol.dataReceived(_response(cacheControl=b"no-store"))
        self.assertEqual(responsesOf(waiting), [])
        proxy.backendSince(snapshot).dataReceived(
            _response(b"own", cacheControl=b"no-store")
        )
        self.assertEqual(_only(waiting).body, b"own")
        self.assertEqual(proxy.backendRequests().count(b"GET /a "), 2)

    def test_noCoalescing(self) -> None:
        """
        With C{coalesce} off, each concurrent miss goes to the backend.
        """
        proxy = CachingProxy(coalesce=False)
        for _ in range(3):
            proxy.get(_get())
        self.assertEqual(len(proxy.reactor.tcpClients), 3)


class PurgeTests(SynchronousTestCase):
    """
    C{PURGE} removes stored responses, from allowed networks only.
    """

    def purge(self, proxy: CachingProxy, target: bytes) -> ParsedResponse:
        return _only(
            proxy.get(b"PURGE " + target + b" HTTP/1.1\r\nHost: example.test\r\n\r\n")
        )

    def test_purgeRemoves(self) -> None:
        """
        A C{PURGE} from an allowed network removes the stored response and
        says how many it removed; the next request is a miss.
        """
        proxy = CachingProxy(purgeFrom=("192.0.2.0/24",))
        proxy.fetch(_get(), _response())
        purged = self.purge(proxy, b"/a")
        self.assertEqual(purged.status, 200)
        self.assertEqual(json.loads(purged.body), {"purged": 1})
        self.assertEqual(self.purge(proxy, b"/a").body, b'{"purged": 0}\n')
        again = proxy.fetch(_get(), _response(b"fresh"))
        self.assertEqual((again.body, again.header(b"x-cache")), (b"fresh", [b"MISS"]))

    def test_purgePrefix(self) -> None:
        """
        A C{PURGE} of a target ending with C{*} removes every stored
        response whose URL starts with it, and only those.
        """
        proxy = CachingProxy(purgeFrom=("192.0.2.7/32",))
        for target in (b"/img/1", b"/img/2", b"/other"):
            proxy.fetch(_get(target), _response())
        self.assertEqual(json.loads(self.purge(proxy, b"/img/*").body), {"purged": 2})
        self.assertEqual(_only(proxy.get(_get(b"/other"))).header(b"x-cache"), [b"HIT"])

    def test_purgeRefusedFromOtherNetworks(self) -> None:
        """
        A C{PURGE} from outside C{purgeFrom} (or with none configured) is
        refused with 403 and removes nothing.
        """
        for purgeFrom in ((), ("10.0.0.0/8",)):
            proxy = CachingProxy(purgeFrom=purgeFrom)
            proxy.fetch(_get(), _response())
            self.assertEqual(self.purge(proxy, b"/a").status, 403)
            self.assertEqual(_only(proxy.get(_get())).header(b"x-cache"), [b"HIT"])


class ServedFromStoreTests(SynchronousTestCase):
    """
    Conditional and range requests answered from a stored response.
    """

    def test_notModifiedFromStore(self) -> None:
        """
        A request whose C{If-None-Match} matches the stored C{ETag} gets a
        304 without a body from the store; one that does not match gets
        the whole stored response.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        matching = _only(proxy.get(_get(extra=b'If-None-Match: "v1"\r\n')))
        self.assertEqual((matching.status, matching.body), (304, b""))
        self.assertEqual(matching.header(b"etag"), [b'"v1"'])
        self.assertEqual(matching.header(b"x-cache"), [b"HIT"])
        other = _only(proxy.get(_get(extra=b'If-None-Match: "v0"\r\n')))
        self.assertEqual((other.status, other.body), (200, _BODY))
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_rangeFromStore(self) -> None:
        """
        A C{Range} of a stored response gets a 206 with that slice and its
        C{Content-Range}; an unsatisfiable one gets 416.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        part = _only(proxy.get(_get(extra=b"Range: bytes=2-5\r\n")))
        self.assertEqual((part.status, part.body), (206, b"2345"))
        self.assertEqual(part.header(b"content-range"), [b"bytes 2-5/10"])
        self.assertEqual(part.header(b"content-length"), [b"4"])
        past = _only(proxy.get(_get(extra=b"Range: bytes=50-60\r\n")))
        self.assertEqual(past.status, 416)
        self.assertEqual(past.header(b"content-range"), [b"bytes */10"])
        self.assertEqual(len(proxy.reactor.tcpClients), 1)

    def test_ifRangeMismatchGetsWhole(self) -> None:
        """
        A C{Range} with an C{If-Range} that does not match the stored
        C{ETag} gets the whole response.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        whole = _only(proxy.get(_get(extra=b'Range: bytes=2-5\r\nIf-Range: "v0"\r\n')))
        self.assertEqual((whole.status, whole.body), (200, _BODY))

    def test_ifRangeMatchGetsRange(self) -> None:
        """
        A C{Range} with an C{If-Range} naming the stored strong C{ETag}
        gets the range; a list of tags, or two C{Range} lines, the whole
        response (as static files answer them).
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        part = _only(proxy.get(_get(extra=b'Range: bytes=2-5\r\nIf-Range: "v1"\r\n')))
        self.assertEqual((part.status, part.body), (206, b"2345"))
        for extra in [
            b'Range: bytes=2-5\r\nIf-Range: "v1", "v2"\r\n',
            b"Range: bytes=2-5\r\nRange: bytes=6-7\r\n",
        ]:
            whole = _only(proxy.get(_get(extra=extra)))
            self.assertEqual((whole.status, whole.body), (200, _BODY), extra)

    def test_multipleRangesFromStore(self) -> None:
        """
        Several ranges of a stored response get a 206 with a
        C{multipart/byteranges} body, each part with the stored type and
        its C{Content-Range}.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response(extra=b"Content-Type: text/plain\r\n"))
        got = _only(proxy.get(_get(extra=b"Range: bytes=0-1, 5-6\r\n")))
        self.assertEqual(got.status, 206)
        [contentType] = got.header(b"content-type")
        prefix = b"multipart/byteranges; boundary="
        self.assertTrue(contentType.startswith(prefix), contentType)
        boundary = contentType[len(prefix) :]
        self.assertEqual(
            got.body,
            b"--%s\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n"
            b"\r\n01\r\n--%s\r\nContent-Type: text/plain\r\n"
            b"Content-Range: bytes 5-6/10\r\n\r\n56\r\n--%s--\r\n"
            % (boundary, boundary, boundary),
        )
        self.assertEqual(got.header(b"content-length"), [b"%d" % (len(got.body),)])
        self.assertEqual(got.header(b"content-range"), [])

    def test_headIgnoresRange(self) -> None:
        """
        A HEAD with a C{Range} gets the head of the whole stored response
        (RFC 9110 section 14.2: ranges apply to GET only).
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response())
        head = b"HEAD /a HTTP/1.1\r\nHost: example.test\r\nRange: bytes=2-5\r\n\r\n"
        [got] = responsesOf(proxy.get(head), [b"HEAD"])
        self.assertEqual((got.status, got.body), (200, b""))
        self.assertEqual(got.header(b"content-length"), [b"10"])

    def test_rangeOfUnstoredGoesToBackend(self) -> None:
        """
        A C{Range} request for something not stored goes to the backend as
        it is, and its partial answer is not stored.
        """
        proxy = CachingProxy()
        partial = (
            b"HTTP/1.1 206 Partial Content\r\nCache-Control: max-age=60\r\n"
            b"Content-Range: bytes 0-1/10\r\nContent-Length: 2\r\n\r\n01"
        )
        got = proxy.fetch(_get(extra=b"Range: bytes=0-1\r\n"), partial)
        self.assertEqual((got.status, got.body), (206, b"01"))
        self.assertIn(b"Range: bytes=0-1\r\n", proxy.backendRequests())
        self.assertEqual(responsesOf(proxy.get(_get())), [])
        self.assertEqual(proxy.backendRequests().count(b"GET /a "), 2)

    def test_revalidatedBy304(self) -> None:
        """
        A stale response revalidated by the backend's 304 is served from
        the store (C{REVALIDATED}), fresh again for the next request.
        """
        proxy = CachingProxy()
        proxy.fetch(_get(), _response(cacheControl=b"max-age=10"))
        proxy.reactor.advance(11)
        revalidated = proxy.fetch(
            _get(),
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\n'
            b"Cache-Control: max-age=10\r\n\r\n",
        )
        self.assertEqual((revalidated.status, revalidated.body), (200, _BODY))
        self.assertEqual(revalidated.header(b"x-cache"), [b"REVALIDATED"])
        self.assertEqual(_only(proxy.get(_get())).header(b"x-cache"), [b"HIT"])
