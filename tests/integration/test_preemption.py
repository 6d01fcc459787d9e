"""Killed and preempted trainings: nothing already checkpointed is lost, and resume=auto picks it up."""
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


def start(corpus: Path, out: Path, *extra: str, env_extra: dict | None = None, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "trainer.cli", "train", "experiment=tiny", "stage=conre", f"data.root={corpus}",
           f"experiment.output_root={out}", "tracking=disabled", "trainer.val_check_interval=1000",
           "trainer.limit_val_batches=0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def wait_for(condition, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("timed out waiting for the training")


def last_step(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return -1
    return max((json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()), default=-1)


def test_sigterm_saves_a_checkpoint_and_resume_continues_from_it(synthetic_corpus, tmp_path):
    run = tmp_path / "tiny" / "conre"
    proc = start(synthetic_corpus, tmp_path, "trainer.max_steps=2000", "trainer.checkpoint_every_n_steps=0",
                 "trainer.log_every_n_steps=2")
    wait_for(lambda: last_step(run) >= 6, 300, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    saved = list((run / "checkpoints").glob("preempt-step=*.ckpt"))
    assert len(saved) == 1, out[-2000:]
    step = int(saved[0].stem.split("=")[1])
    assert step >= 6
    resumed = start(synthetic_corpus, tmp_path, f"trainer.max_steps={step + 4}", "trainer.checkpoint_every_n_steps=0")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:]
    assert f"(regular, step {step})" in out and "preempt-step" in out
    assert (run / "checkpoints" / f"final-step={step + 4}.ckpt").is_file()


def test_sigterm_to_every_process_with_loader_workers_still_saves_and_resumes(synthetic_corpus, tmp_path):
    """As SLURM signals a job step: the training and its DataLoader workers get SIGTERM at once."""
    run = tmp_path / "tiny" / "conre"
    proc = start(synthetic_corpus, tmp_path, "data.num_workers=2", "trainer.max_steps=2000",
                 "trainer.checkpoint_every_n_steps=0", "trainer.log_every_n_steps=2", start_new_session=True)
    wait_for(lambda: last_step(run) >= 4, 300, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-2000:]
    assert "is killed by signal" not in out
    (saved,) = (run / "checkpoints").glob("preempt-step=*.ckpt")
    step = int(saved.stem.split("=")[1])
    resumed = start(synthetic_corpus, tmp_path, f"trainer.max_steps={step + 2}", "trainer.checkpoint_every_n_steps=0",
                    "data.num_workers=2")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:]
    assert f"(regular, step {step})" in out and "preempt-step" in out
    assert (run / "checkpoints" / f"final-step={step + 2}.ckpt").is_file()


def test_kill_9_during_a_checkpoint_write_resumes_from_the_previous_complete_one(synthetic_corpus, tmp_path):
    run = tmp_path / "tiny" / "conre"
    ckpts = run / "checkpoints"
    proc = start(synthetic_corpus, tmp_path, "trainer.max_steps=2000", "trainer.checkpoint_every_n_steps=8",
                 env_extra={"SEESPEAKER_CHECKPOINT_WRITE_PAUSE_S": "4"})
    wait_for(lambda: (ckpts / "step=8.ckpt").is_file()
             and any(p.name.startswith(".step=16") for p in ckpts.glob(".*.tmp.ckpt")), 300, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (ckpts / "step=16.ckpt").exists()
    assert any(p.name.endswith(".tmp.ckpt") for p in ckpts.iterdir())  # the interrupted write is left as a partial file
    resumed = start(synthetic_corpus, tmp_path, "trainer.max_steps=12", "trainer.checkpoint_every_n_steps=0")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-2000:]
    assert "step 8)" in out and "step=8.ckpt" in out
    assert (ckpts / "final-step=12.ckpt").is_file()


PREEMPTED_DDP = """
import json, os, signal, sys, threading, time
from pathlib import Path
import torch.distributed as dist
from trainer.cli import main

out, corpus = Path(sys.argv[1]), sys.argv[2]

def sigterm_at(metrics, step):
    while not (metrics.exists() and last_step(metrics) >= step):
        time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGTERM)

def last_step(metrics):
    return max((json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")),
               default=-1)

threading.Thread(target=sigterm_at, args=(out / "tiny" / "conre" / "metrics.jsonl", 4), daemon=True).start()
code = main(["train", "experiment=tiny", "stage=conre", f"data.root={corpus}", f"experiment.output_root={out}",
             "trainer.strategy=ddp", "trainer.devices=1", "trainer.max_steps=2000", "tracking=disabled",
             "trainer.val_check_interval=1000", "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=0",
             "trainer.log_every_n_steps=2"])
print("exit code", code, "group alive", dist.is_initialized(), flush=True)
"""


def test_a_preempted_distributed_training_ends_its_process_group(synthetic_corpus, tmp_path):
    """A preempted rank, like a finished one, destroys its process group before it exits (without waiting for the
    other ranks, which may be gone): a group left alive can abort the process at shutdown and fail the job."""
    # A fresh port, never one inherited from the environment of the pytest process.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    result = subprocess.run([sys.executable, "-c", PREEMPTED_DDP, str(tmp_path), str(synthetic_corpus)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert "exit code 143 group alive False" in result.stdout, (result.stdout + result.stderr)[-3000:]
    assert list((tmp_path / "tiny" / "conre" / "checkpoints").glob("preempt-step=*.ckpt"))
