"""A fixed, seeded, recorded set of degraded real frames: the codebook renderer's test beyond its training inputs.

Each real high-resolution frame [3, H, H] in [-1, 1] becomes a low-resolution frame [3, r, r] through its own recipe,
drawn from a generator seeded by ``(seed, frame index)``, so a frame's degradation depends only on the seed and its
place in the set (chunks give what the whole set gives), and the same seed gives byte-identical frames. In order:

1. blur at the high resolution: ``gaussian`` (sigma in high-res px) or ``motion`` (a line of ``length`` px at
   ``angle`` degrees);
2. a resize chain: ``[[mode, size], [mode, r]]``, first to an intermediate size (below r: a loss of resolution; above:
   a second resampling), then to r; modes ``area``, ``bilinear`` (no antialiasing, so it aliases when shrinking) and
   ``bicubic`` (OpenCV's);
3. Gaussian noise of ``noise_sigma`` grey levels (of 255), then rounding to uint8;
4. JPEG at ``jpeg_quality`` (cv2.imencode / imdecode; None: none).

The recipe (a JSON-serialisable dict) records every choice and ``beyond_training``: the steps stronger than, or of a
kind absent from, the training inputs. The training inputs (:func:`lightning_modules.codebook_parts.degrade_frames`
at strength s, 0.5 by default) are the corpus's area downsample of the real frame, then at the low resolution: a
3 x 3 box blur blended in with weight U(0, s) (variance <= 2 s / 3 low-res px^2: a Gaussian sigma <= 0.58 low-res px
at s = 0.5), with probability s / 2 a 2x bilinear down-up (intermediate r / 2), and Gaussian noise of std up to
6.4 s grey levels (3.2 at s = 0.5); no motion blur, no JPEG. So here a blur is beyond training when it is motion blur
or its sigma in low-res px exceeds sqrt(2 s / 3), a resize chain when its intermediate is below r / 2, noise when
above 6.4 s grey levels, and every JPEG step.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from common.images import to_uint8, to_unit

TRAINING_STRENGTH = 0.5  # CodebookConfig.degrade's default, the strength the small and tiny codebooks train at
GAUSSIAN_SIGMA_HR = (0.5, 8.0)  # high-res px: 0.125 .. 2 low-res px at 4x (training: <= 0.58)
MOTION_LENGTH_HR = (3, 17)  # high-res px, odd
MOTION_SHARE = 0.4
INTERMEDIATE_SCALE = (0.3, 1.5)  # intermediate size / r (training: 0.5 at most once)
RESIZE_MODES = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
NOISE_GREY = (0.0, 12.0)  # grey levels (training: <= 3.2 at s = 0.5)
JPEG_QUALITY = (25, 95)
JPEG_SHARE = 0.75


@dataclass
class DegradedSet:
    """Low-res frames [N, 3, r, r] in [-1, 1] (exact uint8 values) and one recipe per frame, in order."""

    frames: torch.Tensor
    recipes: list[dict]
    seed: int

    def digest(self) -> str:
        """SHA-256 of the frames as uint8: the same seed and real frames give the same digest."""
        return hashlib.sha256(to_uint8(self.frames).tobytes()).hexdigest()


def training_limits(strength: float = TRAINING_STRENGTH) -> dict[str, float]:
    """The strongest training degradation at ``strength``: blur sigma in low-res px, the smallest resize
    intermediate as a share of r, the noise std in grey levels."""
    return {"blur_sigma_lr": math.sqrt(2 * strength / 3), "intermediate_scale": 0.5 if strength > 0 else 1.0,
            "noise_grey": 6.375 * strength}


def draw_recipe(rng: np.random.Generator, high: int, low: int, strength: float = TRAINING_STRENGTH) -> dict:
    """One frame's recipe for a high-res frame of ``high`` px down to ``low`` px (see the module docstring)."""
    if rng.random() < MOTION_SHARE:
        length = int(rng.integers(MOTION_LENGTH_HR[0] // 2, MOTION_LENGTH_HR[1] // 2 + 1)) * 2 + 1
        blur = {"kind": "motion", "length": length, "angle": round(float(rng.uniform(0.0, 180.0)), 2)}
    else:
        blur = {"kind": "gaussian", "sigma": round(float(rng.uniform(*GAUSSIAN_SIGMA_HR)), 3)}
    modes = list(RESIZE_MODES)
    intermediate = max(4, int(round(low * rng.uniform(*INTERMEDIATE_SCALE))))
    resize = [[modes[int(rng.integers(len(modes)))], intermediate], [modes[int(rng.integers(len(modes)))], low]]
    noise = round(float(rng.uniform(*NOISE_GREY)), 3)
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)) if rng.random() < JPEG_SHARE else None
    limits = training_limits(strength)
    beyond = []
    if blur["kind"] == "motion" or blur["sigma"] * low / high > limits["blur_sigma_lr"]:
        beyond.append("blur")
    if intermediate < limits["intermediate_scale"] * low:
        beyond.append("resize")
    if noise > limits["noise_grey"]:
        beyond.append("noise")
    if quality is not None:
        beyond.append("jpeg")
    return {"blur": blur, "resize": resize, "noise_sigma": noise, "jpeg_quality": quality,
            "beyond_training": beyond}


def blur_kernel(blur: dict) -> np.ndarray:
    """The normalised float32 kernel of a recipe's blur."""
    if blur["kind"] == "gaussian":
        radius = max(1, math.ceil(3 * blur["sigma"]))
        line = cv2.getGaussianKernel(2 * radius + 1, blur["sigma"], cv2.CV_32F)
        kernel = line @ line.T
    else:
        length = blur["length"]
        kernel = np.zeros((length, length), np.float32)
        centre, angle = (length - 1) / 2, math.radians(blur["angle"])
        dx, dy = centre * math.cos(angle), centre * math.sin(angle)
        shift = 4  # sub-pixel end points (cv2.line's fixed-point shift)
        ends = [(int(round((centre + s * dx) * 2 ** shift)), int(round((centre + s * dy) * 2 ** shift)))
                for s in (-1, 1)]
        cv2.line(kernel, ends[0], ends[1], 1.0, thickness=1, lineType=cv2.LINE_AA, shift=shift)
    return (kernel / kernel.sum()).astype(np.float32)


def apply_recipe(image: np.ndarray, recipe: dict, rng: np.random.Generator) -> np.ndarray:
    """uint8 RGB [H, H, 3] -> uint8 RGB [r, r, 3] by ``recipe``; ``rng`` draws the noise."""
    x = cv2.filter2D(image.astype(np.float32), -1, blur_kernel(recipe["blur"]), borderType=cv2.BORDER_REFLECT)
    for mode, size in recipe["resize"]:
        x = cv2.resize(x, (size, size), interpolation=RESIZE_MODES[mode])
    x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(recipe["noise_sigma"])
    out = np.clip(np.round(x), 0, 255).astype(np.uint8)
    if recipe["jpeg_quality"] is not None:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, recipe["jpeg_quality"]])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a frame at quality {recipe['jpeg_quality']}")
        out = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out


def degrade_real_frames(high: torch.Tensor, size: int, seed: int, start: int = 0,
                        strength: float = TRAINING_STRENGTH) -> DegradedSet:
    """Real frames [N, 3, H, H] in [-1, 1] -> the degraded set's frames [N, 3, size, size] and recipes; frame i of
    the call is frame ``start + i`` of the set (its generator is seeded by ``(seed, start + i)``). ``strength`` is
    the training degradation the recipes' ``beyond_training`` compares against."""
    if high.ndim != 4 or high.shape[1] != 3 or high.shape[-1] != high.shape[-2]:
        raise ValueError(f"expected square real frames [N, 3, H, H] in [-1, 1], got {tuple(high.shape)}")
    if not 0 < size <= high.shape[-1]:
        raise ValueError(f"the degraded frames' size must be in (0, {high.shape[-1]}] px, got {size}")
    images, frames, recipes = to_uint8(high), [], []
    for offset, image in enumerate(images):
        rng = np.random.default_rng([seed, start + offset])
        recipe = draw_recipe(rng, high.shape[-1], size, strength)
        frames.append(apply_recipe(image, recipe, rng))
        recipes.append({"index": start + offset, **recipe})
    return DegradedSet(to_unit(np.stack(frames)), recipes, seed)


def beyond_training_counts(recipes: list[dict]) -> dict[str, int]:
    """How many recipes go beyond the training range in each step (and in any)."""
    counts = {step: sum(step in r["beyond_training"] for r in recipes) for step in ("blur", "resize", "noise", "jpeg")}
    counts["any"] = sum(bool(r["beyond_training"]) for r in recipes)
    return counts
