"""
HTTP/1.1 on the wire, without the wire (RFC 9112): L{ResponseParser}, which
takes a backend's bytes and reports what they mean to a L{ResponseEvents};
L{formatRequestHead}, which writes a request head; and L{formatAuthority},
which names a server in a C{Host} header.

Both clients of a backend use them: the pooled connection
(L{twisted_rproxy.pool.connection}) and the tunnel
(L{twisted_rproxy.upgrade}), which reads only the head of the answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from enum import Enum
from typing import NamedTuple, Protocol

#: The largest response head (status line and headers) accepted, however
#: its bytes arrive.
MAX_RESPONSE_HEAD = 65536

#: The longest chunk-size line (with its extensions) waited for.
MAX_CHUNK_HEADER = 4096


class Framing(Enum):
    """
    How the body of a response is delimited (RFC 9112 section 6.3).
    """

    #: C{Content-Length} bytes.
    LENGTH = "length"
    #: Chunked transfer coding.
    CHUNKED = "chunked"
    #: Everything until the connection closes.
    UNTIL_CLOSE = "until-close"
    #: No body: an interim response, a response to C{HEAD}, a 204, a 304,
    #: or C{Content-Length: 0}.
    NONE = "none"
    #: No body, and no more HTTP: a 101, or a 2xx to C{CONNECT}; the bytes
    #: after the head belong to another protocol (see
    #: L{ResponseParser.detach}).
    SWITCH = "switch"


class ResponseHead(NamedTuple):
    """
    A response head, as the parser understood it.

    (A named tuple rather than an attrs class: one is made per response on
    the proxy's hot path, and a tuple is the cheapest value to make.)

    @ivar status: The status code.
    @ivar reason: The reason phrase (possibly empty).
    @ivar headers: The header lines, in order, duplicates kept, values
        stripped of surrounding blanks.
    @ivar framing: How the body is delimited.
    @ivar contentLength: The validated C{Content-Length}, or L{None}.
    @ivar keepAlive: Whether the head lets the connection carry another
        exchange after this one (the HTTP version, C{Connection} options and
        framing say so; L{ResponseEvents.responseEnd} has the last word).
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    framing: Framing
    contentLength: int | None
    keepAlive: bool


class ResponseEvents(Protocol):
    """
    What a L{ResponseParser} reports, in wire order: heads, the end of the
    response and errors; the body goes to the callable that
    L{responseHead} returns. A method (or that callable) may call the
    parser's L{ResponseParser.detach} (or, from L{responseEnd},
    L{ResponseParser.expect}); the parser then reports nothing more of the
    bytes it was given.
    """

    def interimHead(self, head: ResponseHead) -> None:
        """
        An interim (1xx) head arrived; the final one follows.
        """

    def responseHead(self, head: ResponseHead) -> Callable[[bytes], object]:
        """
        The final head arrived; the body, if any, follows.

        @return: What gets the pieces of the decoded body. (A callable
            rather than a method of this interface: the receiver's own,
            one call less for each piece of a body.)
        """

    def responseEnd(self, keepAlive: bool) -> None:
        """
        The response is complete.

        @param keepAlive: Whether the connection may carry another exchange:
            the head allowed it and no byte came after the response.
        """

    def protocolError(self, reason: str) -> None:
        """
        The bytes are not a well-formed response; the parser stopped.

        @param reason: What was wrong, for a log line.
        """


_STATUS = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: (.*))?")

#: One header line, after the CRLF that ends the line before it: a token
#: name, a colon, and the value without its surrounding blanks.
_HEADER_LINE = re.compile(
    rb"\r\n([!#$%&'*+\-.^_`|~0-9A-Za-z]+):"
    rb"[ \t]*((?:[^\r\n]*[^\r\n \t])?)[ \t]*(?=\r\n|$)"
)

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

# Parser states.
_IDLE = 0
_HEAD = 1
_LENGTH = 2
_CHUNKED = 3
_UNTIL_CLOSE = 4
_SWITCHED = 5
_STOPPED = 6

# Sub-states of the chunked decoder.
_CHUNK_SIZE = 0
_CHUNK_DATA = 1
_CHUNK_CRLF = 2
_CHUNK_TRAILER = 3

_F_LENGTH = Framing.LENGTH
_F_CHUNKED = Framing.CHUNKED
_F_UNTIL_CLOSE = Framing.UNTIL_CLOSE
_F_NONE = Framing.NONE
_F_SWITCH = Framing.SWITCH


def parseStatusLine(line: bytes) -> int | None:
    """
    The status code of an HTTP/1.x status line (without its CRLF), or
    L{None} if C{line} is not one.
    """
    match = _STATUS.fullmatch(line)
    return None if match is None else int(match.group(2))


def _ignoreBody(data: bytes) -> None:
    pass


# Bypasses NamedTuple's Python-level __new__ (see ResponseHead).
_newHead = tuple.__new__


class ResponseParser:
    """
    A strict, incremental parser of HTTP/1.1 responses, one exchange at a
    time: bytes in (L{feed}, L{feedEOF}), events out (to a
    L{ResponseEvents}). It does no I/O and knows no clock.

    It refuses (with L{ResponseEvents.protocolError}) a head over
    L{MAX_RESPONSE_HEAD}, a malformed status or header line, a NUL or a
    bare CR or LF in a head, a bad or conflicting C{Content-Length}, both
    C{Content-Length} and C{Transfer-Encoding}, a bad chunk size or chunk
    end, a chunk-size line over L{MAX_CHUNK_HEADER}, and (unless
    C{allowSwitch}) a protocol switch.

    @ivar headReceived: Whether the final head of the current response was
        parsed (before it, nothing of the response is passed on, so a
        failure may still be retried elsewhere).
    @ivar bodyBuffered: Set as the final head is reported: whether the
        whole body is already received with it.
    """

    headReceived = False
    bodyBuffered = False

    def __init__(self, events: ResponseEvents, allowSwitch: bool = False) -> None:
        """
        @param events: Told what the bytes mean.
        @param allowSwitch: Whether a 101 (or a 2xx to C{CONNECT}) is a
            final head with L{Framing.SWITCH}, as a tunnel wants it, or a
            protocol error, as a pooled connection does.
        """
        self._events = events
        self._bodyData: Callable[[bytes], object] = _ignoreBody
        self._allowSwitch = allowSwitch
        self._state = _IDLE
        self._buffer = b""
        self._remaining = 0
        self._chunkState = _CHUNK_SIZE
        self._keepAlive = True
        self._method = b""

    def expect(self, method: bytes) -> None:
        """
        A request was sent: parse its response.

        @param method: The request's method, which frames the response
            (C{HEAD}: no body; C{CONNECT}: a 2xx switches protocols).
        """
        self._state = _HEAD
        self._method = method
        self.headReceived = False

    def detach(self) -> bytes:
        """
        Stop parsing, for good: the connection now speaks another protocol,
        or is being closed.

        @return: The bytes received but not parsed (after a
            L{Framing.SWITCH} head: the first bytes of the new protocol).
        """
        rest, self._buffer = self._buffer, b""
        self._state = _STOPPED
        return rest

    def feedEOF(self) -> bool:
        """
        The connection closed; the parser stops.

        @return: Whether that completed the response (a body delimited by
            the close). Otherwise a response that was expected is cut short.
        """
        ended = self._state == _UNTIL_CLOSE
        self._state = _STOPPED
        self._buffer = b""
        return ended

    def feed(self, data: bytes) -> None:
        """
        Bytes from the connection.
        """
        if self._state == _LENGTH and not self._buffer:
            # The common case, kept short: a piece of a sized body.
            remaining = self._remaining
            if len(data) < remaining:
                self._remaining = remaining - len(data)
                self._bodyData(data)
                return
        if self._buffer:
            self._buffer += data
        else:
            self._buffer = data
        while self._buffer:
            state = self._state
            if state == _HEAD:
                if not self._parseHead():
                    return
            elif state == _LENGTH:
                buffer = self._buffer
                remaining = self._remaining
                if len(buffer) < remaining:
                    self._buffer = b""
                    self._remaining = remaining - len(buffer)
                    self._bodyData(buffer)
                    return
                # What comes after the body is dropped, and makes the
                # connection not reusable (as _end does, inlined).
                self._buffer = b""
                self._remaining = 0
                self._bodyData(buffer[:remaining])
                if self._state == _LENGTH:
                    self._state = _IDLE
                    self._events.responseEnd(
                        self._keepAlive and len(buffer) == remaining
                    )
                return
            elif state == _CHUNKED:
                self._parseChunked()
                return
            elif state == _UNTIL_CLOSE:
                buffer, self._buffer = self._buffer, b""
                self._bodyData(buffer)
                return
            elif state == _IDLE:
                self._error("data without a request")
                return
            elif state == _SWITCHED:
                # The new protocol's: kept for detach().
                return
            else:
                self._buffer = b""
                return

    def _error(self, why: str) -> None:
        self._state = _STOPPED
        self._buffer = b""
        self._events.protocolError(why)

    def _end(self) -> None:
        keepAlive = self._keepAlive and not self._buffer
        self._buffer = b""
        self._state = _IDLE
        self._events.responseEnd(keepAlive)

    def _parseHead(self) -> bool:
        """
        Parse the head at the start of the buffer, if it is all there.

        @return: Whether to go on parsing the buffer.
        """
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end > MAX_RESPONSE_HEAD or (end < 0 and len(buffer) > MAX_RESPONSE_HEAD):
            # However the bytes arrive: all at once or in pieces.
            self._error("response head too large")
            return False
        if end < 0:
            return False
        # The head is buffer[:end], read in place rather than copied.
        self._buffer = buffer[end + 4 :]
        statusEnd = buffer.find(b"\r\n", 0, end)
        if statusEnd < 0:
            statusEnd = end
        match = _STATUS.fullmatch(buffer, 0, statusEnd)
        if match is None:
            self._error("bad status line")
            return False
        version, statusText, reason = match.groups()
        status = int(statusText)
        headers = _HEADER_LINE.findall(buffer, statusEnd, end)
        # Every line must be a well-formed header line, with no NUL and no
        # CR or LF but the line ends.
        lineEnds = buffer.count(b"\n", 0, end)
        if (
            len(headers) != lineEnds
            or buffer.count(b"\r", 0, end) != lineEnds
            or buffer.find(b"\x00", 0, end) >= 0
        ):
            self._error("malformed response head")
            return False
        contentLength = None
        chunked = False
        transferEncoding = False
        connectionTokens = b""
        for name, value in headers:
            # Only names of these lengths can be framing headers: most
            # headers are not lowercased at all.
            size = len(name)
            if size == 14:
                if name.lower() != b"content-length":
                    continue
                for item in value.split(b","):
                    item = item.strip(b" \t")
                    if not item.isdigit() or (
                        contentLength is not None and int(item) != contentLength
                    ):
                        self._error("bad Content-Length")
                        return False
                    contentLength = int(item)
            elif size == 17:
                if name.lower() == b"transfer-encoding":
                    transferEncoding = True
                    codings = value.split(b",")
                    chunked = codings[-1].strip(b" \t").lower() == b"chunked"
            elif size == 10 and name.lower() == b"connection":
                connectionTokens += b"," + value.lower()
        if reason is None:
            reason = b""
        events = self._events
        if status < 200 and status != 101:
            # An interim response; the final one follows.
            events.interimHead(
                _newHead(
                    ResponseHead,
                    (status, reason, headers, _F_NONE, contentLength, True),
                )
            )
            return self._state == _HEAD
        if status == 101 or (self._method == b"CONNECT" and status < 300):
            if not self._allowSwitch:
                self._error("unexpected protocol switch")
                return False
            self._state = _SWITCHED
            self.headReceived = True
            self.bodyBuffered = True
            self._bodyData = _ignoreBody
            events.responseHead(
                _newHead(
                    ResponseHead,
                    (status, reason, headers, _F_SWITCH, contentLength, False),
                )
            )
            return False
        if version == b"0":
            keepAlive = b"keep-alive" in connectionTokens
        else:
            keepAlive = not connectionTokens or b"close" not in connectionTokens
        if transferEncoding and contentLength is not None:
            self._error("both Transfer-Encoding and Content-Length")
            return False
        buffered = False
        if status == 204 or status == 304 or self._method == b"HEAD":
            framing = _F_NONE
            state = _IDLE
            buffered = True
        elif chunked:
            framing = _F_CHUNKED
            state = _CHUNKED
            self._chunkState = _CHUNK_SIZE
        elif transferEncoding or contentLength is None:
            framing = _F_UNTIL_CLOSE
            state = _UNTIL_CLOSE
            keepAlive = False
        elif contentLength:
            framing = _F_LENGTH
            state = _LENGTH
            self._remaining = contentLength
            buffered = len(self._buffer) >= contentLength
        else:
            framing = _F_NONE
            state = _IDLE
            buffered = True
        self._state = state
        self._keepAlive = keepAlive
        self.headReceived = True
        self.bodyBuffered = buffered
        self._bodyData = events.responseHead(
            _newHead(
                ResponseHead,
                (status, reason, headers, framing, contentLength, keepAlive),
            )
        )
        if self._state != state:
            # Detached by the receiver of the event.
            return False
        if state == _IDLE:
            self._end()
            return False
        return True

    def _parseChunked(self) -> None:
        bodyData = self._bodyData
        while self._buffer:
            chunkState = self._chunkState
            buffer = self._buffer
            if chunkState == _CHUNK_DATA:
                remaining = self._remaining
                if len(buffer) <= remaining:
                    self._buffer = b""
                    self._remaining = remaining = remaining - len(buffer)
                    if remaining == 0:
                        self._chunkState = _CHUNK_CRLF
                    bodyData(buffer)
                else:
                    self._buffer = buffer[remaining:]
                    self._remaining = 0
                    self._chunkState = _CHUNK_CRLF
                    bodyData(buffer[:remaining])
                if self._state != _CHUNKED:
                    return
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_HEADER:
                    self._error("chunk header too long")
                return
            line = buffer[:end]
            self._buffer = buffer[end + 2 :]
            if chunkState == _CHUNK_SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if _HEX.fullmatch(size) is None:
                    self._error("bad chunk size")
                    return
                self._remaining = int(size, 16)
                self._chunkState = _CHUNK_DATA if self._remaining else _CHUNK_TRAILER
            elif chunkState == _CHUNK_CRLF:
                if line:
                    self._error("chunk data longer than its size")
                    return
                self._chunkState = _CHUNK_SIZE
            elif not line:
                # The empty line that ends the trailer section.
                self._end()
                return


def formatRequestHead(
    method: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    host: bytes | None = None,
    contentLength: int | None = None,
    chunked: bool = False,
) -> bytes:
    """
    An HTTP/1.1 request head, up to and with the blank line that ends it.

    @param headers: The header lines, written as they are (already checked
        and rewritten by the caller).
    @param host: A C{Host} value written first, when C{headers} has none.
    @param contentLength: A C{Content-Length} written last, if not
        L{None}.
    @param chunked: Whether to write C{Transfer-Encoding: chunked} last.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    if host is not None:
        parts += (b"Host: ", host, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if contentLength is not None:
        parts.append(b"Content-Length: %d\r\n\r\n" % (contentLength,))
    elif chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    else:
        parts.append(b"\r\n")
    return b"".join(parts)


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def formatAuthority(host: str, port: int, scheme: str = "http") -> bytes:
    """
    The authority (RFC 9110 section 4.2) of a server, as a C{Host} header
    says it: an IPv6 address in brackets (a zone's C{%} escaped as
    RFC 6874 says), a name in its IDNA form, and the port unless it is the
    scheme's default.

    @param host: A name, an IPv4 address, or an IPv6 address with or without
        its brackets.
    @param scheme: C{http}, C{https}, C{ws} or C{wss}.
    """
    if ":" in host:
        if not host.startswith("["):
            host = "[" + host.replace("%25", "%").replace("%", "%25") + "]"
        name = host.encode("ascii")
    elif host.isascii():
        name = host.encode("ascii")
    else:
        name = host.encode("idna")
    if port == _DEFAULT_PORTS.get(scheme):
        return name
    return b"%s:%d" % (name, port)
