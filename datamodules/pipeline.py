"""The shard reader: WebDataset tar streams -> decoded clip windows -> typed batches.

Training: shards resampled with a generator seeded per (seed, epoch, rank, worker); every rank yields the same
number of batches (``samples_per_epoch // batch_size``), so DDP and ZeRO-3 never wait on an uneven rank.
Evaluation: shards split by rank and worker so that each sample is read exactly once; every rank yields the
same number of batches, shorter ranks padded with masked (``valid=False``) samples.
Bad samples and unreadable shards are skipped and counted; the counts travel with the batches. A stream that
meets only failures for long (every shard unreadable) stops with :class:`ShardSetError` naming the data root.
"""
from __future__ import annotations

import itertools
import os
import random
import signal
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import tarfile_samples

from common.images import to_unit
from datamodules.config import DataConfig, SpeakerPart
from datamodules.sample import (
    MOTION_TRUTH_COLUMNS,
    SampleError,
    decode_audio,
    decode_frames,
    decode_landmarks,
    decode_meta,
    decode_motion_truth,
)
from datamodules.shards import ShardSetError
from datamodules.skips import SkipCounter

MAX_SAMPLES_OUTSIDE_PART = 100_000  # consecutive samples outside data.speaker_part before giving up


@dataclass(frozen=True)
class ClipWindow:
    """What one training sample holds: T frames at R px (+ optional high-res copies) and N audio samples."""

    frames: int
    resolution: int
    audio_samples: int
    hr_resolution: int = 0
    fps: float = 25.0
    sample_rate: int = 16000

    @classmethod
    def from_config(cls, data: DataConfig) -> ClipWindow:
        seconds = max(data.audio_seconds, data.clip_frames / data.fps)
        return cls(data.clip_frames, data.resolution, int(round(seconds * data.sample_rate)),
                   data.hr_resolution, data.fps, data.sample_rate)


def speaker_index(dataset: str, speaker: str) -> int:
    """A stable integer id of a speaker (CRC32 of dataset/speaker), the same on every rank and run."""
    return zlib.crc32(f"{dataset}/{speaker}".encode()) & 0x7FFFFFFF


def decode_window(sample: dict[str, Any], window: ClipWindow, start: int | None, draw: float = 0.0) -> dict[str, Any]:
    """Decode one clip window starting at ``start`` (clamped), or at ``draw`` in [0, 1) of the valid starts."""
    meta = decode_meta(sample)
    key = str(sample["__key__"])
    if abs(meta.fps - window.fps) > 1e-3:
        raise SampleError(key, f"clip is {meta.fps} fps, the config expects data.fps={window.fps}")
    if meta.num_frames < window.frames:
        raise SampleError(key, f"clip has {meta.num_frames} frames, the window needs {window.frames}")
    last = meta.num_frames - window.frames
    start = min(int(draw * (last + 1)), last) if start is None else min(start, last)
    indices = np.arange(start, start + window.frames)
    marks = decode_landmarks(sample, meta.num_frames)[indices] * (window.resolution / meta.resolution)
    audio = decode_audio(sample, window.sample_rate)
    first = int(round(start * window.sample_rate / window.fps))  # audio samples per frame follow the rates
    chunk = np.zeros(window.audio_samples, np.float32)
    piece = audio[first:first + window.audio_samples]
    chunk[: len(piece)] = piece
    out = {
        "key": key,
        "speaker": meta.speaker,
        "speaker_index": speaker_index(meta.dataset, meta.speaker),
        "frames": decode_frames(sample, indices, window.resolution),
        "landmarks": marks.astype(np.float32),
        "audio": chunk,
        "frame_start": start,
        "valid": True,
    }
    truth = decode_motion_truth(sample, meta.num_frames)
    out["has_motion_truth"] = truth is not None
    out["motion_truth"] = truth[indices] if truth is not None else np.zeros(
        (window.frames, len(MOTION_TRUTH_COLUMNS)), np.float32)
    if window.hr_resolution:
        out["hr_frames"] = decode_frames(sample, indices, window.hr_resolution)
    return out


def padding_sample(window: ClipWindow) -> dict[str, Any]:
    """A masked sample (``valid=False``) that evens out the batch counts of evaluation ranks."""
    r = window.resolution
    out = {"key": "", "speaker": "", "speaker_index": -1,
           "frames": np.zeros((window.frames, r, r, 3), np.uint8),
           "landmarks": np.zeros((window.frames, 68, 2), np.float32),
           "audio": np.zeros(window.audio_samples, np.float32), "frame_start": 0, "valid": False,
           "motion_truth": np.zeros((window.frames, len(MOTION_TRUTH_COLUMNS)), np.float32),
           "has_motion_truth": False}
    if window.hr_resolution:
        out["hr_frames"] = np.zeros((window.frames, window.hr_resolution, window.hr_resolution, 3), np.uint8)
    return out


def collate(samples: list[dict[str, Any]], skipped: tuple[int, list[str]] = (0, [])) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "key": [s["key"] for s in samples],
        "speaker": [s["speaker"] for s in samples],
        "speaker_index": torch.tensor([s["speaker_index"] for s in samples], dtype=torch.long),
        "frames": to_unit(np.stack([s["frames"] for s in samples])),
        "landmarks": torch.from_numpy(np.stack([s["landmarks"] for s in samples])),
        "audio": torch.from_numpy(np.stack([s["audio"] for s in samples])),
        "frame_start": torch.tensor([s["frame_start"] for s in samples], dtype=torch.long),
        "valid": torch.tensor([s["valid"] for s in samples], dtype=torch.bool),
        "motion_truth": torch.from_numpy(np.stack([s["motion_truth"] for s in samples])),
        "has_motion_truth": torch.tensor([s["has_motion_truth"] for s in samples], dtype=torch.bool),
        "skipped": torch.tensor(skipped[0], dtype=torch.long),
        "skip_messages": list(skipped[1]),
    }
    if "hr_frames" in samples[0]:
        batch["hr_frames"] = to_unit(np.stack([s["hr_frames"] for s in samples]))
    return batch


class WorkerProgress:
    """The key a loader worker is decoding, kept in a small file, so that a worker that dies can be named.

    ``SEESPEAKER_FAULT_KILL_WORKER_AT`` (a sample key) kills the worker there: the crash test uses it.
    """

    SIZE = 512

    def __init__(self, folder: str, rank: int, worker: int):
        self.path = os.path.join(folder, f"rank{rank}-worker{worker}.key") if folder else ""
        self.fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600) if self.path else -1
        self.kill_at = os.environ.get("SEESPEAKER_FAULT_KILL_WORKER_AT", "")

    def note(self, key: Any) -> None:
        if self.fd >= 0:
            os.pwrite(self.fd, str(key).encode()[: self.SIZE].ljust(self.SIZE), 0)
        if self.kill_at and str(key) == self.kill_at and get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def last_keys(folder: str) -> dict[str, str]:
        """{"rank0-worker1": key} of every worker that recorded a key in ``folder``."""
        out = {}
        for name in sorted(os.listdir(folder)) if folder and os.path.isdir(folder) else []:
            with open(os.path.join(folder, name), "rb") as fh:
                out[name.removesuffix(".key")] = fh.read().decode(errors="replace").strip()
        return out


def share(batches: int, worker: int, num_workers: int) -> int:
    """How many of ``batches`` round-robin batches come from ``worker`` (the DataLoader alternates workers)."""
    return batches // num_workers + (1 if worker < batches % num_workers else 0)


def worker_slot() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def shuffled(samples: Iterator[dict[str, Any]], size: int, initial: int,
             rng: random.Random) -> Iterator[dict[str, Any]]:
    """``samples`` through a shuffle buffer that starts yielding once it holds ``initial`` samples and then grows by
    one sample per sample yielded until it holds ``size`` (webdataset's ``shuffle(bufsize, initial)``): the first
    batch waits for a batch of samples, not for a paper-scale buffer of thousands per worker."""
    buffer: list[dict[str, Any]] = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) < size:
            buffer.extend(itertools.islice(samples, 1))
        if len(buffer) >= initial:
            yield buffer.pop(rng.randrange(len(buffer)))


class ClipStream(IterableDataset):
    """Batches of clip windows from a list of shards, for one rank (see the module docstring)."""

    def __init__(self, shards: list[str], window: ClipWindow, batch_size: int, *, train: bool, rank: int = 0,
                 world_size: int = 1, seed: int = 0, epoch: int = 0, batches: int = 0,
                 shard_counts: list[int] | None = None, shuffle_buffer: int = 256, skip_batches: int = 0,
                 progress_dir: str = "", speaker_part: tuple[int, ...] | None = None, root: str = ""):
        self.shards, self.window, self.batch_size, self.train = list(shards), window, batch_size, train
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.batches, self.shuffle_buffer, self.skip_batches = batches, shuffle_buffer, skip_batches
        self.progress_dir, self.speaker_part = progress_dir, speaker_part
        self.progress = WorkerProgress("", rank, 0)
        self.shard_counts = shard_counts or [0] * len(self.shards)
        self.root = root or (os.path.dirname(os.path.dirname(self.shards[0])) if self.shards else "")

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, num_workers = worker_slot()
        self.progress = WorkerProgress(self.progress_dir, self.rank, worker)
        counter = SkipCounter(self.root, dict(zip(self.shards, self.shard_counts, strict=True)))
        if self.train:
            yield from self._train_batches(worker, num_workers, counter)
        else:
            yield from self._eval_batches(worker, num_workers, counter)

    def _rng(self, worker: int) -> random.Random:
        return random.Random(hash((self.seed, self.epoch, self.rank, worker)) & 0xFFFFFFFF)

    @staticmethod
    def _samples(urls: Iterator[str], counter: SkipCounter) -> Iterator[dict[str, Any]]:
        for sample in tarfile_samples(counter.opening(urls), handler=counter.handler):
            counter.reading(sample)
            yield sample

    def _decode(self, sample: dict[str, Any], counter: SkipCounter, start: int | None,
                draw: float = 0.0) -> dict[str, Any] | None:
        """The sample's window, or None (counted) when it is bad."""
        self.progress.note(sample.get("__key__"))
        try:
            out = decode_window(sample, self.window, start, draw)
        except SampleError as exc:
            counter.add("sample", str(exc))
            return None
        counter.good()
        return out

    def _train_batches(self, worker: int, num_workers: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """Resampled, shuffled batches; the first ``skip_batches`` of the epoch are drawn but not decoded.

        Every random choice (shard, buffer slot, window start) comes from this worker's generator, so skipping
        reproduces the stream position of an interrupted epoch exactly (bad samples aside: a skipped slot is
        not decoded, so it cannot be found bad). The DataLoader takes batches from its workers in turn starting at
        worker 0, while batch ``skip_batches`` of the epoch belongs to worker ``skip_batches % num_workers``: worker
        w therefore plays that worker's part ``(w + skip_batches) % num_workers`` (its generator and its batches).
        """
        worker = (worker + self.skip_batches) % num_workers
        rng = self._rng(worker)
        urls = (rng.choice(self.shards) for _ in iter(int, 1))
        total, skip = share(self.batches, worker, num_workers), share(self.skip_batches, worker, num_workers)
        batch: list[dict[str, Any] | None] = []
        produced = 0
        samples = self._in_part(self._samples(urls, counter), counter)
        for raw in shuffled(samples, self.shuffle_buffer, min(self.shuffle_buffer, self.batch_size), rng):
            if produced >= total:
                return
            draw = rng.random()
            if produced < skip:
                counter.good()
                batch.append(None)
            elif (sample := self._decode(raw, counter, None, draw)) is None:
                continue
            else:
                batch.append(sample)
            if len(batch) == self.batch_size:
                if produced >= skip:
                    yield collate(batch, counter.take())
                batch, produced = [], produced + 1
        raise ShardSetError(f"training shards {self.shards[:3]}... yielded no readable samples")

    def _in_part(self, samples: Iterator[dict[str, Any]], counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """The samples whose speaker falls in ``speaker_part`` (i, n[, exclude]): stable speaker id mod n == i, or
        != i when excluded (``~i/n``)."""
        if self.speaker_part is None:
            yield from samples
            return
        part = SpeakerPart(*self.speaker_part)
        passed = 0
        for sample in samples:
            try:
                meta = decode_meta(sample)
            except SampleError as exc:
                counter.add("sample", str(exc))
                continue
            if part.holds(speaker_index(meta.dataset, meta.speaker)):
                passed = 0
                yield sample
            elif (passed := passed + 1) > MAX_SAMPLES_OUTSIDE_PART:
                raise RuntimeError(f"data.speaker_part={part}: no speaker of the training shards falls in "
                                   f"this part ({passed} samples in a row outside it); use fewer parts or ''")

    def _eval_shards(self, worker: int, num_workers: int) -> list[list[int]]:
        """Shard indices per (rank, worker): rank r takes shards r::world, its worker w every num_workers-th."""
        return [[i for i in range(len(self.shards)) if i % self.world_size == r][worker::num_workers]
                for r in range(self.world_size)]

    def _eval_batches(self, worker: int, num_workers: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """This worker's shards in order, padded to the batch count of the longest (rank, worker) and capped at its
        share of ``batches`` (the cap is the rank's, divided among its workers)."""
        per_rank = self._eval_shards(worker, num_workers)
        counts = [sum(self.shard_counts[i] for i in shards) for shards in per_rank]
        known = any(self.shard_counts)  # unknown counts: no padding past the last partial batch
        target = max(-(-c // self.batch_size) for c in counts) if known else sys.maxsize
        if self.batches:
            target = min(target, share(self.batches, worker, num_workers))
        produced, batch = 0, []
        samples = self._samples((self.shards[i] for i in per_rank[self.rank]), counter)
        while produced < target:
            sample = next(samples, None)
            if sample is None and not known and not batch:
                return
            if sample is not None and (sample := self._decode(sample, counter, 0)) is None:
                continue
            batch.append(sample or padding_sample(self.window))
            if len(batch) == self.batch_size:
                yield collate(batch, counter.take())
                produced, batch = produced + 1, []
