"""Batched MFCC identical to ``python_speech_features.mfcc(signal, 16000)`` with its defaults.

SyncNet's audio input is this MFCC of 16-bit integer samples (not rescaled to [-1, 1]): window 400
samples, step 160, rectangular window, pre-emphasis 0.97, NFFT 512, power spectrum |rfft|^2 / 512,
26 HTK mel filters over 0-8 kHz, log (zeros replaced by machine epsilon), orthonormal DCT-II,
13 coefficients, sinusoidal lifter 22, coefficient 0 replaced by the log frame energy.
The framing is python_speech_features' own: ``1 + ceil((n - 400) / 160)`` frames (one frame when
``n <= 400``), the last frame zero-padded. 100 MFCC frames per second, 4 per video frame at 25 fps.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

SAMPLE_RATE = 16000
WINDOW_SAMPLES = 400
STEP_SAMPLES = 160
NFFT = 512
N_FILTERS = 26
N_CEPSTRA = 13
LIFTER = 22
PREEMPHASIS = 0.97
LOG_FLOOR = float(np.finfo(np.float64).eps)
INT16_SCALE = 32768.0


def num_mfcc_frames(n_samples: int) -> int:
    """Number of MFCC frames python_speech_features produces for ``n_samples`` samples."""
    if n_samples <= WINDOW_SAMPLES:
        return 1
    return 1 + int(math.ceil((n_samples - WINDOW_SAMPLES) / STEP_SAMPLES))


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595 * np.log10(1 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700 * (10 ** (mel / 2595.0) - 1)


@functools.lru_cache(maxsize=4)
def mel_filterbank(n_filters: int = N_FILTERS, nfft: int = NFFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular HTK mel filters over 0 .. sample_rate/2 as python_speech_features builds them:
    float64 array [n_filters, nfft // 2 + 1]."""
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_filters + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mel_points) / sample_rate)
    bank = np.zeros((n_filters, nfft // 2 + 1))
    for j in range(n_filters):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            bank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(mid, hi):
            bank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    bank.setflags(write=False)
    return bank


@functools.lru_cache(maxsize=4)
def dct_matrix(n_inputs: int = N_FILTERS, n_outputs: int = N_CEPSTRA) -> np.ndarray:
    """Orthonormal DCT-II as a float64 matrix [n_inputs, n_outputs] (``x @ D`` = scipy's dct(norm='ortho'))."""
    n = np.arange(n_inputs)[:, None]
    k = np.arange(n_outputs)[None, :]
    matrix = np.cos(np.pi * k * (2 * n + 1) / (2 * n_inputs)) * np.sqrt(2.0 / n_inputs)
    matrix[:, 0] /= np.sqrt(2.0)
    matrix.setflags(write=False)
    return matrix


def lifter_weights(n_cepstra: int = N_CEPSTRA, lifter: int = LIFTER) -> np.ndarray:
    """Sinusoidal lifter ``1 + (L / 2) sin(pi n / L)`` for the cepstral coefficients."""
    n = np.arange(n_cepstra)
    return 1 + (lifter / 2.0) * np.sin(np.pi * n / lifter)


def float_audio_to_int16_scale(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Float audio in [-1, 1] (as soundfile reads 16-bit PCM) back to int16-valued samples,
    ``round(x * 32768)`` clipped to the int16 range, as a float tensor."""
    audio = torch.as_tensor(audio)
    return torch.clamp(torch.round(audio.to(torch.float64) * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)


def frame_signal(signal: torch.Tensor) -> torch.Tensor:
    """Frames [..., F, 400] of a signal [..., N], zero-padding the last frame like python_speech_features."""
    n_samples = signal.shape[-1]
    n_frames = num_mfcc_frames(n_samples)
    padded_length = (n_frames - 1) * STEP_SAMPLES + WINDOW_SAMPLES
    padded = torch.nn.functional.pad(signal, (0, padded_length - n_samples))
    return padded.unfold(-1, WINDOW_SAMPLES, STEP_SAMPLES)


def mfcc(signal: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """MFCC [..., F, 13] of int16-valued audio [..., N] at 16 kHz (any leading batch shape).

    Equals ``python_speech_features.mfcc(signal, 16000)`` row for row. ``dtype`` is the computation
    precision (float64 reproduces the reference; float32 is enough for training losses).
    """
    signal = torch.as_tensor(signal)
    if signal.shape[-1] == 0:
        raise ValueError("mfcc got an empty signal; give at least one audio sample")
    signal = signal.to(dtype)
    emphasised = torch.cat([signal[..., :1], signal[..., 1:] - PREEMPHASIS * signal[..., :-1]], dim=-1)
    frames = frame_signal(emphasised)
    power = torch.fft.rfft(frames, n=NFFT, dim=-1).abs().square() / NFFT
    energy = power.sum(dim=-1)
    energy = torch.where(energy == 0, torch.full_like(energy, LOG_FLOOR), energy)
    bank = torch.tensor(mel_filterbank(), dtype=dtype, device=signal.device)
    energies = power @ bank.T
    energies = torch.where(energies == 0, torch.full_like(energies, LOG_FLOOR), energies)
    cepstra = torch.log(energies) @ torch.tensor(dct_matrix(), dtype=dtype, device=signal.device)
    cepstra = cepstra * torch.tensor(lifter_weights(), dtype=dtype, device=signal.device)
    return torch.cat([torch.log(energy).unsqueeze(-1), cepstra[..., 1:]], dim=-1)


def syncnet_mfcc(signal: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """MFCC in SyncNet's layout [..., 13, F] (coefficients by time), for windows ``[..., 4i : 4i + 20]``."""
    return mfcc(signal, dtype=dtype).transpose(-1, -2)
