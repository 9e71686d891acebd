"""
twisted_rproxy: an event-driven reverse proxy built on Twisted.

Run it with C{twistd rproxy}, or embed its pieces in a Twisted application:
L{ProxyService} (listeners, pools and the resource tree for one
configuration), L{ProxyResource} (forwards requests through a
L{BackendPool}), L{Router} (host and path prefix routing) and the
configuration loaders.

Filters (L{FilterChain} and what hooks see: L{RequestContext},
L{ResponseHead}, L{FilterResponse}) wrap any resource; see
C{docs/filters.rst}. L{twisted_rproxy.testing} holds test doubles for filter
authors and embedders.
"""

from twisted_rproxy._version import __version__
from twisted_rproxy.cache import CacheResource, MemoryStore
from twisted_rproxy.config import (
    Config,
    ConfigError,
    FilterConfig,
    PoolConfig,
    RouteConfig,
    ServerConfig,
    backendServers,
    configFromArguments,
    loadConfig,
)
from twisted_rproxy.filters import (
    FilterChain,
    FilterOptionError,
    FilterResponse,
    RequestContext,
    ResponseHead,
    findFilterFactory,
)
from twisted_rproxy.pool import BackendPool
from twisted_rproxy.proxy import ProxyResource
from twisted_rproxy.router import Router
from twisted_rproxy.server import ProxySite
from twisted_rproxy.service import ProxyService, makeService
from twisted_rproxy.static import StaticResource
from twisted_rproxy.tree import buildResource

__all__ = [
    "__version__",
    "BackendPool",
    "CacheResource",
    "MemoryStore",
    "Config",
    "ConfigError",
    "FilterChain",
    "FilterConfig",
    "FilterOptionError",
    "FilterResponse",
    "PoolConfig",
    "RequestContext",
    "ResponseHead",
    "ProxyResource",
    "ProxyService",
    "ProxySite",
    "RouteConfig",
    "Router",
    "ServerConfig",
    "StaticResource",
    "backendServers",
    "buildResource",
    "configFromArguments",
    "findFilterFactory",
    "loadConfig",
    "makeService",
]
