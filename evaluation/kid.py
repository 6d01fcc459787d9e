"""Kernel Inception Distance: the unbiased squared MMD between two sets of Inception features with the cubic
polynomial kernel k(x, y) = (x . y / d + 1)^3 (Bińkowski et al. 2018), as torch-fidelity and clean-fid compute it:
the mean over ``subsets`` random subsets of ``subset_size`` features of each set, with the spread over subsets.

Unlike FID it is unbiased at small N, so rows scored on a few hundred frames compare. :func:`kid_speaker_draws`
gives the paired speaker bootstrap of a difference of two rows (the clips of a speaker resampled together, as
:mod:`evaluation.intervals` does for per-clip metrics), computed from per-speaker block sums of the kernel matrices.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evaluation.intervals import BOOTSTRAP_SAMPLES, LEVEL

SUBSETS = 100
SUBSET_SIZE = 1000


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(x y^T / d + 1)^3 of features [n, d] and [m, d], in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """The unbiased squared MMD from the three kernel matrices (diagonals of the within-set ones left out)."""
    n, m = len(k_xx), len(k_yy)
    if n < 2 or m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {n} and {m}")
    within_x = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    within_y = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within_x + within_y - 2 * k_xy.mean())


def kid(real: np.ndarray, generated: np.ndarray, subsets: int = SUBSETS, subset_size: int = SUBSET_SIZE,
        seed: int = 0) -> dict[str, float]:
    """{"kid": mean over subsets, "kid_std": std over subsets, "subset_size", "subsets"}: each subset draws
    ``min(subset_size, n_real, n_generated)`` features of each set without replacement (seeded); a subset size under
    both set sizes is what makes the spread over subsets say something."""
    size = min(subset_size, len(real), len(generated))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = real[rng.choice(len(real), size, replace=False)]
        y = generated[rng.choice(len(generated), size, replace=False)]
        values.append(mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)))
    return {"kid": float(np.mean(values)), "kid_std": float(np.std(values)), "subset_size": int(size),
            "subsets": int(subsets)}


def block_sums(kernel: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """[count, count] sums of ``kernel`` over the row group x column group blocks."""
    one_hot = np.zeros((len(groups), count))
    one_hot[np.arange(len(groups)), groups] = 1.0
    return one_hot.T @ kernel @ one_hot


def _bootstrap_kid(real: np.ndarray, generated: np.ndarray, groups: np.ndarray, count: int,
                   draws: np.ndarray) -> np.ndarray:
    """KID (unbiased MMD^2, all features) of every resampling: ``draws`` [B, count] are how often each group is
    drawn; a group drawn c times contributes its frames c times (pairs of a frame with itself left out)."""
    k_xx, k_yy, k_xy = (polynomial_kernel(a, b) for a, b in ((real, real), (generated, generated), (real, generated)))
    sizes = np.bincount(groups, minlength=count).astype(np.float64)
    n = draws @ sizes
    diagonal = {name: np.bincount(groups, weights=np.diag(k), minlength=count) for name, k in (("x", k_xx),
                                                                                                  ("y", k_yy))}

    def total(blocks: np.ndarray) -> np.ndarray:
        return np.einsum("bi,ij,bj->b", draws, blocks, draws)

    within_x = (total(block_sums(k_xx, groups, count)) - draws @ diagonal["x"]) / (n * (n - 1))
    within_y = (total(block_sums(k_yy, groups, count)) - draws @ diagonal["y"]) / (n * (n - 1))
    return within_x + within_y - 2 * total(block_sums(k_xy, groups, count)) / (n * n)


def kid_speaker_draws(real: np.ndarray, a: np.ndarray, b: np.ndarray, speakers: Sequence[str],
                      n: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> np.ndarray:
    """[n] bootstrap draws of KID(a) - KID(b) against the same ``real`` features, rows i of ``real``, ``a`` and
    ``b`` being the same frame (of speaker ``speakers[i]``): the speakers are drawn with replacement, each with all
    of its frames, the same draws for both rows. The draws depend only on the sorted speakers and ``seed``, so the
    draws of seeds evaluated on the same frames can be averaged draw by draw."""
    names = sorted(set(speakers))
    groups = np.array([names.index(s) for s in speakers])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), (n, len(names)))
    draws = np.stack([np.bincount(row, minlength=len(names)) for row in picks]).astype(np.float64)
    return (_bootstrap_kid(real, a, groups, len(names), draws)
            - _bootstrap_kid(real, b, groups, len(names), draws))


def interval_of_draws(point: float, draws: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(point, low, high): the percentile interval of bootstrap ``draws`` at ``level``."""
    tail = (1 - level) / 2
    low, high = np.quantile(np.asarray(draws, np.float64), [tail, 1 - tail])
    return float(point), float(low), float(high)
