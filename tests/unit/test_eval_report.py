"""The evaluation's protocol files, results documents, comparison, frame resampling, reference crop and the
pipeline adapter."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from evaluation.facecrop import CROP_SIZE, crop_faces, smooth_track
from evaluation.generation import load_generator
from evaluation.protocol import EvalProtocol, with_overrides
from evaluation.report import ResultsReadError, build_results, compare, load_results, markdown, write_results
from evaluation.sources import EvalInputError, EvalVideo, VideoSet, choose, resample_frames
from trainer.config import ConfigError, load_group_file


def test_the_shipped_protocols_load_typed():
    default = load_group_file("eval", "default", EvalProtocol)
    assert (default.sync_expert, default.crop_mode, default.resize_mode) == ("official", "none", "tf1_bilinear")
    assert (default.fps_mismatch, default.missing_audio, default.fps) == ("refuse", "error", 25.0)
    synthetic = load_group_file("eval", "synthetic", EvalProtocol)
    assert (synthetic.sync_expert, synthetic.resolution, synthetic.csim_landmarks) == ("project", 0, "reference_clip")


@pytest.mark.parametrize("text, message", [
    ("crop_size: 3\n", "unknown key 'crop_size'"),
    ("crop_mode: tight\n", "eval.crop_mode='tight' is not one of none, reference"),
    ("metrics: [lse, mos]\n", "unknown metric 'mos'"),
    ("fid_frame_stride: 0\n", "eval.fid_frame_stride must be >= 1"),
])
def test_bad_protocol_files_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_group_file("eval", str(path), EvalProtocol)
    assert message in str(info.value) and str(path) in str(info.value)


def test_command_line_overrides_apply_and_are_validated():
    protocol = with_overrides(EvalProtocol(), {"metrics": ["lse"], "max_clips": 3, "syncnet_weights": None})
    assert protocol.metrics == ["lse"] and protocol.max_clips == 3 and protocol.syncnet_weights == ""
    with pytest.raises(ValueError, match="unknown metric 'lpips'"):
        with_overrides(EvalProtocol(), {"metrics": ["lpips"]})


def _results(crop_mode: str = "none", lse_c: float = 7.25) -> dict:
    videos = VideoSet("videos", [EvalVideo("a", np.zeros((30, 8, 8, 3), np.uint8), np.zeros(19200), "a.mp4"),
                                 EvalVideo("b", np.zeros((20, 8, 8, 3), np.uint8), np.zeros(12800), "b.mp4",
                                           notes=["resampled 30 -> 25 fps (24 -> 20 frames)"])],
                      skipped=[{"video": "c.mp4", "reason": "no audio track"}])
    scores = {"metrics": {"lse_c": lse_c, "lse_d": 6.5, "psnr": float("inf")},
              "per_video": {"a": {"n_frames": 30, "lse_c": lse_c, "psnr": float("inf")}, "b": {"n_frames": 20}},
              "details": {"lse": {"expert": "official syncnet_v2", "expert_weights_sha256": "ab" * 32}},
              "timing_s": {"lse": 1.0}}
    return build_results(scores, videos, EvalProtocol(crop_mode=crop_mode), {"kind": "videos", "label": "ours"})


def test_results_hold_values_protocol_hashes_and_counts(tmp_path):
    json_path, md_path, kept = write_results(_results(), tmp_path)
    assert kept is None  # nothing was there before
    results = json.loads(json_path.read_text())  # strict JSON: the infinite PSNR became null
    assert results["metrics"] == {"lse_c": 7.25, "lse_d": 6.5, "psnr": None}
    assert results["protocol"]["sync_expert_sha256"] == "ab" * 32 and results["protocol"]["crop_mode"] == "none"
    assert results["counts"] == {"videos_found": 3, "videos_scored": 2, "videos_skipped": 1, "frames_scored": 50,
                                 "clips_with_ground_truth": 0, "resampled": 1, "shard_samples_skipped": 0}
    md = md_path.read_text()
    assert "| ours | 7.2500 | 6.5000 | inf |" in md
    assert "- skipped c.mp4: no audio track" in md and "2 scored of 3 (1 skipped, 1 resampled), 50 frames" in md


def test_compare_puts_results_side_by_side_and_flags_protocol_differences(tmp_path):
    write_results(_results("none", 7.25), tmp_path / "a")
    write_results(_results("reference", 8.5), tmp_path / "b")
    text = compare([tmp_path / "a", tmp_path / "b/results.json"])
    lse = next(line for line in text.splitlines() if line.startswith("LSE-C"))
    assert lse.split()[-2:] == ["7.2500", "8.5000"]
    assert "protocol: crop_mode" in text and "not directly comparable" in text and "crop_mode" in text.splitlines()[-1]
    (tmp_path / "junk.json").write_text("{\"a\": 1}")
    with pytest.raises(ResultsReadError, match="not an evaluation results.json"):
        load_results(tmp_path / "junk.json")


def test_markdown_leaves_out_metrics_not_computed():
    results = _results()
    results["metrics"] = {"fid": 12.0}
    assert markdown(results).splitlines()[0] == "| method | FID ↓ |"


def test_30_fps_frames_resample_to_the_nearest_25_fps_frame():
    frames = np.arange(36)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    out = resample_frames(frames, 30.0, 25.0)
    assert len(out) == 30
    assert out[:, 0, 0, 0].tolist()[:7] == [0, 1, 2, 4, 5, 6, 7]  # frame i at i/25 s: nearest of k/30 s
    assert np.array_equal(resample_frames(frames, 25.0, 25.0), frames)


def test_clip_subsets_are_seeded():
    keys = [f"k{i}" for i in range(20)]
    assert choose(keys, 5, 0) == choose(keys, 5, 0) and len(choose(keys, 5, 0)) == 5
    assert choose(keys, 5, 0) != choose(keys, 5, 1)
    assert choose(keys, 0, 0) == sorted(keys)


def test_reference_track_fills_gaps_and_filters_out_a_jump():
    boxes = np.array([[10, 10, 30, 30]] * 20, float)
    boxes[5] = np.nan
    boxes[12] = [40, 40, 60, 60]  # one wrong detection
    size, cx, cy = smooth_track(boxes)
    assert np.allclose(size, 10) and np.allclose(cx, 20) and np.allclose(cy, 20)
    with pytest.raises(ValueError, match="no face found"):
        smooth_track(np.full((4, 4), np.nan))


def test_reference_crop_extends_below_the_face():
    frame = np.zeros((100, 100, 3), np.uint8)
    frame[40:60, 40:60] = 255  # the face box: centre (50, 50), half size 10
    crop = crop_faces(frame[None], np.array([10.0]), np.array([50.0]), np.array([50.0]), crop_scale=0.4)[0]
    assert crop.shape == (CROP_SIZE, CROP_SIZE, 3)
    rows = np.where(crop[:, CROP_SIZE // 2, 0] > 128)[0]  # crop spans y 40..68 (28 px): the face is rows 0..20
    assert rows.min() == 0 and abs(rows.max() - CROP_SIZE * 20 / 28) < 6


def test_pipeline_adapter_reports_missing_stage_files(tmp_path):
    with pytest.raises(EvalInputError, match="missing stage file"):
        load_generator(tmp_path)  # the real pipeline, an empty stages folder


def test_pipeline_adapter_seeds_each_clip_and_converts_float_frames(tmp_path, monkeypatch):
    import evaluation.generation as adapter

    class Pipeline:
        def __init__(self, stages_dir, options):
            self.options = options

        def portrait(self, speech, timings):
            return torch.full((3, 4, 4), float(self.options.seed))

        def video(self, portrait, speech, timings, advance):
            frames = portrait[None].expand(len(speech) // 640, -1, -1, -1) - 1.0
            return frames, frames

    monkeypatch.setattr(adapter, "TalkingFacePipeline", Pipeline)
    generate, info = load_generator(tmp_path)
    frames = generate(np.zeros(6400, np.float32), 1, "k")
    assert frames.shape == (10, 4, 4, 3) and frames.dtype == np.uint8 and (frames == 128).all()
    assert (generate(np.zeros(640 * 6, np.float32), 0, "k") == 0).all()
    assert info["pipeline"] == "generation.pipeline.TalkingFacePipeline"
