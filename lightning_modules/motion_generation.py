"""Speech + portrait -> talking-face frames of any length, by sliding windows over the motion stage's networks.

Motion: windows of ``window_frames``; each window's transformer sees the last ``context_frames`` motion latents of
the window before it (a shorter last window is generated whole on zero-padded audio and cut). Frames, with
``frame_renderer: windowed`` (:mod:`lightning_modules.frame_windows`): windows of ``frame_window`` frames denoised
jointly, each continuing from the last ``previous_frames`` latents of the window before it; with ``sequential``:
one frame at a time, each frame's UNet input holding the ``previous_frames`` latents generated just before it. The
portrait latent stands in before the first frame. Sampling never noise-augments the previous frames (their noise
step is 0).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
from torch import nn

from common.errors import SeespeakerError
from datamodules.sample import MOTION_TRUTH_COLUMNS
from lightning_modules.frame_windows import rerender_windows, window_latents
from lightning_modules.nets.encoders import MIN_SPEECH_SAMPLES, SpeechEncoder
from lightning_modules.nets.motion import audio_context, landmark_maps, per_frame_audio
from lightning_modules.stagefile import StageFiles


class GenerationInputError(SeespeakerError, ValueError):
    """Speech or a portrait that the motion stage cannot generate from."""


class FrozenParts:
    """The frozen networks the motion stage borrows: the VAE (from ``autoencoder``) and the speech encoder (from
    ``conre``). Kept outside the module tree, so they are neither trained nor exported with the stage."""

    def __init__(self, vae: AutoencoderKL, scaling_factor: float, speech_encoder: SpeechEncoder, vae_hash: str = ""):
        self.vae = vae.eval().requires_grad_(False)
        self.speech_encoder = speech_encoder.eval().requires_grad_(False)
        self.scaling_factor = float(scaling_factor)
        self.vae_hash = vae_hash

    @classmethod
    def from_stages(cls, files: StageFiles) -> FrozenParts:
        """The VAE of the exported autoencoder and the speech encoder of the exported conre stage."""
        from lightning_modules.autoencoder import AutoencoderStage
        from lightning_modules.conre import ConReStage
        vae, scaling, vae_hash = AutoencoderStage.for_inference(files)
        return cls(vae, scaling, ConReStage.for_inference(files).speech, vae_hash)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def speaker_dim(self) -> int:
        return int(self.speech_encoder.embed_dim)

    def _on(self, module: nn.Module, device: torch.device) -> nn.Module:
        if next(module.parameters()).device != device:
            module.to(device)
        return module

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [N, 3, R, R] in [-1, 1] -> scaled latents [N, C, R / f, R / f] (the posterior mean)."""
        vae = self._on(self.vae, images.device)
        return vae.encode(images.float()).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self._on(self.vae, latents.device)
        return vae.decode(latents.float() / self.scaling_factor).sample.clamp(-1, 1)

    @torch.no_grad()
    def speaker(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, N] -> L2-normalised speaker embedding [B, S]; speech under 0.5 s is zero-padded to it."""
        encoder = self._on(self.speech_encoder, audio.device)
        if audio.shape[-1] < MIN_SPEECH_SAMPLES:
            audio = F.pad(audio, (0, MIN_SPEECH_SAMPLES - audio.shape[-1]))
        return F.normalize(encoder(audio.float()), dim=-1)


@dataclass
class MotionParts:
    """Everything generation needs: config, the two denoisers, the frozen parts, the training noise schedule."""

    cfg: Any
    motion_denoiser: nn.Module
    frame_denoiser: nn.Module
    frozen: FrozenParts
    scheduler: DDPMScheduler  # the frame UNet's training schedule
    motion_scheduler: DDPMScheduler  # the motion transformer's (its own prediction type)
    mel: nn.Module
    resolution: int  # the portrait size the stage trained at (0: any size the VAE divides)
    fps: float = 25.0
    sample_rate: int = 16000
    motion_encoder: nn.Module | None = None  # motion latents -> landmarks and gaze (the UNet's maps, the lip mask)

    def audio_features(self, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
        """audio [B, N] -> per-frame log-mel features [B, n_frames, 4 * n_mels], normalised over each utterance."""
        return per_frame_audio(self.mel, audio, n_frames)

    def motion_maps(self, motion: torch.Tensor, latent_size: int) -> torch.Tensor | None:
        """Motion latents [N, M] -> the frame UNet's landmark maps [N, K, h, w] (None when it takes none): the
        landmarks and the gaze (pupils, weighted by the decoded presence) the latents decode to."""
        if not self.cfg.motion_maps:
            return None
        factor = self.frozen.downsample
        size = latent_size * factor
        self.motion_encoder.to(motion.device)
        with torch.no_grad():
            return landmark_maps(self.motion_encoder.landmarks(motion, size), size, factor,
                                 gaze=self.motion_encoder.gaze(motion))

    def sampler(self, steps: int, motion: bool = False) -> DDIMScheduler:
        """A DDIM sampler of ``steps`` steps for the frame UNet, or (``motion``) for the motion transformer."""
        sampler = DDIMScheduler.from_config((self.motion_scheduler if motion else self.scheduler).config)
        sampler.set_timesteps(steps)
        return sampler


def check_generation_inputs(parts: MotionParts, portrait: torch.Tensor, audio: torch.Tensor, fps: float,
                            sample_rate: int) -> int:
    """The number of frames the speech covers, or a GenerationInputError saying what to change."""
    if fps != parts.fps:
        raise GenerationInputError(f"fps={fps} but the motion_diffusion stage was trained at {parts.fps} fps; "
                                   f"generate at {parts.fps} fps and resample the video afterwards")
    if sample_rate != parts.sample_rate:
        raise GenerationInputError(f"speech at {sample_rate} Hz but the stage expects {parts.sample_rate} Hz; "
                                   f"resample the speech first")
    if audio.ndim != 1:
        raise GenerationInputError(f"speech must be mono [N] samples, got shape {tuple(audio.shape)}")
    size = parts.resolution or portrait.shape[-1]
    if portrait.shape != (3, size, size) or size % parts.frozen.downsample:
        wanted = parts.resolution or f"a multiple of {parts.frozen.downsample}"
        raise GenerationInputError(f"portrait must be [3, R, R] in [-1, 1] with R = {wanted}, "
                                   f"got {tuple(portrait.shape)}")
    n_frames = int(audio.shape[0] * fps // sample_rate)
    window = parts.cfg.window_frames
    if n_frames < window:
        raise GenerationInputError(
            f"speech of {audio.shape[0] / sample_rate:.2f} s gives {n_frames} frames at {fps:g} fps, shorter than "
            f"one window of {window} frames ({window / fps:.2f} s); give at least {window / fps:.2f} s of speech")
    return n_frames


@torch.no_grad()
def sample_motion(parts: MotionParts, audio: torch.Tensor, speaker: torch.Tensor, n_frames: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-frame audio [1, T, D] + speaker [1, S] -> motion latents [1, n_frames, M], window by window."""
    cfg, device = parts.cfg, audio.device
    window, context_len = cfg.window_frames, cfg.context_frames
    motion_dim = parts.motion_denoiser.motion_in.in_features
    produced: list[torch.Tensor] = []
    for start in range(0, n_frames, window):
        feats = audio[:, start:start + window]
        feats = F.pad(feats, (0, 0, 0, window - feats.shape[1]))
        context = torch.cat(produced, dim=1)[:, -context_len:] if produced and context_len else None
        has_context = torch.ones(1, dtype=torch.bool, device=device) if context is not None else None
        x = torch.randn(1, window, motion_dim, generator=generator).to(device)
        sampler = parts.sampler(cfg.motion_steps, motion=True)
        for t in sampler.timesteps:
            pred = parts.motion_denoiser(x, t.reshape(1).to(device), audio=feats, speaker=speaker,
                                         context=context, has_context=has_context)
            x = sampler.step(pred, t, x).prev_sample
        produced.append(x[:, :min(window, n_frames - start)])
    return torch.cat(produced, dim=1)


@torch.no_grad()
def render_frames(parts: MotionParts, portrait_latent: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Frame latents [T, C, h, w] of motion [1, T, M] and audio features [1, T, D], by the stage's renderer."""
    return torch.cat(list(frame_latents(parts, portrait_latent, motion, audio, generator)))


def frame_latents(parts: MotionParts, portrait_latent: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor,
                  generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """:func:`render_frames`' latents as the renderer makes them: a window [t, C, h, w] at a time (one frame at a
    time from the sequential renderer), for work that goes on while the next ones render."""
    if parts.cfg.windowed:
        return window_latents(parts, portrait_latent, motion, audio, generator)
    return sequential_latents(parts, portrait_latent, motion, audio, generator)


@torch.no_grad()
def sequential_latents(parts: MotionParts, portrait_latent: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor,
                       generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Frame latents [1, C, h, w], one frame after the other, each denoised from the portrait, the latents just
    before it, its motion and audio."""
    cfg, device = parts.cfg, portrait_latent.device
    sounds = audio_context(audio, cfg.audio_radius)
    history = [portrait_latent] * cfg.previous_frames
    no_augmentation = torch.zeros(1, dtype=torch.long, device=device)
    maps = parts.motion_maps(motion[0], portrait_latent.shape[-1])
    for index in range(motion.shape[1]):
        previous = torch.cat(history[-cfg.previous_frames:], dim=1)
        z = torch.randn(portrait_latent.shape, generator=generator).to(device)
        sampler = parts.sampler(cfg.frame_steps)
        for t in sampler.timesteps:
            pred = parts.frame_denoiser(z, t.reshape(1).to(device), portrait=portrait_latent, previous=previous,
                                        prev_noise_step=no_augmentation, motion=motion[:, index],
                                        audio=sounds[:, index], maps=None if maps is None else maps[index:index + 1])
            z = sampler.step(pred, t, z).prev_sample
        history = [*history[1:], z]
        yield z


@torch.no_grad()
def truth_gaze(batch: dict[str, Any], n_frames: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gaze the corpus knows, for the motion encoder: (gaze [B, T, 2], mask [B, T]) from
    ``batch["motion_truth"]`` and ``batch["has_motion_truth"]``, or (None, None) for a batch without them."""
    truth, known = batch.get("motion_truth"), batch.get("has_motion_truth")
    if truth is None or known is None:
        return None, None
    columns = [MOTION_TRUTH_COLUMNS.index(name) for name in ("gaze_x", "gaze_y")]
    gaze = truth[:, :n_frames][..., columns].float()
    return gaze, known.to(gaze.device).bool()[:, None].expand(-1, gaze.shape[1])


def rerender_frames(parts: MotionParts, frames: torch.Tensor, landmarks: torch.Tensor, audio: torch.Tensor,
                    resolution: int, generator: torch.Generator | None = None, gaze: torch.Tensor | None = None,
                    gaze_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Real clips [B, T, 3, r, r] -> the motion stage's rendering of each of their frames, [B, T, 3, r, r].

    Every frame (every window, with the windowed renderer) is denoised in one batched run of ``frame_steps`` from
    what it would be generated from, taken from the clip itself: its motion latent (encoded from its landmarks),
    its audio, the clip's first frame as the portrait and the real latents of the frames before it (the
    portrait's before the clip's start), then
    decoded by the autoencoder. So the frames carry the motion stage's rendering errors and stay aligned with
    the real ones: the codebook render phase's inputs with ``render_source: motion``. ``gaze`` [B, T, 2] and
    ``gaze_mask`` [B, T] give the clip's gaze where the corpus knows it (``batch["motion_truth"][..., 4:6]``,
    ``batch["has_motion_truth"]`` over T), as the motion stage's encoder saw it in training.
    """
    cfg, device = parts.cfg, frames.device
    batch, n_frames, n_prev = frames.shape[0], frames.shape[1], cfg.previous_frames
    for module in (parts.frame_denoiser, parts.motion_encoder):
        module.to(device)
    latents = parts.frozen.encode(frames.flatten(0, 1)).unflatten(0, (batch, n_frames))
    motion = parts.motion_encoder(landmarks.to(device), resolution, gaze, gaze_mask).flatten(0, 1)
    sounds = audio_context(parts.audio_features(audio.to(device), n_frames), cfg.audio_radius).flatten(0, 1)
    maps = parts.motion_maps(motion, latents.shape[-1])
    if cfg.windowed:
        per_clip = [None if maps is None else maps.unflatten(0, (batch, n_frames))]
        z = rerender_windows(parts, latents, motion.unflatten(0, (batch, n_frames)),
                             sounds.unflatten(0, (batch, n_frames)), *per_clip, generator=generator)
        return parts.frozen.decode(z.flatten(0, 1)).view_as(frames)
    portrait = latents[:, 0]
    history = torch.cat([portrait[:, None].expand(-1, n_prev, -1, -1, -1), latents], dim=1)
    previous = torch.stack([history[:, t:t + n_prev].flatten(1, 2) for t in range(n_frames)], 1).flatten(0, 1)
    count = batch * n_frames
    portraits = portrait.repeat_interleave(n_frames, 0)
    no_augmentation = torch.zeros(count, dtype=torch.long, device=device)
    z = torch.randn(portraits.shape, generator=generator).to(device)
    sampler = parts.sampler(cfg.frame_steps)
    for t in sampler.timesteps:
        pred = parts.frame_denoiser(z, t.repeat(count).to(device), portrait=portraits, previous=previous,
                                    prev_noise_step=no_augmentation, motion=motion, audio=sounds, maps=maps)
        z = sampler.step(pred, t, z).prev_sample
    return parts.frozen.decode(z).view_as(frames)


@torch.no_grad()
def generate_motion_video(parts: MotionParts, portrait: torch.Tensor, audio: torch.Tensor, *, fps: float = 25.0,
                          sample_rate: int = 16000, speaker: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, return_latents: bool = False):
    """Portrait [3, R, R] in [-1, 1] + mono speech [N] -> frames [T, 3, R, R] in [-1, 1], T = floor(N * fps / sr).

    ``speaker`` overrides the ConRe embedding of the speech; ``return_latents`` also returns (motion [T, M],
    frame latents [T, C, h, w]).
    """
    n_frames = check_generation_inputs(parts, portrait, audio, fps, sample_rate)
    device = next(parts.frame_denoiser.parameters()).device
    audio = audio.to(device).float()
    features = parts.audio_features(audio[None], n_frames)
    speaker = parts.frozen.speaker(audio[None]) if speaker is None else speaker.to(device).reshape(1, -1)
    motion = sample_motion(parts, features, speaker, n_frames, generator)
    portrait_latent = parts.frozen.encode(portrait[None].to(device))
    latents = render_frames(parts, portrait_latent, motion, features, generator)
    frames = torch.cat([parts.frozen.decode(chunk) for chunk in latents.split(16)])
    if return_latents:
        return frames, motion[0], latents
    return frames
