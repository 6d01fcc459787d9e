"""The degraded real set: deterministic per seed (and per frame, whatever the chunking), recipes recorded as JSON,
strengths beyond the codebook's training degradation present, frames of the right size and range."""
from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.degraded import (
    apply_recipe,
    beyond_training_counts,
    blur_kernel,
    degrade_real_frames,
    draw_recipe,
    training_limits,
)

HIGH, LOW = 128, 32


def faces(n: int = 24, seed: int = 0) -> torch.Tensor:
    """Smooth image-like frames [n, 3, HIGH, HIGH] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, size=HIGH, mode="bicubic").clamp(-1, 1)


def test_same_seed_gives_byte_identical_frames_and_chunks_give_the_whole_set():
    real = faces()
    first, again = degrade_real_frames(real, LOW, seed=7), degrade_real_frames(real, LOW, seed=7)
    assert torch.equal(first.frames, again.frames) and first.digest() == again.digest()
    assert first.recipes == again.recipes
    chunks = [degrade_real_frames(real[i:i + 5], LOW, seed=7, start=i) for i in range(0, len(real), 5)]
    assert torch.equal(torch.cat([c.frames for c in chunks]), first.frames)
    assert [r for c in chunks for r in c.recipes] == first.recipes
    other = degrade_real_frames(real, LOW, seed=8)
    assert other.digest() != first.digest() and other.recipes != first.recipes


def test_frames_have_the_low_resolution_and_uint8_values_in_range():
    result = degrade_real_frames(faces(6), LOW, seed=1)
    assert result.frames.shape == (6, 3, LOW, LOW) and result.frames.dtype == torch.float32
    assert result.frames.min() >= -1 and result.frames.max() <= 1
    levels = (result.frames + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # exact uint8 values, as written frames are
    mean_error = (result.frames - F.interpolate(faces(6), size=LOW, mode="area")).abs().mean()
    assert 0.005 < mean_error < 0.5  # degraded, yet still the same faces


def test_recipes_are_recorded_as_json_and_reproduce_their_frame():
    real = faces(8)
    result = degrade_real_frames(real, LOW, seed=3)
    recipes = json.loads(json.dumps(result.recipes))  # JSON-serialisable, unchanged by the round trip
    assert recipes == result.recipes and [r["index"] for r in recipes] == list(range(8))
    for recipe in recipes:
        assert recipe["blur"]["kind"] in ("gaussian", "motion") and recipe["resize"][-1][1] == LOW
        assert len(recipe["resize"]) == 2 and all(mode in ("area", "bilinear", "bicubic") for mode, _ in
                                                  recipe["resize"])
    recipe = {k: v for k, v in recipes[2].items() if k != "index"}  # one frame again from its recipe alone
    rng = np.random.default_rng([3, 2])
    assert draw_recipe(rng, HIGH, LOW) == recipe
    again = apply_recipe(((real[2].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy(), recipe, rng)
    assert np.array_equal(again, ((result.frames[2].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())


def test_strengths_beyond_the_training_range_are_present():
    limits = training_limits(0.5)
    assert np.isclose(limits["blur_sigma_lr"], 0.577, atol=1e-3) and limits["noise_grey"] == 3.1875
    recipes = degrade_real_frames(faces(64), LOW, seed=0).recipes
    counts = beyond_training_counts(recipes)
    assert all(counts[step] > 0 for step in ("blur", "resize", "noise", "jpeg")) and counts["any"] > 48
    assert any(r["noise_sigma"] > 2 * limits["noise_grey"] for r in recipes)
    assert any(r["resize"][0][1] < 0.4 * LOW for r in recipes)  # below training's one 2x down-up
    assert any(r["blur"]["kind"] == "motion" for r in recipes)
    for recipe in recipes:  # the flags follow the recorded strengths
        noise_beyond = recipe["noise_sigma"] > limits["noise_grey"]
        assert noise_beyond == ("noise" in recipe["beyond_training"])
        assert (recipe["jpeg_quality"] is not None) == ("jpeg" in recipe["beyond_training"])


def test_blur_kernels_are_normalised_and_motion_blur_is_a_line():
    gaussian = blur_kernel({"kind": "gaussian", "sigma": 1.5})
    assert np.isclose(gaussian.sum(), 1.0) and gaussian.shape == (11, 11)
    horizontal = blur_kernel({"kind": "motion", "length": 9, "angle": 0.0})
    assert np.isclose(horizontal.sum(), 1.0) and horizontal[4].sum() > 0.9  # the middle row holds the line
    vertical = blur_kernel({"kind": "motion", "length": 9, "angle": 90.0})
    assert vertical[:, 4].sum() > 0.9
