"""The mouth-region enhancer's networks: the lower-face mask from landmarks, the audio-conditioned refiner that
rewrites only that region, the training-time mouth degradation, and a patch discriminator (adversarial option)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.devices import upload

NOSE_TIP = 33
JAW_LEFT, JAW_RIGHT = 3, 13
LOWER_FACE_POINTS = tuple(range(3, 14)) + tuple(range(48, 68)) + (NOSE_TIP,)


def lower_face_mask(landmarks: torch.Tensor, size: int, feather: float = 0.04) -> torch.Tensor:
    """Landmarks [..., 68, 2] in pixels -> soft mask [..., 1, size, size]: from the nose tip down to the chin,
    between the jaw points 3 and 13, with edges feathered over ``feather * size`` pixels."""
    points = landmarks.float()
    top = points[..., NOSE_TIP, 1]
    bottom = points[..., LOWER_FACE_POINTS, 1].amax(-1)
    left = points[..., LOWER_FACE_POINTS, 0].amin(-1)
    right = points[..., LOWER_FACE_POINTS, 0].amax(-1)
    soft = max(feather * size, 1e-3)
    coords = torch.arange(size, device=landmarks.device, dtype=torch.float32) + 0.5
    y = coords.view(*([1] * top.ndim), size, 1)
    x = coords.view(*([1] * top.ndim), 1, size)
    expand = lambda v: v[..., None, None]  # noqa: E731
    inside_y = torch.sigmoid((y - expand(top)) / soft) * torch.sigmoid((expand(bottom) - y) / soft)
    inside_x = torch.sigmoid((x - expand(left)) / soft) * torch.sigmoid((expand(right) - x) / soft)
    return (inside_y * inside_x).unsqueeze(-3)


def degrade_mouths(frames: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Real frames [B, T, 3, H, W] with a wrong mouth: inside the mask, each frame gets the blurred lower face of
    another frame of its clip (so only the speech tells the refiner which mouth shape is right)."""
    batch, steps = frames.shape[:2]
    shift = upload(torch.randint(1, max(steps, 2), (batch, steps), generator=generator), frames.device)
    source = (torch.arange(steps, device=frames.device)[None] + shift) % steps
    donor = frames[torch.arange(batch, device=frames.device)[:, None], source]
    blurred = F.avg_pool2d(donor.flatten(0, 1), 3, stride=1, padding=1, count_include_pad=False).view_as(frames)
    return frames * (1 - mask) + blurred * mask


class FiLMBlock(nn.Module):
    """conv -> group norm -> audio FiLM (scale, shift) -> SiLU."""

    def __init__(self, channels_in: int, channels_out: int, cond_dim: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, stride, 1)
        self.norm = nn.GroupNorm(min(8, channels_out), channels_out)
        self.film = nn.Linear(cond_dim, 2 * channels_out)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(cond)[:, :, None, None].chunk(2, dim=1)
        return F.silu(self.norm(self.conv(x)) * (1 + scale) + shift)


class LipRefiner(nn.Module):
    """(frame, mask, reference frame) [N, 7, R, R] + audio [N, A] -> the frame with its masked region rewritten.

    A small UNet whose every block is FiLM-modulated by the frame's audio; the output is a residual added inside
    the mask only, so everything outside the lower face is returned unchanged.
    """

    def __init__(self, audio_dim: int, channels: list[int], cond_dim: int = 128):
        super().__init__()
        self.audio = nn.Sequential(nn.Linear(audio_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.stem = FiLMBlock(7, channels[0], cond_dim)
        self.down = nn.ModuleList(FiLMBlock(a, b, cond_dim, stride=2)
                                  for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.up = nn.ModuleList(FiLMBlock(b + a, a, cond_dim) for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.out = nn.Conv2d(channels[0], 3, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, frame: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
                audio: torch.Tensor) -> torch.Tensor:
        cond = self.audio(audio)
        x = self.stem(torch.cat([frame, mask, reference], dim=1), cond)
        skips = []
        for block in self.down:
            skips.append(x)
            x = block(x, cond)
        for block in reversed(self.up):
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], dim=1), cond)
        refined = (frame + self.out(x)).clamp(-1, 1)
        return frame * (1 - mask) + refined * mask


class PatchDiscriminator(nn.Module):
    """Real/fake logits per patch [N, 1, h, w] of the lower-face region (hinge loss)."""

    def __init__(self, channels: list[int]):
        super().__init__()
        layers, c_in = [], 3
        for c_out in channels:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, 1, 3, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)
