"""Source items of each corpus as their users hold them on disk (layouts in shared/DATASETS.md).

A :class:`SourceItem` is one stretch of one video that becomes one or more clips: an HDTF annotated segment
(of a long video, or an already-split clip), a VoxCeleb2 utterance, or an AVSpeech CSV row. Items that
cannot be processed (a missing video, a video without annotation, a malformed row) are still listed, with
``problem`` set, so that the manifest reports them.
"""
from __future__ import annotations

import csv
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

# HDTF names of one person that differ beyond trailing digits (the documented case; extend with --aliases).
HDTF_ALIASES = {
    "WhipJimClyburn": "JamesClyburn",
}
TIME_FILE_SUFFIXES = ("_annotion_time.txt", "_annotation_time.txt")


@dataclass
class SourceItem:
    """One stretch of one video to turn into clips (or a listed input that cannot be used, with ``problem``)."""

    source_id: str
    dataset: str
    path: str
    speaker: str
    video: str
    split: str = "train"
    start: float = 0.0
    end: float | None = None  # None: to the end of the file
    crop_window: tuple[float, float, float, float] | None = None  # x, y, w, h in annotation pixels
    annotation_height: int | None = None  # frame height the crop window's numbers refer to
    face_hint: tuple[float, float] | None = None  # face centre, normalised to the frame
    audio_path: str | None = None  # separate audio file (VoxCeleb2 aac/), else the video's own track
    problem: str | None = None
    notes: list[str] = field(default_factory=list)


def printable(path: str | os.PathLike) -> tuple[str, bool]:
    """A file name safe for JSON and keys: bytes that are not UTF-8 shown as ``\\xNN``; and whether any were."""
    raw = os.fsencode(path)
    text = raw.decode("utf-8", "backslashreplace")
    try:
        raw.decode("utf-8")
        return text, False
    except UnicodeDecodeError:
        return text, True


def _item(source_id: str, dataset: str, path: Path | str, **kwargs) -> SourceItem:
    item = SourceItem(printable(source_id)[0], dataset, os.fsdecode(path), **kwargs)
    if path and printable(path)[1]:
        item.notes.append("non_utf8_name")
    return item


def parse_time(text: str) -> float:
    """``mm:ss`` or ``hh:mm:ss`` (seconds may have decimals) to seconds."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a time: {text!r}")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + float(part)
    return seconds


def parse_segment(text: str) -> tuple[float, float]:
    """``mm:ss-mm:ss`` to (start, end) seconds."""
    start, _, end = text.partition("-")
    a, b = parse_time(start), parse_time(end)
    if b <= a:
        raise ValueError(f"segment {text!r} ends before it starts")
    return a, b


def hdtf_speaker(name: str, aliases: dict[str, str] | None = None) -> str:
    """The HDTF speaker of a video name: clip suffix ``_<k>``, a group prefix (``WRA_``) and trailing digits
    stripped, then the alias table applied."""
    table = HDTF_ALIASES if aliases is None else aliases
    stem = re.sub(r"\.mp4$", "", name)
    stem = re.sub(r"^(RD|WDA|WRA)_", "", re.sub(r"_\d+$", "", stem))
    base = re.sub(r"\d+$", "", stem) or stem
    return table.get(base, table.get(stem, base))


def read_alias_file(path: str | Path) -> dict[str, str]:
    """User alias lines ``<name> <speaker>`` added to the shipped table."""
    table = dict(HDTF_ALIASES)
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 2 and not line.lstrip().startswith("#"):
            table[re.sub(r"\d+$", "", fields[0]) or fields[0]] = fields[1]
            table[fields[0]] = fields[1]
    return table


def _table_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of the non-blank lines (a byte-order mark and bytes that are not UTF-8 tolerated)."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _videos_by_name(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.mp4")):
        found.setdefault(os.fsdecode(path.name), path)
    return found


def _time_files(root: Path) -> list[tuple[str, Path]]:
    """(group, file) of each ``<G>_annotion_time.txt`` (or the corrected spelling; one per group and folder)."""
    found: dict[tuple[Path, str], Path] = {}
    for suffix in TIME_FILE_SUFFIXES:
        for path in sorted(root.rglob(f"*{suffix}")):
            found.setdefault((path.parent, path.name[: -len(suffix)]), path)
    return [(group, path) for (_, group), path in sorted(found.items())]


def list_hdtf(root: str | Path, aliases: dict[str, str] | None = None) -> list[SourceItem]:
    """HDTF items from ``<G>_annotion_time.txt`` (+ crop_wh, resolution) and the videos under ``root``.

    Segment ``k`` of ``<name>.mp4`` is looked up as the long video ``<name>.mp4`` (or ``<G>_<name>.mp4``) and
    cut there, else as the split clip ``<name>_<k>.mp4`` (or ``<G>_<name>_<kkk>.mp4``, as the release's download
    script names them).
    """
    root = Path(root)
    videos = _videos_by_name(root)
    items: list[SourceItem] = []
    used: set[str] = set()
    for group, time_file in _time_files(root):
        crops, bad_crops = _aux_table(time_file, group, "_crop_wh.txt", crop_window)
        heights, bad_heights = _aux_table(time_file, group, "_resolution.txt", lambda f: int(float(f[0])))
        for line_no, fields in _table_lines(time_file):
            stem = fields[0][:-4] if fields[0].endswith(".mp4") else fields[0]
            for k, text in enumerate(fields[1:]):
                clip_name = f"{stem}_{k}"
                long = _first_of(videos, f"{stem}.mp4", f"{group}_{stem}.mp4")
                cut = _first_of(videos, f"{clip_name}.mp4", f"{group}_{stem}_{k:03d}.mp4")
                used.update(name for name in (long, cut) if name)
                common = dict(speaker=hdtf_speaker(stem, aliases), video=clip_name,
                              crop_window=crops.get(f"{clip_name}.mp4"), annotation_height=heights.get(f"{stem}.mp4"))
                try:
                    start, end = parse_segment(text)
                    problem = bad_crops.get(f"{clip_name}.mp4") or bad_heights.get(f"{stem}.mp4")
                except ValueError as exc:
                    start, end, problem = 0.0, None, f"bad_annotation: {time_file.name}:{line_no}: {exc}"
                sid = f"hdtf/{group}/{clip_name}"
                if problem or not (long or cut):
                    items.append(_item(sid, "hdtf", "", start=start, end=end, problem=problem or "missing_video",
                                       **common))
                elif long:
                    items.append(_item(sid, "hdtf", videos[long], start=start, end=end, **common))
                else:
                    items.append(_item(sid, "hdtf", videos[cut], **common))
    for name, path in videos.items():
        if name not in used:
            stem = name[:-4]
            items.append(_item(f"hdtf/unannotated/{stem}", "hdtf", path, speaker=hdtf_speaker(stem, aliases),
                               video=stem, problem="no_annotation"))
    return items


def _first_of(videos: dict[str, Path], *names: str) -> str | None:
    return next((name for name in names if name in videos), None)


def crop_window(fields: list[str]) -> tuple[float, float, float, float]:
    """``<min_width> <width> <min_height> <height>`` (crop_wh.txt order) to (x, y, w, h)."""
    if len(fields) != 4:
        raise ValueError(f"expected 4 numbers (min_width width min_height height), got {len(fields)}")
    min_width, width, min_height, height = (float(v) for v in fields)
    return (min_width, min_height, width, height)


def _aux_table(time_file: Path, group: str, suffix: str, parse) -> tuple[dict, dict[str, str]]:
    """``<G><suffix>`` beside the time file: name -> parsed fields, and name -> the problem of a line that does not
    parse (the clips it names are reported as ``bad_annotation`` rather than cut with a wrong window)."""
    path = time_file.with_name(f"{group}{suffix}")
    values: dict = {}
    bad: dict[str, str] = {}
    for line_no, fields in _table_lines(path) if path.exists() else []:
        try:
            values[fields[0]] = parse(fields[1:])
        except (ValueError, IndexError) as exc:
            bad[fields[0]] = f"bad_annotation: {path.name}:{line_no}: {' '.join(fields)!r}: {exc}"
    return values, bad


def list_voxceleb2(root: str | Path) -> list[SourceItem]:
    """VoxCeleb2 items ``dev|test/mp4/idNNNNN/<youtube id>/NNNNN.mp4``; dev -> train, test -> test."""
    root = Path(root)
    items: list[SourceItem] = []
    for part, split in (("dev", "train"), ("test", "test")):
        folder = root / part / "mp4"
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*/*/*.mp4")):
            speaker, yt = path.parent.parent.name, path.parent.name
            rel = path.relative_to(folder)
            audio = root / part / "aac" / rel.with_suffix(".m4a")
            item = _item(f"voxceleb2/{part}/{os.fsdecode(rel.with_suffix(''))}", "voxceleb2", path,
                         speaker=speaker, video=f"{printable(yt)[0]}_{printable(path.stem)[0]}", split=split,
                         audio_path=os.fsdecode(audio) if audio.exists() else None)
            items.append(item)
    return items


_TEST_FILE = re.compile(r"(?<![a-z])test(?![a-z])")  # avspeech_test.csv, not avspeech_train_latest.csv
_CUT_NAME = re.compile(r"^(?P<id>.+)_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")


def list_avspeech(csv_paths: list[str | Path], videos: str | Path) -> list[SourceItem]:
    """AVSpeech items from the CSV rows; a row whose video is not in ``videos`` is listed as missing."""
    folder = Path(videos)
    whole: dict[str, Path] = {}
    cut: dict[str, list[tuple[float, float, Path]]] = {}
    for path in sorted(folder.rglob("*.mp4")):
        stem = os.fsdecode(path.stem)
        match = _CUT_NAME.match(stem)
        if match:
            cut.setdefault(match["id"], []).append((float(match["start"]), float(match["end"]), path))
        whole.setdefault(stem, path)
    items: list[SourceItem] = []
    first: dict[str, tuple[str, str]] = {}  # source id -> (where, split) of the row that listed it
    for csv_path in csv_paths:
        csv_path = Path(csv_path)
        split = "test" if _TEST_FILE.search(csv_path.name.lower()) else "train"
        with open(csv_path, newline="", encoding="utf-8-sig", errors="replace") as fh:
            for line_no, row in enumerate(csv.reader(fh), 1):
                if not row or not "".join(row).strip():
                    continue
                where = f"{csv_path.name}:{line_no}"
                item = _avspeech_row(row, where, split, whole, cut)
                if item.source_id in first:
                    item = _duplicate_row(item, where, *first[item.source_id])
                else:
                    first[item.source_id] = (where, split)
                items.append(item)
    return items


def _duplicate_row(item: SourceItem, where: str, first_where: str, first_split: str) -> SourceItem:
    """A row that repeats an earlier one: listed as a skipped source of its own (never a second copy of the clip in
    the shards, nor one clip in two splits)."""
    splits = f" (listed in the {first_split} split there, {item.split} here: kept in {first_split})" \
        if first_split != item.split else ""
    return _item(f"avspeech/{where}", "avspeech", "", speaker=item.speaker, video=item.video, split=item.split,
                 problem=f"duplicate_row: {where} repeats {first_where}{splits}")


def _avspeech_row(row, where, split, whole, cut) -> SourceItem:
    try:
        yt = row[0].strip()
        start, end, x, y = (float(v) for v in row[1:5])
    except (ValueError, IndexError):
        return _item(f"avspeech/{where}", "avspeech", "", speaker="unknown", video="unknown", split=split,
                     problem=f"bad_csv_row: {where}: expected id,start,end,x,y")
    common = dict(speaker=yt, video=f"{yt}_{start:.3f}", split=split, face_hint=(x, y))
    sid = f"avspeech/{yt}_{start:.3f}_{end:.3f}"
    for a, b, path in cut.get(yt, []):
        if abs(a - start) < 0.01 and abs(b - end) < 0.01:
            return _item(sid, "avspeech", path, **common)
    if yt in whole:
        return _item(sid, "avspeech", whole[yt], start=start, end=end, **common)
    return _item(sid, "avspeech", "", start=start, end=end, problem="missing_video", **common)


def assign_speaker_splits(items: list[SourceItem], seed: int, val_fraction: float, test_fraction: float = 0.0,
                          from_split: str = "train") -> None:
    """Move whole speakers of ``from_split`` to val/test, seeded; splits stay speaker-disjoint."""
    speakers = sorted({it.speaker for it in items if it.split == from_split})
    rng = random.Random(f"seespeaker-split-{seed}")
    rng.shuffle(speakers)
    n = len(speakers)
    n_test = _count(n, test_fraction)
    n_val = _count(n - n_test, val_fraction)
    chosen = {s: "test" for s in speakers[:n_test]}
    chosen.update({s: "val" for s in speakers[n_test:n_test + n_val]})
    for it in items:
        if it.split == from_split and it.speaker in chosen:
            it.split = chosen[it.speaker]


def _count(n: int, fraction: float) -> int:
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, round(n * fraction)))
