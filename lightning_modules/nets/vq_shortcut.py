"""The VQ encoder and decoder with a linear path beside their convolutions (``stage.shortcut`` of the codebook).

The encoder adds a 1x1 conv of the image's area average on the latent grid to its latent; the decoder adds a 1x1 conv
of the latent, bicubic-upsampled, to its image. The convolutions then learn the detail around a colour layout that
trains from the first steps. On the small corpus's 256 px val frames (base width 16, 5 levels, a 16 x 16 grid of 256
codes, L1 only, batch 8): without the linear path the VQ autoencoder's val L1 was still 0.186 after 100 batches
and the full recipe's 0.198 after 500, near the val mean face (0.236); with it 0.095 after 400, below bicubic from
8 px (0.102)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.vq import VQDecoder, VQEncoder


class ShortcutVQEncoder(VQEncoder):
    """:class:`VQEncoder` whose latent adds ``shortcut`` (1x1 conv) of the image averaged onto the latent grid."""

    def __init__(self, base_channels: int, multipliers: list[int], blocks: int, latent_dim: int, in_channels: int = 3):
        super().__init__(base_channels, multipliers, blocks, latent_dim, in_channels)
        self.shortcut = nn.Conv2d(in_channels, latent_dim, 1)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        z, features = super().forward(x, with_features=True)
        z = z + self.shortcut(F.interpolate(x, size=z.shape[-2:], mode="area"))
        return (z, features) if with_features else z


class ShortcutVQDecoder(VQDecoder):
    """:class:`VQDecoder` whose image adds ``shortcut`` (1x1 conv) of the latent, bicubic-upsampled."""

    def __init__(self, base_channels: int, multipliers: list[int], blocks: int, latent_dim: int, out_channels: int = 3):
        super().__init__(base_channels, multipliers, blocks, latent_dim, out_channels)
        self.shortcut = nn.Conv2d(latent_dim, out_channels, 1)

    def forward(self, z: torch.Tensor, fuse: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                shortcut_latent: torch.Tensor | None = None, with_hidden: bool = False):
        """The image of latent z; the linear path reads ``shortcut_latent`` instead of z when given (the renderer's
        fidelity blend, :meth:`lightning_modules.nets.renderer.FidelityFusion.blend`). With ``with_hidden`` also the
        last level's features before the output layers (the renderer's residual head reads them)."""
        hidden = []
        handle = self.out.register_forward_pre_hook(lambda _, args: hidden.append(args[0])) if with_hidden else None
        try:
            image = super().forward(z, fuse)
        finally:  # an exception must not leave the hook on for every later call
            if handle is not None:
                handle.remove()
        linear = self.shortcut(z if shortcut_latent is None else shortcut_latent)
        image = image + F.interpolate(linear, size=image.shape[-2:], mode="bicubic", align_corners=False)
        return (image, hidden[0]) if with_hidden else image


def vq_networks(shortcut: bool) -> tuple[type[VQEncoder], type[VQDecoder]]:
    """The encoder and decoder classes, with or without the linear path."""
    return (ShortcutVQEncoder, ShortcutVQDecoder) if shortcut else (VQEncoder, VQDecoder)
