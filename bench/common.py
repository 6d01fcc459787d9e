"""What every benchmark shares: the machine's name, the synthetic corpus, the JSON output."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from trainer.provenance import git_commit, machine

OUT = Path("bench/out")


def bench_corpus(path: Path = Path("data/synthetic"), config=None) -> Path:
    """A synthetic corpus (by default the demo's), written first if it is missing."""
    if not (path / "index.json").is_file():
        from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus

        write_synthetic_corpus(path, config or SyntheticConfig())
    return path


def write_report(name: str, rows: list[dict], columns: list[str], notes: str = "") -> Path:
    """Print the table and write ``bench/out/<name>.json`` with the machine, commit and date."""
    widths = [max(len(c), *(len(f"{r.get(c, '')}") for r in rows)) for c in columns]
    print(f"\n{name} — {machine()} — threads {os.environ.get('OMP_NUM_THREADS', '?')}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(f"{row.get(c, '')}".ljust(w) for c, w in zip(columns, widths, strict=True)))
    if notes:
        print(notes)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.json"
    path.write_text(json.dumps({"name": name, "machine": machine(), "commit": git_commit(),
                                "date": time.strftime("%Y-%m-%d"), "rows": rows, "notes": notes}, indent=2))
    return path
