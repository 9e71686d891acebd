"""
Static files: L{StaticResource} serves one directory, in place of
L{twisted.web.static.File}, with what a reverse proxy in front of browsers
needs and nothing that could leak what lies outside the directory.

It refuses every way out of its root (C{..}, encoded slashes and
backslashes, NUL bytes, drive letters, overlong UTF-8, symbolic links that
leave the root) and hidden files with the same 404 page as a missing file;
answers conditional requests (C{If-None-Match}, C{If-Modified-Since},
C{If-Match}, C{If-Unmodified-Since}, C{If-Range}) from a strong ETag and the
modification time; serves single and multiple byte ranges; picks
precompressed C{.br} and C{.gz} siblings by the client's
C{Accept-Encoding}; and streams bodies in chunks of L{CHUNK_SIZE} bytes with
a pull producer, so that a file is never read whole into memory.

  - L{twisted_rproxy.static.rules}: the decisions, pure functions of data
    tested without a reactor (L{parseRange}, L{parseAcceptEncoding},
    L{chooseEncoding}, L{etagMatches}, L{parseHTTPDate}, L{contentTypeFor},
    L{safeSegmentName}, the preconditions); byte ranges are served with
    L{twisted_rproxy.rules.ranges}, as the cache serves them;
  - L{twisted_rproxy.static.resource}: L{StaticResource};
  - L{twisted_rproxy.static.producer}: the producer that streams a file;
  - L{twisted_rproxy.static.pages}: the pages it writes itself (errors with
    headers, the redirect to a directory, a directory's listing).
"""

from twisted_rproxy.static.producer import CHUNK_SIZE
from twisted_rproxy.static.resource import DEFAULT_INDEX, StaticResource
from twisted_rproxy.static.rules import (
    MAX_RANGES,
    MIME_TYPES,
    chooseEncoding,
    contentTypeFor,
    etagMatches,
    makeETag,
    parseAcceptEncoding,
    parseHTTPDate,
    parseRange,
    safeSegmentName,
)

__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_INDEX",
    "MAX_RANGES",
    "MIME_TYPES",
    "StaticResource",
    "chooseEncoding",
    "contentTypeFor",
    "etagMatches",
    "makeETag",
    "parseAcceptEncoding",
    "parseHTTPDate",
    "parseRange",
    "safeSegmentName",
]
