"""Validation metrics are means over the valid samples: padding samples (``valid`` False), which even out the ranks'
batch counts, weigh nothing, whatever their values (real Trainer, one process)."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from datamodules.config import DataConfig
from lightning_modules.base import StageConfig, StageModule, masked_mean

PAD = 100.0  # what a padding sample's loss happens to be


class Echo(StageModule):
    """Per-sample losses that are the batch's values: ``a = x`` and ``b = 2x`` (weight 0.5), so the loss is ``2x``."""

    loss_weights = {"a": 1.0, "b": 0.5}

    def __init__(self):
        super().__init__(StageConfig(name="echo"), DataConfig())
        self.net = torch.nn.Linear(1, 1)

    def compute_losses(self, batch):
        return {"a": batch["x"], "b": 2 * batch["x"]}


def batch(values: list[float], valid: list[bool]) -> dict:
    return {"key": [f"clip{i}" for i in range(len(values))], "x": torch.tensor(values),
            "valid": torch.tensor(valid)}


def validate(batches: list[dict]) -> dict[str, float]:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    (metrics,) = trainer.validate(Echo(), dataloaders=DataLoader(batches, batch_size=None), verbose=False)
    return metrics


def test_validation_metrics_average_the_valid_samples_only():
    metrics = validate([
        batch([1.0, 2.0, PAD, PAD], [True, True, False, False]),  # a half-padded batch
        batch([PAD] * 4, [False] * 4),  # an all-padding batch, as a shorter rank reads
        batch([9.0, 10.0, 11.0, 12.0], [True] * 4),
    ])
    valid = [1.0, 2.0, 9.0, 10.0, 11.0, 12.0]
    mean = sum(valid) / len(valid)
    assert metrics["val/a"] == pytest.approx(mean, rel=1e-6)
    assert metrics["val/b"] == pytest.approx(2 * mean, rel=1e-6)
    assert metrics["val/loss"] == pytest.approx(2 * mean, rel=1e-6)


def test_the_masked_mean_leaves_padding_out():
    values = torch.tensor([1.0, 3.0, float("nan"), float("inf")])
    assert float(masked_mean(values, torch.tensor([True, True, False, False]))) == 2.0
    assert float(masked_mean(values[:2], None)) == 2.0
    assert float(masked_mean(values, torch.zeros(4, dtype=torch.bool))) == 0.0  # no valid sample: 0, not NaN
    module = Echo()
    loss = module.reduce_losses({"a": values, "b": 2 * values}, torch.tensor([True, True, False, False]))
    assert math.isfinite(float(loss)) and float(loss) == 4.0
