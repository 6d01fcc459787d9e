"""Temporal metrics of rendered video: consistency that a frozen video cannot win, flicker, window seams, and the
drift of identity and colour over long speech. One definition, reused by the codebook and end-to-end tables
(issue 25); the per-group motion statistics they are reported with live in :mod:`evaluation.motion_groups`.

Frames are numpy uint8 [T, H, W, 3], float [T, H, W, 3] in [0, 1], or the float tensor [T, 3, H, W] in [-1, 1] that
:func:`evaluation.measure.to_measurement_size` returns (all are brought to float [T, H, W, 3] in [0, 1]). Masks are
[T, H, W] or [H, W], 1 where a pixel counts.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from common.images import to_uint8
from evaluation.identity import FaceNotFoundError

MOUTH_REGION = list(range(2, 15)) + list(range(48, 68))  # lower jaw line and the mouth: their hull is excluded
MOUTH_DILATION_IOD = 0.25  # the hull is dilated by this share of the inter-ocular distance


def unit_frames(frames) -> np.ndarray:
    """float32 [T, H, W, 3] in [0, 1] from uint8 [T, H, W, 3], float [T, H, W, 3] in [0, 1] or a float tensor
    [T, 3, H, W] in [-1, 1]."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy() if frames.dtype == torch.uint8 else \
            ((frames.detach().cpu().float() + 1) / 2).clamp(0, 1).movedim(-3, -1).numpy()
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected frames [T, H, W, 3], got {array.shape}")
    return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)


def _masks(mask, frames: int, shape: tuple[int, int]) -> np.ndarray:
    mask = np.ones(shape, np.float32) if mask is None else np.asarray(mask, np.float32)
    return np.broadcast_to(mask, (frames, *shape))


def frame_changes(frames, mask=None) -> np.ndarray:
    """[T-1] masked mean absolute difference between frames t and t-1 (t = 1..T-1), over pixels counting in both
    frames' masks and over channels; NaN where no pixel counts."""
    x = unit_frames(frames)
    m = _masks(mask, len(x), x.shape[1:3])
    both = m[1:] * m[:-1]
    diff = np.abs(x[1:] - x[:-1]).mean(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (diff * both).sum((1, 2)) / both.sum((1, 2))


def temporal_consistency(generated, real, mouth_mask=None) -> float:
    """Mean over t of |change_generated(t) - change_real(t)| (:func:`frame_changes` in the non-mouth mask): 0 when
    the generated video moves as the truth does; a frozen video scores the truth's mean change, not 0. Clips are cut
    to the shorter; NaN if under 2 frames or no pixel counts."""
    n = min(len(generated), len(real))
    mask = mouth_mask if mouth_mask is None or np.ndim(mouth_mask) == 2 else np.asarray(mouth_mask)[:n]
    if n < 2:
        return math.nan
    gap = np.abs(frame_changes(unit_frames(generated)[:n], mask) - frame_changes(unit_frames(real)[:n], mask))
    return float(np.nanmean(gap)) if np.isfinite(gap).any() else math.nan


def flicker(frames, mask=None) -> float:
    """Masked mean |x(t+1) - 2 x(t) + x(t-1)| over pixels, channels and t = 1..T-2 (pixels counting in all three
    frames): high for frame-to-frame noise, 0 for a video that is still or moves at constant speed. Report it beside
    the real clip's flicker; NaN under 3 frames or when no pixel counts."""
    x = unit_frames(frames)
    if len(x) < 3:
        return math.nan
    m = _masks(mask, len(x), x.shape[1:3])
    counts = m[2:] * m[1:-1] * m[:-2]
    total = counts.sum()
    return float((np.abs(x[2:] - 2 * x[1:-1] + x[:-2]).mean(-1) * counts).sum() / total) if total else math.nan


def temporal_statistics(generated, real, mask=None) -> dict[str, float]:
    """The temporal terms reported together: ``temporal_consistency``, ``flicker_generated``, ``flicker_real``,
    and the mean frame-to-frame change of each (``change_generated``, ``change_real``), all in the same mask."""
    def mean_change(frames):
        change = frame_changes(frames, mask)
        return float(np.nanmean(change)) if np.isfinite(change).any() else math.nan
    return {"temporal_consistency": temporal_consistency(generated, real, mask),
            "flicker_generated": flicker(generated, mask), "flicker_real": flicker(real, mask),
            "change_generated": mean_change(generated), "change_real": mean_change(real)}


def non_mouth_mask(landmarks: np.ndarray, size: int, dilation: float = MOUTH_DILATION_IOD) -> np.ndarray:
    """float32 mask [T, size, size] ([size, size] for landmarks [68, 2]): 1 everywhere except the lower face that
    speech moves: the convex hull of the jaw line 2-14 and the mouth 48-67, dilated by ``dilation`` x the
    inter-ocular distance, and only below the nose tip (30), so eyes, brows and nose still count. Frames whose
    landmarks are NaN use the clip's median landmarks; with no landmarks at all the mask is all 0 (nothing counts,
    so the temporal metrics come out NaN rather than silently including the mouth)."""
    points = np.asarray(landmarks, np.float64)
    single = points.ndim == 2
    points = points[None] if single else points
    found = np.isfinite(points).all((1, 2))
    if not found.any():
        masks = np.zeros((len(points), size, size), np.float32)
        return masks[0] if single else masks
    points = np.where(found[:, None, None], points, np.median(points[found], axis=0))
    rows = np.arange(size)[:, None]
    masks = np.ones((len(points), size, size), np.float32)
    for t, p in enumerate(points):
        hull = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(np.round(p[MOUTH_REGION]).astype(np.int32)), 1)
        iod = np.linalg.norm(p[[42, 45]].mean(0) - p[[36, 39]].mean(0))
        radius = max(1, int(round(dilation * iod)))
        hull = cv2.dilate(hull, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
        masks[t][(hull > 0) & (rows > p[30, 1])] = 0.0
    return masks[0] if single else masks


def seam_ratio(frames, window: int, motion_frames_offset: int = 0, mask=None) -> float:
    """Mean frame-to-frame change across window joins over the mean change within windows (:func:`frame_changes`,
    whole frame or ``mask``): about 1 for the truth, >> 1 when windows jump. Windows of ``window`` frames start at
    ``motion_frames_offset`` (frames before it: rendered otherwise, e.g. the first window's motion frames); the joins
    are the steps into frames j = offset + k * window, 0 < j < T, so a last partial window has its join too. NaN if
    there is no join or no step within a window."""
    if window < 1:
        raise ValueError(f"the window must be at least 1 frame, got {window}")
    change = frame_changes(frames, mask)  # change[t - 1]: step t-1 -> t
    joins = np.zeros(len(change), bool)
    starts = np.arange(max(motion_frames_offset, 0), len(change) + 1, window)
    joins[starts[starts > 0] - 1] = True
    if not joins.any() or joins.all():
        return math.nan
    across, within = np.nanmean(change[joins]), np.nanmean(change[~joins])
    if not np.isfinite(across) or not np.isfinite(within) or (within == 0 and across == 0):
        return math.nan
    return float(across / within) if within > 0 else math.inf


def _slope(values) -> float:
    """Least-squares slope per segment of a series (NaN entries skipped); NaN with fewer than 2 values."""
    y = np.asarray(values, np.float64)
    x = np.arange(len(y), dtype=np.float64)
    keep = np.isfinite(y)
    return float(np.polyfit(x[keep], y[keep], 1)[0]) if keep.sum() >= 2 else math.nan


def segment_drift(frames, portrait: np.ndarray, embedder, fps: float, segment_seconds: float = 5.0,
                  frames_per_segment: int | None = 10) -> dict:
    """Identity and colour per ``segment_seconds`` segment of a long generation (a last partial segment counts).

    ``identity``: per segment, the mean cosine of ``embedder.embed(frame)`` to ``embedder.embed(portrait)`` (any
    object embedding uint8 RGB, raising FaceNotFoundError on a miss, as evaluation.identity's embedders do) over
    ``frames_per_segment`` evenly spaced frames (None: all), NaN where no face was found; ``colour``: per segment the
    mean R, G, B in [0, 1] over all its frames. ``identity_slope`` and ``colour_slope`` (one per channel): least
    squares slope per segment, ~0 for a video that holds. ``frames_without_face`` counts the embedder's misses."""
    images = to_uint8(frames) if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if images.dtype != np.uint8:
        images = np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)
    reference = np.asarray(embedder.embed(np.asarray(portrait)), np.float64)
    length = max(1, int(round(segment_seconds * fps)))
    identity, colour, misses = [], [], 0
    for start in range(0, len(images), length):
        segment = images[start:start + length]
        picks = segment if frames_per_segment is None else \
            segment[np.unique(np.linspace(0, len(segment) - 1, frames_per_segment).round().astype(int))]
        cosines = []
        for image in picks:
            try:
                v = np.asarray(embedder.embed(image), np.float64)
            except FaceNotFoundError:
                misses += 1
                continue
            cosines.append(float(v @ reference / (np.linalg.norm(v) * np.linalg.norm(reference) + 1e-12)))
        identity.append(float(np.mean(cosines)) if cosines else math.nan)
        colour.append((segment.reshape(-1, 3).mean(0) / 255.0).tolist())
    channels = np.array(colour).reshape(-1, 3)
    return {"segment_seconds": float(segment_seconds), "identity": identity, "colour": colour,
            "identity_slope": _slope(identity), "colour_slope": [_slope(channels[:, c]) for c in range(3)],
            "frames_without_face": misses}
