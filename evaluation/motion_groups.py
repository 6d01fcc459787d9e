"""Per-group motion statistics of a talking-face video against its real clip and the corpus's motion truth.

One definition, reused by the codebook and end-to-end tables (issue 25). Everything works on dlib's 68-point
landmarks of frames already brought to the table's size by :func:`evaluation.measure.to_measurement_size`.

Measures per frame (:func:`motion_measures`), in a face frame whose origin is the midpoint of the eye corners
(36, 39, 42, 45), whose x axis runs from the left to the right eye centre and whose unit is the inter-ocular distance
(IOD, between the eye-corner midpoints), so head roll, translation and face size cancel:

- ``lips``: inner-mouth opening, the mean of the gaps 61-67, 62-66 and 63-65;
- ``jaw``: the chin (8) below the eye line over the nose tip (30) below it (a ratio of two heights, so a nod, which
  scales both, cancels too);
- ``brows``: height of the brows (mean of 17-26) above the eye line;
- ``nod``: height of the nose tip (30) below the eye line. Its sign depends on how heads are drawn: the synthetic
  corpus foreshortens the face as it pitches down (r < 0 with its ``nod`` truth), a real head's protruding nose
  drops (r > 0). Compare a generated correlation with the real frames' (the ceiling), not with +1;
- ``blink``: eye aspect ratio (EAR, Soukupova & Cech 2016), the mean of both eyes (36-41, 42-47).

Gaze is not measurable from these landmarks (the 68 points have no pupil), so no gaze measure is made from frames:
gaze is reported from the corpus truth only (:func:`gaze_statistics` takes any pupil track, e.g. the truth's
``gaze_x``/``gaze_y``, should a caller have pupil positions of generated frames).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from datamodules.sample import MOTION_TRUTH_COLUMNS
from evaluation.identity import DlibLandmarks, FaceNotFoundError
from evaluation.temporal import unit_frames

AUDIO_DRIVEN = {"lips": "mouth", "jaw": "jaw", "brows": "brow_raise", "nod": "nod"}  # group -> its driver's column
MEASURES = ("lips", "jaw", "brows", "nod", "blink")
MIN_FRAMES = 8  # fewer frames with a face (in both series) than this: the measure is undefined (NaN)
BLINK_RELATIVE_THRESHOLD = 0.7  # a blink: EAR below this share of the clip's median EAR
TRUTH_BLINK_THRESHOLD = 0.5  # a blink in the truth: closure above this
GAZE_SHIFT_THRESHOLD = 0.05  # a gaze shift: the gaze moves more than this (eye half-widths) between frames


def _uint8_frames(frames) -> np.ndarray:
    """uint8 [T, H, W, 3] from any frames :func:`evaluation.temporal.unit_frames` takes."""
    if not isinstance(frames, torch.Tensor) and np.asarray(frames).dtype == np.uint8:
        return np.asarray(frames)
    return np.round(unit_frames(frames) * 255).astype(np.uint8)


def frame_landmarks(frames, landmarker=None, upsample: int | None = None) -> tuple[np.ndarray, int]:
    """(landmarks [T, 68, 2] float64, frames without a face) of uint8 frames [T, H, W, 3] (or the float
    [T, 3, H, W] in [-1, 1] of ``to_measurement_size``; frames are not resized here).

    A frame where dlib finds no face gets a NaN row and is counted, never dropped. ``landmarker`` is any callable
    ``image -> [68, 2]`` raising FaceNotFoundError on a miss (default: dlib's, :class:`DlibLandmarks`); dlib's HOG
    window is 80 px, so frames under 128 px are upsampled twice (64 px synthetic faces are found), larger ones once."""
    frames = _uint8_frames(frames)
    if landmarker is None:
        landmarker = DlibLandmarks(68, upsample=upsample or (2 if frames.shape[1] < 128 else 1))
    out = np.full((len(frames), 68, 2), np.nan)
    for t, frame in enumerate(frames):
        try:
            out[t] = landmarker(frame)
        except FaceNotFoundError:
            pass
    return out, int(np.isnan(out[:, 0, 0]).sum())


def face_frame(landmarks: np.ndarray) -> np.ndarray:
    """Landmarks [T, 68, 2] -> the same points in the face frame of the module docstring (IOD units, y down)."""
    points = np.asarray(landmarks, np.float64)
    left, right = points[:, [36, 39]].mean(1), points[:, [42, 45]].mean(1)
    origin, axis = (left + right) / 2, right - left
    iod = np.linalg.norm(axis, axis=-1, keepdims=True)
    x = axis / iod
    y = np.stack([-x[:, 1], x[:, 0]], -1)  # x rotated by +90 degrees in image coordinates: down the face
    rel = (points - origin[:, None]) / iod[:, None]
    return np.stack([(rel * x[:, None]).sum(-1), (rel * y[:, None]).sum(-1)], -1)


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """[T] mean eye aspect ratio of both eyes: (|p2-p6| + |p3-p5|) / (2 |p1-p4|) over points 36-41 and 42-47."""
    points = np.asarray(landmarks, np.float64)

    def ear(p):
        gap = np.linalg.norm(p[:, 1] - p[:, 5], axis=-1) + np.linalg.norm(p[:, 2] - p[:, 4], axis=-1)
        return gap / (2 * np.linalg.norm(p[:, 0] - p[:, 3], axis=-1))
    return (ear(points[:, 36:42]) + ear(points[:, 42:48])) / 2


def motion_measures(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame series [T] of ``lips``, ``jaw``, ``brows``, ``nod`` and ``blink`` (EAR) from landmarks [T, 68, 2];
    NaN where the frame has no face."""
    face = face_frame(landmarks)
    y = face[..., 1]
    lips = np.linalg.norm(face[:, [61, 62, 63]] - face[:, [67, 66, 65]], axis=-1).mean(1)
    return {"lips": lips, "jaw": y[:, 8] / y[:, 30], "brows": -y[:, 17:27].mean(1), "nod": y[:, 30],
            "blink": eye_aspect_ratio(landmarks)}


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    keep = np.isfinite(a) & np.isfinite(b)
    return (a[keep], b[keep]) if keep.sum() >= MIN_FRAMES else None


def motion_error(generated: np.ndarray, real: np.ndarray) -> float:
    """RMSE between the two series after removing each one's clip mean, over the real series' std (frames where both
    are finite): 0 perfect, about 1 for a frozen video (sqrt 2 for an unrelated one of the same spread). NaN if fewer
    than MIN_FRAMES frames or the real series does not move."""
    pair = _pair(np.asarray(generated, float), np.asarray(real, float))
    if pair is None or pair[1].std() < 1e-9:
        return math.nan
    g, r = pair[0] - pair[0].mean(), pair[1] - pair[1].mean()
    return float(np.sqrt(np.mean((g - r) ** 2)) / r.std())


def correlation(series: np.ndarray, driver: np.ndarray) -> float:
    """Pearson r over frames where both are finite. A series that does not move against a moving driver scores 0
    (a frozen video has no coupling, not an undefined one); NaN if the driver does not move or too few frames."""
    pair = _pair(np.asarray(series, float), np.asarray(driver, float))
    if pair is None or pair[1].std() < 1e-9:
        return math.nan
    if pair[0].std() < 1e-9:
        return 0.0
    return float(np.corrcoef(pair[0], pair[1])[0, 1])


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def blink_events(ear: np.ndarray, relative_threshold: float = BLINK_RELATIVE_THRESHOLD) -> list[tuple[int, int, float]]:
    """Blinks of an EAR series [T]: (start, end exclusive, amplitude) of each run of frames whose EAR is below
    ``relative_threshold`` x the clip's median EAR (the eyes are open most of a clip, so the median is the open EAR).
    Amplitude: the closure depth, 1 - min EAR / median EAR (0 open .. 1 shut). NaN frames (no face) break a run."""
    ear = np.asarray(ear, np.float64)
    if np.isfinite(ear).sum() < MIN_FRAMES:
        return []
    median = np.nanmedian(ear)
    below = np.nan_to_num(ear, nan=np.inf) < relative_threshold * median
    return [(s, e, float(1 - ear[s:e].min() / median)) for s, e in _runs(below)]


def truth_blink_events(closure: np.ndarray, threshold: float = TRUTH_BLINK_THRESHOLD) -> list[tuple[int, int, float]]:
    """Blinks of the truth's closure column (0 open .. 1 shut): runs above ``threshold``, amplitude = peak closure."""
    closure = np.asarray(closure, np.float64)
    return [(s, e, float(closure[s:e].max())) for s, e in _runs(closure > threshold)]


def _rate_amplitude(events: list, frames: int, fps: float) -> tuple[float, float]:
    rate = len(events) / (frames / fps) if frames else math.nan
    return rate, float(np.mean([a for *_, a in events])) if events else math.nan


def gaze_statistics(gaze: np.ndarray, fps: float, threshold: float = GAZE_SHIFT_THRESHOLD) -> tuple[float, float]:
    """(shifts per second, mean shift amplitude) of a gaze track [T, 2]: a shift is a run of frames moving more than
    ``threshold`` per frame, its amplitude the distance from the frame before the run to its last frame."""
    gaze = np.asarray(gaze, np.float64)
    if len(gaze) < 2:
        return math.nan, math.nan
    moving = np.linalg.norm(np.diff(gaze, axis=0), axis=-1) > threshold  # step t -> t+1
    events = [(s, e, float(np.linalg.norm(gaze[e] - gaze[s]))) for s, e in _runs(moving)]
    return _rate_amplitude(events, len(gaze), fps)


def motion_group_statistics(generated_landmarks: np.ndarray, real_landmarks: np.ndarray, truth: np.ndarray,
                            fps: float = 25.0) -> dict[str, float]:
    """Flat dict of floats for one clip: generated frames' landmarks [T, 68, 2] (NaN rows: no face) against the real
    clip's and the corpus truth [T, 8] (``MOTION_TRUTH_COLUMNS``); series are cut to the shortest length.

    Audio-driven groups g in lips, jaw, brows, nod: ``g_error`` (:func:`motion_error`, generated vs real),
    ``g_r`` and ``g_r_real`` (:func:`correlation` of the generated and of the real series with the driver column:
    lips-mouth, jaw-jaw, brows-brow_raise, nod-nod; the real one is the ceiling). Spontaneous: ``blink_rate_*``
    (per second) and ``blink_amplitude_*`` for generated, real (EAR dips, :func:`blink_events`) and truth
    (:func:`truth_blink_events`); ``gaze_rate_truth`` and ``gaze_amplitude_truth`` from the truth only (not
    measurable from landmarks). ``frames``, ``generated_frames_without_face``, ``real_frames_without_face``.
    NaN wherever a measure is undefined; a bad clip never raises."""
    n = min(len(generated_landmarks), len(real_landmarks), len(truth))
    gen_lm, real_lm = np.asarray(generated_landmarks, float)[:n], np.asarray(real_landmarks, float)[:n]
    truth = np.asarray(truth, float)[:n]
    column = {name: truth[:, i] for i, name in enumerate(MOTION_TRUTH_COLUMNS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        gen, real = motion_measures(gen_lm), motion_measures(real_lm)
    out: dict[str, float] = {"frames": float(n)}
    for group, driver in AUDIO_DRIVEN.items():
        out[f"{group}_error"] = motion_error(gen[group], real[group])
        out[f"{group}_r"] = correlation(gen[group], column[driver])
        out[f"{group}_r_real"] = correlation(real[group], column[driver])
    for name, events in (("generated", blink_events(gen["blink"])), ("real", blink_events(real["blink"])),
                         ("truth", truth_blink_events(column["blink"]))):
        undefined = name != "truth" and np.isfinite((gen if name == "generated" else real)["blink"]).sum() < MIN_FRAMES
        rate, amplitude = (math.nan, math.nan) if undefined else _rate_amplitude(events, n, fps)
        out[f"blink_rate_{name}"], out[f"blink_amplitude_{name}"] = rate, amplitude
    out["gaze_rate_truth"], out["gaze_amplitude_truth"] = gaze_statistics(
        np.stack([column["gaze_x"], column["gaze_y"]], -1), fps)
    out["generated_frames_without_face"] = float(np.isnan(gen_lm[:, :, 0]).any(1).sum())
    out["real_frames_without_face"] = float(np.isnan(real_lm[:, :, 0]).any(1).sum())
    return out
