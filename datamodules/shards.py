"""Shard sets on disk: the writer (atomic shards + ``index.json``) and :class:`ShardIndex`.

Layout of a prepared corpus::

    <root>/index.json                 schema version, dataset, per-split shard list with sample counts
    <root>/<split>/<prefix>-000000.tar

A shard is written under a temporary name and renamed into place when complete, so an interrupted
writer never leaves a partial shard that a reader would take for a whole one.
"""
from __future__ import annotations

import json
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from common.errors import SeespeakerError
from common.files import atomic_path, atomic_write_text
from datamodules.sample import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, SPLITS, Clip, encode_clip

INDEX_NAME = "index.json"


class ShardSetError(SeespeakerError, FileNotFoundError):
    """A shard set that cannot be used as asked (missing, empty, wrong schema)."""


@dataclass
class ShardInfo:
    path: str  # relative to the index's folder
    count: int


@dataclass
class ShardIndex:
    """``index.json``: what a shard set holds, split by split."""

    dataset: str
    schema_version: int = SCHEMA_VERSION
    splits: dict[str, list[ShardInfo]] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def num_samples(self, split: str) -> int:
        return sum(s.count for s in self.splits.get(split, []))

    def corpus_version(self) -> int | None:
        """The version of the generator that wrote a synthetic corpus (None for a prepared real corpus, and for
        synthetic corpora written before versions were recorded)."""
        return (self.extra.get("synthetic") or {}).get("version")

    def shard_paths(self, root: str | Path, split: str) -> list[str]:
        """Absolute paths of a split's shards; a clear error for an unknown or empty split."""
        if split not in self.splits or not self.splits[split]:
            have = {k: len(v) for k, v in self.splits.items()}
            raise ShardSetError(
                f"shard set {root} has no shards for split {split!r} (it has {have}); "
                f"prepare that split or choose another with data.train_split / data.val_split"
            )
        return [str(Path(root) / s.path) for s in self.splits[split]]

    def add(self, splits: dict[str, list[ShardInfo]], extra: dict[str, Any] | None = None) -> None:
        """Merge shards (each path once, sorted) and extra entries into this index; stamp the time."""
        for split, infos in splits.items():
            known = {s.path for s in self.splits.get(split, [])}
            self.splits.setdefault(split, []).extend(s for s in infos if s.path not in known)
        self.splits = {k: sorted(v, key=lambda s: s.path) for k, v in self.splits.items() if v}
        self.extra.update(extra or {})
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def write(self, path: str | Path) -> Path:
        """Write this index to ``path`` atomically."""
        atomic_write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True))
        return Path(path)

    def save(self, root: str | Path) -> Path:
        return self.write(Path(root) / INDEX_NAME)

    @classmethod
    def read(cls, path: str | Path, dataset: str) -> ShardIndex:
        """The index file at ``path`` (a main or a part index), or an empty index of ``dataset`` if absent."""
        path = Path(path)
        return cls.from_raw(json.loads(path.read_text())) if path.exists() else cls(dataset)

    @classmethod
    def from_raw(cls, raw: dict[str, Any]) -> ShardIndex:
        splits = {k: [ShardInfo(**s) for s in v] for k, v in raw.get("splits", {}).items()}
        return cls(raw["dataset"], raw.get("schema_version", SCHEMA_VERSION), splits, raw.get("created", ""),
                   raw.get("extra", {}))

    @classmethod
    def load(cls, root: str | Path) -> ShardIndex:
        path = Path(root) / INDEX_NAME
        if not Path(root).exists():
            raise ShardSetError(
                f"shard set {root} does not exist; create it with `seespeaker prepare synthetic --out {root}` "
                f"or point data.root at a prepared corpus"
            )
        if not path.exists():
            raise ShardSetError(f"{path} is missing: {root} is not a prepared shard set (run `seespeaker prepare`)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ShardSetError(f"{path} is not valid JSON ({exc}); re-run `seespeaker prepare`") from exc
        version = raw.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ShardSetError(
                f"{path} has schema version {version}, this seespeaker reads versions "
                f"{', '.join(map(str, READABLE_SCHEMA_VERSIONS))}; re-run `seespeaker prepare` with this seespeaker"
            )
        return cls.from_raw(raw)


class ShardSetWriter:
    """Writes clips into per-split shards of at most ``shard_size`` samples and the index on close.

    Use as a context manager; ``close()`` writes ``index.json`` (merging with an existing index of the same
    dataset, so that parts written by separate jobs add up).
    """

    def __init__(self, root: str | Path, dataset: str, shard_size: int = 256, prefix: str = "shard",
                 extra: dict[str, Any] | None = None):
        self.root = Path(root)
        self.index_path = self.root / INDEX_NAME
        self.dataset = dataset
        self.shard_size = shard_size
        self.prefix = prefix
        self.extra = dict(extra or {})
        self._open: dict[str, tuple[wds.TarWriter, AbstractContextManager[Path], Path, int]] = {}
        self._next_number: dict[str, int] = {}
        self.written: dict[str, list[ShardInfo]] = {s: [] for s in SPLITS}

    def __enter__(self) -> ShardSetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(write_index=exc_type is None)

    def write(self, clip: Clip) -> None:
        split = clip.meta.split
        if split not in SPLITS:
            raise ValueError(f"clip {clip.key}: split {split!r} is not one of {SPLITS}")
        sample = encode_clip(clip)
        writer, target, final, count = self._open.get(split) or self._start_shard(split)
        writer.write(sample)
        count += 1
        self._open[split] = (writer, target, final, count)
        if count >= self.shard_size:
            self._finish_shard(split)

    def _start_shard(self, split: str) -> tuple[wds.TarWriter, AbstractContextManager[Path], Path, int]:
        number = self._next_number.get(split, 0)
        folder = self.root / split
        folder.mkdir(parents=True, exist_ok=True)
        while (folder / f"{self.prefix}-{number:06d}.tar").exists():
            number += 1
        self._next_number[split] = number + 1
        final = folder / f"{self.prefix}-{number:06d}.tar"
        target = atomic_path(final)
        return wds.TarWriter(str(target.__enter__())), target, final, 0

    def _finish_shard(self, split: str) -> None:
        writer, target, final, count = self._open.pop(split)
        writer.close()
        target.__exit__(None, None, None)  # renamed into place
        self.written[split].append(ShardInfo(str(final.relative_to(self.root)), count))

    def close(self, write_index: bool = True) -> ShardIndex | None:
        for split in list(self._open):
            if write_index:
                self._finish_shard(split)
            else:
                writer, target, _, _ = self._open.pop(split)
                writer.close()
                target.__exit__(GeneratorExit, GeneratorExit(), None)  # abandoned: the temporary file is removed
        if not write_index:
            return None
        return self.update_index()

    def update_index(self) -> ShardIndex:
        """Merge the shards written so far into the index at ``index_path`` (created when absent)."""
        index = ShardIndex.read(self.index_path, self.dataset)
        index.add(self.written, self.extra)
        index.write(self.index_path)
        return index
