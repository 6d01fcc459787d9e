"""``python -m bench [name ...] [--flag ...]``: run the benchmarks (all by default) and print their tables.

Flags go to the benchmarks that take them (``python -m bench generate_paper --scale=tiny``, ``python -m bench train
--stage=conre --scale=tiny``: a flag's value after ``=``); the GPU benchmark (``generate_paper``) says so and returns
where there is no GPU. ``train`` runs only when named (docs/throughput.md)."""
from __future__ import annotations

import importlib
import sys

BENCHES = {"reader": "reader_bench", "prepare": "prepare_bench", "eval": "eval_bench", "generate": "generate_bench",
           "generate_paper": "generate_paper_bench", "train": "train_bench", "data_path": "data_path_bench"}


NAMED_ONLY = ("train", "data_path")  # long (every stage, paper configs): only when named


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or [n for n in BENCHES if n not in NAMED_ONLY]
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
