"""``python -m bench [name ...]``: run the CPU benchmarks (all by default) and print their tables."""
from __future__ import annotations

import importlib
import sys

BENCHES = {"reader": "bench.reader_bench", "prepare": "bench.prepare_bench", "generate": "bench.generate_bench"}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        try:
            module = importlib.import_module(BENCHES[name])
        except ModuleNotFoundError as exc:
            print(f"skipping {name}: {exc}")
            continue
        module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
