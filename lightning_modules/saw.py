"""SAW: sample-adaptive weighting of the face prior, a(speech) in (0, 1) per latent channel.

A small network maps the ConRe speech embedding to a. It learns through the portrait denoiser's diffusion
loss, with x0 = z - a * z_prior and a given to the denoiser, so the per-sample loss (before reduction) depends
on a; the denoiser stays frozen unless ``joint``. A regulariser pulls a towards the dataset-level value.
How much a varies across speakers is logged as ``val/saw_a_std``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.images import image_grid
from lightning_modules.autoencoder import AutoencoderStage, TrainedVAE, encode_latents
from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.nets.portrait_denoiser import PortraitDenoiser
from lightning_modules.portrait_diffusion import (
    PortraitDiffusionConfig,
    PortraitDiffusionStage,
    PortraitSampler,
    ResidualDiffusion,
    fitted_prior_weights,
)
from lightning_modules.stagefile import StageFiles


@dataclass
class SAWConfig(StageConfig):
    """SAW: the weighting network and how it trains."""

    name: str = "saw"
    lr: float = 1e-4
    hidden_dim: int = field(default=256, metadata={"help": "hidden width of the weighting MLP"})
    joint: bool = field(default=False, metadata={"help": "train the denoiser together with SAW (else frozen)"})
    reg_weight: float = field(default=0.1, metadata={"help": "weight of the pull of a towards the dataset-level value"})
    fit_weight: float = field(default=1.0, metadata={"help": "weight of the regression of a(speech) on the a fitted "
                              "to the speaker's face (used when the portrait stage trained with "
                              "prior_weight_mode=fitted)"})
    cond_dropout: float = field(default=0.1, metadata={"help": "condition dropout when joint (keeps guidance working)"})
    sample_steps: int = field(default=50, metadata={"help": "sampling steps for the logged grid"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance for the logged grid"})
    media_samples: int = field(default=4, metadata={"help": "rows in the logged grid"})
    monitor: str = "val/diffusion"

    def validate(self) -> list[str]:
        errors = super().validate()
        if self.hidden_dim < 1 or self.reg_weight < 0 or self.fit_weight < 0:
            errors.append("stage.hidden_dim must be >= 1, stage.reg_weight and stage.fit_weight >= 0")
        return errors


class SampleAdaptiveWeighting(nn.Module):
    """Speech embedding [B, E] -> prior weight a [B, C] in (0, 1); starts at the dataset-level value."""

    def __init__(self, embed_dim: int, channels: int, hidden_dim: int = 256, initial: float = 1.0):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden_dim), nn.SiLU(),
                                 nn.Linear(hidden_dim, channels))
        initial = min(max(initial, 1e-3), 1 - 1e-3)
        nn.init.normal_(self.net[-1].weight, std=1e-2)
        nn.init.constant_(self.net[-1].bias, math.log(initial / (1 - initial)))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(embedding))


def build_saw(cfg: SAWConfig, denoiser: PortraitDenoiser, prior_weight: float) -> SampleAdaptiveWeighting:
    return SampleAdaptiveWeighting(denoiser.speech_encoder.embed_dim, denoiser.prior_mean.shape[0], cfg.hidden_dim,
                                   prior_weight)


class SAWStage(StageModule):
    config_class = SAWConfig

    def __init__(self, cfg: SAWConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        self.vae, scaling, self.vae_hash = AutoencoderStage.for_inference(self.earlier)
        self.register_buffer("scaling_factor", torch.tensor(scaling))
        self.portrait_cfg = self.earlier["portrait_diffusion"].typed_config(PortraitDiffusionConfig)
        self.denoiser = PortraitDiffusionStage.trained_denoiser(self.earlier)
        if cfg.joint:
            for name, p in self.denoiser.named_parameters():
                p.requires_grad_(not name.startswith("speech_encoder.") or self.portrait_cfg.finetune_speech)
        self.prior_weight = float(self.portrait_cfg.prior_weight)
        self.fitted = self.portrait_cfg.prior_weight_mode == "fitted"
        self.saw = build_saw(cfg, self.denoiser, self.prior_weight)
        self.diffusion = ResidualDiffusion(self.portrait_cfg)
        self.loss_weights = {"diffusion": 1.0, "saw_reg": cfg.reg_weight, "saw_fit": cfg.fit_weight}
        self._val_weights: list[torch.Tensor] = []

    @classmethod
    def requires(cls, cfg: SAWConfig) -> tuple[str, ...]:
        return ("conre", "autoencoder", "portrait_diffusion")

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> PortraitSampler:
        """The portrait sampler with SAW's a(speech): the denoiser as SAW trained with it (a saw file trained
        with the denoiser frozen holds none: the portrait file's)."""
        saw_file = files["saw"]
        joint = "denoiser.prior_mean" in saw_file.state
        denoiser = PortraitDiffusionStage.trained_denoiser(files, saw_file if joint else None,
                                                           "denoiser" if joint else "model", use_ema)
        portrait_cfg = files["portrait_diffusion"].typed_config(PortraitDiffusionConfig)
        saw = build_saw(saw_file.typed_config(SAWConfig), denoiser, portrait_cfg.prior_weight)
        saw.load_state_dict(saw_file.sub_state("saw", use_ema))
        return PortraitSampler(portrait_cfg, denoiser, ResidualDiffusion(portrait_cfg),
                               AutoencoderStage.for_inference(files), saw.eval().requires_grad_(False))

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        return ("vae.",) + (() if self.cfg.joint else ("denoiser.",))

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        if not self.cfg.joint:
            self.denoiser.eval()
        return self

    def prior_weights(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(context, a(speech)) for a batch of speech."""
        context, embedding = self.denoiser.speech(audio)
        return context, self.saw(embedding)

    def losses_for(self, latents: torch.Tensor, context: torch.Tensor, a: torch.Tensor,
                   noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per-sample diffusion loss of x0 = z - a * z_prior, the regulariser and (fitted portrait stage) the
        regression on the face's fitted a, before reduction."""
        x0 = self.denoiser.residual(latents, a)
        diffusion = self.diffusion.loss(self.denoiser, x0, context, a, noise, timesteps)
        losses = {"diffusion": diffusion, "saw_reg": (a - self.prior_weight).square().mean(dim=1)}
        if self.fitted:
            target = fitted_prior_weights(latents, self.denoiser.prior_mean, self.prior_weight)
            losses["saw_fit"] = (a - target).square().mean(dim=1)
        return losses

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            latents = encode_latents(self.vae, batch["frames"][:, 0], self.scaling_factor)
        context, a = self.prior_weights(batch["audio"])
        if self.training and self.cfg.joint and self.cfg.cond_dropout > 0:
            drop = torch.rand(len(context), device=context.device) < self.cfg.cond_dropout
            context = self.denoiser.drop_condition(context, drop)
        return self.losses_for(latents, context, a)

    def validation_metrics(self, batch: dict[str, Any]) -> None:
        _, a = self.prior_weights(batch["audio"])
        valid = batch.get("valid")
        valid = torch.ones(len(a), dtype=torch.bool, device=a.device) if valid is None else valid.to(a.device)
        self._val_weights.append((a.detach(), valid))

    def on_validation_epoch_end(self) -> None:
        """Log how much a varies across the validation speakers (std over samples, mean over channels)."""
        if not self._val_weights:
            return
        a = torch.cat([w for w, _ in self._val_weights])
        valid = torch.cat([v for _, v in self._val_weights])
        self._val_weights.clear()
        if self.trainer is not None and self.trainer.world_size > 1:
            # every rank holds the same number of (padded) samples, so the gather shapes agree
            a, valid = self.all_gather(a).flatten(0, 1), self.all_gather(valid).flatten(0, 1)
        a = a[valid]
        if len(a) == 0:
            return
        std = a.std(dim=0, unbiased=False).mean()
        self.log("val/saw_a_std", std, rank_zero_only=True)
        self.log("val/saw_a_mean", a.mean(), rank_zero_only=True)

    @torch.no_grad()
    def generate(self, audio: torch.Tensor, use_saw: bool = True, steps: int | None = None,
                 seed: int = 0) -> torch.Tensor:
        """Portraits in [-1, 1] with a(speech) (or the dataset-level a), EMA weights."""
        sampler = PortraitSampler(self.portrait_cfg, self.denoiser, self.diffusion,
                                  TrainedVAE(self.vae, self.scaling_factor, self.vae_hash), self.saw)
        with self.ema_scope():
            return sampler.sample(audio, steps or self.cfg.sample_steps, self.cfg.guidance_scale, seed, use_saw)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Rows of (real face | dataset-level a | a from SAW), same noise in both."""
        n = min(self.cfg.media_samples, len(batch["key"]))
        audio = batch["audio"][:n]
        grid = image_grid([batch["frames"][:n, 0], self.generate(audio, use_saw=False), self.generate(audio)])
        return {"saw_portraits": Media(image=grid, caption="real | dataset-level a | SAW a(speech)")}
