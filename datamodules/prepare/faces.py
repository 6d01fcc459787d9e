"""Face tracking with dlib: the HOG detector every few frames, the 68-point predictor on every frame.

Between detections the face box follows the landmarks of the previous frame (shifted and scaled with
them), so the predictor refines the landmarks on each frame at a fraction of the detector's cost. The
detector runs on a copy of the frame scaled to at most ``detect_size`` pixels on its longer side.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import warnings
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

_MODELS: dict[str, object] = {}


def predictor_path() -> str:
    """Path of dlib's 68-point model shipped by ``face-recognition-models``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition_models
    return face_recognition_models.pose_predictor_model_location()


def models():
    """(detector, predictor), loaded once per process."""
    if not _MODELS:
        import dlib

        _MODELS["detector"] = dlib.get_frontal_face_detector()
        _MODELS["predictor"] = dlib.shape_predictor(predictor_path())
    return _MODELS["detector"], _MODELS["predictor"]


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of the face tools, recorded in every clip's metadata."""
    import dlib

    path = predictor_path()
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:16]
    try:
        frm = importlib.metadata.version("face-recognition-models")
    except importlib.metadata.PackageNotFoundError:
        frm = "unknown"
    return {"dlib": dlib.__version__, "face_recognition_models": frm, "detector": "dlib-hog-frontal",
            "predictor": os.path.basename(path), "predictor_sha256_1mb": digest}


@dataclass
class Track:
    """Per-frame landmarks (T x 68 x 2, NaN where lost), which frames were detected, and the detector's boxes."""

    landmarks: np.ndarray
    detected: np.ndarray  # bool per frame: a detector hit at a detection frame, or tracked from one
    boxes: np.ndarray  # T x 4 (x0, y0, x1, y1) boxes given to the predictor, NaN where lost

    @property
    def found_fraction(self) -> float:
        return float(self.detected.mean()) if len(self.detected) else 0.0


def detect(frame: np.ndarray, detect_size: int = 640) -> list[tuple[float, float, float, float]]:
    """Face boxes (x0, y0, x1, y1) in frame pixels, largest first."""
    detector, _ = models()
    scale = min(1.0, detect_size / max(frame.shape[:2]))
    small = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    rects = detector(np.ascontiguousarray(small), 0)
    boxes = [(r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale) for r in rects]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def detect_near(frame: np.ndarray, box, face_pixels: int = 120) -> list[tuple[float, float, float, float]]:
    """Face boxes in the neighbourhood of ``box`` (searched at a scale where the face is ~``face_pixels`` wide)."""
    width = max(box[2] - box[0], 1.0)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0, y0 = int(max(0, cx - 1.5 * width)), int(max(0, cy - 1.5 * width))
    x1, y1 = int(min(frame.shape[1], cx + 1.5 * width)), int(min(frame.shape[0], cy + 1.5 * width))
    region = frame[y0:y1, x0:x1]
    if region.size == 0:
        return []
    size = int(max(region.shape[:2]) * min(1.0, face_pixels / width))
    return [(b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0) for b in detect(region, max(size, 1))]


def landmarks_in(frame: np.ndarray, box) -> np.ndarray:
    """The 68 landmarks (68 x 2) of the face in ``box``."""
    import dlib

    _, predictor = models()
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(np.ascontiguousarray(frame), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def _pick(boxes, previous, hint) -> tuple | None:
    """The box of the tracked face: the one nearest the face's last box, else nearest the hint (AVSpeech's face
    centre of the clip's first frame), else the largest."""
    if not boxes:
        return None
    if previous is not None:
        centre = np.array([(previous[0] + previous[2]) / 2, (previous[1] + previous[3]) / 2])
    elif hint is not None:
        centre = np.asarray(hint, np.float64)
    else:
        return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    return min(boxes, key=lambda b: np.hypot((b[0] + b[2]) / 2 - centre[0], (b[1] + b[3]) / 2 - centre[1]))


def _follow(box, ref_marks: np.ndarray, marks: np.ndarray) -> tuple:
    """Move ``box`` (fitted to ``ref_marks``) with the landmarks' shift and scale to ``marks``."""
    c0, c1 = ref_marks.mean(0), marks.mean(0)
    s = float(np.linalg.norm(marks - c1) / max(np.linalg.norm(ref_marks - c0), 1e-6))
    bc = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    half = np.array([box[2] - box[0], box[3] - box[1]]) / 2 * s
    centre = c1 + (bc - c0) * s
    return (centre[0] - half[0], centre[1] - half[1], centre[0] + half[0], centre[1] + half[1])


def track_face(frames: np.ndarray, detect_every: int = 5, detect_size: int = 640,
               hint: tuple[float, float] | None = None, max_missed: int = 2,
               give_up_fraction: float = 1.0) -> Track:
    """Track one face through ``frames`` (T x H x W x 3 RGB); ``hint`` is a face centre in pixels.

    The detector runs every ``detect_every`` frames; after ``max_missed`` detection frames in a row without
    a face the track counts as lost until the detector finds it again, nearest where it was last (not where the
    hint put it at the start: another face may stand there by then). Tracking stops early once more than
    ``give_up_fraction`` of the frames are lost (the clip would be rejected anyway).
    """
    count = len(frames)
    marks = np.full((count, 68, 2), np.nan, np.float32)
    boxes = np.full((count, 4), np.nan, np.float32)
    detected = np.zeros(count, bool)
    anchor: tuple | None = None  # (detector box, landmarks found in it)
    last_box: tuple | None = None  # where the face was when the track was lost: found again near there
    missed = 0
    for i, frame in enumerate(frames):
        if i - detected[:i].sum() > give_up_fraction * count:
            break
        fresh = None
        if i % detect_every == 0 or anchor is None:
            near = detect_near(frame, anchor[0]) if anchor is not None else []
            fresh = _pick(near or detect(frame, detect_size), anchor[0] if anchor else last_box, hint)
            if fresh is not None:
                missed = 0
            elif anchor is not None:
                missed += 1
                if missed > max_missed:
                    anchor, last_box = None, tuple(boxes[i - 1]) if i else None
        if fresh is not None:
            box = fresh
        elif anchor is not None:
            box = anchor[0] if np.isnan(marks[i - 1, 0, 0]) else _follow(anchor[0], anchor[1], marks[i - 1])
        else:
            continue
        current = landmarks_in(frame, box)
        if fresh is not None:
            anchor = (fresh, current)
        boxes[i], marks[i], detected[i] = box, current, missed == 0
    return Track(marks, detected, boxes)


def fill_gaps(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks with lost frames filled by linear interpolation in time (edges held)."""
    out = landmarks.copy()
    valid = ~np.isnan(out[:, 0, 0])
    if valid.all() or not valid.any():
        return out
    t = np.arange(len(out))
    flat = out.reshape(len(out), -1)
    for j in range(flat.shape[1]):
        flat[~valid, j] = np.interp(t[~valid], t[valid], flat[valid, j])
    return flat.reshape(out.shape)
