"""Resuming `seespeaker prepare`: whatever point a run is stopped at (SIGTERM, a kill between two writes, a worker
killed for memory), the re-run ends with every clip of every source in the shard set exactly once; `--max-sources`
moves on through a corpus whose first videos are missing; a re-run over a grown corpus keeps speakers in one split."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from datamodules.prepare import testmedia as tm
from datamodules.prepare.listing import SourceItem, assign_speaker_splits
from datamodules.prepare.manifest import read_manifests
from datamodules.shards import ShardIndex
from trainer.cli import main

REPO = Path(__file__).resolve().parents[2]
ENTRY = "import sys; from trainer.cli import main; sys.exit(main())"
SECONDS = (2.0, 2.0, 5.0, 5.0, 5.0, 5.0)  # one speaker's utterances: 2 + 2 + 4 x 5 clips of 1 s


@pytest.fixture(scope="module")
def vox_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vox")
    for n, seconds in enumerate(SECONDS):
        path = root / "dev" / "mp4" / "id00001" / f"yt{n:09d}" / "00001.mp4"
        path.parent.mkdir(parents=True)
        tm.write_video(path, seconds, seed=n)
    return root


def vox_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["prepare", "voxceleb2", "--root", str(root), "--out", str(out), "--val-fraction", "0", "--no-progress",
            *extra]


def shard_keys(out: Path) -> list[str]:
    """The sample keys of every shard the index lists (a key twice means a clip written twice)."""
    keys: list[str] = []
    for infos in ShardIndex.load(out).splits.values():
        for info in infos:
            with tarfile.open(out / info.path) as archive:
                keys += sorted({m.name.split(".", 1)[0] for m in archive.getmembers()})
    return keys


def recorded_keys(out: Path) -> list[str]:
    return [k for record in read_manifests(out).values() for k in record["keys"]]


def assert_each_clip_once(out: Path, clips: int) -> None:
    keys = shard_keys(out)
    assert len(keys) == len(set(keys)), "a clip is in the shard set twice"
    assert sorted(keys) == sorted(recorded_keys(out)), "the shards and the manifest disagree"
    assert len(keys) == clips


def test_sigterm_mid_run_never_leaves_part_of_a_source_behind(vox_root, tmp_path):
    out = tmp_path / "out"
    args = vox_args(vox_root, out, "--clip-seconds", "1", "--shard-size", "3")
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    first = out / "train" / "shard-000000.tar"
    deadline = time.time() + 120
    while proc.poll() is None and not first.exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output  # stopped midway, after its first shard
    assert main(args) == 0
    assert_each_clip_once(out, clips=24)


def test_a_kill_between_two_manifest_lines_loses_no_source(vox_root, tmp_path):
    out = tmp_path / "out"
    args = vox_args(vox_root, out, "--clip-seconds", "0", "--shard-size", "2", "--max-sources", "2")
    assert main(args) == 0
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(shard_keys(out)) == 2
    # Killed after the shard was renamed and the first of its two records appended, before the index was written.
    (out / "manifest.jsonl").write_text(lines[0] + "\n")
    (out / "index.json").unlink()
    assert main(args) == 0
    assert_each_clip_once(out, clips=2)


def test_a_manifest_line_cut_by_a_kill_does_not_swallow_the_next_record(vox_root, tmp_path):
    out = tmp_path / "out"
    args = vox_args(vox_root, out, "--clip-seconds", "0", "--shard-size", "1", "--max-sources", "2")
    assert main(args) == 0
    manifest = out / "manifest.jsonl"
    first, second = manifest.read_text().splitlines()
    # Killed while appending the second source's record: its line is cut, its shard not yet in the index.
    manifest.write_text(f"{first}\n{second[: len(second) // 2]}")
    index = ShardIndex.load(out)
    index.splits["train"] = [s for s in index.splits["train"] if not s.path.endswith("shard-000001.tar")]
    index.save(out)
    assert main(args) == 0
    assert len(read_manifests(out)) == 3
    assert_each_clip_once(out, clips=3)
    assert main(args) == 0
    assert_each_clip_once(out, clips=5)


def worker_pids(parent: int) -> list[int]:
    """The grandchildren of ``parent``: the pool's workers (children of the fork server)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    return [pid for child in children.get(parent, []) for pid in children.get(child, [])]


def busy_worker(parent: int) -> int | None:
    """A worker in the middle of a source (it has a video open), if any."""
    for pid in worker_pids(parent):
        with contextlib.suppress(OSError):
            if any(os.readlink(fd).endswith(".mp4") for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
    return None


def test_a_worker_killed_for_memory_fails_its_sources_instead_of_hanging_the_run(vox_root, tmp_path):
    out = tmp_path / "out"
    args = vox_args(vox_root, out, "--clip-seconds", "1", "--shard-size", "4")
    proc = subprocess.Popen([sys.executable, "-c", ENTRY, *args, "--workers", "2"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        victim = None
        while proc.poll() is None and victim is None and time.time() < deadline:
            victim = busy_worker(proc.pid)
            time.sleep(0.01)
        assert victim is not None, "no worker was seen at work"
        os.kill(victim, signal.SIGKILL)
        output = proc.communicate(timeout=120)[0].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    died = [r for r in read_manifests(out).values() if r["reason"] == "worker_died"]
    assert died and "worker_died" in output
    assert main(vox_args(vox_root, out, "--clip-seconds", "1", "--shard-size", "4")) == 0
    assert_each_clip_once(out, clips=24)


def test_max_sources_moves_past_rows_whose_videos_are_missing(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    tm.write_video(videos / "HaveVideo01.mp4", 2.0, seed=1)
    tm.write_video(videos / "HaveVideo02.mp4", 2.0, seed=2)
    rows = [f"Missing0000{n},0.000000,2.000000,0.5,0.45" for n in range(3)]
    rows += ["HaveVideo01,0.000000,2.000000,0.5,0.45", "HaveVideo02,0.000000,2.000000,0.5,0.45"]
    (tmp_path / "avspeech_train.csv").write_text("\n".join(rows) + "\n")
    args = ["prepare", "avspeech", "--csv", str(tmp_path / "avspeech_train.csv"), "--videos", str(videos),
            "--out", str(tmp_path / "out"), "--clip-seconds", "0", "--val-fraction", "0", "--max-sources", "1",
            "--no-progress"]
    assert main(args) == 0 and main(args) == 0
    outcomes = sorted(r["reason"] or r["outcome"] for r in read_manifests(tmp_path / "out").values())
    assert outcomes == ["missing_video"] * 3 + ["written"] * 2


def splits_of(speakers: list[str], seed: int) -> dict[str, str]:
    items = [SourceItem(s, "voxceleb2", "", s, "v") for s in speakers]
    assign_speaker_splits(items, seed, 0.34)
    return {it.speaker: it.split for it in items}


def test_a_rerun_over_more_speakers_keeps_each_speaker_in_one_split(tmp_path):
    old, new = ["id00001", "id00002", "id00003"], ["id00004", "id00005", "id00006"]
    seed = next(s for s in range(100) if any(splits_of(old, s)[k] != splits_of(old + new, s)[k] for k in old))

    def utterance(speaker: str, n: int) -> None:
        path = tmp_path / "vox" / "dev" / "mp4" / speaker / f"yt{speaker}" / f"{n:05d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        tm.write_video(path, 1.2, seed=int(speaker[2:]) + 10 * n)

    args = ["prepare", "voxceleb2", "--root", str(tmp_path / "vox"), "--out", str(tmp_path / "out"),
            "--clip-seconds", "0", "--val-fraction", "0.34", "--split-seed", str(seed), "--no-progress"]
    for speaker in old:
        utterance(speaker, 1)
    assert main(args) == 0
    for speaker in old:
        utterance(speaker, 2)  # more of the same speakers arrive, and new speakers
    for speaker in new:
        utterance(speaker, 1)
    assert main(args) == 0
    splits: dict[str, set[str]] = {}
    records = read_manifests(tmp_path / "out").values()
    assert any("split_of_earlier_run" in record["notes"] for record in records)
    for record in records:
        assert record["outcome"] == "written", record
        splits.setdefault(record["speaker"], set()).add(record["split"])
    assert len(splits) == 6 and all(len(s) == 1 for s in splits.values()), splits
    assert {s for v in splits.values() for s in v} == {"train", "val"}


def test_a_rerun_with_another_clip_length_is_refused(vox_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(vox_args(vox_root, out, "--clip-seconds", "0", "--max-sources", "1")) == 0
    assert main(vox_args(vox_root, out, "--clip-seconds", "1", "--max-sources", "1")) == 2
    assert "prepared with --resolution 256 --clip-seconds 0" in capsys.readouterr().err
    assert len(recorded_keys(out)) == 1


def test_clips_dropped_from_written_sources_are_counted(tmp_path, capsys):
    path = tmp_path / "vox" / "dev" / "mp4" / "id00001" / "halfFace000" / "00001.mp4"
    path.parent.mkdir(parents=True)
    tm.write_video(path, 3.0, face_until=1.5)
    out = tmp_path / "out"
    assert main(vox_args(tmp_path / "vox", out, "--clip-seconds", "1.5")) == 0
    [record] = read_manifests(out).values()
    [skip] = record["clip_skips"]
    assert record["outcome"] == "written" and skip["clip"] == 1 and skip["reason"] in ("no_face", "track_lost")
    assert f"clips dropped from the sources written: {skip['reason']} 1" in capsys.readouterr().out


@pytest.mark.parametrize("flags,message", [
    (["--detect-every", "0"], "--detect-every 0: must be at least 1"),
    (["--shard-size", "0"], "--shard-size 0: must be at least 1"),
    (["--val-fraction", "1"], "--val-fraction 1: must be a fraction"),
])
def test_flags_that_would_fail_every_source_are_refused_up_front(vox_root, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(vox_args(vox_root, out, "--max-sources", "1", *flags)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_hdtf_flag_errors_name_the_flag(tmp_path, capsys):
    (tmp_path / "RD_annotion_time.txt").write_text("Radio1.mp4 00:00-00:02\n")
    base = ["prepare", "hdtf", "--root", str(tmp_path), "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(base + ["--aliases", str(tmp_path / "aliases.txt")]) == 2
    assert "--aliases" in capsys.readouterr().err
    assert main(base + ["--val-fraction", "0.5", "--test-fraction", "0.5"]) == 2
    assert "leave no speakers for train" in capsys.readouterr().err
