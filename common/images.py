"""Image conversions and grids: the one place float images in [-1, 1] become uint8 and back.

Networks work on float tensors ``[..., 3, H, W]`` in [-1, 1]; uint8 ``[..., H, W, 3]`` arrays exist only where a
PNG or an mp4 is written or a judge needs pixels.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_uint8(images: Any) -> np.ndarray:
    """Float images ``[..., 3, H, W]`` in [-1, 1] (a tensor or an array) -> uint8 ``[..., H, W, 3]``."""
    if isinstance(images, torch.Tensor):
        images = images.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(images, dtype=np.float32)
    if array.ndim < 3 or array.shape[-3] != 3:
        raise ValueError(f"to_uint8 needs images shaped [..., 3, H, W], got {tuple(array.shape)}")
    array = ((array + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(array, -3, -1))


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 images ``[..., H, W, 3]`` -> float32 tensor ``[..., 3, H, W]`` in [-1, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return tensor.movedim(-1, -3).float() / 127.5 - 1.0


def image_grid(columns: list[torch.Tensor]) -> np.ndarray:
    """Columns of ``[B, 3, R, R]`` images in [-1, 1] -> one ``(B*R) x (len(columns)*R) x 3`` uint8 array
    (row i holds sample i of every column, left to right)."""
    rows = [torch.cat(list(images), dim=2) for images in zip(*columns, strict=False)]
    return to_uint8(torch.cat(rows, dim=1))
