"""The lip enhancer's val reading: what each source adds to the motion stage's frames and the sources' difference,
paired over val speakers with the sign of "a minus b"; the small config's source reads the seed's own table file."""
from __future__ import annotations

from reports import lips_val
from reports.results import SMALL


def rows_of(levels: dict[str, float], clips: int = 10) -> dict[str, dict]:
    return {name: {"per_clip": {f"c{i}": {m: level + 0.01 * i for m in lips_val.MEASURES} for i in range(clips)}}
            for name, level in levels.items()}


def test_each_pair_is_paired_over_speakers_with_its_sign():
    rows = rows_of({"motion_diffusion": 2.0, "degraded": 1.9, "motion": 2.3})
    speakers = {f"c{i}": f"spk{i // 2}" for i in range(10)}
    diffs = lips_val.differences(rows, [("degraded", "motion_diffusion"), ("motion", "degraded")], speakers)
    mean, low, high = diffs["degraded − motion_diffusion"]["lse_c"]
    assert abs(mean + 0.1) < 1e-9 and low <= mean <= high
    assert abs(diffs["motion − degraded"]["mouth_margin"][0] - 0.4) < 1e-9
    rows["motion"]["per_clip"]["c0"]["mouth_truth_r"] = float("nan")  # dlib found too few faces in one row
    paired = lips_val.differences(rows, [("motion", "degraded")], speakers)["motion − degraded"]["mouth_truth_r"]
    assert abs(paired[0] - 0.4) < 1e-9  # the clip is left out of both rows, not a failure
    lines = lips_val.report({"generated": rows}, {"generated": diffs}, speakers)
    assert any(line.startswith("| motion | 2.3") for line in lines)
    assert any(line.startswith("- degraded − motion_diffusion: lse_c -0.100") for line in lines)


def test_the_small_config_source_reads_the_seeds_own_file():
    assert lips_val.source_folder(2, "degraded", "degraded") == SMALL.stages(2)
    other = lips_val.source_folder(0, "motion", "degraded")
    assert other.parent.name == "lips-val" and other.name == "stages-seed0-lipsmotion"


def test_the_best_source_is_named_and_a_tie_keeps_the_default():
    assert lips_val.choice({"degraded": 2.0, "motion": 2.2}, (0.2, 0.1, 0.3), "degraded") == ("motion", False)
    assert lips_val.choice({"degraded": 2.0, "motion": 2.1}, (0.1, -0.05, 0.25), "degraded") == ("motion", True)
    assert lips_val.choice({"degraded": 2.0, "motion": 1.8}, (-0.2, -0.3, -0.1), "degraded") == ("degraded", False)
