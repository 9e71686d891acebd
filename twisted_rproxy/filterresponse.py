"""
The response side of a L{twisted_rproxy.filters.FilterChain}:
L{FilteredResponse}, the L{twisted_rproxy.intercept.ResponseInterceptor}
that runs the filters' response hooks once before the head is written and
their body transforms on each write and at the end; and L{logFailure} and
L{abortResponse}, what the chain does with a hook that fails.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest

from twisted_rproxy.intercept import ResponseInterceptor, foldPassedHeaders
from twisted_rproxy.interfaces import IBodyTransform
from twisted_rproxy.messages import RequestContext, ResponseHead
from twisted_rproxy.pages import errorBody, reasonPhrase

__all__ = ["FilteredResponse", "abortResponse", "logFailure"]

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
        context.mark("responseStarted")
        # So that hooks see and change every header.
        foldPassedHeaders(request)
        headers = request.responseHeaders
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
        request.responseHeaders = head.headers
        if self.transforms:
            if request.code in NO_BODY_CODES:
                self.transforms = []
                return
            # The length is the untransformed body's: the GET's body is sent
            # chunked, and a HEAD's head is the GET's (RFC 9110 section
            # 9.3.2; RFC 9112 section 6.1 lets it say Transfer-Encoding).
            head.headers.removeHeader(b"content-length")
            if request.method == b"HEAD":
                self.transforms = []
                if request.clientproto == b"HTTP/1.1":
                    head.headers.setRawHeaders(b"transfer-encoding", [b"chunked"])

    def _replaceWithError(self) -> None:
        """
        Answer 500 in place of a response whose head a hook failed on; what
        its writer still writes is dropped.
        """
        self.failed = _REPLACED
        request = self.request
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
        self.context.mark("finished")
        self.downFinish()
