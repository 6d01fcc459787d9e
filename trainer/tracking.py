"""Run tracking: the local JSONL metric log (the source of truth) and Weights & Biases (online or offline).

One training is one W&B run however often it restarts: the run id is saved in the run folder and reused with
``resume="allow"``. Offline runs write a new ``offline-run-*`` folder per restart; ``seespeaker runs sync``
merges them from ``metrics.jsonl``. Only rank 0 creates a run. No secret is ever written.
"""
from __future__ import annotations

import json
import os
import secrets
import string
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import Logger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from trainer.schemas import Config

WANDB_ID_FILE = "wandb_id"
STOP_LOGGING = threading.Event()  # set by a preemption signal (W&B's process may be gone); cleared as a training starts
METRICS_FILE = "metrics.jsonl"
SECRET_ENV = ("WANDB_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN")


class JSONLMetricLogger(Logger):
    """Appends ``{"step": s, "time": t, <metric>: value, ...}`` lines to ``<run>/metrics.jsonl`` on rank 0."""

    def __init__(self, run_dir: str | Path):
        super().__init__()
        self.path = Path(run_dir) / METRICS_FILE

    @property
    def name(self) -> str:
        return "jsonl"

    @property
    def version(self) -> str:
        return "0"

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        row = {"step": int(step or 0), "time": round(time.time(), 3)}
        row.update({k: float(v) for k, v in metrics.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(metric rows merged per step — the last write for a step wins — sorted by step, number of bad lines)."""
    by_step: dict[int, dict[str, Any]] = {}
    bad = 0
    for line in Path(path).read_text().splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (ValueError, KeyError, TypeError):
            bad += 1
            continue
        by_step.setdefault(step, {}).update(row)
    return [by_step[s] for s in sorted(by_step)], bad


def netrc_has_wandb_key() -> bool:
    """Whether ``~/.netrc`` (or ``$NETRC``) holds a password for the W&B host (``WANDB_BASE_URL``'s, else
    api.wandb.ai). Entries for other hosts (git, HTTP) are no W&B key; an unreadable or malformed file holds none."""
    import netrc
    from urllib.parse import urlsplit

    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc or "api.wandb.ai"
    try:
        entry = netrc.netrc(os.environ.get("NETRC") or None).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def tracking_mode(cfg: Config) -> str:
    mode = cfg.tracking.mode
    if mode == "auto":
        has_key = bool(os.environ.get("WANDB_API_KEY")) or netrc_has_wandb_key()
        mode = "online" if has_key and os.environ.get("WANDB_MODE") != "offline" else "offline"
    return mode


def run_id(run_dir: str | Path) -> str:
    """The W&B run id of this run folder: read back on restart, created once otherwise."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits
    new_id = os.environ.get("SEESPEAKER_WANDB_ID", "") or "".join(secrets.choice(alphabet) for _ in range(8))
    from common.files import atomic_write_text

    atomic_write_text(path, new_id)
    return new_id


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class SeespeakerWandbLogger(WandbLogger):
    """WandbLogger that uploads a stage's ``Media`` items and stays quiet once a preemption signal arrived.

    SLURM signals every process of the job, W&B's service process included; logging to it after that would
    fail and cost the preemption checkpoint. The local metric log keeps every value either way.
    """

    def log_metrics(self, metrics, step=None) -> None:
        if not STOP_LOGGING.is_set():
            try:
                super().log_metrics(metrics, step)
            except (ConnectionError, BrokenPipeError, OSError) as exc:
                STOP_LOGGING.set()
                print(f"[tracking] W&B stopped accepting metrics ({exc}); metrics.jsonl keeps them", flush=True)

    def finalize(self, status: str) -> None:
        if not STOP_LOGGING.is_set():
            super().finalize(status)

    def log_media_item(self, key: str, item: Any, step: int) -> None:
        import wandb

        if STOP_LOGGING.is_set():
            return
        if item.image is not None:
            self.experiment.log({key: wandb.Image(item.image, caption=item.caption), "trainer/global_step": step})
        elif item.video_path:
            self.experiment.log({key: wandb.Video(item.video_path, caption=item.caption, format="mp4"),
                                 "trainer/global_step": step})


def build_loggers(cfg: Config, config_dict: dict[str, Any], is_global_zero: bool) -> list[Logger]:
    """The JSONL log always; W&B unless disabled. The id is created on rank 0 only (other ranks make no run)."""
    loggers: list[Logger] = [JSONLMetricLogger(cfg.run.dir)]
    mode = tracking_mode(cfg)
    if mode == "disabled":
        return loggers
    os.environ.setdefault("WANDB_SILENT", "true")
    identifier = run_id(cfg.run.dir) if is_global_zero else os.environ.get("SEESPEAKER_WANDB_ID")
    tags = [cfg.stage.name, cfg.data.name, cfg.experiment.scale, cfg.trainer.strategy, *cfg.tracking.tags]
    commit = config_dict.get("_provenance", {}).get("git_commit", "")
    if commit:
        tags.append(f"commit-{commit[:8]}")
    logger = SeespeakerWandbLogger(
        project=os.environ.get("WANDB_PROJECT", cfg.tracking.project),
        entity=os.environ.get("WANDB_ENTITY", cfg.tracking.entity) or None,
        name=f"{cfg.experiment.name}-{cfg.stage.name}{'-' + cfg.run.name if cfg.run.name else ''}-{identifier}",
        id=identifier, resume="allow", group=cfg.experiment.name, job_type=cfg.stage.name, tags=tags,
        save_dir=cfg.run.dir, offline=(mode == "offline"), log_model=False,
        config=flatten({k: v for k, v in config_dict.items() if not k.startswith("_")}),
    )
    loggers.append(logger)
    return loggers
