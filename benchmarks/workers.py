"""
Requests/s of the proxy with 1 and with 2 worker processes, measured by
L{benchmarks.run} (same backend, same wrk load, same checks).

With one worker the proxy is pinned to CPU 1 as in C{run.py}; with two
workers the proxy's processes may use every CPU (they share them with wrk
and the backend on a 2-core machine, so the gain is bounded by that).

    python benchmarks/workers.py [--quick] [run.py options]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


def main(argv: list[str]) -> int:
    status = 0
    for workers in (1, 2):
        print(f"\n=== {workers} worker process(es) ===", flush=True)
        command = run.DEFAULT_PROXY_CMD + f" --workers {workers}"
        if workers > 1:
            # run.py pins the proxy to one CPU; the workers need them all.
            allCpus = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
            start = run.Processes.start

            def unpinned(self, argv, cpu, *a, _start=start, _cpus=allCpus, **k):  # type: ignore[no-untyped-def]  # noqa: E501
                if "rproxy" in " ".join(argv):
                    cpu = _cpus
                return _start(self, argv, cpu, *a, **k)

            run.Processes.start = unpinned  # type: ignore[method-assign]
        status |= run.main(["--proxy-cmd", command, *argv])
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
