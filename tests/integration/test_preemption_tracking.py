"""W&B after a preemption, offline for real: the preempted run is recorded as preempted, and a later training in
the same process logs to its own run again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trainer.runs import offline_history

REPO = Path(__file__).resolve().parents[2]

# Two trainings in one process: ``a`` gets SIGTERM once it has logged step 4, then ``b`` runs to its end.
TWO_TRAININGS = """
import json, os, signal, sys, threading, time
from pathlib import Path
from trainer.cli import main

out, corpus = Path(sys.argv[1]), sys.argv[2]

def words(name, steps):
    return ["train", "experiment=tiny", "stage=conre", f"data.root={corpus}", f"experiment.output_root={out}",
            f"run.name={name}", f"trainer.max_steps={steps}", "tracking=offline", "trainer.val_check_interval=1000",
            "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=0", "trainer.log_every_n_steps=2"]

def sigterm_at(metrics, step):
    while True:
        rows = metrics.read_text().splitlines() if metrics.exists() else []
        if any(line.endswith("}") and json.loads(line)["step"] >= step for line in rows):
            os.kill(os.getpid(), signal.SIGTERM)
            return
        time.sleep(0.2)

threading.Thread(target=sigterm_at, args=(out / "tiny" / "conre-a" / "metrics.jsonl", 4), daemon=True).start()
print("exit codes", main(words("a", 2000)), main(words("b", 6)), flush=True)
"""


def records(segment: Path) -> list[dict]:
    """Every record of one offline W&B run folder, read with wandb's own reader."""
    exe = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(exe), "leet", "inspect", "--json", str(segment)], capture_output=True, text=True,
                         timeout=120, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_preempted_run_is_marked_preempted_and_the_next_training_logs_again(synthetic_corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    env.pop("WANDB_API_KEY", None)
    result = subprocess.run([sys.executable, "-c", TWO_TRAININGS, str(tmp_path), str(synthetic_corpus)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert "exit codes 143 0" in result.stdout, (result.stdout + result.stderr)[-3000:]
    (preempted,) = (tmp_path / "tiny" / "conre-a" / "wandb").glob("offline-run-*")
    kinds = {r["type"]: r for r in records(preempted)}
    assert "preempting" in kinds  # W&B shows the run preempted, not failed
    assert kinds["exit"]["exit"]["exit_code"] == 143
    (later,) = (tmp_path / "tiny" / "conre-b" / "wandb").glob("offline-run-*")
    steps = [row["trainer/global_step"] for row in offline_history(later) if "train/loss" in row]
    assert steps and max(steps) >= 4, steps  # the preemption of the first training does not silence the second
