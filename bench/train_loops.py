"""The two sides of the training benchmark, each timed over the same window of steps on the same batches.

- :func:`framework_window`: a real ``seespeaker train``: the Trainer, module and default callbacks that the project's
  trainer factory builds (``trainer.factory.build_run``), fed the preloaded batches;
- :func:`bare_window`: a plain PyTorch loop over the same module, built the same way, doing the same math: the
  stage's per-sample losses and reduction, backward, gradient-norm clipping, fused AdamW, the learning-rate schedule
  and the EMA update, with the same autocast; no non-finite check, no logging, no callbacks.

Each window starts at step ``warmup`` (after its batch is fetched) and ends after the last step, the device
synchronised at both ends.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
import torch

from bench.train_stats import Window
from trainer import factory
from trainer.config import compose
from trainer.factory import apply_speed_knobs, build_module, build_run
from trainer.strategies import resolve_precision

CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
_clock = CLOCKS["wall"]


def use_clock(name: str) -> None:
    """``wall`` (the default: what a user waits) or ``process`` (this process's CPU time: a diagnostic on a shared
    machine, meaningful with one thread)."""
    global _clock
    _clock = CLOCKS[name]


class Cycle:
    """The preloaded batches, in turn, ``steps`` times (the training loader of both sides)."""

    def __init__(self, batches: list[dict[str, Any]], steps: int):
        self.batches, self.steps = batches, steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.batches[i % len(self.batches)] for i in range(self.steps))

    def __len__(self) -> int:
        return self.steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


class WindowTimer(pl.Callback):
    """Times training batches ``warmup`` .. ``warmup + steps - 1`` of a Lightning run."""

    def __init__(self, warmup: int, steps: int, device: torch.device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.start = self.end = 0.0
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            synchronize(self.device)
            self.start = _clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup + self.steps - 1:
            synchronize(self.device)
            self.end = _clock()
        self.batches = batch_idx + 1

    def seconds(self) -> float:
        """The window's time; an error when the run stopped before the window's last batch."""
        if self.batches < self.warmup + self.steps:
            raise RuntimeError(f"the framework run stopped after {self.batches} batches, before the end of the timed "
                               f"window ({self.warmup} + {self.steps} batches): its trainer.max_steps counts "
                               "optimizer steps, not batches")
        return self.end - self.start


@contextlib.contextmanager
def reusing(module: pl.LightningModule | None):
    """The factory builds ``module`` (one built before) instead of a new one: building a stage takes seconds at
    paper scale, and each window's warm-up steps are not timed."""
    if module is None:
        yield
        return
    original = factory.build_module
    factory.build_module = lambda cfg: module
    try:
        yield
    finally:
        factory.build_module = original


def framework_window(words: list[str], batches: list[dict], warmup: int, steps: int, device: torch.device,
                     module: pl.LightningModule | None = None) -> tuple[Window, pl.LightningModule]:
    """The timed window of a real run, and its module (for the next window; not under DeepSpeed, whose engine
    rebuilds the parameters it partitions)."""
    cfg = compose(words)
    with reusing(module if cfg.trainer.strategy != "deepspeed" else None):
        run = build_run(cfg)
    timer = WindowTimer(warmup, steps, device)
    run.trainer.callbacks.append(timer)
    # Lightning counts each optimizer's step (the adversarial option: generator and discriminator, two a batch);
    # the window is counted in batches
    run.trainer.fit_loop.epoch_loop.max_steps = (warmup + steps) * run.module.num_optimizers
    torch.set_float32_matmul_precision("high")  # as trainer.factory.fit
    reset_peak(device)
    run.trainer.fit(run.module, train_dataloaders=Cycle(batches, warmup + steps))
    return Window(timer.seconds(), steps, cfg.data.batch_size, peak_gb(device)), run.module


def autocast_for(cfg, device: torch.device):
    precision = resolve_precision(cfg.trainer)
    if precision == "bf16-mixed":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision != "32-true":
        raise ValueError(f"the bare loop runs 32-true and bf16-mixed, not {precision}")
    return contextlib.nullcontext


def bare_module(cfg, device: torch.device, knobs: bool = True) -> pl.LightningModule:
    """The stage module as the factory builds it (same seed, same speed knobs), on ``device``, in training mode."""
    pl.seed_everything(cfg.experiment.seed, workers=True, verbose=False)
    module = build_module(cfg)
    if knobs:
        apply_speed_knobs(module, cfg.trainer)
    return module.to(device).train()


def param_groups(module) -> list[list[torch.nn.Parameter]]:
    """The parameters of each optimizer the stage configures (generator first, then a discriminator)."""
    configured = module.configure_optimizers()
    optimizers = configured[0] if isinstance(configured, tuple) else [configured["optimizer"]]
    return [[p for group in opt.param_groups for p in group["params"]] for opt in optimizers]


class BareEMA:
    """The EMA update of ``lightning_modules.ema`` (same warm-up, same lerp), on fixed lists."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.params = [p for _, p in module.named_parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)


class BareLoop:
    """One optimizer step of the stage without a framework (a GAN stage: generator, then discriminator)."""

    def __init__(self, cfg, module: pl.LightningModule, device: torch.device):
        self.module, self.clip = module, cfg.trainer.gradient_clip_val or None
        self.autocast = autocast_for(cfg, device)
        kwargs = {"lr": cfg.stage.lr, "betas": tuple(cfg.stage.betas), "weight_decay": cfg.stage.weight_decay}
        self.groups = param_groups(module)
        self.optimizers = [torch.optim.AdamW(g, fused=True, **kwargs) for g in self.groups]
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, module.lr_factor) for o in self.optimizers]
        self.ema = BareEMA(module, cfg.trainer.ema_decay) if cfg.trainer.ema_decay > 0 else None
        if not module.automatic_optimization:
            self.clip = module.adversarial_clip()

    def step(self, batch: dict[str, Any]) -> None:
        with self.autocast():
            loss = self.module.reduce_losses(self.module.compute_losses(batch), batch.get("valid"))
        self._update(0, loss)
        if len(self.optimizers) > 1:
            real, fake = self.module.adversarial_inputs()
            with self.autocast():
                disc = self.module.discriminator
                d_loss = torch.relu(1 - disc(real)).mean() + torch.relu(1 + disc(fake.detach())).mean()
            self._update(1, d_loss)
        for scheduler in self.schedulers:
            scheduler.step()
        if self.ema is not None:
            self.ema.update()

    def _update(self, index: int, loss: torch.Tensor) -> None:
        optimizer = self.optimizers[index]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.groups[index], self.clip)
        optimizer.step()


def bare_window(words: list[str], batches: list[dict], warmup: int, steps: int, device: torch.device,
                module: pl.LightningModule | None = None) -> tuple[Window, pl.LightningModule]:
    """The timed window of the bare loop, and its module (for the next window)."""
    cfg = compose(words)
    module = module.to(device) if module is not None else bare_module(cfg, device)
    loop = BareLoop(cfg, module, device)
    torch.set_float32_matmul_precision("high")
    reset_peak(device)
    start = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            synchronize(device)
            start = _clock()
        loop.step(batches[i % len(batches)])
    synchronize(device)
    return Window(_clock() - start, steps, cfg.data.batch_size, peak_gb(device)), module
