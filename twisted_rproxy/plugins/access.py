"""
The built-in C{access} filter: allow and deny lists of client addresses
and networks, IPv4 and IPv6, for the routes that list it; a refused
request is answered 403 with the proxy's own page.

Configuration::

    [filters.office]
    plugin = "access"
    allow = ["10.0.0.0/8", "2001:db8::/32"]
    deny = ["10.6.6.0/24"]

A deny network wins over an allow network; with an allow list, anything
not in it is refused. The address checked is the client's as the proxy
knows it: the PROXY protocol's, or that of the trusted proxies'
forwarding headers (C{[server] trusted_proxies}).
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface import implementer

from twisted_rproxy.filteroptions import FilterOptions
from twisted_rproxy.filters import FilterOptionError, FilterResponse, RequestContext
from twisted_rproxy.interfaces import IFilterFactory, IRequestFilter
from twisted_rproxy.policies import AccessList


def networkList(options: Mapping[str, object], name: str) -> tuple[str, ...]:
    """
    The option C{name}: a list of addresses and CIDR networks.

    @raise FilterOptionError: Naming the bad entry.
    """
    value = options.get(name, [])
    if not isinstance(value, list):
        raise FilterOptionError(name, f"expected a list of networks, got {value!r}")
    for index, item in enumerate(value):
        try:
            AccessList([item] if isinstance(item, str) else [""])
        except ValueError:
            raise FilterOptionError(
                f"{name}[{index}]",
                f"invalid network {item!r} (expected an IPv4 or IPv6 address "
                'or CIDR network like "10.0.0.0/8")',
            ) from None
    return tuple(value)


@implementer(IRequestFilter)
class AccessFilter:
    """
    Refuses requests from clients its L{AccessList} does not allow.
    """

    def __init__(self, access: AccessList) -> None:
        self.access = access

    def filterRequest(
        self, request: IRequest, context: RequestContext
    ) -> FilterResponse | None:
        if self.access.allows(context.clientAddress):
            return None
        return FilterResponse.error(403)


@implementer(IPlugin, IFilterFactory)
class AccessFactory:
    """
    The C{access} filter plugin.
    """

    name = "access"

    def buildFilter(self, options: Mapping[str, object]) -> AccessFilter:
        FilterOptions(options).checkKeys(["allow", "deny"])
        allow = networkList(options, "allow")
        deny = networkList(options, "deny")
        if not allow and not deny:
            raise FilterOptionError("", "has nothing to do: give allow or deny")
        return AccessFilter(AccessList(allow, deny))


#: What getPlugins finds.
access = AccessFactory()
