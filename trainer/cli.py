"""The ``seespeaker`` command line: one entry point, a subcommand per use.

Each subcommand lives in ``trainer/commands/<name>.py`` with a ``register(subparsers)`` function; its
help text is the docstring of the function that runs it.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys

from common.errors import SeespeakerError

COMMANDS = ("prepare", "train", "config", "export", "prior", "evaluate", "generate", "render", "slurm", "runs")
EXAMPLE = """example (the tiny scale on a CPU; `make demo` runs the whole chain):
  seespeaker prepare synthetic --out data/synthetic
  seespeaker train experiment=tiny stage=conre
  seespeaker runs list outputs/tiny
  seespeaker generate --audio speech.wav --stages outputs/tiny/stages --out talking_face.mp4

`seespeaker <command> --help` says what a command does, with an example."""


def doc_parts(func) -> tuple[str, str]:
    """(summary line, full text) of a function's docstring, for argparse help."""
    doc = inspect.getdoc(func) or ""
    return (doc.splitlines()[0] if doc else ""), doc


def add_command(subparsers, name: str, func, **kwargs) -> argparse.ArgumentParser:
    """Add a subcommand whose help and description come from ``func``'s docstring."""
    summary, doc = doc_parts(func)
    parser = subparsers.add_parser(
        name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seespeaker",
        description="Speech-only high-resolution talking-face generation: prepare data, train the stages, "
        "submit to SLURM, track runs and evaluate checkpoints.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMANDS:
        importlib.import_module(f"trainer.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except SeespeakerError as exc:  # UserError and every other error a user can fix: one message
        print(f"seespeaker {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
