"""One measurement path: a video at 64 px and the same video at 256 px reach the scorers alike, and would not
without :func:`evaluation.measure.to_measurement_size`."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.images import to_uint8, to_unit
from evaluation.lse import SyncClip, lse_scores
from evaluation.measure import scale_landmarks, to_measurement_size
from lightning_modules.syncnet import sync_region
from tests.unit.syncnet_reference import random_compact_expert

GREY_LEVEL = 2 / 255  # one uint8 step in [-1, 1]


def face_video(size: int, frames: int = 16, phase: float = 0.0) -> torch.Tensor:
    """A smooth face-like video [T, 3, size, size] in [-1, 1]: the same continuous picture sampled at the pixel
    centres of any size (a soft face, two eyes, a mouth whose opening follows a sine)."""
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    skin = torch.exp(-(((x - 0.5) / 0.3) ** 2 + ((y - 0.52) / 0.38) ** 2) ** 2)
    eyes = sum(torch.exp(-((x - ex) ** 2 + (y - 0.42) ** 2) / (2 * 0.04 ** 2)) for ex in (0.38, 0.62))
    video = []
    for opening in 0.5 + 0.5 * np.sin(0.7 * np.arange(frames) + phase):
        mouth = torch.exp(-(x - 0.5) ** 2 / (2 * 0.08 ** 2) - (y - 0.7) ** 2 / (2 * (0.03 + 0.03 * opening) ** 2))
        grey = -0.8 + 1.5 * skin - 1.0 * eyes - 1.2 * mouth
        video.append(torch.stack([grey, 0.8 * grey - 0.1, 0.6 * grey - 0.2]).clamp(-1, 1))
    return torch.stack(video).float()


@pytest.fixture(scope="module")
def expert():
    """A tiny random compact sync expert (as in test_lse), its batch-norm variances a little smaller so that its
    scores move with the pixels by more than float rounding."""
    return random_compact_expert(0.2, 0.4)


def test_frames_at_the_size_come_back_unchanged_and_uint8_frames_are_converted():
    frames = face_video(64, frames=3)
    assert torch.equal(to_measurement_size(frames, 64), frames)
    pixels = to_uint8(frames)
    assert torch.equal(to_measurement_size(pixels, 64), to_unit(pixels))
    up = to_measurement_size(pixels, 256)
    assert up.shape == (3, 3, 256, 256) and up.dtype == torch.float32
    step = -torch.ones(1, 3, 8, 8)
    step[..., 4:] = 1.0  # bicubic overshoots a hard edge: the measurement clamps it
    assert to_measurement_size(step, 32).abs().max() == 1.0


def test_downscaling_is_antialiased():
    grain = (0.5 * torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert to_measurement_size(grain, 64).std() < 0.3 * grain.std()  # 4 x 4 pixels average out, as area does
    assert F.interpolate(grain, size=64, mode="bicubic").std() > 0.6 * grain.std()  # without antialias: aliased


def test_a_smooth_video_measured_from_64_px_is_the_video_rendered_at_256_px():
    error = (to_measurement_size(face_video(64), 256) - face_video(256)).abs()
    assert error.max() <= 2 * GREY_LEVEL and error.mean() <= 0.05 * GREY_LEVEL


def test_what_is_not_a_square_frame_is_refused():
    with pytest.raises(ValueError, match="not square"):
        to_measurement_size(torch.zeros(2, 3, 64, 48), 64)
    with pytest.raises(ValueError, match="uint8 frames"):
        to_measurement_size(np.zeros((2, 64, 64, 3), np.float32), 64)
    with pytest.raises(ValueError, match="float frames"):
        to_measurement_size(torch.zeros(2, 64, 64, 3), 64)


def test_landmarks_follow_the_frame_to_the_measurement_size():
    marks = np.array([[0.0, 0.0], [31.5, 10.0], [63.0, 63.0]])
    assert np.array_equal(scale_landmarks(marks, 64, 64), marks)
    np.testing.assert_allclose(scale_landmarks(marks, 64, 256), [[1.5, 1.5], [127.5, 41.5], [253.5, 253.5]])


def test_lse_of_a_video_and_its_256_px_export_agree_only_through_the_measurement(expert):
    from reports.results_sync import MEASURE_SIZE

    # Three 64 px clips and the same clips exported at 256 px as generation writes them (bicubic, antialiased,
    # uint8), scored the way the sync table scores its rows: the lower half of the face, by a 64 px expert.
    rng = np.random.default_rng(1)
    audio = [rng.integers(-8000, 8000, 16 * 640).astype(np.int16) for _ in range(3)]
    small = [face_video(64, phase=i) for i in range(3)]
    export = [to_uint8(F.interpolate(v, size=256, mode="bicubic", antialias=True).clamp(-1, 1)) for v in small]

    def score(row: list, measure: bool) -> tuple[float, float, torch.Tensor]:
        clips = [sync_region(to_measurement_size(v, MEASURE_SIZE) if measure else torch.as_tensor(v), "lower_face")
                 for v in row]
        seen = expert.preprocess(to_uint8(clips[0]))
        result = lse_scores(expert, [SyncClip(str(i), c, a) for i, (c, a) in enumerate(zip(clips, audio, strict=True))])
        return result.lse_c, result.lse_d, seen

    lse_c, lse_d, seen = score(small, True)
    export_c, export_d, export_seen = score(export, True)
    assert torch.equal(seen, export_seen)
    assert export_c == pytest.approx(lse_c, abs=1e-6) and export_d == pytest.approx(lse_d, abs=1e-6)
    # Without it, each row reaches the expert by its own resize: a vertical stretch of the 64 px lower face, a
    # decimation of the 256 px one; the expert sees other pixels and scores the same video differently.
    lse_c, lse_d, seen = score(small, False)
    export_c, export_d, export_seen = score([to_unit(v) for v in export], False)
    assert (seen - export_seen).abs().max() >= 3
    assert max(abs(export_c - lse_c), abs(export_d - lse_d)) > 1e-5


def test_ssim_of_a_video_rendered_at_64_and_at_256_px_agrees_only_through_the_measurement():
    from reports.results_codebook import MEASURE_SIZE, frame_scores, ssim_per_frame, unit

    # A generated video (its mouth out of phase with the truth's), rendered at 64 and at 256 px, against the
    # truth at 256 px: after the measurement both rows get the same SSIM and PSNR; scored each at its own size
    # against the truth at that size, SSIM's 11-pixel window covers four times more face at 64 px.
    generated = {size: face_video(size, phase=2.5) for size in (64, 256)}
    truth = {size: face_video(size) for size in (64, 256)}
    target = unit(to_measurement_size(truth[256], MEASURE_SIZE))
    (psnr_64, ssim_64), (psnr_256, ssim_256) = (frame_scores(generated[size], target) for size in (64, 256))
    assert abs(float(ssim_64.mean() - ssim_256.mean())) <= 5e-4
    assert abs(float(psnr_64.mean() - psnr_256.mean())) <= 0.05
    native = {size: float(ssim_per_frame(unit(generated[size]), unit(truth[size])).mean()) for size in (64, 256)}
    assert abs(native[64] - native[256]) >= 3e-3
