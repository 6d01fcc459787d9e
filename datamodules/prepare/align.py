"""A stable FFHQ-style aligned crop for a whole clip.

Per frame, the FFHQ rule turns the eyes and mouth corners into an oriented square (centre, half-axis
``x``, orthogonal half-axis ``y``). The squares are smoothed in time (Gaussian) and each frame's step is then
limited to ``max_step`` of the crop size, so the crop never jitters by more than that between frames.
Landmarks are mapped into crop pixels with the same affine transform as the frames.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from datamodules.sample import LEFT_EYE, RIGHT_EYE


def ffhq_square(landmarks: np.ndarray) -> np.ndarray:
    """(cx, cy, xx, xy) of the FFHQ crop square of 68 landmarks: centre and the half-axis pointing right."""
    lm = landmarks.astype(np.float64)
    eye_left, eye_right = lm[LEFT_EYE].mean(0), lm[RIGHT_EYE].mean(0)
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= max(np.hypot(*x), 1e-6)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    centre = eye_avg + eye_to_mouth * 0.1
    return np.array([centre[0], centre[1], x[0], x[1]])


def clip_squares(landmarks: np.ndarray, sigma: float = 6.0, max_step: float = 0.015) -> np.ndarray:
    """Smoothed per-frame squares (T x 4) for a clip's landmarks (T x 68 x 2, no NaN)."""
    raw = np.stack([ffhq_square(lm) for lm in landmarks])
    smooth = gaussian_filter1d(raw, sigma, axis=0, mode="nearest") if len(raw) > 1 and sigma > 0 else raw
    out = smooth.copy()
    for t in range(1, len(out)):
        size = 2 * np.hypot(out[t - 1, 2], out[t - 1, 3])
        step = out[t] - out[t - 1]
        norm = np.hypot(step[0], step[1]) + 2 * np.hypot(step[2], step[3])
        limit = max_step * size
        if norm > limit:
            out[t] = out[t - 1] + step * (limit / norm)
    return out


def square_boxes(squares: np.ndarray) -> np.ndarray:
    """Per-frame (cx, cy, size, angle in degrees) of the squares, for metadata and stability checks."""
    size = 2 * np.hypot(squares[:, 2], squares[:, 3])
    angle = np.degrees(np.arctan2(squares[:, 3], squares[:, 2]))
    return np.stack([squares[:, 0], squares[:, 1], size, angle], axis=1)


def max_jitter(boxes: np.ndarray) -> float:
    """Largest frame-to-frame change of a crop box (centre shift + size change) as a fraction of its size."""
    if len(boxes) < 2:
        return 0.0
    d_centre = np.hypot(np.diff(boxes[:, 0]), np.diff(boxes[:, 1]))
    d_size = np.abs(np.diff(boxes[:, 2]))
    return float(np.max((d_centre + d_size) / boxes[:-1, 2]))


def square_affine(square: np.ndarray, resolution: int) -> np.ndarray:
    """2 x 3 affine matrix mapping frame pixels into the R x R crop of ``square``."""
    c = square[:2]
    x = square[2:]
    y = np.flipud(x) * [-1, 1]
    src = np.float32([c - x - y, c - x + y, c + x + y])
    dst = np.float32([[0, 0], [0, resolution], [resolution, resolution]])
    return cv2.getAffineTransform(src, dst)


def warp_frame(frame: np.ndarray, matrix: np.ndarray, resolution: int) -> np.ndarray:
    """The crop of ``frame``; large reductions first shrink the frame by an integer factor (area filter)."""
    scale = float(np.hypot(matrix[0, 0], matrix[0, 1]))
    factor = int(1.0 / (scale * 1.5)) if scale < 1 / 3 else 1
    if factor >= 2:
        h, w = frame.shape[:2]
        frame = cv2.resize(frame, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_AREA)
        matrix = matrix.copy()
        matrix[:, :2] *= factor
    return cv2.warpAffine(frame, matrix, (resolution, resolution), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def map_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (... x 2) through a 2 x 3 affine matrix."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def outside_fraction(square: np.ndarray, width: int, height: int) -> float:
    """How far the crop square reaches outside the frame, as a fraction of its size (0 when inside)."""
    c, x = square[:2], square[2:]
    y = np.flipud(x) * [-1, 1]
    corners = np.stack([c - x - y, c + x - y, c + x + y, c - x + y])
    size = 2 * np.hypot(*x)
    over = max(0.0, -corners[:, 0].min(), -corners[:, 1].min(), corners[:, 0].max() - width,
               corners[:, 1].max() - height)
    return float(over / size)


def align_clip(frames: np.ndarray, landmarks: np.ndarray, resolution: int, sigma: float = 6.0,
               max_step: float = 0.015) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Aligned crops (T x R x R x 3), landmarks in crop pixels (T x 68 x 2), per-frame boxes, outside fraction."""
    squares = clip_squares(landmarks, sigma, max_step)
    crops = np.empty((len(frames), resolution, resolution, 3), np.uint8)
    mapped = np.empty(landmarks.shape, np.float32)
    height, width = frames.shape[1:3]
    outside = 0.0
    for t, (frame, square) in enumerate(zip(frames, squares, strict=False)):
        matrix = square_affine(square, resolution)
        crops[t] = warp_frame(frame, matrix, resolution)
        mapped[t] = map_points(landmarks[t], matrix)
        outside = max(outside, outside_fraction(square, width, height))
    return crops, mapped, square_boxes(squares), outside
