"""``python -m bench [name ...] [--flag ...]``: run the benchmarks (all by default) and print their tables.

Flags go to the benchmarks that take them (``python -m bench generate_paper --scale=tiny``); the GPU benchmark
(``generate_paper``) says so and returns where there is no GPU."""
from __future__ import annotations

import importlib
import sys

BENCHES = {"reader": "reader_bench", "prepare": "prepare_bench", "eval": "eval_bench", "generate": "generate_bench",
           "generate_paper": "generate_paper_bench"}


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or list(BENCHES)
    flags = [a for a in argv if a.startswith("-")]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        module = importlib.import_module(f"bench.{BENCHES[name]}")
        module.main(flags) if flags else module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
