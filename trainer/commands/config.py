"""``seespeaker config``: inspect the resolved configuration."""
from __future__ import annotations

import argparse

from trainer.cli import UserError, add_command


def show(args: argparse.Namespace) -> int:
    """Print the resolved config of a training run, with the derived values (global batch, run folder).

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
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("config", help="inspect the resolved configuration", description=__doc__)
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    p = add_command(sub, "show", show)
    p.add_argument("--explain", action="store_true", help="list every key with its help text")
    p.add_argument("overrides", nargs="*", metavar="group=choice|key=value")
