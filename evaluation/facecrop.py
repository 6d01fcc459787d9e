"""The SyncNet reference pipeline's face crop (``crop_mode: reference``), for videos that are not face-centred.

As the reference ``run_pipeline`` does: one face box per frame (here dlib's HOG detector, where the reference uses
S3FD: the detector is recorded with the results), frames without a detection interpolated from their neighbours,
box centre and half-size median-filtered over 13 frames, the frame padded by ``bs * (1 + 2 * crop_scale)`` with
grey 110, and the crop ``[y - bs, y + bs * (1 + 2 cs)] x [x - bs * (1 + cs), x + bs * (1 + cs)]`` (extended
downward to hold the mouth) resized to 224 x 224.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.signal import medfilt

CROP_SIZE = 224
MEDIAN_KERNEL = 13
PAD_VALUE = 110
DETECTOR = "dlib HOG (the reference uses S3FD)"


def detect_boxes(frames: np.ndarray) -> np.ndarray:
    """Largest face box [T, 4] (x0, y0, x1, y1) per frame; NaN rows where no face was found."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    boxes = np.full((len(frames), 4), np.nan)
    for index, frame in enumerate(frames):
        faces = detector(np.ascontiguousarray(frame), 1)
        if len(faces):
            face = max(faces, key=lambda r: r.area())
            boxes[index] = (face.left(), face.top(), face.right(), face.bottom())
    return boxes


def smooth_track(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(half size, centre x, centre y) per frame: gaps interpolated, each median-filtered over 13 frames."""
    found = ~np.isnan(boxes[:, 0])
    if not found.any():
        raise ValueError("no face found in any frame; reference cropping needs a visible face (or crop_mode: none)")
    frames = np.arange(len(boxes))
    filled = np.stack([np.interp(frames, frames[found], boxes[found, i]) for i in range(4)], axis=1)
    size = np.maximum(filled[:, 3] - filled[:, 1], filled[:, 2] - filled[:, 0]) / 2
    centre_x, centre_y = (filled[:, 0] + filled[:, 2]) / 2, (filled[:, 1] + filled[:, 3]) / 2
    kernel = min(MEDIAN_KERNEL, len(boxes) - (1 - len(boxes) % 2))
    return tuple(medfilt(v, kernel_size=max(kernel, 1)) for v in (size, centre_x, centre_y))


def crop_faces(frames: np.ndarray, size: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray,
               crop_scale: float = 0.4) -> np.ndarray:
    """uint8 crops [T, 224, 224, 3] around the smoothed track (the reference's arithmetic)."""
    crops = []
    for frame, bs, cx, cy in zip(frames, size, centre_x, centre_y, strict=False):
        pad = int(bs * (1 + 2 * crop_scale))
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=PAD_VALUE)
        my, mx = cy + pad, cx + pad
        face = padded[int(my - bs):int(my + bs * (1 + 2 * crop_scale)),
                      int(mx - bs * (1 + crop_scale)):int(mx + bs * (1 + crop_scale))]
        crops.append(cv2.resize(face, (CROP_SIZE, CROP_SIZE)))
    return np.stack(crops)


def reference_crops(frames: np.ndarray, crop_scale: float = 0.4) -> np.ndarray:
    """The reference pipeline's face crops of uint8 RGB frames [T, H, W, 3]."""
    return crop_faces(frames, *smooth_track(detect_boxes(frames)), crop_scale=crop_scale)
