"""Two-process DDP (gloo) through the CLI: one W&B run, one checkpoint, both ranks trained."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def test_two_process_ddp_creates_exactly_one_wandb_run(synthetic_corpus, tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    for name in [k for k in env if k.startswith("SLURM_")]:
        env.pop(name)
    cmd = [sys.executable, "-m", "trainer.cli", "train", "experiment=tiny", "stage=conre", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=12", "trainer.val_check_interval=6",
           "trainer.process_timeout_s=120", "trainer.checkpoint_every_n_steps=6", "tracking=offline",
           f"data.root={synthetic_corpus}", f"experiment.output_root={tmp_path}"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "tiny" / "conre"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert "world=2" in out.stdout and "global_batch=16x2x1=32" in out.stdout
    assert (run / "checkpoints" / "final-step=12.ckpt").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) >= 10
    assert (tmp_path / "tiny" / "stages" / "conre.safetensors").is_file()


def rank1_pid(parent: int) -> int | None:
    """The DDP worker (rank 1) that Lightning's launcher started as a child of rank 0."""
    listing = subprocess.run(["pgrep", "-P", str(parent), "-f", "trainer.cli"], capture_output=True, text=True)
    pids = [int(p) for p in listing.stdout.split()]
    return pids[0] if pids else None


def test_a_signal_reaching_rank_1_first_stops_every_rank_at_the_same_batch_with_a_checkpoint(synthetic_corpus,
                                                                                                tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    for name in [k for k in env if k.startswith("SLURM_")]:
        env.pop(name)
    cmd = [sys.executable, "-m", "trainer.cli", "train", "experiment=tiny", "stage=conre", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=400", "trainer.process_timeout_s=60",
           "trainer.checkpoint_every_n_steps=0", "trainer.val_check_interval=400", "tracking=disabled",
           f"data.root={synthetic_corpus}", f"experiment.output_root={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "tiny" / "conre" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= 3 for line in metrics.read_text().splitlines()):
            break
        time.sleep(0.5)
    child = rank1_pid(proc.pid)
    assert child is not None and proc.poll() is None, "training did not reach step 3 with two ranks"
    os.kill(child, signal.SIGTERM)  # rank 1 only: rank 0 learns of it through the ranks' agreement
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 143, out[-3000:]
    saved = list((tmp_path / "tiny" / "conre" / "checkpoints").glob("preempt-step=*.ckpt"))
    assert len(saved) == 1, out[-3000:]
    assert "[preemption] SIGTERM at step" in out
