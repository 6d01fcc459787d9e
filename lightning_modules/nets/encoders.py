"""The speech and face encoders that ConRe aligns and later stages condition on."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import SeespeakerError
from lightning_modules.nets.audio_features import LogMel

MIN_SPEECH_SAMPLES = 8000  # 0.5 s at 16 kHz


class SpeechTooShortError(SeespeakerError, ValueError):
    """Speech shorter than the encoder's receptive minimum."""


class ConvBlock1d(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv = nn.Conv1d(channels_in, channels_out, 5, stride=stride, padding=2)
        self.norm = nn.GroupNorm(min(8, channels_out), channels_out)
        self.skip = (nn.Conv1d(channels_in, channels_out, 1, stride=stride)
                     if (stride != 1 or channels_in != channels_out) else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x))) + self.skip(x)


class SpeechEncoder(nn.Module):
    """16 kHz speech [B, N] -> identity embedding [B, embed_dim] (attention pooling over time).

    ``tokens(audio)`` gives the per-frame sequence [B, T', width] for cross-attention conditioning.
    ``external_dim`` > 0 adds a learned projection of a frozen pre-trained speaker embedding (e.g. resemblyzer's).
    """

    def __init__(self, embed_dim: int = 512, width: int = 256, layers: int = 4, n_mels: int = 80,
                 external_dim: int = 0):
        super().__init__()
        self.embed_dim, self.width = embed_dim, width
        self.mel = LogMel(n_mels=n_mels)
        self.stem = nn.Conv1d(n_mels, width, 3, padding=1)
        self.blocks = nn.Sequential(*[ConvBlock1d(width, width, 2 if i % 2 == 0 else 1) for i in range(layers)])
        self.attn = nn.Linear(width, 1)
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.external = nn.Linear(external_dim, embed_dim) if external_dim > 0 else None

    def tokens(self, audio: torch.Tensor) -> torch.Tensor:
        if audio.shape[-1] < MIN_SPEECH_SAMPLES:
            raise SpeechTooShortError(
                f"speech of {audio.shape[-1]} samples is shorter than the encoder's minimum of "
                f"{MIN_SPEECH_SAMPLES} samples (0.5 s at 16 kHz); give at least half a second of speech"
            )
        mel = self.mel(audio)
        mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        return self.blocks(self.stem(mel)).transpose(1, 2)

    def forward(self, audio: torch.Tensor, external: torch.Tensor | None = None) -> torch.Tensor:
        seq = self.tokens(audio)
        weights = torch.softmax(self.attn(seq).squeeze(-1), dim=1)
        pooled = torch.einsum("bt,btc->bc", weights, seq)
        emb = self.head(pooled)
        if self.external is not None and external is not None:
            emb = emb + self.external(external)
        return emb


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(min(8, channels_out), channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(min(8, channels_out), channels_out)
        self.skip = (nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)
                     if stride != 1 or channels_in != channels_out else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.norm1(self.conv1(x)))
        return F.silu(self.norm2(self.conv2(y)) + self.skip(x))


class FaceEncoder(nn.Module):
    """Aligned face [B, 3, R, R] in [-1, 1] -> identity embedding [B, embed_dim] (a small ResNet)."""

    def __init__(self, embed_dim: int = 512, channels: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        self.embed_dim = embed_dim
        self.stem = nn.Sequential(nn.Conv2d(3, channels[0], 3, 1, 1), nn.SiLU())
        blocks, previous = [], channels[0]
        for width in channels:
            blocks.append(BasicBlock(previous, width, 2))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(previous, embed_dim)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(face))
        return self.head(x.mean(dim=(2, 3)))
