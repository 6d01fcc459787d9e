"""Lightning's per-step host synchronisations, moved to the logging interval or off the device.

Each of these reads a device value back to the host (or runs a device collective and reads it) on every training
step, which stalls a GPU's queue of kernels at every step end:

- the rich progress bar reads the logged metrics every step: :class:`SteadyRichProgressBar` moves every step and
  reads them every ``every`` steps;
- the time-based ``ModelCheckpoint`` broadcasts rank 0's clock decision every step (DDP): :class:`TimedCheckpoint`
  consults the clock every ``every`` steps;
- under DDP the training loop broadcasts rank 0's SIGTERM flag every step (a device tensor, then ``.item()``):
  :func:`skip_sigterm_broadcast` drops it, since ``FlagSignalConnector.agree`` already makes every rank take a
  signal at the same batch (over a CPU group, see ``trainer.signals``);
- ``LearningRateMonitor`` hands tensor learning rates (``SkipAwareLR``) to the loggers: :class:`ScalarLRMonitor`
  gives them numbers (it runs at logging intervals only).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar


class SteadyRichProgressBar(RichProgressBar):
    """The rich progress bar, reading the logged metrics (a host synchronisation) every ``every`` training steps."""

    def __init__(self, every: int):
        super().__init__()
        self.every = max(1, every)
        self._shown: dict[str, Any] | None = None
        self._read_at = -1

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        step = trainer.global_step
        training = trainer.training and not trainer.sanity_checking
        if not training or self._shown is None or (step % self.every == 0 and step != self._read_at):
            self._shown = super().get_metrics(trainer, pl_module)
            self._read_at = step
        return self._shown


class TimedCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(train_time_interval=...)`` that consults the clock (a broadcast under DDP) every ``every``
    training steps instead of every step."""

    def __init__(self, every: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.every = max(1, every)

    @property
    def state_key(self) -> str:
        """The key ``ModelCheckpoint`` saved its state under: checkpoints written before this class resume it."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every == 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class ScalarLRMonitor(LearningRateMonitor):
    """``LearningRateMonitor`` that logs numbers where a learning rate is a device tensor."""

    def _extract_lr(self, param_group: dict[str, Any], name: str) -> dict[str, Any]:
        lr = param_group["lr"]
        if isinstance(lr, torch.Tensor):
            param_group = {**param_group, "lr": float(lr)}
        return super()._extract_lr(param_group, name)


def skip_sigterm_broadcast(trainer: pl.Trainer) -> None:
    """Drop the training loop's per-step broadcast of rank 0's SIGTERM flag (``FlagSignalConnector`` agrees on
    signals at every batch end already, and Lightning's own check then stops every rank at the same batch)."""
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None
