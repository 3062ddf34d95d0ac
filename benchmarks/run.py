"""`make bench`: every benchmark, each printing its figures and ratios against its peer."""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = ["bench_screening", "bench_http", "bench_frequency", "bench_zonal_smoothing"]


def main() -> int:
    import importlib

    names = sys.argv[1:] or BENCHMARKS
    for name in names:
        print(f"== {name}")
        t0 = time.monotonic()
        importlib.import_module(name).main()
        print(f"   ({time.monotonic() - t0:.0f} s)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
