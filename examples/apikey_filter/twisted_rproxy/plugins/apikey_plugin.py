"""
The filter plugins of the apikey_filter package, found by
C{getPlugins(IFilterFactory, twisted_rproxy.plugins)}.
"""

from apikey_filter import ApiKeyFactory, StampFactory

apikey = ApiKeyFactory()
stamp = StampFactory()
