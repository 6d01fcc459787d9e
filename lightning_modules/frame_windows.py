"""The windowed frame renderer: a window of ``frame_window`` frame latents denoised jointly per UNet call.

Each window is one group of ``K + T`` images in the UNet batch: first the ``K = previous_frames`` motion frames
(the previous window's last generated latents, the portrait latent before a video's first window; clean at
sampling, noise-augmented in training), then the window's ``T`` noisy latents. The motion frames are also extra
input channels of every image of the window, and the first ``K`` tokens of every temporal attention; their own
outputs are discarded (they are conditioning, never regenerated). Every image carries its frame's motion tokens,
audio and landmark maps; frame positions before the video start take frame 0's, those past its end the last one's.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from lightning_modules.nets.motion import audio_context

if TYPE_CHECKING:
    from lightning_modules.motion_generation import MotionParts


def denoise_windows(denoiser, noisy: torch.Tensor, t: torch.Tensor, motion_frames: torch.Tensor,
                    aug_step: torch.Tensor, portrait: torch.Tensor, motion: torch.Tensor, sounds: torch.Tensor,
                    maps: torch.Tensor | None) -> torch.Tensor:
    """One UNet call over W windows -> the prediction for their noisy frames [W, T, C, h, w].

    noisy [W, T, C, h, w]; t [W] (one noise step per window); motion_frames [W, K, C, h, w] with their
    augmentation step ``aug_step`` [W]; portrait [W, C, h, w]; motion [W, K + T, M], sounds [W, K + T, A, D] and
    maps [W, K + T, ...] of every image's frame, motion frames first."""
    windows, frames = noisy.shape[:2]
    k = motion_frames.shape[1]
    group = k + frames
    images = torch.cat([motion_frames, noisy], dim=1).flatten(0, 1)
    steps = torch.cat([aug_step[:, None].expand(-1, k), t[:, None].expand(-1, frames)], dim=1).flatten()
    previous = motion_frames.flatten(1, 2)[:, None].expand(-1, group, -1, -1, -1).flatten(0, 1)
    portraits = portrait[:, None].expand(-1, group, -1, -1, -1).flatten(0, 1)
    pred = denoiser(images, steps, portrait=portraits, previous=previous,
                    prev_noise_step=aug_step.repeat_interleave(group), motion=motion.flatten(0, 1),
                    audio=sounds.flatten(0, 1), maps=None if maps is None else maps.flatten(0, 1), frames=group)
    return pred.unflatten(0, (windows, group))[:, k:]


def window_positions(start: int, k: int, frames: int, n_frames: int, device: torch.device) -> torch.Tensor:
    """Frame indices [K + T] whose conditioning the window starting at ``start`` uses, clamped into the video."""
    return torch.arange(start - k, start + frames, device=device).clamp(0, n_frames - 1)


def window_conditioning(parts: MotionParts, motion: torch.Tensor, features: torch.Tensor, latent_size: int):
    """Per-frame conditioning of one video: (motion [n, M], audio context [n, A, D], maps [n, ...] | None)."""
    sounds = audio_context(features, parts.cfg.audio_radius)[0]
    return motion[0], sounds, parts.motion_maps(motion[0], latent_size)


def run_sampler(parts: MotionParts, z: torch.Tensor, motion_frames: torch.Tensor, portrait: torch.Tensor,
                cond: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]) -> torch.Tensor:
    """Denoise windows z [W, T, C, h, w] from pure noise with ``frame_steps`` DDIM steps (clean motion frames)."""
    motion, sounds, maps = cond
    clean = torch.zeros(len(z), dtype=torch.long, device=z.device)
    sampler = parts.sampler(parts.cfg.frame_steps)
    for t in sampler.timesteps:
        pred = denoise_windows(parts.frame_denoiser, z, t.repeat(len(z)).to(z.device), motion_frames, clean,
                               portrait, motion, sounds, maps)
        z = sampler.step(pred, t, z).prev_sample
    return z


@torch.no_grad()
def window_latents(parts: MotionParts, portrait_latent: torch.Tensor, motion: torch.Tensor, features: torch.Tensor,
                   generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """The frame latents [t, C, h, w] of one video, yielded window after window, each window continuing from the
    last K latents of the window before it (the portrait latent before the first)."""
    cfg, device = parts.cfg, portrait_latent.device
    k, frames, n_frames = cfg.previous_frames, cfg.frame_window, motion.shape[1]
    motion, sounds, maps = window_conditioning(parts, motion, features, portrait_latent.shape[-1])
    produced = [portrait_latent.expand(k, -1, -1, -1)]
    for start in range(0, n_frames, frames):
        at = window_positions(start, k, frames, n_frames, device)
        z = torch.randn((1, frames, *portrait_latent.shape[1:]), generator=generator).to(device)
        cond = (motion[at][None], sounds[at][None], None if maps is None else maps[at][None])
        motion_frames = torch.cat(produced)[-k:][None]
        z = run_sampler(parts, z, motion_frames, portrait_latent, cond)
        produced = [*produced[-1:], z[0, :min(frames, n_frames - start)]]
        yield produced[-1]


@torch.no_grad()
def rerender_windows(parts: MotionParts, latents: torch.Tensor, motion: torch.Tensor, sounds: torch.Tensor,
                     maps: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Real clips' latents [B, n, C, h, w] -> every window denoised at once, each from the real latents before it
    (the clip's first frame as the portrait, and as the motion frames of the first window). motion [B, n, M],
    sounds [B, n, A, D], maps [B, n, ...] | None are the clips' own per-frame conditioning. -> [B, n, C, h, w]."""
    cfg = parts.cfg
    batch, n_frames = latents.shape[:2]
    k, frames = cfg.previous_frames, cfg.frame_window
    starts = range(0, n_frames, frames)
    history = torch.cat([latents[:, :1].expand(-1, k, -1, -1, -1), latents], dim=1)   # real latent j at j + k
    motion_frames = torch.stack([history[:, s:s + k] for s in starts], 1).flatten(0, 1)
    at = torch.stack([window_positions(s, k, frames, n_frames, latents.device) for s in starts])   # [W, K + T]
    cond = tuple(None if x is None else x[:, at].flatten(0, 1) for x in (motion, sounds, maps))
    portrait = latents[:, 0].repeat_interleave(len(starts), 0)
    z = torch.randn((len(portrait), frames, *latents.shape[2:]), generator=generator).to(latents.device)
    z = run_sampler(parts, z, motion_frames, portrait, cond)
    return z.unflatten(0, (batch, len(starts))).flatten(1, 2)[:, :n_frames]
