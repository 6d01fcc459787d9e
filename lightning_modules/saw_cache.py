"""SAW's per-clip cache: K residual samples of the frozen portrait denoiser and the SAW inputs they were drawn for.

SAW never backpropagates through the sampler. The first time a clip is seen (per split: training and validation
apart), its speech is degraded once (training only, with a generator seeded from the clip key, so a clip keeps its
degradation), encoded, and K residual samples are drawn for it under no_grad with ``stage.cache_steps`` sampler steps;
the entry (speech embedding [E], reliability cues [2], samples [K, C, H, W] in float16) is kept in memory, on the
CPU, on each rank, until ``stage.cache_clips`` entries are held (then the oldest is dropped and redrawn when its clip
comes back). Nothing is written to disk: a resumed run redraws its entries as clips come back.
"""
from __future__ import annotations

import zlib
from collections import OrderedDict
from typing import NamedTuple

import torch


class CachedDraws(NamedTuple):
    embedding: torch.Tensor  # [B, E] the speech embedding the samples were drawn from
    cues: torch.Tensor  # [B, 2] seconds of speech present, SNR estimate (dB)
    samples: torch.Tensor  # [B, K, C, H, W] residual samples r_hat ~ p(r | speech)


def clip_seed(name: str) -> int:
    """A stable seed of a clip's cache name."""
    return zlib.crc32(name.encode())


class SampleCache:
    """Cached draws by clip name, oldest first out past ``max_clips`` (0: no limit)."""

    def __init__(self, max_clips: int = 0):
        self.max_clips = max_clips
        self.entries: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def missing(self, names: list[str]) -> list[int]:
        """Indices of the first occurrence of each name that has no entry."""
        seen: set[str] = set()
        todo = []
        for i, name in enumerate(names):
            if name not in self.entries and name not in seen:
                seen.add(name)
                todo.append(i)
        return todo

    def put(self, names: list[str], draws: CachedDraws) -> None:
        for i, name in enumerate(names):
            self.entries[name] = (draws.embedding[i].detach().float().cpu(), draws.cues[i].detach().float().cpu(),
                                  draws.samples[i].detach().half().cpu())
            self.entries.move_to_end(name)
        while self.max_clips and len(self.entries) > self.max_clips:
            self.entries.popitem(last=False)

    def get(self, names: list[str], device: torch.device | str) -> CachedDraws:
        rows = [self.entries[name] for name in names]
        return CachedDraws(*(torch.stack(column).to(device).float() for column in zip(*rows, strict=True)))
