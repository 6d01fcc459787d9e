"""Writer -> shards -> reader: the schema round trip, rank/worker splitting, padding, and bad data counted."""
from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datamodules.config import DataConfig
from datamodules.pipeline import ClipStream, ClipWindow, shuffled, speaker_index
from datamodules.sample import Clip, ClipMeta, SampleError, decode_clip, make_key
from datamodules.shards import ShardIndex, ShardSetError, ShardSetWriter

RES, FRAMES = 32, 6


def make_clip(speaker: int, clip: int, split: str = "train") -> Clip:
    rng = np.random.default_rng(speaker * 100 + clip)
    frames = np.full((FRAMES, RES, RES, 3), 40 + 10 * speaker, np.uint8)
    frames[:, :, :, 1] = (np.arange(FRAMES) * 30)[:, None, None]
    marks = rng.uniform(0, RES, (FRAMES, 68, 2)).astype(np.float32)
    audio = (0.1 * np.sin(np.arange(FRAMES * 640) * 0.05 * (speaker + 1))).astype(np.float32)
    meta = ClipMeta("test", f"spk{speaker}", f"vid{clip}", clip, split, FRAMES, resolution=RES)
    return Clip(make_key("test", f"spk{speaker}", f"vid.{clip}", clip), frames, audio, marks, meta)


@pytest.fixture()
def shard_set(tmp_path) -> Path:
    with ShardSetWriter(tmp_path, "test", shard_size=3) as writer:
        for speaker in range(4):
            for clip in range(3):
                writer.write(make_clip(speaker, clip, "val" if speaker == 3 else "train"))
    return tmp_path


def window(**kw) -> ClipWindow:
    return ClipWindow.from_config(DataConfig(resolution=RES, clip_frames=2, audio_seconds=0.2, **kw))


def eval_keys(root: Path, split: str, rank: int, world: int, batch: int = 2, workers: int = 0) -> list[list[str]]:
    index = ShardIndex.load(root)
    counts = [s.count for s in index.splits[split]]
    stream = ClipStream(index.shard_paths(root, split), window(), batch, train=False, rank=rank, world_size=world,
                        shard_counts=counts)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [b["key"] for b in loader]


def test_round_trip_preserves_the_clip(shard_set):
    import webdataset as wds

    index = ShardIndex.load(shard_set)
    assert index.num_samples("train") == 9 and index.num_samples("val") == 3
    sample = next(iter(wds.WebDataset(index.shard_paths(shard_set, "val"), shardshuffle=False)))
    clip = decode_clip(sample)
    original = make_clip(3, 0, "val")
    assert clip.key == original.key and "." not in clip.key
    assert clip.meta == original.meta
    assert np.abs(clip.frames.astype(int) - original.frames).max() <= 3  # JPEG
    assert np.allclose(clip.landmarks, original.landmarks, atol=0.02)  # float16
    assert np.abs(clip.audio - original.audio).max() < 1e-4  # 16-bit FLAC


def test_two_ranks_read_disjoint_samples_and_the_same_batch_count(shard_set):
    per_rank = [eval_keys(shard_set, "train", r, 2) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    flat = [[k for batch in keys for k in batch if k] for keys in per_rank]
    assert not set(flat[0]) & set(flat[1])
    assert sorted(flat[0] + flat[1]) == sorted({k for f in flat for k in f}) and len(flat[0] + flat[1]) == 9


def test_workers_split_shards_and_every_sample_is_read_once(shard_set):
    keys = [k for batch in eval_keys(shard_set, "train", 0, 1, workers=2) for k in batch if k]
    assert len(keys) == 9 and len(set(keys)) == 9


def test_shorter_rank_is_padded_with_masked_samples(shard_set):
    index = ShardIndex.load(shard_set)
    counts = [s.count for s in index.splits["train"]]
    stream = ClipStream(index.shard_paths(shard_set, "train"), window(), 2, train=False, rank=1, world_size=2,
                        shard_counts=counts)
    batches = list(stream)
    valid = torch.cat([b["valid"] for b in batches])
    assert (~valid).sum() >= 1 and all(b["frames"].shape[0] == 2 for b in batches)


def test_the_shuffle_buffer_yields_after_a_batch_and_grows_to_its_size():
    read: list[int] = []

    def source():
        for i in range(200):
            read.append(i)
            yield i

    out = shuffled(source(), 40, 4, random.Random(0))
    first = next(out)
    assert len(read) == 4 and first in read  # a batch of samples read, not the whole buffer
    held = []
    taken = [first]
    for sample in out:
        taken.append(sample)
        held.append(len(read) - len(taken) + 1)  # in the buffer at this draw
    assert held[:3] == [5, 6, 7] and max(held) == 40  # grows by one per sample yielded, up to its size
    assert len(set(taken)) == len(taken) and taken != sorted(taken)


def test_training_stream_yields_exactly_the_requested_batches_of_windows(shard_set):
    index = ShardIndex.load(shard_set)
    stream = ClipStream(index.shard_paths(shard_set, "train"), window(), 4, train=True, batches=5, shuffle_buffer=4)
    batches = list(stream)
    assert len(batches) == 5
    b = batches[0]
    assert b["frames"].shape == (4, 2, 3, RES, RES) and b["frames"].min() >= -1 and b["frames"].max() <= 1
    assert b["landmarks"].shape == (4, 2, 68, 2) and b["audio"].shape == (4, 3200)
    start = int(b["frame_start"][0])
    green = (b["frames"][0, :, 1].mean(dim=(1, 2)) + 1) * 127.5
    assert torch.allclose(green, torch.tensor([30.0 * start, 30.0 * (start + 1)]), atol=4)


def test_same_seed_same_stream_other_rank_other_stream(shard_set):
    paths = ShardIndex.load(shard_set).shard_paths(shard_set, "train")

    def keys(rank: int, seed: int) -> list[str]:
        stream = ClipStream(paths, window(), 3, train=True, batches=3, shuffle_buffer=3, rank=rank, world_size=2,
                            seed=seed)
        return [k for b in stream for k in b["key"]]

    assert keys(0, 1) == keys(0, 1)
    assert keys(0, 1) != keys(1, 1)


def corrupt_member(tar_path: Path, suffix: str, data: bytes) -> None:
    """Rewrite one member (the first whose name ends with suffix) of a tar with other bytes."""
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    done = False
    with tarfile.open(tar_path, "w") as tf:
        for member, payload in members:
            if not done and member.name.endswith(suffix):
                payload, done = data, True
            member.size = len(payload)
            tf.addfile(member, io.BytesIO(payload))


def test_bad_samples_and_truncated_shards_are_skipped_and_counted(shard_set):
    paths = ShardIndex.load(shard_set).shard_paths(shard_set, "train")
    corrupt_member(Path(paths[0]), "audio.flac", b"not a flac file")
    corrupt_member(Path(paths[1]), "landmarks.npy", np.zeros((3, 3), np.float16).tobytes())
    corrupt_member(Path(paths[1]), "1-1.f0000.jpg", b"\xff\xd8 broken jpeg")
    data = Path(paths[2]).read_bytes()
    Path(paths[2]).write_bytes(data[: len(data) // 2])
    index = ShardIndex.load(shard_set)
    counts = [s.count for s in index.splits["train"]]
    gone = str(Path(paths[0]).with_name("gone.tar"))
    batches = list(ClipStream([*paths, gone], window(), 1, train=False, shard_counts=[*counts, 3]))
    read = sum(int(b["valid"].sum()) for b in batches)
    skipped = sum(int(b["skipped"]) for b in batches)
    assert read + skipped == 12 and skipped >= 6  # a failed shard counts as the samples not read from it
    assert read <= 6
    messages = [m for b in batches for m in b["skip_messages"]]
    assert len(messages) == skipped - 2  # one message for the missing shard's three samples
    assert any("shard-000002.tar" in m for m in messages) and any("gone.tar" in m for m in messages)
    assert any("test-spk" in m and "audio.flac is not readable" in m for m in messages)
    assert any("landmarks.npy" in m for m in messages) and any("not a decodable JPEG" in m for m in messages)


def test_frames_outside_the_window_are_never_decoded(shard_set):
    paths = ShardIndex.load(shard_set).shard_paths(shard_set, "val")
    corrupt_member(Path(paths[0]), "f0005.jpg", b"broken")
    counts = [3]
    batches = list(ClipStream(paths, window(), 1, train=False, shard_counts=counts))
    assert sum(int(b["skipped"]) for b in batches) == 0 and sum(int(b["valid"].sum()) for b in batches) == 3


def test_missing_and_empty_shard_sets_say_what_to_do(tmp_path, shard_set):
    with pytest.raises(ShardSetError, match="seespeaker prepare synthetic"):
        ShardIndex.load(tmp_path / "nowhere")
    with pytest.raises(ShardSetError, match="no shards for split 'test'"):
        ShardIndex.load(shard_set).shard_paths(shard_set, "test")


def test_writer_refuses_malformed_clips(tmp_path):
    clip = make_clip(0, 0)
    clip.landmarks = clip.landmarks[:, :10]
    with ShardSetWriter(tmp_path, "test") as writer, pytest.raises(SampleError, match="landmarks"):
        writer.write(clip)


def test_a_dead_loader_worker_is_reported_with_its_sample_key(shard_set, monkeypatch):
    from datamodules.datamodule import ReportingDataLoader

    index = ShardIndex.load(shard_set)
    counts = [s.count for s in index.splits["val"]]
    victim = make_clip(3, 1, "val").key
    monkeypatch.setenv("SEESPEAKER_FAULT_KILL_WORKER_AT", victim)
    stream = ClipStream(index.shard_paths(shard_set, "val"), window(), 1, train=False, shard_counts=counts)
    loader = ReportingDataLoader(stream, batch_size=None, num_workers=1)
    with pytest.raises(RuntimeError, match=f"DataLoader worker.*{victim}"):
        list(loader)


def drop_member(tar_path: Path, suffix: str) -> None:
    """Rewrite a tar without its first member whose name ends with suffix."""
    with tarfile.open(tar_path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    dropped = False
    with tarfile.open(tar_path, "w") as tf:
        for member, payload in members:
            if not dropped and member.name.endswith(suffix):
                dropped = True
                continue
            tf.addfile(member, io.BytesIO(payload))


def test_a_sample_missing_a_required_member_is_skipped_and_named(shard_set):
    paths = ShardIndex.load(shard_set).shard_paths(shard_set, "val")
    drop_member(Path(paths[0]), "meta.json")
    batches = list(ClipStream(paths, window(), 1, train=False, shard_counts=[3]))
    messages = [m for b in batches for m in b["skip_messages"]]
    assert sum(int(b["valid"].sum()) for b in batches) == 2
    assert len(messages) == 1 and "missing required member(s) ['meta.json']" in messages[0]


def test_a_shard_listed_but_missing_is_reported_counted_and_the_rest_is_read(shard_set):
    from datamodules.datamodule import ShardDataModule

    index = ShardIndex.load(shard_set)
    Path(index.shard_paths(shard_set, "train")[1]).unlink()
    data = ShardDataModule(DataConfig(root=str(shard_set), resolution=RES, clip_frames=2, audio_seconds=0.2,
                                      batch_size=2))
    data.setup()
    shards, counts = data.split_shards("train")
    assert len(shards) == 2 and counts == [3, 3] and len(data.missing_shards) == 1
    data.split_shards("train")
    assert len(data.missing_shards) == 1  # counted once however often the split is read
    for path in index.shard_paths(shard_set, "train"):
        Path(path).unlink(missing_ok=True)
    with pytest.raises(ShardSetError, match="none of the 3 train shards"):
        data.split_shards("train")


def test_speaker_parts_train_on_disjoint_speakers_that_cover_the_set(shard_set):
    paths = ShardIndex.load(shard_set).shard_paths(shard_set, "train")

    def speakers(part: tuple[int, int] | None) -> set[str]:
        stream = ClipStream(paths, window(), 3, train=True, batches=6, shuffle_buffer=2, speaker_part=part)
        return {s for b in stream for s in b["speaker"]}

    everyone = {"spk0", "spk1", "spk2"}
    expected = {part: {s for s in everyone if speaker_index("test", s) % 4 == part} for part in range(4)}
    used = [part for part in range(4) if expected[part]]
    assert len(used) >= 2
    seen = {part: speakers((part, 4)) for part in used}
    assert seen == {part: expected[part] for part in used}
    assert set().union(*seen.values()) == speakers(None) == everyone


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_a_malformed_speaker_part_is_a_config_error(text):
    errors = DataConfig(speaker_part=text).validate()
    assert any("data.speaker_part" in e and "'i/n'" in e for e in errors)


def test_schema_1_sets_are_read_without_motion_truth_and_unknown_schemas_are_refused(shard_set):
    """Schema 2 only added the optional motion_truth.npy: corpora prepared before it stay readable."""
    import json
    index_path = shard_set / "index.json"
    raw = json.loads(index_path.read_text())
    index_path.write_text(json.dumps({**raw, "schema_version": 1}))
    batch = next(iter(DataLoader(ClipStream(ShardIndex.load(shard_set).shard_paths(shard_set, "train"), window(),
                                            2, train=False), batch_size=None)))
    assert not batch["has_motion_truth"].any() and batch["motion_truth"].abs().sum() == 0
    index_path.write_text(json.dumps({**raw, "schema_version": 7}))
    with pytest.raises(ShardSetError, match="schema version 7.*reads versions 1, 2"):
        ShardIndex.load(shard_set)


def test_a_malformed_motion_truth_is_refused_on_writing_with_its_columns_named(tmp_path):
    clip = make_clip(0, 0)
    clip.motion_truth = np.zeros((FRAMES, 3), np.float32)
    with pytest.raises(SampleError, match="jaw, mouth, brow_raise"), ShardSetWriter(tmp_path, "test") as writer:
        writer.write(clip)
