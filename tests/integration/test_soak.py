"""Soak: thousands of tiny steps through repeated SIGTERM / resume cycles with corrupt shards mixed in.

Marked slow (excluded from `make test`); run it with `pytest -m slow tests/integration/test_soak.py`.
SEESPEAKER_SOAK_STEPS sets the length (default 2000).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = int(os.environ.get("SEESPEAKER_SOAK_STEPS", "2000"))


def corrupt_copy(corpus: Path, out: Path) -> int:
    """The corpus with two extra train shards: one truncated, one listed in the index but missing."""
    shutil.copytree(corpus, out)
    index = json.loads((out / "index.json").read_text())
    first = index["splits"]["train"][0]
    data = (out / first["path"]).read_bytes()
    (out / "train" / "truncated.tar").write_bytes(data[: len(data) // 3])
    index["splits"]["train"] += [{"path": "train/truncated.tar", "count": first["count"]},
                                 {"path": "train/missing.tar", "count": first["count"]}]
    (out / "index.json").write_text(json.dumps(index))
    return first["count"]


@pytest.mark.slow
def test_soak_sigterm_resume_cycles_with_corrupt_shards(synthetic_corpus, tmp_path):
    corpus = tmp_path / "corpus"
    corrupt_copy(synthetic_corpus, corpus)
    run = tmp_path / "tiny" / "conre"
    cmd = [sys.executable, "-m", "trainer.cli", "train", "experiment=tiny", "stage=conre", f"data.root={corpus}",
           f"experiment.output_root={tmp_path}", "tracking=offline", f"trainer.max_steps={STEPS}",
           "trainer.checkpoint_every_n_steps=100", "trainer.val_check_interval=500", "data.max_skip_fraction=0.6",
           "data.num_workers=1", "data.batch_size=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cycles = 0
    while True:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(25)
        if proc.poll() is None and cycles < 6:
            proc.send_signal(signal.SIGTERM)
            cycles += 1
        out, _ = proc.communicate(timeout=1800)
        assert proc.returncode in (0, 143), out[-3000:]
        if proc.returncode == 0:
            break
        children = [p for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != "zombie"]
        assert not children, f"processes left behind after SIGTERM: {children}"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == STEPS and cycles >= 3
    assert summary["skipped_samples"] > 0 and summary["missing_shards"] == 1
    open_files = [f.path for f in psutil.Process().open_files() if str(tmp_path) in f.path]
    assert not open_files, open_files
    assert len(list((run / "wandb").glob("offline-run-*"))) == cycles + 1
