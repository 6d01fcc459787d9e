"""The units the results tables print a metric in.

Temporal consistency and flicker are mean absolute frame-to-frame changes of about 10⁻³ (on the [0, 1] pixel scale):
at three decimals, rows that differ by several per cent print alike ("0.002" and "0.002"), so the tables print them
×10³ and say so in the column's name."""
from __future__ import annotations

PER_MILLE = frozenset({"temporal_consistency", "flicker_generated"})


def shown(metric: str, value: float) -> float:
    """``value`` in the unit its table column prints ``metric`` in."""
    return 1000.0 * value if metric in PER_MILLE else value
