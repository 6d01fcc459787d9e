"""The speech-conditioned residual denoiser of the portrait stage (a plain nn.Module).

Speech -> tokens for cross-attention: the ConRe speech encoder's frame sequence projected to the UNet's
context width, preceded by its pooled identity embedding as one more token. The denoiser never sees the prior
weight a: it learns the residual r = z - z_prior, and a only shrinks a sample towards the prior afterwards
(``lightning_modules.prior_weight``). The face prior's mean latent is a buffer, so every exported file carries the
prior it was trained with (zero for a denoiser trained without a prior, on z itself).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from lightning_modules.nets.encoders import SpeechEncoder
from lightning_modules.prior_weight import shrink_towards_prior


@dataclass
class UNetConfig:
    """Architecture of the ``UNet2DConditionModel`` (defaults: Stable Diffusion 1.x sized, ~860 M parameters)."""

    block_out_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280],
                                          metadata={"help": "widths per resolution level"})
    attention_levels: list[bool] = field(default_factory=lambda: [True, True, True, False],
                                         metadata={"help": "cross-attention per level (keep off above 16 x 16 on CPU)"})
    layers_per_block: int = field(default=2, metadata={"help": "ResNet blocks per level"})
    cross_attention_dim: int = field(default=768, metadata={"help": "width of the speech tokens"})
    attention_head_dim: int = field(default=8, metadata={"help": "attention heads (diffusers' naming)"})
    norm_num_groups: int = field(default=32, metadata={"help": "GroupNorm groups"})
    transformer_layers_per_block: int = field(default=1, metadata={"help": "transformer layers per attention block"})

    def validate(self, prefix: str = "stage.unet") -> list[str]:
        errors = []
        if len(self.attention_levels) != len(self.block_out_channels):
            errors.append(f"{prefix}.attention_levels needs one flag per level ({len(self.block_out_channels)}), "
                          f"got {self.attention_levels}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            errors.append(f"{prefix}.block_out_channels {self.block_out_channels} must be multiples of "
                          f"norm_num_groups={self.norm_num_groups}")
        return errors


def build_unet(cfg: UNetConfig | dict[str, Any], latent_channels: int, latent_size: int) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel`` conditioned on speech tokens by cross-attention (no class embedding)."""
    c = asdict(cfg) if isinstance(cfg, UNetConfig) else dict(cfg)
    levels = c["attention_levels"]
    down = tuple("CrossAttnDownBlock2D" if att else "DownBlock2D" for att in levels)
    up = tuple("CrossAttnUpBlock2D" if att else "UpBlock2D" for att in reversed(levels))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=down, up_block_types=up, block_out_channels=tuple(c["block_out_channels"]),
        layers_per_block=c["layers_per_block"], cross_attention_dim=c["cross_attention_dim"],
        attention_head_dim=c["attention_head_dim"], norm_num_groups=c["norm_num_groups"],
        transformer_layers_per_block=c.get("transformer_layers_per_block", 1),
    )


def encode_speech(encoder: SpeechEncoder, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(frame tokens [B, T', width], pooled identity embedding [B, embed_dim]) in one pass."""
    seq = encoder.tokens(audio)
    weights = torch.softmax(encoder.attn(seq).squeeze(-1), dim=1)
    pooled = torch.einsum("bt,btc->bc", weights, seq)
    return seq, encoder.head(pooled)


class PortraitDenoiser(nn.Module):
    """Speech encoder + token projections + UNet + the face prior's mean latent."""

    def __init__(self, unet_cfg: UNetConfig | dict[str, Any], speech_encoder: SpeechEncoder, latent_channels: int,
                 latent_size: int, finetune_speech: bool = False):
        super().__init__()
        width = (asdict(unet_cfg) if isinstance(unet_cfg, UNetConfig) else unet_cfg)["cross_attention_dim"]
        self.speech_encoder = speech_encoder.requires_grad_(finetune_speech)
        self.token_proj = nn.Linear(speech_encoder.width, width)
        self.embed_proj = nn.Linear(speech_encoder.embed_dim, width)
        self.null_context = nn.Parameter(torch.zeros(1, 1, width))
        self.unet = build_unet(unet_cfg, latent_channels, latent_size)
        self.register_buffer("prior_mean", torch.zeros(latent_channels, latent_size, latent_size))

    def speech(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cross-attention context [B, 1 + T', width], pooled speech embedding [B, embed_dim])."""
        seq, embedding = encode_speech(self.speech_encoder, audio)
        context = torch.cat([self.embed_proj(embedding)[:, None], self.token_proj(seq)], dim=1)
        return context, embedding

    def unconditional(self, batch_size: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """The learned null context used for condition dropout and classifier-free guidance."""
        null = self.null_context.expand(batch_size, 1, -1)
        return null if like is None else null.expand(batch_size, like.shape[1], -1)

    def drop_condition(self, context: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Replace the context of samples where ``drop`` is True by the null context."""
        return torch.where(drop[:, None, None], self.unconditional(len(context), context), context)

    def residual(self, latents: torch.Tensor) -> torch.Tensor:
        """The diffusion target r = z - z_prior (z itself for a denoiser without a prior: its prior is zero)."""
        return latents - self.prior_mean

    def with_prior(self, residual: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The latent z_hat(a) = z_prior + (1 - a) * r_hat (``a`` [B, C]: 0 the raw sample, 1 the mean face)."""
        return shrink_towards_prior(self.prior_mean, residual, a)

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, encoder_hidden_states=context).sample
