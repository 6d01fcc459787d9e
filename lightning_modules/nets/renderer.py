"""The rendering network's fusion of encoder features into the VQ decoder, under a fidelity weight w.

At every decoder level whose resolution the low-resolution encoder also has, the decoder features F_d become
``(1 - w) * F_d + w * P(F_e)``, where P maps the encoder features F_e to the decoder's width. w = 0 is the pure
codebook decoder (the output depends only on the codes); w = 1 replaces the code path at every fused level with
the encoder path (the output depends only on the low-resolution frame); values in between trade the codebook's
prior against fidelity to the input. ``w`` is a number or a per-sample tensor [N].
"""
from __future__ import annotations

import torch
from torch import nn

from lightning_modules.nets.vq import ResBlock


class FeatureProjection(nn.Module):
    """Encoder features (width ``channels_in``) -> decoder width: a 1x1 conv and a residual block."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1), ResBlock(channels_out, channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FidelityFusion(nn.Module):
    """One projection per fused resolution; ``hook`` gives the decoder's ``fuse(h, size)`` callable."""

    def __init__(self, encoder_widths: dict[int, int], decoder_widths: dict[int, int]):
        super().__init__()
        shared = sorted(set(encoder_widths) & set(decoder_widths))
        if not shared:
            raise ValueError(f"no decoder resolution {sorted(decoder_widths)} matches an encoder resolution "
                             f"{sorted(encoder_widths)}: the renderer has nothing to fuse")
        self.resolutions = shared
        self.projections = nn.ModuleDict({str(r): FeatureProjection(encoder_widths[r], decoder_widths[r])
                                          for r in shared})

    def hook(self, features: dict[int, torch.Tensor], w: float | torch.Tensor):
        """The ``fuse(h, size)`` callable for encoder ``features`` (resolution -> map) at fidelity ``w``."""
        def fuse(h: torch.Tensor, size: int) -> torch.Tensor:
            key = str(size)
            if key not in self.projections:
                return h
            weight = torch.as_tensor(w, dtype=h.dtype, device=h.device)
            weight = weight.view(-1, 1, 1, 1) if weight.ndim else weight
            return (1 - weight) * h + weight * self.projections[key](features[size])
        return fuse
