"""Speech -> portrait: the exported Stage-1 files (conre, autoencoder, portrait_diffusion, saw) put to use.

``PortraitGenerator`` rebuilds the portrait sampler once (``SAWStage.for_inference``, or
``PortraitDiffusionStage.for_inference`` without SAW) and samples portraits as float tensors ``[B, 3, R, R]`` in
[-1, 1] from 16 kHz speech made ready by :func:`generation.speech.prepare_speech`.
"""
from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.saw import SAWStage
from lightning_modules.stagefile import StageFileError, StageFiles


class PortraitGenerator:
    """The Stage-1 networks of a stages folder, ready to sample portraits."""

    def __init__(self, stages_dir: str | Path | StageFiles, use_saw: bool = True, device: str = "cpu"):
        files = stages_dir if isinstance(stages_dir, StageFiles) else StageFiles(stages_dir, needed_by="generation")
        self.device = torch.device(device)
        if use_saw and not files.has("saw"):
            raise StageFileError(f"{files.path('saw')} does not exist: train and export the saw stage, or generate "
                                 f"with the dataset-level prior weight (use_saw=False / --no-saw)")
        self.sampler = SAWStage.for_inference(files) if use_saw else PortraitDiffusionStage.for_inference(files)
        self.sampler.denoiser.to(self.device)
        self.sampler.vae.vae.to(self.device)
        if self.sampler.saw is not None:
            self.sampler.saw.to(self.device)

    @property
    def denoiser(self):
        return self.sampler.denoiser

    @property
    def saw(self):
        return self.sampler.saw

    @torch.no_grad()
    def generate(self, speech: torch.Tensor, steps: int, guidance: float, seed: int) -> torch.Tensor:
        """One portrait [3, R, R] in [-1, 1] from 16 kHz mono speech [N]."""
        return self.generate_batch(speech[None], steps, guidance, seed)[0]

    @torch.no_grad()
    def generate_batch(self, speech: torch.Tensor, steps: int, guidance: float, seed: int) -> torch.Tensor:
        """Portraits [B, 3, R, R] in [-1, 1] from a batch of 16 kHz mono speech [B, N] of equal length."""
        return self.sampler.sample(speech.to(self.device), steps, guidance, seed).float().cpu()

    @torch.no_grad()
    def mean_face(self) -> torch.Tensor:
        """The statistical face prior alone: the decoded mean latent [3, R, R] in [-1, 1]."""
        return self.sampler.vae.decode(self.denoiser.prior_mean[None].float())[0].float().cpu()
