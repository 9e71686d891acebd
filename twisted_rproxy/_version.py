"""
The version of twisted_rproxy, in a module of its own so that any module
may name it without importing the package's re-exports.
"""

__version__ = "0.1.0.dev0"
