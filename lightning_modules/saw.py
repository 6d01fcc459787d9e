"""SAW: sample-adaptive weighting of the face prior, a(speech) in (0, 1) per latent channel.

A portrait is z_hat(a) = z_prior + (1 - a) * r_hat with r_hat a sample of the frozen portrait denoiser. SAW maps the
speech embedding and reliability cues (seconds of speech present, an SNR estimate from frame energies, the
embedding's norm before normalisation) to a, and minimises E || r - (1 - a) r_hat ||^2 (r = z - z_prior of the clip's
face) over K cached samples of each clip (``lightning_modules.saw_cache``; no backpropagation through the sampler),
per sample before reduction. Its optimum is a*(s) = tr Sigma_s / (tr Sigma_s + ||m_s||^2): see
``lightning_modules.prior_weight`` for the derivation. It trains on speakers the denoiser never trained on
(``data.speaker_part``: the denoiser on '~0/5', SAW on '0/5'), with degraded speech (``stage.speech_*``).
Logged: ``saw`` and, for comparison, ``saw_constant`` (the loss at the constant ``stage.prior_weight``), and on
validation how much a varies across clips (``val/saw_a_std``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from common.images import image_grid
from datamodules.config import speaker_parts_overlap
from lightning_modules.autoencoder import AutoencoderStage, TrainedVAE, encode_latents
from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.nets.portrait_denoiser import PortraitDenoiser
from lightning_modules.nets.speech_degradation import SpeechDegradationConfig, speech_cues
from lightning_modules.portrait_diffusion import (
    PortraitDiffusionStage,
    PortraitSampler,
    ResidualDiffusion,
    portrait_config,
)
from lightning_modules.prior_weight import refuse_earlier_formulation, saw_loss
from lightning_modules.saw_cache import CachedDraws, SampleCache, clip_seed
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles

EARLIER_SAW_KEYS = ("joint", "reg_weight", "fit_weight", "cond_dropout")  # saw files of the earlier formulation
CUE_SCALE = (0.5, 0.05)  # seconds present, SNR dB -> about unit range


@dataclass
class SAWConfig(SpeechDegradationConfig, StageConfig):
    """SAW: the weighting network, its cached samples and how it trains."""

    name: str = "saw"
    lr: float = 1e-3
    hidden_dim: int = field(default=256, metadata={"help": "hidden width of the weighting MLP"})
    samples_per_clip: int = field(default=4, metadata={"help": "K residual samples cached per clip (4-8)"})
    cache_steps: int = field(default=25, metadata={"help": "sampler steps of the cached samples (the portrait "
                             "stage's sampler)"})
    cache_guidance: float = field(default=3.0, metadata={"help": "classifier-free guidance of the cached samples "
                                  "(as generation uses)"})
    cache_clips: int = field(default=100_000, metadata={"help": "clips held in the in-memory sample cache per rank "
                             "(oldest dropped and redrawn when seen again; 0: no limit)"})
    sample_steps: int = field(default=50, metadata={"help": "sampling steps for the logged grid"})
    guidance_scale: float = field(default=3.0, metadata={"help": "classifier-free guidance for the logged grid"})
    media_samples: int = field(default=4, metadata={"help": "rows in the logged grid"})
    monitor: str = "val/saw"

    def validate(self) -> list[str]:
        errors = super().validate() + self.degradation_errors()
        if self.hidden_dim < 1:
            errors.append(f"stage.hidden_dim must be >= 1, got {self.hidden_dim}")
        if self.samples_per_clip < 2:
            errors.append(f"stage.samples_per_clip must be >= 2 (4-8), got {self.samples_per_clip}")
        if self.cache_steps < 1:
            errors.append(f"stage.cache_steps must be >= 1, got {self.cache_steps}")
        if self.cache_clips and self.cache_clips < 1024:
            errors.append(f"stage.cache_clips must be 0 (no limit) or >= 1024, got {self.cache_clips}")
        return errors


def saw_config(stage_file: StageFile) -> SAWConfig:
    """The typed config of a saw file; a file of the earlier formulation is refused, named."""
    refuse_earlier_formulation(stage_file, EARLIER_SAW_KEYS)
    return stage_file.typed_config(SAWConfig)


class SampleAdaptiveWeighting(nn.Module):
    """(speech embedding [B, E], cues [B, 2]: seconds present, SNR dB) -> prior weight a [B, C] in (0, 1).

    The MLP reads the embedding's direction (unit norm times sqrt(E)), the log of its norm and the scaled cues; it
    starts at ``initial`` for every input."""

    def __init__(self, embed_dim: int, channels: int, hidden_dim: int = 256, initial: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim + 3, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, hidden_dim),
                                 nn.SiLU(), nn.Linear(hidden_dim, channels))
        self.register_buffer("cue_scale", torch.tensor(CUE_SCALE), persistent=False)
        initial = min(max(initial, 1e-3), 1 - 1e-3)
        nn.init.normal_(self.net[-1].weight, std=1e-3)
        nn.init.constant_(self.net[-1].bias, math.log(initial / (1 - initial)))

    def features(self, embedding: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        embedding = embedding.float()
        norm = embedding.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        direction = embedding / norm * math.sqrt(embedding.shape[-1])
        return torch.cat([direction, norm.log(), cues.float() * self.cue_scale], dim=-1)

    def forward(self, embedding: torch.Tensor, cues: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(self.features(embedding, cues)))


def build_saw(cfg: SAWConfig, denoiser: PortraitDenoiser, prior_weight: float) -> SampleAdaptiveWeighting:
    return SampleAdaptiveWeighting(denoiser.speech_encoder.embed_dim, denoiser.prior_mean.shape[0], cfg.hidden_dim,
                                   prior_weight)


def warn_on_shared_speakers(saw_part: str, portrait: StageFile) -> None:
    """Warn when SAW's speakers overlap those the denoiser trained on (read from its run config, when recorded)."""
    data = (portrait.provenance.get("run_config") or {}).get("data") or {}
    if "speaker_part" not in data or not speaker_parts_overlap(saw_part, data["speaker_part"] or ""):
        return
    warnings.warn(f"saw trains on data.speaker_part={saw_part!r} but the portrait denoiser {portrait.path} trained on "
                  f"data.speaker_part={data['speaker_part']!r}: they share speakers, whose samples sit closer to "
                  f"their faces than a new speaker's, so SAW learns too small an a. Train the denoiser on '~0/5' and "
                  f"SAW on '0/5' (experiment configs do)", stacklevel=2)


class SAWStage(StageModule):
    config_class = SAWConfig

    def __init__(self, cfg: SAWConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        self.vae, scaling, self.vae_hash = AutoencoderStage.for_inference(self.earlier)
        self.register_buffer("scaling_factor", torch.tensor(scaling))
        portrait = self.earlier["portrait_diffusion"]
        self.portrait_cfg = portrait_config(portrait)
        if self.portrait_cfg.prior != "residual":
            raise StageFileError(f"{portrait.path}: saw weights the face prior, but this portrait denoiser was "
                                 f"trained without one (stage.prior={self.portrait_cfg.prior}); train "
                                 f"portrait_diffusion with stage.prior=residual")
        warn_on_shared_speakers(data.speaker_part, portrait)
        self.denoiser = PortraitDiffusionStage.trained_denoiser(self.earlier)
        self.diffusion = ResidualDiffusion(self.portrait_cfg)
        self.prior_weight = float(self.portrait_cfg.prior_weight)
        self.saw = build_saw(cfg, self.denoiser, self.prior_weight)
        self.cache = SampleCache(cfg.cache_clips)
        self.loss_weights = {"saw": 1.0, "saw_constant": 0.0}
        self._val_weights: list[tuple[torch.Tensor, torch.Tensor]] = []

    @classmethod
    def requires(cls, cfg: SAWConfig) -> tuple[str, ...]:
        return ("conre", "autoencoder", "portrait_diffusion")

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> PortraitSampler:
        """The portrait sampler with SAW's a(speech) (the denoiser as the portrait_diffusion file holds it)."""
        saw_file = files["saw"]
        cfg = saw_config(saw_file)
        sampler = PortraitDiffusionStage.for_inference(files, use_ema)
        saw = build_saw(cfg, sampler.denoiser, sampler.cfg.prior_weight)
        saw.load_state_dict(saw_file.sub_state("saw", use_ema))
        return sampler._replace(saw=saw.eval().requires_grad_(False))

    def rebuilt_prefixes(self) -> tuple[str, ...]:
        return ("vae.", "denoiser.")

    def sampler(self) -> PortraitSampler:
        """The portrait sampler with this SAW (built on use: it holds the module's current tensors)."""
        return PortraitSampler(self.portrait_cfg, self.denoiser, self.diffusion,
                               TrainedVAE(self.vae, self.scaling_factor, self.vae_hash), self.saw)

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        self.denoiser.eval()
        return self

    @torch.no_grad()
    def draw(self, names: list[str], audio: torch.Tensor) -> CachedDraws:
        """SAW's inputs and K residual samples of each clip (its speech degraded first in training)."""
        if self.training and self.cfg.speech_degradation:
            audio = torch.cat([self.cfg.degrade(audio[i:i + 1], torch.Generator().manual_seed(clip_seed(name))).audio
                               for i, name in enumerate(names)])
        context, embedding = self.denoiser.speech(audio)
        count = self.cfg.samples_per_clip
        generator = torch.Generator().manual_seed(clip_seed("|".join(names)))
        residuals = self.diffusion.sample(self.denoiser, context.repeat_interleave(count, 0),
                                                  self.cfg.cache_steps, self.cfg.cache_guidance, generator)
        return CachedDraws(embedding, speech_cues(audio), residuals.unflatten(0, (len(names), count)))

    def draws(self, keys: list[str], audio: torch.Tensor) -> CachedDraws:
        """The cached draws of a batch's clips, drawing the ones not cached yet."""
        names = [("train/" if self.training else "val/") + key for key in keys]
        todo = self.cache.missing(names)
        if todo:
            self.cache.put([names[i] for i in todo], self.draw([names[i] for i in todo], audio[todo]))
        return self.cache.get(names, audio.device)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            residual = self.denoiser.residual(encode_latents(self.vae, batch["frames"][:, 0], self.scaling_factor))
        draws = self.draws(list(batch["key"]), batch["audio"])
        a = self.saw(draws.embedding, draws.cues)
        constant = torch.full_like(a, self.prior_weight)
        return {"saw": saw_loss(a, residual, draws.samples),
                "saw_constant": saw_loss(constant, residual, draws.samples)}

    def validation_metrics(self, batch: dict[str, Any]) -> None:
        draws = self.draws(list(batch["key"]), batch["audio"])
        a = self.saw(draws.embedding, draws.cues)
        valid = batch.get("valid")
        valid = torch.ones(len(a), dtype=torch.bool, device=a.device) if valid is None else valid.to(a.device)
        self._val_weights.append((a.detach(), valid))

    def on_validation_epoch_end(self) -> None:
        """Log how much a varies across the validation clips (std over clips, mean over channels)."""
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
        self.log("val/saw_a_std", a.std(dim=0, unbiased=False).mean(), rank_zero_only=True)
        self.log("val/saw_a_mean", a.mean(), rank_zero_only=True)

    @torch.no_grad()
    def generate(self, audio: torch.Tensor, use_saw: bool = True, steps: int | None = None,
                 seed: int = 0) -> torch.Tensor:
        """Portraits in [-1, 1] with a(speech) (or the constant a), EMA weights."""
        with self.ema_scope():
            return self.sampler().sample(audio, steps or self.cfg.sample_steps, self.cfg.guidance_scale, seed, use_saw)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Rows of (real face | constant a | a from SAW), same noise in both."""
        n = min(self.cfg.media_samples, len(batch["key"]))
        audio = batch["audio"][:n]
        grid = image_grid([batch["frames"][:n, 0], self.generate(audio, use_saw=False), self.generate(audio)])
        return {"saw_portraits": Media(image=grid, caption="real | constant a | SAW a(speech)")}

