"""ffmpeg's default JPEG extraction as syncnet_python reads frames: close to the input, lossy, rate-controlled, and
shaped as given."""
from __future__ import annotations

import numpy as np
import pytest

from evaluation.jpeg import jpeg_roundtrip


def faces(count: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    frames = []
    for t in range(count):
        inside = ((x - width / 2 - t) / (0.3 * width)) ** 2 + ((y - height / 2) / (0.4 * height)) ** 2 < 1
        image = np.stack([120 + 80 * inside, 90 + 60 * inside, 70 + 40 * inside], -1)
        frames.append(image + 10 * np.sin(x / 3.0)[..., None])
    return np.clip(frames, 0, 255).astype(np.uint8)


def test_the_round_trip_is_lossy_but_close_and_keeps_the_shape():
    frames = faces(30, 96, 96)
    out = jpeg_roundtrip(frames)
    error = np.abs(out.astype(float) - frames).mean(axis=(1, 2, 3))
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert 0 < error.mean() < 12
    assert error[-5:].mean() > error[:2].mean()  # 200 kb/s rate control: later frames get fewer bits
    np.testing.assert_array_equal(out, jpeg_roundtrip(frames))  # deterministic


def test_odd_sizes_are_padded_and_cropped_back():
    frames = faces(3, 57, 75)
    assert jpeg_roundtrip(frames).shape == frames.shape


def test_float_frames_are_refused_with_the_shape_named():
    with pytest.raises(ValueError, match=r"uint8 frames \[T, H, W, 3\]"):
        jpeg_roundtrip(np.zeros((2, 8, 8, 3), np.float32))
