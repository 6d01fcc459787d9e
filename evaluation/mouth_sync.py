"""An expert-free lip-sync measure: does the mouth that dlib finds in a video open with the loudness of its speech?

No sync network judges here, so the measure cannot share a generator's blind spots with a trained expert:

- the mouth opening per frame is the ``lips`` measure of :mod:`evaluation.motion_groups` (the inner-lip gap over
  the inter-ocular distance, from dlib's 68 landmarks; NaN where no face is found);
- the loudness per frame is the speech's RMS amplitude over that frame's span (40 ms at 25 fps), linear: on 10
  real val clips of the synthetic corpus the measure gives r 0.91 with it and 0.63 with the level in dB, whose
  pauses dominate;
- ``r`` is their Pearson correlation at the best lag within ``MAX_LAG`` frames either way (speech and mouth may lead
  each other by a frame or two);
- ``null`` is the same best-lag statistic against the speech shifted circularly by every shift of at least one
  second that leaves a second from the end, averaged: what the measure gives a video whose mouth moves but not with
  this speech (above 0, since the best of several lags is taken);
- ``margin`` is ``r - null``: the part of the coupling that belongs to this speech.

The synthetic corpus's real clips score r about 0.97; the null of a 2 s clip (one shift fits) lies between -0.05
and 0.3, that of an 8 s clip about 0.13.
"""
from __future__ import annotations

import math

import numpy as np

from evaluation.motion_groups import MIN_FRAMES, correlation, frame_landmarks, motion_measures

MAX_LAG = 3  # frames either way
MIN_SHIFT_SECONDS = 1.0


def frame_loudness(audio: np.ndarray, frames: int, sample_rate: int = 16000, fps: float = 25.0) -> np.ndarray:
    """[frames] RMS amplitude of the speech under each video frame (0 past the audio's end)."""
    audio = np.asarray(audio, np.float64).reshape(-1)
    span = sample_rate / fps
    out = np.zeros(frames)
    for t in range(frames):
        chunk = audio[int(round(t * span)):int(round((t + 1) * span))]
        if len(chunk):
            out[t] = math.sqrt(float(np.mean(chunk ** 2)))
    return out


def lagged(series: np.ndarray, driver: np.ndarray, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """The overlap of ``series[t]`` with ``driver[t + lag]``."""
    if lag > 0:
        return series[:-lag], driver[lag:]
    if lag < 0:
        return series[-lag:], driver[:lag]
    return series, driver


def best_lag_correlation(series: np.ndarray, driver: np.ndarray, max_lag: int = MAX_LAG) -> tuple[float, int]:
    """(the largest correlation over lags -max_lag..max_lag, its lag); (NaN, 0) where no lag gives one."""
    best, best_lag = -math.inf, 0
    for lag in range(-max_lag, max_lag + 1):
        r = correlation(*lagged(series, driver, lag))
        if np.isfinite(r) and r > best:
            best, best_lag = r, lag
    return (best, best_lag) if np.isfinite(best) else (math.nan, 0)


def mouth_sync(opening: np.ndarray, loudness: np.ndarray, fps: float = 25.0, max_lag: int = MAX_LAG) -> dict:
    """``r``, ``lag``, ``null`` and ``margin`` of a mouth-opening series against the loudness series of its speech
    (both [T], per video frame). ``null`` and ``margin`` are NaN for clips shorter than two seconds plus a frame."""
    opening, loudness = np.asarray(opening, float), np.asarray(loudness, float)
    r, lag = best_lag_correlation(opening, loudness, max_lag)
    shift = int(round(MIN_SHIFT_SECONDS * fps))
    nulls = [best_lag_correlation(opening, np.roll(loudness, s), max_lag)[0]
             for s in range(shift, len(loudness) - shift + 1)]
    nulls = [v for v in nulls if np.isfinite(v)]
    null = float(np.mean(nulls)) if nulls else math.nan
    return {"r": r, "lag": lag, "null": null, "margin": r - null}


def mouth_openings(frames, landmarker=None) -> np.ndarray:
    """[T] the mouth opening dlib finds in each frame (uint8 [T, H, W, 3] or float [T, 3, H, W] in [-1, 1], at the
    size it is judged at); NaN where it finds no face."""
    return motion_measures(frame_landmarks(frames, landmarker)[0])["lips"]


def opening_sync(opening: np.ndarray, audio: np.ndarray, sample_rate: int = 16000, fps: float = 25.0,
                 mouth_truth: np.ndarray | None = None) -> dict:
    """The measure of mouth openings [T] (:func:`mouth_openings`) with a speech: ``face_rate`` (share of frames
    with a face), ``r``, ``lag``, ``null``, ``margin``, and ``truth_r`` (correlation with the real clip's mouth
    opening, where ``mouth_truth`` is given). One video's openings can be scored against several speeches."""
    count = len(opening)
    found = int(np.isfinite(opening).sum())
    result = {"face_rate": found / count if count else 0.0, "frames": count}
    if found < MIN_FRAMES:
        return {**result, "r": math.nan, "lag": 0, "null": math.nan, "margin": math.nan, "truth_r": math.nan}
    result.update(mouth_sync(opening, frame_loudness(audio, count, sample_rate, fps), fps))
    truth = np.asarray(mouth_truth, float)[:count] if mouth_truth is not None else None
    result["truth_r"] = correlation(opening[:len(truth)], truth) if truth is not None else math.nan
    return result


def video_mouth_sync(frames, audio: np.ndarray, sample_rate: int = 16000, fps: float = 25.0,
                     mouth_truth: np.ndarray | None = None, landmarker=None) -> dict:
    """:func:`opening_sync` of a video's frames with its speech."""
    return opening_sync(mouth_openings(frames, landmarker), audio, sample_rate, fps, mouth_truth)
