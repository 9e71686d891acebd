"""
Check the built distributions of twisted_rproxy.

Usage: python .ci/check_wheel.py DIST_DIR VENV_DIR

DIST_DIR holds the wheel (and sdist) that C{python -m build} made.  This script:

  - checks the wheel's file list: our twistd plugin and C{py.typed} are there,
    and nothing that would break Twisted is: no C{twisted/__init__.py}, no
    C{twisted/plugins/__init__.py} (either would shadow Twisted's own and break
    every other plugin), no stale C{dropin.cache}, no news fragments, no tests;
  - creates a fresh venv in VENV_DIR, installs the wheel into it, and runs
    C{twistd rproxy --help} and C{twistd --help} from a directory outside the
    checkout, so that only the installed copy can answer.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile

REQUIRED = [
    "twisted/plugins/rproxy_plugin.py",
    "twisted_rproxy/__init__.py",
    "twisted_rproxy/tap.py",
    "twisted_rproxy/py.typed",
    "twisted_rproxy/plugins/__init__.py",
]

FORBIDDEN = [
    "twisted/__init__.py",
    "twisted/plugins/__init__.py",
]

FORBIDDEN_PARTS = [
    "dropin.cache",
    "/newsfragments/",
    "__pycache__",
]


def fail(message: str) -> None:
    print(f"check_wheel: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def findOne(distDir: str, pattern: str) -> str:
    found = glob.glob(os.path.join(distDir, pattern))
    if len(found) != 1:
        fail(f"expected exactly one {pattern} in {distDir}, found {found}")
    return found[0]


def checkWheelContents(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    print(f"check_wheel: {os.path.basename(wheel)} holds {len(names)} files")
    for name in REQUIRED:
        if name not in names:
            fail(f"{name} is missing from the wheel")
    for name in FORBIDDEN:
        if name in names:
            fail(f"{name} must not be in the wheel: it would replace Twisted's own")
    for name in names:
        for part in FORBIDDEN_PARTS:
            if part in name:
                fail(f"{name} must not be in the wheel (matches {part!r})")
        topLevel = name.split("/", 1)[0]
        if topLevel not in ("twisted", "twisted_rproxy") and not topLevel.endswith(
            ".dist-info"
        ):
            fail(f"unexpected top-level entry in the wheel: {name}")
        if name.startswith("twisted/") and not name.startswith("twisted/plugins/"):
            fail(f"only twisted/plugins/ may be shipped under twisted/: {name}")


def run(args: list[str], cwd: str) -> str:
    print("check_wheel: $ " + " ".join(args), flush=True)
    result = subprocess.run(
        args,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if result.returncode != 0:
        print(result.stdout)
        fail(f"{' '.join(args)} exited with {result.returncode}")
    return result.stdout


def checkInstalled(wheel: str, venvDir: str) -> None:
    if os.path.exists(venvDir):
        shutil.rmtree(venvDir)
    venv.EnvBuilder(with_pip=True, clear=True).create(venvDir)
    binDir = os.path.join(venvDir, "Scripts" if os.name == "nt" else "bin")
    python = os.path.join(binDir, "python")
    twistd = os.path.join(binDir, "twistd")
    # Run from an empty directory: the checkout must not be importable.
    with tempfile.TemporaryDirectory() as elsewhere:
        run([python, "-m", "pip", "install", "--quiet", wheel], cwd=elsewhere)
        location = run(
            [python, "-c", "import twisted_rproxy; print(twisted_rproxy.__file__)"],
            cwd=elsewhere,
        ).strip()
        if not os.path.realpath(location).startswith(os.path.realpath(venvDir)):
            fail(f"twisted_rproxy was imported from {location}, not the fresh venv")
        helpText = run([twistd, "rproxy", "--help"], cwd=elsewhere)
        if "Usage:" not in helpText:
            print(helpText)
            fail("twistd rproxy --help printed no usage")
        listing = run([twistd, "--help"], cwd=elsewhere)
        if not any(line.split()[:1] == ["rproxy"] for line in listing.splitlines()):
            print(listing)
            fail("twistd --help does not list the rproxy command")
        # Twisted's own plugins must still be found next to ours.
        if not any(line.split()[:1] == ["web"] for line in listing.splitlines()):
            print(listing)
            fail("twistd --help lost Twisted's own 'web' plugin")
    print("check_wheel: twistd rproxy --help works from the installed wheel")


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        fail("usage: check_wheel.py DIST_DIR VENV_DIR")
    distDir, venvDir = os.path.abspath(argv[1]), os.path.abspath(argv[2])
    wheel = findOne(distDir, "twisted_rproxy-*.whl")
    findOne(distDir, "twisted_rproxy-*.tar.gz")
    checkWheelContents(wheel)
    checkInstalled(wheel, venvDir)
    print("check_wheel: OK")


if __name__ == "__main__":
    main(sys.argv)
