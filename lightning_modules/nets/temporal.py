"""Temporal self-attention for a 2-D UNet that denoises a window of frames in one call.

The UNet sees a batch of ``windows x frames`` images, frame-major within each window. After the last layer of every
down, mid and up block a :class:`TemporalAttention` lets each latent pixel attend to the same pixel in the window's
other frames (a learned frame-position embedding says which frame is which), as the motion modules of AnimateDiff
and Hallo do. Its output projection starts at zero, so a new layer passes its input through unchanged.
"""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn


class TemporalAttention(nn.Module):
    """x [windows * frames, C, h, w] -> x + attention over each pixel's ``frames`` values (identity for 1 frame)."""

    def __init__(self, channels: int, heads: int, max_frames: int, groups: int = 32):
        super().__init__()
        if channels % heads:
            raise ValueError(f"temporal attention: {channels} channels do not split into {heads} heads; "
                             f"choose stage.temporal_heads dividing every stage.unet_channels entry")
        self.frames = 1
        self.norm = nn.GroupNorm(min(groups, channels // 2) if channels < 64 else groups, channels)
        self.position = nn.Parameter(torch.randn(max_frames, channels) * 0.02)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = self.frames
        if frames <= 1:
            return x
        count, channels, height, width = x.shape
        if count % frames:
            raise ValueError(f"temporal attention: a batch of {count} images is not whole windows of {frames} frames")
        if frames > len(self.position):
            raise ValueError(f"temporal attention: a window of {frames} frames exceeds the {len(self.position)} "
                             f"frame positions the layer was built with")
        tokens = self.norm(x).view(count // frames, frames, channels, height * width)
        tokens = tokens.permute(0, 3, 1, 2).reshape(-1, frames, channels) + self.position[:frames].to(x.dtype)
        mixed = self.attention(tokens, tokens, tokens, need_weights=False)[0]
        mixed = mixed.view(count // frames, height * width, frames, channels).permute(0, 2, 3, 1)
        return x + mixed.reshape(count, channels, height, width)


class WithTemporal(nn.Module):
    """A UNet layer followed by temporal attention on its (first) output."""

    def __init__(self, layer: nn.Module, temporal: TemporalAttention):
        super().__init__()
        self.layer, self.temporal = layer, temporal

    def forward(self, *args, **kwargs):
        out = self.layer(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.temporal(out[0]), *out[1:])
        return self.temporal(out)


def last_layer(block: nn.Module) -> tuple[nn.ModuleList, int]:
    """The list holding a diffusers block's last layer (its last attention, else its last resnet) and its index."""
    layers = block.attentions if getattr(block, "attentions", None) else block.resnets
    return layers, len(layers) - 1


def add_temporal_layers(unet: UNet2DConditionModel, heads: int, max_frames: int) -> list[TemporalAttention]:
    """Put a temporal attention after the last layer of every down, mid and up block; returns them in order."""
    added = []
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        layers, index = last_layer(block)
        temporal = TemporalAttention(block.resnets[-1].out_channels, heads, max_frames)
        layers[index] = WithTemporal(layers[index], temporal)
        added.append(temporal)
    return added


def set_window(layers: list[TemporalAttention], frames: int) -> None:
    """Tell every temporal layer how many consecutive images of the batch form one window."""
    for layer in layers:
        layer.frames = frames
