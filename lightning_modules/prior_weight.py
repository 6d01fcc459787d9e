"""The prior weight a: how much of the statistical face prior a sampled portrait keeps, and its estimates.

The portrait denoiser learns the residual r = z - z_prior from speech alone. Sampling draws r_hat ~ p(r | speech)
and returns, per latent channel c,

    z_hat(a)_c = z_prior_c + (1 - a_c) * r_hat_c,      a in [0, 1]: 0 the raw sample, 1 the mean face exactly.

Why shrinking a *sample* can help (and shrinking a posterior-mean estimate cannot). For one clip with speech s and
one channel, let m = E[r | s] and Sigma = Cov[r | s]; the true residual r and a sample r_hat are independent draws
of the same posterior, so E<r, r_hat> = ||m||^2 and E||r_hat||^2 = ||m||^2 + tr Sigma. Then

    L(a) = E || r - (1 - a) r_hat ||^2 = E||r||^2 - 2 (1 - a) ||m||^2 + (1 - a)^2 (||m||^2 + tr Sigma),

a parabola in (1 - a) with its minimum at 1 - a = ||m||^2 / (||m||^2 + tr Sigma), that is

    a*(s) = tr Sigma_s / (tr Sigma_s + ||m_s||^2)      (per channel: m, Sigma restricted to that channel).

Uncertain speech (a wide posterior) leans on the prior, informative speech on the sample. Averaging the loss over
K samples of the same posterior changes nothing in it (each sample's term has the same expectation), and SAW, which
minimises L over many clips, learns 1 - a = E<r, r_hat> / E||r_hat||^2 over the clips that share its inputs.
If the denoiser were *given* a and trained on r = z - a z_prior, its output would be z_hat - a z_prior and the
portrait would not depend on a; if SAW shrank a posterior-mean estimate (Sigma = 0 for an estimate), a* = 0.
"""
from __future__ import annotations

import torch

from lightning_modules.stagefile import StageFile, StageFileError


def shrink_towards_prior(prior_mean: torch.Tensor, residual: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """z_hat(a) = z_prior + (1 - a) * r_hat: ``residual`` [B, C, H, W], ``a`` [B, C], ``prior_mean`` [C, H, W]."""
    return prior_mean + (1.0 - a.to(residual.dtype))[:, :, None, None] * residual


def as_samples(samples: torch.Tensor) -> torch.Tensor:
    """[B, K, C, H, W]: K residual samples per clip (a single [B, C, H, W] becomes K = 1)."""
    return samples[:, None] if samples.dim() == 4 else samples


def saw_loss(a: torch.Tensor, residual: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """SAW's per-sample loss [B]: the mean over K samples, channels and positions of (r - (1 - a) r_hat_k)^2.

    ``a`` [B, C], the true residual ``residual`` [B, C, H, W], ``samples`` [B, K, C, H, W] (or [B, C, H, W])."""
    samples = as_samples(samples).float()
    shrunk = (1.0 - a.float())[:, None, :, None, None] * samples
    return (residual.float()[:, None] - shrunk).square().flatten(1).mean(1)


def plug_in_prior_weight(samples: torch.Tensor) -> torch.Tensor:
    """a [B, C] from the K >= 2 samples' own spread, no network: tr Sigma / (tr Sigma + ||m||^2) per channel, with
    tr Sigma the unbiased sample variance summed over positions and ||m||^2 = ||mean||^2 - tr Sigma / K (the squared
    norm of the K-sample mean overstates ||m||^2 by tr Sigma / K), clipped at 0."""
    samples = as_samples(samples).float()
    count = samples.shape[1]
    if count < 2:
        raise ValueError(f"the plug-in prior weight needs at least 2 samples per clip, got {count}")
    mean = samples.mean(1)
    trace = samples.var(1, unbiased=True).flatten(2).sum(-1)
    mean_norm = (mean.flatten(2).square().sum(-1) - trace / count).clamp_min(0.0)
    return trace / (trace + mean_norm).clamp_min(1e-12)


def oracle_prior_weight(samples: torch.Tensor, target_residual: torch.Tensor) -> torch.Tensor:
    """a [B, C] fitted to the true residual r = z - z_prior of each clip: the minimiser of
    sum_k ||r - (1 - a) r_hat_k||^2 per channel, 1 - a = sum_k <r, r_hat_k> / sum_k ||r_hat_k||^2, clipped to [0, 1].
    ``samples`` [B, K, C, H, W] or one sample [B, C, H, W]; ``target_residual`` [B, C, H, W]."""
    samples = as_samples(samples).float()
    target = target_residual.float()[:, None]
    dot = (samples * target).flatten(3).sum(-1).sum(1)
    norm = samples.flatten(3).square().sum(-1).sum(1)
    return (1.0 - dot / norm.clamp_min(1e-12)).clamp(0.0, 1.0)


def refuse_earlier_formulation(stage_file: StageFile, earlier_keys: tuple[str, ...], state_prefix: str = "") -> None:
    """A StageFileError naming the file when it was trained with the earlier formulation, where a was given to the
    denoiser (config keys ``earlier_keys``, or tensors under ``state_prefix``)."""
    keys = [k for k in earlier_keys if k in stage_file.config]
    tensors = bool(state_prefix) and any(k.startswith(state_prefix) for k in stage_file.state)
    if not keys and not tensors:
        return
    found = ", ".join([f"stage.{k}" for k in keys] + ([f"{state_prefix}* weights"] if tensors else []))
    raise StageFileError(
        f"{stage_file.path or stage_file.stage}: this {stage_file.stage} file was trained with the earlier "
        f"formulation of the prior weight, where a was given to the denoiser (it holds {found}) and the sampled "
        f"portrait did not depend on a. The denoiser now learns r = z - prior from speech alone and a shrinks a "
        f"sample towards the prior: retrain and re-export portrait_diffusion, then saw, with this seespeaker")
