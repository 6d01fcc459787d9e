"""Confidence intervals over test speakers: the clips of one speaker are resampled together.

Clips of one speaker are not independent (same face, same voice), so a bootstrap over clips understates how much a
score would move on other speakers. :func:`speaker_bootstrap` resamples speakers with replacement, each with all of
its clips, and gives a percentile interval of the mean over clips; :func:`paired_speaker_bootstrap` does the same for
the per-clip difference of two rows scored on the same clips.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping

import numpy as np

BOOTSTRAP_SAMPLES = 2000
LEVEL = 0.95


def speaker_sums(values_by_clip: Mapping[Hashable, float],
                 speaker_of: Mapping[Hashable, str]) -> tuple[np.ndarray, np.ndarray]:
    """(sum of the clip values, number of clips) per speaker, speakers in sorted order."""
    if not values_by_clip:
        raise ValueError("no clip values to bootstrap")
    missing = [clip for clip in values_by_clip if clip not in speaker_of]
    if missing:
        raise ValueError(f"no speaker is given for clips {missing[:5]}; give speaker_of for every clip")
    bad = [clip for clip, value in values_by_clip.items() if not math.isfinite(value)]
    if bad:
        raise ValueError(f"clips {bad[:5]} have non-finite values; drop or count them before the bootstrap")
    speakers = sorted({speaker_of[clip] for clip in values_by_clip})
    index = {speaker: i for i, speaker in enumerate(speakers)}
    sums, counts = np.zeros(len(speakers)), np.zeros(len(speakers))
    for clip, value in values_by_clip.items():
        sums[index[speaker_of[clip]]] += value
        counts[index[speaker_of[clip]]] += 1
    return sums, counts


def speaker_bootstrap(values_by_clip: Mapping[Hashable, float], speaker_of: Mapping[Hashable, str],
                      n: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean over clips, low, high): the percentile interval at ``level`` of the mean over clips when the
    speakers are drawn with replacement, ``n`` times, each with all of its clips."""
    if n < 1 or not 0 < level < 1:
        raise ValueError(f"need n >= 1 and 0 < level < 1, got n={n}, level={level}")
    sums, counts = speaker_sums(values_by_clip, speaker_of)
    draws = np.random.default_rng(seed).integers(0, len(sums), (n, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(sums.sum() / counts.sum()), float(low), float(high)


def paired_speaker_bootstrap(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                             speaker_of: Mapping[Hashable, str], n: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                             level: float = LEVEL) -> tuple[float, float, float]:
    """(mean of a - b, low, high) over the clips both rows scored, speakers resampled as in
    :func:`speaker_bootstrap`: the interval of a row's difference from another on the same clips."""
    if set(a) != set(b):
        only = sorted(map(str, set(a) ^ set(b)))
        raise ValueError(f"the two rows scored different clips (e.g. {only[:5]}); pair them on the same clips")
    return speaker_bootstrap({clip: a[clip] - b[clip] for clip in a}, speaker_of, n, seed, level)


def seed_mean_by_clip(per_seed: list[Mapping[Hashable, float]]) -> dict[Hashable, float]:
    """Each clip's value averaged over the seeds (every seed must have scored the same clips)."""
    check_same_clips(per_seed)
    return {clip: statistics.fmean(values[clip] for values in per_seed) for clip in per_seed[0]}


def check_same_clips(per_seed: list[Mapping[Hashable, float]]) -> None:
    """Raise unless there are seeds and every seed scored the same clips."""
    if not per_seed:
        raise ValueError("no seeds to average")
    clips = set(per_seed[0])
    if any(set(values) != clips for values in per_seed):
        raise ValueError("the seeds scored different clips; average only seeds evaluated on the same test clips")


def finite_seed_mean_by_clip(per_seed: list[Mapping[Hashable, float]]) -> dict[Hashable, float]:
    """Each clip's value averaged over the seeds that gave it a finite value (every seed must have scored the same
    clips); a clip no seed gave a finite value is left out."""
    check_same_clips(per_seed)
    finite = {clip: [values[clip] for values in per_seed if math.isfinite(values[clip])] for clip in per_seed[0]}
    return {clip: statistics.fmean(values) for clip, values in finite.items() if values}


def format_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    """``"0.412 [0.380, 0.447]"``."""
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_seeds_and_interval(seed_values: list[float], interval: tuple[float, float, float] | None,
                              digits: int = 3) -> str:
    """``"0.412 ± 0.010 [0.380, 0.447]"``: the mean ± std over seeds, then the speaker interval (when given) of
    the seed-averaged clips."""
    if not seed_values:
        return "-"
    text = f"{statistics.fmean(seed_values):.{digits}f}"
    if len(seed_values) > 1:
        text += f" ± {statistics.stdev(seed_values):.{digits}f}"
    if interval is not None:
        text += f" [{interval[1]:.{digits}f}, {interval[2]:.{digits}f}]"
    return text
