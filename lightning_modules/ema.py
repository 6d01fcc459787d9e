"""Exponential moving average of a module's trainable weights, kept in fp32 off the module."""
from __future__ import annotations

import torch
from torch import nn


class EMAWeights:
    """fp32 shadow copies of the trainable parameters; ``swap_in``/``swap_out`` for sampling with them."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().float().clone() for name, p in module.named_parameters() if p.requires_grad
        }
        self.num_updates = 0
        self._backup: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        # Warm-up as in sgm/timm: short runs are not dominated by the initial weights.
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for name, p in module.named_parameters():
            shadow = self.shadow.get(name)
            if shadow is not None:
                if shadow.device != p.device:
                    shadow = self.shadow[name] = shadow.to(p.device)
                shadow.lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def swap_in(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                self._backup[name] = p.detach().clone()
                p.copy_(self.shadow[name].to(p.dtype))

    @torch.no_grad()
    def swap_out(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self._backup:
                p.copy_(self._backup.pop(name))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates,
                "shadow": {k: v.detach().cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.num_updates = state["num_updates"]
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k] = v.to(self.shadow[k].device, torch.float32)
