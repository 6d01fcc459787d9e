"""Corpus listings, HDTF speaker aliases, speaker-disjoint splits, crop-window geometry and clip windows."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from datamodules.prepare.listing import (
    assign_speaker_splits,
    hdtf_speaker,
    list_avspeech,
    list_hdtf,
    list_voxceleb2,
    parse_segment,
    read_alias_file,
)
from datamodules.prepare.process import PrepareOptions, clamp_window, clip_windows, scale_window
from datamodules.prepare.runner import in_range, parse_shard_range


def touch(path: Path | bytes) -> None:
    path = Path(os.fsdecode(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_segments_parse_minutes_and_hours():
    assert parse_segment("00:30-01:00") == (30.0, 60.0)
    assert parse_segment("01:02:03-01:02:04.5") == (3723.0, 3724.5)
    with pytest.raises(ValueError):
        parse_segment("01:00-00:30")


@pytest.mark.parametrize("name,speaker", [
    ("AmyKlobuchar0", "AmyKlobuchar"), ("AmyKlobuchar1.mp4", "AmyKlobuchar"), ("Radio11_0", "Radio"),
    ("JamesClyburn", "JamesClyburn"), ("JamesClyburn1", "JamesClyburn"), ("WhipJimClyburn", "JamesClyburn"),
    ("TerriSewell", "TerriSewell"), ("TerriSewell0", "TerriSewell"), ("TerriSewell1_2.mp4", "TerriSewell"),
    ("WRA_TerriSewell1_000", "TerriSewell"), ("WDA_WhipJimClyburn_001.mp4", "JamesClyburn"),
])
def test_hdtf_speaker_strips_digits_and_applies_aliases(name, speaker):
    assert hdtf_speaker(name) == speaker


def test_user_alias_file_extends_the_table(tmp_path):
    (tmp_path / "aliases.txt").write_text("# name speaker\nSenatorBob2 RobertSmith\n")
    table = read_alias_file(tmp_path / "aliases.txt")
    assert hdtf_speaker("SenatorBob0", table) == "RobertSmith"
    assert hdtf_speaker("WhipJimClyburn", table) == "JamesClyburn"


def test_hdtf_long_videos_split_clips_and_problems(tmp_path):
    (tmp_path / "WRA_annotion_time.txt").write_text(
        "Radio11.mp4 00:30-01:00 01:30-02:30\nRadio12.mp4 00:00-00:10 00:20-00:30\nRadio13.mp4 00:00-00:05\n"
        "Radio14.mp4 00:10-00:05\n")
    (tmp_path / "WRA_crop_wh.txt").write_text("Radio11_1.mp4 483 390 0 390\nRadio12_0.mp4 10 20 30 40\n")
    (tmp_path / "WRA_resolution.txt").write_text("Radio11.mp4 1080\nRadio12.mp4 720\n")
    touch(tmp_path / "long" / "Radio11.mp4")
    touch(tmp_path / "clips" / "Radio12_0.mp4")
    touch(tmp_path / "clips" / "Radio12_1.mp4")
    touch(tmp_path / "Stray3.mp4")
    items = {it.source_id: it for it in list_hdtf(tmp_path)}
    r11 = items["hdtf/WRA/Radio11_1"]
    assert (r11.start, r11.end, r11.annotation_height) == (90.0, 150.0, 1080)
    assert r11.crop_window == (483.0, 0.0, 390.0, 390.0)
    assert r11.path.endswith("long/Radio11.mp4") and items["hdtf/WRA/Radio11_0"].start == 30.0
    r12 = items["hdtf/WRA/Radio12_0"]
    assert (r12.start, r12.end, r12.path.endswith("Radio12_0.mp4")) == (0.0, None, True)
    assert r12.crop_window == (10.0, 30.0, 20.0, 40.0)
    assert items["hdtf/WRA/Radio13_0"].problem == "missing_video"
    assert items["hdtf/WRA/Radio14_0"].problem.startswith("bad_annotation")
    assert items["hdtf/unannotated/Stray3"].problem == "no_annotation"
    assert {it.speaker for it in items.values()} == {"Radio", "Stray"}


def test_crop_window_rescaled_to_download_and_clamped():
    window = scale_window((483.0, 0.0, 390.0, 390.0), 1080, 720)
    assert window == pytest.approx((322.0, 0.0, 260.0, 260.0))
    assert clamp_window((1100.0, -20.0, 300.0, 800.0), 1280, 720) == (1100.0, 0.0, 180.0, 720.0)
    assert scale_window((10, 20, 30, 40), None, 720) == (10.0, 20.0, 30.0, 40.0)


def test_voxceleb2_layout_official_split_and_non_utf8_names(tmp_path):
    touch(tmp_path / "dev" / "mp4" / "id00012" / "21Uxsk56VDQ" / "00001.mp4")
    touch(tmp_path / "dev" / "aac" / "id00012" / "21Uxsk56VDQ" / "00001.m4a")
    touch(os.fsencode(tmp_path) + b"/dev/mp4/id00013/caf\xe9/00002.mp4")
    touch(tmp_path / "test" / "mp4" / "id00500" / "abc" / "00003.mp4")
    touch(tmp_path / "dev" / "mp4" / "stray.mp4")
    items = {it.source_id: it for it in list_voxceleb2(tmp_path)}
    assert set(items) == {"voxceleb2/dev/id00012/21Uxsk56VDQ/00001", "voxceleb2/dev/id00013/caf\\xe9/00002",
                          "voxceleb2/test/id00500/abc/00003"}
    first = items["voxceleb2/dev/id00012/21Uxsk56VDQ/00001"]
    assert (first.speaker, first.split, first.video) == ("id00012", "train", "21Uxsk56VDQ_00001")
    assert first.audio_path.endswith("00001.m4a")
    latin = items["voxceleb2/dev/id00013/caf\\xe9/00002"]
    assert "non_utf8_name" in latin.notes and Path(latin.path).exists()
    assert items["voxceleb2/test/id00500/abc/00003"].split == "test"


def test_avspeech_rows_find_whole_and_cut_videos_and_report_missing(tmp_path):
    (tmp_path / "avspeech_train.csv").write_text(
        "AvWWVOgaMlk,90.000000,93.566667,0.586250,0.311111\n"
        "a_b-c1,12.500000,16.000000,0.5,0.4\n"
        "gone0000000,1.000000,4.000000,0.5,0.5\n"
        "broken,row\n")
    (tmp_path / "avspeech_test.csv").write_text("TeStId00001,3.000000,9.000000,0.5,0.5\n")
    touch(tmp_path / "v" / "AvWWVOgaMlk.mp4")
    touch(tmp_path / "v" / "a_b-c1_12.500000_16.000000.mp4")
    touch(tmp_path / "v" / "TeStId00001.mp4")
    items = list_avspeech([tmp_path / "avspeech_train.csv", tmp_path / "avspeech_test.csv"], tmp_path / "v")
    by_id = {it.source_id: it for it in items}
    whole = by_id["avspeech/AvWWVOgaMlk_90.000_93.567"]
    assert (whole.start, whole.end, whole.speaker) == (90.0, 93.566667, "AvWWVOgaMlk")
    assert whole.face_hint == (0.58625, 0.311111)
    cut = by_id["avspeech/a_b-c1_12.500_16.000"]
    assert (cut.start, cut.end, cut.path.endswith("a_b-c1_12.500000_16.000000.mp4")) == (0.0, None, True)
    assert by_id["avspeech/gone0000000_1.000_4.000"].problem == "missing_video"
    assert by_id["avspeech/avspeech_train.csv:4"].problem.startswith("bad_csv_row")
    assert by_id["avspeech/TeStId00001_3.000_9.000"].split == "test"


def test_a_repeated_avspeech_row_is_listed_once_and_its_repeats_are_skipped_with_a_reason(tmp_path):
    row = "AvWWVOgaMlk,90.000000,93.566667,0.586250,0.311111\n"
    (tmp_path / "avspeech_train.csv").write_text(row + "a_b-c1,12.5,16.0,0.5,0.4\n" + row)
    (tmp_path / "avspeech_test.csv").write_text(row)  # the same clip in the test list: never in two splits
    touch(tmp_path / "v" / "AvWWVOgaMlk.mp4")
    items = list_avspeech([tmp_path / "avspeech_train.csv", tmp_path / "avspeech_test.csv"], tmp_path / "v")
    ids = [it.source_id for it in items]
    assert len(ids) == len(set(ids)) == 4  # one manifest record each
    clip = [it for it in items if it.source_id == "avspeech/AvWWVOgaMlk_90.000_93.567"]
    assert len(clip) == 1 and clip[0].problem is None and clip[0].split == "train"
    repeats = {it.source_id: it.problem for it in items if it.problem}
    assert repeats["avspeech/avspeech_train.csv:3"] == ("duplicate_row: avspeech_train.csv:3 repeats "
                                                        "avspeech_train.csv:1")
    assert repeats["avspeech/avspeech_test.csv:1"].startswith("duplicate_row: avspeech_test.csv:1 repeats "
                                                              "avspeech_train.csv:1 (listed in the train split")


def test_speaker_splits_are_disjoint_seeded_and_cover_val_and_test(tmp_path):
    (tmp_path / "RD_annotion_time.txt").write_text(
        "".join(f"Speaker{chr(65 + s)}{k}.mp4 00:00-00:05 00:10-00:15\n" for s in range(10) for k in range(3)))
    for s in range(10):
        for k in range(3):
            touch(tmp_path / f"Speaker{chr(65 + s)}{k}.mp4")

    def splits(seed):
        items = list_hdtf(tmp_path)
        assign_speaker_splits(items, seed, 0.2, 0.1)
        out: dict[str, set[str]] = {}
        for it in items:
            out.setdefault(it.speaker, set()).add(it.split)
        return out

    first = splits(0)
    assert all(len(v) == 1 for v in first.values()), "a speaker spans two splits"
    counts = {name: sum(v == {name} for v in first.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 2, "test": 1}
    assert splits(0) == first
    assert any(splits(seed) != first for seed in (1, 2, 3))


def test_clip_windows_cut_segments_and_drop_short_rests():
    opts = PrepareOptions(clip_seconds=2.0, min_clip_seconds=1.0)
    assert clip_windows(30.0, 35.5, opts) == [(30.0, 32.0), (32.0, 34.0), (34.0, 35.5)]
    assert clip_windows(30.0, 34.5, opts) == [(30.0, 32.0), (32.0, 34.0)]
    assert clip_windows(0.0, 0.5, opts) == []
    assert clip_windows(3.0, 9.0, PrepareOptions(clip_seconds=0)) == [(3.0, 9.0)]


def test_shard_ranges_partition_the_sources():
    ids = [f"voxceleb2/dev/id{i:05d}/x/00001" for i in range(200)]
    parts = [{s for s in ids if in_range(s, (i, 3))} for i in range(3)]
    assert sum(len(p) for p in parts) == 200 and set().union(*parts) == set(ids)
    assert all(len(p) > 30 for p in parts)
    assert parse_shard_range("1/4") == (1, 4) and parse_shard_range(None) is None
    for bad in ("4/4", "x", "1-2"):
        with pytest.raises(ValueError):
            parse_shard_range(bad)


def test_hdtf_finds_the_release_download_scripts_names(tmp_path):
    (tmp_path / "WDA_annotion_time.txt").write_text(
        "AdamSchiff.mp4 00:05-04:40\nBarackObama.mp4 00:02-02:25 03:00-06:45\n")
    touch(tmp_path / "_videos_raw" / "WDA_AdamSchiff.mp4")  # the long video, as `download.py` names it
    touch(tmp_path / "WDA_BarackObama_000.mp4")  # its cut clips: <G>_<name>_<kkk>.mp4
    touch(tmp_path / "WDA_BarackObama_001.mp4")
    items = {it.source_id: it for it in list_hdtf(tmp_path)}
    assert set(items) == {"hdtf/WDA/AdamSchiff_0", "hdtf/WDA/BarackObama_0", "hdtf/WDA/BarackObama_1"}
    assert not any(it.problem for it in items.values())
    assert items["hdtf/WDA/AdamSchiff_0"].path.endswith("WDA_AdamSchiff.mp4")
    assert (items["hdtf/WDA/AdamSchiff_0"].start, items["hdtf/WDA/AdamSchiff_0"].end) == (5.0, 280.0)
    clip = items["hdtf/WDA/BarackObama_1"]
    assert (clip.path.endswith("WDA_BarackObama_001.mp4"), clip.end, clip.speaker) == (True, None, "BarackObama")


def test_hdtf_bad_side_file_lines_are_reported_per_clip_not_raised(tmp_path):
    (tmp_path / "RD_annotion_time.txt").write_text(
        "\nRadio1.mp4 00:20-01:35\n\nRadio2.mp4 00:22-01:45\nRadio3.mp4 0:1\n")
    (tmp_path / "RD_crop_wh.txt").write_text("Radio1_0.mp4 483 390 0\nRadio2_0.mp4 10 20 30 40\n")
    (tmp_path / "RD_resolution.txt").write_text("Radio1.mp4 1080\nRadio2.mp4 1080p\n")
    for n in (1, 2, 3):
        touch(tmp_path / f"Radio{n}.mp4")
    items = {it.source_id: it for it in list_hdtf(tmp_path)}
    assert items["hdtf/RD/Radio1_0"].problem.startswith("bad_annotation: RD_crop_wh.txt:1: ")
    assert items["hdtf/RD/Radio2_0"].problem.startswith("bad_annotation: RD_resolution.txt:2: ")
    assert items["hdtf/RD/Radio3_0"].problem.startswith("bad_annotation: RD_annotion_time.txt:5: ")


def test_hdtf_clips_beside_their_long_video_are_not_reported_unannotated(tmp_path):
    (tmp_path / "RD_annotion_time.txt").write_text("Radio11.mp4 00:30-01:00 01:30-02:30\n")
    (tmp_path / "RD_annotation_time.txt").write_text("Radio11.mp4 00:30-01:00 01:30-02:30\n")  # a corrected copy
    for name in ("Radio11.mp4", "Radio11_0.mp4", "Radio11_1.mp4"):
        touch(tmp_path / name)
    items = list_hdtf(tmp_path)
    assert sorted(it.source_id for it in items) == ["hdtf/RD/Radio11_0", "hdtf/RD/Radio11_1"]
    assert all(it.path.endswith("Radio11.mp4") and it.problem is None for it in items)


def test_avspeech_split_by_file_name_word_and_a_byte_order_mark(tmp_path):
    (tmp_path / "avspeech_train_latest.csv").write_bytes(b"\xef\xbb\xbfAvWWVOgaMlk,90.000000,93.566667,0.5,0.3\n")
    (tmp_path / "AVSpeech_Test.csv").write_text("TeStId00001,3.000000,9.000000,0.5,0.5\n")
    touch(tmp_path / "v" / "AvWWVOgaMlk.mp4")
    touch(tmp_path / "v" / "TeStId00001.mp4")
    items = list_avspeech([tmp_path / "avspeech_train_latest.csv", tmp_path / "AVSpeech_Test.csv"], tmp_path / "v")
    assert [(it.speaker, it.split, it.problem) for it in items] == [("AvWWVOgaMlk", "train", None),
                                                                     ("TeStId00001", "test", None)]
