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
        self._updates = torch.zeros((), dtype=torch.float64)  # updates applied (skipped steps not counted)
        self._backup: dict[str, torch.Tensor] = {}
        self._cache: tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def num_updates(self) -> int:
        """Updates applied so far (a host read of the device counter)."""
        return int(self._updates)

    @torch.no_grad()
    def update(self, module: nn.Module, skipped: torch.Tensor | None = None) -> None:
        """Move the shadows towards the weights; a step whose ``skipped`` (device tensor, 1.0 or 0.0) is set leaves
        the shadows and the update count as they were, decided on the device."""
        shadows, params = self._pairs(module)
        if not shadows:
            return
        device = params[0].device
        taken = torch.ones((), dtype=torch.float64, device=device)
        if skipped is not None:
            taken = taken - skipped.to(device, torch.float64)
        self._updates = self._updates.to(device) + taken
        # Warm-up as in sgm/timm: short runs are not dominated by the initial weights.
        decay = torch.clamp((1 + self._updates) / (10 + self._updates), max=self.decay)
        rate = ((1.0 - decay) * taken).to(torch.float32)
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], [rate] * len(shadows))

    def _pairs(self, module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(shadows, parameters) in order, found once per module (shadows moved to their parameter's device)."""
        if self._cache is None or self._cache[0] is not module:
            shadows, params = [], []
            for name, p in module.named_parameters():
                if name in self.shadow:
                    if self.shadow[name].device != p.device:
                        self.shadow[name] = self.shadow[name].to(p.device)
                    shadows.append(self.shadow[name])
                    params.append(p)
            self._cache = (module, shadows, params)
        return self._cache[1], self._cache[2]

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
        self._cache = None  # the shadows are replaced below
        self.decay = state["decay"]
        self._updates = torch.tensor(float(state["num_updates"]), dtype=torch.float64, device=self._updates.device)
        for k, v in state["shadow"].items():
            if k in self.shadow:
                self.shadow[k] = v.to(self.shadow[k].device, torch.float32)
