"""The codebook stage's image losses (vqgan and render phases): L1, the perceptual term and the adversarial term.

The perceptual network is never one of the results tables' judges (not the Inception trunk that FID and KID use,
not the ConRe encoders that judge identity). ``stage.perceptual_network``:

- ``feature_matching`` (the default): the discriminator's own features (pix2pixHD's feature matching): per image,
  the mean over the discriminator's levels of the mean L1 distance between its activations for the generated and
  the real high-resolution frame, the real side detached. The discriminator trains beside the generator
  (``stage.adversarial=true`` is required), so the features follow what separates real from generated faces.
- ``conre``: the frozen ConRe face encoder of the seed's conre stage (:class:`FacePerceptual`). It is the network
  family that judges identity in this project's tables, so a table of a renderer trained with it must say so.

The generator's hinge term ``-D(output)`` is weighted by ``adversarial_weight`` times a linear warm-up from 0 over
``adversarial_warmup`` generator steps (the discriminator trains from the first step).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from lightning_modules.codebook_parts import CodebookConfig
from lightning_modules.nets.vq import PatchDiscriminator


def feature_matching(generated: list[torch.Tensor], real: list[torch.Tensor]) -> torch.Tensor:
    """Per-image [N] mean over levels of the mean |generated - real| activation (real detached)."""
    if len(generated) != len(real) or not generated:
        raise ValueError(f"feature matching needs the same non-empty list of levels, got {len(generated)} and "
                         f"{len(real)}")
    return torch.stack([(g - r.detach()).abs().mean(dim=(1, 2, 3)) for g, r in zip(generated, real, strict=True)]
                       ).mean(0)


def adversarial_ramp(generator_step: int, warmup: int) -> float:
    """The share of ``adversarial_weight`` at a generator step: linear from 0 to 1 over ``warmup`` steps."""
    return 1.0 if warmup <= 0 else min(1.0, generator_step / warmup)


def image_losses(output: torch.Tensor, target: torch.Tensor, cfg: CodebookConfig,
                 discriminator: PatchDiscriminator | None, conre_perceptual: Callable[[], Callable],
                 generator_step: int) -> tuple[dict[str, torch.Tensor], float]:
    """({name: per-image loss [N]}, the adversarial term's weight now) of generated frames ``output`` against
    ``target`` [N, 3, H, H]: L1; ``perceptual`` when ``perceptual_weight`` > 0; ``adversarial`` with the GAN on.
    ``conre_perceptual()`` gives the ConRe distance (only called for ``perceptual_network: conre``)."""
    losses = {"l1": (output - target).abs().mean(dim=(1, 2, 3))}
    generated = None
    if discriminator is not None:
        generated, logits = discriminator.features_and_logits(output)
        losses["adversarial"] = -logits.mean(dim=(1, 2, 3))
    if cfg.perceptual_weight > 0:
        if cfg.perceptual_network == "conre":
            losses["perceptual"] = conre_perceptual()(output, target)
        elif discriminator is None:
            raise ValueError("stage.perceptual_network=feature_matching needs the discriminator: set "
                             "stage.adversarial=true")
        else:
            with torch.no_grad():
                real, _ = discriminator.features_and_logits(target)
            losses["perceptual"] = feature_matching(generated, real)
    return losses, cfg.adversarial_weight * adversarial_ramp(generator_step, cfg.adversarial_warmup)
