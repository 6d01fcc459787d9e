"""Portrait diffusion: the residual target (or z without a prior), the prior weight shrinking a sample, min-SNR, CFG,
training, generation."""
from __future__ import annotations

import logging
import shutil
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
from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.prior import FacePriorError, compute_face_prior
from lightning_modules.registry import FACE_PRIOR
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


def latents_of(stages, batch) -> torch.Tensor:
    vae, scaling, _ = AutoencoderStage.for_inference(StageFiles(stages[0]))
    with torch.no_grad():
        return encode_latents(vae, batch["frames"][:, 0], scaling)


def test_training_target_is_the_latent_minus_the_prior_and_a_is_not_an_input(stages):
    module = stage(stages)
    batch = synthetic_batch(4)
    torch.manual_seed(3)
    example = module.training_example(batch)
    z, prior = latents_of(stages, batch), module.model.prior_mean
    assert float(prior.abs().max()) > 0 and set(example) == {"x0", "context", "latents"}
    assert torch.allclose(example["x0"], z - prior, atol=1e-6)
    assert module.model.unet.class_embedding is None  # the denoiser is told nothing of a
    torch.manual_seed(4)
    losses = module.compute_losses(batch)["diffusion"]
    torch.manual_seed(4)
    again = module.training_example(batch)
    assert losses.shape == (4,)
    assert torch.allclose(losses, module.diffusion.loss(module.model, again["x0"], again["context"]))


def test_no_prior_trains_on_z_and_needs_no_prior_file(stages, tmp_path):
    for name in ("conre.safetensors", "autoencoder.safetensors"):
        shutil.copy(stages[0] / name, tmp_path / name)
    cfg = tiny_portrait(prior="none")
    assert FACE_PRIOR not in PortraitDiffusionStage.requires(cfg)
    assert FACE_PRIOR in PortraitDiffusionStage.requires(tiny_portrait())
    module = PortraitDiffusionStage(cfg, stages[1]["data"], str(tmp_path))  # no face_prior.safetensors there
    batch = synthetic_batch(3)
    assert torch.equal(module.model.prior_mean, torch.zeros_like(module.model.prior_mean))
    assert torch.allclose(module.training_example(batch)["x0"], latents_of(stages, batch), atol=1e-6)
    export(module, tmp_path / "portrait_diffusion.safetensors")
    sampler = PortraitDiffusionStage.for_inference(StageFiles(tmp_path))
    audio = batch["audio"][:1]
    draw = sampler.sample(audio, steps=2, guidance=1.0, parts=True)
    assert torch.equal(draw.prior_weight, torch.zeros(1, 4)) and torch.equal(draw.latents, draw.residuals)
    with pytest.raises(ValueError, match="no face prior.*prior weight 0.5"):
        sampler.sample(audio, steps=2, guidance=1.0, prior_weight=0.5)


def test_speech_is_degraded_in_training_only(stages):
    batch = synthetic_batch(2)
    for degrade in (True, False):
        module = stage(stages, cond_dropout=0.0, speech_degradation=degrade, speech_snr_db=[0.0])
        module.train()
        trained = module.training_example(batch)["context"]
        module.eval()
        evaluated = module.training_example(batch)["context"]
        assert torch.allclose(evaluated, module.model.speech(batch["audio"])[0])
        assert torch.allclose(trained, evaluated) != degrade


def test_the_portrait_depends_on_the_prior_weight(stages):
    """Same noise, different a: different latents, whose distance to the prior falls as a rises; a = 1 is the
    prior exactly and a = 0 the raw sample."""
    sampler = stage(stages).sampler()
    audio = synthetic_batch(2)["audio"]
    draws = [sampler.sample(audio, steps=3, guidance=2.0, seed=5, prior_weight=a, parts=True)
             for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    prior = sampler.denoiser.prior_mean
    assert all(torch.equal(d.residuals, draws[0].residuals) for d in draws)  # the same r_hat whatever a is
    assert torch.allclose(draws[0].latents, prior + draws[0].residuals)
    distance = torch.stack([(d.latents - prior).flatten(1).norm(dim=1) for d in draws])
    assert torch.all(distance[1:] < distance[:-1]) and float(distance[0].min()) > 0
    assert torch.equal(draws[-1].latents, prior.expand_as(draws[-1].latents))
    assert (draws[0].images - draws[2].images).abs().mean() > 1e-3


class ZeroResidualUNet(nn.Module):
    """Predicts, in the scheduler's parameterisation, the output that means 'the residual is zero'."""

    def __init__(self, scheduler):
        super().__init__()
        self.alphas_cumprod = scheduler.alphas_cumprod
        self.prediction_type = scheduler.config.prediction_type

    def forward(self, x, t, encoder_hidden_states=None):
        ab = self.alphas_cumprod[t].float()[:, None, None, None]
        eps = x / (1 - ab).sqrt()
        out = eps if self.prediction_type == "epsilon" else ab.sqrt() * eps
        return SimpleNamespace(sample=out)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_sampling_draws_the_residual_and_the_prior_is_added_back(stages, prediction_type, sampler):
    module = stage(stages, prediction_type=prediction_type, sampler=sampler)
    module.model.unet = ZeroResidualUNet(module.diffusion.scheduler)
    audio = synthetic_batch(2)["audio"]
    context, _ = module.model.speech(audio)
    assert module.diffusion.sample(module.model, context, steps=5, guidance=2.0).abs().max() < 1e-5
    for a in (0.0, 0.3, None):  # r_hat = 0: every a gives the prior
        draw = module.sampler().sample(audio, steps=5, guidance=2.0, prior_weight=a, parts=True)
        assert torch.allclose(draw.latents, module.model.prior_mean.expand_as(draw.latents), atol=1e-5)
    assert torch.equal(draw.prior_weight, torch.full((2, 4), 0.5))  # the constant stage.prior_weight


class ZeroOutputUNet(nn.Module):
    def forward(self, x, t, encoder_hidden_states=None):
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
    loss = module.diffusion.loss(module.model, x0, torch.zeros(3, 1, 32), noise, t)
    scheduler = module.diffusion.scheduler
    target = noise if prediction_type == "epsilon" else scheduler.get_velocity(x0, noise, t)
    snr_t = snr_at(scheduler, t)
    weight = torch.minimum(snr_t, torch.tensor(5.0)) / (snr_t if prediction_type == "epsilon" else snr_t + 1)
    assert torch.allclose(loss, weight * target.square().flatten(1).mean(1), rtol=1e-5)


def test_classifier_free_guidance_and_condition_dropout(stages):
    run = guided(lambda x, t, cond: x + (1.0 if cond else 0.0), guidance=3.0)
    assert torch.allclose(run(torch.zeros(2), None), torch.full((2,), 3.0))
    module = stage(stages)
    model = module.model.eval()
    context, _ = model.speech(synthetic_batch(2)["audio"])
    null = model.unconditional(2, context)
    x, t = torch.randn(2, *model.prior_mean.shape), torch.tensor([500, 20])
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        two_passes = guided(lambda x, t, cond: model(x, t, context if cond else null), 3.0)(x, t)
        one_pass = guided(None, 3.0, both=lambda x, t: model(x, t, torch.cat([context, null])))(x, t)
    assert len(calls) == 3 and torch.allclose(one_pass, two_passes, atol=1e-4)  # one call a step, same guidance
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
