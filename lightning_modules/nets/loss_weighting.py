"""Per-sample weights of the diffusion loss as small swappable parts (after sgm's ``loss_weighting``).

A weighting maps the signal-to-noise ratio of each sample's timestep, ``SNR = alpha_bar / (1 - alpha_bar)``,
to the weight its loss gets before the batch is reduced.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")
WEIGHTINGS = ("unit", "min_snr")


class DiffusionLossWeighting(ABC):
    """Weight per sample from its SNR."""

    @abstractmethod
    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        ...


class UnitWeighting(DiffusionLossWeighting):
    """Every timestep counts the same (the plain DDPM objective)."""

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(snr)


class MinSNRWeighting(DiffusionLossWeighting):
    """Min-SNR-gamma (Hang et al. 2023): ``min(SNR, gamma) / SNR`` for epsilon, ``/ (SNR + 1)`` for v."""

    def __init__(self, gamma: float = 5.0, prediction_type: str = "epsilon"):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"min-SNR weighting: prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")
        if gamma <= 0:
            raise ValueError(f"min-SNR weighting: gamma must be positive, got {gamma}")
        self.gamma = gamma
        self.prediction_type = prediction_type

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        clipped = snr.clamp(max=self.gamma)
        if self.prediction_type == "epsilon":
            return clipped / snr.clamp_min(1e-12)
        return clipped / (snr + 1.0)


def build_loss_weighting(name: str, prediction_type: str, gamma: float = 5.0) -> DiffusionLossWeighting:
    """The weighting called ``name`` (``unit`` or ``min_snr``) for the given prediction type."""
    if name == "unit":
        return UnitWeighting()
    if name == "min_snr":
        return MinSNRWeighting(gamma, prediction_type)
    raise ValueError(f"loss weighting {name!r} is not one of {WEIGHTINGS}")
