"""Host values shared between the ranks over the CPU (gloo) group that the signal agreement uses
(``trainer.signals``): counts and generator states travel without a device synchronisation. Every rank calls these
at the same point (the group is made on first use); in a single process they return the local value."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def cpu_group(trainer: pl.Trainer):
    """The signal agreement's CPU group (None: the default group, gloo already)."""
    from trainer.signals import FlagSignalConnector

    return FlagSignalConnector._cpu_group(trainer._signal_connector)


def sum_over_ranks(trainer: pl.Trainer, values: list[int]) -> list[int]:
    """The element-wise sum of ``values`` over every rank."""
    counts = torch.tensor(values, dtype=torch.int64)
    if distributed():
        dist.all_reduce(counts, group=cpu_group(trainer))
    return [int(v) for v in counts.tolist()]


def gather_over_ranks(trainer: pl.Trainer, value: Any) -> dict[int, Any]:
    """``{global rank: value}`` of every rank (a picklable value)."""
    if not distributed():
        return {0: value}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value, group=cpu_group(trainer))
    return dict(enumerate(gathered))
