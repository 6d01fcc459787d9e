"""`seespeaker prepare hdtf|voxceleb2|avspeech`: real videos (an animated real photo) in each corpus's layout."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from datamodules.prepare import align, faces, media  # noqa: E402
from datamodules.prepare import testmedia as tm  # noqa: E402
from datamodules.prepare.listing import SourceItem  # noqa: E402
from datamodules.prepare.process import PrepareOptions, process_item  # noqa: E402
from datamodules.sample import decode_clip  # noqa: E402
from datamodules.shards import ShardIndex  # noqa: E402
from trainer.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "prepare.md"
LANDMARK_MEAN_PX = 2.5  # mean landmark error on a 256 px frame with a ~90 px face
LANDMARK_P95_PX = 5.0


def read_clips(out: Path) -> dict:
    index = ShardIndex.load(out)
    clips = {}
    for split in index.splits:
        for url in index.shard_paths(out, split):
            for sample in wds.WebDataset(url, shardshuffle=False, empty_check=False):
                clip = decode_clip(sample)
                clips[clip.key] = clip
    return clips


def manifest(out: Path) -> dict:
    records = {}
    for path in sorted(out.glob("manifest*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            records.setdefault(record["source"], []).append(record)
    return records


def prepare(*args: str) -> int:
    return main(["prepare", *args, "--no-progress"])


def doc_commands(start: str, paths: dict[str, Path]) -> list[list[str]]:
    """The `seespeaker <start> ...` commands shown in docs/prepare.md, with its example paths replaced."""
    lines = [line for line in DOC.read_text().splitlines() if line.startswith(f"seespeaker {start}")]
    assert lines, f"docs/prepare.md shows no `seespeaker {start}` command"
    return [[str(paths.get(arg, arg)) for arg in shlex.split(line)[1:]] for line in lines]


def run_doc(start: str, paths: dict[str, Path]) -> None:
    for argv in doc_commands(start, paths):
        extra = ["--no-progress"] if argv[1] != "merge-index" else []
        assert main(argv + extra) == 0, argv


@pytest.fixture(scope="module")
def hdtf_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("hdtf")
    (root / "videos").mkdir()
    tm.write_video(root / "videos" / "AmyKlobuchar0.mp4", 3.0, seed=0)
    tm.write_video(root / "videos" / "AmyKlobuchar1.mp4", 3.0, seed=1)
    tm.write_video(root / "videos" / "WhipJimClyburn.mp4", 3.0, seed=2)
    tm.write_video(root / "videos" / "JamesClyburn1_0.mp4", 2.0, seed=3)
    tm.write_video(root / "videos" / "TerriSewell0.mp4", 2.0, seed=4)
    (root / "RD_annotion_time.txt").write_text(
        "AmyKlobuchar0.mp4 00:00-00:02\nAmyKlobuchar1.mp4 00:01-00:03\n"
        "WhipJimClyburn.mp4 00:00-00:02 00:02-00:09\nJamesClyburn1.mp4 00:00-00:02\n"
        "TerriSewell0.mp4 00:00-00:02\nTerriSewell1.mp4 00:00-00:02\n")
    (root / "RD_crop_wh.txt").write_text("AmyKlobuchar0_0.mp4 140 240 80 240\nWhipJimClyburn_0.mp4 100 200 20 250\n")
    (root / "RD_resolution.txt").write_text("AmyKlobuchar0.mp4 512\nWhipJimClyburn.mp4 256\n")
    return root


@pytest.fixture(scope="module")
def hdtf_out(hdtf_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("hdtf_out")
    run_doc("prepare hdtf", {"HDTF": hdtf_root, "data/hdtf": out})
    return out


@pytest.fixture(scope="module")
def vox_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox")
    mp4 = root / "dev" / "mp4"

    def video(rel, **kwargs):
        path = Path(os.fsdecode(mp4)) / rel if isinstance(rel, str) else Path(os.fsdecode(os.fsencode(mp4) + rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        if kwargs.pop("corrupt", False):
            path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + np.random.default_rng(0).bytes(4000))
            return path
        tm.write_video(path, 2.0, **kwargs)
        return path

    video("id00001/abcDEF12345/00001.mp4", seed=0)
    video("id00001/abcDEF12345/00002.mp4", seed=1)
    video(b"/id00002/caf\xe9/00001.mp4", seed=2)  # a Latin-1 (non-UTF-8) folder name
    video("id00003/noAudio0001/00001.mp4", audio=False)
    video("id00003/broken00001/00001.mp4", corrupt=True)
    video("id00004/noFace00001/00001.mp4", face=False)
    video("id00005/xyzXYZ12345/00001.mp4", seed=5)
    test = root / "test" / "mp4" / "id09999" / "tEsT0000001" / "00001.mp4"
    test.parent.mkdir(parents=True)
    tm.write_video(test, 2.0, seed=6)
    return root


@pytest.fixture(scope="module")
def avspeech_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("avspeech")
    videos = root / "videos"
    videos.mkdir()
    tm.write_video(videos / "AvWWVOgaMlk.mp4", 3.0, seed=0)
    tm.write_video(videos / "Vfr_Video01_1.000000_3.000000.mp4", 2.0, fps=30, vfr=True, seed=1)
    tm.write_video(videos / "TestVideo01.mp4", 2.0, seed=2)
    (root / "avspeech_train.csv").write_text(
        "AvWWVOgaMlk,0.500000,2.500000,0.500000,0.450000\n"
        "Vfr_Video01,1.000000,3.000000,0.500000,0.450000\n"
        "MissingVid1,10.000000,13.000000,0.400000,0.300000\n")
    (root / "avspeech_test.csv").write_text("TestVideo01,0.000000,2.000000,0.500000,0.450000\n")
    return root


@pytest.mark.parametrize("fps,vfr", [(25, False), (30, True)])
def test_face_found_and_landmarks_follow_the_animation(tmp_path, fps, vfr):
    path = tmp_path / "clip.mp4"
    tm.write_video(path, 2.0, fps=fps, vfr=vfr, seed=7)
    frames, stats = media.read_frames(str(path), 0.0, media.probe(str(path)).duration)
    assert stats["vfr"] == vfr
    track = faces.track_face(frames)
    assert track.found_fraction >= 0.95
    times = np.arange(len(frames)) / 25
    expected = np.stack([tm.expected_landmarks(t) for t in times])
    error = np.linalg.norm(track.landmarks - expected, axis=-1)
    assert np.nanmean(error) < LANDMARK_MEAN_PX
    assert np.nanpercentile(error, 95) < LANDMARK_P95_PX
    _, _, boxes, _ = align.align_clip(frames, faces.fill_gaps(track.landmarks), 256)
    assert align.max_jitter(boxes) < 0.02


def test_a_lost_face_is_found_again_where_it_was_last_not_where_the_hint_put_it():
    """AVSpeech's hint is the speaker's face centre in the clip's first frame. The speaker walks right; after a cut
    to black, another face stands where the speaker started: the track picks the speaker up again."""
    face = tm.base_face(128)
    frames = np.zeros((60, 192, 448, 3), np.uint8)
    speaker_x = [min(i, 24) * 256 // 24 for i in range(60)]
    for i in range(60):
        if 25 <= i < 50:
            continue  # the cut: no face, long enough for the track to count as lost
        frames[i, 32:160, speaker_x[i]:speaker_x[i] + 128] = face
        if i >= 50:
            frames[i, 32:160, 0:128] = face  # the other face, where the speaker stood at the start
    track = faces.track_face(frames, hint=(64.0, 96.0))
    centres = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
    assert all(abs(centres[i] - speaker_x[i] - 64) < 32 for i in (0, 15, 20))  # detection frames
    assert np.all(np.abs(centres[50:] - 320) < 32)  # the speaker, not the face at the hint


@pytest.mark.parametrize("video,options,reason", [
    (dict(seconds=2.0, face_until=0.8), {}, "track_lost"),
    (dict(seconds=0.6), {}, "too_short"),
    (dict(seconds=2.0, audio_seconds=1.0), {}, "av_length_mismatch"),
    (dict(seconds=1.2), {"min_face": 400.0}, "face_too_small"),
])
def test_quality_filters_skip_with_reasons(tmp_path, video, options, reason):
    path = tmp_path / "clip.mp4"
    tm.write_video(path, **video)
    item = SourceItem("test/clip", "voxceleb2", str(path), speaker="id00001", video="clip")
    result = process_item(item, PrepareOptions(clip_seconds=0, **options))
    assert (result.outcome, result.reason) == ("skipped", reason), result.detail
    assert not result.samples


def test_crop_jitter_stays_below_two_percent_for_jumpy_landmarks():
    rng = np.random.default_rng(0)
    base = tm.reference_landmarks()
    jumps = np.cumsum(rng.normal(0, 6, (100, 1, 2)), axis=0) + rng.normal(0, 2, (100, 68, 2))
    zoom = 1 + 0.2 * np.sin(np.arange(100) / 3)[:, None, None]
    marks = (base[None] - 128) * zoom + 128 + jumps
    boxes = align.square_boxes(align.clip_squares(marks.astype(np.float32)))
    assert align.max_jitter(boxes) < 0.02
    raw = align.square_boxes(np.stack([align.ffhq_square(m) for m in marks]))
    assert align.max_jitter(raw) > 0.05, "the raw landmarks should jump more than the crop"


def test_hdtf_clips_speakers_splits_and_crop_windows(hdtf_root, hdtf_out):
    clips = read_clips(hdtf_out)
    by_video = {c.meta.video: c for c in clips.values()}
    assert set(by_video) == {"AmyKlobuchar0_0", "AmyKlobuchar1_0", "WhipJimClyburn_0", "JamesClyburn1_0",
                             "TerriSewell0_0"}
    speakers = {v: c.meta.speaker for v, c in by_video.items()}
    assert speakers["AmyKlobuchar0_0"] == speakers["AmyKlobuchar1_0"] == "AmyKlobuchar"
    assert speakers["WhipJimClyburn_0"] == speakers["JamesClyburn1_0"] == "JamesClyburn"
    split_of = {}
    for clip in clips.values():
        assert split_of.setdefault(clip.meta.speaker, clip.meta.split) == clip.meta.split
    assert sorted(split_of.values()) == ["test", "train", "val"]
    cut = by_video["AmyKlobuchar1_0"]
    assert (cut.meta.start, cut.meta.end, cut.meta.num_frames) == (1.0, 3.0, 50)
    source = tm.speech(3.0, seed=1)[16000:48000]
    assert abs(len(cut.audio) - cut.meta.num_frames * 640) <= 640
    assert np.corrcoef(source[: len(cut.audio)], cut.audio[: len(source)])[0, 1] > 0.9
    assert by_video["AmyKlobuchar0_0"].meta.extra["crop_window"] == [70.0, 40.0, 120.0, 120.0]
    assert by_video["WhipJimClyburn_0"].meta.extra["crop_window"] == [100.0, 20.0, 156.0, 236.0]
    for clip in clips.values():
        assert clip.frames.shape[1:] == (256, 256, 3)
        assert align.max_jitter(np.asarray(clip.meta.extra["crop_boxes"])) < 0.02
        assert clip.meta.extra["face_tools"]["dlib"]
        inside = (clip.landmarks > 0) & (clip.landmarks < 256)
        assert inside.all()


def test_hdtf_manifest_reasons(hdtf_out):
    records = manifest(hdtf_out)
    last = {k: v[-1] for k, v in records.items()}
    assert last["hdtf/RD/WhipJimClyburn_1"]["reason"] == "annotation_past_end"
    assert last["hdtf/RD/TerriSewell1_0"]["reason"] == "missing_video"
    assert "crop_window_clamped" in last["hdtf/RD/WhipJimClyburn_0"]["notes"]
    assert sum(r["outcome"] == "written" for r in last.values()) == 5
    assert not list(hdtf_out.rglob("*.tmp*"))


def test_voxceleb2_official_split_and_bad_inputs(vox_root, tmp_path):
    out = tmp_path / "vox"
    [argv] = [a for a in doc_commands("prepare voxceleb2", {"VoxCeleb2": vox_root, "data/voxceleb2": out})
              if "--shard-range" not in a]
    assert main(argv + ["--no-progress"]) == 0
    last = {k: v[-1] for k, v in manifest(out).items()}
    assert last["voxceleb2/dev/id00003/noAudio0001/00001"]["reason"] == "no_audio"
    assert last["voxceleb2/dev/id00003/broken00001/00001"]["reason"] == "corrupt_video"
    assert last["voxceleb2/dev/id00004/noFace00001/00001"]["reason"] == "no_face"
    latin = last["voxceleb2/dev/id00002/caf\\xe9/00001"]
    assert latin["outcome"] == "written" and "non_utf8_name" in latin["notes"]
    clips = read_clips(out)
    assert len(clips) == 5
    splits = {c.meta.speaker: c.meta.split for c in clips.values()}
    assert splits["id09999"] == "test"
    assert "val" in splits.values() and "train" in splits.values()
    for clip in clips.values():
        assert abs(len(clip.audio) / 16000 - clip.meta.num_frames / 25) <= 1 / 25


def test_avspeech_rows_vfr_and_missing_videos(avspeech_root, tmp_path):
    out = tmp_path / "avs"
    run_doc("prepare avspeech", {"avspeech_train.csv": avspeech_root / "avspeech_train.csv",
                                 "avspeech_test.csv": avspeech_root / "avspeech_test.csv",
                                 "clips": avspeech_root / "videos", "data/avspeech": out})
    last = {k: v[-1] for k, v in manifest(out).items()}
    assert last["avspeech/MissingVid1_10.000_13.000"]["reason"] == "missing_video"
    vfr = last["avspeech/Vfr_Video01_1.000_3.000"]
    assert vfr["outcome"] == "written" and "vfr_resampled" in vfr["notes"]
    clips = {c.meta.speaker: c for c in read_clips(out).values()}
    assert clips["TestVideo01"].meta.split == "test" and clips["AvWWVOgaMlk"].meta.split == "train"
    assert clips["AvWWVOgaMlk"].meta.num_frames == 50 and clips["AvWWVOgaMlk"].meta.start == 0.5
    assert abs(clips["Vfr_Video01"].meta.num_frames - 50) <= 1
    assert clips["Vfr_Video01"].frames.shape[1:] == (512, 512, 3)
    for clip in clips.values():
        assert len(clip.audio) == clip.meta.num_frames * 640


def _index_matches_tars(out: Path) -> int:
    index = ShardIndex.load(out)
    total = 0
    for _split, infos in index.splits.items():
        for info in infos:
            with tarfile.open(out / info.path) as archive:
                assert len({m.name.split(".")[0] for m in archive.getmembers()}) == info.count
            total += info.count
    return total


def test_resume_after_interrupt_redoes_only_unfinished_sources(vox_root, tmp_path):
    out = tmp_path / "resume"
    args = ["voxceleb2", "--root", str(vox_root), "--out", str(out), "--clip-seconds", "0", "--shard-size", "1"]
    entry = "import sys; from trainer.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", entry, "prepare", *args, "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        lines = (out / "manifest.jsonl").read_text().splitlines() if (out / "manifest.jsonl").exists() else []
        if sum('"written"' in line for line in lines) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)
    first = manifest(out)
    assert 1 <= len(first) < 8, "the run should have been stopped midway"
    assert not list(out.rglob("*.tmp*"))
    assert prepare(*args) == 0
    records = manifest(out)
    assert all(len(v) == 1 for v in records.values()), "a completed source was processed again"
    assert len(records) == 8
    written = {k for v in records.values() for k in v[0]["keys"]}
    assert _index_matches_tars(out) == len(written) == 5


def test_a_skipped_source_whose_file_was_replaced_is_tried_again(vox_root, tmp_path, capsys):
    """A corrupt video that the user replaces with a good one is prepared on the next run; the sources whose
    records still hold are not redone."""
    root = tmp_path / "vox"
    shutil.copytree(vox_root, root)
    out = tmp_path / "out"
    args = ["voxceleb2", "--root", str(root), "--out", str(out), "--clip-seconds", "0"]
    assert prepare(*args) == 0
    broken = "voxceleb2/dev/id00003/broken00001/00001"
    assert manifest(out)[broken][-1]["reason"] == "corrupt_video"
    assert prepare(*args) == 0 and len(manifest(out)[broken]) == 1  # nothing changed: its skip stands
    tm.write_video(root / "dev" / "mp4" / "id00003" / "broken00001" / "00001.mp4", 2.0, seed=7)
    capsys.readouterr()
    assert prepare(*args) == 0
    assert "tried again: 1 source(s)" in capsys.readouterr().out
    records = manifest(out)
    assert records[broken][-1]["outcome"] == "written" and len(records[broken]) == 2
    assert all(len(v) == 1 for source, v in records.items() if source != broken)
    assert _index_matches_tars(out) == len({k for v in records.values() for k in v[-1]["keys"]})


def test_shard_range_jobs_and_merge_index(vox_root, tmp_path):
    out = tmp_path / "parts"
    paths = {"VoxCeleb2": vox_root, "data/parts": out}
    jobs = [a for a in doc_commands("prepare voxceleb2", paths) if "--shard-range" in a]
    assert len(jobs) == 2
    for argv in jobs:
        assert main(argv + ["--no-progress"]) == 0
    assert not (out / "index.json").exists()
    run_doc("prepare merge-index", paths)
    records = manifest(out)
    written = {k for v in records.values() for k in v[-1]["keys"]}
    assert _index_matches_tars(out) == len(written) == len(read_clips(out)) > 0
    assert main(["prepare", "merge-index", "--out", str(tmp_path / "empty")]) == 2
