"""The order of a stream's batches across loader workers (a resumed epoch continues the uninterrupted order), the
validation cap shared by the workers, and the audio of a window aligned with its frames at any rates."""
from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import DataLoader

from datamodules.config import DataConfig
from datamodules.pipeline import ClipStream, ClipWindow, decode_window
from datamodules.sample import Clip, ClipMeta, encode_clip, make_key
from datamodules.shards import ShardIndex
from tests.unit.test_shards import FRAMES, RES, make_clip, shard_set, window  # noqa: F401  (the shard_set fixture)

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create")


def train_keys(root, workers: int, skip: int, batches: int = 8) -> list[tuple[str, ...]]:
    paths = ShardIndex.load(root).shard_paths(root, "train")
    stream = ClipStream(paths, window(), 2, train=True, seed=5, batches=batches, shuffle_buffer=4, skip_batches=skip)
    return [tuple(b["key"]) for b in DataLoader(stream, batch_size=None, num_workers=workers)]


@pytest.mark.parametrize("workers", [2, 3])
def test_a_resumed_epoch_continues_the_uninterrupted_batch_order(shard_set, workers):  # noqa: F811
    whole = train_keys(shard_set, workers, 0)
    assert len(whole) == 8 and len(set(whole)) > 1
    for skip in range(1, 8):
        assert train_keys(shard_set, workers, skip) == whole[skip:], f"resumed at batch {skip}"


def test_the_validation_cap_is_the_rank_s_shared_among_its_workers(shard_set):  # noqa: F811
    index = ShardIndex.load(shard_set)
    counts = [s.count for s in index.splits["train"]]
    paths = index.shard_paths(shard_set, "train")
    for workers, cap in [(0, 4), (2, 4), (2, 3), (3, 5)]:
        stream = ClipStream(paths, window(), 1, train=False, batches=cap, shard_counts=counts)
        batches = list(DataLoader(stream, batch_size=None, num_workers=workers))
        assert len(batches) == cap, (workers, cap)
        keys = [k for b in batches for k in b["key"] if k]
        assert len(set(keys)) == len(keys) == cap


def ramp_clip(fps: float, rate: int) -> dict:
    """A clip whose audio sample i holds i / 2**15 (exact in 16-bit FLAC), as the tar members of one sample."""
    clip = make_clip(0, 0)
    samples = int(round(FRAMES * rate / fps))
    audio = (np.arange(samples) / 2**15).astype(np.float32)
    meta = ClipMeta("test", "spk0", "vid", 0, "train", FRAMES, fps=fps, sample_rate=rate, resolution=RES)
    sample = encode_clip(Clip(make_key("test", "spk0", "vid", 0), clip.frames, audio, clip.landmarks, meta))
    return {"__key__": make_key("test", "spk0", "vid", 0), **sample}


@pytest.mark.parametrize("fps, rate", [(25.0, 16000), (25.0, 8000), (30.0, 16000), (24.0, 22050)])
def test_the_audio_of_a_window_starts_at_its_first_frame_at_any_rates(fps, rate):
    win = ClipWindow.from_config(DataConfig(resolution=RES, clip_frames=2, audio_seconds=0.05, fps=fps,
                                            sample_rate=rate))
    out = decode_window(ramp_clip(fps, rate), win, start=3)
    first = int(np.round(out["audio"][0] * 2**15))
    assert first == round(3 * rate / fps)  # the audio of frame 3 starts 3 frame durations in
    assert np.allclose(np.diff(out["audio"]) * 2**15, 1.0)
