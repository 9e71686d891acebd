"""
The interfaces of twisted_rproxy, in one place.

Implementations declare them with C{@implementer}; third parties implement
them to plug their own pieces in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)
from twisted.web.iweb import IRequest
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from twisted_rproxy.messages import (
        BackendRequest,
        CacheEntry,
        RequestContext,
        ResponseHead,
    )


class IProxyReactor(
    IReactorTCP, IReactorSSL, IReactorUNIX, IReactorTime, IReactorCore
):
    """
    The reactor the proxy's pieces are given: TCP, TLS and unix sockets
    (for C{http://unix:} backends), time, and the core (system event
    triggers). Only C{twisted_rproxy.tap} imports the global reactor;
    everything else takes one of these.
    """


class IBackendServer(Interface):
    """
    One backend server as a balancer sees it.
    """

    weight = Attribute(
        "The server's balancing weight now, an L{int} >= 1 (below the "
        "configured one, scaled, during a slow start)."
    )
    inFlight = Attribute("The requests on the server now, an L{int}.")
    server = Attribute(
        "The server's configuration (a L{twisted_rproxy.config.BackendServer}: "
        "its C{url} and configured C{weight})."
    )
    available = Attribute(
        "L{True} when the server can take one more request now (it is not "
        "at its connection limit)."
    )


class IBalancer(Interface):
    """
    Chooses the backend server for each request of a pool.

    A balancer is pure bookkeeping: it sees the servers and answers; it does
    no I/O and reads no clock.
    """

    def pick(
        servers: Sequence[IBackendServer], request: BackendRequest
    ) -> IBackendServer | None:
        """
        Choose a server for a request.

        @param servers: The pool's servers, a list of
            L{twisted_rproxy.pool.Backend} (each an L{IBackendServer}); the
            balancer reads it and does not change it.
        @param request: The L{twisted_rproxy.pool.BackendRequest} to place.
        @return: One of C{servers} whose C{available} is true, or L{None}
            when none can take the request now.
        """


class IResponseReceiver(Interface):
    """
    What a L{twisted_rproxy.pool.BackendPool} reports one exchange's
    progress to: the response head, the body as it arrives, the end, or why
    it failed.
    """

    def responseStarted(
        status: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        connection: object,
    ) -> None:
        """
        The backend's final (non-1xx) response head arrived.

        @param connection: An L{twisted.internet.interfaces.IPushProducer}
            for the backend connection's reading, so that the receiver can
            pause the backend while its own consumer is slow.
        """

    def responseData(data: bytes) -> None:
        """
        A piece of the (de-chunked) response body arrived.
        """

    def responseFinished() -> None:
        """
        The response body is complete.
        """

    def requestFailed(reason: object) -> None:
        """
        The exchange failed; C{reason} is a
        L{twisted_rproxy.pool.BackendError}. Called at most once, either
        before C{responseStarted} (no response byte was received) or after
        it (the response was cut short).
        """


class IInterimReceiver(Interface):
    """
    An L{IResponseReceiver} that also takes the backend's interim (1xx)
    responses, such as C{103 Early Hints}, as they arrive, before
    C{responseStarted}. A receiver that does not provide it never hears of
    them. C{100 Continue} is not passed on (the proxy answers a client's
    C{Expect} itself), nor is C{101} (a protocol switch is a tunnel's).
    """

    def interimResponse(
        status: int, reason: bytes, headers: list[tuple[bytes, bytes]]
    ) -> None:
        """
        An interim response head arrived; more may follow, then the final
        one. Its headers are the backend's, hop-by-hop ones included: they
        belong to this interim response only, never to the final one.
        """


class IFilterFactory(Interface):
    """
    A filter plugin: what C{getPlugins(IFilterFactory, twisted_rproxy.plugins)}
    finds. It also provides L{twisted.plugin.IPlugin}.

    The configuration names a factory in C{[filters.NAME] plugin = "..."};
    the rest of that table is the options given to L{buildFilter}.
    """

    name = Attribute(
        "The plugin's name, a L{str} unique among the installed filter "
        'plugins: what C{plugin = "..."} names.'
    )

    def buildFilter(options: Mapping[str, object]) -> object:
        """
        Validate C{options} and build the filter.

        It may be called more than once for one configuration (C{--check}
        builds filters to validate their options, the service builds them
        again), so it must do no I/O and start nothing.

        A factory that needs more than its options (the shared state, the
        reactor, its own name) says so by taking a second positional
        parameter, C{buildFilter(options, environment)}: it is then given
        an L{IFilterEnvironment}.  Whether it does is read once per factory
        from the method's signature, so a factory written for
        C{buildFilter(options)} goes on being called that way.

        @param options: The filter's table from the configuration, without
            its C{plugin} key: TOML values (L{str}, L{int}, L{float},
            L{bool}, lists, tables as mappings).
        @return: An object providing L{IRequestFilter}, L{IResponseFilter},
            L{IErrorFilter}, or several of them. It may have a C{close()}
            method (returning L{None}, a L{Deferred} or a coroutine): the
            service calls it once when a reload or a stop retires the
            filter, after the requests through it (see
            L{twisted_rproxy.filterenv.FilterSet.retire}).
        @raise twisted_rproxy.filters.FilterOptionError: For a bad option:
            the configuration reports it as C{filters.NAME.OPTION}.
        """


class IFilterEnvironment(Interface):
    """
    What a filter is built in, given to the factories that take it (see
    L{IFilterFactory.buildFilter}): the filter keeps what it needs for its
    I/O instead of reaching for globals.

    When the configuration is only checked (C{--check}, loading a file, a
    reload refused), C{checking} is true, C{reactor} is a
    L{twisted.internet.task.Clock} and C{sharedState} a client that is
    never started: building the filter does no I/O either way.
    """

    name = Attribute(
        "The filter's name in the configuration (the NAME of "
        "C{[filters.NAME]}), a L{str}: a prefix for its shared keys."
    )
    reactor = Attribute(
        "The L{twisted.internet.interfaces.IReactorTime} the filter's timers "
        "and clock run on."
    )
    sharedState = Attribute(
        "The client of C{[state]} (a L{twisted_rproxy.state.SharedState}), or "
        "L{None} when the configuration has no C{[state]} table."
    )
    workers = Attribute(
        "The configured number of worker processes (C{[server] workers} or "
        "C{--workers}), an L{int} >= 1: state kept in the process is kept "
        "once per worker."
    )
    checking = Attribute(
        "L{True} when the filter is built only to check its options: it "
        "will never serve a request."
    )

    def warn(message: str) -> None:
        """
        Report something about the filter's configuration that is allowed
        but probably not meant (C{--check} prints it, the start logs it):
        one sentence, without the filter's name (which is added).
        """

    def connectionPool(name: str = "default") -> object:
        """
        A persistent L{twisted.web.client.HTTPConnectionPool} on C{reactor}
        for the filter's own HTTP requests, the same one for the same
        C{name}; the proxy closes its connections when the filter is
        retired. Making it does no I/O.
        """

    def httpClient() -> object:
        """
        A C{treq.HTTPClient} over L{connectionPool} (treq must be
        installed), or the stub client a test gave the environment.
        """


class IRequestFilter(Interface):
    """
    A filter's request hook: it sees each request of its routes before the
    route's resource does.
    """

    def filterRequest(request: IRequest, context: RequestContext) -> object:
        """
        Inspect or change the request, answer it, or let it pass.

        The hook may change C{request.method}, C{request.uri} (the target
        forwarded to a pool; routing is already done), C{request.requestHeaders}
        and, for a buffered body, C{request.content} (a file; replace it with
        a new L{io.BytesIO} to change the body).

        @param request: The client's request.
        @param context: What the filters of this request share.
        @return: L{None} to let the request go on, or a
            L{twisted_rproxy.filters.FilterResponse} to answer it at once
            (the later filters and the route's resource do not see it); or
            a L{Deferred} or coroutine (C{async def}) of one of these. An
            exception or a failed L{Deferred} answers 500 and is logged with
            the filter's name.
        """


class IBodyTransform(Interface):
    """
    Transforms one response body as it streams.
    """

    def transform(data: bytes) -> bytes:
        """
        Transform a piece of the body; return what to send now (may be
        C{b""}, to keep it for later).
        """

    def flush() -> bytes:
        """
        The body is complete: return what is left to send.
        """


class IResponseFilter(Interface):
    """
    A filter's response hook: it sees the status and every header of each
    response of its routes (proxied, static, error pages, answers of
    request hooks) before the head is written.
    """

    def filterResponse(
        request: IRequest, context: RequestContext, head: ResponseHead
    ) -> IBodyTransform | None:
        """
        Change the response's status and headers, and choose to transform
        its body.

        It runs synchronously, on the streaming path: work that must wait
        belongs in the request hook, which can leave its results in
        C{context.data}.

        @param head: The response head; change C{head.code},
            C{head.phrase} and C{head.headers} (a L{Headers}) in place.
        @return: L{None}, or an L{IBodyTransform} for this response's body.
            When any filter transforms the body, its C{Content-Length} is
            removed (the body is sent chunked). An exception answers 500
            (before the head is written) or closes the connection (after),
            and is logged with the filter's name.
        """


class IErrorFilter(Interface):
    """
    A filter's hook for backend errors: a pool could not give a response
    (refused, timed out, overloaded, malformed).
    """

    def filterError(
        request: IRequest, context: RequestContext, error: Exception
    ) -> object:
        """
        Answer a request whose backend failed.

        @param error: The L{twisted_rproxy.pool.BackendError}; its C{status}
            is the status the proxy would answer (502, 503 or 504).
        @return: L{None} for the proxy's own error page, or a
            L{twisted_rproxy.filters.FilterResponse} to answer instead; or
            a L{Deferred} or coroutine of one of these. The first filter
            that answers wins.
        """


class ICacheStore(Interface):
    """
    Where a L{twisted_rproxy.cache.CacheResource} keeps its responses: each
    a L{twisted_rproxy.cache.CacheEntry} under a primary key (C{entry.key})
    and, for responses with C{Vary}, one of several variants of that key
    (C{entry.variant}).

    A store bounds itself: C{put} may evict other entries, or refuse one.

    B{Answering at once or later.} C{get}, C{put}, C{resized}, C{remove}
    and C{purge} each return either their result itself or a
    L{twisted.internet.defer.Deferred} that fires with it.  A store that
    has the answer in memory (L{twisted_rproxy.cache.MemoryStore}) must
    return it at once: the cache then answers a hit without a Deferred or
    a reactor turn.  A store that does I/O (Redis, a disk) returns a
    Deferred, and the cache renders C{NOT_DONE_YET} and goes on when it
    fires (dropping the request if its client went in the meantime).

    B{Failing.} Such a Deferred should not fail for an outage of what is
    behind it: C{get} then fires with C{[]} (a miss) and C{put} with
    L{False}.  If it fails anyway, the cache treats a failed C{get} as a
    miss and a failed C{put}, C{resized} or C{remove} as not done, and
    never answers an error page for it; a failed C{remove} or C{purge} of
    a C{PURGE} request is answered 503 (the removal is not known to have
    happened).  An operation must fire within a bounded time.

    B{Order.} The cache waits for C{put} before it wakes the requests that
    waited for the same key, so that what they look up is there.

    A store shared by several processes may also offer the lock of a cold
    key's backend request (C{claimFetch}, C{releaseFetch}, C{awaitEntry}:
    see L{twisted_rproxy.cache.flight.SharedFlights}), so that one process
    fetches and the others wait for what it stores.

    B{Streaming (optional).} A store may offer C{openWriter(entry)}, which
    the cache looks up with C{getattr}: given the entry a response will
    become (its head, an empty body), it returns an L{ICacheBodyWriter}
    that takes the body as it arrives (then C{put} is not called), or
    L{None} to decline.  Its C{get} may return entries whose body stays
    in the store: those have C{bodyLength} and an C{openBody()} returning a
    Deferred that fires with a streaming producer (C{producePieces
    (consumer, pieces)}) or L{None} if the body is gone.
    """

    maxSize = Attribute("The most bytes the store holds, an L{int}.")
    size = Attribute(
        "The bytes it holds now (in this process, for a shared store), an "
        "L{int} <= C{maxSize}."
    )

    def get(key: bytes) -> list[CacheEntry] | Deferred[list[CacheEntry]]:
        """
        The entries stored under C{key} (every variant), counting as a use
        of each for eviction.

        @return: A list of L{twisted_rproxy.cache.CacheEntry}, possibly
            empty, or a Deferred firing with one.
        """

    def put(entry: CacheEntry) -> bool | Deferred[bool]:
        """
        Store C{entry}, replacing the entry of the same key and variant.

        @return: Whether it was stored (L{False} when it is larger than the
            store, or of no further use), or a Deferred firing with it.
        """

    def resized(entry: CacheEntry) -> Deferred[None] | None:
        """
        Account again for a stored C{entry} whose headers (and freshness)
        were updated in place (after a 304); a store that keeps copies
        stores its new head.

        @return: L{None}, or a Deferred firing once done.
        """

    def remove(key: bytes) -> int | Deferred[int]:
        """
        Remove every variant stored under C{key}.

        @return: How many were removed, or a Deferred firing with it.
        """

    def purge(prefix: bytes) -> int | Deferred[int]:
        """
        Remove every entry whose key starts with C{prefix}.

        @return: How many were removed, or a Deferred firing with it.
        """

    def keys() -> Iterator[bytes]:
        """
        An iterator over the primary keys stored (those held in this
        process, for a store shared with others).
        """


class ICacheBodyWriter(Interface):
    """
    The body of a response on its way into a store (see L{ICacheStore}'s
    optional C{openWriter}), written as it arrives.
    """

    def write(data: bytes) -> None:
        """
        Append a piece of the body (in order); the writer may give up (too
        large, a failure), and then ignores the rest.
        """

    def finish(entry: CacheEntry) -> bool | Deferred[bool]:
        """
        The body is complete: store it as C{entry}'s (whose own C{body} is
        empty, its C{Content-Length} the length written).

        @return: Whether it was stored, or a Deferred firing with it.
        """

    def discard() -> None:
        """
        Store nothing (the response failed or is not to be stored); what was
        written is removed.
        """


class IProxyStatus(Interface):
    """
    A running proxy as its admin page and metrics see it (a
    L{twisted_rproxy.service.ProxyService} provides it): what they read,
    and nothing they may change but the site's request observer.
    """

    config = Attribute("The running L{twisted_rproxy.config.Config}.")
    pools = Attribute(
        "The L{twisted_rproxy.pool.BackendPool}s by name (each has C{status()})."
    )
    cacheStores = Attribute("The cache stores (L{ICacheStore}) by cache name.")
    site = Attribute(
        "The L{twisted_rproxy.server.ProxySite}: its C{connections}, "
        "C{draining} and C{requestObserver}."
    )
    reactor = Attribute("The L{IProxyReactor} the proxy runs on.")

    def listeningAddresses() -> list[object]:
        """
        The addresses the proxy's listeners are bound to now.
        """


class IProxyRequest(IRequest):
    """
    What travels with a request between the server, the router, the filters,
    the cache and the proxy, beyond twisted.web's L{IRequest}: the one
    contract for it. L{twisted_rproxy.server.ProxyRequest} provides it.

    A resource of the package handed a request that does not provide it (a
    plain twisted.web request, where the proxy is embedded in another
    L{Site<twisted.web.server.Site>}) keeps to twisted.web's own interface:
    headers go through C{responseHeaders}, loss is learnt from
    C{notifyFinish}.
    """

    route = Attribute(
        "The route (config.routes.RouteConfig) that takes the request, once "
        "the router found it, else None."
    )
    passedHeaders = Attribute(
        "Response headers passed on from a backend as they are (already "
        "rewritten), a list of (name, value) pairs written after those of "
        "responseHeaders; None when there are none. Whoever reads or changes "
        "the response head folds them into responseHeaders first."
    )
    onConnectionLost = Attribute(
        "Called with the Failure if the client connection is lost before "
        "the response is finished; None. Set by whoever waits on a backend "
        "for the request."
    )
    onBackendError = Attribute(
        "Called as onBackendError(error, fallback) in place of the proxy's "
        "error page when the backend fails before a response started "
        "(error: a messages.BackendError; fallback: a no-argument callable "
        "that writes the page). Set by the route's error filters; None."
    )
    bodyStream = Attribute(
        "For a streamed body, the messages.RequestBodyStream the proxy "
        "forwards from; None when the body is buffered in content."
    )
    connectTarget = Attribute(
        "The authority of an allowed CONNECT request (its uri is then b'/', "
        "for routing), else None."
    )
    peerHost = Attribute(
        "The connection's peer address, when trusted proxies in front named "
        "another client (which getClientAddress then returns); else None."
    )
    startedAt = Attribute("Reactor time when the request's head was in.")
    upstreamStarted = Attribute(
        "Reactor time when the request was handed to a pool, or None."
    )
    upstreamTime = Attribute(
        "Seconds from upstreamStarted to the backend's response head, or None."
    )
    upstreamServer = Attribute("URL of the backend server that answered, or None.")
    cacheStatus = Attribute(
        "What a cache made of the request ('hit', 'miss', 'stale', "
        "'revalidated', ...), or None when no cache saw it."
    )
    lostStatus = Attribute(
        "The status the access log gives the request if its connection is "
        "lost before a response started: None for 499 (the client left), or "
        "the status of the proxy's own reason to close it."
    )

    def writeInterim(
        status: int, reason: bytes, headers: Sequence[tuple[bytes, bytes]]
    ) -> bool:
        """
        Send the client an interim (1xx) response now, ahead of the final
        one: a status line and C{headers} over HTTP/1.1, a C{HEADERS} frame
        without C{END_STREAM} over HTTP/2. Nothing of it is kept: the final
        response's status and headers are untouched.

        It is not sent, and L{False} returned, to an HTTP/1.0 client (RFC
        9110 section 15.2), once the final response started or finished,
        or after the client went away.

        @param headers: Already rewritten for the client (no hop-by-hop
            header).
        @return: Whether it was sent.
        """


class ITunnelChannel(Interface):
    """
    A client connection that can stop speaking HTTP and carry bytes both
    ways for a tunnel (a WebSocket upgrade, a C{CONNECT}): the HTTP/1.1
    channel of L{twisted_rproxy.server} provides it; an HTTP/2 stream does
    not.
    """

    transport = Attribute("The client connection's transport.")

    def switchToTunnel(protocol: object) -> bytes:
        """
        Hand the connection over to C{protocol} (an
        L{twisted.internet.interfaces.IProtocol}): from now on it gets
        every byte the client sends and the connection's end; HTTP parsing
        and the idle timer stop.

        @return: Bytes the client sent after the request, already read.
        """
