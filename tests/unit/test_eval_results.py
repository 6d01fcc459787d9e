"""What a results document tells its reader: intervals over speakers, what was not computed or not readable and why,
the warnings, an earlier report kept, comparisons that flag every setting that moves a number, and a protocol that
cannot be scored refused up front."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.intervals import speaker_bootstrap
from evaluation.protocol import EvalProtocol
from evaluation.report import build_results, compare, markdown, write_results
from evaluation.sources import EvalVideo, VideoSet

LSE_C = {"a1": 6.0, "a2": 6.4, "b1": 8.0, "b2": 7.6, "c1": 5.0, "c2": 5.5}


def _results(protocol: EvalProtocol | None = None, lse_c: dict | None = None, source: dict | None = None,
             details: dict | None = None, not_computed: dict | None = None, unreadable: list | None = None) -> dict:
    lse_c = lse_c or LSE_C
    videos = VideoSet("videos", [EvalVideo(k, np.zeros((30, 8, 8, 3), np.uint8), np.zeros(19200), f"{k}.mp4")
                                 for k in lse_c], shard_skipped=unreadable or [])
    per_video = {k: {"n_frames": 30, "speaker": k[0], "lse_c": v, "csim": 0.5 if k[0] == "a" else float("nan")}
                 for k, v in lse_c.items()}
    scores = {"metrics": {"lse_c": float(np.mean(list(lse_c.values()))), "csim": 0.5}, "per_video": per_video,
              "details": details or {}, "not_computed": not_computed or {}}
    return build_results(scores, videos, protocol or EvalProtocol(), source or {"kind": "videos", "label": "ours"})


def test_intervals_resample_the_speakers_and_appear_in_the_table():
    results = _results()
    interval = results["intervals"]["lse_c"]
    expected = speaker_bootstrap(LSE_C, {k: k[0] for k in LSE_C}, seed=0)
    assert (interval["mean"], interval["low"], interval["high"]) == pytest.approx(expected)
    assert interval["mean"] == pytest.approx(results["metrics"]["lse_c"])
    assert interval["low"] < interval["mean"] < interval["high"] and interval["speakers"] == 3
    assert "csim" not in results["intervals"]  # one speaker has a finite CSIM: no zero-width interval
    md = markdown(results)
    assert f"| {results['metrics']['lse_c']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}] |" in md
    assert "95% percentile bootstrap intervals over test speakers" in md


def test_videos_without_a_speaker_count_as_speakers_of_their_own():
    results = _results(lse_c={"x": 1.0, "y": 2.0, "z": 4.0})
    for row in results["per_video"].values():
        row["speaker"] = ""
    interval = build_results({"metrics": {}, "per_video": results["per_video"], "details": {}},
                             VideoSet("videos", []), EvalProtocol(), {"kind": "videos"})["intervals"]["lse_c"]
    assert interval["speakers"] == 3 and interval["videos_without_speaker"] == 3


def test_what_was_not_computed_unreadable_or_warned_is_in_the_report():
    details = {"fid": {"n_generated_frames": 60, "n_real_frames": 60, "frame_stride": 1,
                       "warnings": ["FID real statistics have N=60 < 2048"]},
               "csim": {"model": "dlib", "n_frames": 40, "n_frames_without_face": 10, "n_videos_without_face": 1,
                        "videos_without_reference": ["z"]},
               "lse": {"videos_without_face": [{"video": "grey.mp4", "reason": "no face found in any frame"}]}}
    results = _results(details=details, not_computed={"psnr": "no video is paired with a test clip"},
                       unreadable=[{"video": "hdtf-s1-v1-0", "reason": "f0010.jpg is not a decodable JPEG"}])
    assert results["counts"]["shard_samples_skipped"] == 1 and results["not_computed"]["psnr"]
    md = markdown(results)
    assert "- psnr not computed: no video is paired with a test clip" in md
    assert "- unreadable in the shards: hdtf-s1-v1-0: f0010.jpg is not a decodable JPEG" in md
    assert "; 1 shard sample(s) unreadable." in md
    assert "- FID warning: FID real statistics have N=60 < 2048" in md
    assert "a face found in 30 of 40 frames (75.0%); 1 video(s) with no face, 1 without a reference face" in md
    assert "- LSE skipped grey.mp4: no face found in any frame" in md


def test_an_earlier_report_in_the_folder_is_kept(tmp_path):
    first = _results(lse_c={"a": 1.0, "b": 2.0})
    write_results(first, tmp_path)
    second = _results(lse_c={"a": 3.0, "b": 4.0})
    second["created"] = first["created"]  # two runs within one second: the copies get distinct names
    _, _, kept = write_results(second, tmp_path)
    _, _, kept_again = write_results(_results(lse_c={"a": 5.0, "b": 6.0}), tmp_path)
    assert json.loads(kept.read_text())["metrics"]["lse_c"] == 1.5
    assert kept.with_suffix(".md").read_text().startswith("| method |")
    assert json.loads(kept_again.read_text())["metrics"]["lse_c"] == 3.5 and kept_again != kept
    assert json.loads((tmp_path / "results.json").read_text())["metrics"]["lse_c"] == 5.5


def test_compare_flags_the_lse_frames_the_strides_and_the_test_set(tmp_path):
    source = {"kind": "videos", "split": "test", "test_set_sha256": "aa" * 32}
    write_results(_results(EvalProtocol(), source=source), tmp_path / "a")
    write_results(_results(EvalProtocol(lse_frames="jpeg", fid_frame_stride=10), source=source), tmp_path / "b")
    write_results(_results(EvalProtocol(), source={**source, "test_set_sha256": "bb" * 32}), tmp_path / "c")
    text = compare([tmp_path / "a", tmp_path / "b"])
    assert "protocol: lse_frames" in text and "protocol: fid_frame_stride" in text
    assert "not directly comparable" in text and "protocol: test_set" not in text
    assert "protocol: test_set" in compare([tmp_path / "a", tmp_path / "c"])


def test_a_protocol_scoring_lse_at_another_frame_rate_is_refused():
    errors = EvalProtocol(fps=30.0).validate()
    assert any("LSE is defined at 25 fps and 16000 Hz" in e for e in errors)
    assert EvalProtocol(fps=30.0, metrics=["fid", "csim"]).validate() == []
