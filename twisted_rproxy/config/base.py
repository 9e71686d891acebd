"""
What every part of the configuration shares: L{ConfigError}, the patterns
that names and values are checked against, and small helpers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

COMMAND_LINE = "<command line>"
"""
The L{ConfigError.source} and L{Config.source} of a configuration built by
L{configFromArguments}.
"""


NOT_SUPPORTED = "is not supported by this version of twisted_rproxy yet"
"""
The L{ConfigError.message} for a table or key that the configuration format
reserves but this version does not implement yet.
"""


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?"


_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\Z")


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


_VIA_PSEUDONYM = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z:-]+\Z")


_HEADER_VALUE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")


_HOST_HEADER_VALUE = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=:\[\]-]+\Z")


_URL_PATH = re.compile(r"/[\x21-\x7e]*\Z")


class ConfigError(Exception):
    """
    One configuration mistake: the file, the key and what is wrong.

    @ivar source: The configuration file's path as it was given, or
        L{COMMAND_LINE}.
    @ivar key: The dotted path of the offending key, such as
        C{"pools.app.servers[1]"} or C{"routes[0].pool"}; C{""} when the
        mistake concerns the whole file.
    @ivar message: What is wrong and, where useful, what is expected.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        """
        @param source: See L{ConfigError.source}.
        @param key: See L{ConfigError.key}.
        @param message: See L{ConfigError.message}.
        """
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        """
        @return: C{"SOURCE: KEY: MESSAGE"}, or C{"SOURCE: MESSAGE"} when
            there is no key.
        """
        if self.key:
            return f"{self.source}: {self.key}: {self.message}"
        return f"{self.source}: {self.message}"


def _typeName(value: object) -> str:
    """
    Name the type of a parsed TOML value for an error message.
    """
    if isinstance(value, Mapping):
        return "table"
    return type(value).__name__
