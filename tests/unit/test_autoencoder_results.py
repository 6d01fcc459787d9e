"""The autoencoder table's mouth measure and its table layout."""
from __future__ import annotations

import math

import numpy as np

from reports.results_autoencoder import VARIANTS, mouth_error, table


def landmarks(frames: int, width: float = 40.0) -> np.ndarray:
    points = np.random.default_rng(0).uniform(0, 100, (frames, 68, 2))
    points[:, 36], points[:, 45] = (10.0, 50.0), (10.0 + width, 50.0)
    return points


def test_mouth_error_is_the_mouth_shift_over_the_eye_span_on_frames_with_both_faces():
    real = landmarks(4)
    shifted = real.copy()
    shifted[:, 48:68] += (3.0, 4.0)  # 5 px, eye span 40 px
    shifted[:, 0:48] += 50.0  # the rest of the face does not count
    shifted[3] = np.nan  # a frame without a face is left out
    assert math.isclose(mouth_error(real, shifted), 5.0 / 40.0)
    assert mouth_error(real, real) == 0.0
    assert math.isnan(mouth_error(real, np.full_like(real, np.nan)))


def test_table_has_a_row_per_variant_with_intervals_and_the_real_ceiling():
    clip = lambda speaker, rate: {"speaker": speaker, "face_rate": rate, "real_face_rate": 0.9,  # noqa: E731
                                   "mouth_error": 0.1, "l1": 0.05, "psnr": 25.0}
    scores = {v: {"per_clip": {f"c{i}": clip(f"s{i % 3}", 0.5 + 0.05 * i + 0.1 * n) for i in range(6)}}
              for n, v in enumerate(VARIANTS)}
    text = table(scores)
    for variant in VARIANTS:
        assert f"| {variant}: " in text
    assert "| real frames (ceiling) | 0.900 [0.900, 0.900]" in text
    assert text.count("[") >= len(VARIANTS) * 4
