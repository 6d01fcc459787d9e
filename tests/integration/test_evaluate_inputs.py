"""`seespeaker evaluate` on inputs that do not fit: a corrupt test clip, a video with no face for the reference crop,
too few frames for FID, videos paired with no test clip, a wrong source path; and what a generated row records of
the stage files it came from. Each is skipped and counted, or refused with a message that names it and what to do.
"""
from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from common.media import write_mp4
from datamodules.shards import ShardIndex
from tests.integration.eval_world import evaluation_world, grey_pipeline
from trainer.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """2 test speakers x 2 clips of 30 frames at 256 px, a random compact expert exported as a stage file."""
    return evaluation_world(tmp_path_factory.mktemp("eval_inputs"))


def run(world, out: Path, *args: str) -> int:
    return main(["evaluate", "--data", str(world["corpus"]), "--out", str(out), "--protocol", "synthetic",
                 "--sync-expert", str(world["stages"] / "syncnet.safetensors"), *args])


def test_too_few_frames_for_fid_leaves_fid_out_with_the_reason(world, tmp_path, capsys):
    args = ("--ground-truth", "--max-clips", "1", "--frame-stride", "30")
    assert run(world, tmp_path / "both", *args, "--metrics", "lse,fid") == 0
    results = json.loads((tmp_path / "both" / "results.json").read_text())
    assert "lse_c" in results["metrics"] and "fid" not in results["metrics"]
    reason = results["not_computed"]["fid"]
    assert "1 generated and 1 real frames at frame stride 30" in reason and "--frame-stride" in reason
    assert f"- fid not computed: {reason}" in (tmp_path / "both" / "results.md").read_text()
    assert run(world, tmp_path / "fid", *args, "--metrics", "fid") == 2
    assert "no metric could be computed: fid: 1 generated and 1 real frames" in capsys.readouterr().err


def _corrupt_one_frame(corpus: Path, target: Path, key: str) -> None:
    """A copy of the corpus in which frame 10 of ``key`` is not a JPEG (frame 0, read first, still is)."""
    shutil.copytree(corpus, target)
    for url in ShardIndex.load(target).shard_paths(target, "test"):
        with tarfile.open(url) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        with tarfile.open(url, "w") as tar:
            for member, data in members:
                data = b"not a jpeg" if member.name == f"{key}.f0010.jpg" else data
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def test_a_clip_that_does_not_decode_is_skipped_and_counted(world, tmp_path):
    bad = world["clips"][1].key
    _corrupt_one_frame(world["corpus"], tmp_path / "corpus", bad)
    out = tmp_path / "out"
    assert main(["evaluate", "--ground-truth", "--data", str(tmp_path / "corpus"), "--out", str(out), "--protocol",
                 "synthetic", "--sync-expert", str(world["stages"] / "syncnet.safetensors"), "--metrics", "lse"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert sorted(results["per_video"]) == sorted(c.key for c in world["clips"] if c.key != bad)
    assert results["counts"]["shard_samples_skipped"] == 1
    (entry,) = results["shard_skipped"]
    assert entry["video"] == bad and "f0010.jpg is not a decodable JPEG" in entry["reason"]
    assert f"- unreadable in the shards: {bad}: " in (out / "results.md").read_text()


def test_a_video_without_a_face_is_left_out_of_the_reference_crop_lse_and_counted(world, tmp_path):
    clip = world["clips"][0]
    videos = tmp_path / "videos"
    write_mp4(videos / f"{clip.key}.mp4", clip.frames, clip.audio)
    write_mp4(videos / "grey.mp4", np.full_like(clip.frames, 128), clip.audio)
    protocol = tmp_path / "reference.yaml"
    protocol.write_text("name: reference_crop\nmetrics: [lse]\nsync_expert: project\ncrop_mode: reference\n")
    assert run(world, tmp_path / "out", "--videos", str(videos), "--protocol", str(protocol)) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    (missed,) = results["details"]["lse"]["videos_without_face"]
    assert Path(missed["video"]).name == "grey.mp4" and "no face found" in missed["reason"]
    assert "lse_c" in results["per_video"][clip.key] and "lse_c" not in results["per_video"]["grey"]
    assert results["details"]["lse"]["n_clips"] == 1
    assert "- LSE skipped " in (tmp_path / "out" / "results.md").read_text()


def test_videos_paired_with_no_test_clip_say_why_psnr_is_missing_and_the_files_are_hashed(world, tmp_path):
    clip, videos = world["clips"][0], tmp_path / "videos"
    write_mp4(videos / "mine.mp4", clip.frames, clip.audio)
    assert run(world, tmp_path / "out", "--videos", str(videos), "--metrics", "lse,psnr") == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert "psnr" not in results["metrics"]
    assert "name the files <sample key>.mp4" in results["not_computed"]["psnr"]
    write_mp4(videos / "mine.mp4", clip.frames[::-1], clip.audio)  # the same name, other pictures
    assert run(world, tmp_path / "again", "--videos", str(videos), "--metrics", "lse") == 0
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert len(again["source"]["videos_sha256"]) == 64
    assert again["source"]["videos_sha256"] != results["source"]["videos_sha256"]


def test_wrong_sources_are_named_with_what_to_do(world, tmp_path, capsys):
    stage_file = world["stages"] / "syncnet.safetensors"
    assert run(world, tmp_path / "o", str(stage_file), "--ground-truth", "--metrics", "lse") == 2
    err = capsys.readouterr().err
    assert f"{stage_file} is a file" in err and "seespeaker export" in err
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(f"run:\n  stages_dir: {tmp_path / 'gone'}\n")
    assert run(world, tmp_path / "o", str(run_dir), "--ground-truth", "--metrics", "lse") == 2
    err = capsys.readouterr().err
    assert f"run.stages_dir {tmp_path / 'gone'}, which is not a folder" in err
    assert run(world, tmp_path / "o", "--videos", str(tmp_path / "nowhere"), "--metrics", "lse") == 2
    assert "nowhere: no such folder" in capsys.readouterr().err


def test_a_generated_row_records_the_stage_files_options_and_code(world, tmp_path, monkeypatch):
    """A stand-in with TalkingFacePipeline's interface (the full chain takes minutes to train) makes the videos."""
    import evaluation.generation as adapter

    monkeypatch.setattr(adapter, "TalkingFacePipeline", grey_pipeline([]))
    assert run(world, tmp_path / "gen", str(world["stages"]), "--metrics", "lse") == 0
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    stage_file = world["stages"] / "syncnet.safetensors"
    digest = hashlib.sha256(stage_file.read_bytes()).hexdigest()
    assert results["source"]["stage_sha256"] == {"syncnet.safetensors": digest}
    assert results["source"]["options"]["steps"] == 50 and results["source"]["data"] == str(world["corpus"])
    assert len(results["source"]["test_set_sha256"]) == 64
    assert results["provenance"]["git_commit"] and "torchmetrics" in results["provenance"]["packages"]


def test_a_clip_the_generator_cannot_take_is_skipped_and_counted(world, tmp_path, monkeypatch):
    import evaluation.generation as adapter

    monkeypatch.setattr(adapter, "TalkingFacePipeline", grey_pipeline([], fail_on_call=2))
    assert run(world, tmp_path / "gen", str(world["stages"]), "--metrics", "lse") == 0
    results = json.loads((tmp_path / "gen" / "results.json").read_text())
    failed = world["clips"][1].key  # the second clip in key order
    assert sorted(results["per_video"]) == sorted(c.key for c in world["clips"] if c.key != failed)
    assert results["skipped"] == [{"video": failed,
                                   "reason": f"generating {failed}: the speech is shorter than the motion window"}]
    assert results["counts"]["videos_found"] == 4 and results["counts"]["videos_skipped"] == 1
