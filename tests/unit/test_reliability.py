"""Faults that must never cost work: bad data over the threshold, NaN losses, unsafe pickles, a full disk."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from common.errors import CheckpointError
from datamodules.config import DataConfig
from lightning_modules.base import StageConfig, StageModule
from trainer.callbacks import DataHealthMonitor
from trainer.checkpoints import find_resume_checkpoint, safe_load


class ToyStage(StageModule):
    """A linear model on the batch's audio energy; ``nan_steps`` makes chosen steps produce NaN."""

    def __init__(self, nan_steps: set[int] | None = None):
        super().__init__(StageConfig(name="toy", lr=1e-2), DataConfig())
        self.layer = torch.nn.Linear(1, 1)
        self.nan_steps = nan_steps or set()
        self.max_bad_steps = 3

    def compute_losses(self, batch):
        x = batch["audio"].pow(2).mean(dim=1, keepdim=True)
        loss = (self.layer(x) - 1.0).pow(2).squeeze(1)
        if self.global_step in self.nan_steps:
            loss = loss * float("nan")
        return {"mse": loss}


def batches(n: int, skipped_each: int = 0) -> DataLoader:
    items = [{"key": ["k"] * 4, "audio": torch.randn(4, 16), "skipped": torch.tensor(skipped_each)} for _ in range(n)]
    return DataLoader(items, batch_size=None)


def trainer(tmp_path, callbacks=(), steps=10, **kw) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=list(callbacks), **kw)


def test_skip_rate_above_threshold_stops_with_a_clear_message(tmp_path):
    health = DataHealthMonitor(max_skip_fraction=0.01)
    with pytest.raises(RuntimeError, match="data.max_skip_fraction=0.01"):
        trainer(tmp_path, [health], steps=40).fit(ToyStage(), batches(40, skipped_each=1))


def test_skips_below_threshold_are_counted_not_fatal(tmp_path):
    health = DataHealthMonitor(max_skip_fraction=0.5)
    trainer(tmp_path, [health], steps=20).fit(ToyStage(), batches(20, skipped_each=1))
    assert health.summary()["skipped_samples"] == 20 and health.summary()["seen_samples"] == 80


def test_nan_steps_are_skipped_and_counted_and_a_streak_stops_the_run(tmp_path):
    stage = ToyStage(nan_steps={3})
    t = trainer(tmp_path, steps=8)
    t.fit(stage, batches(20))
    assert stage.bad_steps == 0 and t.global_step == 8  # the NaN step was skipped, training went on
    assert all(torch.isfinite(p).all() for p in stage.parameters())
    streak = ToyStage(nan_steps=set(range(2, 50)))
    with pytest.raises(FloatingPointError, match="3 non-finite losses in a row"):
        trainer(tmp_path, steps=20).fit(streak, batches(40))
    assert all(torch.isfinite(p).all() for p in streak.parameters())


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="would run code"):
        safe_load(path)


def test_truncated_checkpoint_is_reported_and_not_resumed_from(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    torch.save({"global_step": 10, "state_dict": {}}, ckpts / "step=10.ckpt")
    (ckpts / ".step=20.123.tmp.ckpt").write_bytes(b"partial")
    found = find_resume_checkpoint(tmp_path)
    assert found is not None and found.step == 10
    (ckpts / "bad.ckpt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        safe_load(ckpts / "bad.ckpt")


def test_auto_with_a_path_prefers_the_runs_own_checkpoint_and_else_starts_from_the_path(tmp_path):
    """``run.resume=auto:<path>`` (a requeued job first started from a checkpoint path): before the run's own first
    checkpoint it resumes from the path, not from step 0; after it, from its own newest one."""
    from trainer.config import ConfigError, compose
    from trainer.factory import resolve_resume
    given = tmp_path / "given.ckpt"
    torch.save({"global_step": 5, "state_dict": {}}, given)
    cfg = compose(["experiment=tiny", "stage=conre", f"run.dir={tmp_path / 'run'}", f"run.resume=auto:{given}"])
    assert resolve_resume(cfg) == str(given)
    own = tmp_path / "run" / "checkpoints"
    own.mkdir(parents=True)
    torch.save({"global_step": 12, "state_dict": {}}, own / "step=12.ckpt")
    assert resolve_resume(cfg) == str(own / "step=12.ckpt")
    cfg.run.dir, cfg.run.resume = str(tmp_path / "other"), f"auto:{tmp_path / 'missing.ckpt'}"
    with pytest.raises(ConfigError, match="missing.ckpt"):
        resolve_resume(cfg)


@pytest.mark.parametrize("word", ["auto", "AUTO", "true", "True", "false", "None", "0", "given", "auto:given"])
def test_a_run_and_its_sbatch_restart_read_every_resume_word_alike(tmp_path, word):
    """The first run (``resolve_resume``) and the restart word of its sbatch script (``restart_resume_word``) agree:
    off and auto words start fresh before the run's first checkpoint, a path (plain or after ``auto:``) starts from
    the path; after the run's own checkpoint every restart continues from it."""
    from slurm.render import restart_resume_word
    from trainer.config import compose
    from trainer.factory import resolve_resume
    given = tmp_path / "given.ckpt"
    torch.save({"global_step": 5, "state_dict": {}}, given)
    value = word.replace("given", str(given))
    cfg = compose(["experiment=tiny", "stage=conre", f"run.dir={tmp_path / 'run'}", f"run.resume={value}"])
    first = resolve_resume(cfg)
    assert first == (str(given) if "given" in word else None)
    cfg.run.resume = restart_resume_word([f"resume={value}"]).split("=", 1)[1]
    assert resolve_resume(cfg) == first
    own = tmp_path / "run" / "checkpoints"
    own.mkdir(parents=True)
    torch.save({"global_step": 12, "state_dict": {}}, own / "step=12.ckpt")
    assert resolve_resume(cfg) == str(own / "step=12.ckpt")


def test_out_of_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    """A file-size limit makes the write fail as a full disk does; the error names the path."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from common.errors import CheckpointError
        from trainer.checkpoints import AtomicCheckpointIO
        io = AtomicCheckpointIO()
        io.save_checkpoint({{"w": torch.zeros(10)}}, "{tmp_path}/step=1.ckpt")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        try:
            io.save_checkpoint({{"w": torch.zeros(1_000_000)}}, "{tmp_path}/step=2.ckpt")
        except CheckpointError as exc:
            print("ERROR:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert "ERROR: could not write checkpoint" in out.stdout and "intact" in out.stdout, out.stderr
    assert not (tmp_path / "step=2.ckpt").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert safe_load(tmp_path / "step=1.ckpt")["w"].shape == (10,)
