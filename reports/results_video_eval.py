"""``make results NAMES=video``: one seed's evaluation of the two frame renderers (the table:
:mod:`reports.results_video`), cached per seed under a key of this module's code and the stage files it reads.

For each held-out clip the windowed file samples the motion once from the clip's speech; both renderers then draw
that same motion from the clip's real first frame with the same sampler steps, seeds, process and threads. Every row,
the truth included, is brought to ``MEASURE_SIZE`` by :func:`evaluation.measure.to_measurement_size` before every
scorer: the independent sync expert (LSE), dlib's landmarks (per-group motion, :mod:`evaluation.motion_groups`) and
the pixel metrics (:mod:`evaluation.temporal`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from common.images import to_uint8
from evaluation.lse import SyncClip
from evaluation.measure import to_measurement_size
from evaluation.motion_groups import frame_landmarks, motion_group_statistics
from evaluation.temporal import non_mouth_mask, seam_ratio, temporal_statistics
from lightning_modules.motion_diffusion import MotionDiffusionStage
from lightning_modules.motion_generation import render_frames, sample_motion, truth_gaze
from lightning_modules.stagefile import StageFiles
from reports.eval_inputs import test_clips
from reports.results_sync_eval import score_rows

ROWS = {"windowed": "windowed renderer", "sequential": "sequential renderer (baseline)",
        "windowed_true_motion": "windowed renderer, true motion", "reconstruction": "autoencoder reconstruction",
        "truth": "ground truth"}
CLIPS = 26  # one clip each of 26 test speakers, 2 s (50 frames) each
MEASURE_SIZE = 128
IMAGE = Path("docs/images/video_window_join.png")
PICTURE_ROWS = ("truth", "reconstruction", "windowed_true_motion", "windowed", "sequential")
LONG_SECONDS = 30.0
LONG_CLIP_INDEX = 90  # a clip index the corpus never wrote (it writes 0 .. clips_per_speaker - 1)


@torch.no_grad()
def render_clip(parts_by_row: dict, clip: dict, features: torch.Tensor,
                seed: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """({row: frames [T, 3, r, r]}, {row: output frames per second}) of one clip: the windowed file's motion,
    drawn by each renderer from the clip's first frame and the clip's audio ``features``."""
    windowed = parts_by_row["windowed"]
    audio, n_frames = clip["audio"].float(), clip["frames"].shape[0]
    motion = sample_motion(windowed, features, windowed.frozen.speaker(audio[None]), n_frames,
                           torch.Generator().manual_seed(seed))
    portrait = windowed.frozen.encode(clip["frames"][:1])
    videos, speed = {}, {}
    for row, parts in parts_by_row.items():
        start = time.perf_counter()
        latents = render_frames(parts, portrait, motion, features, torch.Generator().manual_seed(seed + 1))
        videos[row] = decode(parts, latents)
        speed[row] = n_frames / (time.perf_counter() - start)
    return videos, speed


def decode(parts, latents: torch.Tensor) -> torch.Tensor:
    return torch.cat([parts.frozen.decode(chunk) for chunk in latents.split(16)])


@torch.no_grad()
def ceiling_rows(parts, clip: dict, features: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The rows that place the renderers' error: the windowed renderer given the motion latents the motion encoder
    makes of the clip's real landmarks (no motion sampling), and the autoencoder's reconstruction of the real
    frames (what any renderer of these latents can reach)."""
    frames, n_frames = clip["frames"], clip["frames"].shape[0]
    gaze, mask = truth_gaze({"motion_truth": clip["motion_truth"][None],
                             "has_motion_truth": clip["has_motion_truth"][None]}, n_frames)
    motion = parts.motion_encoder(clip["landmarks"][None].float(), frames.shape[-1], gaze, mask)
    portrait = parts.frozen.encode(frames[:1])
    latents = render_frames(parts, portrait, motion, features, torch.Generator().manual_seed(seed + 1))
    reconstruction = decode(parts, torch.cat([parts.frozen.encode(chunk) for chunk in frames.split(16)]))
    return {"windowed_true_motion": decode(parts, latents), "reconstruction": reconstruction}


def clip_metrics(video: torch.Tensor, real: torch.Tensor, real_landmarks: np.ndarray, truth: np.ndarray,
                 window: int) -> dict[str, float]:
    """Motion, temporal and seam statistics of one row's clip, everything at MEASURE_SIZE."""
    frames = to_measurement_size(video, MEASURE_SIZE)
    landmarks, _ = frame_landmarks(frames)
    mask = non_mouth_mask(real_landmarks, MEASURE_SIZE)
    return {**motion_group_statistics(landmarks, real_landmarks, truth),
            **temporal_statistics(frames, to_measurement_size(real, MEASURE_SIZE), mask),
            "seam_ratio": seam_ratio(frames, window)}


def evaluate_seed(stages: Path, baseline: Path, data, scorer: Path, seed: int) -> dict:
    """Every row's per-clip metrics and LSE, the renderers' speed and denoiser calls, and (seed 0) the picture."""
    parts = {"windowed": MotionDiffusionStage.for_inference(StageFiles(stages)),
             "sequential": MotionDiffusionStage.for_inference(StageFiles(baseline))}
    window = parts["windowed"].cfg.frame_window
    clips = test_clips(data, CLIPS)
    per_clip = {row: {} for row in ROWS}
    sync = {row: [] for row in ROWS}
    speeds = {row: [] for row in parts}
    for index, clip in enumerate(clips):
        features = parts["windowed"].audio_features(clip["audio"].float()[None], clip["frames"].shape[0])
        videos, speed = render_clip(parts, clip, features, 1000 * seed + index)
        videos |= ceiling_rows(parts["windowed"], clip, features, 1000 * seed + index)
        videos["truth"] = clip["frames"]
        real = to_measurement_size(clip["frames"], MEASURE_SIZE)
        real_landmarks, _ = frame_landmarks(real)
        truth = clip["motion_truth"].numpy()
        for row, video in videos.items():
            per_clip[row][clip["key"]] = clip_metrics(video, clip["frames"], real_landmarks, truth, window)
            sync[row].append(SyncClip(clip["key"], video, clip["audio"]))
        for row, value in speed.items():
            speeds[row].append(value)
        if seed == 0 and index == 0:
            save_join_picture(videos, window)
    long = long_speech(parts, Path(data.root), clips[0]["speaker"], data.resolution, 1000 * seed + 999)
    lse = score_rows(sync, scorer, MEASURE_SIZE)
    for row in ROWS:
        for key, values in lse[row]["per_clip"].items():
            per_clip[row][key].update(values)
    return {"per_clip": per_clip, "speakers": {c["key"]: c["speaker"] for c in clips},
            "frames_per_second": {row: float(np.median(v)) for row, v in speeds.items()},
            "threads": torch.get_num_threads(), "window": window, "long_speech": long,
            "denoiser_calls_per_frame": {row: calls_per_frame(p, clips[0]["frames"].shape[0])
                                         for row, p in parts.items()}}


def calls_per_frame(parts, n_frames: int) -> float:
    """Frame-UNet calls per output frame for a video of ``n_frames`` frames."""
    per_video = math.ceil(n_frames / parts.cfg.frame_window) if parts.cfg.windowed else n_frames
    return per_video * parts.cfg.frame_steps / n_frames


def save_join_picture(videos: dict[str, torch.Tensor], window: int) -> None:
    """Rows PICTURE_ROWS, the 4 frames each side of the first window join, at MEASURE_SIZE."""
    from common.media import write_png
    around = slice(window - 4, window + 4)
    rows = [np.concatenate(list(to_uint8(to_measurement_size(videos[row][around], MEASURE_SIZE))), axis=1)
            for row in PICTURE_ROWS]
    write_png(IMAGE, np.concatenate(rows, axis=0))


def long_clip(corpus: Path, speaker: str, seconds: float | None = None):
    """A fresh ``seconds``-long clip of a test speaker from the corpus's own generator (its speech, frames and
    motion truth; the same speaker draw as the corpus)."""
    from datamodules.shards import ShardIndex
    from datamodules.synthetic import SyntheticConfig, base_layer, draw_speaker, make_clip

    options = ShardIndex.load(corpus).extra["synthetic"]["config"]
    cfg = SyntheticConfig(**{**options, "seconds": seconds or LONG_SECONDS})
    index = int(speaker[3:])
    person = draw_speaker(cfg.seed, index, cfg.voice_share)
    base = base_layer(person.face, cfg.resolution, np.random.default_rng([cfg.seed, index, 0]), brows=False)
    return make_clip(person, base, cfg, LONG_CLIP_INDEX, "test")


@torch.no_grad()
def long_speech(parts_by_row: dict, corpus: Path, speaker: str, resolution: int, seed: int) -> dict:
    """Per renderer (and the truth) the identity of each 5 s segment to the portrait and its mean colour, over
    LONG_SECONDS of one test speaker's speech animated from the clip's first frame."""
    from evaluation.identity import DlibFaceEmbedder
    from evaluation.temporal import segment_drift

    clip = long_clip(corpus, speaker)
    real = to_measurement_size(clip.frames, resolution)
    audio = torch.from_numpy(clip.audio)
    features = parts_by_row["windowed"].audio_features(audio.float()[None], real.shape[0])
    videos, _ = render_clip(parts_by_row, {"audio": audio, "frames": real}, features, seed)
    videos["truth"] = real
    embedder = DlibFaceEmbedder(upsample=2)
    portrait = to_uint8(to_measurement_size(real[:1], MEASURE_SIZE))[0]
    return {row: segment_drift(to_measurement_size(video, MEASURE_SIZE), portrait, embedder, fps=25.0)
            for row, video in videos.items()}


