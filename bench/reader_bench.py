"""The shard reader against a naive baseline that decodes every frame of every clip (same process, one core).

Both read the same shards from one process with no workers (per core figures); the reader decodes only the
frames of its window (8 frames here, a video stage's window), the baseline decodes all frames then slices.
"""
from __future__ import annotations

import time

import torch
import webdataset as wds

from bench.common import bench_corpus, write_report
from datamodules.config import DataConfig
from datamodules.pipeline import ClipStream, ClipWindow
from datamodules.sample import decode_clip
from datamodules.shards import ShardIndex

WINDOW = 8
SECONDS = 8.0


def reader_rate(shards: list[str], resolution: int) -> tuple[float, float]:
    window = ClipWindow.from_config(DataConfig(resolution=resolution, clip_frames=WINDOW))
    stream = ClipStream(shards, window, batch_size=8, train=True, batches=10_000, shuffle_buffer=8)
    clips, start = 0, time.perf_counter()
    for batch in stream:
        clips += len(batch["key"])
        if time.perf_counter() - start > SECONDS:
            break
    elapsed = time.perf_counter() - start
    return clips / elapsed, clips * WINDOW / elapsed


def naive_rate(shards: list[str], resolution: int) -> tuple[float, float]:
    clips, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        for sample in wds.WebDataset(shards, shardshuffle=False):
            clip = decode_clip(sample, resolution)
            _ = torch.from_numpy(clip.frames[:WINDOW]).float()
            clips += 1
            if time.perf_counter() - start > SECONDS:
                break
    elapsed = time.perf_counter() - start
    return clips / elapsed, clips * WINDOW / elapsed


def main() -> None:
    torch.set_num_threads(1)
    root = bench_corpus()
    shards = ShardIndex.load(root).shard_paths(root, "train")
    rows = []
    for resolution in (64, 256):
        fast_clips, fast_frames = reader_rate(shards, resolution)
        slow_clips, slow_frames = naive_rate(shards, resolution)
        rows.append({"resolution": resolution, "reader_clips_s": round(fast_clips, 1),
                     "reader_frames_s": round(fast_frames, 1), "naive_clips_s": round(slow_clips, 1),
                     "naive_frames_s": round(slow_frames, 1), "speedup": round(fast_clips / slow_clips, 2)})
    write_report("reader", rows, list(rows[0]),
                 notes=f"one process, one thread, {WINDOW}-frame windows of 2 s (50-frame) clips; "
                       f"frames/s counts delivered frames")


if __name__ == "__main__":
    main()
