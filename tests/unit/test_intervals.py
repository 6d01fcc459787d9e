"""Bootstrap intervals over speakers: a speaker's clips move together, and the interval says so."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.intervals import (
    finite_seed_mean_by_clip,
    format_interval,
    format_seeds_and_interval,
    paired_speaker_bootstrap,
    seed_mean_by_clip,
    speaker_bootstrap,
)


def clips(speaker_effects: list[float], clips_per_speaker: int, clip_noise: float, seed: int = 0):
    """(values by clip, speaker of each clip): a speaker's clips share its effect, plus independent clip noise."""
    rng = np.random.default_rng(seed)
    values, speaker_of = {}, {}
    for s, effect in enumerate(speaker_effects):
        for c in range(clips_per_speaker):
            key = f"spk{s:02d}/clip{c}"
            values[key] = 0.5 + effect + clip_noise * rng.standard_normal()
            speaker_of[key] = f"spk{s:02d}"
    return values, speaker_of


def clip_bootstrap(values: dict, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """The naive interval: every clip its own unit."""
    return speaker_bootstrap(values, {clip: clip for clip in values}, n, seed, level)[1:]


def test_the_interval_holds_the_mean_and_is_deterministic_given_the_seed():
    values, speaker_of = clips(list(np.random.default_rng(1).normal(0, 0.05, 20)), 3, 0.02)
    mean, low, high = speaker_bootstrap(values, speaker_of)
    assert mean == pytest.approx(np.mean(list(values.values())))
    assert low < mean < high
    assert speaker_bootstrap(values, speaker_of) == (mean, low, high)
    assert speaker_bootstrap(values, speaker_of, seed=1) != (mean, low, high)
    narrower = speaker_bootstrap(values, speaker_of, level=0.5)
    assert low < narrower[1] < narrower[2] < high


def test_the_interval_widens_when_speakers_disagree_more():
    effects = np.random.default_rng(2).standard_normal(20)
    widths = []
    for spread in (0.01, 0.05, 0.2):
        _, low, high = speaker_bootstrap(*clips(list(spread * effects), 3, 0.01))
        widths.append(high - low)
    assert widths[0] < widths[1] < widths[2]
    assert widths[2] > 10 * widths[0]


def test_correlated_clips_of_a_speaker_give_a_wider_interval_than_the_per_clip_bootstrap():
    # 15 speakers with 6 clips each: the clips of a speaker differ by 0.005, the speakers by 0.1. Treating the 90
    # clips as independent counts each speaker six times over and understates the spread by about sqrt(6).
    values, speaker_of = clips(list(0.1 * np.random.default_rng(3).standard_normal(15)), 6, 0.005)
    _, low, high = speaker_bootstrap(values, speaker_of)
    clip_low, clip_high = clip_bootstrap(values)
    assert (high - low) > 1.8 * (clip_high - clip_low)


def test_one_clip_per_speaker_is_the_per_clip_bootstrap():
    values, speaker_of = clips(list(np.random.default_rng(4).normal(0, 0.1, 12)), 1, 0.0)
    assert speaker_bootstrap(values, speaker_of)[1:] == clip_bootstrap(values)


def test_the_paired_interval_of_a_row_with_itself_is_zero_and_a_shift_is_found():
    values, speaker_of = clips(list(np.random.default_rng(5).normal(0, 0.1, 10)), 3, 0.05)
    assert paired_speaker_bootstrap(values, values, speaker_of) == (0.0, 0.0, 0.0)
    shifted = {clip: value + 0.03 for clip, value in values.items()}
    diff, low, high = paired_speaker_bootstrap(shifted, values, speaker_of)
    assert diff == pytest.approx(0.03) and low == pytest.approx(0.03) and high == pytest.approx(0.03)
    noisy = {clip: value + 0.03 + 0.01 * np.sin(i) for i, (clip, value) in enumerate(values.items())}
    diff, low, high = paired_speaker_bootstrap(noisy, values, speaker_of)
    unpaired = speaker_bootstrap(noisy, speaker_of)
    assert 0 < low < diff < high and (high - low) < (unpaired[2] - unpaired[1]) / 5


def test_mismatched_inputs_are_clear_errors():
    values, speaker_of = clips([0.0, 0.1], 2, 0.01)
    with pytest.raises(ValueError, match="no speaker is given"):
        speaker_bootstrap(values | {"stranger": 0.4}, speaker_of)
    with pytest.raises(ValueError, match="different clips"):
        paired_speaker_bootstrap(values, {**values, "stranger": 0.4}, speaker_of | {"stranger": "x"})
    with pytest.raises(ValueError, match="non-finite"):
        speaker_bootstrap(values | {"spk00/clip0": float("nan")}, speaker_of)
    with pytest.raises(ValueError, match="different clips"):
        seed_mean_by_clip([values, {"spk00/clip0": 0.1}])


def test_seeds_are_averaged_per_clip_and_formatted_with_their_spread():
    assert seed_mean_by_clip([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}]) == {"a": 2.0, "b": 2.0}
    assert format_interval(0.4123, 0.38, 0.4469) == "0.412 [0.380, 0.447]"
    assert format_seeds_and_interval([0.40, 0.42], (0.41, 0.38, 0.447)) == "0.410 ± 0.014 [0.380, 0.447]"
    assert format_seeds_and_interval([0.40], None) == "0.400"
    assert format_seeds_and_interval([], None) == "-"


def test_the_tables_print_the_seed_spread_and_the_speaker_interval_of_their_per_clip_values():
    import re

    from reports import results_codebook, results_sync

    values, speaker_of = clips(list(np.random.default_rng(6).normal(0, 0.1, 8)), 3, 0.05)
    keys = list(values)

    def row(metrics, shift):
        per_clip = {k: {m: values[k] + shift for m in metrics} for k in keys}
        return {m: float(np.mean([v[m] for v in per_clip.values()])) for m in metrics} | {"per_clip": per_clip}

    cell = re.compile(r"^-?\d+\.\d{3} ± \d+\.\d{3} \[(-?\d+\.\d{3}), (-?\d+\.\d{3})\]$")
    sync = [{"rows": {name: row(results_sync.METRICS, 0.01 * s) for name in results_sync.ROWS},
             "speakers": speaker_of} for s in range(3)]
    low, high = map(float, cell.match(results_sync.cell(sync, "truth", "lse_c")).groups())
    assert low < np.mean(list(values.values())) + 0.01 < high
    assert "LSE-C 0.000 [0.000, 0.000]" in results_sync.paired_lines(sync, list(results_sync.ROWS))[0]
    assert results_sync.left_out_lines([{"seed": s} | r for s, r in enumerate(sync)]) == []
    del sync[2]["rows"]["codebook"]
    assert results_sync.left_out_lines([{"seed": s} | r for s, r in enumerate(sync)]) == [
        "", "Row (v) + codebook (256 px) is left out: seed(s) 2 have no such videos."]
    codebook = [{"sets": {"stage2": {"rows": {name: row(results_codebook.PER_CLIP, 0.0) | {"fid": 40.0 + s}
                                              for name in ("bicubic", "renderer_w0.5")}}}, "speakers": speaker_of}
                for s in range(3)]
    assert cell.match(results_codebook.cell(codebook, "stage2", "bicubic", "ssim"))
    assert results_codebook.cell(codebook, "stage2", "bicubic", "fid") == "41.00 ± 1.00"  # pooled frames: seeds only


def test_a_clip_is_averaged_over_the_seeds_that_gave_it_a_value_and_left_out_when_none_did():
    nan = float("nan")
    per_seed = [{"a": 1.0, "b": nan, "c": nan}, {"a": 3.0, "b": 4.0, "c": nan}]
    assert finite_seed_mean_by_clip(per_seed) == {"a": 2.0, "b": 4.0}
    with pytest.raises(ValueError, match="different clips"):
        finite_seed_mean_by_clip([{"a": 1.0}, {"b": 1.0}])


def test_a_row_cell_averages_each_seed_over_its_finite_clips_in_the_printed_unit():
    from reports.table_units import clip_values, row_cell

    nan = float("nan")
    speakers = {"a": "s1", "b": "s2", "c": "s3"}
    per_seed = [{"per_clip": {"full": {"a": {"temporal_consistency": 0.001}, "b": {"temporal_consistency": nan},
                                       "c": {"temporal_consistency": nan}}}, "speakers": speakers},
                {"per_clip": {"full": {"a": {"temporal_consistency": 0.003}, "b": {"temporal_consistency": 0.004},
                                       "c": {"temporal_consistency": nan}}}, "speakers": speakers}]
    assert clip_values(per_seed, "full", "temporal_consistency") == pytest.approx({"a": 2.0, "b": 4.0})
    seeds = row_cell(per_seed, "full", "temporal_consistency")
    assert seeds.startswith("2.250 ± 1.768 [")  # seed means 1.0 and 3.5 (×10³), each over its finite clips
    empty = [{"per_clip": {"full": {"a": {"lse_c": nan}}}, "speakers": speakers}]
    assert row_cell(empty, "full", "lse_c") == "-"
