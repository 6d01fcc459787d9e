"""``seespeaker export``: checkpoint or run folder -> one safetensors stage file."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from common.errors import SeespeakerError, UserError
from common.files import temporary_sibling
from trainer.cli import add_command


def export(args: argparse.Namespace) -> int:
    """Export a run folder, a Lightning checkpoint or a DeepSpeed checkpoint folder to <stage>.safetensors.

    The file holds fp32 weights, the EMA weights, the stage config and the provenance; later stages,
    init_from, the pipeline and the evaluation read it. Default output: the run's stages folder, where it
    replaces the stage's earlier export; --out FOLDER writes <FOLDER>/<stage>.safetensors. An existing --out
    file is replaced only by the same stage (said so); a file of another stage, or not a stage file, is kept.
    Examples:
      seespeaker export outputs/tiny/conre
      seespeaker export outputs/tiny/conre/checkpoints/step=500.ckpt --out stages/conre.safetensors
    """
    from common.errors import CheckpointError
    from trainer.export import export_stage

    source = Path(args.source)
    if source.suffix == ".safetensors" and source.is_file():
        raise UserError(f"{source} is already an exported stage file; export reads a run folder, a .ckpt file or a "
                        f"DeepSpeed checkpoint folder (copy the file to use it elsewhere)")
    out = Path(args.out) if args.out else None
    try:
        if out is not None and out.is_dir():
            path = export_stage(source, stages_dir=out)
        elif out is not None and out.exists():
            path = replace_stage_file(source, out)
        else:
            if out is not None and out.suffix != ".safetensors":
                raise UserError(f"--out {out}: a stage file is safetensors and is found by its suffix; name it "
                                f"{out.with_suffix('.safetensors')}")
            path = export_stage(source, out=out)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    print(path)
    return 0


def replace_stage_file(source: Path, out: Path) -> Path:
    """Export beside the existing ``out`` and move it into place only when both hold the same stage."""
    from lightning_modules.stagefile import read_metadata
    from trainer.export import export_stage

    try:
        earlier = read_metadata(out).get("stage")
    except SeespeakerError:
        earlier = None
    if not earlier:
        raise UserError(f"--out {out} exists and is not a stage file; it is kept: remove it or choose another --out")
    tmp = temporary_sibling(out)
    try:
        export_stage(source, out=tmp)
        stage = read_metadata(tmp).get("stage")
        if stage != earlier:
            raise UserError(f"--out {out} holds stage {earlier!r}, and {source} is stage {stage!r}; the file is kept: "
                            f"choose another --out (e.g. {out.with_name(f'{stage}.safetensors')})")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"[seespeaker] replaced the earlier {earlier} stage file {out}")
    return out


def register(subparsers) -> None:
    parser = add_command(subparsers, "export", export)
    parser.add_argument("source", help="run folder, .ckpt file or DeepSpeed checkpoint folder")
    parser.add_argument("--out", default=None,
                        help="output .safetensors file, or a folder (default: <stages_dir>/<stage>.safetensors)")
