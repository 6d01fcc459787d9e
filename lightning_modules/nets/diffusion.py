"""DDPM training and DDIM / DPM-Solver sampling helpers around diffusers' schedulers."""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

SAMPLERS = ("ddim", "dpm_solver")
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")

# (noisy latents, timestep tensor [B]) -> the network's prediction in the scheduler's parameterisation
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_train_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str) -> DDPMScheduler:
    """The DDPM noise schedule used in training (SD's ``scaled_linear`` betas by default)."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type, clip_sample=False)


def build_sampler(name: str, train_scheduler: DDPMScheduler):
    """A DDIM or DPM-Solver++ (2nd order) sampler sharing the training schedule."""
    config = dict(train_scheduler.config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing")
    if name == "dpm_solver":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       final_sigmas_type="zero", timestep_spacing="trailing")
    raise ValueError(f"sampler {name!r} is not one of {SAMPLERS}")


def snr_at(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR = alpha_bar_t / (1 - alpha_bar_t) per sample, float32 on the timesteps' device."""
    alpha_bar = scheduler.alphas_cumprod.to(timesteps.device, torch.float64)[timesteps]
    return (alpha_bar / (1.0 - alpha_bar)).float()


def training_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the network regresses: the noise (epsilon) or the velocity v = sqrt(ab) eps - sqrt(1-ab) x0."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"prediction_type {kind!r} is not epsilon or v_prediction")


def per_sample_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every axis but the batch: [B, ...] -> [B] (float32)."""
    return (prediction.float() - target.float()).square().flatten(1).mean(dim=1)


def guided(denoiser: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], guidance: float,
           both: Denoiser | None = None) -> Denoiser:
    """Classifier-free guidance: ``uncond + guidance * (cond - uncond)``; ``guidance == 1`` runs one pass.

    ``denoiser(x, t, conditioned)`` runs the network with (True) or without (False) the speech condition;
    ``both(x, t)``, when given, runs the two as one batch of 2B (the conditioned first): one network call a step.
    """
    if guidance == 1.0:
        return lambda x, t: denoiser(x, t, True)

    def run(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if both is not None:
            cond, uncond = both(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
        else:
            cond, uncond = denoiser(x, t, True), denoiser(x, t, False)
        return uncond + guidance * (cond - uncond)

    return run


@torch.no_grad()
def sample_latents(denoiser: Denoiser, sampler, shape: tuple[int, ...], steps: int,
                   generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Run the sampler from pure noise for ``steps`` steps and return the final sample (float32)."""
    if steps < 1:
        raise ValueError(f"sampling needs at least one step, got {steps}")
    sampler.set_timesteps(steps, device=device)
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * sampler.init_noise_sigma
    for t in sampler.timesteps:
        model_in = sampler.scale_model_input(x, t)
        t_batch = torch.full((shape[0],), int(t), device=device, dtype=torch.long)
        out = denoiser(model_in, t_batch)
        x = sampler.step(out, t, x).prev_sample
    return x.float()
