"""What every stage shares: its config schema base, per-sample losses, optimizers, EMA, loading earlier stages.

A stage subclasses :class:`StageModule` and implements:

- ``compute_losses(batch) -> dict[str, Tensor[B]]``: per-sample losses, before any weighting or reduction;
  the weighted sum with ``loss_weights`` is reduced over the valid samples here, in one place;
- optionally ``validation_metrics(batch)`` and ``on_validation_epoch_end``;
- ``log_media(batch) -> dict[str, Media]``: images (``H x W x 3`` uint8) or videos (an mp4 path), called by
  the media callback on rank 0 (on every rank under ZeRO-3, where sampling gathers the partitioned parameters).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytorch_lightning as pl
import torch

from datamodules.config import DataConfig
from lightning_modules.optim import SkipAwareLR, StepGuard, fused_adamw, guard_gradients, schedule_factor
from lightning_modules.stagefile import StageFiles


@dataclass
class StageConfig:
    """Optimisation settings every stage has; each stage's schema adds its own fields."""

    name: str = field(default="", metadata={"help": "stage name (set by the stage group)"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"help": "AdamW betas"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    schedule: str = field(default="cosine", metadata={"help": "constant | cosine (to 10% after warm-up)",
                                                      "choices": ("constant", "cosine")})
    monitor: str = field(default="val/loss", metadata={"help": "metric that ranks checkpoints"})
    monitor_mode: str = field(default="min", metadata={"help": "min | max", "choices": ("min", "max")})

    def validate(self) -> list[str]:
        errors = []
        if self.lr <= 0:
            errors.append(f"stage.lr must be positive, got {self.lr}")
        if len(self.betas) != 2:
            errors.append(f"stage.betas needs two values, got {self.betas}")
        return errors

    def input_files(self) -> dict[str, str]:
        """Files this config makes the stage load besides the stage graph's ({name: path}), for its training key."""
        return {}


@dataclass
class Media:
    """One logged item: an image (H x W x 3 uint8) or a video file with audio."""

    image: Any = None
    video_path: str = ""
    caption: str = ""


class StageModule(StepGuard, pl.LightningModule):
    config_class: type[StageConfig] = StageConfig
    loss_weights: dict[str, float] = {}
    num_optimizers: int = 1

    def __init__(self, cfg: StageConfig, data: DataConfig, stages_dir: str = "", max_steps: int = 1000):
        super().__init__()
        self.cfg = cfg
        self.data_cfg = data
        self.stages_dir = stages_dir
        self.max_steps = max_steps
        self.ema = None  # set by the EMA callback: an EMAWeights of the trainable parameters
        self.max_bad_steps = 10  # non-finite losses in a row that stop training (trainer.max_bad_steps)
        self.init_step_guard()
        self.run_config: dict[str, Any] = {}  # the resolved run config, saved into checkpoints and exports
        self.provenance: dict[str, Any] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["seespeaker"] = {"stage": self.cfg.name, "config": self.run_config,
                                    "provenance": self.provenance, "phase": self.export_phase()}
        prefixes = self.rebuilt_prefixes()
        if prefixes and "state_dict" in checkpoint:  # DeepSpeed's engine writes the weights itself
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(prefixes)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Put the rebuilt frozen networks back (as built from the earlier stage files) before the weights load."""
        prefixes = self.rebuilt_prefixes()
        if prefixes and "state_dict" in checkpoint:
            for key, value in self.state_dict().items():
                if key.startswith(prefixes):
                    checkpoint["state_dict"].setdefault(key, value)

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of frozen networks that the stage rebuilds from earlier stage files: checkpoints
        and exports leave them out (at paper scale the SAW stage's frozen denoiser alone is 3.8 GB)."""
        return ()

    def export_phase(self) -> str:
        """The phase recorded in the exported file (stages trained in phases override)."""
        return ""

    # ---- earlier stages -------------------------------------------------------------------------------
    @classmethod
    def requires(cls, cfg: StageConfig) -> tuple[str, ...]:
        """The exported stages (and computed nodes such as the face prior) this stage loads when configured
        as ``cfg``: its edges in the stage graph (``lightning_modules.registry``)."""
        return ()

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> Any:
        """What inference needs of this stage, rebuilt from its exported file in ``files`` (EMA weights by
        default) through its typed config."""
        raise NotImplementedError(f"stage {cls.__name__} has no inference use")

    @property
    def earlier(self) -> StageFiles:
        """The exported files of earlier stages in ``stages_dir``, read once on first use."""
        if getattr(self, "_earlier", None) is None:
            self._earlier = StageFiles(self.stages_dir, needed_by=f"stage {self.cfg.name!r}")
        return self._earlier

    def load_weights(self, state: dict[str, torch.Tensor], source: str) -> tuple[list[str], list[str]]:
        """Load weights non-strictly and report what did not match (init_from)."""
        result = self.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        if missing or unexpected:
            print(f"[init_from] {source}: {len(missing)} missing keys {missing[:5]}, "
                  f"{len(unexpected)} unexpected keys {unexpected[:5]}")
        else:
            print(f"[init_from] {source}: all {len(state)} tensors loaded")
        return missing, unexpected

    # ---- losses ---------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reduce_losses(self, losses: dict[str, torch.Tensor], valid: torch.Tensor | None) -> torch.Tensor:
        """Weighted sum of per-sample losses, then the mean over valid samples."""
        total = None
        for name, value in losses.items():
            weight = self.loss_weights.get(name, 1.0)
            if weight == 0.0:
                continue
            total = weight * value if total is None else total + weight * value
        if total is None:
            raise ValueError(f"stage {self.cfg.name}: compute_losses returned no weighted loss")
        return masked_mean(total, valid)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._read_bad_steps()
        losses = self.compute_losses(batch)
        loss = self.reduce_losses(losses, batch.get("valid"))
        if not self.guard_loss(loss):
            return None
        bs = len(batch["key"])
        if self.logs_now():
            for name, value in losses.items():
                self.log(f"train/{name}", value.detach().mean(), batch_size=bs)
            self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        if not self.automatic_optimization:  # the adversarial option: generator, then discriminator
            real, fake = self.adversarial_inputs()
            return self.adversarial_step(loss, real, fake, bs, clip=self.adversarial_clip())
        return loss

    def logs_now(self) -> bool:
        """Training metrics are logged on the steps whose metrics are written (and the last ones), not on every
        step: each ``self.log`` costs host time, and the values written are the same."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or connector.should_update_logs:
            return True
        return 0 < trainer.max_steps <= self.global_step + self.num_optimizers

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A batch is a flat dict of tensors and lists of names: move its tensors directly (Lightning's generic walk
        costs host time at every step). The skipped-sample count stays a host number: reading it back from a GPU
        would stall every step."""
        if not isinstance(batch, dict) or not all(_flat(v) for v in batch.values()):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        return {k: (int(v) if k == "skipped" else v.to(device, non_blocking=True)) if isinstance(v, torch.Tensor)
                else v for k, v in batch.items()}

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Evaluation batches get ``valid_count``, their valid samples counted on the host before the transfer."""
        if self.training or not isinstance(batch, dict) or not isinstance(batch.get("valid"), torch.Tensor):
            return batch
        return {**batch, "valid_count": int(batch["valid"].sum())}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Each ``val/<x>`` is the mean over the valid samples of every rank, as one process over them computes it:
        the batch's mean over its valid samples, logged with their count as the batch size, is summed times the count
        and divided by the summed counts over all batches and ranks (``sync_dist``). The padding samples that even
        out the ranks' batches (``valid`` False) weigh nothing, and an all-padding batch counts zero."""
        with self.ema_scope():
            losses = self.compute_losses(batch)
            self.validation_metrics(batch)
        valid, count = batch.get("valid"), valid_count(batch)
        self.log("val/loss", self.reduce_losses(losses, valid), sync_dist=True, batch_size=count)
        for name, value in losses.items():
            self.log(f"val/{name}", masked_mean(value, valid), sync_dist=True, batch_size=count)

    def validation_metrics(self, batch: dict[str, Any]) -> None:
        """Collect extra validation statistics (override)."""

    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Images or videos that show the stage's progress (override)."""
        return {}

    # ---- optimisation ---------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The generator's parameters (a ``discriminator`` submodule has its own optimizer)."""
        return [p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("discriminator.")]

    def configure_optimizers(self):
        params = self.trainable_parameters()
        if not params:
            raise ValueError(f"stage {self.cfg.name} has no trainable parameters")
        optimizer = self._adamw(params)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._schedule(optimizer), "interval": "step"}}

    def _adamw(self, params) -> torch.optim.AdamW:
        """Fused AdamW with a device learning rate where steps are skipped on the device; else as configured."""
        kwargs = {"lr": self.cfg.lr, "betas": tuple(self.cfg.betas), "weight_decay": self.cfg.weight_decay}
        if self.skips_on_device():
            return fused_adamw(list(params), device_lr=True, **kwargs)
        return torch.optim.AdamW(params, **kwargs, **({"fused": True} if torch.cuda.is_available() else {}))

    def _schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        if self.skips_on_device() or self.skips_in_engine():
            return SkipAwareLR(optimizer, self.lr_factor_tensor, on_host=not self.skips_on_device())
        return torch.optim.lr_scheduler.LambdaLR(optimizer, self.lr_factor)

    def adversarial_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(real, generated) images of the last training step for ``self.discriminator`` (stages with a GAN)."""
        raise NotImplementedError(f"stage {self.cfg.name} has no adversarial option")

    def adversarial_clip(self) -> float | None:
        """Gradient-norm clip of both adversarial optimizers (None: off)."""
        return None

    def adversarial_optimizers(self, generator_params) -> tuple[list, list]:
        """Generator and ``self.discriminator`` AdamW with the stage's schedule (two optimizers: DDP only)."""
        optimizers = [self._adamw(list(generator_params)), self._adamw(list(self.discriminator.parameters()))]
        return optimizers, [self._schedule(o) for o in optimizers]

    def adversarial_step(self, loss: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, batch_size: int,
                         clip: float | None = None) -> torch.Tensor:
        """Manual optimisation: the generator steps on ``loss``, then the discriminator on the hinge loss; a
        non-finite generator step skips both (decided on the device, as in automatic optimisation)."""
        opt_g, opt_d = self.optimizers()
        on_device = self.skips_on_device()
        opt_g.zero_grad()
        self.manual_backward(loss)
        if on_device:
            self.step_skipped = self._guard(opt_g, self._loss_bad, clip)
            self._loss_bad = None
        elif clip:
            self.clip_gradients(opt_g, gradient_clip_val=clip)
        opt_g.step()
        d_loss = (torch.relu(1 - self.discriminator(real)).mean()
                  + torch.relu(1 + self.discriminator(fake.detach())).mean())
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        if on_device:
            d_bad = ~torch.isfinite(d_loss.detach()) | self.step_skipped.bool()
            guard_gradients(opt_d.optimizer, d_bad, clip, self.trainer.world_size)
        elif clip:
            self.clip_gradients(opt_d, gradient_clip_val=clip)
        opt_d.step()
        for scheduler in self.lr_schedulers():
            scheduler.step()
        if self.logs_now():
            self.log("train/discriminator", d_loss.detach(), batch_size=batch_size)
        return loss

    def lr_factor(self, step: int) -> float:
        return float(self.lr_factor_tensor(torch.tensor(float(step), dtype=torch.float64)))

    def lr_factor_tensor(self, step: torch.Tensor) -> torch.Tensor:
        """The schedule at ``step`` (float64 tensor, on any device): linear warm-up, then constant or cosine. It runs
        over the batches the schedulers step on: with a GAN's two optimizers ``trainer.max_steps`` counts both
        optimizers' steps, so the cosine ends at the last batch rather than half way."""
        return schedule_factor(step, self.cfg.warmup_steps, self.max_steps // self.num_optimizers, self.cfg.schedule)

    # ---- EMA ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def ema_scope(self) -> Iterator[None]:
        """Run the block with the EMA weights swapped in (sampling, validation, export)."""
        if self.ema is None:
            yield
            return
        self.ema.swap_in(self)
        try:
            yield
        finally:
            self.ema.swap_out(self)


def valid_count(batch: dict[str, Any]) -> int:
    """How many samples of an evaluation batch are real (not the padding that evens out the ranks' batches)."""
    count = batch.get("valid_count")
    if count is not None:
        return count
    valid = batch.get("valid")
    return len(batch["key"]) if valid is None else int(valid.sum())


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-sample ``values`` over the ``valid`` samples (all when None); 0 when none is valid. A padding
    sample's value is left out, not multiplied by zero, so a non-finite value there changes nothing."""
    if valid is None:
        return values.mean()
    valid = valid.to(values.device, torch.bool)
    kept = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() / valid.sum().clamp_min(1).to(values.dtype)


def _flat(value: Any) -> bool:
    """A tensor, a scalar, or a list of names or numbers (what a batch of the shard reader holds)."""
    if isinstance(value, (torch.Tensor, str, int, float)) or value is None:
        return True
    return isinstance(value, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in value)
