"""The units the results tables print a metric in, and the per-row cells of the tables whose evaluations keep one
value per clip and row (``per_clip[row][clip][metric]``).

Temporal consistency and flicker are mean absolute frame-to-frame changes of about 10⁻³ (on the [0, 1] pixel scale):
at three decimals, rows that differ by several per cent print alike ("0.002" and "0.002"), so the tables print them
×10³ and say so in the column's name."""
from __future__ import annotations

import numpy as np

from evaluation.intervals import finite_seed_mean_by_clip, format_seeds_and_interval, speaker_bootstrap

PER_MILLE = frozenset({"temporal_consistency", "flicker_generated"})


def shown(metric: str, value: float) -> float:
    """``value`` in the unit its table column prints ``metric`` in."""
    return 1000.0 * value if metric in PER_MILLE else value


def clip_values(per_seed: list[dict], row: str, metric: str) -> dict[str, float]:
    """{clip: the metric averaged over the seeds that gave it a value}; clips without one are left out."""
    return finite_seed_mean_by_clip([{k: shown(metric, v[metric]) for k, v in r["per_clip"][row].items()}
                                     for r in per_seed])


def row_cell(per_seed: list[dict], row: str, metric: str) -> str:
    """The seeds' means ± their spread and the speaker-bootstrap interval of the clips' seed means; "-" if no clip
    has a value."""
    values = clip_values(per_seed, row, metric)
    if not values:
        return "-"
    per_clip = [[shown(metric, v[metric]) for v in r["per_clip"][row].values() if np.isfinite(v[metric])]
                for r in per_seed]
    seeds = [float(np.mean(values)) for values in per_clip if values]
    return format_seeds_and_interval(seeds, speaker_bootstrap(values, per_seed[0]["speakers"]))
