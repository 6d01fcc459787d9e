"""The training benchmark's arithmetic: per-pair ratios, the median's bootstrap interval, MFU, the data wait."""
from __future__ import annotations

import contextlib
import json

import pytest
import torch

from bench.train_setup import counted_flops
from bench.train_stats import Window, bootstrap_interval, data_wait_s, meets, mfu, pair_ratios, summarize


def pair(bare_s: float, framework_s: float, steps: int = 100, batch: int = 8) -> tuple[Window, Window]:
    return Window(bare_s, steps, batch), Window(framework_s, steps, batch)


def test_ratio_is_bare_time_over_framework_time_per_pair():
    assert pair_ratios([pair(1.0, 2.0), pair(3.0, 3.0)]) == [0.5, 1.0]
    assert Window(2.0, 100, 8).step_s == 0.02 and Window(2.0, 100, 8).samples_per_s == 400.0


def test_bootstrap_interval_holds_the_median_and_narrows_with_agreement():
    spread = [0.90, 0.95, 0.97, 0.99, 1.01, 1.03, 0.96]
    low, high = bootstrap_interval(spread)
    assert low <= 0.97 <= high and low >= min(spread) and high <= max(spread)
    assert bootstrap_interval([0.98] * 6) == (0.98, 0.98)
    assert bootstrap_interval(spread, seed=1) == bootstrap_interval(spread, seed=1)  # seeded: reproducible
    with pytest.raises(ValueError):
        bootstrap_interval([])


def test_summary_and_the_acceptance_rule():
    pairs = [pair(1.0, 1.0 / r) for r in (0.99, 0.98, 1.0, 0.97, 0.985)]
    summary = summarize(pairs)
    assert summary["pairs"] == 5 and summary["ratio"] == pytest.approx(0.985)
    assert summary["bare_step_ms"] == pytest.approx(10.0) and meets(summary)
    slow = summarize([pair(1.0, 1.0 / r) for r in (0.99, 0.90, 1.0, 0.80, 0.95)])
    assert not meets(slow)


def test_mfu_and_data_wait():
    assert mfu(989e12 * 0.5, 1.0) == pytest.approx(0.5)
    assert mfu(1.0, 0.0) == 0.0
    assert data_wait_s(0.3, 0.1, workers=0) == 0.3  # no workers: the step loads its own batch
    assert data_wait_s(0.3, 0.1, workers=4) == pytest.approx(0.2)  # workers hide what the step's time covers
    assert data_wait_s(0.05, 0.1, workers=4) == 0.0


class TwoLayers(torch.nn.Module):
    """The two hooks ``step_flops`` calls, over one frozen and one trained layer."""

    def __init__(self):
        super().__init__()
        self.frozen = torch.nn.Linear(4, 4).requires_grad_(False)
        self.trained = torch.nn.Linear(4, 2)

    def compute_losses(self, batch):
        return self.trained(self.frozen(batch["x"])).pow(2).mean(1)

    def reduce_losses(self, losses, valid):
        return losses.mean()


def test_flop_count_is_kept_per_batch_shape(tmp_path):
    cache = tmp_path / "flops.json"
    module, batch = TwoLayers(), {"x": torch.randn(8, 4)}
    total, trained = counted_flops(module, batch, contextlib.nullcontext, cache)
    assert total > trained > 0  # the frozen layer's forward is counted in the total only
    kept = json.loads(cache.read_text())
    cache.write_text(json.dumps({**kept, "total": 1.0, "trained": 0.5}))
    assert counted_flops(module, batch, contextlib.nullcontext, cache) == (1.0, 0.5)  # same shapes: reused
    wider = counted_flops(module, {"x": torch.randn(16, 4)}, contextlib.nullcontext, cache)
    assert wider[0] == pytest.approx(2 * total)  # a new shape is counted again
