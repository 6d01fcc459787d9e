"""``seespeaker config``: inspect the resolved configuration."""
from __future__ import annotations

import argparse

from common.errors import UserError
from trainer.cli import add_command


def show(args: argparse.Namespace) -> int:
    """Print the resolved config of a training run, its derived values and the stages it needs first.

    The derived values are the global batch and the run and stages folders; the stage graph part names what the
    stage loads and the order to train those stages in.

    Takes the same words as `seespeaker train`; --explain prints every key with its help text.
    Example: seespeaker config show experiment=tiny stage=conre trainer.max_steps=10
    """
    from trainer.config import ConfigError, compose, describe, field_help

    try:
        cfg = compose(args.overrides)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    if args.explain:
        for key, value, text in field_help(cfg):
            print(f"{key:40s} {value:24s} {text}")
    else:
        print(describe(cfg))
    print(stage_needs(cfg, args.overrides))
    return 0


def stage_needs(cfg, words: list[str]) -> str:
    """The stage's requirements as configured, and every node to make first, in training order."""
    from lightning_modules.registry import requires, training_order
    from trainer.config import compose, split_args

    choices, _ = split_args(words)
    experiment = choices.get("experiment", cfg.experiment.name)
    name = cfg.stage.name

    def config_of(stage: str):
        return cfg.stage if stage == name else compose([f"experiment={experiment}", f"stage={stage}"]).stage

    first = training_order([name], config_of)[:-1]
    return (f"stage graph: {name} loads {', '.join(requires(name, cfg.stage)) or 'no earlier stage'}; "
            f"make first, in order: {' -> '.join(first) or 'nothing'}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "config", help="inspect the resolved configuration", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Inspect the configuration `seespeaker train` would run with, without training.\n"
                    "Example: seespeaker config show experiment=tiny stage=conre --explain")
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    p = add_command(sub, "show", show)
    p.add_argument("--explain", action="store_true", help="list every key with its help text")
    p.add_argument("overrides", nargs="*", metavar="group=choice|key=value")
