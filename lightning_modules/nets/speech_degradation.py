"""Degraded speech, so that short and noisy speech is in distribution, and the reliability cues read from speech.

One degradation function serves every stage that encodes speech in training (ConRe, the portrait denoiser, SAW;
each with its own ``stage.speech_*`` knobs, off in validation and evaluation): each sample keeps a random length of
its speech (uniform in ``speech_seconds``, the rest of the window zero-filled, as a short recording padded to the
batch's length) and gets additive noise at an SNR drawn from ``speech_snr_db`` (``null``: clean), measured over the
speech kept: white Gaussian noise, or speech-shaped noise (Gaussian with the clip's own long-term spectrum).

:func:`speech_cues` reads what SAW needs to know about how reliable speech is: the seconds of speech present (20 ms
frames that are not zero-filled) and an SNR estimate from the frame energies (the 90th over the 10th percentile of
the present frames' energies, in dB: the loud frames hold speech and noise, the quiet ones mostly noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from common.devices import upload
from lightning_modules.nets.encoders import MIN_SPEECH_SAMPLES

NOISE_TYPES = ("white", "speech_shaped")
SAMPLE_RATE = 16000
FRAMES_PER_SECOND = 50  # 20 ms frames for the energy cues
ABSENT_FRAME_POWER = 1e-10  # mean square at or below which a frame counts as zero-filled (no speech present)
SNR_CUE_RANGE_DB = (0.0, 60.0)


@dataclass
class SpeechDegradationConfig:
    """The training-time speech degradation of a stage (its ``stage.speech_*`` keys); mixed into a stage config."""

    speech_degradation: bool = field(default=True, metadata={"help": "train on degraded speech: a random length in "
                                     "speech_seconds (the rest of the window zero-filled) and additive noise at an "
                                     "SNR from speech_snr_db; never in validation or evaluation"})
    speech_seconds: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata={
        "help": "[min, max] seconds of speech kept, uniform (at least 0.5 s, the speech encoder's minimum)"})
    speech_snr_db: list[float | None] = field(default_factory=lambda: [None, 20.0, 10.0, 0.0], metadata={
        "help": "SNRs in dB, one drawn uniformly per sample (null: clean)"})
    speech_noise: str = field(default="white", metadata={
        "help": "white (Gaussian) | speech_shaped (Gaussian with the clip's own long-term spectrum)",
        "choices": NOISE_TYPES})

    def degradation_errors(self) -> list[str]:
        errors = []
        seconds = list(self.speech_seconds)
        if len(seconds) != 2 or not MIN_SPEECH_SAMPLES / SAMPLE_RATE <= seconds[0] <= seconds[1]:
            errors.append(f"stage.speech_seconds must be [min, max] with 0.5 <= min <= max (the speech encoder needs "
                          f"0.5 s), got {seconds}")
        if not self.speech_snr_db:
            errors.append("stage.speech_snr_db needs at least one value (null: clean)")
        return errors

    def degrade(self, audio: torch.Tensor, generator: torch.Generator | None = None) -> DegradedSpeech:
        return degrade_speech(audio, self.speech_seconds, self.speech_snr_db, self.speech_noise,
                              generator=generator)

    def training_speech(self, audio: torch.Tensor, training: bool) -> torch.Tensor:
        """The speech a training step encodes: degraded when training with ``speech_degradation``, else as is."""
        return self.degrade(audio).audio if training and self.speech_degradation else audio


class DegradedSpeech(NamedTuple):
    audio: torch.Tensor  # [B, N]: the kept speech plus noise, zero after it
    kept: torch.Tensor  # [B] samples of speech kept
    snr_db: torch.Tensor  # [B] the SNR of the added noise (nan: clean)


def degrade_speech(audio: torch.Tensor, seconds: list[float], snr_db: list[float | None], noise: str = "white",
                   sample_rate: int = SAMPLE_RATE, generator: torch.Generator | None = None) -> DegradedSpeech:
    """Keep a random length of each row of ``audio`` [B, N] and add noise at a random SNR (see the module doc).

    The noise is scaled so that the SNR over the kept speech is exactly the drawn one; its random numbers come from
    ``generator`` (a CPU generator; the global one when None)."""
    batch, length = audio.shape
    low, high = seconds
    draw = torch.rand(batch, generator=generator)
    kept = ((low + (high - low) * draw) * sample_rate).round().long()
    kept = kept.clamp(min=min(length, MIN_SPEECH_SAMPLES * sample_rate // SAMPLE_RATE), max=length)
    choice = torch.randint(len(snr_db), (batch,), generator=generator)
    snr = torch.tensor([math.nan if v is None else float(v) for v in snr_db])[choice]
    mask = upload(torch.arange(length)[None] < kept[:, None], audio.device)
    clean = audio * mask
    power = clean.float().square().sum(1) / upload(kept, audio.device)
    unit = unit_noise(clean, mask, noise, generator)
    scale = torch.where(torch.isnan(snr), torch.zeros_like(snr), 10.0 ** (-snr.nan_to_num(0.0) / 20.0))
    noisy = clean + (upload(scale, audio.device) * power.sqrt())[:, None] * unit.to(audio.dtype)
    return DegradedSpeech(noisy, kept, snr)


def unit_noise(clean: torch.Tensor, mask: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Noise [B, N] of mean power 1 over the kept samples (``mask``), zero elsewhere."""
    gaussian = upload(torch.randn(clean.shape, generator=generator), clean.device)
    if kind == "speech_shaped":
        spectrum = torch.fft.rfft(clean.float(), dim=-1).abs()
        phase = upload(torch.rand(spectrum.shape, generator=generator), clean.device) * (2 * math.pi)
        gaussian = torch.fft.irfft(spectrum * torch.exp(1j * phase), n=clean.shape[-1], dim=-1)
    elif kind != "white":
        raise ValueError(f"speech noise {kind!r} is not one of {NOISE_TYPES}")
    noise = gaussian * mask
    power = noise.square().sum(1) / mask.sum(1).clamp_min(1)
    return noise / power.sqrt().clamp_min(1e-12)[:, None]


def speech_cues(audio: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """[B, 2]: seconds of speech present and the SNR estimate in dB (both 0 for speech with no frame present)."""
    frame = sample_rate // FRAMES_PER_SECOND
    usable = audio.shape[-1] - audio.shape[-1] % frame
    power = audio[:, :usable].float().reshape(len(audio), -1, frame).square().mean(-1)
    present = power > ABSENT_FRAME_POWER
    duration = present.sum(1) * (frame / sample_rate)
    energies = power.masked_fill(~present, math.nan)
    loud = torch.nanquantile(energies, 0.9, dim=1)
    quiet = torch.nanquantile(energies, 0.1, dim=1)
    snr = (10.0 * torch.log10(loud / quiet.clamp_min(ABSENT_FRAME_POWER))).nan_to_num(0.0).clamp(*SNR_CUE_RANGE_DB)
    return torch.stack([duration.float(), snr], dim=1)
