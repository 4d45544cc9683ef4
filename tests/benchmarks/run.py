"""`make bench`: run every tests/benchmarks/bench_*.py module's `run()` and print its table.

Each benchmark measures the things it compares side by side in the same process and run, and
prints ratios against its goal; nothing here is a pass/fail test (timings belong here, not in
`make test`). `python -m tests.benchmarks.run data` runs only modules whose name contains "data".
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time

import tests.benchmarks as package


def main(argv: list[str]) -> int:
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if m.name.startswith("bench_"))
    selected = [n for n in names if not argv or any(a in n for a in argv)]
    if not selected:
        print(f"no benchmark matches {argv}; have: {', '.join(names)}")
        return 2
    for name in selected:
        started = time.perf_counter()
        print(f"\n=== {name} ===", flush=True)
        importlib.import_module(f"tests.benchmarks.{name}").run()
        print(f"--- {name}: {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
