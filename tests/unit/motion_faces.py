"""Landmark sets for the motion tests: random plausible ones and a frontal iBUG-68 face, in RES x RES frames."""
from __future__ import annotations

import math

import torch

RES = 32  # the motion tests' frame size


def landmarks_grid(batch: int, frames: int) -> torch.Tensor:
    """Plausible, distinct landmark sets inside a RES x RES frame."""
    base = torch.rand(68, 2) * RES * 0.6 + RES * 0.2
    return (base + torch.randn(batch, frames, 68, 2)).clamp(0, RES - 1)


def face_landmarks(size: int = 64) -> torch.Tensor:
    """A plausible, level, frontal face [68, 2] in an image of ``size`` pixels (iBUG 68 layout)."""
    u = size / 64
    cx, eye_y, d, ew = 32.0, 27.0, 9.0, 4.0
    points = torch.zeros(68, 2)
    t = torch.linspace(0, math.pi, 17)
    points[0:17] = torch.stack([cx - 19 * t.cos(), eye_y + 2 + 24 * t.sin()], 1)           # jaw, chin at 8
    brow = torch.linspace(-1.1, 0.85, 5) * ew
    arch = eye_y - 5 - 1.5 * torch.linspace(0.3, math.pi - 0.3, 5).sin()
    points[17:22] = torch.stack([cx - d + brow, arch], 1)
    points[22:27] = torch.stack([cx + d - brow.flip(0), arch.flip(0)], 1)
    points[27:31] = torch.stack([torch.full((4,), cx), torch.linspace(eye_y, eye_y + 11, 4)], 1)
    across = torch.linspace(-1, 1, 5)
    points[31:36] = torch.stack([cx + 3.5 * across, eye_y + 12 - across.abs()], 1)
    xs = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0, 1 / 3, -1 / 3]) * ew
    ys = eye_y + torch.tensor([0.0, -1.6, -1.6, 0.0, 1.6, 1.6])
    points[36:42] = torch.stack([cx - d + xs, ys], 1)    # outer (image left), two upper, inner, two lower
    points[42:48] = torch.stack([cx + d + xs, ys], 1)    # inner (image left), two upper, outer, two lower
    a = torch.linspace(0, 2 * math.pi, 13)[:-1]
    points[48:60] = torch.stack([cx - 8 * a.cos(), eye_y + 20 - 3 * a.sin()], 1)          # outer lips from 48
    b = torch.linspace(0, 2 * math.pi, 9)[:-1]
    points[60:68] = torch.stack([cx - 6 * b.cos(), eye_y + 20 - 0.8 * b.sin()], 1)         # inner lips from 60
    return points * u


def faces(batch: int, frames: int, size: int = RES) -> torch.Tensor:
    """Plausible faces [batch, frames, 68, 2]: the template, moved and jittered a little per face."""
    shift = torch.randn(batch, frames, 1, 2) * size / 64
    return face_landmarks(size) + shift + torch.randn(batch, frames, 68, 2) * 0.2 * size / 64
