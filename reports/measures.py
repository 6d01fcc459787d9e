"""The per-frame measures the codebook and end-to-end evaluations share: frames as they would be written, PSNR and
SSIM per frame at the target's size, Inception features cached by content and the statistics FID takes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from common.images import to_uint8
from evaluation.fid import FeatureStats, content_features
from evaluation.measure import to_measurement_size
from evaluation.ssim import ssim_per_frame


def unit(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8-rounded values in [0, 1], as the frames would be written."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round() / 255


def frame_scores(frames: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (PSNR [N], SSIM [N]) of frames in [-1, 1], measured at the target's size, against a target
    already through :func:`unit`."""
    pred = unit(to_measurement_size(frames, target.shape[-1]))
    psnr = peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3))
    return psnr, ssim_per_frame(pred, target)


def stats(features: np.ndarray) -> FeatureStats:
    result = FeatureStats(dim=features.shape[1], provenance={"extractor": "table"})
    result.update(features)
    return result


def inception(extractor, cache: Path):
    """frames [N, 3, S, S] in [-1, 1] -> Inception features [N, D], cached by content (a frame set scored again, by
    another row or seed, costs nothing)."""
    return lambda frames: content_features(extractor, to_uint8(frames), cache)
