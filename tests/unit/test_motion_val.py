"""The motion stage's val readings: each value is compared with the small config's on the same val clips, paired
over val speakers, with the sign of "this value minus the default"; the default reads the seed's own table file."""
from __future__ import annotations

from reports import motion_val
from reports.results import SMALL


def scores_of(levels: dict[str, float], clips: int = 10) -> dict[str, dict]:
    return {name: {"per_clip": {f"c{i}": {"lse_c": level + 0.01 * i, "lse_d": 10 - level} for i in range(clips)}}
            for name, level in levels.items()}


def test_each_weight_is_paired_against_the_default_with_its_sign():
    scores = scores_of({"8": 3.0, "0": 2.5, "16": 3.2, "truth": 4.0})
    speakers = {f"c{i}": f"spk{i // 2}" for i in range(10)}
    diffs = motion_val.differences(scores, "8", speakers)
    assert set(diffs) == {"0", "16"}  # neither the default against itself nor the truth
    mean, low, high = diffs["0"]["lse_c"]
    assert abs(mean + 0.5) < 1e-9 and low <= mean <= high
    assert abs(diffs["16"]["lse_d"][0] + 0.2) < 1e-9
    scores["0"]["per_clip"]["c3"]["lse_c"] = float("nan")  # a clip one row could not score is left out of both
    assert abs(motion_val.differences(scores, "8", speakers)["0"]["lse_c"][0] + 0.5) < 1e-9
    table = motion_val.report(scores, diffs, speakers, "8")
    assert table[2].startswith("| 8 (small config) |") and "-0.500" in table[3]


def test_the_small_config_value_reads_the_seeds_own_file():
    assert motion_val.value_folder(1, "mouth_loss_weight", 8.0, 8.0) == SMALL.stages(1)
    assert motion_val.value_folder(1, "mouth_loss_weight", 2.0, 8.0).name == "stages-seed1-mouth2"
    other = motion_val.value_folder(0, "temporal_loss_weight", 1.0, 0.0)
    assert other.parent.name == "temporal-val" and other.name == "stages-seed0-temporal1"


def test_the_choice_follows_each_options_direction_and_a_tie_keeps_the_default():
    diffs = {"1": {"temporal_consistency": (-0.2, -0.3, -0.1)}, "2": {"temporal_consistency": (-0.1, -0.3, 0.1)}}
    assert motion_val.choice("temporal_loss_weight", {"0": 1.8, "1": 1.6, "2": 1.7}, diffs, "0") == ("1", False)
    assert motion_val.choice("temporal_loss_weight", {"0": 1.8, "1": 1.9, "2": 1.7}, diffs, "0") == ("2", True)
    lse = {"16": {"lse_c": (0.003, -0.02, 0.03)}}
    assert motion_val.choice("mouth_loss_weight", {"8": 2.846, "16": 2.849}, lse, "8") == ("16", True)
    assert motion_val.choice("mouth_loss_weight", {"8": 2.846, "16": 2.8}, lse, "8") == ("8", False)
