"""How the generation pipeline runs its networks: bf16 autocast when asked, float32 weights whatever the stage file
holds, and the time of each step."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from generation.speech import GenerationError
from lightning_modules.stagefile import StageFile

PRECISIONS = ("auto", "fp32", "bf16")


def autocast(precision: str, device: torch.device):
    """bf16 autocast for ``bf16`` (and ``auto`` on CUDA), else a no-op: the networks keep fp32 weights, the
    matrix products and convolutions run in bf16, the samplers' arithmetic in fp32."""
    if precision not in PRECISIONS:
        raise GenerationError(f"--precision {precision}: choose one of {', '.join(PRECISIONS)}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


class Autocast(torch.nn.Module):
    """A network whose forward runs under :func:`autocast` and returns fp32; its attributes are the network's."""

    def __init__(self, network: torch.nn.Module, precision: str):
        super().__init__()
        self.network, self.precision = network, precision

    def forward(self, *args, **kwargs) -> torch.Tensor:
        device = next(self.network.parameters()).device
        with autocast(self.precision, device):
            return self.network(*args, **kwargs).float()

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.network, name)


def timed_chunks(chunks: Iterator[torch.Tensor], timings: dict[str, float], name: str) -> Iterator[torch.Tensor]:
    """``chunks`` with the time spent making each one charged to ``timings[name]``."""
    while True:
        with timed(timings, name):
            chunk = next(chunks, None)
        if chunk is None:
            return
        yield chunk


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # kernels run asynchronously: charge them to the step that launched them
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def as_float32(stage: StageFile) -> StageFile:
    """Half-precision weights (the shipped fp16 demo stages) as float32, in place: every loader then builds
    float32 networks, whatever it does with the tensors."""
    for weights in (stage.state, stage.ema):
        for name, tensor in weights.items():
            if tensor.dtype in (torch.float16, torch.bfloat16):
                weights[name] = tensor.float()
    return stage
