"""SAW: a(speech) in (0, 1) per channel, gradients through the per-sample diffusion loss, frozen or joint."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.portrait_diffusion import PortraitDiffusionStage, fitted_prior_weights
from lightning_modules.saw import SAWStage
from lightning_modules.stagefile import StageFileError
from tests.unit.stage1_helpers import (
    RESOLUTION,
    export,
    make_stage1_inputs,
    portrait_from_speech,
    synthetic_batch,
    tiny_portrait,
    tiny_saw,
)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saw")
    info = make_stage1_inputs(folder)
    torch.manual_seed(0)
    export(PortraitDiffusionStage(tiny_portrait(), info["data"], str(folder)),
           folder / "portrait_diffusion.safetensors")
    return folder, info


def saw_stage(stages, **overrides) -> SAWStage:
    torch.manual_seed(0)
    return SAWStage(tiny_saw(**overrides), stages[1]["data"], str(stages[0]))


def test_weights_start_at_the_dataset_value_and_stay_in_unit_interval(stages):
    module = saw_stage(stages)
    _, a = module.prior_weights(synthetic_batch(3)["audio"])
    assert a.shape == (3, 4)
    assert torch.allclose(a, torch.full_like(a, 0.8), atol=0.05)
    assert torch.all((a > 0) & (a < 1))


def test_per_sample_gradient_depends_on_the_weight(stages):
    module = saw_stage(stages)
    batch = synthetic_batch(1)
    with torch.no_grad():
        latents = module.vae.encode(batch["frames"][:, 0]).latent_dist.mode().repeat(2, 1, 1, 1) * module.scaling_factor
        context, _ = module.denoiser.speech(batch["audio"])
    a = torch.tensor([[0.3, 0.3, 0.3, 0.3], [0.9, 0.9, 0.9, 0.9]], requires_grad=True)
    noise = torch.randn(1, *latents.shape[1:]).repeat(2, 1, 1, 1)
    losses = module.losses_for(latents, context.repeat(2, 1, 1), a, noise, torch.tensor([400, 400]))
    assert losses["diffusion"].shape == (2,) and not torch.isclose(losses["diffusion"][0], losses["diffusion"][1])
    (grad,) = torch.autograd.grad(losses["diffusion"].sum(), a)
    assert grad.abs().min() > 0
    assert not torch.allclose(grad[0], grad[1], rtol=1e-3)
    (reg_grad,) = torch.autograd.grad(losses["saw_reg"].sum(), a)
    assert torch.allclose(reg_grad, 2 * (a.detach() - 0.8) / 4)


def test_saw_regresses_the_weight_fitted_to_the_speakers_face(stages, tmp_path):
    folder, info = stages
    for name in ("conre.safetensors", "autoencoder.safetensors", "face_prior.safetensors"):
        shutil.copy(folder / name, tmp_path / name)
    torch.manual_seed(0)
    export(PortraitDiffusionStage(tiny_portrait(prior_weight_mode="fitted"), info["data"], str(tmp_path)),
           tmp_path / "portrait_diffusion.safetensors")
    module = SAWStage(tiny_saw(), info["data"], str(tmp_path))
    assert module.fitted and not saw_stage(stages).fitted  # the fixture's portrait stage drew a (the default)
    batch = synthetic_batch(2)
    with torch.no_grad():
        latents = module.vae.encode(batch["frames"][:, 0]).latent_dist.mode() * module.scaling_factor
        context, _ = module.denoiser.speech(batch["audio"])
    target = fitted_prior_weights(latents, module.denoiser.prior_mean, 0.8)
    a = (target + torch.tensor([[0.1], [-0.2]])).clamp(0.01, 0.99).requires_grad_(True)
    losses = module.losses_for(latents, context, a)
    assert torch.allclose(losses["saw_fit"], (a - target).square().mean(1))
    (grad,) = torch.autograd.grad(losses["saw_fit"].sum(), a)
    assert torch.all(grad * (a - target).detach() >= 0)  # descent moves each a towards its face's fitted a


def fit(module, steps: int = 3):
    batches = [synthetic_batch(4, seed=i) for i in range(steps)]
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1, val_check_interval=steps)
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))
    return trainer


def test_frozen_denoiser_trains_only_saw_and_reports_spread(stages):
    module = saw_stage(stages)
    denoiser = {n: p.clone() for n, p in module.denoiser.named_parameters()}
    saw_before = module.saw.net[-1].weight.clone()
    trainer = fit(module)
    assert all(torch.equal(p, denoiser[n]) for n, p in module.denoiser.named_parameters())
    assert not torch.equal(module.saw.net[-1].weight, saw_before)
    with torch.no_grad():
        _, a = module.prior_weights(synthetic_batch(4, seed=0)["audio"])
    assert float(trainer.callback_metrics["val/saw_a_std"]) == pytest.approx(float(a.std(0, unbiased=False).mean()),
                                                                             rel=1e-4)
    assert float(trainer.callback_metrics["val/saw_a_std"]) > 0


def test_joint_training_updates_the_denoiser_but_not_the_speech_encoder(stages):
    module = saw_stage(stages, joint=True)
    unet_before = module.denoiser.unet.conv_out.weight.clone()
    speech_before = {n: p.clone() for n, p in module.denoiser.speech_encoder.named_parameters()}
    fit(module, steps=2)
    assert not torch.equal(module.denoiser.unet.conv_out.weight, unet_before)
    assert all(torch.equal(p, speech_before[n]) for n, p in module.denoiser.speech_encoder.named_parameters())


def test_generation_with_saw_uses_its_weights(stages):
    folder, _ = stages
    speech = synthetic_batch(1)["audio"][0].numpy()
    with pytest.raises(StageFileError, match="saw.safetensors.*use_saw=False"):
        portrait_from_speech(speech, 16000, folder, steps=2)
    module = saw_stage(stages)
    with torch.no_grad():
        module.saw.net[-1].bias.fill_(-3.0)  # a ~ 0.05: far from the dataset-level 0.8
    export(module, folder / "saw.safetensors")
    with_saw = portrait_from_speech(speech, 16000, folder, steps=3, seed=1)
    expected = module.generate(torch.from_numpy(speech)[None], use_saw=True, steps=3, seed=1)[0]
    expected = ((expected.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    assert with_saw.shape == (RESOLUTION, RESOLUTION, 3)
    assert np.abs(with_saw.astype(int) - expected.astype(int)).max() <= 1
    without = portrait_from_speech(speech, 16000, folder, steps=3, seed=1, use_saw=False)
    assert np.abs(with_saw.astype(int) - without.astype(int)).mean() > 0.5


@pytest.mark.parametrize("joint", [False, True])
def test_checkpoints_leave_out_the_frozen_networks_and_resume_and_export_without_them(stages, tmp_path, joint):
    from dataclasses import asdict

    from lightning_modules.saw import SAWStage
    from lightning_modules.stagefile import StageFiles
    from trainer.checkpoints import safe_load
    from trainer.export import export_stage

    folder = stages[0]
    batches = [synthetic_batch(4, seed=i) for i in range(3)]

    def trainer(steps: int) -> pl.Trainer:
        return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)

    module = saw_stage(stages, joint=joint)
    module.run_config = {"stage": asdict(module.cfg)}
    first = trainer(2)
    first.fit(module, DataLoader(batches, batch_size=None))
    first.save_checkpoint(tmp_path / "saw.ckpt")
    saved = safe_load(tmp_path / "saw.ckpt")["state_dict"]
    assert any(k.startswith("saw.") for k in saved) and not any(k.startswith("vae.") for k in saved)
    assert any(k.startswith("denoiser.") for k in saved) == joint  # a jointly trained denoiser is kept

    resumed = saw_stage(stages, joint=joint)  # Lightning loads strictly: the frozen networks must be put back
    trainer(3).fit(resumed, DataLoader(batches, batch_size=None), ckpt_path=str(tmp_path / "saw.ckpt"))
    assert resumed.global_step == 3

    exported = export_stage(tmp_path / "saw.ckpt", tmp_path / "out" / "saw.safetensors")
    sampler = SAWStage.for_inference(StageFiles(folder, {"saw": exported}), use_ema=False)
    denoiser, saw = sampler.denoiser, sampler.saw
    expected = module.denoiser if joint else saw_stage(stages).denoiser  # as trained, or the portrait file's
    assert all(torch.equal(p, expected.state_dict()[k]) for k, p in denoiser.state_dict().items())
    assert torch.equal(saw.net[-1].weight, module.saw.net[-1].weight)
