"""Training on one CUDA GPU through the project's trainer factory: bf16, no host synchronisation between logging
steps, a skipped non-finite step, torch.compile, channels-last, DDP and DeepSpeed ZeRO-2 (skipped without CUDA).

Run on a GPU machine with ``python -m pytest tests/gpu -q`` (``bench/gpu_train.sh`` runs it first)."""
from __future__ import annotations

import importlib.util
import warnings

import pytest
import pytorch_lightning as pl
import torch

from tests.integration.test_nonfinite_steps import BAD, bitwise_equal, train
from trainer.config import compose
from trainer.factory import build_run, fit

pytestmark = pytest.mark.cuda
GPU = ("trainer.accelerator=gpu", "trainer.devices=1", "trainer.precision=bf16-mixed")


def words(root, corpus, *extra: str) -> list[str]:
    return ["experiment=tiny", "stage=conre", f"data.root={corpus}", f"experiment.output_root={root}",
            "tracking=disabled", "trainer.max_steps=12", "trainer.val_check_interval=1000",
            "trainer.limit_val_batches=0",
            "trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_minutes=0", "trainer.log_every_n_steps=1000",
            "data.num_workers=0", *GPU, *extra]


class SyncWatch(pl.Callback):
    """Turns CUDA's sync debug mode to "warn" from step ``start`` to the end of step ``stop``."""

    def __init__(self, start: int, stop: int):
        self.start, self.stop = start, stop

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.start:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.stop:
            torch.cuda.set_sync_debug_mode("default")


def fit_run(root, corpus, *extra: str, callbacks=()) -> tuple:
    run = build_run(compose(words(root, corpus, *extra)))
    run.trainer.callbacks.extend(callbacks)
    before = [p.detach().clone() for p in run.module.parameters() if p.requires_grad]
    fit(run)
    after = [p for p in run.module.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True)), "no weight changed"
    assert all(torch.isfinite(p).all() for p in after)
    return run, run.trainer


def test_bf16_on_the_gpu_takes_the_device_path(synthetic_corpus, tmp_path):
    run, trainer = fit_run(tmp_path, synthetic_corpus)
    assert trainer.precision == "bf16-mixed" and trainer.global_step == 12
    optimizer = trainer.optimizers[0]
    assert run.module.skips_on_device() and optimizer.defaults["fused"]
    assert optimizer.param_groups[0]["lr"].device.type == "cuda"
    assert next(iter(run.module.ema.shadow.values())).device.type == "cuda"


def test_no_host_synchronisation_between_logging_steps(synthetic_corpus, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_run(tmp_path, synthetic_corpus, callbacks=[SyncWatch(3, 9)])
    # torch's own notice that the debug mode is a prototype also says "synchronizing": only its warnings count
    syncs = sorted({f"{w.filename}:{w.lineno}: {w.message}" for w in caught
                    if "called a synchronizing" in str(w.message)})
    assert not syncs, "host synchronisations in steps 3-9:\n" + "\n".join(syncs[:10])


@pytest.mark.parametrize("fault", ["loss", "grad"])
def test_a_non_finite_step_on_the_gpu_changes_nothing(fault, synthetic_corpus, tmp_path):
    recorder, trainer = train(tmp_path, synthetic_corpus, fault, extra=GPU)
    assert bitwise_equal(recorder.after[BAD], recorder.before[BAD])
    assert trainer.global_step == 6


@pytest.mark.parametrize("knob", ["trainer.compile=true", "trainer.channels_last=true"])
def test_speed_knobs_train(knob, synthetic_corpus, tmp_path):
    run, _ = fit_run(tmp_path, synthetic_corpus, knob)
    if knob.startswith("trainer.compile"):
        assert any(getattr(m, "_compiled_call_impl", None) is not None for m in run.module.modules())


def test_ddp_on_one_gpu(synthetic_corpus, tmp_path):
    run, trainer = fit_run(tmp_path, synthetic_corpus, "trainer=ddp", "trainer.devices=1")
    assert type(trainer.strategy).__name__ == "DDPStrategy" and run.module.skips_on_device()


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_deepspeed_zero2_on_one_gpu(synthetic_corpus, tmp_path):
    run, trainer = fit_run(tmp_path, synthetic_corpus, "trainer=deepspeed_zero2", "trainer.devices=1")
    assert not run.module.skips_on_device()  # DeepSpeed's engine steps the optimizer: the host check stays
    zero = trainer.strategy.config["zero_optimization"]
    assert zero["overlap_comm"] is False and zero["contiguous_gradients"] is True  # nothing to overlap on one GPU
