"""`seespeaker evaluate` on a tiny synthetic corpus: mp4 videos scored as they are, the ground truth, FID with
cached real statistics, --compare, W&B, bad inputs, and the commands of docs/evaluate.md.

The sync expert here is the compact layout with random weights, exported as a stage file: an untrained expert does
not rank in-sync audio above swapped audio, so these tests assert the protocol and the bookkeeping (values equal a
direct LSE computation on the decoded videos, swapping the audio changes them, counts, hashes), not sync quality.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.media import read_mp4, write_mp4
from evaluation.fid import packaged_inception_path
from evaluation.lse import SyncClip, lse_scores
from lightning_modules.nets.syncnet import build_syncnet
from lightning_modules.stagefile import StageFiles
from lightning_modules.syncnet import SyncNetStage
from tests.integration.eval_world import evaluation_world, grey_pipeline
from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "evaluate.md"
FAST_FID = "name: fast_fid\nmetrics: [fid]\nsync_expert: project\nresolution: 64\nfid_frame_stride: 30\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A corpus with 2 test speakers x 2 clips of 30 frames, a random compact expert, and the test clips as mp4s."""
    world = evaluation_world(tmp_path_factory.mktemp("eval"), clip_size=64)
    root, clips = world["root"], world["clips"]
    in_sync, swapped = root / "in_sync", root / "swapped"
    for i, clip in enumerate(clips):
        write_mp4(in_sync / f"{clip.key}.mp4", clip.frames, clip.audio)
        write_mp4(swapped / f"{clip.key}.mp4", clip.frames, clips[(i + 1) % len(clips)].audio)
    return {**world, "in_sync": in_sync, "swapped": swapped}


def evaluate(world, out: Path, *args: str) -> dict:
    argv = ["evaluate", "--data", str(world["corpus"]), "--out", str(out), "--fid-cache", str(world["root"] / "fid"),
            *args]
    assert main(argv) == 0, argv
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def scored(world):
    common = ("--protocol", "synthetic", "--sync-expert", str(world["stages"] / "syncnet.safetensors"),
              "--metrics", "lse,csim,psnr,ssim", "--frame-stride", "10")
    root = world["root"]
    return {"in_sync": evaluate(world, root / "r_in_sync", "--videos", str(world["in_sync"]), *common),
            "swapped": evaluate(world, root / "r_swapped", "--videos", str(world["swapped"]), *common)}


def test_videos_are_scored_as_decoded_and_swapped_audio_changes_lse(world, scored):
    expert, _ = SyncNetStage.for_inference(StageFiles(world["stages"]))
    for name in ("in_sync", "swapped"):
        results = scored[name]
        paths = sorted(world[name].glob("*.mp4"))
        decoded = [(p.stem, *read_mp4(p)[:2]) for p in paths]
        direct = lse_scores(expert, [SyncClip(k, f, a) for k, f, a in decoded])
        assert results["metrics"]["lse_c"] == pytest.approx(direct.lse_c, rel=1e-5)
        assert results["metrics"]["lse_d"] == pytest.approx(direct.lse_d, rel=1e-5)
        for score in direct.clips:
            assert results["per_video"][score.key]["av_offset"] == score.offset
    a, b = scored["in_sync"]["per_video"], scored["swapped"]["per_video"]
    assert all(a[k]["lse_d"] != pytest.approx(b[k]["lse_d"], rel=1e-4) for k in a)
    assert all(a[k]["psnr"] == pytest.approx(b[k]["psnr"]) for k in a)  # same pictures, other speech


def test_results_json_records_the_protocol_hashes_and_counts(world, scored):
    results = scored["in_sync"]
    protocol, counts = results["protocol"], results["counts"]
    assert protocol["name"] == "synthetic" and protocol["crop_mode"] == "none"
    assert protocol["resize_mode"] == "tf1_bilinear" and protocol["fps"] == 25.0 and protocol["seed"] == 0
    assert protocol["sync_expert_sha256"] == sha256(world["stages"] / "syncnet.safetensors")
    assert "not comparable" in protocol["sync_expert_used"]
    assert (protocol["face_model"] == "dlib_face_recognition_resnet_model_v1"
            and len(protocol["face_model_sha256"]) == 64)
    assert counts == {"videos_found": 4, "videos_scored": 4, "videos_skipped": 0, "frames_scored": 120,
                      "clips_with_ground_truth": 4, "resampled": 0, "shard_samples_skipped": 0}
    for clip in world["clips"]:
        row = results["per_video"][clip.key]
        assert row["speaker"] == clip.meta.speaker and row["n_frames"] == 30
        assert row["csim_reference"] != clip.key  # another clip of the same speaker
        assert row["psnr"] > 30.0 and 0.9 < row["ssim"] <= 1.0  # H.264 at crf 18 of the ground truth
        assert row["sync_windows"] == 25
    assert 0.8 < results["metrics"]["csim"] <= 1.0
    md = (world["root"] / "r_in_sync" / "results.md").read_text()
    assert f"{results['metrics']['lse_c']:.4f}" in md and "Protocol `synthetic`" in md


def test_compare_prints_the_results_side_by_side(world, scored, capsys):
    assert main(["evaluate", "--compare", str(world["root"] / "r_in_sync"), str(world["root"] / "r_swapped")]) == 0
    out = capsys.readouterr().out
    lse_row = next(line for line in out.splitlines() if line.startswith("LSE-C"))
    assert f"{scored['in_sync']['metrics']['lse_c']:.4f}" in lse_row
    assert f"{scored['swapped']['metrics']['lse_c']:.4f}" in lse_row
    assert "not directly comparable" not in out


def test_fid_of_the_ground_truth_is_zero_and_the_real_statistics_are_cached(world, tmp_path):
    protocol = tmp_path / "fast_fid.yaml"
    protocol.write_text(FAST_FID)
    truth = evaluate(world, tmp_path / "gt", "--ground-truth", "--protocol", str(protocol))
    details = truth["details"]["fid"]
    assert details["n_real_frames"] == details["n_generated_frames"] == 4  # 4 clips x frame 0
    assert truth["metrics"]["fid"] == pytest.approx(0.0, abs=1e-3)
    assert Path(details["reference_stats"]).is_file()
    coded = evaluate(world, tmp_path / "mp4", "--videos", str(world["in_sync"]), "--protocol", str(protocol))
    assert coded["details"]["fid"]["reference_stats_reused"] is True
    assert coded["details"]["fid"]["reference_stats"] == details["reference_stats"]
    assert coded["metrics"]["fid"] > truth["metrics"]["fid"] + 1e-3  # H.264 changed the pixels
    assert coded["protocol"]["inception_sha256"] == sha256(packaged_inception_path())


def test_wandb_run_dir_gets_the_table_and_summary(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "wandb_id").write_text("evaltest1")
    evaluate(world, tmp_path / "out", "--ground-truth", "--protocol", "synthetic", "--metrics", "lse",
             "--sync-expert", str(world["stages"] / "syncnet.safetensors"), "--wandb-run-dir", str(run))
    (segment,) = (run / "wandb").glob("offline-run-*-evaltest1")
    exe = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(exe), "leet", "inspect", "--summary", "--json", str(segment)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "eval/lse_c" in out.stdout and "eval/per_video" in out.stdout
    assert json.loads((run / "results.json").read_text())["source"]["kind"] == "ground_truth"


@pytest.fixture(scope="module")
def bad_videos(world):
    folder = world["root"] / "bad"
    clip = world["clips"][0]
    write_mp4(folder / "no_audio.mp4", clip.frames[:10])
    write_mp4(folder / "short.mp4", clip.frames[:5], clip.audio[:5 * 640])
    thirty = clip.frames[np.minimum((np.arange(36) * 25 / 30).round().astype(int), 29)]
    write_mp4(folder / f"{clip.key}.mp4", thirty, clip.audio, fps=30)
    return folder


def test_bad_videos_are_skipped_counted_and_resampled_by_the_synthetic_protocol(world, bad_videos, tmp_path):
    results = evaluate(world, tmp_path / "bad", "--videos", str(bad_videos), "--protocol", "synthetic",
                       "--sync-expert", str(world["stages"] / "syncnet.safetensors"), "--metrics", "lse")
    reasons = {Path(s["video"]).name: s["reason"] for s in results["skipped"]}
    assert reasons["no_audio.mp4"] == "no audio track"
    assert "5 frames; LSE needs at least 6" in reasons["short.mp4"]
    key = world["clips"][0].key
    assert results["per_video"][key]["n_frames"] == 30
    assert results["per_video"][key]["notes"] == ["resampled 30 -> 25 fps (36 -> 30 frames)"]
    assert results["counts"]["videos_skipped"] == 2 and results["counts"]["resampled"] == 1


def test_the_default_protocol_refuses_no_audio_and_30_fps(world, bad_videos, tmp_path, capsys):
    for name, message in (("no_audio.mp4", "has no audio track"), (f"{world['clips'][0].key}.mp4", "is 30 fps")):
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        (folder / name).write_bytes((bad_videos / name).read_bytes())
        assert main(["evaluate", "--videos", str(folder), "--data", str(world["corpus"]), "--out",
                     str(tmp_path / "o"), "--syncnet-weights", "x.model"]) == 2
        err = capsys.readouterr().err
        assert message in err and name in err


def test_syncnet_weights_of_the_wrong_layout_list_the_mismatched_keys(world, tmp_path, capsys):
    wrong = tmp_path / "syncnet_v2.model"
    torch.save(build_syncnet("compact", embedding_dim=32, width=8).state_dict(), wrong)
    assert main(["evaluate", "--ground-truth", "--data", str(world["corpus"]), "--out", str(tmp_path / "o"),
                 "--metrics", "lse", "--syncnet-weights", str(wrong)]) == 2
    err = capsys.readouterr().err
    assert "does not match the official SyncNet layout" in err
    assert "missing: netcnnaud.5.weight" in err and "unexpected: " in err
    assert "wrong shape: netcnnaud.0.weight (8, 1, 3, 3) (expected (64, 1, 3, 3))" in err


def doc_commands(paths: dict[str, str]) -> list[list[str]]:
    """The `seespeaker evaluate` commands shown in docs/evaluate.md, with its example paths replaced."""
    text = DOC.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("seespeaker evaluate")]
    assert lines, "docs/evaluate.md shows no `seespeaker evaluate` command"
    return [[paths.get(arg, arg) for arg in shlex.split(line.split("#")[0])[1:]] for line in lines]


def test_the_commands_in_docs_evaluate_md_run(world, tmp_path):
    official = tmp_path / "syncnet_v2.model"
    torch.save(build_syncnet("official").state_dict(), official)
    paths = {"data/synthetic": str(world["corpus"]),
             "stages/syncnet.safetensors": str(world["stages"] / "syncnet.safetensors"),
             "generated/": str(world["in_sync"]), "weights/syncnet_v2.model": str(official),
             "weights/inception-2015-12-05.pt": str(packaged_inception_path()),
             **{f"eval/{n}": str(tmp_path / n) for n in ("gt", "ours", "official")}}
    commands = doc_commands(paths)
    assert len(commands) >= 4
    for argv in commands:
        assert main(argv) == 0, argv
    official_results = json.loads((tmp_path / "official" / "results.json").read_text())
    assert official_results["protocol"]["sync_expert_used"] == "official syncnet_v2"
    assert official_results["protocol"]["sync_expert_sha256"] == sha256(official)


def test_reference_crop_mode_crops_the_detected_face_and_is_recorded(world, tmp_path):
    protocol = tmp_path / "reference.yaml"
    protocol.write_text("name: reference_crop\nmetrics: [lse]\nsync_expert: project\ncrop_mode: reference\n")
    common = ("--ground-truth", "--max-clips", "1", "--sync-expert", str(world["stages"] / "syncnet.safetensors"))
    cropped = evaluate(world, tmp_path / "ref", *common, "--protocol", str(protocol))
    whole = evaluate(world, tmp_path / "whole", *common, "--protocol", "synthetic", "--metrics", "lse")
    assert cropped["details"]["lse"]["crop_mode"] == "reference_face_track"
    assert cropped["details"]["lse"]["face_detector"].startswith("dlib HOG")
    assert whole["details"]["lse"]["crop_mode"] == "whole_frame"
    assert list(cropped["per_video"]) == list(whole["per_video"])  # the same seeded clip
    # an untrained expert moves little with the crop; identical crops would give bit-identical scores
    assert cropped["metrics"]["lse_d"] != pytest.approx(whole["metrics"]["lse_d"], rel=1e-6)


def test_a_stages_folder_or_run_folder_supplies_the_project_expert(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"run:\n  stages_dir: {world['stages']}\n")
    for source in (world["stages"], run):
        results = evaluate(world, tmp_path / source.name, str(source), "--ground-truth", "--protocol", "synthetic",
                           "--metrics", "lse", "--max-clips", "1")
        assert results["details"]["lse"]["expert_path"] == str(world["stages"] / "syncnet.safetensors")


def test_a_stages_folder_is_generated_through_the_pipeline_adapter(world, tmp_path, monkeypatch):
    """A full tiny stage chain takes minutes to train, so a stand-in with TalkingFacePipeline's interface (grey
    frames, one per 640 samples of speech) exercises the adapter, the generated source and the scoring."""
    import evaluation.generation as adapter

    calls = []

    monkeypatch.setattr(adapter, "TalkingFacePipeline", grey_pipeline(calls))
    results = evaluate(world, tmp_path / "gen", str(world["stages"]), "--protocol", "synthetic",
                       "--metrics", "lse,psnr")
    assert results["source"]["kind"] == "generated" and results["source"]["stage_files"] == ["syncnet.safetensors"]
    assert sorted(results["per_video"]) == [c.key for c in world["clips"]]
    assert calls == [(len(c.audio), 0) for c in world["clips"]]
    for clip in world["clips"]:  # PSNR per frame of the grey frames against the ground truth, averaged
        mse = ((clip.frames.astype(np.float64) - 128) ** 2).mean(axis=(1, 2, 3)) / 255 ** 2
        assert results["per_video"][clip.key]["psnr"] == pytest.approx(np.mean(10 * np.log10(1 / mse)), rel=1e-4)


def test_a_stages_folder_without_the_generation_stages_is_a_clear_error(world, capsys):
    assert main(["evaluate", str(world["stages"]), "--data", str(world["corpus"]), "--protocol", "synthetic",
                 "--out", str(world["root"] / "none")]) == 2
    err = capsys.readouterr().err
    assert "missing stage file(s)" in err and "conre.safetensors" in err


def test_the_expert_free_sync_measure_ranks_real_speech_above_swapped_speech(world):
    """``--metrics mouth_sync`` needs no expert: the mouth dlib finds opens with its own speech's loudness, not with
    another clip's; the per-video rows hold each clip's values and the summary is their mean."""
    root = world["root"]
    runs = {name: evaluate(world, root / f"m_{name}", "--videos", str(world[name]), "--metrics", "mouth_sync")
            for name in ("in_sync", "swapped")}
    own, other = runs["in_sync"], runs["swapped"]
    assert set(own["metrics"]) == {"mouth_sync_face_rate", "mouth_sync_r", "mouth_sync_null", "mouth_sync_margin",
                                   "mouth_sync_truth_r"}
    assert own["metrics"]["mouth_sync_face_rate"] >= 0.9
    assert own["metrics"]["mouth_sync_r"] > other["metrics"]["mouth_sync_r"] + 0.3
    assert own["metrics"]["mouth_sync_truth_r"] > 0.7  # the corpus's stored opening of the same clip
    rows = [row["mouth_sync_r"] for row in own["per_video"].values()]
    assert own["metrics"]["mouth_sync_r"] == pytest.approx(np.mean(rows))
    assert own["metrics"]["mouth_sync_null"] is None  # 1.2 s clips: no one-second shift leaves a second (JSON null)
    assert "mouth-loudness r" in (root / "m_in_sync" / "results.md").read_text()


def test_videos_are_scored_without_shards_when_no_metric_needs_the_truth(world, tmp_path, capsys):
    expert = str(world["stages"] / "syncnet.safetensors")
    common = ["evaluate", "--videos", str(world["in_sync"]), "--protocol", "synthetic", "--sync-expert", expert]
    assert main([*common, "--metrics", "lse", "--out", str(tmp_path / "plain")]) == 0
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    with_truth = evaluate(world, tmp_path / "with_data", "--videos", str(world["in_sync"]), "--protocol", "synthetic",
                          "--sync-expert", expert, "--metrics", "lse")
    assert plain["metrics"] == pytest.approx(with_truth["metrics"])  # the shards change nothing LSE reads
    assert plain["counts"]["videos_scored"] == 4 and plain["details"]["lse"]["frames"] == "decoded"
    assert main([*common, "--metrics", "lse,fid", "--out", str(tmp_path / "fid")]) == 2
    err = capsys.readouterr().err
    assert "--data <test shards root> is required" in err and "fid" in err and "lse,mouth_sync" in err


def test_jpeg_extraction_scores_the_frames_the_reference_pipeline_reads(world, tmp_path):
    """--lse-frames jpeg runs the frames through ffmpeg's default JPEG extraction before the expert: the scores
    move, by what the direct computation on round-tripped frames gives."""
    from evaluation.jpeg import jpeg_roundtrip

    expert = str(world["stages"] / "syncnet.safetensors")
    base = ["evaluate", "--videos", str(world["in_sync"]), "--protocol", "synthetic", "--sync-expert", expert,
            "--metrics", "lse"]
    assert main([*base, "--lse-frames", "jpeg", "--out", str(tmp_path / "jpeg")]) == 0
    results = json.loads((tmp_path / "jpeg" / "results.json").read_text())
    assert results["details"]["lse"]["frames"] == "jpeg"
    model, _ = SyncNetStage.for_inference(StageFiles(world["stages"]))
    decoded = [(p.stem, *read_mp4(p)[:2]) for p in sorted(world["in_sync"].glob("*.mp4"))]
    direct = lse_scores(model, [SyncClip(k, jpeg_roundtrip(f), a) for k, f, a in decoded])
    plain = lse_scores(model, [SyncClip(k, f, a) for k, f, a in decoded])
    assert results["metrics"]["lse_d"] == pytest.approx(direct.lse_d, rel=1e-5)
    assert direct.lse_d != pytest.approx(plain.lse_d, rel=1e-6)
