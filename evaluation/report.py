"""Evaluation results: ``results.json`` (every value with its protocol), ``results.md``, a W&B table and summary,
and a side-by-side comparison of several results files.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from common.errors import SeespeakerError
from common.files import atomic_write_bytes, atomic_write_text

RESULTS_FORMAT = 1
METRIC_ORDER = ("lse_c", "lse_d", "fid", "csim", "psnr", "ssim", "mouth_sync_face_rate", "mouth_sync_r",
                "mouth_sync_null", "mouth_sync_margin", "mouth_sync_truth_r")
METRIC_LABELS = {"lse_c": "LSE-C ↑", "lse_d": "LSE-D ↓", "fid": "FID ↓", "csim": "CSIM ↑", "psnr": "PSNR ↑",
                 "ssim": "SSIM ↑", "mouth_sync_face_rate": "face rate ↑", "mouth_sync_r": "mouth-loudness r ↑",
                 "mouth_sync_null": "r, shifted speech", "mouth_sync_margin": "r − shifted ↑",
                 "mouth_sync_truth_r": "mouth r vs real ↑"}
PROTOCOL_KEYS = ("protocol.name", "sync_expert.sha256", "crop_mode", "crop_scale", "lse_frames", "resize_mode",
                 "inception_sha256", "face_model", "face_model_sha256", "csim_landmarks", "fps", "sample_rate",
                 "resolution", "fid_frame_stride", "csim_frame_stride", "seed", "max_clips", "test_set")


class ResultsReadError(SeespeakerError, ValueError):
    """A results.json that cannot be read or is not an evaluation result."""


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def speaker_intervals(per_video: dict, seed: int = 0) -> dict:
    """Percentile bootstrap intervals of every per-video metric's mean, over test speakers (a speaker's videos are
    resampled together; a video paired with no test clip counts as a speaker of its own). A metric with fewer than
    two speakers has none (one speaker gives a zero-width interval); nor has FID."""
    from evaluation.intervals import BOOTSTRAP_SAMPLES, LEVEL, speaker_bootstrap

    out = {}
    for metric in (m for m in METRIC_ORDER if m != "fid"):
        values = {k: float(row[metric]) for k, row in per_video.items()
                  if isinstance(row.get(metric), numbers.Real) and math.isfinite(row[metric])}
        if not values:
            continue
        groups = {k: per_video[k].get("speaker") or f"video:{k}" for k in values}
        if len(set(groups.values())) < 2:
            continue
        mean, low, high = speaker_bootstrap(values, groups, seed=seed)
        out[metric] = {"mean": mean, "low": low, "high": high, "level": LEVEL, "resamples": BOOTSTRAP_SAMPLES,
                       "speakers": len(set(groups.values())), "videos": len(values),
                       "videos_without_speaker": sum(not per_video[k].get("speaker") for k in values)}
    return out


def build_results(scores: dict, videos, protocol, source: dict, argv: list[str] | None = None,
                  provenance: dict | None = None) -> dict:
    """The results document: metrics (with intervals over speakers), protocol (with weight hashes), counts, what was
    skipped or not computed and why, per-video values, provenance (``provenance`` adds to the defaults)."""
    import torch

    details = scores["details"]
    frames = sum(row["n_frames"] for row in scores["per_video"].values())
    found = len(videos.videos) + len(videos.skipped)
    return {
        "format": RESULTS_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "metrics": scores["metrics"],
        "intervals": speaker_intervals(scores["per_video"], protocol.seed),
        "not_computed": scores.get("not_computed", {}),
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
                   "shard_samples_skipped": len(videos.shard_skipped)},
        "skipped": videos.skipped,
        "shard_skipped": videos.shard_skipped,
        "details": details,
        "per_video": scores["per_video"],
        "timing_s": scores.get("timing_s", {}),
        "provenance": {"git_commit": _git_commit(), "torch": torch.__version__, "python": platform.python_version(),
                       "host": platform.node(), "command": argv or [], **(provenance or {})},
    }


def _cell(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _metric_cell(results: dict, metric: str) -> str:
    value, interval = results["metrics"][metric], results.get("intervals", {}).get(metric)
    if interval is None or not isinstance(value, float) or not math.isfinite(value):
        return _cell(value)
    return f"{_cell(value)} [{interval['low']:.4f}, {interval['high']:.4f}]"


def _interval_lines(intervals: dict) -> list[str]:
    if not intervals:
        return []
    alone = max(i["videos_without_speaker"] for i in intervals.values())
    level, resamples = next(iter(intervals.values()))["level"], next(iter(intervals.values()))["resamples"]
    return [f"Brackets: {level:.0%} percentile bootstrap intervals over test speakers ({resamples} resamples, a "
            f"speaker's videos together"
            + (f"; {alone} video(s) paired with no test clip count as speakers of their own" if alone else "")
            + "); FID has none."]


def _detail_lines(details: dict) -> list[str]:
    """What each metric could not use, and the warnings a reader must see."""
    lse, fid, csim, psnr = (details.get(k, {}) for k in ("lse", "fid", "csim", "psnr_ssim"))
    lines = [f"- LSE skipped {s['video']}: {s['reason']}" for s in lse.get("videos_without_face", [])]
    if "n_generated_frames" in fid:
        lines.append(f"FID: {fid['n_generated_frames']} generated vs {fid['n_real_frames']} real frames "
                     f"(frame stride {fid['frame_stride']}); compare FID only at equal N.")
    lines += [f"- FID warning: {w}" for w in fid.get("warnings", [])]
    if csim.get("n_frames"):
        found = csim["n_frames"] - csim["n_frames_without_face"]
        lines.append(f"CSIM ({csim['model']}): a face found in {found} of {csim['n_frames']} frames "
                     f"({found / csim['n_frames']:.1%}); {csim['n_videos_without_face']} video(s) with no face, "
                     f"{len(csim['videos_without_reference'])} without a reference face.")
    if psnr.get("videos_without_truth") or psnr.get("compared_on_the_shorter_length"):
        lines.append(f"PSNR/SSIM: {psnr['n_videos']} video(s) with ground truth, "
                     f"{len(psnr['videos_without_truth'])} without; {len(psnr['compared_on_the_shorter_length'])} "
                     "differ from their truth in length (compared on the shorter).")
    return lines


def markdown(results: dict) -> str:
    """``results.md``: the metric table (with intervals), then the protocol, counts, what was skipped or not computed
    and why, and the warnings a reader needs to trust it."""
    metrics = results["metrics"]
    names = [m for m in METRIC_ORDER if m in metrics]
    protocol, counts = results["protocol"], results["counts"]
    label = results["source"].get("label") or results["source"].get("kind", "")
    unreadable = counts.get("shard_samples_skipped", 0)
    lines = ["| method | " + " | ".join(METRIC_LABELS[m] for m in names) + " |",
             "| --- | " + " | ".join("---" for _ in names) + " |",
             f"| {label} | " + " | ".join(_metric_cell(results, m) for m in names) + " |", "",
             f"Protocol `{protocol['name']}`: sync expert {protocol.get('sync_expert_used') or '-'} "
             f"(sha256 {str(protocol.get('sync_expert_sha256') or '-')[:12]}), crop `{protocol['crop_mode']}`, "
             f"LSE frames `{protocol.get('lse_frames', 'decoded')}`, FID resize `{protocol['resize_mode']}` "
             f"(Inception sha256 {str(protocol.get('inception_sha256') or '-')[:12]}), "
             f"face model {protocol.get('face_model') or '-'}, {protocol['fps']:g} fps, {protocol['sample_rate']} Hz, "
             f"seed {protocol['seed']}.",
             f"Videos: {counts['videos_scored']} scored of {counts['videos_found']} "
             f"({counts['videos_skipped']} skipped, {counts['resampled']} resampled), "
             f"{counts['frames_scored']} frames" + (f"; {unreadable} shard sample(s) unreadable." if unreadable
                                                     else ".")]
    lines += _interval_lines(results.get("intervals", {})) + _detail_lines(results["details"])
    lines += [f"- {metric} not computed: {reason}" for metric, reason in results.get("not_computed", {}).items()]
    lines += [f"- skipped {skip['video']}: {skip['reason']}" for skip in results["skipped"]]
    lines += [f"- unreadable in the shards: {s['video']}: {s['reason']}" for s in results.get("shard_skipped", [])]
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


def keep_earlier(out: Path) -> Path | None:
    """Copy an earlier ``results.json`` / ``results.md`` in ``out`` to ``results.<its creation time>.*`` (the
    originals stay until the new ones replace them); returns the kept JSON path, or None when there was none."""
    earlier = out / "results.json"
    if not earlier.is_file():
        return None
    try:
        created = str(json.loads(earlier.read_text()).get("created", ""))
    except (OSError, ValueError, AttributeError):
        created = ""
    stamp = "".join(c for c in created if c.isalnum()) or time.strftime("%Y%m%dT%H%M%S", time.gmtime(
        earlier.stat().st_mtime))
    name, suffix = f"results.{stamp}", 1
    while (out / f"{name}.json").exists():
        name, suffix = f"results.{stamp}-{suffix}", suffix + 1
    for ext in ("json", "md"):
        if (out / f"results.{ext}").is_file():
            atomic_write_bytes(out / f"{name}.{ext}", (out / f"results.{ext}").read_bytes())
    return out / f"{name}.json"


def write_results(results: dict, out: str | Path) -> tuple[Path, Path, Path | None]:
    """Write ``results.json`` (strict JSON: a non-finite value becomes null) and ``results.md`` into ``out``
    atomically, keeping an earlier pair there (:func:`keep_earlier`). Returns (json, md, kept earlier json)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(nan_to_none(results), indent=2, sort_keys=True, default=str, allow_nan=False)
    kept = keep_earlier(out)
    atomic_write_text(out / "results.json", text)
    atomic_write_text(out / "results.md", markdown(results))
    return out / "results.json", out / "results.md", kept


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
    if key in ("inception_sha256", "face_model_sha256"):
        return (results["protocol"].get(key) or "-")[:12]
    if key == "test_set":  # the index file, split, clips and resolution the real clips were read with
        source = results.get("source", {})
        return f"{source.get('split', '-')}:{(source.get('test_set_sha256') or '-')[:12]}"
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
