"""The sync table's evaluation of one seed: each test clip animated from its real first frame with its speech, the
rows of ``reports.results_sync`` generated and scored by the independent scorer, every row measured at
``MEASURE_SIZE`` (:func:`evaluation.measure.to_measurement_size`). :func:`score_rows` is shared with the video table.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from evaluation.lse import SyncClip, lse_scores
from evaluation.measure import to_measurement_size
from generation.pipeline import GenerationOptions, TalkingFacePipeline
from lightning_modules.stagefile import StageFiles
from lightning_modules.syncnet import SyncNetStage, sync_region
from reports.eval_inputs import test_clips

ROWS = {"motion_diffusion": "(i) motion_diffusion", "lip_enhancer": "(ii) + lip_enhancer",
        "codebook": "(v) + codebook (256 px)", "truth": "(iii) ground truth", "mismatched": "(iv) other clip's audio"}
CLIPS = 26  # one clip each of 26 of the test speakers
MEASURE_SIZE = 256  # every row is scored at the codebook row's size
METRICS = ("lse_c", "lse_d", "offset_zero")


@torch.no_grad()
def stage2_videos(stages: Path, clips: list[dict], seed: int) -> dict[str, list[SyncClip]]:
    """Every row's clips: generated from each clip's first frame and speech, the truth, and mismatched audio."""
    with_codebook = (stages / "codebook.safetensors").is_file()
    pipeline = TalkingFacePipeline(stages, GenerationOptions(seed=seed, codebook=with_codebook))
    rows: dict[str, list[SyncClip]] = {name: [] for name in ROWS if with_codebook or name != "codebook"}
    for index, clip in enumerate(clips):
        steps: dict[str, torch.Tensor] = {}
        _, final = pipeline.video(clip["frames"][0], clip["audio"], {}, lambda step: None, steps)
        audio = clip["audio"]
        other = clips[(index + 1) % len(clips)]["audio"]
        rows["motion_diffusion"].append(SyncClip(clip["key"], steps["motion_diffusion"], audio))
        rows["lip_enhancer"].append(SyncClip(clip["key"], steps["lip_enhancer"], audio))
        if with_codebook:
            rows["codebook"].append(SyncClip(clip["key"], final, audio))
        rows["truth"].append(SyncClip(clip["key"], clip["frames"], audio))
        rows["mismatched"].append(SyncClip(clip["key"], steps["lip_enhancer"], other))
    return rows


def score_rows(rows: dict[str, list[SyncClip]], scorer_path: Path, size: int = MEASURE_SIZE) -> dict[str, dict]:
    """{row: {lse_c, lse_d, offset_zero, clips, per_clip}} by the scorer expert, every row measured at ``size``
    (offset_zero: fraction of clips found in sync; per_clip: {clip key: the same three})."""
    expert, cfg = SyncNetStage.for_inference(StageFiles.of(scorer_path, "syncnet"))
    scores = {}
    for name, clips in rows.items():
        seen = [replace(c, frames=sync_region(to_measurement_size(c.frames, size), cfg.region))
                for c in clips]
        result = lse_scores(expert, seen, expert_label=f"scorer {scorer_path}")
        per_clip = {c.key: {"lse_c": c.lse_c, "lse_d": c.lse_d, "offset_zero": float(c.offset == 0)}
                    for c in result.clips}
        in_sync = sum(c.offset == 0 for c in result.clips) / len(result.clips)
        scores[name] = {"lse_c": result.lse_c, "lse_d": result.lse_d, "offset_zero": in_sync,
                        "clips": len(result.clips), "per_clip": per_clip}
    return scores


def evaluate_seed(stages: Path, data, scorer: Path, seed: int) -> dict:
    """{"rows": score_rows(...), "speakers": {clip key: speaker}} of one seed's Stage-2 files on the test clips."""
    clips = test_clips(data, CLIPS)
    return {"rows": score_rows(stage2_videos(stages, clips, seed), scorer),
            "speakers": {clip["key"]: clip["speaker"] for clip in clips}}
