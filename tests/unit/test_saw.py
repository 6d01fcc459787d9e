"""SAW: a(speech, cues) in (0, 1) per channel, trained on K cached samples per clip of the frozen denoiser."""
from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.nets.speech_degradation import speech_cues
from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.prior_weight import saw_loss
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


def test_weights_start_at_the_constant_and_stay_in_unit_interval(stages):
    module = saw_stage(stages)
    audio = synthetic_batch(3)["audio"]
    a = module.saw(module.denoiser.speech(audio)[1], speech_cues(audio))
    assert a.shape == (3, 4)
    assert torch.allclose(a, torch.full_like(a, 0.5), atol=0.01)  # the portrait stage's stage.prior_weight
    assert torch.all((a > 0) & (a < 1))


def test_loss_is_per_sample_on_cached_samples_drawn_once_per_clip(stages):
    module = saw_stage(stages)
    module.train()
    batch = synthetic_batch(4)
    batch["key"][3] = batch["key"][0]  # a clip seen twice in one batch is drawn once
    drawn = []
    original = module.draw
    module.draw = lambda names, audio: drawn.append(list(names)) or original(names, audio)
    losses = module.compute_losses(batch)
    assert losses["saw"].shape == (4,) and len(drawn) == 1 and len(drawn[0]) == 3 and len(module.cache) == 3
    draws = module.draws(list(batch["key"]), batch["audio"])
    assert draws.samples.shape == (4, 2, 4, 8, 8) and len(drawn) == 1  # cached: nothing drawn again
    assert torch.equal(draws.samples[3], draws.samples[0])
    with torch.no_grad():
        residual = module.denoiser.residual(module.vae.encode(batch["frames"][:, 0]).latent_dist.mode()
                                            * module.scaling_factor)
    a = module.saw(draws.embedding, draws.cues)
    assert torch.allclose(losses["saw"], saw_loss(a, residual, draws.samples), rtol=1e-4, atol=1e-6)
    grads = torch.autograd.grad(losses["saw"].mean(), list(module.saw.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and float(grads[-1].abs().sum()) > 0
    again = module.draw(["train/" + batch["key"][0]], batch["audio"][:1])  # a clip keeps its degradation
    assert torch.allclose(again.embedding[0], draws.embedding[0], atol=1e-5)


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
    draws = module.cache.get([f"val/{k}" for k in synthetic_batch(4, seed=0)["key"]], "cpu")
    with torch.no_grad():
        a = module.saw(draws.embedding, draws.cues)
    metrics = trainer.callback_metrics
    assert float(metrics["val/saw_a_std"]) == pytest.approx(float(a.std(0, unbiased=False).mean()), rel=1e-4)
    assert float(metrics["val/saw_a_std"]) > 0
    assert {"val/saw", "val/saw_constant", "train/saw"} <= set(metrics)


def test_generation_with_saw_uses_its_weights(stages):
    folder, _ = stages
    speech = synthetic_batch(1)["audio"][0].numpy()
    with pytest.raises(StageFileError, match="saw.safetensors.*use_saw=False"):
        portrait_from_speech(speech, 16000, folder, steps=2)
    module = saw_stage(stages)
    with torch.no_grad():
        module.saw.net[-1].bias.fill_(-3.0)  # a ~ 0.05: far from the constant 0.5
    export(module, folder / "saw.safetensors")
    with_saw = portrait_from_speech(speech, 16000, folder, steps=3, seed=1)
    expected = module.generate(torch.from_numpy(speech)[None], use_saw=True, steps=3, seed=1)[0]
    expected = ((expected.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
    assert with_saw.shape == (RESOLUTION, RESOLUTION, 3)
    assert np.abs(with_saw.astype(int) - expected.astype(int)).max() <= 1
    without = portrait_from_speech(speech, 16000, folder, steps=3, seed=1, use_saw=False)
    assert np.abs(with_saw.astype(int) - without.astype(int)).mean() > 0.5
    fixed = portrait_from_speech(speech, 16000, folder, steps=3, seed=1, prior_weight=0.5)  # = the constant
    assert np.abs(fixed.astype(int) - without.astype(int)).max() <= 1


def test_checkpoints_leave_out_the_frozen_networks_and_resume_and_export_without_them(stages, tmp_path):
    from dataclasses import asdict

    from lightning_modules.stagefile import StageFiles
    from trainer.checkpoints import safe_load
    from trainer.export import export_stage

    folder = stages[0]
    batches = [synthetic_batch(4, seed=i) for i in range(3)]

    def trainer(steps: int) -> pl.Trainer:
        return pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)

    module = saw_stage(stages)
    module.run_config = {"stage": asdict(module.cfg)}
    first = trainer(2)
    first.fit(module, DataLoader(batches, batch_size=None))
    first.save_checkpoint(tmp_path / "saw.ckpt")
    saved = safe_load(tmp_path / "saw.ckpt")["state_dict"]
    assert any(k.startswith("saw.") for k in saved)
    assert not any(k.startswith(("vae.", "denoiser.")) for k in saved)

    resumed = saw_stage(stages)  # Lightning loads strictly: the frozen networks must be put back
    trainer(3).fit(resumed, DataLoader(batches, batch_size=None), ckpt_path=str(tmp_path / "saw.ckpt"))
    assert resumed.global_step == 3

    exported = export_stage(tmp_path / "saw.ckpt", tmp_path / "out" / "saw.safetensors")
    sampler = SAWStage.for_inference(StageFiles(folder, {"saw": exported}), use_ema=False)
    expected = saw_stage(stages).denoiser  # the portrait file's
    assert all(torch.equal(p, expected.state_dict()[k]) for k, p in sampler.denoiser.state_dict().items())
    assert torch.equal(sampler.saw.net[-1].weight, module.saw.net[-1].weight)
