"""
Reading a filter's options: L{FilterOptions}, typed accessors over the
C{[filters.NAME]} table a factory is given, whose mistakes are
L{FilterOptionError}s with the proxy's own messages, so that the
configuration reports them as C{rproxy.toml: filters.NAME.KEY: ...}, the
same words as for the proxy's own keys::

    def buildFilter(self, options, environment):
        read = FilterOptions(options)
        read.checkKeys(["timeout", "max_body", "mode", "hosts"])
        timeout = read.duration("timeout", 5.0, minimum=0.1)
        maxBody = read.size("max_body", 1 << 20)
        mode = read.choice("mode", ["strict", "lenient"], "strict")
        hosts = read.stringList("hosts", ())
        ...

A wrong value raises at once (C{filters.NAME.timeout: invalid duration
'soon' (expected a number of seconds, or a string like "5s", ...)}); a
list's entry is named by its index (C{hosts[2]}).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TypeVar, cast

from twisted_rproxy.config.base import ConfigError, _typeName
from twisted_rproxy.config.routes import FilterOptionError
from twisted_rproxy.config.units import _parseDuration, _parseSize

__all__ = ["REQUIRED", "FilterOptionError", "FilterOptions"]

_T = TypeVar("_T")

#: The default that makes an option required (C{is required} when absent).
REQUIRED: object = object()
_REQUIRED = REQUIRED


def _bounds(minimum: float | None, maximum: float | None, unit: str = "") -> str:
    if minimum is not None and maximum is not None:
        return f"from {minimum:g}{unit} to {maximum:g}{unit}"
    if minimum is not None:
        return f"at least {minimum:g}{unit}"
    return f"at most {maximum:g}{unit}"


class FilterOptions:
    """
    The options of one filter (its C{[filters.NAME]} table without
    C{plugin}), read with typed accessors.

    Each accessor takes the option's key and its default, used when the
    option is absent; a default of L{REQUIRED} makes it required. A wrong
    value raises L{FilterOptionError} naming the key (or C{KEY[INDEX]} for
    a list's entry) with the message the proxy gives for its own keys.

    @ivar options: The table.
    @ivar prefix: Prepended, dotted, to every key named in errors (for a
        sub-table read with L{table}).
    """

    #: The default that makes an option required.
    REQUIRED = _REQUIRED

    def __init__(self, options: Mapping[str, object], prefix: str = "") -> None:
        """
        @param options: The filter's options.
        @param prefix: See L{prefix}.
        @raise FilterOptionError: If C{options} is not a table.
        """
        if not isinstance(options, Mapping):
            raise FilterOptionError(
                prefix, f"expected a table, got {_typeName(options)}"
            )
        self.options = options
        self.prefix = prefix

    def key(self, name: str) -> str:
        """
        The dotted key of option C{name}, as errors name it.
        """
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, message: str) -> FilterOptionError:
        """
        The error for option C{name}: C{raise options.error("x", "...")}
        for a check of the filter's own.
        """
        return FilterOptionError(self.key(name), message)

    def checkKeys(self, allowed: Collection[str]) -> None:
        """
        Refuse any option not in C{allowed}, suggesting a close name
        (C{unknown key (did you mean timeout?)}).

        @raise FilterOptionError: For the first unknown key.
        """
        for name in self.options:
            if name in allowed:
                continue
            close = difflib.get_close_matches(name, sorted(allowed), n=1)
            hint = (
                f" (did you mean {close[0]}?)"
                if close
                else " (expected one of: " + ", ".join(sorted(allowed)) + ")"
            )
            raise self.error(name, "unknown key" + hint)

    def has(self, name: str) -> bool:
        """
        Whether option C{name} is given.
        """
        return name in self.options

    def _get(self, name: str, default: object) -> object:
        if name in self.options:
            return self.options[name]
        if default is _REQUIRED:
            raise self.error(name, "is required")
        return default

    def _converted(self, error: ConfigError, name: str) -> FilterOptionError:
        # The units' messages, with this filter's key instead of the file's.
        return FilterOptionError(error.key or self.key(name), error.message)

    def string(
        self,
        name: str,
        default: str | object,
        allowEmpty: bool = True,
    ) -> str:
        """
        A string.

        @param allowEmpty: Whether C{""} is accepted.
        """
        value = self._get(name, default)
        if not isinstance(value, str):
            raise self.error(name, f"expected a string, got {_typeName(value)}")
        if not allowEmpty and not value:
            raise self.error(name, "must not be empty")
        return value

    def boolean(self, name: str, default: bool | object) -> bool:
        """
        C{true} or C{false}.
        """
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self.error(
                name, f"expected a boolean (true or false), got {_typeName(value)}"
            )
        return value

    def integer(
        self,
        name: str,
        default: int | object,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """
        An integer, from C{minimum} to C{maximum} when given.
        """
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"expected an integer, got {_typeName(value)}")
        self._checkBounds(name, value, minimum, maximum)
        return value

    def number(
        self,
        name: str,
        default: float | object,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """
        A finite number (integer or float), from C{minimum} to C{maximum}
        when given.
        """
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(name, f"expected a number, got {_typeName(value)}")
        if not math.isfinite(value):
            raise self.error(name, f"expected a finite number, got {value!r}")
        self._checkBounds(name, value, minimum, maximum)
        return float(value)

    def _checkBounds(
        self,
        name: str,
        value: float,
        minimum: float | None,
        maximum: float | None,
        unit: str = "",
        written: object = None,
    ) -> None:
        if (minimum is None or value >= minimum) and (
            maximum is None or value <= maximum
        ):
            return
        shown = written if written is not None else value
        raise self.error(
            name, f"must be {_bounds(minimum, maximum, unit)}, got {shown!r}"
        )

    def duration(
        self,
        name: str,
        default: float | object,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        """
        A duration in seconds: a number of seconds, or a string such as
        C{"250ms"}, C{"5s"}, C{"2m"}, C{"1h"}, C{"1d"} (never negative).

        @return: Seconds.
        """
        value = self._get(name, default)
        if name not in self.options:
            return float(cast(float, value))
        try:
            seconds = _parseDuration(value, "", self.key(name))
        except ConfigError as e:
            raise self._converted(e, name) from None
        self._checkBounds(name, seconds, minimum, maximum, "s", value)
        return seconds

    def size(
        self,
        name: str,
        default: int | object,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        """
        A size in bytes: a number of bytes, or a string such as C{"64KiB"},
        C{"10MB"}, C{"1.5 GiB"}.

        @return: Bytes.
        """
        value = self._get(name, default)
        if name not in self.options:
            return int(cast(int, value))
        try:
            size = _parseSize(value, "", self.key(name))
        except ConfigError as e:
            raise self._converted(e, name) from None
        self._checkBounds(name, size, minimum, maximum, " bytes", value)
        return size

    def choice(self, name: str, choices: Sequence[_T], default: _T | object) -> _T:
        """
        One of C{choices} (strings, integers, ...), compared exactly.
        """
        value = self._get(name, default)
        for choice in choices:
            if type(choice) is type(value) and choice == value:
                return choice
        expected = ", ".join(repr(c) for c in choices)
        raise self.error(name, f"expected one of {expected}, got {value!r}")

    def _list(self, name: str, default: object, allowSingle: bool) -> list[object]:
        value = self._get(name, default)
        if allowSingle and not isinstance(value, (list, tuple)):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise self.error(name, f"expected a list, got {_typeName(value)}")
        return list(value)

    def stringList(
        self,
        name: str,
        default: Sequence[str] | object,
        allowSingle: bool = False,
        allowEmpty: bool = True,
    ) -> tuple[str, ...]:
        """
        A list of strings.

        @param allowSingle: Whether a lone string stands for a list of one.
        @param allowEmpty: Whether an empty list is accepted.
        """
        return tuple(self._each(name, default, allowSingle, allowEmpty, _stringEntry))

    def durationList(
        self,
        name: str,
        default: Sequence[float] | object,
        allowEmpty: bool = True,
    ) -> tuple[float, ...]:
        """
        A list of durations (see L{duration}), in seconds.
        """
        return tuple(self._each(name, default, False, allowEmpty, _durationEntry))

    def sizeList(
        self,
        name: str,
        default: Sequence[int] | object,
        allowEmpty: bool = True,
    ) -> tuple[int, ...]:
        """
        A list of sizes (see L{size}), in bytes.
        """
        return tuple(self._each(name, default, False, allowEmpty, _sizeEntry))

    def integerList(
        self,
        name: str,
        default: Sequence[int] | object,
        minimum: int | None = None,
        maximum: int | None = None,
        allowEmpty: bool = True,
    ) -> tuple[int, ...]:
        """
        A list of integers, each from C{minimum} to C{maximum} when given.
        """

        def entry(read: FilterOptions, key: str) -> int:
            return read.integer(key, _REQUIRED, minimum, maximum)

        return tuple(self._each(name, default, False, allowEmpty, entry))

    def _each(
        self,
        name: str,
        default: object,
        allowSingle: bool,
        allowEmpty: bool,
        read: Callable[[FilterOptions, str], _T],
    ) -> list[_T]:
        if name not in self.options:
            if default is _REQUIRED:
                raise self.error(name, "is required")
            return list(cast(Sequence[_T], default))
        # Each entry is read as an option of its own, so that its errors
        # name NAME[INDEX].
        items = self._list(name, default, allowSingle)
        if not items and not allowEmpty:
            raise self.error(name, "must not be empty")
        entries = FilterOptions(
            {f"{name}[{index}]": item for index, item in enumerate(items)},
            self.prefix,
        )
        return [read(entries, f"{name}[{index}]") for index in range(len(items))]

    def table(self, name: str, allowMissing: bool = True) -> FilterOptions:
        """
        A sub-table (C{request = { ... }}), read with the same accessors;
        its errors name C{NAME.KEY}.

        @param allowMissing: Whether an absent table reads as empty.
        """
        if name not in self.options and allowMissing:
            return FilterOptions({}, self.key(name))
        value = self._get(name, _REQUIRED)
        if not isinstance(value, Mapping):
            raise self.error(name, f"expected a table, got {_typeName(value)}")
        return FilterOptions(value, self.key(name))


def _stringEntry(read: FilterOptions, key: str) -> str:
    return read.string(key, _REQUIRED)


def _durationEntry(read: FilterOptions, key: str) -> float:
    return read.duration(key, _REQUIRED)


def _sizeEntry(read: FilterOptions, key: str) -> int:
    return read.size(key, _REQUIRED)
