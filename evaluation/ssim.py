"""SSIM per frame as torchmetrics computes it, with the Gaussian window applied as matrix products (faster on the
CPU than a depthwise convolution; ``python -m bench eval`` measures both)."""
from __future__ import annotations

import torch

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # torchmetrics' Gaussian window: int(3.5 * sigma + 0.5) * 2 + 1 = 11 taps


def gaussian_window(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> torch.Tensor:
    """The normalised 1-D Gaussian whose outer product is torchmetrics' 2-D SSIM window."""
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    window = torch.exp(-0.5 * (taps / sigma) ** 2)
    return window / window.sum()


def blur_matrix(size: int) -> torch.Tensor:
    """[size, size]: reflect padding by SSIM_RADIUS, then the Gaussian window, along one axis as one matrix (on the
    CPU a matrix product blurs several times faster than a depthwise convolution)."""
    if size <= SSIM_RADIUS:
        raise ValueError(f"SSIM needs images of more than {SSIM_RADIUS} pixels a side, got {size}")
    window, matrix = gaussian_window(), torch.zeros(size, size)
    for row in range(size):
        for tap in range(-SSIM_RADIUS, SSIM_RADIUS + 1):
            column = abs(row + tap)  # reflect at 0 (the edge pixel not repeated), then at size - 1
            column = 2 * (size - 1) - column if column >= size else column
            matrix[row, column] += window[tap + SSIM_RADIUS]
    return matrix


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """SSIM of each frame pair [N] of images in [0, 1], as torchmetrics' ``structural_similarity_index_measure``
    computes it (Gaussian window of 11 taps, sigma 1.5, reflect padding, K1 0.01, K2 0.03, data range 1, the map
    averaged over the whole image) to float rounding, with the window applied as two matrix products. A chunk at a
    time (all at once needs N x 27 MB at 256 px)."""
    down, across = blur_matrix(pred.shape[-2]).to(pred), blur_matrix(pred.shape[-1]).to(pred)

    def chunk_ssim(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c1, c2 = 0.01 ** 2, 0.03 ** 2
        mu_p, mu_t, p2, t2, pt = (down @ torch.cat((p, t, p * p, t * t, p * t)) @ across.T).split(len(p))
        var_p = (p2 - mu_p ** 2).clamp(min=0)
        var_t = (t2 - mu_t ** 2).clamp(min=0)
        cov = pt - mu_p * mu_t
        index = (2 * mu_p * mu_t + c1) * (2 * cov + c2) / ((mu_p ** 2 + mu_t ** 2 + c1) * (var_p + var_t + c2))
        return index.flatten(1).mean(-1)

    return torch.cat([chunk_ssim(p, t) for p, t in zip(pred.split(chunk), target.split(chunk), strict=True)])
