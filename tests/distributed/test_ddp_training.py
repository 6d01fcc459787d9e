"""Two-process DDP (gloo) through the CLI: one W&B run, one checkpoint, both ranks trained."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_creates_exactly_one_wandb_run(synthetic_corpus, tmp_path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("WANDB_API_KEY", None)
    for name in [k for k in env if k.startswith("SLURM_")]:
        env.pop(name)
    cmd = [sys.executable, "-m", "trainer.cli", "train", "experiment=tiny", "stage=conre", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_steps=12", "trainer.val_check_interval=6", "trainer.process_timeout_s=120",
           "trainer.checkpoint_every_n_steps=6", "tracking=offline", f"data.root={synthetic_corpus}",
           f"experiment.output_root={tmp_path}"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run = tmp_path / "tiny" / "conre"
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert "world=2" in out.stdout and "global_batch=16x2x1=32" in out.stdout
    assert (run / "checkpoints" / "final-step=12.ckpt").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) >= 10
    assert (tmp_path / "tiny" / "stages" / "conre.safetensors").is_file()
