"""Evaluation results: ``results.json`` (every value with its protocol), ``results.md``, a W&B table and summary,
and a side-by-side comparison of several results files.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from common.errors import SeespeakerError
from common.files import atomic_write_text

RESULTS_FORMAT = 1
METRIC_ORDER = ("lse_c", "lse_d", "fid", "csim", "psnr", "ssim", "mouth_sync_face_rate", "mouth_sync_r",
                "mouth_sync_null", "mouth_sync_margin", "mouth_sync_truth_r")
METRIC_LABELS = {"lse_c": "LSE-C ↑", "lse_d": "LSE-D ↓", "fid": "FID ↓", "csim": "CSIM ↑", "psnr": "PSNR ↑",
                 "ssim": "SSIM ↑", "mouth_sync_face_rate": "face rate ↑", "mouth_sync_r": "mouth-loudness r ↑",
                 "mouth_sync_null": "r, shifted speech", "mouth_sync_margin": "r − shifted ↑",
                 "mouth_sync_truth_r": "mouth r vs real ↑"}
PROTOCOL_KEYS = ("protocol.name", "sync_expert.sha256", "crop_mode", "resize_mode", "inception_sha256",
                 "face_model", "fps", "sample_rate", "seed", "max_clips")


class ResultsReadError(SeespeakerError, ValueError):
    """A results.json that cannot be read or is not an evaluation result."""


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def build_results(scores: dict, videos, protocol, source: dict, argv: list[str] | None = None) -> dict:
    """The results document: metrics, protocol (with weight hashes), counts, per-video values, provenance."""
    import torch

    details = scores["details"]
    frames = sum(row["n_frames"] for row in scores["per_video"].values())
    found = len(videos.videos) + len(videos.skipped)
    return {
        "format": RESULTS_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "metrics": scores["metrics"],
        "protocol": {
            **protocol.to_dict(),
            "sync_expert_used": details.get("lse", {}).get("expert"),
            "sync_expert_sha256": details.get("lse", {}).get("expert_weights_sha256"),
            "inception_sha256": details.get("fid", {}).get("extractor", {}).get("weights_sha256"),
            "face_model": details.get("csim", {}).get("model"),
            "face_model_sha256": details.get("csim", {}).get("sha256"),
        },
        "counts": {"videos_found": found, "videos_scored": len(videos.videos), "videos_skipped": len(videos.skipped),
                   "frames_scored": frames, "clips_with_ground_truth": sum(v.truth is not None for v in videos.videos),
                   "resampled": sum(bool(v.notes) for v in videos.videos),
                   "shard_samples_skipped": videos.shard_skipped},
        "skipped": videos.skipped,
        "details": details,
        "per_video": scores["per_video"],
        "timing_s": scores.get("timing_s", {}),
        "provenance": {"git_commit": _git_commit(), "torch": torch.__version__, "python": platform.python_version(),
                       "host": platform.node(), "command": argv or []},
    }


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown(results: dict) -> str:
    """``results.md``: the metric table, then the protocol and counts a reader needs to trust it."""
    metrics = results["metrics"]
    names = [m for m in METRIC_ORDER if m in metrics]
    protocol, counts = results["protocol"], results["counts"]
    label = results["source"].get("label") or results["source"].get("kind", "")
    lines = ["| method | " + " | ".join(METRIC_LABELS[m] for m in names) + " |",
             "| --- | " + " | ".join("---" for _ in names) + " |",
             f"| {label} | " + " | ".join(_cell(metrics[m]) for m in names) + " |", "",
             f"Protocol `{protocol['name']}`: sync expert {protocol.get('sync_expert_used') or '-'} "
             f"(sha256 {str(protocol.get('sync_expert_sha256') or '-')[:12]}), crop `{protocol['crop_mode']}`, "
             f"FID resize `{protocol['resize_mode']}` "
             f"(Inception sha256 {str(protocol.get('inception_sha256') or '-')[:12]}), "
             f"face model {protocol.get('face_model') or '-'}, {protocol['fps']:g} fps, {protocol['sample_rate']} Hz, "
             f"seed {protocol['seed']}.",
             f"Videos: {counts['videos_scored']} scored of {counts['videos_found']} "
             f"({counts['videos_skipped']} skipped, {counts['resampled']} resampled), "
             f"{counts['frames_scored']} frames."]
    fid = results["details"].get("fid")
    if fid:
        lines.append(f"FID: {fid['n_generated_frames']} generated vs {fid['n_real_frames']} real frames "
                     f"(frame stride {fid['frame_stride']}); compare FID only at equal N.")
    for skip in results["skipped"]:
        lines.append(f"- skipped {skip['video']}: {skip['reason']}")
    return "\n".join(lines) + "\n"


def nan_to_none(value: Any) -> Any:
    """``value`` with every non-finite float (at any depth of dicts and lists) as None: strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def write_results(results: dict, out: str | Path) -> tuple[Path, Path]:
    """Write ``results.json`` (strict JSON: a non-finite value becomes null) and ``results.md`` into ``out``
    atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(nan_to_none(results), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_text(out / "results.json", text)
    atomic_write_text(out / "results.md", markdown(results))
    return out / "results.json", out / "results.md"


def load_results(path: str | Path) -> dict:
    """A results.json (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResultsReadError(f"{path}: not a readable results.json ({exc})") from None
    if not isinstance(results, dict) or "metrics" not in results or "protocol" not in results:
        raise ResultsReadError(f"{path}: not an evaluation results.json (no metrics/protocol)")
    results["_path"] = str(path)
    return results


def _protocol_value(results: dict, key: str) -> Any:
    if key == "protocol.name":
        return results["protocol"].get("name")
    if key == "sync_expert.sha256":
        return (results["protocol"].get("sync_expert_sha256") or "-")[:12]
    if key == "inception_sha256":
        return (results["protocol"].get("inception_sha256") or "-")[:12]
    return results["protocol"].get(key)


def compare(paths: list[str | Path]) -> str:
    """A side-by-side table of several results: metrics, counts, and every protocol key that differs."""
    runs = [load_results(p) for p in paths]
    headers = ["", *[Path(r["_path"]).parent.name or r["_path"] for r in runs]]
    rows = []
    for metric in METRIC_ORDER:
        if any(metric in r["metrics"] for r in runs):
            rows.append([METRIC_LABELS[metric], *[_cell(r["metrics"].get(metric)) for r in runs]])
    rows.append(["videos scored", *[str(r["counts"]["videos_scored"]) for r in runs]])
    rows.append(["source", *[r["source"].get("label") or r["source"].get("kind", "") for r in runs]])
    differing = [k for k in PROTOCOL_KEYS if len({json.dumps(_protocol_value(r, k)) for r in runs}) > 1]
    for key in differing:
        rows.append([f"protocol: {key}", *[_cell(_protocol_value(r, key)) for r in runs]])
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    if differing:
        lines.append("warning: the protocols differ in " + ", ".join(differing)
                     + ": these numbers are not directly comparable")
    return "\n".join(lines)


def log_to_wandb(results: dict, run_dir: str | Path, project: str = "seespeaker") -> str:
    """Append the results to the W&B run of a training run folder (its ``wandb_id``): a per-video table and
    ``eval/<metric>`` summary values. Offline unless an API key is set. Returns the W&B run id."""
    import wandb

    run_dir = Path(run_dir)
    id_file = run_dir / "wandb_id"
    if not id_file.is_file():
        raise ResultsReadError(f"--wandb-run-dir {run_dir}: no wandb_id file; give a run folder trained with W&B")
    run_id = id_file.read_text().strip()
    online = bool(os.environ.get("WANDB_API_KEY")) and os.environ.get("WANDB_MODE") != "offline"
    run = wandb.init(id=run_id, resume="allow", dir=str(run_dir), project=os.environ.get("WANDB_PROJECT", project),
                     mode="online" if online else "offline", job_type="evaluate", reinit="finish_previous")
    names = [m for m in METRIC_ORDER if any(m in row for row in results["per_video"].values())]
    table = wandb.Table(columns=["video", "n_frames", *names])
    for key, row in results["per_video"].items():
        table.add_data(key, row["n_frames"], *[row.get(m) for m in names])
    run.log({"eval/per_video": table})
    for metric, value in results["metrics"].items():
        run.summary[f"eval/{metric}"] = value
    run.summary["eval/protocol"] = results["protocol"]["name"]
    run.summary["eval/videos_scored"] = results["counts"]["videos_scored"]
    run.finish()
    return run_id
