"""Local run folders read back: listing, comparing, plotting, and merging W&B offline segments for sync.

A run folder holds ``config.yaml`` and ``metrics.jsonl`` (and ``summary.json``, ``wandb_id``, evaluation
``results.json`` when present). Everything here works before, and without, any W&B sync.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from common.errors import SeespeakerError
from common.files import atomic_path
from trainer.tracking import METRICS_FILE, WANDB_ID_FILE, flatten, read_metrics

IGNORED_KEYS = ("run.dir", "run.stages_dir", "run.name", "experiment.output_root")


class RunReadError(SeespeakerError, ValueError):
    """A run folder (or one of its files) that cannot be read."""


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def logged_steps(self) -> int | None:
        """One more than the last logged step (the metrics after step n are logged at step n - 1)."""
        last = max((int(row["step"]) for row in self.history), default=None)
        return None if last is None else last + 1

    @property
    def steps(self) -> int | None:
        """Training steps done: the final global step of a finished run (``summary.json``), or the logged steps when
        the log goes further (a run resumed with more steps logs past the summary of its earlier end)."""
        done = [int(self.summary["summary.global_step"])] if "summary.global_step" in self.summary else []
        logged = [self.logged_steps] if self.logged_steps is not None else []
        return max(done + logged, default=None)

    @property
    def state(self) -> str:
        """``finished`` when ``summary.json`` (written at the end of training) covers every logged step, else
        ``unfinished`` (running, stopped or crashed: the age of its last log line tells which is likely)."""
        if "summary.global_step" not in self.summary:
            return "unfinished"
        return "finished" if int(self.summary["summary.global_step"]) >= (self.logged_steps or 0) else "unfinished"

    @property
    def updated(self) -> float | None:
        """The time of the last metric row (seconds since the epoch), else of the metric log file."""
        times = [float(row["time"]) for row in self.history if _finite(row.get("time"))]
        if times:
            return max(times)
        metrics = self.path / METRICS_FILE
        return metrics.stat().st_mtime if metrics.is_file() else None

    def metric_names(self) -> list[str]:
        return sorted({k for row in self.history for k in row if k not in ("step", "time", "epoch")})

    def series(self, metric: str) -> list[tuple[int, float]]:
        return [(int(r["step"]), float(r[metric])) for r in self.history if metric in r and _finite(r[metric])]

    def final(self, metric: str) -> float | None:
        values = self.series(metric)
        return values[-1][1] if values else None

    def best(self, metric: str) -> float | None:
        """The best value: by the run's ``stage.monitor_mode`` for its monitored metric, else by the metric's name."""
        values = [v for _, v in self.series(metric)]
        if not values:
            return None
        mode = self.config.get("stage.monitor_mode") if metric == self.config.get("stage.monitor") else None
        if mode not in ("min", "max"):
            higher = any(word in metric for word in ("top1", "top5", "acc", "psnr", "ssim", "csim", "lse_c"))
            mode = "max" if higher else "min"
        return max(values) if mode == "max" else min(values)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders at or below the given paths (a folder holding config.yaml or metrics.jsonl)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.exists():
            raise RunReadError(f"{path} does not exist")
        if (path / "config.yaml").is_file() or (path / METRICS_FILE).is_file():
            found.append(path)
            continue
        found += sorted({p.parent for p in path.rglob("config.yaml") if "wandb" not in p.parts}
                        | {p.parent for p in path.rglob(METRICS_FILE)})
    unique: dict[Path, Path] = {}  # a run reached through two of the paths is listed once
    for run in found:
        unique.setdefault(run.resolve(), run)
    return list(unique.values())


def load_run(path: Path) -> RunRecord:
    """Read a run folder; every unreadable part becomes a problem line, the rest is still read."""
    record = RunRecord(path)
    config = path / "config.yaml"
    if config.is_file():
        try:
            record.config = flatten(_mapping(OmegaConf.to_container(OmegaConf.load(config)), "config.yaml"))
        except Exception as exc:  # YAML errors come in several types
            record.problems.append(f"config.yaml unreadable ({exc})")
    else:
        record.problems.append("no config.yaml (not a training run folder, or written by another tool)")
    metrics = path / METRICS_FILE
    if metrics.is_file():
        record.history, bad = read_metrics(metrics)
        if bad:
            record.problems.append(f"{METRICS_FILE}: {bad} corrupt line(s) skipped")
    else:
        record.problems.append(f"no {METRICS_FILE}")
    for name in ("summary.json", "results.json"):
        if (path / name).is_file():
            try:
                data = _mapping(json.loads((path / name).read_text()), name)
                record.summary.update(flatten(data, f"{name.split('.')[0]}."))
            except (json.JSONDecodeError, RunReadError) as exc:
                record.problems.append(f"{name} unreadable ({exc})")
    if (path / WANDB_ID_FILE).is_file():
        record.summary["wandb_id"] = (path / WANDB_ID_FILE).read_text().strip()
    return record


def _mapping(data: Any, name: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise RunReadError(f"{name} holds a {type(data).__name__}, not a mapping of keys to values")
    return data


def config_differences(records: list[RunRecord]) -> list[str]:
    """Config keys whose values differ between the runs (paths that only name the run are left out)."""
    keys = sorted({k for r in records for k in r.config})
    return [k for k in keys
            if k not in IGNORED_KEYS and len({json.dumps(r.config.get(k), default=str) for r in records}) > 1]


def check_metrics(records: list[RunRecord], metrics: list[str]) -> list[str]:
    """Messages for metrics that no run has, naming the metrics that exist."""
    available = sorted({m for r in records for m in r.metric_names()})
    return [f"unknown metric {m!r}; metrics in these runs: {', '.join(available) or 'none'}"
            for m in metrics if m not in available]


def age(seconds_since_epoch: float | None, now: float | None = None) -> str:
    """How long ago, in the largest whole unit: ``45s``, ``12m``, ``3h``, ``2d``."""
    if seconds_since_epoch is None:
        return "-"
    seconds = max(0.0, (time.time() if now is None else now) - seconds_since_epoch)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[format_value(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in cells]
    return "\n".join(lines)


def compare_table(records: list[RunRecord], metrics: list[str]) -> str:
    diffs = config_differences(records)
    headers = ["run", "steps", *diffs] + [f"{m} (final/best)" for m in metrics]
    rows = []
    for r in records:
        values = [f"{format_value(r.final(m))}/{format_value(r.best(m))}" for m in metrics]
        rows.append([r.name, r.steps, *[r.config.get(k) for k in diffs], *values])
    return table(headers, rows)


def plot(records: list[RunRecord], metrics: list[str], out: Path) -> Path:
    """One PNG with a panel per metric and a curve per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for r in records:
            series = r.series(metric)
            if series:
                ax.plot(*zip(*series, strict=True),
                        label=r.path.name if len({x.path.name for x in records}) == len(records) else r.name)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def offline_history(wandb_run_dir: Path) -> list[dict[str, Any]]:
    """The history rows of one W&B offline run folder, read with wandb's own reader (`wandb leet inspect`)."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("wandb")
    cmd = [str(exe) if exe.exists() else "wandb", "leet", "inspect", "--json", str(wandb_run_dir)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RunReadError(f"wandb could not read {wandb_run_dir}: {out.stderr.strip()[:300]}")
    rows = []
    for line in out.stdout.splitlines():
        record = json.loads(line)
        if record.get("type") == "history":
            rows.append(record["history"]["item"])
    return rows


def merge_offline_segments(run_dir: Path, project: str = "seespeaker") -> Path:
    """One offline W&B run (the run's id) holding the whole history from ``metrics.jsonl``, ready to sync.

    Each restart of an offline training wrote its own ``offline-run-*`` folder; syncing them one after another
    under one id would overwrite earlier history. The local metric log is the source of truth: this writes
    its rows, in step order with the last write per step, into one fresh offline run.
    """
    import wandb

    record = load_run(run_dir)
    if not record.history:
        raise RunReadError(f"{run_dir} has no {METRICS_FILE} rows to sync")
    run_id = record.summary.get("wandb_id")
    if not run_id:
        raise RunReadError(f"{run_dir} has no {WANDB_ID_FILE}: it was not tracked with W&B")
    merged_dir = run_dir / "wandb_merged"
    if merged_dir.exists():
        import shutil

        shutil.rmtree(merged_dir)
    merged_dir.mkdir()
    config = {k: v for k, v in record.config.items()}
    run = wandb.init(mode="offline", id=run_id, dir=str(merged_dir), project=config.get("tracking.project", project),
                     group=config.get("experiment.name"), job_type=config.get("stage.name"), config=config,
                     name=f"{config.get('experiment.name')}-{config.get('stage.name')}-{run_id}", resume="allow")
    run.define_metric("trainer/global_step")
    run.define_metric("*", step_metric="trainer/global_step")
    for row in record.history:
        values = {k: v for k, v in row.items() if k not in ("step", "time") and _finite(v)}
        run.log({**values, "trainer/global_step": int(row["step"])})
    run.finish()
    folders = sorted((merged_dir / "wandb").glob("offline-run-*"))
    return folders[-1]


def active_seconds(run_dir: str | Path) -> float | None:
    """Seconds a run folder's training ran: from each start (``provenance.jsonl``) to the last metric it logged
    (``metrics.jsonl``) before the next start, summed, so that the time between a preemption and its resume does not
    count; None when either file is missing or unreadable."""
    run_dir = Path(run_dir)
    try:
        starts = sorted(datetime.strptime(json.loads(line)["time"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
                        for line in (run_dir / "provenance.jsonl").read_text().splitlines() if line.strip())
        logged = sorted(float(json.loads(line)["time"])
                        for line in (run_dir / METRICS_FILE).read_text().splitlines() if line.strip())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not starts or not logged:
        return None
    total = 0.0
    for start, next_start in zip(starts, [*starts[1:], math.inf], strict=True):
        inside = [t for t in logged if start <= t < next_start]
        total += max(inside) - start if inside else 0.0
    return round(total, 1)
