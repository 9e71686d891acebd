"""
One way to watch or change a response as it is written:
L{ResponseInterceptor}, installed on a twisted.web request as the request's
own C{write} and C{finish}.

Whatever writes the response (a resource, the proxy's fast head-writing
path, a file producer) calls C{request.write} and C{request.finish}, so an
interceptor sees every response whoever writes it. Interceptors chain: each
passes on to the C{write} and C{finish} that were in place when it was
installed, so the last one installed sees the response first (a cache
inside a route's filter chain captures the response before the filters'
response hooks change it on its way to the client).

The filters' response hooks (L{twisted_rproxy.filters}) and the cache's
capture of a miss and invalidation after an unsafe request
(L{twisted_rproxy.cache}) are interceptors; no other module of the package
replaces a request's C{write} or C{finish}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ResponseInterceptor", "foldPassedHeaders"]


class ResponseInterceptor:
    """
    The response side of one request, seen on its way out.

    Installed by its constructor. Subclasses override the hooks:

      - L{head}, called once when the head is final: before the first body
        write, or at finish for a response that wrote none;
      - L{body}, called with each piece written (C{b""} included), which
        passes it on (by default, as it is) with L{downWrite};
      - L{end}, called when the response is finished, which finishes it
        (by default at once) with L{downFinish}.

    @ivar request: The request.
    @ivar headDone: Whether L{head} was called.
    @ivar downWrite: The C{write} in place before this one: where the body
        goes on.
    @ivar downFinish: The C{finish} in place before this one.
    """

    # _pending: whether write and finish must look at more than the body,
    # that is, before the head or once detached; the only test on the
    # path of each piece of the body.
    __slots__ = ("request", "headDone", "downWrite", "downFinish", "_pending")

    def __init__(self, request: Any) -> None:
        """
        Install the interceptor on C{request}.

        @param request: A twisted.web request (or one providing C{write}
            and C{finish} as it does).
        """
        self.request = request
        self.headDone = False
        self._pending = True
        self.downWrite: Callable[[bytes], None] = request.write
        self.downFinish: Callable[[], None] = request.finish
        request.write = self.write
        request.finish = self.finish

    def head(self) -> None:
        """
        The response's status and headers are final (nothing of the head
        is written yet): read or change them on C{request}. Nothing by
        default.
        """

    def body(self, data: bytes) -> None:
        """
        A piece of the body is written: pass it on (or not), changed or
        not, with L{downWrite}.

        @param data: The piece, possibly empty.
        """
        self.downWrite(data)

    def end(self) -> None:
        """
        The response is finished: finish it (or not) with L{downFinish}.
        """
        self.downFinish()

    def write(self, data: bytes) -> None:
        """
        What C{request.write} is while the interceptor is installed.
        """
        if self._pending:
            if not self.headDone:
                self.headDone = True
                self._pending = False
                self.head()
            if self._pending:
                # Detached.
                self.downWrite(data)
                return
        self.body(data)

    def finish(self) -> None:
        """
        What C{request.finish} is while the interceptor is installed.
        """
        if self._pending:
            if not self.headDone:
                self.headDone = True
                self._pending = False
                self.head()
            if self._pending:
                # Detached.
                self.downFinish()
                return
        self.end()

    def detach(self) -> bool:
        """
        Stop intercepting: from now on writes and the finish go on
        unchanged (and L{head} is not called if it was not yet).

        The request gets back the C{write} and C{finish} it had before
        when this interceptor is the last installed still in place; when
        one installed later chains to it, this one stays in the chain and
        passes everything through.

        @return: Whether the request has its former C{write} and C{finish}
            back.
        """
        self.headDone = True
        self._pending = True
        request = self.request
        # Bound methods compare equal when they bind the same function to
        # the same object.
        if request.write == self.write and request.finish == self.finish:
            request.write = self.downWrite
            request.finish = self.downFinish
            return True
        return False


def foldPassedHeaders(request: Any) -> None:
    """
    Move the headers that the proxy passes as they are
    (C{request.passedHeaders}, see
    L{twisted_rproxy.interfaces.IProxyRequest}) into C{responseHeaders},
    so that whoever changes the head sees and changes every header. A
    request without them is left as it is.

    A passed C{Date} replaces the one in C{responseHeaders}; the response
    keeps the content type it has (twisted.web adds no default one).
    """
    passed = getattr(request, "passedHeaders", None)
    if passed is None:
        return
    request.passedHeaders = None
    request.defaultContentType = None
    headers = request.responseHeaders
    for name, value in passed:
        if name[0] in b"Dd" and name.lower() == b"date":
            headers.setRawHeaders(name, [value])
        else:
            headers.addRawHeader(name, value)
