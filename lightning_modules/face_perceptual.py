"""The ConRe face-feature distance used as a perceptual loss (the autoencoder's and, optionally, the codebook's).

A module of its own so that a stage using it does not take another stage's module into its training key."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lightning_modules.stagefile import StageFiles


class FacePerceptual:
    """Feature distance in the frozen ConRe face encoder (no downloaded network); kept outside the module tree."""

    def __init__(self, face: nn.Module, resolution: int):
        self.face, self.resolution = face.eval().requires_grad_(False), resolution

    @classmethod
    def from_stages(cls, files: StageFiles, default_resolution: int) -> FacePerceptual:
        """The face encoder of the exported conre stage, at the resolution it was trained on."""
        from lightning_modules.conre import ConReStage
        resolution = files["conre"].trained_resolution() or default_resolution
        return cls(ConReStage.for_inference(files).face, resolution)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        if next(self.face.parameters()).device != images.device:
            self.face.to(images.device)
        x = F.interpolate(images, size=self.resolution, mode="bilinear", antialias=True)
        out, h = [], self.face.stem(x)
        for block in self.face.blocks:
            h = block(h)
            out.append(h)
        return out

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image distance [N]: mean over the encoder's levels of the mean squared feature difference."""
        with torch.no_grad():
            wanted = self.features(target)
        got = self.features(output)
        return torch.stack([(g - w).square().mean(dim=(1, 2, 3)) for g, w in zip(got, wanted, strict=True)]).mean(0)
