"""The VQGAN encoder, codebook and generator of the ``codeformer`` layout, laid out so that their parameter names
(``encoder.blocks.<i>``, ``quantize.embedding``, ``generator.blocks.<i>``) and shapes are those of CodeFormer's
released weights.

Both halves are one flat list of blocks, level by level. The encoder: an input conv; per level ``blocks``
residual blocks (each followed by self-attention at the attention resolutions) and a stride-2 downsample between
levels; a middle residual / attention / residual; a group norm and a conv to the code size (no activation between
them, as released). The generator mirrors it: a conv from the code size, the middle, then per level (coarsest first)
its residual blocks and a nearest x2 upsample, a group norm and a conv to RGB.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    """32 groups (the release); fewer where ``channels`` does not divide by 32 (small test and CPU configs)."""
    groups = min(32, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """norm-swish-conv twice plus the input (through a 1x1 ``conv_out`` when the width changes)."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.norm1 = group_norm(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.norm2 = group_norm(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)
        self.conv_out = nn.Conv2d(channels_in, channels_out, 1) if channels_in != channels_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (x if self.conv_out is None else self.conv_out(x))


class AttnBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map, with a residual connection."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        tokens = [t.flatten(2).transpose(1, 2) for t in (self.q(h), self.k(h), self.v(h))]  # [B, HW, C] each
        attended = F.scaled_dot_product_attention(*tokens)                                   # scale C^-1/2
        return x + self.proj_out(attended.transpose(1, 2).reshape(x.shape))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after padding one row and column at the bottom and right."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def level_resolutions(image_size: int, levels: int) -> list[int]:
    """Feature-map size of each level, finest first (512, 256, ..., 16 for the release)."""
    return [image_size // 2 ** i for i in range(levels)]


class VQGANEncoder(nn.Module):
    """Image [B, 3, S, S] -> latent [B, code_dim, g, g]; ``taps`` maps a level's resolution to the block after
    which its features are kept for fusion (the level's last residual block)."""

    def __init__(self, image_size: int, widths: list[int], blocks: int, attention: tuple[int, ...], code_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        self.taps: dict[int, int] = {}
        previous = widths[0]
        for level, (size, width) in enumerate(zip(level_resolutions(image_size, len(widths)), widths, strict=True)):
            for _ in range(blocks):
                layers.append(ResBlock(previous, width))
                previous = width
                self.taps[size] = len(layers) - 1
                if size in attention:
                    layers.append(AttnBlock(width))
            if level < len(widths) - 1:
                layers.append(Downsample(width))
        layers += [ResBlock(previous, previous), AttnBlock(previous), ResBlock(previous, previous),
                   group_norm(previous), nn.Conv2d(previous, code_dim, 3, padding=1)]
        self.blocks = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, keep: tuple[int, ...] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """(latent, {resolution: features} for the resolutions in ``keep``)."""
        wanted = {self.taps[size]: size for size in keep}
        features = {}
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in wanted:
                features[wanted[index]] = x
        return x, features


class VQGANGenerator(nn.Module):
    """Latent [B, code_dim, g, g] -> image [B, 3, S, S]; ``fuse_after`` maps a level's resolution to the block
    after which the fusion hook runs (the level's first residual block)."""

    def __init__(self, image_size: int, widths: list[int], blocks: int, attention: tuple[int, ...], code_dim: int):
        super().__init__()
        previous = widths[-1]
        layers: list[nn.Module] = [nn.Conv2d(code_dim, previous, 3, padding=1), ResBlock(previous, previous),
                                   AttnBlock(previous), ResBlock(previous, previous)]
        self.fuse_after: dict[int, int] = {}
        sizes = level_resolutions(image_size, len(widths))
        for level in reversed(range(len(widths))):
            size, width = sizes[level], widths[level]
            for block in range(blocks):
                layers.append(ResBlock(previous, width))
                previous = width
                if block == 0:
                    self.fuse_after[size] = len(layers) - 1
                if size in attention:
                    layers.append(AttnBlock(width))
            if level > 0:
                layers.append(Upsample(width))
        layers += [group_norm(previous), nn.Conv2d(previous, 3, 3, padding=1)]
        self.blocks = nn.ModuleList(layers)

    def forward(self, z: torch.Tensor, fuse: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                at: tuple[int, ...] = ()) -> torch.Tensor:
        """The image; ``fuse(resolution, h) -> h`` runs after the block ``fuse_after`` names for each resolution
        in ``at``."""
        hooks = {self.fuse_after[size]: size for size in at} if fuse is not None else {}
        for index, block in enumerate(self.blocks):
            z = block(z)
            if index in hooks:
                z = fuse(hooks[index], z)
        return z


class Codebook(nn.Module):
    """The code vectors (``embedding``: [codebook_size, code_dim]) and nearest-code quantization."""

    def __init__(self, codebook_size: int, code_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices [B, g, g] -> latents [B, code_dim, g, g]."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, code_dim, g, g] -> indices [B, g, g] of the nearest codes (squared Euclidean distance)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = self.embedding.weight
        distance = flat.square().sum(1, keepdim=True) - 2 * flat @ codes.t() + codes.square().sum(1)
        return distance.argmin(1).view(z.shape[0], z.shape[2], z.shape[3])
