"""``seespeaker runs``: list, show and compare local run folders; sync offline W&B runs."""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from common.errors import UserError
from trainer.cli import add_command


def _records(paths: list[str]):
    from trainer.runs import RunReadError, find_runs, load_run

    try:
        folders = find_runs(paths)
    except RunReadError as exc:
        raise UserError(str(exc)) from None
    if not folders:
        raise UserError(f"no run folders (with config.yaml or metrics.jsonl) under {', '.join(paths)}")
    records = [load_run(f) for f in folders]
    for r in records:
        for problem in r.problems:
            print(f"warning: {r.name}: {problem}", file=sys.stderr)
    return records


def list_runs(args: argparse.Namespace) -> int:
    """Table of the runs under the given folders: stage, steps, final loss, best monitored metric, state, W&B id.

    state: finished (summary.json covers every logged step) or unfinished (running, stopped or crashed);
    updated: how long ago the last metric was logged.
    Example: seespeaker runs list outputs/tiny
    """
    from trainer.runs import age, table

    rows = []
    for r in _records(args.paths):
        monitor = r.config.get("stage.monitor", "val/loss")
        rows.append([r.name, r.config.get("stage.name"), r.steps, r.final("train/loss"), monitor, r.best(monitor),
                     r.state, age(r.updated), r.summary.get("wandb_id", "-")])
    print(table(["run", "stage", "steps", "train/loss", "monitor", "best", "state", "updated", "wandb id"], rows))
    return 0


def show(args: argparse.Namespace) -> int:
    """One run: its config, every metric's final and best value, its summary and evaluation results.

    Example: seespeaker runs show outputs/tiny/conre
    """
    from trainer.runs import age, format_value, table

    records = _records([args.path])
    if len(records) > 1:
        raise UserError(f"{args.path} holds {len(records)} runs; show one of them: "
                        + ", ".join(r.name for r in records[:8]) + (" ..." if len(records) > 8 else "")
                        + f" (or list them all with `seespeaker runs list {args.path}`)")
    record = records[0]
    logged = "nothing logged" if record.updated is None else f"last logged {age(record.updated)} ago"
    print(f"run {record.name} ({record.state}, {logged})")
    for key in ("experiment.name", "stage.name", "data.name", "trainer.strategy", "experiment.seed"):
        print(f"  {key}: {record.config.get(key, '-')}")
    print(table(["metric", "final", "best"], [[m, record.final(m), record.best(m)] for m in record.metric_names()]))
    for key, value in sorted(record.summary.items()):
        print(f"  {key}: {format_value(value)}")
    return 0


def compare(args: argparse.Namespace) -> int:
    """Runs side by side: only the config keys that differ, and chosen metrics (final/best); --plot writes curves.

    Example: seespeaker runs compare outputs/a/conre outputs/b/conre --metrics train/loss,val/loss --plot cmp.png
    """
    from trainer.runs import check_metrics, compare_table, plot

    check_plot(args.plot)
    records = _records(args.runs)
    metrics = [m for m in args.metrics.split(",") if m]
    problems = check_metrics(records, metrics)
    known = [m for m in metrics if not any(repr(m) in p for p in problems)]
    if metrics and not known:
        raise UserError("; ".join(problems))
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(compare_table(records, known))
    if args.plot and known:
        note = " (replaced the earlier file)" if Path(args.plot).exists() else ""
        print(f"plot: {plot(records, known, Path(args.plot))}{note}")
    return 0


def check_plot(path: str) -> None:
    """A --plot path that matplotlib cannot write (a folder, an unknown suffix) is an error before any work."""
    if not path:
        return
    from matplotlib.figure import Figure

    from trainer.commands import check_output

    check_output("--plot", path, "compare.png")
    formats = Figure().canvas.get_supported_filetypes()
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise UserError(f"--plot {path}: matplotlib writes {', '.join(sorted(formats))}; give e.g. "
                        f"{Path(path).with_suffix('.png')}")


def sync(args: argparse.Namespace) -> int:
    """Merge a run's offline W&B segments into one continuous history (from metrics.jsonl) and upload it.

    --dry-run builds the merged offline run and prints its folder without uploading.
    Example: seespeaker runs sync outputs/tiny/conre
    """
    from trainer.runs import RunReadError, merge_offline_segments

    for path in args.runs:
        if not Path(path).is_dir():
            raise UserError(f"{path} is not a run folder (give the folder that holds metrics.jsonl and wandb_id)")
    for path in args.runs:
        try:
            merged = merge_offline_segments(Path(path))
        except RunReadError as exc:
            raise UserError(str(exc)) from None
        print(f"merged offline run: {merged}")
        if not args.dry_run:
            code = subprocess.call([wandb_executable(), "sync", str(merged)])
            if code != 0:
                raise UserError(f"wandb sync {merged} failed (exit {code}); check `wandb login` and the network")
    return 0


def wandb_executable() -> str:
    """The ``wandb`` command of this environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("wandb")
    found = str(beside) if beside.exists() else shutil.which("wandb")
    if found is None:
        raise UserError("the `wandb` command is not installed here; install wandb, or sync the merged folder from a "
                        "machine that has it (wandb sync <folder>)")
    return found


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "runs", help="list, show, compare and sync local runs", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Local run folders read back, as W&B shows runs, offline: list, show, compare; sync uploads an "
                    "offline run.\nExamples:\n  seespeaker runs list outputs/tiny\n"
                    "  seespeaker runs compare outputs/tiny/conre-a outputs/tiny/conre-b --metrics train/loss,val/loss")
    sub = parser.add_subparsers(dest="action", metavar="<action>", required=True)
    add_command(sub, "list", list_runs).add_argument("paths", nargs="+", help="run folders or folders above them")
    add_command(sub, "show", show).add_argument("path", help="a run folder")
    p = add_command(sub, "compare", compare)
    p.add_argument("runs", nargs="+", help="run folders (or folders above them)")
    p.add_argument("--metrics", default="train/loss", help="comma-separated metric names (default train/loss)")
    p.add_argument("--plot", default="", help="write the curves of the metrics to this PNG")
    p = add_command(sub, "sync", sync)
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--dry-run", action="store_true", help="merge only; do not upload")
