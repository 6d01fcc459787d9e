"""Optimizer steps that skip non-finite updates on the device, with no host synchronisation per step.

A step whose loss or gradients are not finite must leave the training state as it was. Reading that decision on the
host (``loss.item()``) stalls a GPU every step, so the decision stays on the device, as ``torch.amp.GradScaler``
keeps it:

- :func:`guard_gradients` clips the gradients (as Lightning's ``gradient_clip_val`` does) and returns ``found_inf``
  (1.0 when the loss or the gradient norm is not finite, agreed by every rank), set on the optimizer;
- fused AdamW reads ``optimizer.found_inf``: the kernel leaves weights and moments alone and reverts its step count;
- :class:`SkipAwareLR` advances its position only by the steps taken; its learning rates are device tensors;
- the EMA (``lightning_modules.ema``) skips its update the same way;
- :class:`BadStepCounter` keeps the streak of skipped steps on the device; the host reads it every N steps.

Under DeepSpeed the engine steps the optimizer: its ZeRO optimizer finds the non-finite gradient norm, skips the step
and clears the gradients. :meth:`StepGuard.optimizer_step` reads the engine's own decision (already on the host) and
feeds the same schedule, EMA and counter.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DeepSpeedStrategy
from torch.optim.lr_scheduler import LRScheduler

# StageModule.transfer_batch_to_device is meant to run beside a LightningDataModule; Lightning says so at every fit
warnings.filterwarnings("ignore", message=r"You have overridden `transfer_batch_to_device` in `LightningModule`")


def schedule_factor(step: torch.Tensor, warmup: int, max_steps: int, kind: str) -> torch.Tensor:
    """Learning-rate factor at ``step`` (float64 tensor): linear warm-up, then constant or cosine to 10%."""
    if kind == "constant":
        after = torch.ones_like(step)
    else:
        progress = ((step - warmup) / max(1, max_steps - warmup)).clamp(max=1.0)
        after = 0.1 + 0.9 * 0.5 * (1.0 + torch.cos(math.pi * progress))
    if not warmup:
        return after
    return torch.where(step < warmup, (step + 1) / warmup, after)


def fused_adamw(params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float,
                device_lr: bool) -> torch.optim.AdamW:
    """Fused AdamW (CPU and CUDA), the kernel that honours ``found_inf``; a device-tensor ``lr`` when asked."""
    value: Any = torch.tensor(lr, dtype=torch.float32, device=params[0].device) if device_lr else lr
    return torch.optim.AdamW(params, lr=value, betas=betas, weight_decay=weight_decay, fused=True)


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


def guard_gradients(optimizer: torch.optim.Optimizer, loss_bad: torch.Tensor | None, clip: float | None,
                    world_size: int = 1) -> torch.Tensor:
    """Clip the gradients by their total norm and set ``optimizer.found_inf``: 1.0 when the norm or the loss is not
    finite on any rank (a device tensor; nothing is read on the host). Returns ``found_inf``."""
    params = optimizer_params(optimizer)
    grads = [p.grad for p in params if p.grad is not None]
    device = params[0].device
    if grads:
        norm = torch.nn.utils.get_total_norm(grads)
        if clip:
            torch.nn.utils.clip_grads_with_norm_(params, clip, norm)
        bad = ~torch.isfinite(norm)
    else:
        bad = torch.zeros((), dtype=torch.bool, device=device)
    if loss_bad is not None:
        bad = bad | loss_bad.to(device)
    found = bad.to(torch.float32).reshape(())
    if world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(found, op=dist.ReduceOp.MAX)  # enqueued on the device: every rank takes the same decision
    optimizer.found_inf = found
    return found


class SkipAwareLR(LRScheduler):
    """``LambdaLR`` whose position counts only the optimizer steps that were taken.

    ``position`` (a float64 device tensor) advances by ``1 - optimizer.found_inf`` per call, and each group's learning
    rate is the device tensor ``base_lr * factor(position)``: a skipped step leaves the schedule as it was, with no
    host synchronisation. ``last_epoch`` still counts the calls (the global step). It loads the state of a
    ``LambdaLR`` of the same schedule (older checkpoints): their position is their ``last_epoch``.

    With ``on_host`` (an optimizer stepped by DeepSpeed's engine, whose skip decision is a host value) the position
    stays on the CPU, advances by ``1 - found_inf`` set on the scheduler, and the learning rates are Python floats.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, factor: Callable[[torch.Tensor], torch.Tensor],
                 on_host: bool = False):
        self.factor = factor
        self.on_host = on_host
        self.found_inf: torch.Tensor | None = None  # on_host: 1.0 when the engine skipped the last step
        device = "cpu" if on_host else optimizer_params(optimizer)[0].device
        self.position = torch.zeros((), dtype=torch.float64, device=device)
        super().__init__(optimizer)
        self.base_lrs = [float(b) for b in self.base_lrs]  # once, at construction

    def step(self, epoch: int | None = None) -> None:  # the deprecated ``epoch`` is not supported
        self._step_count += 1
        self.last_epoch += 1
        if self.last_epoch > 0:
            found = self.found_inf if self.on_host else getattr(self.optimizer, "found_inf", None)
            self.position += 1.0 if found is None else 1.0 - found.to(self.position)
        self._write()

    def _write(self) -> None:
        factor = self.factor(self.position)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            if self.on_host:
                group["lr"] = float(base * factor)  # as LambdaLR computes it
                continue
            value = (base * factor).to(torch.float32)
            if isinstance(group["lr"], torch.Tensor) and group["lr"].device == value.device:
                group["lr"].copy_(value)
            else:  # a float or a tensor elsewhere, as a checkpoint may restore it
                group["lr"] = value.clone()
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        skip = ("optimizer", "factor", "_last_lr", "on_host", "found_inf")
        return {key: value for key, value in self.__dict__.items() if key not in skip}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = {k: v for k, v in state_dict.items() if k not in ("lr_lambdas", "_last_lr", "on_host", "found_inf")}
        device = self.position.device
        position = state.pop("position", None)
        self.__dict__.update(state)
        self.base_lrs = [float(b) if isinstance(b, torch.Tensor) else b for b in self.base_lrs]
        start = position if position is not None else torch.tensor(float(self.last_epoch))
        self.position = start.to(device=device, dtype=torch.float64)
        self._write()


class BadStepCounter:
    """Skipped steps counted on the device: the current streak, the total, and the step at which the streak first
    reached ``limit`` (-1: not yet). :meth:`read` brings them to the host (call it every N steps)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # [streak, total, tripped at step]

    def record(self, found: torch.Tensor, step: int, limit: int) -> None:
        if self.counts is None or self.counts.device != found.device:
            self.counts = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64, device=found.device)
        found = found.to(torch.float64)
        streak = (self.counts[0] + 1.0) * found
        tripped = (streak >= limit) & (self.counts[2] < 0)
        trip_step = torch.where(tripped, torch.full_like(streak, float(step)), self.counts[2])
        self.counts = torch.stack([streak, self.counts[1] + found, trip_step])

    def read(self) -> tuple[int, int, int]:
        """(streak, total, step at which the streak reached the limit or -1): a host synchronisation."""
        if self.counts is None:
            return 0, 0, -1
        streak, total, tripped = (int(v) for v in self.counts.tolist())
        return streak, total, tripped


class StepGuard:
    """The non-finite handling of a LightningModule (mixed into ``StageModule``): the loss flag of each micro-batch,
    the guard before the optimizer step (Lightning's ``configure_gradient_clipping`` hook), the periodic host read of
    the bad-step counter, the engine's decision under DeepSpeed, and the host check kept for fp16."""

    max_bad_steps: int

    def init_step_guard(self) -> None:
        self.bad_steps = 0  # the streak of skipped steps, as last read on the host
        self.step_skipped: torch.Tensor | None = None  # 1.0 when the last optimizer step was skipped (device)
        self._loss_bad: torch.Tensor | None = None  # a non-finite loss among this step's micro-batches (device)
        self._bad_counter = BadStepCounter()
        self._read_at = -1

    def flag_loss(self, loss: torch.Tensor) -> None:
        """Remember (on the device) whether this micro-batch's loss is finite."""
        bad = ~torch.isfinite(loss.detach())
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def skips_on_device(self) -> bool:
        """Non-finite steps are decided on the device (fused AdamW's ``found_inf``), except under DeepSpeed, whose
        engine decides (:meth:`skips_in_engine`), and fp16, whose GradScaler owns ``found_inf`` (a host check)."""
        trainer = self._trainer
        if trainer is None:
            return True
        return not isinstance(trainer.strategy, DeepSpeedStrategy) and trainer.precision != "16-mixed"

    def skips_in_engine(self) -> bool:
        """Under DeepSpeed the engine finds a non-finite gradient norm (as a non-finite loss makes it), skips the
        step and clears the gradients; :meth:`optimizer_step` passes its decision on."""
        trainer = self._trainer
        return trainer is not None and isinstance(trainer.strategy, DeepSpeedStrategy)

    def guard_loss(self, loss: torch.Tensor) -> bool:
        """Before the backward pass: False when the step is skipped here, on the host (fp16 without DeepSpeed)."""
        if self.skips_on_device():
            self.flag_loss(loss)
            return True
        if self.skips_in_engine():
            return True
        if not self._all_ranks_finite(loss):
            self._skip_on_host()
            return False
        self.bad_steps = 0
        self.step_skipped = None
        return True

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """Lightning's step; under DeepSpeed, then the engine's decision: a skipped step holds the schedule, leaves
        the EMA alone and is counted. The engine read it on the host already: no synchronisation is added."""
        if not self.skips_in_engine():
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        engine = self.trainer.model
        steps, skipped = engine.global_steps, engine.skipped_steps
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if engine.global_steps != steps:  # an accumulation boundary: the engine stepped or skipped
            self._engine_stepped(engine.skipped_steps != skipped)
        return None

    def _engine_stepped(self, skipped: bool) -> None:
        found = torch.tensor(float(skipped))
        self.step_skipped = found
        self._bad_counter.record(found, self.global_step, self.max_bad_steps)
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.found_inf = found  # SkipAwareLR holds its position on a skipped step

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if not self.skips_on_device() or gradient_clip_algorithm == "value":
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            if not self.skips_on_device():
                return
            gradient_clip_val = None
        self.step_skipped = self._guard(optimizer, self._loss_bad, gradient_clip_val)
        self._loss_bad = None

    def _guard(self, optimizer, loss_bad: torch.Tensor | None, clip: float | None) -> torch.Tensor:
        """Clip, set ``found_inf`` on the (unwrapped) optimizer, count the step if skipped; all on the device."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer under manual optimisation
        found = guard_gradients(optimizer, loss_bad, clip, self.trainer.world_size)
        self._bad_counter.record(found, self.global_step, self.max_bad_steps)
        return found

    def _read_bad_steps(self, final: bool = False) -> None:
        """Every ``log_every_n_steps`` (and when training ends) read the device's count of skipped steps: log it, and
        stop after ``max_bad_steps`` in a row. Every rank reads at the same step and takes the same decision."""
        every = max(1, self.trainer.log_every_n_steps)
        step = self.global_step
        counted = self.skips_on_device() or self.skips_in_engine()
        if not counted or step == self._read_at or not (final or (step and step % every == 0)):
            return
        self._read_at = step
        self.bad_steps, total, tripped = self._bad_counter.read()
        if not final:
            self.log("train/skipped_nonfinite", float(total), rank_zero_only=True)
        if tripped >= 0:
            self._stop(tripped)

    def on_train_end(self) -> None:
        self._read_bad_steps(final=True)

    def _stop(self, step: int) -> None:
        raise FloatingPointError(
            f"stage {self.cfg.name}: {self.max_bad_steps} non-finite losses in a row (last at step "
            f"{step}); lower stage.lr or check the data. The last checkpoint is intact."
        )

    def _skip_on_host(self) -> None:
        self.bad_steps += 1
        self.step_skipped = torch.ones((), device=self.device)
        self.log("train/skipped_nonfinite", float(self.bad_steps), rank_zero_only=True)
        if self.bad_steps >= self.max_bad_steps:
            self._stop(self.global_step)
        return None

    def _all_ranks_finite(self, loss: torch.Tensor) -> bool:
        """Every rank takes the same decision, or one rank skipping alone would hang the collectives."""
        flag = torch.isfinite(loss.detach()).float().reshape(1)
        if self.trainer.world_size > 1:
            flag = self.trainer.strategy.reduce(flag, reduce_op="min")
        return bool(flag.item() > 0)
