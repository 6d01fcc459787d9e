"""The rendering network's fusion of encoder features into the VQ decoder, under a fidelity weight w.

At every decoder level whose resolution the low-resolution encoder also has, the decoder features F_d become
``(1 - w) * F_d + w * P(F_e)``, where P maps the encoder features F_e to the decoder's width. w = 0 is the pure
codebook decoder (the output depends only on the codes); w = 1 replaces the code path at every fused level with
the encoder path (the output depends only on the low-resolution frame); values in between trade the codebook's
prior against fidelity to the input. ``w`` is a number or a per-sample tensor [N].

:class:`DetailGate` optionally pulls the decoder's output towards bicubic upsampling of the input: by ``w * (1 - g)``
with a learned per-pixel gate g in (0, 1), so that at w = 1 the network keeps its own output only where g says its
detail helps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.nets.vq import ResBlock, norm


def fidelity_like(w: float | torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The fidelity weight (a number or per-sample [N]) as a tensor that broadcasts over images [N, C, H, W]."""
    weight = torch.as_tensor(w, dtype=images.dtype, device=images.device)
    return weight.view(-1, 1, 1, 1) if weight.ndim else weight


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
            weight = fidelity_like(w, h)
            return (1 - weight) * h + weight * self.projections[key](features[size])
        return fuse

    @staticmethod
    def blend(codes: torch.Tensor, latent: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
        """The decoder's linear shortcut input at fidelity w: the looked-up codes at w = 0, the low-resolution
        encoder's latent at w = 1 (as the fused features go from the code path to the encoder path)."""
        weight = fidelity_like(w, codes)
        return (1 - weight) * codes + weight * latent


class ResidualHead(nn.Module):
    """Detail on top of bicubic upsampling: norm-SiLU-conv of the decoder's last features to an image residual, its
    conv zero-initialised, so that a renderer starts from bicubic at fidelity 1. At fidelity w and detail scale s
    the output is ``(1 - w) * decoded + w * (bicubic + s * detail)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(norm(channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, decoded: torch.Tensor, hidden: torch.Tensor, low: torch.Tensor,
                w: float | torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """decoded [N, 3, H, H], the decoder's last features [N, C, H, H], low-res input [N, 3, r, r], w, the detail
        scale s -> output."""
        bicubic = F.interpolate(low, size=decoded.shape[-2:], mode="bicubic", align_corners=False)
        weight = fidelity_like(w, decoded)
        return (1 - weight) * decoded + weight * (bicubic + scale * self.net(hidden))


class DetailGate(nn.Module):
    """A per-pixel gate g in (0, 1) from the decoder's output and the bicubic upsampling of the input; at fidelity w
    the output becomes ``decoded + w * (1 - g) * (bicubic - decoded)``. Starts at g = ``initial`` everywhere.
    ``last_opening`` holds each image's mean g [N] of the last call (the results table reports it)."""

    def __init__(self, hidden: int = 16, initial: float = 0.25):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(6, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, 1, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.constant_(self.net[-1].bias, math.log(initial / (1 - initial)))
        self.last_opening: torch.Tensor | None = None

    def forward(self, decoded: torch.Tensor, low: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
        """decoded [N, 3, H, H], low-res input [N, 3, r, r], w (number or [N]) -> the gated output [N, 3, H, H]."""
        bicubic = F.interpolate(low, size=decoded.shape[-2:], mode="bicubic", align_corners=False)
        gate = torch.sigmoid(self.net(torch.cat([decoded, bicubic], dim=1)))
        self.last_opening = gate.detach().mean(dim=(1, 2, 3))
        return decoded + fidelity_like(w, decoded) * (1 - gate) * (bicubic - decoded)
