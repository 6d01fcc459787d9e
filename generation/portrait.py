"""Speech -> portrait: the exported Stage-1 files (conre, autoencoder, portrait_diffusion, saw) put to use.

``PortraitGenerator`` rebuilds the portrait sampler once (``SAWStage.for_inference``, or
``PortraitDiffusionStage.for_inference`` without SAW or with a fixed prior weight) and samples portrait
z_hat(a) = z_prior + (1 - a) * r_hat as float tensors ``[B, 3, R, R]`` in [-1, 1] from 16 kHz speech made ready by
:func:`generation.speech.prepare_speech`; a is SAW's a(speech), the portrait stage's constant ``stage.prior_weight``
(``use_saw=False``) or ``prior_weight`` (ablations).

:func:`load_portrait` and :func:`fit_portrait` read a user's face instead (``seespeaker generate --portrait``): an
image file as RGB, square, resized with antialiased bicubic to the size the motion stage animates.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.images import to_unit
from generation.speech import GenerationError
from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.saw import SAWStage
from lightning_modules.stagefile import StageFileError, StageFiles


class PortraitGenerator:
    """The Stage-1 networks of a stages folder, ready to sample portraits."""

    def __init__(self, stages_dir: str | Path | StageFiles, use_saw: bool = True, device: str = "cpu",
                 prior_weight: float | None = None):
        files = stages_dir if isinstance(stages_dir, StageFiles) else StageFiles(stages_dir, needed_by="generation")
        self.device = torch.device(device)
        if prior_weight is not None and not 0.0 <= prior_weight <= 1.0:
            raise ValueError(f"the prior weight must be in [0, 1], got {prior_weight}")
        self.use_saw, self.prior_weight = use_saw and prior_weight is None, prior_weight
        if self.use_saw and not files.has("saw"):
            raise StageFileError(f"{files.path('saw')} does not exist: train and export the saw stage, or generate "
                                 f"with the constant prior weight (use_saw=False / --no-saw)")
        self.sampler = SAWStage.for_inference(files) if self.use_saw else PortraitDiffusionStage.for_inference(files)
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
    def prior_weights(self, speech: torch.Tensor) -> torch.Tensor:
        """The prior weight a [B, C] the portraits of a batch of speech [B, N] get."""
        return self.sampler.prior_weights(speech.to(self.device), use_saw=self.use_saw,
                                          prior_weight=self.prior_weight)

    @torch.no_grad()
    def generate(self, speech: torch.Tensor, steps: int, guidance: float, seed: int) -> torch.Tensor:
        """One portrait [3, R, R] in [-1, 1] from 16 kHz mono speech [N]."""
        return self.generate_batch(speech[None], steps, guidance, seed)[0]

    @torch.no_grad()
    def generate_batch(self, speech: torch.Tensor, steps: int, guidance: float, seed: int) -> torch.Tensor:
        """Portraits [B, 3, R, R] in [-1, 1] from a batch of 16 kHz mono speech [B, N] of equal length."""
        return self.sampler.sample(speech.to(self.device), steps, guidance, seed, use_saw=self.use_saw,
                                   prior_weight=self.prior_weight).float().cpu()

    @torch.no_grad()
    def mean_face(self) -> torch.Tensor:
        """The statistical face prior alone: the decoded mean latent [3, R, R] in [-1, 1]."""
        return self.sampler.vae.decode(self.denoiser.prior_mean[None].float())[0].float().cpu()


def load_portrait(path: str | Path) -> torch.Tensor:
    """A face image file (PNG, JPEG, ...; any mode, read as RGB) -> [3, S, S] in [-1, 1]; a missing, unreadable or
    non-square file is a GenerationError naming it, what was wrong and what to do."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise GenerationError(f"portrait {path} does not exist; give a square image of a face (a PNG, e.g. "
                              f"256 x 256 px)")
    try:
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise GenerationError(f"portrait {path} is not an image that can be read ({exc}); give a PNG or JPEG of a "
                              f"face") from exc
    height, width = rgb.shape[:2]
    if height != width:
        side = min(height, width)
        raise GenerationError(f"portrait {path} is {width} x {height} px but must be square (the motion stage "
                              f"animates square, aligned face crops); crop it to {side} x {side} px around the face "
                              f"and try again")
    return to_unit(rgb)


def fit_portrait(portrait: torch.Tensor, size: int) -> torch.Tensor:
    """[3, S, S] in [-1, 1] -> [3, size, size], resized with antialiased bicubic (unchanged when already there)."""
    if portrait.shape[-1] == size:
        return portrait
    resized = F.interpolate(portrait[None].float(), size=(size, size), mode="bicubic", antialias=True)
    return resized[0].clamp(-1, 1)
