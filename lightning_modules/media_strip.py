"""A video stage's validation media as a picture: rows of frames that W&B shows inline beside the mp4."""
from __future__ import annotations

import numpy as np
import torch

from common.images import image_grid


def frame_strip(rows: list[torch.Tensor], frames: int = 6) -> np.ndarray:
    """Videos ``[T, 3, R, R]`` in [-1, 1], one per row -> a uint8 picture of ``frames`` evenly spaced frames of each
    (the same frame indices in every row, first and last included)."""
    count = min(len(row) for row in rows)
    picked = torch.linspace(0, count - 1, min(frames, count)).round().long().unique().tolist()
    return image_grid([torch.stack([row[index].float().cpu() for row in rows]) for index in picked])
