"""Stage-2 video metrics (issue 25): per-group motion statistics, temporal consistency, flicker, seams, drift."""
from __future__ import annotations

import math

import numpy as np
import pytest

from datamodules.sample import MOTION_TRUTH_COLUMNS
from datamodules.synth_face import base_layer
from datamodules.synth_motion import BLINK_PROFILE
from datamodules.synthetic import SyntheticConfig, draw_speaker, make_clip
from evaluation.measure import to_measurement_size
from evaluation.motion_groups import (
    AUDIO_DRIVEN,
    blink_events,
    correlation,
    frame_landmarks,
    motion_error,
    motion_group_statistics,
)
from evaluation.temporal import (
    flicker,
    non_mouth_mask,
    seam_ratio,
    segment_drift,
    temporal_consistency,
    temporal_statistics,
)

COLUMN = {name: i for i, name in enumerate(MOTION_TRUTH_COLUMNS)}


@pytest.fixture(scope="module")
def clip():
    """A 2 s talking head of the synthetic corpus at 128 px: frames, the renderer's landmarks and the motion truth."""
    speaker = draw_speaker(0, 5)
    base = base_layer(speaker.face, 128, np.random.default_rng([0, 5, 0]), brows=False)
    return make_clip(speaker, base, SyntheticConfig(seconds=2.0, resolution=128), 1, "train")


def moving_video(frames: int = 24, size: int = 32, seed: int = 0) -> np.ndarray:
    """float [T, size, size, 3] in [0, 1]: a smooth texture sliding by a fraction of a pixel per frame."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    phase = rng.uniform(0, 2 * np.pi, 3)
    return np.stack([np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (x + 0.02 * t) + phase[c]) * np.cos(np.pi * y)
                               for c in range(3)], -1) for t in range(frames)]).astype(np.float32)


def test_a_frozen_video_cannot_win_temporal_consistency():
    real = moving_video()
    frozen = np.repeat(real[:1], len(real), axis=0)
    assert temporal_consistency(real, real) == 0.0
    stats = temporal_statistics(frozen, real)
    assert stats["change_generated"] == 0.0
    assert stats["temporal_consistency"] == pytest.approx(stats["change_real"]) and stats["change_real"] > 1e-3
    other = moving_video(seed=1)  # other content moving at the truth's speed beats the frozen video
    assert temporal_consistency(other, real) < 0.5 * stats["temporal_consistency"]


def test_the_non_mouth_mask_hides_mouth_motion_only(clip):
    marks = clip.landmarks.astype(np.float64)
    marks[3] = np.nan  # a frame without a face takes the clip's median landmarks
    mask = non_mouth_mask(marks, 128)
    assert mask.shape == (len(marks), 128, 128)
    mouth, eye, nose = marks[0, 62:67:4].mean(0), marks[0, 36:42].mean(0), marks[0, 27]
    for point, counts in ((mouth, 0.0), (marks[0, 8] + [0, 2], 0.0), (eye, 1.0), (nose, 1.0)):
        assert mask[0, int(point[1]), int(point[0])] == counts
    median = np.round(np.median(clip.landmarks[[0, 1, 2, 4]], 0)).astype(int)
    assert mask[3, median[62, 1], median[62, 0]] == 0.0 and mask[3, median[37, 1], median[37, 0]] == 1.0
    assert not non_mouth_mask(np.full((2, 68, 2), np.nan), 64).any(), "no face: nothing counts"

    real = clip.frames.astype(np.float32) / 255
    generated = real.copy()
    generated[1::2] *= 1 - 0.5 * (1 - mask[1::2, ..., None])  # flickers only inside the excluded mouth region
    assert temporal_consistency(generated, real, mask) == pytest.approx(0.0, abs=1e-6)
    assert temporal_consistency(generated, real) > 0.005
    assert math.isnan(temporal_consistency(generated, real, np.zeros((128, 128))))


def test_flicker_sees_alternating_noise_not_smooth_motion():
    smooth = moving_video()
    noisy = smooth + np.where(np.arange(len(smooth))[:, None, None, None] % 2, 0.05, -0.05)
    noisy = noisy + np.random.default_rng(0).normal(0, 0.02, smooth.shape)
    assert flicker(smooth) < 0.01
    assert flicker(noisy) > 10 * flicker(smooth)
    ramp = np.linspace(0, 1, 10)[:, None, None, None] * np.ones((10, 4, 4, 3))
    assert flicker(ramp) == pytest.approx(0.0, abs=1e-6), "constant speed is not flicker"
    assert math.isnan(flicker(smooth[:2]))


def test_seam_ratio_is_about_one_for_smooth_video_and_large_for_jumps_at_joins():
    smooth = moving_video(frames=30)
    assert seam_ratio(smooth, 4) == pytest.approx(1.0, abs=0.05)
    jumps = smooth.copy()
    for k, start in enumerate(range(0, 30, 4)):  # each 4-frame window shifted by its own offset: a jump per join
        jumps[start:start + 4] += 0.2 * (k % 2)
    assert seam_ratio(jumps, 4) > 5
    assert seam_ratio(jumps, 4, motion_frames_offset=2) < 1.5, "joins placed elsewhere see no jump"
    assert seam_ratio(jumps[:10], 4) > 5, "a last partial window has its join"
    assert math.isnan(seam_ratio(smooth[:4], 4)), "one window: no join"


def test_motion_error_is_zero_against_itself_and_one_when_frozen(clip):
    real = clip.landmarks.astype(np.float64)
    frozen = np.repeat(real[:1], len(real), axis=0)
    self_stats = motion_group_statistics(real, real, clip.motion_truth)
    frozen_stats = motion_group_statistics(frozen, real, clip.motion_truth)
    for group in AUDIO_DRIVEN:
        assert self_stats[f"{group}_error"] == pytest.approx(0.0, abs=1e-9)
        assert frozen_stats[f"{group}_error"] == pytest.approx(1.0)
        assert frozen_stats[f"{group}_r"] == 0.0
        assert self_stats[f"{group}_r"] == self_stats[f"{group}_r_real"]
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    assert motion_error(a, b) == pytest.approx(math.sqrt(2), rel=0.05), "an unrelated series of the same spread"


def test_correlation_with_the_driver_of_a_series_built_from_it(clip):
    truth = clip.motion_truth
    mouth = truth[:, COLUMN["mouth"]]
    assert correlation(3 * mouth + 1, mouth) == pytest.approx(1.0)
    assert math.isnan(correlation(mouth, np.zeros_like(mouth))), "a driver that does not move"
    stats = motion_group_statistics(clip.landmarks, clip.landmarks, truth)  # the renderer's landmarks: exact
    assert stats["lips_r"] > 0.99 and stats["jaw_r"] > 0.99 and stats["brows_r"] > 0.95
    assert stats["nod_r"] < -0.99, "the synthetic head foreshortens as it nods"


def test_the_blink_detector_counts_synthetic_blinks_exactly():
    rng = np.random.default_rng(0)
    frames, starts = 250, [0, 40, 90, 160, 245]  # one at each edge of the clip
    closure = np.zeros(frames)
    for s in starts:
        closure[s:s + len(BLINK_PROFILE)] = BLINK_PROFILE[:frames - s]
    ear = 0.3 * (1 - 0.8 * closure) + rng.normal(0, 0.01, frames)
    events = blink_events(ear)
    assert [s for s, _, _ in events] == starts
    assert all(0.6 < amplitude < 0.95 for *_, amplitude in events)
    ear[100] = np.nan  # a frame without a face neither makes nor hides a blink
    assert len(blink_events(ear)) == len(starts)
    truth = np.zeros((frames, len(MOTION_TRUTH_COLUMNS)))
    truth[:, COLUMN["blink"]] = closure
    stats = motion_group_statistics(np.full((frames, 68, 2), np.nan), np.full((frames, 68, 2), np.nan), truth)
    assert stats["blink_rate_truth"] == pytest.approx(len(starts) / (frames / 25))
    assert stats["blink_amplitude_truth"] == 1.0


def test_a_bad_clip_gives_nan_and_counts_its_missing_faces(clip):
    missing = np.full_like(clip.landmarks, np.nan, dtype=np.float64)
    missing[:5] = clip.landmarks[:5]
    stats = motion_group_statistics(missing, clip.landmarks, clip.motion_truth)
    assert stats["generated_frames_without_face"] == len(missing) - 5 and stats["real_frames_without_face"] == 0
    assert all(math.isnan(stats[f"{g}_{k}"]) for g in AUDIO_DRIVEN for k in ("error", "r"))
    assert math.isnan(stats["blink_rate_generated"]) and not math.isnan(stats["blink_rate_real"])
    assert all(isinstance(v, float) for v in stats.values())


def test_dlib_landmarks_of_64px_frames_mark_missing_faces(clip):
    frames = to_measurement_size(clip.frames, 64)
    frames[[7, 20]] = -1.0  # black frames: no face
    landmarks, missing = frame_landmarks(frames)
    assert landmarks.shape == (len(frames), 68, 2) and missing == 2
    assert np.flatnonzero(np.isnan(landmarks[:, 0, 0])).tolist() == [7, 20]
    stats = motion_group_statistics(landmarks, landmarks, clip.motion_truth)
    assert stats["lips_r"] > 0.6, "dlib's inner-lip opening follows the mouth at 64 px"


class PixelEmbedder:
    """A stand-in face embedder: the raw pixels."""

    def embed(self, image):
        return image.astype(np.float64).ravel()


def test_segment_drift_is_flat_for_a_constant_video_and_falls_as_it_fades():
    rng = np.random.default_rng(0)
    portrait = rng.integers(60, 255, (16, 16, 3), dtype=np.uint8)
    constant = np.repeat(portrait[None], 100, axis=0)
    flat = segment_drift(constant, portrait, PixelEmbedder(), fps=10, segment_seconds=2)
    assert len(flat["identity"]) == 5 and flat["identity"][0] == pytest.approx(1.0)
    assert abs(flat["identity_slope"]) < 1e-9 and max(map(abs, flat["colour_slope"])) < 1e-9
    fade = np.linspace(1, 0.2, 100)[:, None, None, None]
    fading = np.round(portrait * fade + 20 * (1 - fade)).astype(np.uint8)  # towards dark grey
    drift = segment_drift(fading, portrait, PixelEmbedder(), fps=10, segment_seconds=2)
    assert drift["identity_slope"] < 0 and all(s < -0.02 for s in drift["colour_slope"])
    assert drift["frames_without_face"] == 0
