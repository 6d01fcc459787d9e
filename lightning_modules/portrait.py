"""Speech -> portrait: the exported Stage-1 files (conre, autoencoder, portrait_diffusion, saw) put to use.

``generate_portrait`` takes a waveform at any sample rate (mono or multi-channel), resamples it to 16 kHz
(with a log line), refuses silent or too-short speech with a message saying what to give instead, and returns
an ``R x R x 3`` uint8 RGB portrait.
"""
from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import torch
from scipy.signal import resample_poly

from lightning_modules.autoencoder import decode_latents, load_vae
from lightning_modules.nets.encoders import MIN_SPEECH_SAMPLES, SpeechTooShortError
from lightning_modules.portrait_diffusion import ResidualDiffusion, dataset_prior_weights, load_portrait_denoiser
from lightning_modules.saw import load_saw
from lightning_modules.stagefile import StageFileError, load_stage_file

log = logging.getLogger("seespeaker.portrait")

SAMPLE_RATE = 16000
SILENCE_PEAK = 1e-3  # peak amplitude below which speech counts as silent
MAX_SECONDS = 20.0  # longer speech is cut to its first MAX_SECONDS for the condition


class SilentSpeechError(ValueError):
    """Speech without signal: there is no voice to infer a face from."""


def to_mono(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """[N], [N, C] (soundfile's layout) or [C, N] with C <= 8 -> float32 mono [N]."""
    audio = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
    audio = audio.astype(np.float32)
    if audio.ndim == 1:
        return audio
    if audio.ndim != 2:
        raise ValueError(f"speech must be [samples] or [samples, channels], got shape {audio.shape}")
    channel_axis = 1 if audio.shape[1] <= 8 and audio.shape[1] < audio.shape[0] else 0
    return audio.mean(axis=channel_axis)


def prepare_speech(audio: np.ndarray | torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mono 16 kHz float32 speech [N]; resampled with a log line; silent / too short -> clear errors."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    mono = to_mono(audio)
    if sample_rate != SAMPLE_RATE:
        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        mono = resample_poly(mono, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
        log.info("resampled speech from %d Hz to %d Hz (%d samples)", sample_rate, SAMPLE_RATE, len(mono))
    if len(mono) < MIN_SPEECH_SAMPLES:
        raise SpeechTooShortError(
            f"speech is {len(mono) / SAMPLE_RATE:.2f} s long, the speech encoder needs at least "
            f"{MIN_SPEECH_SAMPLES / SAMPLE_RATE:.2f} s; give a longer recording")
    peak = float(np.abs(mono).max())
    if not np.isfinite(peak):
        raise ValueError("speech holds NaN or infinite samples; check the audio file")
    if peak < SILENCE_PEAK:
        raise SilentSpeechError(
            f"speech is silent (peak amplitude {peak:.2e} < {SILENCE_PEAK:g}); give a recording with a voice in it")
    return torch.from_numpy(np.ascontiguousarray(mono[: int(MAX_SECONDS * SAMPLE_RATE)]))


class PortraitGenerator:
    """The Stage-1 networks loaded from a stages folder, ready to sample portraits."""

    def __init__(self, stages_dir: str | Path, use_saw: bool = True, device: str = "cpu"):
        stages = Path(stages_dir)
        self.device = torch.device(device)
        conre = load_stage_file(stages / "conre.safetensors", expect_stage="conre")
        portrait = load_stage_file(stages / "portrait_diffusion.safetensors", expect_stage="portrait_diffusion")
        self.vae, self.scaling_factor, _ = load_vae(stages / "autoencoder.safetensors")
        self.portrait_cfg = portrait.config
        self.saw = None
        if use_saw:
            saw_path = stages / "saw.safetensors"
            if not saw_path.is_file():
                raise StageFileError(f"{saw_path} does not exist: train and export the saw stage, or generate "
                                     f"with the dataset-level prior weight (use_saw=False / --no-saw)")
            self.denoiser, self.saw = load_saw(load_stage_file(saw_path, expect_stage="saw"), portrait, conre)
            self.saw.to(self.device)
        else:
            self.denoiser = load_portrait_denoiser(portrait, conre)
        self.denoiser.to(self.device)
        self.vae.to(self.device)
        self.diffusion = ResidualDiffusion(portrait.config)

    @torch.no_grad()
    def generate(self, speech: torch.Tensor, steps: int, guidance: float, seed: int) -> np.ndarray:
        """One portrait (uint8 R x R x 3) from 16 kHz mono speech [N]."""
        return self.generate_batch(speech[None], steps, guidance, seed)[0]

    @torch.no_grad()
    def generate_batch(self, speech: torch.Tensor, steps: int, guidance: float, seed: int) -> np.ndarray:
        """Portraits (uint8 B x R x R x 3) from a batch of 16 kHz mono speech [B, N] of equal length."""
        audio = speech.to(self.device)
        context, embedding = self.denoiser.speech(audio)
        if self.saw is not None:
            a = self.saw(embedding)
        else:
            a = dataset_prior_weights(self.portrait_cfg, len(audio), self.denoiser.prior_mean.shape[0], self.device)
        generator = torch.Generator().manual_seed(seed)
        latents = self.diffusion.sample(self.denoiser, context, a, steps, guidance, generator)
        return self.to_images(latents)

    @torch.no_grad()
    def mean_face(self) -> np.ndarray:
        """The statistical face prior alone: the decoded mean latent (uint8 R x R x 3)."""
        return self.to_images(self.denoiser.prior_mean[None].float())[0]

    def to_images(self, latents: torch.Tensor) -> np.ndarray:
        images = decode_latents(self.vae, latents, self.scaling_factor)
        return ((images.permute(0, 2, 3, 1).float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


@functools.lru_cache(maxsize=2)
def _cached_generator(stages_dir: str, use_saw: bool, device: str, stamp: tuple) -> PortraitGenerator:
    return PortraitGenerator(stages_dir, use_saw, device)


def _stamp(stages_dir: Path) -> tuple:
    """Modification times of the stage files, so that a re-exported stage is reloaded."""
    names = ("conre", "autoencoder", "portrait_diffusion", "saw")
    return tuple((stages_dir / f"{n}.safetensors").stat().st_mtime_ns if (stages_dir / f"{n}.safetensors").exists()
                 else 0 for n in names)


def generate_portrait(audio: np.ndarray | torch.Tensor, sample_rate: int, stages_dir: str | Path, steps: int = 50,
                      guidance: float = 3.0, seed: int = 0, use_saw: bool = True, device: str = "cpu") -> np.ndarray:
    """A portrait (uint8 ``R x R x 3`` RGB) of the speaker of ``audio`` from the exported Stage-1 files."""
    speech = prepare_speech(audio, sample_rate)
    stages = Path(stages_dir)
    generator = _cached_generator(str(stages.resolve()), use_saw, device, _stamp(stages))
    return generator.generate(speech, steps, guidance, seed)
