"""``seespeaker export``: checkpoint or run folder -> one safetensors stage file."""
from __future__ import annotations

import argparse

from common.errors import UserError
from trainer.cli import add_command


def export(args: argparse.Namespace) -> int:
    """Export a run folder, a Lightning checkpoint or a DeepSpeed checkpoint folder to <stage>.safetensors.

    The file holds fp32 weights, the EMA weights, the stage config and the provenance; later stages,
    init_from, the pipeline and the evaluation read it. Default output: the run's stages folder.
    Example: seespeaker export outputs/tiny/conre --out stages/conre.safetensors
    """
    from common.errors import CheckpointError
    from trainer.export import export_stage

    try:
        path = export_stage(args.source, out=args.out)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0


def register(subparsers) -> None:
    parser = add_command(subparsers, "export", export)
    parser.add_argument("source", help="run folder, .ckpt file or DeepSpeed checkpoint folder")
    parser.add_argument("--out", default=None, help="output file (default: <stages_dir>/<stage>.safetensors)")
