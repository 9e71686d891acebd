"""
The bodies that benchmarks/compression.py compresses: typical HTML, JSON
and JavaScript, made on the spot from what is installed, the same bytes on
every run in one environment (nothing is shipped with the project).
"""

from __future__ import annotations

import hashlib
import json
import os
import pydoc
import random
import re
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("html", "json", "js")
SIZES = (2 * 1024, 16 * 1024, 128 * 1024)

#: The standard library modules whose pydoc pages make the HTML corpus:
#: pure Python ones present in every CPython, documented at length.
HTML_MODULES = (
    "json",
    "textwrap",
    "string",
    "heapq",
    "bisect",
    "shlex",
    "fractions",
    "difflib",
    "calendar",
    "statistics",
    "argparse",
    "configparser",
)

#: Larger C{.js} files are bundles (wasm or images in base64), not the
#: scripts a site serves by the dozen.
JS_MAX_FILE = 256 * 1024

#: " at 0x7f38ac9da480" in a repr, its spaces written as C{&nbsp;} by pydoc.
_ADDRESS = re.compile(r"(?: |&nbsp;)at(?: |&nbsp;)0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class Body:
    """
    One body of the corpus.

    @ivar kind: C{"html"}, C{"json"} or C{"js"}.
    @ivar size: The nominal size asked for; C{len(data)} is at most that.
    @ivar data: The bytes.
    """

    kind: str
    size: int
    data: bytes

    @property
    def digest(self) -> str:
        """
        The first 16 hex digits of the SHA-256 of C{data}.
        """
        return hashlib.sha256(self.data).hexdigest()[:16]


def htmlText() -> bytes:
    """
    pydoc's HTML pages of L{HTML_MODULES}, one after the other.
    """
    pages = []
    # The same pages on every machine with this Python version.
    stdlib = sysconfig.get_paths()["stdlib"]
    for name in HTML_MODULES:
        module = pydoc.locate(name)
        if module is None:  # pragma: no cover - all are in the standard library
            continue
        page = pydoc.html.page(pydoc.describe(module), pydoc.html.document(module))
        pages.append(_ADDRESS.sub("", page).replace(stdlib, "/usr/lib/python3"))
    return "\n".join(pages).encode("utf-8")


_FIRST = "ada alan barbara claude donald edsger frances grace ken linus".split()
_LAST = "lovelace turing liskov shannon knuth dijkstra allen hopper thompson".split()
_CITIES = "Amsterdam Berlin Lisbon Montreal Nairobi Osaka Quito Seoul Tromsø".split()
_TAGS = "admin beta billing early-adopter enterprise newsletter support trial".split()
_STATUS = ("active", "active", "active", "suspended", "pending")


def _record(rng: random.Random, n: int) -> dict[str, Any]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    created = 1_600_000_000 + rng.randrange(100_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return {
        "id": 10_000 + n,
        "uuid": f"{rng.getrandbits(128):032x}",
        "username": f"{first}.{last}{rng.randrange(100)}",
        "name": f"{first.title()} {last.title()}",
        "email": f"{first}.{last}@example.com",
        "status": rng.choice(_STATUS),
        "created_at": stamp,
        "score": round(rng.uniform(0, 100), 2),
        "verified": rng.random() < 0.7,
        "tags": sorted(rng.sample(_TAGS, rng.randrange(4))),
        "address": {
            "city": rng.choice(_CITIES),
            "postcode": f"{rng.randrange(10_000, 99_999)}",
            "line1": f"{rng.randrange(1, 300)} {rng.choice(_LAST).title()} Street",
        },
        "links": {"self": f"/api/v1/users/{10_000 + n}"},
    }


def jsonBody(size: int) -> bytes:
    """
    An API-like list of records, as many whole ones as fit in C{size} bytes.
    """
    rng = random.Random(18)
    records: list[str] = []
    total = 0
    while True:
        record = json.dumps(_record(rng, len(records)), ensure_ascii=False)
        # What the envelope and the separators around the records add.
        envelope = len(f'{{"count": {len(records) + 1}, "results": []}}')
        if envelope + total + len(record.encode()) + 2 * len(records) > size:
            break
        records.append(record)
        total += len(record.encode())
    text = f'{{"count": {len(records)}, "results": [{", ".join(records)}]}}'
    return text.encode("utf-8")


def _sitePackages() -> list[Path]:
    found = []
    for entry in sys.path:
        path = Path(entry or ".")
        if path.name in ("site-packages", "dist-packages") and path.is_dir():
            found.append(path)
    return found


def javascriptFiles() -> list[tuple[str, bytes]]:
    """
    The installed packages' C{.js} files up to L{JS_MAX_FILE} bytes: their
    paths inside C{site-packages} (the first of a path, and of a content,
    wins) and contents, in the order of the paths.
    """
    files: dict[str, bytes] = {}
    seen: set[bytes] = set()
    for root in _sitePackages():
        for directory, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                if not filename.endswith(".js"):
                    continue
                path = Path(directory, filename)
                relative = path.relative_to(root).as_posix()
                try:
                    if relative in files or path.stat().st_size > JS_MAX_FILE:
                        continue
                    data = path.read_bytes()
                except OSError:
                    continue
                digest = hashlib.sha256(data).digest()
                if digest in seen or not data.strip():
                    continue
                seen.add(digest)
                files[relative] = data
    return sorted(files.items())


def buildCorpus(
    kinds: Sequence[str] = KINDS, sizes: Sequence[int] = SIZES
) -> tuple[list[Body], list[str]]:
    """
    The bodies of C{kinds} and C{sizes}, the same ones on every call in an
    environment, and notes on what was left out and why.
    """
    bodies: list[Body] = []
    notes: list[str] = []
    sources: dict[str, bytes] = {}
    if "html" in kinds:
        sources["html"] = htmlText()
    if "js" in kinds:
        scripts = javascriptFiles()
        sources["js"] = b"\n".join(data for _, data in scripts)
        if scripts:
            names = sorted({name.split("/", 1)[0] for name, _ in scripts})
            notes.append(
                f"js: {len(scripts)} .js files, {len(sources['js'])} bytes, of "
                f"the installed packages {', '.join(names)}"
            )
        else:
            notes.append("js: no .js files in the installed packages: no js bodies")
    for kind in kinds:
        for size in sizes:
            if kind == "json":
                bodies.append(Body(kind, size, jsonBody(size)))
                continue
            text = sources[kind]
            if len(text) < size:
                if text:
                    notes.append(
                        f"{kind}: only {len(text)} bytes found, no {_size(size)} body"
                    )
                continue
            bodies.append(Body(kind, size, text[:size]))
    return bodies, notes


def _size(size: int) -> str:
    if size % 1024 == 0:
        return f"{size // 1024}KiB"
    return f"{size}B"
