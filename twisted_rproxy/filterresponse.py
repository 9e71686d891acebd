"""
The response side of a L{twisted_rproxy.filters.FilterChain}:
L{FilteredResponse}, the L{twisted_rproxy.intercept.ResponseInterceptor}
that runs the filters' response hooks once before the head is written and
their body transforms on each write and at the end; and L{logFailure} and
L{abortResponse}, what the chain does with a hook that fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, overload

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from twisted_rproxy.intercept import ResponseInterceptor
from twisted_rproxy.interfaces import IBodyTransform
from twisted_rproxy.messages import RequestContext, ResponseHead
from twisted_rproxy.pages import errorBody, reasonPhrase

__all__ = ["FilteredResponse", "HeadHeaders", "abortResponse", "logFailure"]

_log = Logger()


def logFailure(failure: Failure, name: str, hook: str, request: IRequest) -> None:
    _log.failure(
        "Filter {filter!r} failed in its {hook} hook for {method} {uri}",
        failure,
        filter=name,
        hook=hook,
        method=request.method.decode("latin-1"),
        uri=request.uri.decode("latin-1"),
    )


def abortResponse(request: Any) -> None:
    """
    Close a response that can't be completed, whatever the channel.
    """
    channel = request.channel
    if channel is None:
        return
    forceClose = getattr(channel, "forceClose", None)
    if forceClose is not None:
        forceClose()
        return
    transport = getattr(channel, "transport", None)
    target = transport if transport is not None else channel
    abort = getattr(target, "abortConnection", None) or target.loseConnection
    abort()


_Name = TypeVar("_Name", str, bytes)
_T = TypeVar("_T")


class HeadHeaders(Headers):
    """
    The headers that response hooks see (as C{head.headers}, and as the
    request's C{responseHeaders} while they run): those of
    C{responseHeaders} and those the proxy passes as they are
    (C{passedHeaders}), folded together when a hook first reads or changes
    them, so that hooks that never look at them cost no copy and leave the
    head to be written as if no filter had seen it.

    A passed C{Date} replaces one of C{responseHeaders}, as
    L{twisted_rproxy.intercept.foldPassedHeaders} folds them.

    Every public method of L{Headers} folds first (a test checks that none
    is left out).
    """

    __slots__ = ("_own", "_passed")

    def __init__(self, own: Headers, passed: Sequence[tuple[bytes, bytes]]) -> None:
        """
        @param own: The response's C{responseHeaders}, left unchanged.
        @param passed: The headers the proxy passes as they are.
        """
        Headers.__init__(self)
        self._own = own
        self._passed: Sequence[tuple[bytes, bytes]] | None = passed

    @property
    def folded(self) -> bool:
        """
        Whether the headers were read or changed (and so folded together).
        """
        return self._passed is None

    def _fold(self) -> None:
        passed = self._passed
        if passed is None:
            return
        self._passed = None
        for name, values in self._own.getAllRawHeaders():
            Headers.setRawHeaders(self, name, values)
        for name, value in passed:
            if name[0] in b"Dd" and name.lower() == b"date":
                Headers.setRawHeaders(self, name, [value])
            else:
                Headers.addRawHeader(self, name, value)

    def __repr__(self) -> str:
        self._fold()
        return Headers.__repr__(self)

    def __cmp__(self, other: object) -> Any:
        self._fold()
        if isinstance(other, HeadHeaders):
            other._fold()
        return Headers.__cmp__(self, other)

    def __eq__(self, other: object) -> bool:
        # Defined here too so that Python asks this subclass first, folded,
        # when a plain Headers is compared with it.
        return bool(self.__cmp__(other) == 0)

    def __ne__(self, other: object) -> bool:
        return bool(self.__cmp__(other) != 0)

    __hash__ = Headers.__hash__

    def copy(self) -> Headers:
        self._fold()
        copied = Headers()
        for name, values in Headers.getAllRawHeaders(self):
            copied.setRawHeaders(name, values)
        return copied

    def hasHeader(self, name: _Name) -> bool:
        self._fold()
        return Headers.hasHeader(self, name)

    def removeHeader(self, name: _Name) -> None:
        self._fold()
        Headers.removeHeader(self, name)

    def setRawHeaders(self, name: str | bytes, values: Sequence[str | bytes]) -> None:
        self._fold()
        Headers.setRawHeaders(self, name, values)

    def addRawHeader(self, name: str | bytes, value: str | bytes) -> None:
        self._fold()
        Headers.addRawHeader(self, name, value)

    @overload
    def getRawHeaders(self, name: _Name) -> Sequence[_Name] | None: ...

    @overload
    def getRawHeaders(self, name: _Name, default: _T) -> Sequence[_Name] | _T: ...

    def getRawHeaders(self, name: Any, default: Any = None) -> Any:
        self._fold()
        return Headers.getRawHeaders(self, name, default)

    def getAllRawHeaders(self) -> Iterator[tuple[bytes, Sequence[bytes]]]:
        self._fold()
        return Headers.getAllRawHeaders(self)


# How a filtered response failed: replaced by a 500 page before its head
# was written, or aborted after.
_REPLACED = "replaced"
_ABORTED = "aborted"


class FilteredResponse(ResponseInterceptor):
    """
    The response side of one request of a L{FilterChain}: an interceptor
    that runs the response hooks once before the head is written, and the
    body transforms on each write and at the end.
    """

    __slots__ = ("context", "hooks", "transforms", "failed")

    def __init__(
        self,
        request: Any,
        context: RequestContext,
        hooks: Sequence[tuple[str, Callable[..., Any]]],
    ) -> None:
        self.context = context
        self.hooks = hooks
        self.transforms: list[tuple[str, IBodyTransform]] = []
        self.failed = ""
        ResponseInterceptor.__init__(self, request)

    def head(self) -> None:
        request = self.request
        context = self.context
        # (What context.mark does, without a call more per request.)
        context.timings["responseStarted"] = context.reactor.seconds()
        own = request.responseHeaders
        passed = getattr(request, "passedHeaders", None)
        lazy = None
        headers = own
        if passed is not None:
            # So that hooks see and change every header, once they look.
            headers = lazy = HeadHeaders(own, passed)
            request.responseHeaders = lazy
        code, phrase = request.code, request.code_message
        head = ResponseHead(code, phrase, headers)
        for name, hook in self.hooks:
            try:
                transform = hook(request, context, head)
                if transform is not None and not IBodyTransform.providedBy(transform):
                    raise TypeError(
                        f"filterResponse returned {transform!r}, expected None "
                        "or an IBodyTransform"
                    )
            except Exception:
                logFailure(Failure(), name, "response", request)
                self._replaceWithError()
                return
            if transform is not None:
                self.transforms.append((name, transform))
        if head.code != code:
            request.code = head.code
            if head.phrase == phrase:
                head.phrase = reasonPhrase(head.code)
        request.code_message = head.phrase
        if self.transforms:
            if request.code in NO_BODY_CODES:
                self.transforms = []
            else:
                # The length is the untransformed body's: the GET's body is
                # sent chunked, and a HEAD's head is the GET's (RFC 9110
                # section 9.3.2; RFC 9112 section 6.1 lets it say
                # Transfer-Encoding).
                head.headers.removeHeader(b"content-length")
                if request.method == b"HEAD":
                    self.transforms = []
                    if request.clientproto == b"HTTP/1.1":
                        head.headers.setRawHeaders(b"transfer-encoding", [b"chunked"])
        final = head.headers
        if lazy is not None and final is lazy and not lazy.folded:
            # No hook looked at the headers: the head is written as it is
            # when no filter sees it.
            request.responseHeaders = own
            return
        request.responseHeaders = final
        if lazy is not None:
            # As foldPassedHeaders leaves a response: all its headers in
            # responseHeaders, no default content type.
            request.defaultContentType = None
            request.passedHeaders = []
        elif request.defaultContentType is None and hasattr(request, "passedHeaders"):
            # The proxy's own head writer (ProxyRequest) writes it from
            # responseHeaders, as it writes a response no filter saw.
            request.passedHeaders = []

    def _replaceWithError(self) -> None:
        """
        Answer 500 in place of a response whose head a hook failed on; what
        its writer still writes is dropped.
        """
        self.failed = _REPLACED
        request = self.request
        if getattr(request, "passedHeaders", None) is not None:
            # The backend's headers are not the error page's.
            request.passedHeaders = None
        body = errorBody(500)
        request.code = 500
        request.code_message = reasonPhrase(500)
        request.responseHeaders = Headers(
            {
                b"content-type": [b"text/html; charset=utf-8"],
                b"content-length": [b"%d" % (len(body),)],
                b"cache-control": [b"no-store"],
            }
        )
        self.downWrite(body if request.method != b"HEAD" else b"")

    def _transform(self, data: bytes) -> bytes | None:
        for name, transform in self.transforms:
            try:
                data = transform.transform(data)
            except Exception:
                logFailure(Failure(), name, "body transform", self.request)
                self.failed = _ABORTED
                abortResponse(self.request)
                return None
        return data

    def body(self, data: bytes) -> None:
        if self.failed:
            return
        if self.transforms and data:
            transformed = self._transform(data)
            if transformed is None:
                return
            if not transformed and self.request.startedWriting:
                return
            # (An empty first piece still writes the head.)
            data = transformed
        self.downWrite(data)

    def end(self) -> None:
        if self.failed:
            if self.failed == _REPLACED:
                self.downFinish()
            # Aborted: the response is never finished as if whole.
            return
        if self.transforms:
            rest = b""
            for name, transform in self.transforms:
                try:
                    if rest:
                        rest = transform.transform(rest)
                    rest += transform.flush()
                except Exception:
                    logFailure(Failure(), name, "body flush", self.request)
                    self.failed = _ABORTED
                    abortResponse(self.request)
                    return
            if rest:
                self.downWrite(rest)
        context = self.context
        context.timings["finished"] = context.reactor.seconds()
        self.downFinish()
