"""One measurement path: every row of a results table reaches its scorers at one size, resized by one function.

Rows of one results table come at different sizes (64 px stage outputs, 256 px rendered videos). In the README's
tables (``reports/results_*.py``) each scorer (LSE, FID / KID, dlib identity, the ConRe judge) gets a row only through
:func:`to_measurement_size`, with the size the table states, so that a score does not depend on which resize a row
happened to take. What a scorer does inside (Inception's 299 px, the sync expert's crop size) is the same for every
row and stays part of its protocol.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from common.images import to_unit

MEASUREMENT_RESIZE = "bicubic (Keys a=-0.5, as PIL and MATLAB), antialiased when downscaling, clamped to [-1, 1]"


def as_float_frames(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float frames [T, 3, H, W] in [-1, 1] from themselves or from uint8 frames [T, H, W, 3] (numpy or tensor)."""
    if isinstance(frames, np.ndarray) or frames.dtype == torch.uint8:
        array = frames if isinstance(frames, np.ndarray) else frames.cpu().numpy()
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames [T, H, W, 3] or float frames [T, 3, H, W] in [-1, 1], "
                             f"got {array.dtype} {tuple(array.shape)}")
        return to_unit(array)
    if not torch.is_floating_point(frames) or frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected float frames [T, 3, H, W] in [-1, 1] or uint8 frames [T, H, W, 3], "
                         f"got {frames.dtype} {tuple(frames.shape)}")
    return frames.float()


def to_measurement_size(frames: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Frames [T, 3, H, W] in [-1, 1] (or uint8 [T, H, W, 3]) -> float [T, 3, size, size] in [-1, 1].

    Bicubic with torch's antialiased kernel (Keys a=-0.5, exact on quadratics; widened by the factor when
    downscaling), then clamped; frames already at ``size`` come back unchanged. Square frames only: a measurement
    never stretches a face."""
    if size < 1:
        raise ValueError(f"the measurement size must be a positive number of pixels, got {size}")
    frames = as_float_frames(frames)
    height, width = frames.shape[-2:]
    if height != width:
        raise ValueError(f"frames of {height} x {width} px are not square; crop them to the face before measuring")
    if height == size:
        return frames
    return F.interpolate(frames, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)


def scale_landmarks(landmarks: np.ndarray, from_size: int, to_size: int) -> np.ndarray:
    """Pixel landmarks [..., 2] of a frame of ``from_size`` px, moved onto the same frame at ``to_size`` px."""
    scale = to_size / from_size
    return (np.asarray(landmarks, np.float64) + 0.5) * scale - 0.5
