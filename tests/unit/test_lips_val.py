"""The lip enhancer's val reading: what each value of an option adds to the motion stage's frames and each value's
difference from the small config's, paired over val speakers with the sign of "a minus b"; the small config's value
reads the seed's own table file; values are read as the config reads them, and a wrong option or value is refused by
name."""
from __future__ import annotations

import argparse

import pytest

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


def test_the_small_config_value_reads_the_seeds_own_file():
    default = lips_val.Variant("stage.input_source", "motion")
    assert lips_val.variant_folder(2, default, default) == SMALL.stages(2)
    other = lips_val.variant_folder(0, lips_val.Variant("stage.sync_weight", "1.0"),
                                    lips_val.Variant("stage.sync_weight", "0.3"))
    assert other.parent.name == "lips-val" and other.name == "stages-seed0-sync_weight-1.0"


def test_values_are_read_as_the_config_reads_them_the_small_configs_first():
    parser = argparse.ArgumentParser()
    read, default = lips_val.variants(parser, "stage.sync_weight", ["1", "0.30", "1.0", "7"])
    assert read[0] == default and default.word == f"stage.sync_weight={default.value}"
    labels = [v.label for v in read]
    assert sorted(labels) == sorted({"sync_weight=1.0", "sync_weight=0.3", "sync_weight=7.0", default.label})
    read, default = lips_val.variants(parser, lips_val.DEFAULT_OPTION, None)
    assert {v.value for v in read} == set(lips_val.INPUT_SOURCES)


@pytest.mark.parametrize("option, values, named", [("stage.no_such", ["1"], "stage.no_such"),
                                                   ("stage.sync_weight", ["loud"], "loud"),
                                                   ("stage.sync_weight", None, "--values")])
def test_a_wrong_option_or_value_is_refused_by_name(option, values, named, capsys):
    with pytest.raises(SystemExit):
        lips_val.variants(argparse.ArgumentParser(), option, values)
    assert named in capsys.readouterr().err


def test_the_best_value_is_named_and_a_tie_keeps_the_default():
    assert lips_val.choice({"a": 2.0, "b": 2.2}, {"b": (0.2, 0.1, 0.3)}, "a") == ("b", False)
    assert lips_val.choice({"a": 2.0, "b": 2.1}, {"b": (0.1, -0.05, 0.25)}, "a") == ("b", True)
    assert lips_val.choice({"a": 2.0, "b": 1.8}, {"b": (-0.2, -0.3, -0.1)}, "a") == ("a", False)
    means, diffs = {"a": 2.0, "b": 2.3, "c": 2.1}, {"b": (0.3, -0.1, 0.7), "c": (0.1, 0.05, 0.15)}
    assert lips_val.choice(means, diffs, "a") == ("b", True)  # the best mean, not the one whose interval excludes 0
