"""``make results codebook``: the codebook renderer's 4x upscaling of held-out faces against bicubic upsampling.

The input is each held-out clip's 64 px frames (as the reader gives them); the target is the same frames at
256 px. PSNR / SSIM (torchmetrics, [0, 1] range) are measured at fidelity weight 1; FID (pooled frames, the
packaged Inception) at the stage's default fidelity weight. Bicubic upsampling of the same input is the
baseline, scored the same way in the same run; one back-projection step of it (no network, PSNR / SSIM only)
shows how much of the renderer's gain a fixed operation already gives. Every row and the target reach the scorers
through :func:`evaluation.measure.to_measurement_size` at ``MEASURE_SIZE``, and the bicubic baseline is that same
function applied to the input; PSNR / SSIM come with 95% intervals over test speakers (:mod:`evaluation.intervals`).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from common.images import to_uint8
from datamodules.datamodule import ShardDataModule
from evaluation.fid import FeatureStats, InceptionFeatures, content_features, fid_from_stats
from evaluation.intervals import (
    format_interval,
    format_seeds_and_interval,
    paired_speaker_bootstrap,
    seed_mean_by_clip,
    speaker_bootstrap,
)
from evaluation.measure import MEASUREMENT_RESIZE, to_measurement_size
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import back_project
from lightning_modules.stagefile import StageFiles

FRAMES_PER_CLIP = 8
CHUNK_FRAMES = 64  # frames upscaled and scored at a time (a multiple of FRAMES_PER_CLIP and of FID_STRIDE)
FID_STRIDE = 4  # Inception features of every 4th frame (2 per clip): about 1 s per 256 px frame on one CPU core
ROWS = {"codebook, fidelity 1": "codebook_w1", "codebook, default fidelity": "codebook_default", "bicubic": "bicubic",
        "bicubic, back-projected once (no network)": "bicubic_back_projected"}
FID_ROWS = ("codebook_w1", "codebook_default", "bicubic")  # Inception costs ~1 s a frame: not for the diagnostic row
MEASURE_SIZE = 256  # every row and the target are scored at the target's size; 64 px inputs go up by bicubic
FRAME_METRICS = ("psnr", "ssim")
# row differences worth an interval of their own: (row, minus row)
PAIRS = (("codebook_w1", "bicubic"), ("codebook_default", "bicubic"), ("codebook_w1", "bicubic_back_projected"))
# the render phase (fusion, decoder and detail gate) trains twice as long as the VQ and transformer phases
PHASE_WORDS = {"render": ("trainer.max_steps=600",)}


def held_out_frames(data) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """(64 px inputs [N, 3, r, r], 256 px targets [N, 3, R, R]) in [-1, 1]: FRAMES_PER_CLIP of every test clip,
    clip after clip; and {clip key: speaker} in the same order."""
    dm = ShardDataModule(replace(data, num_workers=0, clip_frames=FRAMES_PER_CLIP, batch_size=8))
    dm.setup()
    low, high, speakers = [], [], {}
    for batch in dm.eval_dataloader("test"):
        valid = batch["valid"]
        low.append(batch["frames"][valid].flatten(0, 1))
        high.append(batch["hr_frames"][valid].flatten(0, 1))
        speakers.update((batch["key"][i], batch["speaker"][i]) for i in torch.nonzero(valid).flatten().tolist())
    return torch.cat(low), torch.cat(high), speakers


def unit(frames: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8-rounded values in [0, 1], as the frames would be written."""
    return ((frames.clamp(-1, 1) + 1) * 127.5).round() / 255


@torch.no_grad()
def upscaled_chunks(stage_path: Path, low: torch.Tensor, size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Each row's outputs for CHUNK_FRAMES input frames at a time, so that memory does not grow with the clips."""
    codebook = CodebookStage.for_inference(StageFiles.of(stage_path, "codebook"))
    window = codebook.cfg.window_frames if codebook.cfg.temporal else FRAMES_PER_CLIP
    for chunk in low.split(CHUNK_FRAMES):
        outputs = {row: torch.cat([codebook.upscale(part, fidelity) for part in chunk.split(window)])
                   for row, fidelity in (("codebook_w1", 1.0), ("codebook_default", None))}
        outputs["bicubic"] = to_measurement_size(chunk, size)
        outputs["bicubic_back_projected"] = back_project(outputs["bicubic"], chunk, 1.0).clamp(-1, 1)
        yield {row: to_measurement_size(frames, size) for row, frames in outputs.items()}


def feature_stats(extractor: InceptionFeatures, images: np.ndarray) -> FeatureStats:
    """Inception statistics of uint8 images [N, H, W, 3]; the features are cached by the frame set's content, so
    the real frames cost one pass for every seed."""
    from reports.results import OUTPUT_ROOT
    stats = FeatureStats(provenance=extractor.describe())
    stats.update(content_features(extractor, images, OUTPUT_ROOT / "inception-features"))
    return stats


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """SSIM of each frame pair [N], a chunk at a time (all at once needs N x 27 MB at 256 px)."""
    return torch.cat([structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
                      for p, t in zip(pred.split(chunk), target.split(chunk), strict=False)])


def frame_scores(frames: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame (PSNR [N], SSIM [N]) of frames in [-1, 1], measured at the target's size, against a target
    already through :func:`unit`."""
    pred = unit(to_measurement_size(frames, target.shape[-1]))
    return (peak_signal_noise_ratio(pred, target, data_range=1.0, reduction="none", dim=(1, 2, 3)),
            ssim_per_frame(pred, target))


def per_clip(psnr: torch.Tensor, ssim: torch.Tensor, clips: list[str]) -> dict[str, dict[str, float]]:
    """Per-frame PSNR and SSIM [N] of clips of FRAMES_PER_CLIP consecutive frames -> {clip key: {psnr, ssim}},
    each the mean over the clip's frames."""
    means = [values.reshape(len(clips), FRAMES_PER_CLIP).mean(1).tolist() for values in (psnr, ssim)]
    return {key: {"psnr": p, "ssim": s} for key, p, s in zip(clips, *means, strict=True)}


def evaluate_codebook(stage_path: Path, data) -> dict:
    """{"rows": {row: {psnr, ssim, fid, frames, fid_frames, per_clip}}, "speakers": {clip key: speaker}} for one
    seed's exported codebook on the test split, every row measured at MEASURE_SIZE.

    PSNR and SSIM are per frame, averaged (per_clip: {clip key: {psnr, ssim}}, each a mean over the clip's frames);
    frames are scored a chunk at a time and only every FID_STRIDE-th one is kept (as uint8) for FID."""
    low, high, speakers = held_out_frames(data)
    psnr: dict[str, list[torch.Tensor]] = {row: [] for row in ROWS.values()}
    ssim: dict[str, list[torch.Tensor]] = {row: [] for row in ROWS.values()}
    kept: dict[str, list[np.ndarray]] = {row: [] for row in [*FID_ROWS, "real"]}
    for outputs, real in zip(upscaled_chunks(stage_path, low, MEASURE_SIZE), high.split(CHUNK_FRAMES), strict=True):
        real = to_measurement_size(real, MEASURE_SIZE)
        target = unit(real)
        kept["real"].append(to_uint8(real[::FID_STRIDE]))
        for row, frames in outputs.items():
            row_psnr, row_ssim = frame_scores(frames, target)
            psnr[row].append(row_psnr)
            ssim[row].append(row_ssim)
            if row in kept:
                kept[row].append(to_uint8(frames[::FID_STRIDE]))
    extractor = InceptionFeatures()
    real_stats = feature_stats(extractor, np.concatenate(kept.pop("real")))
    psnr_all, ssim_all = {row: torch.cat(v) for row, v in psnr.items()}, {row: torch.cat(v) for row, v in ssim.items()}
    scores = {row: {"psnr": float(psnr_all[row].mean()), "ssim": float(ssim_all[row].mean()), "frames": len(low),
                    "per_clip": per_clip(psnr_all[row], ssim_all[row], list(speakers))} for row in ROWS.values()}
    for row, images in kept.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # N < 2048 is reported with the table
            scores[row]["fid"] = fid_from_stats(real_stats, feature_stats(extractor, np.concatenate(images))).fid
        scores[row]["fid_frames"] = sum(len(i) for i in images)
    return {"rows": scores, "speakers": speakers}


def codebook_seed(seed: int) -> dict:
    """One seed's rows: its three codebook phases trained (or reused) and its upscaling scored."""
    from reports.results import CORPUS, SMALL, cached_evaluation, train, train_codebook
    from trainer.config import compose

    stages = SMALL.stages(seed)
    train("conre", seed, stages)
    train_codebook(seed, stages, PHASE_WORDS)
    data = compose(["experiment=small", "stage=codebook", f"data.root={CORPUS}"]).data
    path = stages / "codebook.safetensors"
    result = cached_evaluation(f"codebook-{MEASURE_SIZE}px", seed, [path], lambda: evaluate_codebook(path, data))
    return {"seed": seed, **result}


def clip_values(per_seed: list[dict], row: str, metric: str) -> dict[str, float]:
    """A row's per-clip values of one metric, averaged over the seeds."""
    return seed_mean_by_clip([{clip: v[metric] for clip, v in r["rows"][row]["per_clip"].items()}
                              for r in per_seed])


def cell(per_seed: list[dict], row: str, metric: str) -> str:
    """One row's metric as mean ± std over seeds, with the 95% interval over test speakers for PSNR / SSIM (FID
    pools the frames of all clips: seeds only)."""
    values = [r["rows"][row][metric] for r in per_seed]
    if metric not in FRAME_METRICS:
        return format_seeds_and_interval(values, None)
    return format_seeds_and_interval(values, speaker_bootstrap(clip_values(per_seed, row, metric),
                                                               per_seed[0]["speakers"]))


def paired_lines(per_seed: list[dict]) -> list[str]:
    """One line per PAIRS entry: the PSNR and SSIM differences with their paired intervals over test speakers."""
    names = {row: label for label, row in ROWS.items()}
    lines = []
    for row, other in PAIRS:
        diffs = [f"{metric.upper()} " + format_interval(*paired_speaker_bootstrap(
            clip_values(per_seed, row, metric), clip_values(per_seed, other, metric), per_seed[0]["speakers"]))
            for metric in FRAME_METRICS]
        lines.append(f"- {names[row]} − {names[other]}: " + ", ".join(diffs))
    return lines


def codebook_results() -> tuple[dict, str]:
    """Train (or reuse) the small codebook phases for every seed and tabulate the upscaling against bicubic."""
    from reports.results import SEEDS

    per_seed = [codebook_seed(seed) for seed in SEEDS]
    frames = per_seed[0]["rows"]["bicubic"]["frames"]
    fid_frames = per_seed[0]["rows"]["bicubic"]["fid_frames"]
    lines = [f"4x upscaling (64 -> 256 px) of {frames} held-out frames ({len(SEEDS)} seeds, mean ± std over seeds "
             f"[95% interval over test speakers, seed-averaged clips, speakers resampled]): PSNR / SSIM "
             f"at fidelity weight 1 and at the default, FID of every {FID_STRIDE}th frame against the same real "
             f"256 px frames (N = {fid_frames} < 2048: biased upward, comparable only within this table; seeds "
             f"only). Every row and the target are measured at {MEASURE_SIZE} px ({MEASUREMENT_RESIZE}); the "
             f"bicubic row is that measurement of the 64 px input.", "",
             "| output | PSNR (dB) | SSIM | FID |", "|---|---|---|---|"]
    for label, row in ROWS.items():
        first = per_seed[0]["rows"][row]
        lines.append(f"| {label} | " + " | ".join(cell(per_seed, row, m) if m in first else "—"
                                                  for m in ("psnr", "ssim", "fid")) + " |")
    lines += ["", "Differences of rows on the same clips (mean [paired 95% interval over test speakers]):",
              *paired_lines(per_seed)]
    return {"per_seed": per_seed}, "\n".join(lines)


@torch.no_grad()
def stage2_frame_scores(stages: Path, renderers: list[Path], data, max_clips: int = 50) -> dict[str, dict]:
    """PSNR / SSIM against the real 256 px frames of renderers and bicubic on held-out frames as the motion stage
    of ``stages`` renders them (:func:`rerender_frames`, seeded): the inputs ``render_source: motion`` trains on.
    Usage: ``stage2_frame_scores(Path("outputs/results/small/stages-seed0"), [file, ...], data)``."""
    from lightning_modules.motion_diffusion import MotionDiffusionStage
    from lightning_modules.motion_generation import rerender_frames, truth_gaze

    dm = ShardDataModule(replace(data, num_workers=0, clip_frames=FRAMES_PER_CLIP, batch_size=8))
    dm.setup()
    parts, generator = MotionDiffusionStage.for_inference(StageFiles(stages)), torch.Generator().manual_seed(0)
    low, high = [], []
    for batch in dm.eval_dataloader("test"):
        valid = batch["valid"]
        gaze, known = truth_gaze(batch, FRAMES_PER_CLIP)
        low.append(rerender_frames(parts, batch["frames"][valid], batch["landmarks"][valid], batch["audio"][valid],
                                   data.resolution, generator, gaze[valid], known[valid]).flatten(0, 1))
        high.append(batch["hr_frames"][valid].flatten(0, 1))
        if sum(len(h) for h in high) >= max_clips * FRAMES_PER_CLIP:
            break
    low, target = torch.cat(low), unit(to_measurement_size(torch.cat(high), MEASURE_SIZE))

    def scores(frames: torch.Tensor) -> dict[str, float]:
        psnr, ssim = frame_scores(frames, target)
        return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}

    result = {"frames": len(low), "bicubic": scores(to_measurement_size(low, MEASURE_SIZE))}
    for path in renderers:
        codebook = CodebookStage.for_inference(StageFiles.of(path, "codebook"))
        result[str(path)] = {w: scores(torch.cat([codebook.upscale(c, w) for c in low.split(FRAMES_PER_CLIP)]))
                             for w in (1.0, 0.5, 0.0)}
    return result
