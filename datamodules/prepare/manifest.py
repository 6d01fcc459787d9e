"""The manifest and the shards it vouches for: which sources are done, and the state an interrupted run left.

Every source item gets one manifest line (``manifest.jsonl``, or ``manifest-pIIIofNNN.jsonl`` for a
``--shard-range`` job): outcome ``written`` (with its sample keys) or ``skipped`` with a reason. All clips of a
source go into one shard (a shard closes between sources, once it holds ``shard_size`` clips or more), and a
written source is recorded when that shard has been renamed into place; so a run that is interrupted loses at
most the sources of its open shards, and a re-run redoes exactly those.
"""
from __future__ import annotations

import json
import os
import re
import tarfile
from pathlib import Path

from common.files import temporary_sibling
from datamodules.shards import INDEX_NAME, ShardIndex, ShardInfo, ShardSetWriter

PART_INDEX_GLOB = "index-p*.json"


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
        _end_cut_line(self.manifest)

    def write_source(self, samples: list[dict], split: str, record: dict) -> None:
        """Write all clips of one source into the open shard of ``split`` and record the source once that shard is
        complete (a source without clips is recorded now). A shard never holds part of a source, so a shard
        renamed into place holds only sources that are recorded."""
        if not samples:
            self._append([record])
            return
        writer, target, final, count = self._open.get(split) or self._start_shard(split)
        for sample in samples:
            writer.write(sample)
        self._open[split] = (writer, target, final, count + len(samples))
        self.pending.setdefault(split, []).append(record)
        if count + len(samples) >= self.shard_size:
            self._finish_shard(split)

    def _finish_shard(self, split: str) -> None:
        writer, _, final, _ = self._open[split]
        writer.close()
        with open(temporary_sibling(final), "rb") as fh:
            os.fsync(fh.fileno())  # on disk before the rename and the manifest line that vouch for it
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


def _end_cut_line(manifest: Path) -> None:
    """End a last line cut short by a kill, so that the records appended after it stay readable."""
    if not manifest.exists() or manifest.stat().st_size == 0:
        return
    with open(manifest, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) != b"\n":
            fh.write(b"\n")


def reconcile(out: Path, writer: ManifestShardWriter, done_keys: set[str]) -> set[str]:
    """After an interrupt: drop temporary shards; adopt finished shards whose every key is recorded, drop others.

    Returns the keys of the dropped shards: a source recorded with one of them must be redone.
    """
    for tmp in out.glob(f"*/.{writer.prefix}-*.tmp.tar"):
        tmp.unlink()
    index = ShardIndex.read(writer.index_path, writer.dataset)
    listed = {s.path for infos in index.splits.values() for s in infos}
    own = re.compile(rf"{re.escape(writer.prefix)}-\d{{6}}\.tar")
    dropped: set[str] = set()
    for tar in sorted(out.glob(f"*/{writer.prefix}-*.tar")):
        rel = str(tar.relative_to(out))
        if rel in listed or not own.fullmatch(tar.name):
            continue
        try:
            with tarfile.open(tar) as archive:
                keys = {m.name.split(".", 1)[0] for m in archive.getmembers()}
        except (tarfile.TarError, OSError):
            keys = set()  # cut short (a crash before it reached the disk): its sources are redone
        if keys and keys <= done_keys:
            writer.written.setdefault(tar.parent.name, []).append(ShardInfo(rel, len(keys)))
        else:
            dropped |= keys
            tar.unlink()
    return dropped


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
