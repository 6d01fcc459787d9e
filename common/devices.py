"""Host-to-device copies that do not stall the host."""
from __future__ import annotations

import torch


def upload(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``. A CPU tensor bound for CUDA is pinned and copied asynchronously, so a training step
    that draws its random numbers on the host (to be the same on every device) does not wait for the GPU."""
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
