"""KID for the codebook table: the unbiased MMD^2 with the cubic kernel, its spread over subsets, and the paired
speaker bootstrap of a difference of rows from per-speaker block sums (equal to resampling the frames themselves)."""
from __future__ import annotations

import numpy as np

from evaluation.kid import interval_of_draws, kid, kid_speaker_draws, mmd2_unbiased, polynomial_kernel


def gaussian(n: int, shift: float = 0.0, seed: int = 0, d: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, (n, d))


def test_unbiased_mmd_matches_its_definition():
    x, y = gaussian(7, seed=1), gaussian(5, 0.5, seed=2)
    k = lambda a, b: (a @ b / a.shape[0] + 1) ** 3  # noqa: E731
    within_x = np.mean([k(x[i], x[j]) for i in range(7) for j in range(7) if i != j])
    within_y = np.mean([k(y[i], y[j]) for i in range(5) for j in range(5) if i != j])
    cross = np.mean([k(a, b) for a in x for b in y])
    value = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    assert np.isclose(value, within_x + within_y - 2 * cross)


def test_kid_is_near_zero_for_one_distribution_grows_with_the_shift_and_has_a_subset_spread():
    real = gaussian(400, seed=0)
    same, near, far = (kid(real, gaussian(400, s, seed=9), subsets=20, subset_size=200) for s in (0.0, 0.3, 1.0))
    assert abs(same["kid"]) < 0.1 * near["kid"] and near["kid"] < far["kid"]
    assert same["kid_std"] > 0 and same["subset_size"] == 200 and same["subsets"] == 20
    assert kid(real, gaussian(400, seed=9), subsets=20, subset_size=200) == same  # seeded


def test_paired_speaker_bootstrap_equals_resampling_the_frames():
    rng = np.random.default_rng(3)
    speakers = [f"s{i % 5}" for i in range(20)]
    real, a, b = gaussian(20, seed=4), gaussian(20, 0.2, seed=5), gaussian(20, 0.6, seed=6)
    draws = kid_speaker_draws(real, a, b, speakers, n=8, seed=11)
    assert draws.shape == (8,)
    names = sorted(set(speakers))
    picks = np.random.default_rng(11).integers(0, len(names), (8, len(names)))
    for draw, pick in zip(draws, picks, strict=True):  # brute force: the drawn speakers' frames, copies and all
        idx = np.concatenate([[i for i, s in enumerate(speakers) if s == names[p]] for p in pick])
        brute = [mmd2_unbiased(polynomial_kernel(real[idx], real[idx]), polynomial_kernel(g[idx], g[idx]),
                               polynomial_kernel(real[idx], g[idx])) for g in (a, b)]
        assert np.isclose(draw, brute[0] - brute[1])
    assert np.all(kid_speaker_draws(real, a, a, speakers, n=8) == 0)
    clearly = kid_speaker_draws(real, real + 0.01 * rng.normal(size=real.shape), b, speakers, n=200)
    point, low, high = interval_of_draws(float(np.mean(clearly)), clearly)
    assert high < 0 and low <= point <= high  # the near-real row beats the shifted one in every draw
