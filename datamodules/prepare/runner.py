"""The preparation run: a bounded process pool over source items, the manifest, resumable atomic shards.

Every source item gets one manifest line (``manifest.jsonl``, or ``manifest-pIIIofNNN.jsonl`` for a
``--shard-range`` job): outcome ``written`` (with its sample keys) or ``skipped`` with a reason. A written
source is recorded only once every shard holding its clips has been renamed into place, so a run that is
interrupted loses at most the sources of its open shards, and a re-run redoes exactly those. Sources whose
video was missing are tried again on each run.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import tarfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from datamodules.prepare.listing import SourceItem, printable
from datamodules.prepare.process import PrepareOptions, SourceResult, process_item
from datamodules.shards import INDEX_NAME, ShardIndex, ShardInfo, ShardSetError, ShardSetWriter

RETRIED_REASONS = {"missing_video", "internal_error"}
PART_INDEX_GLOB = "index-p*.json"


@dataclass
class RunSummary:
    """What one run did."""

    sources: int = 0
    already_done: int = 0
    written_sources: int = 0
    clips: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
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


def part_suffix(shard_range: tuple[int, int] | None) -> str:
    return "" if shard_range is None else f"-p{shard_range[0]:03d}of{shard_range[1]:03d}"


def read_manifests(out: Path) -> dict[str, dict]:
    """The last manifest record of each source, over every manifest file in ``out``."""
    records: dict[str, dict] = {}
    for path in sorted(out.glob("manifest*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interrupt: that source is redone
            records[record["source"]] = record
    return records


class ManifestShardWriter(ShardSetWriter):
    """A shard writer for pre-encoded samples that records sources in the manifest as their shards complete."""

    def __init__(self, root: Path, dataset: str, shard_size: int, suffix: str, extra: dict):
        super().__init__(root, dataset, shard_size, prefix=f"shard{suffix}", extra=extra)
        self.manifest = root / f"manifest{suffix}.jsonl"
        if suffix:  # a --shard-range job writes its own part index; merge-index combines them
            self.index_path = root / f"index{suffix}.json"
        self.pending: dict[str, list[dict]] = {}
        self.index_shards: set[str] = set()

    def write_sample(self, sample: dict, split: str) -> None:
        writer, target, final, count = self._open.get(split) or self._start_shard(split)
        writer.write(sample)
        self._open[split] = (writer, target, final, count + 1)
        if count + 1 >= self.shard_size:
            self._finish_shard(split)

    def add_source(self, record: dict, split: str | None) -> None:
        """Record a source now (no clips) or once the shard with its last clip is complete."""
        if split is None or split not in self._open:
            self._append([record])
        else:
            self.pending.setdefault(split, []).append(record)

    def _finish_shard(self, split: str) -> None:
        super()._finish_shard(split)
        self._append(self.pending.pop(split, []))
        self.update_index()

    def _append(self, records: list[dict]) -> None:
        if not records:
            return
        with open(self.manifest, "a") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def reconcile(out: Path, writer: ManifestShardWriter, done_keys: set[str]) -> None:
    """After an interrupt: drop temporary shards; adopt finished shards whose every key is recorded, drop others."""
    for tmp in out.glob(f"*/.{writer.prefix}-*.tmp.tar"):
        tmp.unlink()
    index = ShardIndex.read(writer.index_path, writer.dataset)
    listed = {s.path for infos in index.splits.values() for s in infos}
    own = re.compile(rf"{re.escape(writer.prefix)}-\d{{6}}\.tar")
    for tar in sorted(out.glob(f"*/{writer.prefix}-*.tar")):
        rel = str(tar.relative_to(out))
        if rel in listed or not own.fullmatch(tar.name):
            continue
        with tarfile.open(tar) as archive:
            keys = {m.name.split(".", 1)[0] for m in archive.getmembers()}
        if keys and keys <= done_keys:
            writer.written.setdefault(tar.parent.name, []).append(ShardInfo(rel, len(keys)))
        else:
            tar.unlink()


def check_compatible(out: Path, dataset: str, options: PrepareOptions) -> None:
    """Refuse to add clips to an output folder prepared for another corpus or resolution."""
    try:
        index = ShardIndex.load(out)
    except ShardSetError:
        return
    previous = index.extra.get("prepare", {})
    if index.dataset != dataset or previous.get("resolution", options.resolution) != options.resolution:
        raise ValueError(
            f"{out} already holds {index.dataset} clips at {previous.get('resolution')} px; "
            f"use another --out for {dataset} at {options.resolution} px"
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
    done = {k: r for k, r in read_manifests(out).items() if r["reason"] not in RETRIED_REASONS}
    todo = [it for it in items if in_range(it.source_id, shard_range)]
    summary = RunSummary(sources=len(todo))
    todo = [it for it in todo if it.source_id not in done]
    summary.already_done = summary.sources - len(todo)
    if max_sources > 0:
        todo = todo[:max_sources]
    writer = ManifestShardWriter(out, dataset, shard_size, part_suffix(shard_range),
                                 {"prepare": {**(extra or {}), "resolution": options.resolution}})
    reconcile(out, writer, {k for r in done.values() for k in r.get("keys", [])})
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


def _record(writer: ManifestShardWriter, result: SourceResult, item: SourceItem, summary: RunSummary) -> None:
    keys = [s["__key__"] for s in result.samples]
    for sample in result.samples:
        writer.write_sample({k: v for k, v in sample.items() if k != "__split__"}, result.split)
    record = {"source": result.source_id, "outcome": result.outcome, "reason": result.reason,
              "detail": result.detail[:2000], "split": result.split, "speaker": item.speaker,
              "path": printable(item.path)[0] if item.path else "", "keys": keys,
              "clip_skips": result.clip_skips, "notes": result.notes, "cpu_seconds": round(result.cpu_seconds, 3),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    writer.add_source(record, result.split if keys else None)
    summary.work_cpu_seconds += result.cpu_seconds
    if keys:
        summary.written_sources += 1
        summary.clips += len(keys)
    else:
        summary.skipped[result.reason] = summary.skipped.get(result.reason, 0) + 1


def _pool(workers: int):
    """A pool of ``workers`` processes, or nothing for one worker (work in this process).

    Workers come from a fork server that has loaded the face models (``worker.py``) but run nothing: forking
    the caller itself would copy OpenCV's thread pool in a state that deadlocks the child.
    """
    if workers <= 1:
        return contextlib.nullcontext(None)
    context = get_context("forkserver")
    context.set_forkserver_preload(["datamodules.prepare.worker"])
    return context.Pool(workers, initializer=_worker_init)


def _results(items: list[SourceItem], options: PrepareOptions, pool, workers: int):
    """Results in completion order; at most ``2 * workers`` items in flight (bounded memory)."""
    if pool is None:
        for item in items:
            yield process_item(item, options)
        return
    queue = iter(items)
    flight = []
    while True:
        while len(flight) < 2 * workers:
            item = next(queue, None)
            if item is None:
                break
            flight.append(pool.apply_async(process_item, (item, options)))
        if not flight:
            return
        ready = [r for r in flight if r.ready()]
        if not ready:
            flight[0].wait(0.05)
            continue
        for r in ready:
            flight.remove(r)
            yield r.get()


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


def merge_index(out: str | Path) -> ShardIndex:
    """Merge the part indexes of ``--shard-range`` jobs into ``index.json``; every listed shard must exist."""
    out = Path(out)
    parts = sorted(out.glob(PART_INDEX_GLOB))
    if not parts:
        raise ValueError(f"{out} holds no part indexes ({PART_INDEX_GLOB}); run prepare with --shard-range i/n first")
    merged = ShardIndex.read(out / INDEX_NAME, ShardIndex.read(parts[0], "").dataset)
    for part in parts:
        index = ShardIndex.read(part, merged.dataset)
        if index.dataset != merged.dataset:
            raise ValueError(f"{part} is a {index.dataset} index but {out} holds {merged.dataset}")
        merged.add(index.splits, index.extra)
    missing = [s.path for infos in merged.splits.values() for s in infos if not (out / s.path).exists()]
    if missing:
        raise ValueError(f"{len(missing)} shard(s) listed in part indexes are missing under {out}, e.g. {missing[0]}")
    merged.save(out)
    return merged
