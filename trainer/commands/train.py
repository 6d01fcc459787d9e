"""``seespeaker train``: train one stage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.errors import UserError
from trainer.cli import add_command


def train(args: argparse.Namespace) -> int:
    """Train one stage: seespeaker train experiment=<name> stage=<name> [group=choice ...] [key=value ...]

    Groups: experiment, stage, data, trainer, tracking (files in configs/<group>/, or a path to a YAML file).
    Shortcuts: resume=auto|false|<checkpoint>, init_from=<stage file>, seed=<int>.
    Examples:
      seespeaker train experiment=tiny stage=conre
      seespeaker train experiment=small stage=conre trainer=ddp trainer.devices=2 data.batch_size=32
      seespeaker train experiment=tiny stage=conre resume=auto trainer.max_steps=200
    The run folder (checkpoints, metrics.jsonl, config.yaml, provenance.json, W&B files) is printed at start;
    when training ends the stage is exported to <stages_dir>/<stage>.safetensors.
    """
    from trainer.config import ConfigError, compose
    from trainer.runner import run_training

    try:
        cfg = compose(args.overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    return run_training(cfg, argv=[Path(sys.argv[0]).name, "train", *args.overrides])


def register(subparsers) -> None:
    parser = add_command(subparsers, "train", train)
    parser.add_argument("overrides", nargs="*", metavar="group=choice|key=value")
