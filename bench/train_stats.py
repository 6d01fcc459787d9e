"""The pure arithmetic of the training benchmark: per-pair ratios, their median and bootstrap interval, MFU."""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

H100_BF16_DENSE = 989e12  # FLOP/s, H100/H200 SXM dense bf16 (the MFU denominator)


@dataclass
class Window:
    """One timed window of one run: ``steps`` steps of ``batch`` samples in ``seconds``."""

    seconds: float
    steps: int
    batch: int
    peak_mem_gb: float = 0.0

    @property
    def step_s(self) -> float:
        return self.seconds / self.steps

    @property
    def samples_per_s(self) -> float:
        return self.steps * self.batch / self.seconds


def pair_ratios(pairs: list[tuple[Window, Window]]) -> list[float]:
    """Speed of the framework over the bare loop in each (bare, framework) pair: bare time / framework time."""
    return [bare.seconds / framework.seconds for bare, framework in pairs]


def bootstrap_interval(values: list[float], level: float = 0.95, draws: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values`` (resampled with replacement)."""
    if not values:
        raise ValueError("no values to bootstrap")
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    tail = (1.0 - level) / 2.0
    low = medians[int(tail * (draws - 1))]
    high = medians[int(round((1.0 - tail) * (draws - 1)))]
    return low, high


def summarize(pairs: list[tuple[Window, Window]], level: float = 0.95) -> dict[str, float]:
    """Median ratio with its bootstrap interval, and each side's median step time and samples/s."""
    ratios = pair_ratios(pairs)
    low, high = bootstrap_interval(ratios, level)
    bare = [b for b, _ in pairs]
    framework = [f for _, f in pairs]
    return {
        "pairs": len(pairs),
        "ratio": statistics.median(ratios),
        "ratio_low": low,
        "ratio_high": high,
        "bare_step_ms": 1e3 * statistics.median(w.step_s for w in bare),
        "framework_step_ms": 1e3 * statistics.median(w.step_s for w in framework),
        "bare_samples_s": statistics.median(w.samples_per_s for w in bare),
        "framework_samples_s": statistics.median(w.samples_per_s for w in framework),
        "bare_peak_gb": max(w.peak_mem_gb for w in bare),
        "framework_peak_gb": max(w.peak_mem_gb for w in framework),
    }


def mfu(flops_per_step: float, step_s: float, peak_flops: float = H100_BF16_DENSE) -> float:
    """Model FLOPs utilisation: useful FLOPs per second over the chip's dense bf16 peak."""
    return flops_per_step / step_s / peak_flops if step_s > 0 else 0.0


def data_wait_s(batch_s: float, step_s: float, workers: int) -> float:
    """Time a step waits for its batch: the whole load without workers, else what the workers do not hide."""
    return batch_s if workers == 0 else max(0.0, batch_s - step_s)


def meets(summary: dict[str, float], median: float = 0.97, lower: float = 0.94) -> bool:
    """The acceptance rule: median ratio >= ``median`` and the interval's lower bound >= ``lower``."""
    return summary["ratio"] >= median and summary["ratio_low"] >= lower
