"""A tiny codebook stage (32 px in, 128 px out) and batches for it, shared by the codebook tests."""
from __future__ import annotations

import torch

from datamodules.config import DataConfig
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import CodebookConfig

LR, HR = 32, 128


def tiny_cfg(**overrides) -> CodebookConfig:
    values = dict(base_channels=4, channel_multipliers=[1, 2, 2, 4, 4], blocks_per_level=1, lr_base_channels=8,
                  lr_channel_multipliers=[1, 2, 4], codebook_size=32, code_dim=8, transformer_layers=1,
                  transformer_width=32, transformer_heads=4, discriminator_channels=[8, 16], window_frames=4,
                  degrade=0.0, lr=3e-3, warmup_steps=0, schedule="constant")
    values.update(overrides)
    return CodebookConfig(**values)


def tiny_stage(phase: str = "vqgan", clip_frames: int = 1, stages_dir: str = "", load_earlier: bool = False,
               **overrides) -> CodebookStage:
    torch.manual_seed(0)
    data = DataConfig(resolution=LR, hr_resolution=HR, clip_frames=clip_frames, batch_size=2)
    return CodebookStage(tiny_cfg(phase=phase, **overrides), data, stages_dir, load_earlier=load_earlier)


def make_batch(batch: int = 2, frames: int = 1, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(batch, frames, 3, HR, HR, generator=g) * 2 - 1
    lr = torch.nn.functional.interpolate(hr.flatten(0, 1), size=LR, mode="area").view(batch, frames, 3, LR, LR)
    return {"key": [f"k{i}" for i in range(batch)], "hr_frames": hr, "frames": lr,
            "valid": torch.ones(batch, dtype=torch.bool)}

