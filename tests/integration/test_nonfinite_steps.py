"""A non-finite step, decided on the device, leaves the whole training state as it was (real Trainer, CPU).

Two faults at step ``BAD`` of a tiny ConRe run built by the project's trainer factory: a NaN loss, and a finite loss
whose gradients hold a NaN. Either way the weights, the optimizer state (step counts included), the EMA (its update
count included), the learning-rate schedule and the data stream are bitwise what they were before the step; the run
goes on training from the next batch, exactly the batch an unfaulted run reads there.

Under DeepSpeed (ZeRO-2 on one CPU process) the engine skips the step: the same state holds, with gradient clipping
on and off, and the skipped step is counted.
"""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from trainer.config import compose
from trainer.factory import build_run, fit

BAD = 3
STEPS = 6


def frozen(value):
    """A deep copy of tensors (nested in dicts and lists)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: frozen(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [frozen(v) for v in value]
    return value


def bitwise_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        flat = (a.detach().reshape(-1).contiguous(), b.detach().reshape(-1).contiguous())
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(*(t.view(torch.uint8) for t in flat))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(bitwise_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(bitwise_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def training_state(trainer: pl.Trainer, module) -> dict:
    optimizer = trainer.optimizers[0]
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    inner = getattr(optimizer, "optimizer", optimizer)  # DeepSpeed's ZeRO optimizer wraps the stage's AdamW
    return frozen({
        "weights": module.state_dict(),
        "master": getattr(optimizer, "single_partition_of_fp32_groups", []),  # ZeRO's fp32 weights
        "optimizer": inner.state_dict()["state"],
        "lr": [group["lr"] for group in optimizer.param_groups],
        "schedule": scheduler.state_dict().get("position", scheduler.last_epoch),
        "ema": module.ema.shadow,
        "ema_updates": module.ema.num_updates,
    })


class Recorder(pl.Callback):
    """The state before and after every step, the keys of every batch; injects the fault at step ``BAD``."""

    def __init__(self, fault: str):
        self.fault = fault
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}
        self.keys: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys[trainer.global_step] = list(batch["key"])
        self.before[trainer.global_step] = training_state(trainer, pl_module)

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.fault == "grad" and trainer.global_step == BAD:
            param = next(p for p in pl_module.parameters() if p.grad is not None)
            param.grad.view(-1)[0] = float("nan")  # the loss stays finite

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.after[trainer.global_step - 1] = training_state(trainer, pl_module)


def train(root, corpus, fault: str, extra: tuple[str, ...] = ()) -> tuple[Recorder, pl.Trainer]:
    cfg = compose(["experiment=tiny", "stage=conre", f"data.root={corpus}", f"experiment.output_root={root}",
                   "tracking=disabled", f"trainer.max_steps={STEPS}", "trainer.val_check_interval=1000",
                   "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_minutes=0",
                   "trainer.log_every_n_steps=2", "stage.warmup_steps=2", "seed=5", *extra])
    run = build_run(cfg)
    recorder = Recorder(fault)
    run.trainer.callbacks.append(recorder)
    if fault == "loss":
        compute = run.module.compute_losses

        def poisoned(batch):
            losses = compute(batch)
            if run.module.global_step == BAD:
                losses = {name: value * float("nan") for name, value in losses.items()}
            return losses

        run.module.compute_losses = poisoned
    fit(run)
    return recorder, run.trainer


@pytest.fixture(scope="module")
def clean(synthetic_corpus, tmp_path_factory):
    return train(tmp_path_factory.mktemp("clean"), synthetic_corpus, "none")


@pytest.mark.parametrize("fault", ["loss", "grad"])
def test_a_non_finite_step_leaves_the_training_state_bitwise_unchanged(fault, clean, synthetic_corpus, tmp_path):
    recorder, trainer = train(tmp_path, synthetic_corpus, fault)
    assert trainer.global_step == STEPS
    assert bitwise_equal(recorder.after[BAD], recorder.before[BAD])  # weights, Adam moments and steps, EMA, LR
    assert recorder.after[BAD]["optimizer"][0]["step"] == BAD  # the step count was reverted
    assert not bitwise_equal(recorder.after[BAD + 1]["weights"], recorder.after[BAD]["weights"])  # training goes on
    assert not bitwise_equal(recorder.after[BAD - 1]["weights"], recorder.before[BAD - 1]["weights"])
    clean_recorder, _ = clean
    assert recorder.keys == clean_recorder.keys  # the same batch at every step: nothing replayed, nothing shifted
    assert bitwise_equal(recorder.before[BAD], clean_recorder.before[BAD])
    assert trainer.lightning_module.bad_steps == 0


def test_the_skipped_step_is_counted_and_logged(synthetic_corpus, tmp_path):
    recorder, trainer = train(tmp_path, synthetic_corpus, "grad")
    module = trainer.lightning_module
    assert module._bad_counter.read() == (0, 1, -1)  # no streak now, one skipped step, no stop


DEEPSPEED = ("trainer=deepspeed_zero2", "trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true")


@pytest.mark.parametrize("clip", ["1.0", "0"])
def test_under_deepspeed_a_nan_loss_is_skipped_by_the_engine(clip, synthetic_corpus, tmp_path):
    recorder, trainer = train(tmp_path, synthetic_corpus, "loss", (*DEEPSPEED, f"trainer.gradient_clip_val={clip}"))
    assert trainer.global_step == STEPS
    assert trainer.model.skipped_steps == 1
    assert bitwise_equal(recorder.after[BAD], recorder.before[BAD])  # weights, ZeRO's fp32 copy, Adam, EMA, LR
    assert recorder.after[BAD]["optimizer"][0]["step"] == BAD
    assert recorder.after[BAD]["schedule"] == BAD and recorder.after[STEPS - 1]["schedule"] == STEPS - 1
    assert recorder.after[BAD]["ema_updates"] == BAD and recorder.after[STEPS - 1]["ema_updates"] == STEPS - 1
    assert not bitwise_equal(recorder.after[BAD + 1]["weights"], recorder.after[BAD]["weights"])  # training goes on
    module = trainer.lightning_module
    assert module._bad_counter.read() == (0, 1, -1)
    assert float(trainer.callback_metrics["train/skipped_nonfinite"]) == 1.0


def test_deepspeed_bf16_weights_check_their_gradients():
    """bf16 gradients skip a non-finite step only with DeepSpeed's check_grad_overflow: set, not left to a default."""
    from trainer.schemas import TrainerConfig
    from trainer.strategies import deepspeed_config

    cfg = TrainerConfig(accelerator="gpu", strategy="deepspeed", precision="bf16-true", gradient_clip_val=0.0)
    assert deepspeed_config(cfg, 4)["bf16"] == {"enabled": True, "check_grad_overflow": True}
