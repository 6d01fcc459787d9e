"""``seespeaker prepare``: turn a corpus into WebDataset shards."""
from __future__ import annotations

import argparse

from common.errors import UserError
from trainer.cli import add_command
from trainer.commands.prepare_corpora import register as register_corpora


def prepare_synthetic(args: argparse.Namespace) -> int:
    """Write the synthetic talking-face corpus (procedural faces and voices) as WebDataset shards.

    Each speaker has a face (shape, skin tone, eye spacing, hair, fine detail) and a voice (pitch, formants)
    that are partially correlated; the mouth follows the audio frame by frame, and (corpus version 2) the jaw,
    brows, gaze and head move as a talking head's do, with the truth of each motion stored per frame.
    Deterministic for a seed; `--version 1` writes the corpus of earlier results byte for byte.
    Example: seespeaker prepare synthetic --out data/synthetic --speakers 24 --clips-per-speaker 4
    """
    from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus

    cfg = SyntheticConfig(
        speakers=args.speakers, clips_per_speaker=args.clips_per_speaker, seconds=args.seconds,
        resolution=args.resolution, seed=args.seed, shard_size=args.shard_size,
        val_speakers_fraction=args.val_fraction, test_speakers_fraction=args.test_fraction,
        **({} if args.voice_share is None else {"voice_share": args.voice_share}),
        **({} if args.version is None else {"version": args.version}),
    )
    try:
        index = write_synthetic_corpus(args.out, cfg)
    except (ValueError, OSError) as exc:
        raise UserError(str(exc)) from exc
    counts = {split: index.num_samples(split) for split in index.splits}
    print(f"wrote synthetic corpus to {args.out}: {counts} clips")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("prepare", help="turn a corpus into WebDataset shards",
                                   description=__doc__)
    sub = parser.add_subparsers(dest="corpus", metavar="<corpus>", required=True)
    p = add_command(sub, "synthetic", prepare_synthetic)
    p.add_argument("--out", required=True, help="output folder (index.json + split folders)")
    p.add_argument("--speakers", type=int, default=24, help="number of speakers (default 24)")
    p.add_argument("--clips-per-speaker", type=int, default=4, help="clips per speaker (default 4)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per clip (default 2.0)")
    p.add_argument("--resolution", type=int, default=256, help="frame size in pixels (default 256)")
    p.add_argument("--shard-size", type=int, default=64, help="clips per shard (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--val-fraction", type=float, default=0.17, help="fraction of speakers for val (default 0.17)")
    p.add_argument("--test-fraction", type=float, default=0.17, help="fraction of speakers for test (default 0.17)")
    p.add_argument("--voice-share", type=float, default=None,
                   help="fraction of each voice-linked face attribute's variance the voice sets (default 0.56)")
    p.add_argument("--version", type=int, default=None,
                   help="generator version (default: the newest, 2, a talking head with the truth of its motion; "
                   "1: the corpus of earlier results, byte for byte)")
    register_corpora(sub)
