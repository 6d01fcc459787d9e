"""Log-mel features of 16 kHz speech (80 bins, window 400, hop 160), computed in torch on any device."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn


@functools.lru_cache(maxsize=8)
def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, fmin: float = 0.0,
                   fmax: float | None = None) -> torch.Tensor:
    """HTK-style triangular mel filters, [n_mels, n_fft // 2 + 1], on the CPU (cached: a filterbank built under
    ``torch.device("meta")`` or a CUDA default device would otherwise be handed to every later caller)."""
    fmax = fmax or sample_rate / 2

    def hz_to_mel(hz: float) -> float:
        return 2595.0 * math.log10(1.0 + hz / 700.0)

    mels = torch.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2, dtype=torch.float64, device="cpu")
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64, device="cpu")
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (bins[None] - lower) / (centre - lower)
    down = (upper - bins[None]) / (upper - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


class LogMel(nn.Module):
    """audio [B, N] -> log-mel [B, n_mels, frames], frames = N // hop + 1 (centred STFT, Hann window)."""

    def __init__(self, sample_rate: int = 16000, n_mels: int = 80, n_fft: int = 512, win_length: int = 400,
                 hop_length: int = 160):
        super().__init__()
        self.n_fft, self.win_length, self.hop_length = n_fft, win_length, hop_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(audio.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        return torch.log(torch.matmul(self.filters, power).clamp_min(1e-6))
