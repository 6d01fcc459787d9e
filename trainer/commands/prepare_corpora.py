"""``seespeaker prepare hdtf|voxceleb2|avspeech|merge-index``: the real corpora's subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import UserError
from trainer.cli import add_command


def prepare_hdtf(args: argparse.Namespace) -> int:
    """Prepare HDTF: long videos cut at <G>_annotion_time.txt segments, or already-split <name>_<k>.mp4 clips
    (or <G>_<name>.mp4 and <G>_<name>_<kkk>.mp4, as the release's download script names them).

    --root holds the release's annotation files (<G>_annotion_time.txt, <G>_crop_wh.txt, <G>_resolution.txt)
    and the downloaded videos (anywhere below it). Speakers are video names without trailing digits plus the
    alias table (--aliases adds lines '<name> <speaker>'); val/test speakers are drawn with --split-seed.
    Example: seespeaker prepare hdtf --root ~/HDTF --out data/hdtf --resolution 512 --workers 8
    """
    from datamodules.prepare.listing import assign_speaker_splits, list_hdtf, read_alias_file

    _check_numbers(args)
    root = _existing_dir(args.root, "--root", "the folder holding HDTF's <G>_annotion_time.txt files and videos")
    if args.aliases and not Path(args.aliases).is_file():
        raise UserError(f"--aliases {args.aliases}: no such file; give a text file of lines '<video name> <speaker>'")
    aliases = read_alias_file(args.aliases) if args.aliases else None
    items = list_hdtf(root, aliases)
    if not any(it.problem != "no_annotation" for it in items):
        raise UserError(f"--root {root}: no <G>_annotion_time.txt annotations found; point --root at the HDTF "
                        f"release folder (with RD_, WDA_, WRA_ annotation files)")
    assign_speaker_splits(items, args.split_seed, args.val_fraction, args.test_fraction)
    return _run(args, items, "hdtf")


def prepare_voxceleb2(args: argparse.Namespace) -> int:
    """Prepare VoxCeleb2 from dev|test/mp4/idNNNNN/<youtube id>/NNNNN.mp4 (official, speaker-disjoint split).

    dev becomes train (and --val-fraction of dev speakers val, drawn with --split-seed), test stays test.
    Audio is read from the mp4, or from dev|test/aac/.../NNNNN.m4a when present.
    Example: seespeaker prepare voxceleb2 --root ~/VoxCeleb2 --out data/voxceleb2 --workers 8
    """
    from datamodules.prepare.listing import assign_speaker_splits, list_voxceleb2

    _check_numbers(args)
    root = _existing_dir(args.root, "--root", "the folder holding VoxCeleb2's dev/ and test/ folders")
    items = list_voxceleb2(root)
    if not items:
        raise UserError(f"--root {root}: no videos under dev/mp4/<id>/<yt>/*.mp4 or test/mp4/...; "
                        f"point --root at the VoxCeleb2 folder that holds dev/ and test/")
    assign_speaker_splits(items, args.split_seed, args.val_fraction)
    return _run(args, items, "voxceleb2")


def prepare_avspeech(args: argparse.Namespace) -> int:
    """Prepare AVSpeech from its CSV files and the videos you downloaded (<id>.mp4 or <id>_<start>_<end>.mp4).

    Rows whose video is missing are reported in the manifest (reason missing_video) and tried again on the
    next run. The YouTube id stands in for the speaker (a channel may hold several speakers).
    Example: seespeaker prepare avspeech --csv avspeech_train.csv avspeech_test.csv --videos clips/ --out data/avspeech
    """
    from datamodules.prepare.listing import assign_speaker_splits, list_avspeech

    _check_numbers(args)
    for path in args.csv:
        if not Path(path).is_file():
            raise UserError(f"--csv {path}: no such file; give avspeech_train.csv and/or avspeech_test.csv")
    videos = _existing_dir(args.videos, "--videos", "the folder holding the downloaded AVSpeech videos")
    items = list_avspeech(args.csv, videos)
    if not items:
        raise UserError(f"--csv {' '.join(args.csv)}: no rows found; expected '<id>,<start>,<end>,<x>,<y>' lines")
    assign_speaker_splits(items, args.split_seed, args.val_fraction)
    return _run(args, items, "avspeech")


def merge_index_command(args: argparse.Namespace) -> int:
    """Merge the part indexes written by `prepare ... --shard-range i/n` jobs into index.json.

    Example: seespeaker prepare merge-index --out data/hdtf
    """
    from datamodules.prepare.manifest import merge_index

    try:
        index = merge_index(args.out)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    print(f"merged index of {args.out}: " + ", ".join(f"{s} {index.num_samples(s)} clips" for s in index.splits))
    return 0


def _existing_dir(path: str, flag: str, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: no such folder; give {what}")
    return folder


def _check_face_tools() -> None:
    try:
        import dlib  # noqa: F401

        from datamodules.prepare.faces import predictor_path

        predictor_path()
    except ImportError as exc:
        raise UserError(f"the face tools are not installed ({exc}); install them with "
                        f"`pip install -e .[faces] -c constraints.txt` (dlib-bin, face-recognition-models)") from exc


def _check_numbers(args: argparse.Namespace) -> None:
    """Flags whose values would make every source fail or the split meaningless, named before any work starts."""
    for flag, value, low in (("--shard-size", args.shard_size, 1), ("--workers", args.workers, 1),
                             ("--detect-every", args.detect_every, 1), ("--clip-seconds", args.clip_seconds, 0),
                             ("--max-sources", args.max_sources, 0), ("--min-face", args.min_face, 0)):
        if value < low:
            raise UserError(f"{flag} {value:g}: must be at least {low}")
    fractions = {"--val-fraction": args.val_fraction, "--test-fraction": getattr(args, "test_fraction", 0.0)}
    for flag, value in fractions.items():
        if not 0 <= value < 1:
            raise UserError(f"{flag} {value:g}: must be a fraction of the speakers, from 0 up to (not including) 1")
    if sum(fractions.values()) >= 1:
        raise UserError(f"--val-fraction {args.val_fraction:g} and --test-fraction {fractions['--test-fraction']:g} "
                        f"leave no speakers for train; keep their sum below 1")


def _run(args: argparse.Namespace, items, dataset: str) -> int:
    from datamodules.prepare.process import PrepareOptions
    from datamodules.prepare.runner import parse_shard_range, run

    _check_face_tools()

    options = PrepareOptions(resolution=args.resolution, clip_seconds=args.clip_seconds, min_face=args.min_face,
                             detect_every=args.detect_every)
    try:
        shard_range = parse_shard_range(args.shard_range)
        summary = run(items, args.out, dataset, options, workers=args.workers, shard_size=args.shard_size,
                      shard_range=shard_range, max_sources=args.max_sources, progress=not args.no_progress,
                      extra={"clip_seconds": args.clip_seconds, "split_seed": args.split_seed})
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(summary.skipped.items())) or "none"
    print(f"{dataset}: {summary.clips} clips from {summary.written_sources} sources in {summary.seconds:.1f} s "
          f"({summary.clips_per_second:.2f} clips/s); already done {summary.already_done}; skipped: {skipped}")
    if summary.changed_retried:
        print(f"tried again: {summary.changed_retried} source(s) an earlier run skipped, whose files changed since")
    if summary.dropped_clips:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(summary.dropped_clips.items()))
        print(f"clips dropped from the sources written: {dropped} (manifest: clip_skips)")
    if summary.kept_splits:
        print(f"{summary.kept_splits} sources kept the split their speaker has from an earlier run "
              f"(manifest note split_of_earlier_run), so that no speaker is in two splits")
    print(f"manifest and shards in {args.out}")
    if summary.interrupted:
        print("interrupted: run the same command again to resume")
        return 130
    return 0


def _common(parser: argparse.ArgumentParser, test_fraction: bool = False) -> None:
    parser.add_argument("--out", required=True, help="output folder (index.json, split folders, manifest.jsonl)")
    parser.add_argument("--resolution", type=int, default=256, choices=(256, 512),
                        help="aligned face size (default 256)")
    parser.add_argument("--clip-seconds", type=float, default=5.0,
                        help="cut sources into clips of this length (0: one clip per source; default 5)")
    parser.add_argument("--shard-size", type=int, default=64,
                        help="clips per shard (default 64; a shard closes between sources, so it may hold a few more)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the speaker split (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="fraction of speakers for val (default 0.05)")
    if test_fraction:
        parser.add_argument("--test-fraction", type=float, default=0.05,
                            help="fraction of speakers for test (default 0.05)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--shard-range", default=None,
                        help="i/n: this job takes 1/n of the sources (job arrays); finish with merge-index")
    parser.add_argument("--max-sources", type=int, default=0,
                        help="stop after this many new sources with a video (0: all); missing videos and bad lines "
                        "on the way are recorded without counting")
    parser.add_argument("--min-face", type=float, default=96.0,
                        help="skip clips whose face crop is smaller than this many source pixels (default 96)")
    parser.add_argument("--detect-every", type=int, default=5,
                        help="run the face detector every N frames, landmarks on every frame (default 5)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(sub) -> None:
    """Add hdtf, voxceleb2, avspeech and merge-index to ``seespeaker prepare``."""
    p = add_command(sub, "hdtf", prepare_hdtf)
    p.add_argument("--root", required=True, help="HDTF folder: annotation files and downloaded videos")
    p.add_argument("--aliases", default=None, help="extra speaker aliases, lines '<video name> <speaker>'")
    _common(p, test_fraction=True)
    p = add_command(sub, "voxceleb2", prepare_voxceleb2)
    p.add_argument("--root", required=True, help="VoxCeleb2 folder holding dev/ and test/")
    _common(p)
    p = add_command(sub, "avspeech", prepare_avspeech)
    p.add_argument("--csv", nargs="+", required=True, help="avspeech_train.csv and/or avspeech_test.csv")
    p.add_argument("--videos", required=True, help="folder of downloaded videos")
    _common(p)
    p = add_command(sub, "merge-index", merge_index_command)
    p.add_argument("--out", required=True, help="the output folder shared by the --shard-range jobs")
