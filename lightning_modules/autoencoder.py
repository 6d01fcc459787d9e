"""The face latent space: a diffusers ``AutoencoderKL`` trained on the shards or loaded from a local path.

Loss: L1 reconstruction + KL to the unit Gaussian; optional (off by default) a perceptual distance in the frozen
ConRe face encoder's features (``perceptual_weight``, needs the exported conre stage) and a hinge patch GAN
(``adversarial``; two optimizers with manual optimisation, so DDP rather than DeepSpeed). The latent scaling factor
(1 / std of the latents) is measured on the validation data and kept in the buffer ``scaling_factor``, so it lands in
the exported file. ``AutoencoderStage.for_inference`` is how every later stage gets the VAE: a :class:`TrainedVAE` (the
``AutoencoderKL`` in eval mode, the scaling factor and the hash of its weights).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

from common.images import image_grid
from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.nets.vq import PatchDiscriminator
from lightning_modules.stagefile import StageFileError, StageFiles

FINETUNE = ("all", "decoder")


@dataclass
class VAEConfig:
    """Architecture of the ``AutoencoderKL`` (ignored where ``pretrained_path`` gives a diffusers folder)."""

    pretrained_path: str = field(default="", metadata={"help": "local diffusers VAE folder or .safetensors file (never "
                                 "a hub id); empty: train from scratch"})
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512],
                                          metadata={"help": "encoder/decoder widths; len - 1 halvings of the "
                                          "image size"})
    layers_per_block: int = field(default=2, metadata={"help": "ResNet blocks per level"})
    latent_channels: int = field(default=4, metadata={"help": "latent channels"})
    norm_num_groups: int = field(default=32, metadata={"help": "GroupNorm groups"})
    mid_block_attention: bool = field(default=True,
                                      metadata={"help": "self-attention in the mid block (keep off at tiny scale)"})
    file_defaults: ClassVar[dict[str, Any]] = {"mid_block_attention": True}  # files from before the option


@dataclass
class AutoencoderConfig(StageConfig):
    """Autoencoder stage: the VAE and its loss."""

    name: str = "autoencoder"
    vae: VAEConfig = field(default_factory=VAEConfig, metadata={"help": "the AutoencoderKL"})
    finetune: str = field(default="all",
                          metadata={"help": "which parameters train: all | decoder", "choices": FINETUNE})
    kl_weight: float = field(default=1e-6, metadata={"help": "weight of the KL term"})
    scaling_factor: float = field(default=0.0,
                                  metadata={"help": "latent scaling factor; 0: measure 1/std on the validation data"})
    scale_batches: int = field(default=8, metadata={"help": "validation batches the scaling factor is measured on"})
    perceptual_weight: float = field(default=0.0, metadata={"help": "weight of the ConRe face-feature distance (needs "
                                     "the conre stage); 0: off"})
    adversarial: bool = field(default=False, metadata={"help": "hinge patch GAN (two optimizers: DDP, not DeepSpeed)"})
    adversarial_weight: float = field(default=0.1, metadata={"help": "weight of the generator's hinge loss"})
    discriminator_channels: list[int] = field(default_factory=lambda: [64, 128, 256],
                                              metadata={"help": "patch discriminator widths"})

    def validate(self) -> list[str]:
        errors = super().validate()
        for name in ("kl_weight", "scaling_factor", "perceptual_weight", "adversarial_weight"):
            if getattr(self, name) < 0:
                errors.append(f"stage.{name} must be >= 0, got {getattr(self, name)}")
        return errors


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    """An untrained ``AutoencoderKL`` of the configured architecture."""
    levels = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups, mid_block_add_attention=cfg.mid_block_attention,
    )


def load_pretrained_vae(path: str | Path, cfg: VAEConfig) -> AutoencoderKL:
    """A VAE from a local diffusers folder, or a .safetensors file (diffusers or original SD key layout)."""
    path = Path(path)
    if not path.exists():
        raise StageFileError(f"stage.vae.pretrained_path {str(path)!r} does not exist; give a local diffusers VAE "
                             f"folder or .safetensors file (seespeaker never downloads from a model hub)")
    if path.is_dir():
        return AutoencoderKL.from_pretrained(str(path), local_files_only=True)
    if path.suffix != ".safetensors" or not path.is_file():
        raise StageFileError(f"VAE path {path} is neither a diffusers folder nor a .safetensors file")
    vae = build_vae(cfg)
    state = load_file(str(path))
    if "encoder.conv_in.weight" not in state or any(k.startswith("encoder.down.") for k in state):
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
        state = convert_ldm_vae_checkpoint({k.removeprefix("first_stage_model."): v for k, v in state.items()},
                                           dict(vae.config))
    result = vae.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise StageFileError(f"VAE file {path} does not match the configured architecture: "
                             f"{len(result.missing_keys)} missing tensors, e.g. {result.missing_keys[:3]}")
    return vae


def encode_latents(vae: AutoencoderKL, images: torch.Tensor, scaling_factor: float | torch.Tensor) -> torch.Tensor:
    """Scaled latents (the posterior mode) of images [B, 3, R, R] in [-1, 1]."""
    return vae.encode(images).latent_dist.mode() * scaling_factor


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor, scaling_factor: float | torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] from scaled latents."""
    return vae.decode(latents / scaling_factor).sample.clamp(-1.0, 1.0)


def weights_hash(state: dict[str, torch.Tensor]) -> str:
    """A short sha256 of tensor names, shapes and values (independent of file metadata)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


class TrainedVAE(NamedTuple):
    """The trained VAE (eval mode, frozen), its latent scaling factor and a hash of its weights (the face prior
    records the hash it was computed with)."""

    vae: AutoencoderKL
    scaling_factor: float
    vae_hash: str

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return encode_latents(self.vae, images, self.scaling_factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents, self.scaling_factor)


class AutoencoderStage(StageModule):
    config_class = AutoencoderConfig

    def __init__(self, cfg: AutoencoderConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        pretrained = cfg.vae.pretrained_path
        self.vae = load_pretrained_vae(pretrained, cfg.vae) if pretrained else build_vae(cfg.vae)
        if pretrained and Path(pretrained).is_dir():
            cfg.vae.block_out_channels = list(self.vae.config.block_out_channels)
            cfg.vae.layers_per_block = int(self.vae.config.layers_per_block)
            cfg.vae.latent_channels = int(self.vae.config.latent_channels)
            cfg.vae.norm_num_groups = int(self.vae.config.norm_num_groups)
        if cfg.finetune == "decoder":
            self.vae.encoder.requires_grad_(False)
            self.vae.quant_conv.requires_grad_(False)
        self.register_buffer("scaling_factor", torch.tensor(float(cfg.scaling_factor or 1.0)))
        self.loss_weights = {"l1": 1.0, "kl": cfg.kl_weight, "perceptual": cfg.perceptual_weight,
                             "adversarial": cfg.adversarial_weight}
        self.discriminator = PatchDiscriminator(list(cfg.discriminator_channels)) if cfg.adversarial else None
        self.num_optimizers = 2 if cfg.adversarial else 1
        self.automatic_optimization = not cfg.adversarial
        self._perceptual = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        self._latent_stats = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares
        self._scale_batches_seen = 0

    @classmethod
    def requires(cls, cfg: AutoencoderConfig) -> tuple[str, ...]:
        return ("conre",) if cfg.perceptual_weight > 0 else ()

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> TrainedVAE:
        """The trained VAE from the exported ``autoencoder`` file."""
        stage = files["autoencoder"]
        cfg = stage.typed_config(AutoencoderConfig)
        weights = stage.weights(use_ema)
        vae = build_vae(cfg.vae)
        vae.load_state_dict(stage.sub_state("vae", use_ema))
        scaling = float(weights["scaling_factor"]) if "scaling_factor" in weights else 1.0
        state = {k: v for k, v in weights.items() if k.startswith("vae.") or k == "scaling_factor"}
        return TrainedVAE(vae.eval().requires_grad_(False), scaling, weights_hash(state))

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = batch["frames"][:, 0]
        posterior = self.vae.encode(images).latent_dist
        recon = self.vae.decode(posterior.sample()).sample
        l1 = (recon - images).abs().flatten(1).mean(1)
        kl = posterior.kl() / images[0].numel()  # summed over the latent, per image value
        losses = {"l1": l1, "kl": kl}
        if self.cfg.perceptual_weight > 0:
            losses["perceptual"] = self.perceptual()(recon, images)
        if self.discriminator is not None:
            self._last = (recon, images)
            losses["adversarial"] = -self.discriminator(recon).mean(dim=(1, 2, 3))
        return losses

    def perceptual(self):
        """The ConRe face-feature distance, built on first use from the exported conre stage."""
        if self._perceptual is None:
            from lightning_modules.face_perceptual import FacePerceptual
            self._perceptual = FacePerceptual.from_stages(self.earlier, self.data_cfg.resolution)
        return self._perceptual

    # ---- adversarial option: two optimizers, manual optimisation --------------------------------------
    def adversarial_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        recon, images = self._last
        return images, recon

    def configure_optimizers(self):
        if self.discriminator is None:
            return super().configure_optimizers()
        return self.adversarial_optimizers(self.trainable_parameters())

    def validation_metrics(self, batch: dict[str, Any]) -> None:
        """Accumulate latent statistics over the first ``scale_batches`` validation batches (float64)."""
        if self.cfg.scaling_factor > 0 or self._scale_batches_seen >= self.cfg.scale_batches:
            return
        self._scale_batches_seen += 1
        valid = batch.get("valid")
        images = batch["frames"][:, 0] if valid is None else batch["frames"][valid, 0]
        latents = self.vae.encode(images).latent_dist.mode().double()
        self._latent_stats += torch.stack([torch.tensor(float(latents.numel()), dtype=torch.float64),
                                           latents.sum().cpu(), latents.square().sum().cpu()])

    def on_validation_epoch_start(self) -> None:
        self._latent_stats.zero_()
        self._scale_batches_seen = 0

    def on_validation_epoch_end(self) -> None:
        stats = self._latent_stats.to(self.device)
        if self.trainer is not None and self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        if self.cfg.scaling_factor > 0 or stats[0] < 2:
            return
        self.scaling_factor.fill_(float(measured_scaling_factor(stats)))
        self.log("val/latent_scaling_factor", self.scaling_factor, rank_zero_only=True)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Rows of (real face | reconstruction)."""
        images = batch["frames"][:4, 0]
        with self.ema_scope():
            recon = self.vae.decode(self.vae.encode(images).latent_dist.mode()).sample.clamp(-1, 1)
        return {"reconstruction": Media(image=image_grid([images, recon]), caption="real | reconstruction")}


def measured_scaling_factor(stats: torch.Tensor) -> float:
    """1 / std of the latents from (count, sum, sum of squares) in float64."""
    count, total, squares = (float(v) for v in stats)
    variance = max(squares / count - (total / count) ** 2, 1e-12)
    return 1.0 / variance ** 0.5
