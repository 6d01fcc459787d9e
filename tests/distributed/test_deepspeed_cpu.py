"""DDP and DeepSpeed ZeRO-2/3 train for real on two CPU processes (gloo), and their checkpoints consolidate.

Each run is ``ds_train_script.py`` in a subprocess (Lightning's ddp launcher starts the second rank) on the
same seed and data, so DDP and DeepSpeed must produce the same loss curve; DeepSpeed's JIT ops compile once
into the shared ``TORCH_EXTENSIONS_DIR``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.ports import free_port
from trainer.deepspeed_checkpoint import is_complete, is_deepspeed_checkpoint, load_deepspeed_checkpoint

SCRIPT = Path(__file__).with_name("ds_train_script.py")
REPO = SCRIPT.parents[2]
STEPS, MAX_STEPS, ACCUMULATE, LR = 12, 24, 2, 3e-2  # runs stop at STEPS of a MAX_STEPS schedule, as if preempted


def scheduled_lr(step: int) -> float:
    """The learning rate the script's stage schedules for an optimizer step (warm-up 5, cosine to MAX_STEPS)."""
    from datamodules.config import DataConfig
    from lightning_modules.base import StageConfig, StageModule

    return LR * StageModule(StageConfig(lr=LR, warmup_steps=5), DataConfig(), max_steps=MAX_STEPS).lr_factor(step)


def launch(out: Path, *args: str, devices: int = 2) -> subprocess.CompletedProcess:
    """Run the training script (two CPU ranks unless told); the result holds its exit code and output."""
    launcher_vars = ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PL_")) and k not in launcher_vars}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), PYTHONWARNINGS="ignore")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".torch_extensions"))
    cmd = [sys.executable, str(SCRIPT), "--devices", str(devices), "--steps", str(MAX_STEPS),
           "--accumulate", str(ACCUMULATE), "--out", str(out), *args]
    # generous: a first JIT build on a busy machine is slow; a broken rendezvous fails within 60 s anyway
    return subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


class Runs:
    """Training runs of this module, each launched once and shared by the tests that read it."""

    def __init__(self, root: Path):
        self.root = root
        self.done: dict[str, Path] = {}

    def get(self, name: str, *args: str, stop_at: int = STEPS) -> Path:
        if name not in self.done:
            out = self.root / name
            result = launch(out, *args, *(["--stop-at", str(stop_at)] if stop_at else []))
            assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
            self.done[name] = out
        return self.done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("ds_runs"))


def record(out: Path) -> dict:
    return json.loads((out / "train.json").read_text())


def assert_trained(out: Path) -> dict:
    rec = record(out)
    assert rec["global_step"] == STEPS
    losses = rec["losses"]
    assert len(losses) == STEPS * ACCUMULATE
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < 0.5 * first, f"loss did not decrease: first {losses[:4]}, last {losses[-4:]}"
    # Lightning reads the rate after each micro-batch: the scheduler steps once per accumulated step
    assert rec["lrs"] == pytest.approx([scheduled_lr((b + 1) // ACCUMULATE) for b in range(len(losses))], rel=1e-5)
    return rec


def assert_consolidates_to_trained_weights(out: Path, step: int = STEPS, rtol: float = 0.0) -> dict:
    ckpt = out / "checkpoint"
    assert is_deepspeed_checkpoint(ckpt) and is_complete(ckpt)
    state_dict, client = load_deepspeed_checkpoint(ckpt)
    trained = torch.load(out / "weights.pt", map_location="cpu", weights_only=True)
    assert sorted(state_dict) == sorted(trained)
    for name, value in trained.items():
        assert state_dict[name].dtype == torch.float32
        if rtol:  # bf16 module weights beside the fp32 master copy
            torch.testing.assert_close(state_dict[name], value, rtol=rtol, atol=rtol / 10)
        else:
            assert torch.equal(state_dict[name], value), name
    assert client["global_step"] == step and "callbacks" in client and "loops" in client
    assert "module" not in client and "optimizer" not in client
    return client


def test_ddp_two_gloo_processes_train(runs):
    out = runs.get("ddp", "--strategy", "ddp")
    rec = assert_trained(out)
    assert rec["optimizer"] == "AdamW"
    ckpt = torch.load(out / "checkpoint.ckpt", map_location="cpu", weights_only=True)
    trained = torch.load(out / "weights.pt", weights_only=True)
    assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in trained.items())


@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_zero_trains_and_checkpoint_consolidates(runs, zero):
    out = runs.get(f"zero{zero}", "--strategy", "deepspeed", "--zero", str(zero))
    rec = assert_trained(out)
    assert rec["optimizer"] == "AdamW"  # the stage's torch AdamW, no JIT-compiled optimizer on CPU
    config = json.loads((out / "deepspeed_config.json").read_text())
    assert config["zero_optimization"]["stage"] == zero
    assert config["gradient_accumulation_steps"] == ACCUMULATE
    if zero == 3:
        assert (out / "checkpoint" / "checkpoint" / "zero_pp_rank_1_mp_rank_00_model_states.pt").is_file()
    assert_consolidates_to_trained_weights(out)


@pytest.mark.parametrize("zero", [2, 3])
def test_deepspeed_follows_the_ddp_loss_curve(runs, zero):
    """Same seed and data: ZeRO partitioning, accumulation and clipping must not change the optimisation."""
    ddp = record(runs.get("ddp", "--strategy", "ddp"))
    ds = record(runs.get(f"zero{zero}", "--strategy", "deepspeed", "--zero", str(zero)))
    assert ds["lrs"] == pytest.approx(ddp["lrs"], rel=1e-6)
    assert ds["losses"] == pytest.approx(ddp["losses"], rel=1e-3)


def test_zero3_offload_trains_like_zero3(runs):
    """The deepspeed_zero3_offload layout on CPU processes: parameters and optimizer states offloaded."""
    out = runs.get("zero3_offload", "--strategy", "deepspeed", "--zero", "3", "--offload")
    rec = assert_trained(out)
    assert rec["optimizer"] == "AdamW"  # CPU processes keep torch's AdamW (no JIT build)
    zero = json.loads((out / "deepspeed_config.json").read_text())["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    reference = record(runs.get("zero3", "--strategy", "deepspeed", "--zero", "3"))
    assert rec["losses"] == pytest.approx(reference["losses"], rel=1e-3)
    assert_consolidates_to_trained_weights(out)


@pytest.mark.slow
def test_offload_on_cpu_adam_keeps_the_schedule(runs):
    """DeepSpeedCPUAdam (what GPUs use under offload; a one-time JIT build of ~40-80 s) replaces the stage's
    AdamW with the same hyper-parameters and learning-rate schedule."""
    out = runs.get("zero3_cpu_adam", "--strategy", "deepspeed", "--zero", "3", "--offload", "--cpu-adam")
    rec = assert_trained(out)
    assert rec["optimizer"] == "DeepSpeedCPUAdam"
    reference = record(runs.get("zero3", "--strategy", "deepspeed", "--zero", "3"))
    assert rec["losses"] == pytest.approx(reference["losses"], rel=1e-3)
    assert_consolidates_to_trained_weights(out)


def test_zero3_resumes_from_its_checkpoint_directory(runs):
    """A stopped ZeRO-3 run resumes weights, optimizer state and schedule from its directory (read weights-only)."""
    first = runs.get("zero3", "--strategy", "deepspeed", "--zero", "3")
    out = runs.get("zero3_resumed", "--strategy", "deepspeed", "--zero", "3", "--resume",
                   str(first / "checkpoint"), stop_at=0)
    rec, before = record(out), record(first)
    assert rec["global_step"] == MAX_STEPS
    assert len(rec["losses"]) == (MAX_STEPS - STEPS) * ACCUMULATE
    offset = STEPS * ACCUMULATE
    expected = [scheduled_lr((offset + b + 1) // ACCUMULATE) for b in range(len(rec["losses"]))]
    assert rec["lrs"] == pytest.approx(expected, rel=1e-5)
    resumed_start, fresh_start = sum(rec["losses"][:4]) / 4, sum(before["losses"][:4]) / 4
    assert resumed_start < 0.5 * fresh_start, "the resumed run started from fresh weights"
    assert_consolidates_to_trained_weights(out, step=MAX_STEPS)


@pytest.mark.cuda
@pytest.mark.parametrize("zero,offload", [(2, False), (3, True)])
def test_deepspeed_bf16_on_one_gpu(tmp_path, zero, offload):
    """The GPU presets: DeepSpeed bf16 (and ZeRO-3 offload with DeepSpeedCPUAdam) train and consolidate. A step
    on one GPU averages half the samples of a step of the two CPU ranks, in bf16: it runs the whole schedule."""
    args = ["--strategy", "deepspeed", "--zero", str(zero), "--accelerator", "gpu", "--precision", "bf16-mixed",
            "--stop-at", str(MAX_STEPS), *(["--offload"] if offload else [])]
    result = launch(tmp_path, *args, devices=1)
    assert result.returncode == 0, result.stderr[-6000:]
    rec = record(tmp_path)
    assert rec["optimizer"] == ("DeepSpeedCPUAdam" if offload else "AdamW")
    losses = rec["losses"]
    assert sum(losses[-4:]) < 0.5 * sum(losses[:4]), losses
    config = json.loads((tmp_path / "deepspeed_config.json").read_text())
    assert config["bf16"] == {"enabled": False}  # bf16-mixed: fp32 weights under torch autocast, not DeepSpeed's bf16
    assert config["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert_consolidates_to_trained_weights(tmp_path, step=MAX_STEPS, rtol=1e-2)
