"""Portrait diffusion: the residual target, prior re-added at sampling, min-SNR, CFG, training, generation."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from generation.speech import SilentSpeechError
from lightning_modules.autoencoder import AutoencoderStage, encode_latents
from lightning_modules.nets.diffusion import guided, snr_at
from lightning_modules.nets.encoders import SpeechTooShortError
from lightning_modules.nets.loss_weighting import MinSNRWeighting, build_loss_weighting
from lightning_modules.portrait_diffusion import PortraitDiffusionStage, fitted_prior_weights
from lightning_modules.prior import FacePriorError, compute_face_prior
from lightning_modules.stagefile import StageFiles
from tests.unit.stage1_helpers import (
    RESOLUTION,
    export,
    make_stage1_inputs,
    portrait_from_speech,
    synthetic_batch,
    tiny_portrait,
)
from trainer.callbacks import EMACallback


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stage1")
    info = make_stage1_inputs(folder)
    return folder, info


def stage(stages, **overrides) -> PortraitDiffusionStage:
    folder, info = stages
    torch.manual_seed(0)
    return PortraitDiffusionStage(tiny_portrait(**overrides), info["data"], str(folder))


@pytest.mark.parametrize("mode", ["fitted", "drawn"])
def test_training_target_is_latent_minus_weighted_prior(stages, mode):
    module = stage(stages, prior_weight_mode=mode)
    batch = synthetic_batch(4)
    torch.manual_seed(3)
    example = module.training_example(batch)
    vae, scaling, _ = AutoencoderStage.for_inference(StageFiles(stages[0]))
    with torch.no_grad():
        z = encode_latents(vae, batch["frames"][:, 0], scaling)
    prior = module.model.prior_mean
    a = example["a"]
    assert a.shape == (4, 4) and float(a.std()) > 0
    if mode == "drawn":
        assert torch.all((a >= 0.6 - 1e-6) & (a <= 1.0 + 1e-6))  # prior_weight 0.8 +- spread 0.2
    else:  # each face's own weight: the same face always gets the same a, other faces another
        assert torch.allclose(a, fitted_prior_weights(z, prior, 0.8), atol=1e-6)
        assert torch.equal(module.training_example(batch)["a"], a)
        assert not torch.allclose(a[0], a[1], atol=1e-3)
    assert torch.allclose(example["x0"], z - a[:, :, None, None] * prior, atol=1e-6)
    assert not torch.allclose(example["x0"], z - prior, atol=1e-3)
    torch.manual_seed(4)
    losses = module.compute_losses(batch)["diffusion"]
    torch.manual_seed(4)
    again = module.training_example(batch)
    assert losses.shape == (4,)
    assert torch.allclose(losses, module.diffusion.loss(module.model, again["x0"], again["context"], again["a"]))


def test_fitted_weight_is_the_prior_coefficient_times_the_dataset_weight():
    prior = torch.randn(4, 8, 8)
    scales = torch.tensor([[1.0, 0.5, 1.1, 2.0]])
    latents = scales[:, :, None, None] * prior + 1e-3 * torch.randn(1, 4, 8, 8)
    a = fitted_prior_weights(latents, prior, 0.8)
    assert torch.allclose(a, torch.tensor([[0.8, 0.4, 0.88, 1.0]]), atol=1e-2)  # 2.0 * 0.8 is clipped to 1


class ZeroResidualUNet(nn.Module):
    """Predicts, in the scheduler's parameterisation, the output that means 'the residual is zero'."""

    def __init__(self, scheduler):
        super().__init__()
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.prediction_type = scheduler.config.prediction_type

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None):
        ab = self.alphas_cumprod[t].float()[:, None, None, None]
        eps = x / (1 - ab).sqrt()
        out = eps if self.prediction_type == "epsilon" else ab.sqrt() * eps
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_sampling_adds_the_weighted_prior_back(stages, prediction_type, sampler):
    module = stage(stages, prediction_type=prediction_type, sampler=sampler)
    module.model.unet = ZeroResidualUNet(module.diffusion.scheduler)
    context, _ = module.model.speech(synthetic_batch(2)["audio"])
    a = torch.tensor([[0.3, 0.5, 0.7, 0.9], [1.0, 0.0, 0.2, 0.4]])
    z = module.diffusion.sample(module.model, context, a, steps=5, guidance=2.0)
    assert torch.allclose(z, a[:, :, None, None] * module.model.prior_mean, atol=1e-5)


class ZeroOutputUNet(nn.Module):
    def forward(self, x, t, encoder_hidden_states=None, class_labels=None):
        return SimpleNamespace(sample=torch.zeros_like(x))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_min_snr_weights_follow_the_formula_in_the_loss(stages, prediction_type):
    snr = torch.tensor([0.01, 1.0, 5.0, 20.0, 400.0])
    expected = torch.minimum(snr, torch.tensor(5.0)) / (snr if prediction_type == "epsilon" else snr + 1)
    assert torch.allclose(MinSNRWeighting(5.0, prediction_type)(snr), expected)
    assert torch.equal(build_loss_weighting("unit", prediction_type)(snr), torch.ones(5))
    module = stage(stages, prediction_type=prediction_type)
    module.model.unet = ZeroOutputUNet()
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([10, 500, 990])
    loss = module.diffusion.loss(module.model, x0, torch.zeros(3, 1, 32), torch.full((3, 4), 0.8), noise, t)
    scheduler = module.diffusion.scheduler
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    snr_t = snr_at(scheduler, t)
    weight = torch.minimum(snr_t, torch.tensor(5.0)) / (snr_t if prediction_type == "epsilon" else snr_t + 1)
    assert torch.allclose(loss, weight * target.square().flatten(1).mean(1), rtol=1e-5)


def test_classifier_free_guidance_and_condition_dropout(stages):
    run = guided(lambda x, t, cond: x + (1.0 if cond else 0.0), guidance=3.0)
    assert torch.allclose(run(torch.zeros(2), None), torch.full((2,), 3.0))
    module = stage(stages)
    context, _ = module.model.speech(synthetic_batch(3)["audio"])
    dropped = module.model.drop_condition(context, torch.tensor([True, False, True]))
    assert torch.equal(dropped[1], context[1])
    assert torch.equal(dropped[0], module.model.null_context[0].expand_as(context[0]))


def test_trains_with_lightning_and_logs_a_portrait_grid(stages):
    module = stage(stages)
    frozen = {n: p.clone() for n, p in module.named_parameters() if n.startswith(("vae.", "model.speech_encoder."))}
    trainable_before = module.model.unet.conv_out.weight.clone()
    batches = [synthetic_batch(4, seed=i) for i in range(4)]
    trainer = pl.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=1, val_check_interval=4, callbacks=[EMACallback(0.9)])
    trainer.fit(module, DataLoader(batches, batch_size=None), DataLoader(batches[:1], batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["val/loss"])
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    assert not torch.equal(module.model.unet.conv_out.weight, trainable_before)
    media = module.log_media(batches[0])["portraits"]
    assert media.image.shape == (2 * RESOLUTION, 2 * RESOLUTION, 3) and media.image.dtype == np.uint8
    real = ((batches[0]["frames"][0, 0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    assert np.array_equal(media.image[:RESOLUTION, :RESOLUTION], real)


def test_prior_from_another_vae_or_shape_is_refused(stages, tmp_path):
    folder, info = stages
    compute_face_prior([torch.zeros(2, 4, 8, 8)], "0123456789abcdef").save(tmp_path / "other.safetensors")
    with pytest.raises(FacePriorError, match=f"0123456789abcdef.*{info['vae_hash']}"):
        stage(stages, prior_path=str(tmp_path / "other.safetensors"))
    compute_face_prior([torch.zeros(2, 4, 4, 4)], info["vae_hash"]).save(tmp_path / "small.safetensors")
    with pytest.raises(FacePriorError, match=r"\(4, 4, 4\).*\(4, 8, 8\)"):
        stage(stages, prior_path=str(tmp_path / "small.safetensors"))


@pytest.fixture(scope="module")
def exported(stages):
    module = stage(stages)
    export(module, stages[0] / "portrait_diffusion.safetensors")
    return stages[0], module


def test_generation_rejects_short_and_silent_speech(exported):
    folder, _ = exported
    with pytest.raises(SpeechTooShortError, match="0.25 s.*at least 0.50 s"):
        portrait_from_speech(np.random.default_rng(0).uniform(-0.5, 0.5, 4000), 16000, folder, steps=2, use_saw=False)
    with pytest.raises(SilentSpeechError, match="silent"):
        portrait_from_speech(np.zeros(16000, np.float32), 16000, folder, steps=2, use_saw=False)


def test_generation_resamples_stereo_441k_and_matches_the_stage(exported, caplog):
    folder, module = exported
    speech = synthetic_batch(1)["audio"][0].numpy()
    t = np.arange(int(len(speech) / 16000 * 44100)) / 44100
    stereo = np.stack([np.interp(t, np.arange(len(speech)) / 16000, speech)] * 2, axis=1).astype(np.float32)
    with caplog.at_level(logging.INFO, logger="seespeaker.generate"):
        image = portrait_from_speech(stereo, 44100, folder, steps=3, guidance=2.0, seed=7, use_saw=False)
    assert "resampled speech from 44100 Hz to 16000 Hz" in caplog.text
    assert image.shape == (RESOLUTION, RESOLUTION, 3) and image.dtype == np.uint8
    direct = portrait_from_speech(speech, 16000, folder, steps=3, guidance=2.0, seed=7, use_saw=False)
    expected = module.generate(torch.from_numpy(speech)[None], steps=3, guidance=2.0, seed=7)[0]
    expected = ((expected.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    assert np.abs(direct.astype(int) - expected.astype(int)).max() <= 1
    assert np.abs(image.astype(int) - direct.astype(int)).mean() < 40
