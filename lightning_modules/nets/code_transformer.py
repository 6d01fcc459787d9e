"""The code-prediction transformer: low-resolution frame features -> the code indices of the high-resolution frame.

Tokens are the cells of the low-resolution encoder's latent grid (16 x 16 at every scale). Each block attends over
the tokens of a frame; with ``temporal`` it also attends, per grid cell, across the frames of a window (the temporal
variant that keeps consecutive frames' codes consistent).
"""
from __future__ import annotations

import torch
from torch import nn


class CodeBlock(nn.Module):
    """Pre-norm spatial self-attention, optional temporal self-attention, MLP."""

    def __init__(self, width: int, heads: int, temporal: bool):
        super().__init__()
        self.norm_space = nn.LayerNorm(width)
        self.space = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm_time = nn.LayerNorm(width) if temporal else None
        self.time = nn.MultiheadAttention(width, heads, batch_first=True) if temporal else None
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, N, W] -> [B, T, N, W]."""
        b, t, n, w = x.shape
        h = self.norm_space(x).reshape(b * t, n, w)
        x = x + self.space(h, h, h, need_weights=False)[0].view(b, t, n, w)
        if self.time is not None:
            h = self.norm_time(x).transpose(1, 2).reshape(b * n, t, w)
            x = x + self.time(h, h, h, need_weights=False)[0].view(b, n, t, w).transpose(1, 2)
        return x + self.mlp(self.norm_mlp(x))


class CodeTransformer(nn.Module):
    """Features [B, T, D, h, w] -> logits over ``num_codes`` [B, T, h * w, num_codes]."""

    def __init__(self, in_dim: int, num_codes: int, tokens: int, width: int = 512, layers: int = 9, heads: int = 8,
                 temporal: bool = False, max_frames: int = 64):
        super().__init__()
        self.temporal = temporal
        self.proj_in = nn.Linear(in_dim, width)
        self.position = nn.Parameter(torch.zeros(1, 1, tokens, width))
        self.frame_position = nn.Parameter(torch.zeros(1, max_frames, 1, width)) if temporal else None
        nn.init.normal_(self.position, std=0.02)
        if self.frame_position is not None:
            nn.init.normal_(self.frame_position, std=0.02)
        self.blocks = nn.ModuleList([CodeBlock(width, heads, temporal) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_codes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, t, d, h, w = features.shape
        if h * w != self.position.shape[2]:
            raise ValueError(f"the code transformer was built for {self.position.shape[2]} tokens, "
                             f"got a {h} x {w} grid; the low- and high-resolution latent grids must match")
        x = self.proj_in(features.flatten(3).transpose(2, 3)) + self.position
        if self.frame_position is not None:
            if t > self.frame_position.shape[1]:
                raise ValueError(f"window of {t} frames is longer than the {self.frame_position.shape[1]} "
                                 f"frame positions of the temporal transformer")
            x = x + self.frame_position[:, :t]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))
