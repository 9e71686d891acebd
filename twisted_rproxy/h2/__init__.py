"""
The proxy's own HTTP/2 server (RFC 9113, RFC 7541): L{connection} (the
protocol of one connection: reads and writes, C{GOAWAY}s, timeouts,
graceful stop), L{state} (its stream states and flow control: what each
frame does), L{stream} (a stream as the twisted.web channel of its
request), L{frames} (reading and building frames, flood bounds), L{hpack}
(header compression), L{head} (a request's header block checked) and
L{limits} (what a connection accepts, and the flood counters). Each module
imports only those before it.
"""

from __future__ import annotations

from twisted_rproxy.h2.connection import H2ServerConnection
from twisted_rproxy.h2.limits import H2Limits
from twisted_rproxy.h2.stream import H2StreamChannel

__all__ = ["H2Limits", "H2ServerConnection", "H2StreamChannel"]
