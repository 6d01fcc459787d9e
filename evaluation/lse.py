"""LSE-D, LSE-C and the AV offset exactly as SyncNet's reference evaluation computes them.

Per clip (shared/METRICS.md): ``L = min(n_frames, floor(n_samples / 640))``; windows ``i = 0 .. L-6``;
window i is video frames i..i+4 and MFCC columns 4i..4i+19; the unnormalised audio embeddings are
zero-padded by 15 on both ends; ``d[i, k] = ||v_i - a_{i+k-15}||`` (pairwise distance, eps 1e-6);
``m[k] = mean_i d[i, k]``; LSE-D = min m, LSE-C = median m - min m, offset = 15 - argmin m.
A data set's score is the unweighted mean over clips. Windows of many clips are batched through the
expert in chunks, on any device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from common.images import to_uint8
from evaluation.mfcc import SAMPLE_RATE, float_audio_to_int16_scale, syncnet_mfcc
from lightning_modules.nets.syncnet import WINDOW_FRAMES, mfcc_windows, video_windows

FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
VSHIFT = 15
PAIRWISE_EPS = 1e-6
CROP_MODES = ("whole_frame", "reference_face_track")


@dataclass
class SyncClip:
    """One clip to score: face-crop frames and mono 16 kHz audio.

    ``frames`` is uint8 RGB [T, H, W, 3], or float RGB [T, 3, H, W] in [-1, 1], which is rounded to
    uint8 first (the reference scores 8-bit images).

    ``audio`` is int16 samples (as the reference reads its wav), or float in [-1, 1] (as soundfile
    reads 16-bit PCM), which is scaled back to int16 values with ``round(x * 32768)``.
    """

    key: str
    frames: np.ndarray | torch.Tensor
    audio: np.ndarray | torch.Tensor
    fps: float = FPS
    sample_rate: int = SAMPLE_RATE


@dataclass
class ClipSyncScore:
    """Sync scores of one clip; ``mean_distances`` is m[k] for k = 0..2*vshift."""

    key: str
    lse_d: float
    lse_c: float
    offset: int
    n_windows: int
    mean_distances: list[float] = field(repr=False)


@dataclass
class LSEResult:
    """Per-clip scores, their unweighted means and the protocol that produced them."""

    clips: list[ClipSyncScore]
    lse_d: float
    lse_c: float
    protocol: dict

    def to_dict(self) -> dict:
        """A JSON-ready dict (values, protocol, per-clip scores)."""
        return asdict(self)


def sync_window_count(n_frames: int, n_samples: int) -> int:
    """Number of windows the reference scores: ``min(n_frames, floor(n_samples / 640)) - 5``."""
    return min(n_frames, n_samples // SAMPLES_PER_FRAME) - WINDOW_FRAMES


def offset_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int = VSHIFT) -> torch.Tensor:
    """d [W, 2*vshift+1]: ``d[i, k] = ||v_i - a_{i+k-vshift}||`` with zero-padded audio embeddings."""
    padded = torch.nn.functional.pad(audio_emb, (0, 0, vshift, vshift))
    shifted = padded.unfold(0, 2 * vshift + 1, 1).permute(0, 2, 1)
    return torch.nn.functional.pairwise_distance(video_emb[:, None, :], shifted, eps=PAIRWISE_EPS)


def scores_from_embeddings(key: str, video_emb: torch.Tensor, audio_emb: torch.Tensor,
                           vshift: int = VSHIFT) -> ClipSyncScore:
    """LSE-D, LSE-C and offset of one clip from its window embeddings [W, D] (float32 like the reference)."""
    mean_distances = offset_distances(video_emb.float().cpu(), audio_emb.float().cpu(), vshift).mean(dim=0)
    min_value, min_index = torch.min(mean_distances, 0)
    confidence = torch.median(mean_distances) - min_value
    return ClipSyncScore(
        key=key, lse_d=float(min_value), lse_c=float(confidence), offset=int(vshift - min_index),
        n_windows=int(video_emb.shape[0]), mean_distances=mean_distances.tolist(),
    )


def _int16_valued(audio: np.ndarray | torch.Tensor) -> torch.Tensor:
    audio = torch.as_tensor(np.asarray(audio) if isinstance(audio, np.ndarray) else audio)
    if audio.dtype == torch.int16:
        return audio.to(torch.float64)
    if torch.is_floating_point(audio):
        return float_audio_to_int16_scale(audio)
    raise ValueError(f"audio must be int16 samples or float in [-1, 1], got {audio.dtype}")


def _check_clip(clip: SyncClip) -> int:
    if clip.fps != FPS:
        raise ValueError(f"clip {clip.key}: {clip.fps} fps; LSE assumes {FPS} fps video, resample the clip first")
    if clip.sample_rate != SAMPLE_RATE:
        raise ValueError(
            f"clip {clip.key}: audio at {clip.sample_rate} Hz; LSE needs {SAMPLE_RATE} Hz, resample the audio first"
        )
    if np.ndim(clip.audio) != 1:
        raise ValueError(f"clip {clip.key}: audio must be mono [N], got shape {tuple(np.shape(clip.audio))}")
    n_windows = sync_window_count(len(clip.frames), int(np.shape(clip.audio)[0]))
    if n_windows < 1:
        raise ValueError(
            f"clip {clip.key}: {len(clip.frames)} frames and {np.shape(clip.audio)[0]} audio samples give "
            f"{n_windows + WINDOW_FRAMES} usable frames; LSE needs at least {WINDOW_FRAMES + 1} "
            f"(0.24 s at {FPS} fps). Drop or lengthen this clip."
        )
    return n_windows


def _uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    if isinstance(frames, torch.Tensor) and torch.is_floating_point(frames):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"float frames must be RGB [T, 3, H, W] in [-1, 1], got {tuple(frames.shape)}")
        return to_uint8(frames)
    return frames


def _windows(expert, clips: Iterable[SyncClip], device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(clip index, video window [3, 5, S, S], MFCC window [1, 13, 20]) for every scored window."""
    for index, clip in enumerate(clips):
        n_windows = _check_clip(clip)
        frames = expert.preprocess(_uint8_frames(clip.frames)).to(device)
        mfcc = syncnet_mfcc(_int16_valued(clip.audio)).float().to(device)
        for start in range(n_windows):
            yield index, video_windows(frames, [start])[0], mfcc_windows(mfcc, [start])[0]


@torch.no_grad()
def clip_embeddings(expert, clips: Iterable[SyncClip], batch_windows: int = 32,
                    device: str | torch.device | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(clip index, video_emb [W, D], audio_emb [W, D])`` per clip, running the windows of
    consecutive clips through ``expert`` together in chunks of ``batch_windows``."""
    if batch_windows < 1:
        raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
    if device is None:
        device = next((p.device for p in expert.parameters()), torch.device("cpu"))
    device = torch.device(device)
    pending: dict[int, tuple[list, list]] = {}
    chunk: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def run_chunk():
        video = expert.forward_lip(torch.stack([w[1] for w in chunk])).cpu()
        audio = expert.forward_aud(torch.stack([w[2] for w in chunk])).cpu()
        for row, (index, _, _) in enumerate(chunk):
            pending.setdefault(index, ([], []))
            pending[index][0].append(video[row])
            pending[index][1].append(audio[row])
        chunk.clear()

    for index, video_window, mfcc_window in _windows(expert, clips, device):
        chunk.append((index, video_window, mfcc_window))
        if len(chunk) == batch_windows:
            last = chunk[-1][0]
            run_chunk()
            for done in sorted(i for i in pending if i < last):
                yield _finish(pending, done)
    if chunk:
        run_chunk()
    for done in sorted(pending):
        yield _finish(pending, done)


def _finish(pending: dict, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
    video, audio = pending.pop(index)
    return index, torch.stack(video), torch.stack(audio)


def lse_scores(expert, clips: Iterable[SyncClip], batch_windows: int = 32, device: str | torch.device | None = None,
               expert_label: str | None = None, crop_mode: str = "whole_frame") -> LSEResult:
    """LSE-D / LSE-C / offset of every clip and their unweighted means, with the protocol recorded.

    ``expert`` is a sync expert (``lightning_modules.nets.syncnet``) in eval mode; ``crop_mode`` says how
    the face crops were made (``whole_frame``: the clips are face-centred crops, resized whole).
    """
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode {crop_mode!r} is not one of {CROP_MODES}")
    was_training = expert.training
    expert.eval()
    clips = list(clips)
    for clip in clips:
        _check_clip(clip)
    try:
        scores = [
            scores_from_embeddings(clips[index].key, video, audio)
            for index, video, audio in clip_embeddings(expert, clips, batch_windows, device)
        ]
    finally:
        expert.train(was_training)
    if not scores:
        raise ValueError("lse_scores got no clips; give at least one clip of 6 or more frames")
    protocol = {
        "metric": "LSE (SyncNet reference evaluation)",
        "expert": expert_label or f"syncnet-{getattr(expert, 'layout', type(expert).__name__)}",
        "expert_weights_sha256": getattr(expert, "weights_sha256", None),
        "input_size": expert.input_size,
        "color": "BGR 0..255",
        "crop_mode": crop_mode,
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "vshift": VSHIFT,
        "mfcc": "python_speech_features defaults on int16-valued samples",
        "n_clips": len(scores),
    }
    return LSEResult(
        clips=scores,
        lse_d=float(np.mean([s.lse_d for s in scores])),
        lse_c=float(np.mean([s.lse_c for s in scores])),
        protocol=protocol,
    )
