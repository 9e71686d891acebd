"""
Filter plugins for twisted_rproxy.

The built-in filters live here, and they are found the same way as third-party
ones: with C{getPlugins(IFilterFactory, twisted_rproxy.plugins)}.  A third-party
filter package drops a C{twisted_rproxy/plugins/<name>_plugin.py} module (and no
C{__init__.py}, neither here nor in C{twisted_rproxy/}) that provides an object
implementing L{twisted.plugin.IPlugin} and
L{twisted_rproxy.interfaces.IFilterFactory}.

As C{twisted/plugins/__init__.py} does, this package extends its C{__path__}
with every C{twisted_rproxy/plugins} directory on C{sys.path}, so plugins
installed anywhere are found.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
