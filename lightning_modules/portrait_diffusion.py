"""SCFP: speech-conditioned latent diffusion of the portrait, residual to the statistical face prior.

Training: z = VAE(face) * scaling_factor, a per sample and channel (``prior_weight_mode``: fitted to the face, or
drawn around the dataset-level prior weight), target r = z - a * z_prior; DDPM noise, epsilon or v prediction,
min-SNR weighting per sample, condition dropout.
Sampling (EMA weights): DDIM or DPM-Solver with classifier-free guidance gives r_hat; z = a * z_prior + r_hat.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch

from common.images import image_grid
from lightning_modules.autoencoder import AutoencoderStage, TrainedVAE, encode_latents
from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.conre import ConReConfig, ConReStage, build_speech_encoder
from lightning_modules.nets.diffusion import (
    BETA_SCHEDULES,
    SAMPLERS,
    build_sampler,
    build_train_scheduler,
    guided,
    per_sample_mse,
    sample_latents,
    snr_at,
    training_target,
)
from lightning_modules.nets.loss_weighting import PREDICTION_TYPES, WEIGHTINGS, build_loss_weighting
from lightning_modules.nets.portrait_denoiser import PortraitDenoiser, UNetConfig
from lightning_modules.prior import DEFAULT_PRIOR_NAME, FacePrior, FacePriorError
from lightning_modules.registry import FACE_PRIOR
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles

PRIOR_WEIGHT_MODES = ("fitted", "drawn")


@dataclass
class PortraitDiffusionConfig(StageConfig):
    """Portrait diffusion: denoiser size, prior residual, objective, sampling."""

    name: str = "portrait_diffusion"
    lr: float = 1e-4
    unet: UNetConfig = field(default_factory=UNetConfig, metadata={"help": "the UNet2DConditionModel"})
    prior_path: str = field(default="", metadata={"help": f"face prior file; empty: <stages_dir>/{DEFAULT_PRIOR_NAME}"})
    prior_weight: float = field(default=0.8, metadata={"help": "dataset-level prior weight a in [0, 1]"})
    prior_weight_mode: str = field(default="drawn", metadata={"help": "how training sets a: drawn (uniform around "
                                   "prior_weight, independent of the face: the UNet learns to ignore a and SAW stays "
                                   "constant) | fitted (prior_weight x the least-squares coefficient of the prior in "
                                   "the face's latent, per channel: a then says how much of the prior this face holds, "
                                   "which SAW predicts from speech)", "choices": PRIOR_WEIGHT_MODES})
    prior_weight_spread: float = field(default=0.2, metadata={"help": "drawn mode: a ~ U(a - spread, a + spread) per "
                                       "channel (clipped to [0, 1])"})
    condition_on_prior_weight: bool = field(default=True, metadata={"help": "give a to the UNet through its class "
                                            "embedding (needed by SAW)"})
    finetune_speech: bool = field(default=False, metadata={"help": "train the ConRe speech encoder too (else frozen)"})
    prediction_type: str = field(default="epsilon",
                                 metadata={"help": "epsilon | v_prediction", "choices": PREDICTION_TYPES})
    num_train_timesteps: int = field(default=1000, metadata={"help": "DDPM timesteps"})
    beta_schedule: str = field(default="scaled_linear",
                               metadata={"help": "DDPM beta schedule", "choices": BETA_SCHEDULES})
    loss_weighting: str = field(default="min_snr",
                                metadata={"help": "per-sample weighting: unit | min_snr", "choices": WEIGHTINGS})
    snr_gamma: float = field(default=5.0, metadata={"help": "gamma of min-SNR weighting"})
    cond_dropout: float = field(default=0.1,
                                metadata={"help": "probability of dropping the speech condition (for CFG)"})
    sampler: str = field(default="ddim", metadata={"help": "ddim | dpm_solver", "choices": SAMPLERS})
    sample_steps: int = field(default=50, metadata={"help": "sampling steps"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance scale (1: off)"})
    media_samples: int = field(default=4, metadata={"help": "rows in the logged portrait grid"})
    file_defaults: ClassVar[dict[str, Any]] = {"prior_weight_mode": "drawn", "condition_on_prior_weight": True}

    def validate(self) -> list[str]:
        errors = super().validate() + self.unet.validate()
        if not 0.0 <= self.prior_weight <= 1.0:
            errors.append(f"stage.prior_weight must be in [0, 1], got {self.prior_weight}")
        if not 0.0 <= self.cond_dropout < 1.0:
            errors.append(f"stage.cond_dropout must be in [0, 1), got {self.cond_dropout}")
        return errors


class ResidualDiffusion:
    """The DDPM objective and the samplers of a :class:`PortraitDenoiser` (no parameters of its own)."""

    def __init__(self, cfg: PortraitDiffusionConfig):
        self.scheduler = build_train_scheduler(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type)
        self.weighting = build_loss_weighting(cfg.loss_weighting, cfg.prediction_type, cfg.snr_gamma)
        self.sampler_name = cfg.sampler

    def loss(self, model: PortraitDenoiser, x0: torch.Tensor, context: torch.Tensor, a: torch.Tensor,
             noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample weighted diffusion loss [B] of the residual ``x0``."""
        noise = torch.randn_like(x0) if noise is None else noise
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        prediction = model(noisy, timesteps, context, a)
        target = training_target(self.scheduler, x0, noise, timesteps)
        return self.weighting(snr_at(self.scheduler, timesteps)) * per_sample_mse(prediction, target)

    @torch.no_grad()
    def sample(self, model: PortraitDenoiser, context: torch.Tensor, a: torch.Tensor, steps: int, guidance: float,
               generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Latents z = a * z_prior + r_hat for each context row."""
        null = model.unconditional(len(context), context)
        run = guided(lambda x, t, cond: model(x, t, context if cond else null, a), guidance)
        shape = (len(context), *model.prior_mean.shape)
        chosen = build_sampler(sampler or self.sampler_name, self.scheduler)
        residual = sample_latents(run, chosen, shape, steps, generator, context.device)
        return model.with_prior(residual, a.float())


def dataset_prior_weights(cfg: PortraitDiffusionConfig, batch_size: int, channels: int,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """The dataset-level a for every sample and channel."""
    return torch.full((batch_size, channels), float(cfg.prior_weight), device=device)


def fitted_prior_weights(latents: torch.Tensor, prior_mean: torch.Tensor, prior_weight: float) -> torch.Tensor:
    """a [B, C] = prior_weight * <z_c, p_c> / <p_c, p_c>, clipped to [0, 1]: the dataset-level weight scaled by
    how strongly each face's latent channel holds the prior (the coefficient averages 1 over the faces the
    prior was computed from, so a averages ``prior_weight``)."""
    prior = prior_mean.float()
    coefficient = (latents.float() * prior).sum(dim=(2, 3)) / prior.square().sum(dim=(1, 2)).clamp_min(1e-8)
    return (prior_weight * coefficient).clamp(0.0, 1.0)


class PortraitSampler(NamedTuple):
    """What sampling a portrait needs: the denoiser (speech encoder and face prior included), the diffusion, the
    VAE and, with SAW, the network that weights the prior per sample. The one way a portrait is sampled."""

    cfg: PortraitDiffusionConfig
    denoiser: PortraitDenoiser
    diffusion: ResidualDiffusion
    vae: TrainedVAE
    saw: torch.nn.Module | None = None

    def prior_weights(self, embedding: torch.Tensor, use_saw: bool = True) -> torch.Tensor:
        """a [B, C]: SAW's a(speech) from the speaker embedding, or the dataset-level a."""
        if use_saw and self.saw is not None:
            return self.saw(embedding)
        return dataset_prior_weights(self.cfg, len(embedding), self.denoiser.prior_mean.shape[0], embedding.device)

    @torch.no_grad()
    def sample(self, audio: torch.Tensor, steps: int, guidance: float, seed: int = 0,
               use_saw: bool = True) -> torch.Tensor:
        """Portraits [B, 3, R, R] in [-1, 1] from 16 kHz speech [B, N] (the noise drawn from ``seed``)."""
        generator = torch.Generator().manual_seed(seed)
        context, embedding = self.denoiser.speech(audio)
        a = self.prior_weights(embedding, use_saw)
        latents = self.diffusion.sample(self.denoiser, context, a, steps, guidance, generator)
        return self.vae.decode(latents)


class PortraitDiffusionStage(StageModule):
    config_class = PortraitDiffusionConfig

    def __init__(self, cfg: PortraitDiffusionConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        speech_encoder = ConReStage.for_inference(self.earlier).speech
        self.vae, scaling, self.vae_hash = AutoencoderStage.for_inference(self.earlier)
        self.register_buffer("scaling_factor", torch.tensor(scaling))
        prior_path = cfg.prior_path or str(Path(stages_dir or ".") / DEFAULT_PRIOR_NAME)
        prior = FacePrior.load(prior_path, expect_vae_hash=self.vae_hash)
        levels = len(self.vae.config.block_out_channels) - 1
        size = data.resolution // 2 ** levels
        expected = (self.vae.config.latent_channels, size, size)
        if tuple(prior.mean.shape) != expected:
            raise FacePriorError(f"face prior {prior_path} has latent shape {tuple(prior.mean.shape)}, but "
                                 f"{data.resolution} px faces give {expected}; recompute it at data.resolution")
        self.model = PortraitDenoiser(cfg.unet, speech_encoder, expected[0], size, cfg.condition_on_prior_weight,
                                      cfg.finetune_speech)
        self.model.prior_mean.copy_(prior.mean.float())
        self.diffusion = ResidualDiffusion(cfg)
        self.loss_weights = {"diffusion": 1.0}

    @classmethod
    def requires(cls, cfg: PortraitDiffusionConfig) -> tuple[str, ...]:
        return ("conre", "autoencoder") + (() if cfg.prior_path else (FACE_PRIOR,))

    @classmethod
    def trained_denoiser(cls, files: StageFiles, weights: StageFile | None = None, prefix: str = "model",
                         use_ema: bool = True) -> PortraitDenoiser:
        """The trained denoiser (speech encoder included, frozen), built from the portrait_diffusion file's
        config; its tensors from ``weights``/``prefix`` (a saw file whose denoiser trained jointly: ``denoiser``)."""
        portrait = files["portrait_diffusion"]
        source = weights or portrait
        state = source.sub_state(prefix, use_ema)
        if "prior_mean" not in state:
            raise StageFileError(f"{source.path} holds no '{prefix}.prior_mean'; is it a portrait_diffusion export?")
        cfg = portrait.typed_config(PortraitDiffusionConfig)
        speech = build_speech_encoder(files["conre"].typed_config(ConReConfig))  # its weights are in ``state``
        model = PortraitDenoiser(cfg.unet, speech, state["prior_mean"].shape[0], state["prior_mean"].shape[-1],
                                 cfg.condition_on_prior_weight)
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> PortraitSampler:
        """The portrait sampler with the dataset-level prior weight (no SAW)."""
        cfg = files["portrait_diffusion"].typed_config(PortraitDiffusionConfig)
        return PortraitSampler(cfg, cls.trained_denoiser(files, use_ema=use_ema), ResidualDiffusion(cfg),
                               AutoencoderStage.for_inference(files))

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        return ("vae.",)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        if not self.cfg.finetune_speech:
            self.model.speech_encoder.eval()
        return self

    @torch.no_grad()
    def face_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """Scaled VAE latents of the window's first frame."""
        return encode_latents(self.vae, batch["frames"][:, 0], self.scaling_factor)

    def training_prior_weights(self, latents: torch.Tensor) -> torch.Tensor:
        """a per sample and channel: fitted to each face, or uniform within ``prior_weight_spread`` of the
        dataset-level value (``prior_weight_mode``)."""
        cfg = self.cfg
        if cfg.prior_weight_mode == "fitted":
            return fitted_prior_weights(latents, self.model.prior_mean, cfg.prior_weight)
        noise = 2.0 * torch.rand(len(latents), self.model.prior_mean.shape[0], device=latents.device) - 1.0
        return (cfg.prior_weight + cfg.prior_weight_spread * noise).clamp(0.0, 1.0)

    def training_example(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What the loss sees: residual target ``x0``, prior weights ``a``, context (after dropout), latents."""
        latents = self.face_latents(batch)
        a = self.training_prior_weights(latents)
        context, _ = self.model.speech(batch["audio"])
        if self.training and self.cfg.cond_dropout > 0:
            drop = torch.rand(len(context), device=context.device) < self.cfg.cond_dropout
            context = self.model.drop_condition(context, drop)
        return {"x0": self.model.residual(latents, a), "a": a, "context": context, "latents": latents}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        example = self.training_example(batch)
        return {"diffusion": self.diffusion.loss(self.model, example["x0"], example["context"], example["a"])}

    @torch.no_grad()
    def generate(self, audio: torch.Tensor, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0) -> torch.Tensor:
        """Portraits [B, 3, R, R] in [-1, 1] from speech, with the EMA weights and the dataset-level a."""
        sampler = PortraitSampler(self.cfg, self.model, self.diffusion,
                                  TrainedVAE(self.vae, self.scaling_factor, self.vae_hash))
        with self.ema_scope():
            return sampler.sample(audio, steps or self.cfg.sample_steps,
                                  self.cfg.guidance_scale if guidance is None else guidance, seed)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Rows of (real face | portrait generated from that speaker's speech)."""
        n = min(self.cfg.media_samples, len(batch["key"]))
        fake = self.generate(batch["audio"][:n])
        return {"portraits": Media(image=image_grid([batch["frames"][:n, 0], fake]),
                                   caption="real | generated from speech")}
