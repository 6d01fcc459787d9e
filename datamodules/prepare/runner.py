"""The preparation run: a bounded process pool over source items, writing resumable atomic shards.

``manifest`` keeps the record of each source and the shards; a re-run skips what is recorded, redoes what an
interrupt cut off, and tries again the sources whose video was missing.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from datamodules.prepare.listing import SourceItem, printable
from datamodules.prepare.manifest import ManifestShardWriter, part_suffix, read_manifests, reconcile
from datamodules.prepare.process import PrepareOptions, SourceResult, process_item
from datamodules.shards import ShardIndex

RETRIED_REASONS = {"missing_video", "internal_error", "worker_died"}
WORKER_DIED = ("a worker process died while this source was in flight (killed for memory? fewer --workers or a "
               "shorter --clip-seconds need less); tried again on the next run")


@dataclass
class RunSummary:
    """What one run did."""

    sources: int = 0
    already_done: int = 0
    written_sources: int = 0
    clips: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    dropped_clips: dict[str, int] = field(default_factory=dict)  # clips rejected from sources that were written
    kept_splits: int = 0  # items moved to the split their speaker has from an earlier run
    changed_retried: int = 0  # sources skipped by an earlier run whose files changed since (a corrupt file replaced)
    seconds: float = 0.0
    work_cpu_seconds: float = 0.0  # CPU time of the workers on the sources (excludes writing shards)
    interrupted: bool = False

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else 0.0


def parse_shard_range(text: str | None) -> tuple[int, int] | None:
    """``i/n`` (0 <= i < n) to (i, n); None for no range."""
    if not text:
        return None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as exc:
        raise ValueError(f"--shard-range {text!r} is not of the form i/n (e.g. 0/4)") from exc
    if not 0 <= i < n:
        raise ValueError(f"--shard-range {text!r}: need 0 <= i < n")
    return i, n


def in_range(source_id: str, shard_range: tuple[int, int] | None) -> bool:
    """Whether a source belongs to job ``i`` of ``n`` (a stable hash of its id)."""
    return shard_range is None or zlib.crc32(source_id.encode()) % shard_range[1] == shard_range[0]


def check_compatible(out: Path, dataset: str, options: PrepareOptions) -> None:
    """Refuse to add clips to an output folder prepared for another corpus, resolution or clip length (its index or
    the part index of any ``--shard-range`` job)."""
    ours = f"{dataset} at --resolution {options.resolution} --clip-seconds {options.clip_seconds:g}"
    for path in sorted(out.glob("index*.json")):
        index = ShardIndex.read(path, dataset)
        prepared = index.extra.get("prepare", {})
        if index.dataset != dataset:
            raise ValueError(f"{path} lists {index.dataset} clips; use another --out for {dataset}")
        held = (prepared.get("resolution", options.resolution), prepared.get("clip_seconds", options.clip_seconds))
        if held != (options.resolution, options.clip_seconds):
            raise ValueError(
                f"{path} lists clips prepared with --resolution {held[0]} --clip-seconds {held[1]:g}; "
                f"run again with those to resume, or use another --out for {ours}"
            )


class _Stop(BaseException):
    """Raised in the main process by SIGTERM: stop, keeping only complete shards."""


def _raise_stop(signum, frame):
    raise _Stop()


def run(items: list[SourceItem], out: str | Path, dataset: str, options: PrepareOptions, workers: int = 1,
        shard_size: int = 64, shard_range: tuple[int, int] | None = None, max_sources: int = 0,
        extra: dict | None = None, progress: bool = True) -> RunSummary:
    """Process ``items`` into shards under ``out``; resumable; returns the run's summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_compatible(out, dataset, options)
    records = read_manifests(out)
    writer = ManifestShardWriter(out, dataset, shard_size, part_suffix(shard_range), {"prepare": {
        **(extra or {}), "resolution": options.resolution, "clip_seconds": options.clip_seconds}})
    done = {k: r for k, r in records.items() if r["reason"] not in RETRIED_REASONS}
    dropped = reconcile(out, writer, {k for r in done.values() for k in r.get("keys", [])})
    done = {k: r for k, r in done.items() if dropped.isdisjoint(r.get("keys", []))}
    todo = [it for it in items if in_range(it.source_id, shard_range)]
    summary = RunSummary(sources=len(todo))
    changed = {it.source_id for it in todo if it.source_id in done and files_changed(done[it.source_id], it)}
    todo = [it for it in todo if it.source_id not in done or it.source_id in changed]
    summary.already_done, summary.changed_retried = summary.sources - len(todo), len(changed)
    todo = first_sources(todo, max_sources)
    summary.kept_splits = keep_speaker_splits(todo, records.values())
    items_by_id = {it.source_id: it for it in todo}
    start = time.time()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if main_thread else None
    try:
        # The pool forks before the progress bar starts its refresh thread.
        with _pool(workers) as pool, _Progress(len(todo), progress) as bar:
            for result in _results(todo, options, pool, workers):
                _record(writer, result, items_by_id[result.source_id], summary)
                summary.seconds = time.time() - start
                bar.update(summary)
        writer.close(write_index=True)
    except (KeyboardInterrupt, _Stop):
        summary.interrupted = True
        writer.close(write_index=False)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    summary.seconds = time.time() - start
    return summary


def first_sources(items: list[SourceItem], max_sources: int) -> list[SourceItem]:
    """The items up to the ``max_sources``-th one with a video to process (0: all). Listed problems on the way
    (a missing video, a bad row) are recorded without counting, so that repeated runs move on through the corpus
    even where its first rows' videos are missing (those are tried again on every run)."""
    if max_sources <= 0:
        return items
    chosen: list[SourceItem] = []
    videos = 0
    for item in items:
        if videos >= max_sources:
            break
        chosen.append(item)
        videos += item.problem is None
    return chosen


def keep_speaker_splits(items: list[SourceItem], records) -> int:
    """Give each item the split of its speaker's clips that earlier runs wrote, so that a re-run whose speaker set
    or split flags changed (more videos on disk, another --val-fraction) keeps the splits speaker-disjoint.
    Returns how many items changed split (each gets the note ``split_of_earlier_run``)."""
    earlier = {r.get("speaker"): r["split"] for r in records if r.get("keys")}
    moved = 0
    for item in items:
        split = earlier.get(item.speaker, item.split)
        if split != item.split:
            item.split = split
            item.notes.append("split_of_earlier_run")
            moved += 1
    return moved


def source_fingerprint(item: SourceItem) -> str:
    """Size and modification time of a source's files (its video and separate audio): what tells a replaced file."""
    parts = []
    for path in (item.path, item.audio_path):
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        parts.append(f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "-")
    return "/".join(parts)


def files_changed(record: dict, item: SourceItem) -> bool:
    """Whether a source an earlier run skipped has other files now (a corrupt video replaced by a good one), so
    that its skip no longer holds. Written sources stand (their clips are in shards); records without a
    fingerprint are from before it was kept."""
    return not record.get("keys") and "fingerprint" in record and record["fingerprint"] != source_fingerprint(item)


def _record(writer: ManifestShardWriter, result: SourceResult, item: SourceItem, summary: RunSummary) -> None:
    samples = [{k: v for k, v in sample.items() if k != "__split__"} for sample in result.samples]
    keys = [sample["__key__"] for sample in samples]
    record = {"source": result.source_id, "outcome": result.outcome, "reason": result.reason,
              "detail": result.detail[:2000], "split": result.split, "speaker": item.speaker,
              "path": printable(item.path)[0] if item.path else "", "keys": keys,
              "fingerprint": source_fingerprint(item),
              "clip_skips": result.clip_skips, "notes": result.notes, "cpu_seconds": round(result.cpu_seconds, 3),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    writer.write_source(samples, result.split, record)
    summary.work_cpu_seconds += result.cpu_seconds
    if keys:
        summary.written_sources += 1
        summary.clips += len(keys)
        for skip in result.clip_skips:
            summary.dropped_clips[skip["reason"]] = summary.dropped_clips.get(skip["reason"], 0) + 1
    else:
        summary.skipped[result.reason] = summary.skipped.get(result.reason, 0) + 1


def _pool(workers: int):
    """A pool of ``workers`` processes, or nothing for one worker (work in this process)."""
    return contextlib.nullcontext(None) if workers <= 1 else _Workers(workers)


class _Workers:
    """Worker processes forked from a server that has loaded the face models (``worker.py``) but runs nothing:
    forking the caller itself would copy OpenCV's thread pool in a state that deadlocks the child.

    A worker that dies (killed for memory, a crash in native code) fails the sources in flight, which are recorded
    as ``worker_died`` and tried again on the next run, and the pool is started again: the run never waits for a
    result that cannot come.
    """

    def __init__(self, workers: int):
        self.workers = workers
        self.context = get_context("forkserver")
        self.context.set_forkserver_preload(["datamodules.prepare.worker"])
        self.executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_worker_init)

    def submit(self, item: SourceItem, options: PrepareOptions) -> Future:
        return self.executor.submit(process_item, item, options)

    def map(self, func, *iterables, chunksize: int = 1) -> list:
        return list(self.executor.map(func, *iterables, chunksize=chunksize))

    def restart(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._start()

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.executor.shutdown(wait=True)
            return
        processes = list(getattr(self.executor, "_processes", {}).values())  # stop sources in flight now
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()


def _results(items: list[SourceItem], options: PrepareOptions, pool: _Workers | None, workers: int):
    """Results in completion order; at most ``2 * workers`` items in flight (bounded memory)."""
    if pool is None:
        for item in items:
            yield process_item(item, options)
        return
    queue = iter(items)
    flight: dict[Future, SourceItem] = {}
    while True:
        while len(flight) < 2 * workers and (item := next(queue, None)) is not None:
            flight[pool.submit(item, options)] = item
        if not flight:
            return
        finished, _ = wait(flight, timeout=1.0, return_when=FIRST_COMPLETED)
        results = [_outcome(future, flight.pop(future)) for future in finished]
        if any(result.reason == "worker_died" for result in results):
            rest = wait(list(flight)).done  # a broken pool fails every source in flight at once
            results += [_outcome(future, flight.pop(future)) for future in rest]
            pool.restart()
        yield from results


def _outcome(future: Future, item: SourceItem) -> SourceResult:
    try:
        return future.result()
    except BrokenProcessPool:
        return SourceResult(item.source_id, "skipped", "worker_died", WORKER_DIED, item.split, notes=list(item.notes))


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Progress:
    """A rich progress bar with clips/s and the skip count (silent when disabled)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.bar = total, enabled, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("sources"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[rate]:.2f} clips/s"),
                                TextColumn("skipped {task.fields[skipped]}"),
                                TimeElapsedColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("prepare", total=self.total, rate=0.0, skipped=0)
        return self

    def update(self, summary: RunSummary) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1, rate=summary.clips_per_second, skipped=sum(summary.skipped.values()))

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
