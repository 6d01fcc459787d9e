"""The VQ autoencoder of the codebook stage: a VQGAN-style encoder and decoder and the vector quantizer.

- :class:`VQEncoder`: image [N, 3, R, R] -> latent [N, D, R / 2^(L-1), R / 2^(L-1)] for L channel multipliers,
  with the feature map of every level (the renderer fuses them into the decoder).
- :class:`VectorQuantizer`: nearest-code quantization with a straight-through gradient, the codebook and
  commitment terms (beta), a running estimate of each code's usage, the batch perplexity and the
  re-initialisation of dead codes from encoder outputs.
- :class:`VQDecoder`: latent -> image, with an optional ``fuse(h, size)`` hook after every level.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count up to ``groups`` that divides ``channels``."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(g, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Two norm-SiLU-conv layers with a residual connection (1x1 conv when the width changes)."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.block = nn.Sequential(norm(channels_in), nn.SiLU(), nn.Conv2d(channels_in, channels_out, 3, 1, 1),
                                   norm(channels_out), nn.SiLU(), nn.Conv2d(channels_out, channels_out, 3, 1, 1))
        self.skip = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x) + self.skip(x)


class VQEncoder(nn.Module):
    """Image -> latent grid; one level per channel multiplier, a stride-2 conv between levels."""

    def __init__(self, base_channels: int, multipliers: list[int], blocks: int, latent_dim: int, in_channels: int = 3):
        super().__init__()
        widths = [base_channels * m for m in multipliers]
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, 1, 1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        previous = widths[0]
        for index, width in enumerate(widths):
            self.levels.append(nn.Sequential(*[ResBlock(previous if b == 0 else width, width) for b in range(blocks)]))
            previous = width
            if index < len(widths) - 1:
                self.downs.append(nn.Conv2d(width, width, 3, 2, 1))
        self.mid = ResBlock(previous, previous)
        self.out = nn.Sequential(norm(previous), nn.SiLU(), nn.Conv2d(previous, latent_dim, 3, 1, 1))
        self.widths = widths

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.widths) - 1)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        """latent, and with ``with_features`` a dict resolution -> feature map of that level (the last after mid)."""
        h = self.conv_in(x)
        features: dict[int, torch.Tensor] = {}
        for index, level in enumerate(self.levels):
            h = level(h)
            if index < len(self.downs):
                features[h.shape[-1]] = h
                h = self.downs[index](h)
        h = self.mid(h)
        features[h.shape[-1]] = h
        z = self.out(h)
        return (z, features) if with_features else z


class VQDecoder(nn.Module):
    """Latent grid -> image in [-1, 1] (tanh-free: the losses keep it in range); mirror of the encoder."""

    def __init__(self, base_channels: int, multipliers: list[int], blocks: int, latent_dim: int, out_channels: int = 3):
        super().__init__()
        widths = [base_channels * m for m in reversed(multipliers)]
        self.conv_in = nn.Conv2d(latent_dim, widths[0], 3, 1, 1)
        self.mid = ResBlock(widths[0], widths[0])
        self.levels = nn.ModuleList()
        self.ups = nn.ModuleList()
        previous = widths[0]
        for index, width in enumerate(widths):
            self.levels.append(nn.Sequential(*[ResBlock(previous if b == 0 else width, width) for b in range(blocks)]))
            previous = width
            if index < len(widths) - 1:
                self.ups.append(nn.Conv2d(width, width, 3, 1, 1))
        self.out = nn.Sequential(norm(previous), nn.SiLU(), nn.Conv2d(previous, out_channels, 3, 1, 1))
        self.widths = widths

    def level_widths(self, latent_size: int) -> dict[int, int]:
        """Resolution -> channel width of each level's output, for a latent grid of ``latent_size``."""
        return {latent_size * 2 ** i: w for i, w in enumerate(self.widths)}

    def forward(self, z: torch.Tensor, fuse: Callable[[torch.Tensor, int], torch.Tensor] | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for index, level in enumerate(self.levels):
            h = level(h)
            if fuse is not None:
                h = fuse(h, h.shape[-1])
            if index < len(self.ups):
                h = self.ups[index](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)


@dataclass
class Quantized:
    """What the quantizer returns: straight-through latents, indices and per-sample losses."""

    latents: torch.Tensor        # [N, D, h, w], gradient flows to the encoder output (straight-through)
    indices: torch.Tensor        # [N, h, w] long
    codebook_loss: torch.Tensor  # [N]: ||sg(z) - e||^2, trains the codes
    commitment_loss: torch.Tensor  # [N]: ||z - sg(e)||^2, times beta, trains the encoder
    perplexity: torch.Tensor     # scalar: exp(entropy) of the batch's code histogram


class VectorQuantizer(nn.Module):
    """A codebook of ``num_codes`` vectors of size ``dim``; ``usage`` is an EMA of each code's assignment share."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, usage_decay: float = 0.99):
        super().__init__()
        self.num_codes, self.dim, self.beta, self.usage_decay = num_codes, dim, beta, usage_decay
        self.embedding = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``flat`` [M, D]."""
        codes = self.embedding.weight
        distance = flat.square().sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.square().sum(1)[None]
        return distance.argmin(1)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices [N, h, w] -> code vectors [N, D, h, w]."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, track_usage: bool | None = None) -> Quantized:
        """Quantize z [N, D, h, w]; usage is tracked in training mode unless ``track_usage`` says otherwise."""
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        indices = self.nearest(flat.detach().float())
        quantized = self.embedding(indices).view(n, h, w, d).permute(0, 3, 1, 2)
        codebook = (quantized - z.detach()).square().mean(dim=(1, 2, 3))
        commitment = self.beta * (z - quantized.detach()).square().mean(dim=(1, 2, 3))
        counts = torch.bincount(indices, minlength=self.num_codes).float()
        share = counts / counts.sum().clamp_min(1.0)
        if self.training if track_usage is None else track_usage:
            with torch.no_grad():
                self.usage.lerp_(share, 1.0 - self.usage_decay)
        perplexity = torch.exp(-(share * torch.log(share.clamp_min(1e-10))).sum())
        straight = z + (quantized - z).detach()
        return Quantized(straight, indices.view(n, h, w), codebook, commitment, perplexity)

    def dead_codes(self, threshold: float) -> torch.Tensor:
        """Boolean mask of the codes whose usage share is below ``threshold / num_codes``."""
        return self.usage < threshold / self.num_codes

    @torch.no_grad()
    def reinit_dead(self, candidates: torch.Tensor, threshold: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each dead code with a random row of ``candidates`` [M, D] (encoder outputs); only dead codes
        change. Their usage restarts at the uniform share. Returns the indices of the replaced codes."""
        dead = self.dead_codes(threshold).nonzero().flatten()
        if dead.numel() == 0 or candidates.numel() == 0:
            return dead[:0]
        pick = torch.randint(0, candidates.shape[0], (dead.numel(),), generator=generator).to(candidates.device)
        self.embedding.weight.data[dead] = candidates[pick].to(self.embedding.weight.dtype)
        self.usage[dead] = 1.0 / self.num_codes
        return dead


class PatchDiscriminator(nn.Module):
    """A PatchGAN on images: stride-2 convs with LeakyReLU, a logit per patch; its intermediate activations serve
    as the perceptual features of feature matching."""

    def __init__(self, channels: list[int]):
        super().__init__()
        layers, previous = [], 3
        for width in channels:
            layers += [nn.Conv2d(previous, width, 4, 2, 1), norm(width), nn.LeakyReLU(0.2)]
            previous = width
        layers.append(nn.Conv2d(previous, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def features_and_logits(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the activation after every LeakyReLU, the patch logits) in one pass: the features are what feature
        matching compares (:func:`lightning_modules.codebook_losses.feature_matching`)."""
        features, h = [], images
        for layer in self.net:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                features.append(h)
        return features, h
