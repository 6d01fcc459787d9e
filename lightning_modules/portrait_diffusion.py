"""SCFP: speech-conditioned latent diffusion of the portrait, residual to the statistical face prior.

Training: z = VAE(face) * scaling_factor and the target r = z - z_prior (``stage.prior=residual``; with ``none`` a
second denoiser learns z itself: its prior is zero and no face-prior file is read), conditioned on speech only
(degraded in training: ``stage.speech_*``); DDPM noise, epsilon or v prediction, min-SNR weighting per sample,
condition dropout. The denoiser never sees the prior weight.
Sampling (EMA weights): DDIM or DPM-Solver with classifier-free guidance draws r_hat ~ p(r | speech); the portrait
is z_hat(a) = z_prior + (1 - a) * r_hat per channel (``lightning_modules.prior_weight``), a from SAW, the constant
``stage.prior_weight`` or a value fixed by the caller.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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
from lightning_modules.nets.speech_degradation import SpeechDegradationConfig, speech_cues
from lightning_modules.prior import DEFAULT_PRIOR_NAME, FacePrior, FacePriorError
from lightning_modules.prior_weight import refuse_earlier_formulation
from lightning_modules.registry import FACE_PRIOR
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles

PRIORS = ("residual", "none")
# config keys and tensors of portrait files trained when a was given to the denoiser
EARLIER_PORTRAIT_KEYS = ("prior_weight_mode", "prior_weight_spread", "condition_on_prior_weight")
EARLIER_PORTRAIT_TENSORS = "model.unet.class_embedding."


@dataclass
class PortraitDiffusionConfig(SpeechDegradationConfig, StageConfig):
    """Portrait diffusion: denoiser size, prior residual, objective, sampling."""

    name: str = "portrait_diffusion"
    lr: float = 1e-4
    unet: UNetConfig = field(default_factory=UNetConfig, metadata={"help": "the UNet2DConditionModel"})
    prior: str = field(default="residual", metadata={"help": "residual (learn r = z - z_prior, the SCLDM residual) | "
                       "none (learn z itself: the 'no prior' ablation; no face-prior file)", "choices": PRIORS})
    prior_path: str = field(default="", metadata={"help": f"face prior file; empty: <stages_dir>/{DEFAULT_PRIOR_NAME}"})
    prior_weight: float = field(default=0.5, metadata={"help": "the constant prior weight a in [0, 1] (generation "
                                "without SAW, --no-saw; SAW's starting value): z = z_prior + (1 - a) * r_hat, 0 the "
                                "raw sample, 1 the mean face; choose it on validation"})
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

    def validate(self) -> list[str]:
        errors = super().validate() + self.unet.validate() + self.degradation_errors()
        if not 0.0 <= self.prior_weight <= 1.0:
            errors.append(f"stage.prior_weight must be in [0, 1], got {self.prior_weight}")
        if not 0.0 <= self.cond_dropout < 1.0:
            errors.append(f"stage.cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.prior == "none" and self.prior_path:
            errors.append(f"stage.prior_path={self.prior_path!r} is set but stage.prior=none trains without a prior")
        return errors


def portrait_config(stage_file: StageFile) -> PortraitDiffusionConfig:
    """The typed config of a portrait_diffusion file; a file of the earlier formulation is refused, named."""
    refuse_earlier_formulation(stage_file, EARLIER_PORTRAIT_KEYS, EARLIER_PORTRAIT_TENSORS)
    return stage_file.typed_config(PortraitDiffusionConfig)


class ResidualDiffusion:
    """The DDPM objective and the samplers of a :class:`PortraitDenoiser` (no parameters of its own)."""

    def __init__(self, cfg: PortraitDiffusionConfig):
        self.scheduler = build_train_scheduler(cfg.num_train_timesteps, cfg.beta_schedule, cfg.prediction_type)
        self.weighting = build_loss_weighting(cfg.loss_weighting, cfg.prediction_type, cfg.snr_gamma)
        self.sampler_name = cfg.sampler

    def loss(self, model: PortraitDenoiser, x0: torch.Tensor, context: torch.Tensor,
             noise: torch.Tensor | None = None, timesteps: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample weighted diffusion loss [B] of the residual ``x0``."""
        noise = torch.randn_like(x0) if noise is None else noise
        if timesteps is None:
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        prediction = model(noisy, timesteps, context)
        target = training_target(self.scheduler, x0, noise, timesteps)
        return self.weighting(snr_at(self.scheduler, timesteps)) * per_sample_mse(prediction, target)

    @torch.no_grad()
    def sample(self, model: PortraitDenoiser, context: torch.Tensor, steps: int, guidance: float,
               generator: torch.Generator | None = None, sampler: str | None = None) -> torch.Tensor:
        """Residual samples r_hat ~ p(r | speech) [B, C, H, W], one per context row."""
        null = model.unconditional(len(context), context)
        run = guided(lambda x, t, cond: model(x, t, context if cond else null), guidance,
                     both=lambda x, t: model(x, t, torch.cat([context, null])))
        shape = (len(context), *model.prior_mean.shape)
        chosen = build_sampler(sampler or self.sampler_name, self.scheduler)
        return sample_latents(run, chosen, shape, steps, generator, context.device)


class PortraitDraw(NamedTuple):
    """What one call of :meth:`PortraitSampler.sample` drew, for rows that need more than the images."""

    images: torch.Tensor  # [B, 3, R, R] in [-1, 1]
    latents: torch.Tensor  # z_hat(a) [B, C, H, W]
    residuals: torch.Tensor  # the raw samples r_hat [B, C, H, W] (a = 0 gives z_prior + r_hat)
    prior_weight: torch.Tensor  # a [B, C]


class PortraitSampler(NamedTuple):
    """What sampling a portrait needs: the denoiser (speech encoder and face prior included), the diffusion, the
    VAE and, with SAW, the network that weights the prior per sample. The one way a portrait is sampled."""

    cfg: PortraitDiffusionConfig
    denoiser: PortraitDenoiser
    diffusion: ResidualDiffusion
    vae: TrainedVAE
    saw: torch.nn.Module | None = None

    def prior_weights(self, audio: torch.Tensor, embedding: torch.Tensor | None = None, use_saw: bool = True,
                      prior_weight: float | None = None) -> torch.Tensor:
        """a [B, C]: ``prior_weight`` when given, else SAW's a(speech) (with ``use_saw``), else the constant
        ``stage.prior_weight``; always 0 for a denoiser trained without a prior (it has none to lean on)."""
        shape = (len(audio), self.denoiser.prior_mean.shape[0])
        if self.cfg.prior == "none":
            if prior_weight:
                raise ValueError(f"this portrait stage has no face prior (stage.prior=none): its samples are z "
                                 f"itself, so prior weight {prior_weight} does not apply")
            return torch.zeros(shape, device=audio.device)
        if prior_weight is not None:
            if not 0.0 <= prior_weight <= 1.0:
                raise ValueError(f"the prior weight must be in [0, 1], got {prior_weight}")
            return torch.full(shape, float(prior_weight), device=audio.device)
        if use_saw and self.saw is not None:
            embedding = self.denoiser.speech(audio)[1] if embedding is None else embedding
            return self.saw(embedding, speech_cues(audio))
        return torch.full(shape, float(self.cfg.prior_weight), device=audio.device)

    def decode(self, residuals: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Portraits [B, 3, R, R] in [-1, 1] of z_hat(a) = z_prior + (1 - a) * r_hat."""
        return self.vae.decode(self.denoiser.with_prior(residuals, a))

    @torch.no_grad()
    def sample(self, audio: torch.Tensor, steps: int, guidance: float, seed: int = 0, use_saw: bool = True,
               prior_weight: float | None = None, parts: bool = False) -> torch.Tensor | PortraitDraw:
        """Portraits [B, 3, R, R] in [-1, 1] from 16 kHz speech [B, N] (the noise drawn from ``seed``, so the same
        seed gives the same r_hat whatever a is); a as :meth:`prior_weights` says. ``parts``: a
        :class:`PortraitDraw` with the latents, the raw residual samples and a as well."""
        generator = torch.Generator().manual_seed(seed)
        context, embedding = self.denoiser.speech(audio)
        a = self.prior_weights(audio, embedding, use_saw, prior_weight)
        residuals = self.diffusion.sample(self.denoiser, context, steps, guidance, generator)
        latents = self.denoiser.with_prior(residuals, a)
        images = self.vae.decode(latents)
        return PortraitDraw(images, latents, residuals, a) if parts else images


def latent_shape(vae, resolution: int) -> tuple[int, int, int]:
    """(channels, size, size) of the VAE's latents of ``resolution`` px faces."""
    size = resolution // 2 ** (len(vae.config.block_out_channels) - 1)
    return vae.config.latent_channels, size, size


def load_prior_mean(path: str, vae_hash: str, expected: tuple[int, int, int], resolution: int) -> torch.Tensor:
    """The face prior's mean latent from ``path``, checked against the VAE and the latent shape."""
    prior = FacePrior.load(path, expect_vae_hash=vae_hash)
    if tuple(prior.mean.shape) != expected:
        raise FacePriorError(f"face prior {path} has latent shape {tuple(prior.mean.shape)}, but "
                             f"{resolution} px faces give {expected}; recompute it at data.resolution")
    return prior.mean.float()


class PortraitDiffusionStage(StageModule):
    config_class = PortraitDiffusionConfig

    def __init__(self, cfg: PortraitDiffusionConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        speech_encoder = ConReStage.for_inference(self.earlier).speech
        self.vae, scaling, self.vae_hash = AutoencoderStage.for_inference(self.earlier)
        self.register_buffer("scaling_factor", torch.tensor(scaling))
        shape = latent_shape(self.vae, data.resolution)
        self.model = PortraitDenoiser(cfg.unet, speech_encoder, shape[0], shape[1], cfg.finetune_speech)
        if cfg.prior == "residual":  # else the prior stays zero: the denoiser learns z itself
            prior_path = cfg.prior_path or str(Path(stages_dir or ".") / DEFAULT_PRIOR_NAME)
            self.model.prior_mean.copy_(load_prior_mean(prior_path, self.vae_hash, shape, data.resolution))
        self.diffusion = ResidualDiffusion(cfg)
        self.loss_weights = {"diffusion": 1.0}

    @classmethod
    def requires(cls, cfg: PortraitDiffusionConfig) -> tuple[str, ...]:
        needs_prior = cfg.prior == "residual" and not cfg.prior_path
        return ("conre", "autoencoder") + ((FACE_PRIOR,) if needs_prior else ())

    @classmethod
    def trained_denoiser(cls, files: StageFiles, use_ema: bool = True) -> PortraitDenoiser:
        """The trained denoiser (speech encoder included, frozen), built from the portrait_diffusion file."""
        portrait = files["portrait_diffusion"]
        cfg = portrait_config(portrait)
        state = portrait.sub_state("model", use_ema)
        if "prior_mean" not in state:
            raise StageFileError(f"{portrait.path} holds no 'model.prior_mean'; is it a portrait_diffusion export?")
        speech = build_speech_encoder(files["conre"].typed_config(ConReConfig))  # its weights are in ``state``
        model = PortraitDenoiser(cfg.unet, speech, state["prior_mean"].shape[0], state["prior_mean"].shape[-1])
        model.load_state_dict(state)
        return model.eval().requires_grad_(False)

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> PortraitSampler:
        """The portrait sampler with the constant prior weight (no SAW)."""
        cfg = portrait_config(files["portrait_diffusion"])
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

    def training_example(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """What the loss sees: the residual target ``x0`` = z - z_prior, the context of the (in training,
        degraded) speech after condition dropout, and the latents."""
        latents = self.face_latents(batch)
        context, _ = self.model.speech(self.cfg.training_speech(batch["audio"], self.training))
        if self.training and self.cfg.cond_dropout > 0:
            drop = torch.rand(len(context), device=context.device) < self.cfg.cond_dropout
            context = self.model.drop_condition(context, drop)
        return {"x0": self.model.residual(latents), "context": context, "latents": latents}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        example = self.training_example(batch)
        return {"diffusion": self.diffusion.loss(self.model, example["x0"], example["context"])}

    def sampler(self) -> PortraitSampler:
        return PortraitSampler(self.cfg, self.model, self.diffusion,
                               TrainedVAE(self.vae, self.scaling_factor, self.vae_hash))

    @torch.no_grad()
    def generate(self, audio: torch.Tensor, steps: int | None = None, guidance: float | None = None,
                 seed: int = 0, prior_weight: float | None = None) -> torch.Tensor:
        """Portraits [B, 3, R, R] in [-1, 1] from speech, with the EMA weights and the constant (or given) a."""
        with self.ema_scope():
            return self.sampler().sample(audio, steps or self.cfg.sample_steps,
                                         self.cfg.guidance_scale if guidance is None else guidance, seed,
                                         prior_weight=prior_weight)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Rows of (real face | portrait generated from that speaker's speech)."""
        n = min(self.cfg.media_samples, len(batch["key"]))
        fake = self.generate(batch["audio"][:n])
        return {"portraits": Media(image=image_grid([batch["frames"][:n, 0], fake]),
                                   caption="real | generated from speech")}
