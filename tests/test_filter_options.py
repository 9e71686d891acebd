"""
Tests for L{twisted_rproxy.filteroptions}: the option helpers of filter
authors, whose errors read as the proxy's own.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from twisted_rproxy.config import ConfigError, parseConfig
from twisted_rproxy.filteroptions import REQUIRED, FilterOptionError, FilterOptions


class AccessorTests(SynchronousTestCase):
    """
    Each accessor returns the value or its default, and raises a
    L{FilterOptionError} naming the key with the framework's message.
    """

    def error(self, call: Any, *args: Any) -> FilterOptionError:
        return self.assertRaises(FilterOptionError, call, *args)

    def test_duration(self) -> None:
        """
        Durations as the configuration writes them; bounds in seconds.
        """
        read = FilterOptions({"t": "250ms", "n": 2, "bad": "soon", "neg": -1})
        self.assertEqual(read.duration("t", 5.0), 0.25)
        self.assertEqual(read.duration("n", 5.0), 2.0)
        self.assertEqual(read.duration("absent", 5.0), 5.0)
        error = self.error(read.duration, "bad", 1.0)
        self.assertEqual(error.option, "bad")
        self.assertTrue(error.message.startswith("invalid duration 'soon' (expected"))
        self.assertIn(
            "must not be negative", self.error(read.duration, "neg", 1).message
        )
        error = self.assertRaises(FilterOptionError, read.duration, "t", 1.0, 1.0)
        self.assertEqual(error.message, "must be at least 1s, got '250ms'")

    def test_size(self) -> None:
        """
        Sizes with units; a fraction of a byte or a bad type refused.
        """
        read = FilterOptions({"s": "64KiB", "half": "0.5B", "list": [1]})
        self.assertEqual(read.size("s", 0), 65536)
        self.assertEqual(read.size("absent", 7), 7)
        self.assertIn("not a whole number", self.error(read.size, "half", 0).message)
        self.assertTrue(
            self.error(read.size, "list", 0).message.startswith("expected a size")
        )
        error = self.assertRaises(FilterOptionError, read.size, "s", 0, None, 1024)
        self.assertEqual(error.message, "must be at most 1024 bytes, got '64KiB'")

    def test_choiceBooleanInteger(self) -> None:
        """
        Enumerations, booleans and bounded integers.
        """
        read = FilterOptions({"mode": "fast", "on": "yes", "n": 12, "f": 1.5})
        self.assertEqual(read.choice("mode", ["fast", "slow"], "slow"), "fast")
        self.assertEqual(read.choice("absent", ["fast", "slow"], "slow"), "slow")
        self.assertEqual(
            self.error(read.choice, "mode", ["a", "b"], "a").message,
            "expected one of 'a', 'b', got 'fast'",
        )
        self.assertEqual(
            self.error(read.boolean, "on", False).message,
            "expected a boolean (true or false), got str",
        )
        self.assertEqual(read.integer("n", 0, 1, 20), 12)
        self.assertEqual(
            self.error(read.integer, "n", 0, 1, 10).message,
            "must be from 1 to 10, got 12",
        )
        self.assertEqual(
            self.error(read.integer, "f", 0).message, "expected an integer, got float"
        )
        self.assertEqual(read.number("f", 0.0, 0, 2), 1.5)

    def test_required(self) -> None:
        """
        A L{REQUIRED} option that is absent is named as required.
        """
        error = self.error(FilterOptions({}).string, "url", REQUIRED)
        self.assertEqual((error.option, error.message), ("url", "is required"))

    def test_lists(self) -> None:
        """
        Lists of strings, durations, sizes, integers; an entry's error
        names its index.
        """
        read = FilterOptions(
            {
                "names": ["a", 3],
                "waits": ["1s", "2m"],
                "sizes": ["1KiB", "soon"],
                "codes": [500, 700],
                "one": "x",
                "empty": [],
            }
        )
        error = self.error(read.stringList, "names", ())
        self.assertEqual(
            (error.option, error.message), ("names[1]", "expected a string, got int")
        )
        self.assertEqual(read.durationList("waits", ()), (1.0, 120.0))
        error = self.error(read.sizeList, "sizes", ())
        self.assertEqual(error.option, "sizes[1]")
        self.assertTrue(error.message.startswith("invalid size 'soon'"))
        error = self.error(read.integerList, "codes", (), 400, 599)
        self.assertEqual(error.option, "codes[1]")
        self.assertEqual(read.stringList("one", (), allowSingle=True), ("x",))
        self.assertEqual(
            self.error(read.stringList, "empty", (), False, False).message,
            "must not be empty",
        )
        self.assertEqual(read.stringList("absent", ("d",)), ("d",))

    def test_tableAndKeys(self) -> None:
        """
        A sub-table's errors name the dotted key; unknown keys suggest a
        close one.
        """
        read = FilterOptions({"request": {"timeout": "x"}, "tiemout": 1})
        error = self.error(read.table("request").duration, "timeout", 1.0)
        self.assertEqual(error.option, "request.timeout")
        error = self.error(read.checkKeys, ["request", "timeout"])
        self.assertEqual(
            (error.option, error.message),
            ("tiemout", "unknown key (did you mean timeout?)"),
        )
        error = self.error(FilterOptions({"zzz": 1}).checkKeys, ["request"])
        self.assertEqual(error.message, "unknown key (expected one of: request)")


class ConfigurationTests(SynchronousTestCase):
    """
    Through a configuration, a built-in plugin's mistakes read
    C{FILE: filters.NAME.KEY: message}.
    """

    def check(self, table: dict[str, Any]) -> str:
        data = {
            "server": {"listen": ["tcp:8080"]},
            "pools": {"app": {"servers": ["http://127.0.0.1:8001"]}},
            "filters": {"f": table},
            "routes": [{"path": "/", "pool": "app", "filters": ["f"]}],
        }
        error = self.assertRaises(ConfigError, parseConfig, data, "rproxy.toml", "/")
        return str(error)

    def test_durationMessage(self) -> None:
        """
        C{rate_limit}'s C{delay}: the framework's duration message.
        """
        message = self.check({"plugin": "rate_limit", "rate": 1, "delay": "soon"})
        self.assertTrue(
            message.startswith(
                "rproxy.toml: filters.f.delay: invalid duration 'soon' (expected"
            ),
            message,
        )

    def test_sizeAndListMessages(self) -> None:
        """
        C{compress}'s C{min_size} and a list entry of C{error_pages}.
        """
        message = self.check({"plugin": "compress", "min_size": "lots"})
        self.assertTrue(
            message.startswith("rproxy.toml: filters.f.min_size: invalid size 'lots'"),
            message,
        )
        message = self.check({"plugin": "error_pages", "statuses": [500, 200]})
        self.assertEqual(
            message,
            "rproxy.toml: filters.f.statuses[1]: must be from 400 to 599, got 200",
        )
