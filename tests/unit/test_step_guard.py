"""The device-side pieces of a skipped step: the schedule, the EMA, the bad-step counter, the gradient guard."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from datamodules.config import DataConfig
from lightning_modules.base import StageConfig, StageModule
from lightning_modules.ema import EMAWeights
from lightning_modules.optim import BadStepCounter, SkipAwareLR, fused_adamw, guard_gradients, schedule_factor


def schedule(step: torch.Tensor) -> torch.Tensor:
    return schedule_factor(step, warmup=3, max_steps=20, kind="cosine")


def optimizer() -> torch.optim.AdamW:
    layer = torch.nn.Linear(3, 2)
    return fused_adamw(list(layer.parameters()), lr=0.1, betas=(0.9, 0.999), weight_decay=0.0, device_lr=True)


def test_the_schedule_matches_lambda_lr_and_stands_still_on_skipped_steps():
    opt = optimizer()
    factor = lambda s: float(schedule(torch.tensor(float(s), dtype=torch.float64)))  # noqa: E731
    reference = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)], lr=0.1), factor)
    sched = SkipAwareLR(opt, schedule)
    for _ in range(6):
        opt.found_inf = torch.tensor(0.0)
        sched.step()
        reference.step()
        assert float(opt.param_groups[0]["lr"]) == torch.tensor(reference.get_last_lr()[0], dtype=torch.float32)
    before = opt.param_groups[0]["lr"].clone()
    opt.found_inf = torch.tensor(1.0)
    sched.step()
    assert torch.equal(opt.param_groups[0]["lr"], before) and float(sched.position) == 6.0
    assert sched.last_epoch == 7  # the calls (the global step) still count


def test_the_schedule_resumes_from_its_own_state_and_from_a_lambda_lr_state():
    opt = optimizer()
    sched = SkipAwareLR(opt, schedule)
    for found in (0.0, 1.0, 0.0):
        opt.found_inf = torch.tensor(found)
        sched.step()
    state = sched.state_dict()
    assert "factor" not in state and "optimizer" not in state
    restored = SkipAwareLR(optimizer(), schedule)
    restored.load_state_dict(state)
    assert float(restored.position) == 2.0 and torch.equal(restored.optimizer.param_groups[0]["lr"],
                                                           opt.param_groups[0]["lr"])
    legacy_opt = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    legacy = torch.optim.lr_scheduler.LambdaLR(legacy_opt, lambda s: 1.0)
    legacy.step()
    legacy.step()
    old = SkipAwareLR(optimizer(), schedule)
    old.load_state_dict(legacy.state_dict())  # a checkpoint written before the device path
    assert float(old.position) == 2.0
    assert float(old.optimizer.param_groups[0]["lr"]) == torch.tensor(0.1 * float(schedule(torch.tensor(2.0,
                                                                      dtype=torch.float64))), dtype=torch.float32)


def test_the_ema_skips_its_update_and_its_count():
    layer = torch.nn.Linear(3, 2)
    ema = EMAWeights(layer, decay=0.9)
    start = ema.shadow["weight"].clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update(layer, torch.tensor(1.0))
    assert ema.num_updates == 0 and torch.equal(ema.shadow["weight"], start)
    ema.update(layer, torch.tensor(0.0))
    assert ema.num_updates == 1 and not torch.equal(ema.shadow["weight"], start)
    state = ema.state_dict()
    assert state["num_updates"] == 1 and isinstance(state["num_updates"], int)


def test_the_counter_keeps_the_streak_the_total_and_the_step_it_tripped():
    counter = BadStepCounter()
    for step, found in enumerate([1, 1, 0, 1, 1, 1, 0]):
        counter.record(torch.tensor(float(found)), step, limit=3)
    assert counter.read() == (0, 5, 5)
    assert BadStepCounter().read() == (0, 0, -1)


def test_the_guard_catches_a_non_finite_gradient_and_a_non_finite_loss():
    opt = optimizer()
    params = [p for g in opt.param_groups for p in g["params"]]
    for p in params:
        p.grad = torch.ones_like(p)
    assert float(guard_gradients(opt, None, clip=1.0)) == 0.0
    assert torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params])) <= 1.0 + 1e-6  # clipped
    assert float(guard_gradients(opt, torch.tensor(True), clip=None)) == 1.0
    params[0].grad[0, 0] = float("inf")
    assert float(guard_gradients(opt, torch.tensor(False), clip=None)) == 1.0 and opt.found_inf is not None


class ToyGAN(StageModule):
    """A generator and a discriminator under manual optimisation; batch ``bad`` has a NaN generator loss."""

    def __init__(self, bad: int):
        super().__init__(StageConfig(name="toygan", lr=1e-2), DataConfig())
        self.automatic_optimization, self.num_optimizers, self.bad = False, 2, bad
        self.gen, self.discriminator = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)
        self.batches = 0

    def compute_losses(self, batch):
        out = self.gen(batch["x"])
        self._last = (batch["x"], out)
        loss = (out - 1.0).pow(2).mean(1)
        self.batches += 1
        return {"mse": loss * float("nan") if self.batches - 1 == self.bad else loss}

    def adversarial_inputs(self):
        return self._last

    def configure_optimizers(self):
        return self.adversarial_optimizers(self.gen.parameters())


class Snapshots(pl.Callback):
    def __init__(self):
        self.before, self.after = {}, {}

    def state(self, trainer, module):
        return {"weights": {k: v.clone() for k, v in module.state_dict().items()},
                "steps": [float(o.state_dict()["state"][0]["step"]) for o in trainer.optimizers],
                "lrs": [float(o.param_groups[0]["lr"]) for o in trainer.optimizers]}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.optimizers[0].state:
            self.before[batch_idx] = self.state(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[batch_idx] = self.state(trainer, pl_module)


def test_a_non_finite_generator_step_skips_both_optimizers_of_a_gan(tmp_path):
    module, snapshots = ToyGAN(bad=2), Snapshots()
    batches = [{"key": ["k"] * 3, "x": torch.randn(3, 4)} for _ in range(5)]
    trainer = pl.Trainer(max_steps=10, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[snapshots])
    trainer.fit(module, torch.utils.data.DataLoader(batches, batch_size=None))
    before, after = snapshots.before[2], snapshots.after[2]
    assert all(torch.equal(before["weights"][k], after["weights"][k]) for k in before["weights"])
    assert before["steps"] == after["steps"] == [2.0, 2.0] and before["lrs"] == after["lrs"]
    assert not torch.equal(snapshots.after[3]["weights"]["gen.weight"], after["weights"]["gen.weight"])
