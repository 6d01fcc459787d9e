"""The tables print temporal statistics ×10³: two rows a few per cent apart, which print alike at three decimals of
the raw value, print apart, and the paired difference shows the gap."""
from __future__ import annotations

import numpy as np

from reports import results_video, table_units


def two_rows(first: float, second: float, clips: int = 12) -> list[dict]:
    rng = np.random.default_rng(0)
    noise = rng.normal(0.0, 0.00002, clips)
    per_clip = {row: {f"clip{i}": {"temporal_consistency": level + noise[i]} for i in range(clips)}
                for row, level in (("windowed", first), ("sequential", second))}
    return [{"per_clip": per_clip, "speakers": {f"clip{i}": f"spk{i}" for i in range(clips)}}]


def test_rows_a_few_per_cent_apart_print_apart():
    per_seed = two_rows(0.00178, 0.00187)
    windowed = table_units.row_cell(per_seed, "windowed", "temporal_consistency")
    sequential = table_units.row_cell(per_seed, "sequential", "temporal_consistency")
    assert f"{0.00178:.3f}" == f"{0.00187:.3f}"  # the raw values print alike at the table's three decimals
    assert windowed.startswith("1.78") and sequential.startswith("1.87")
    difference = results_video.paired_cell(per_seed, "temporal_consistency")
    assert difference.startswith("-0.09")
