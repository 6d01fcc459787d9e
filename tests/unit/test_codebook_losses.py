"""The codebook stage's perceptual and adversarial losses: feature matching in the discriminator (the default
perceptual network, never a judge), per-sample and differentiable into the generator, the discriminator trained
beside it, the hinge term's warm-up, and the schedule over generator steps."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_losses import adversarial_ramp, feature_matching
from tests.unit.codebook_helpers import make_batch, tiny_cfg, tiny_stage

GAN = dict(adversarial=True, perceptual_weight=1.0, adversarial_weight=0.1)


@pytest.mark.parametrize("phase", ["vqgan", "render"])
def test_feature_matching_and_hinge_losses_are_per_sample_and_reach_the_generator(phase):
    module = tiny_stage(phase, detail_gate=phase == "render", **GAN)
    assert module.cfg.perceptual_network == "feature_matching" and CodebookStage.requires(module.cfg) == ()
    losses = module.compute_losses(make_batch(3))
    assert set(losses) == {"l1", "perceptual", "adversarial"} | ({"codebook", "commitment"} if phase == "vqgan"
                                                                  else set())
    for name in ("perceptual", "adversarial"):
        assert losses[name].shape == (3,) and torch.isfinite(losses[name]).all(), name
    assert (losses["perceptual"] > 0).all() and (losses["adversarial"] != 0).all()
    generator = module.decoder if phase == "vqgan" else module.fusion
    for name in ("perceptual", "adversarial"):
        module.zero_grad()
        losses = module.compute_losses(make_batch(3))
        losses[name].sum().backward()
        assert sum(p.grad.abs().sum() for p in generator.parameters() if p.grad is not None) > 0, name


def test_feature_matching_is_the_l1_of_the_discriminators_features_with_the_real_side_detached():
    module = tiny_stage("render", **GAN)
    disc = module.discriminator
    fake = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    real = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    generated, logits = disc.features_and_logits(fake)
    assert torch.equal(logits, disc(fake)) and len(generated) == len(module.cfg.discriminator_channels)
    real_features, _ = disc.features_and_logits(real)
    value = feature_matching(generated, real_features)
    expected = torch.stack([(g - r).abs().mean(dim=(1, 2, 3)) for g, r in zip(generated, real_features,
                                                                              strict=True)]).mean(0)
    assert value.shape == (2,) and torch.allclose(value, expected)
    value.sum().backward()
    assert fake.grad.abs().sum() > 0 and real.grad is None  # the real frames' features are a fixed target
    assert torch.equal(feature_matching(real_features, real_features), torch.zeros(2))


def gan_fit(module: CodebookStage, batches: int, root) -> pl.Trainer:
    data = [make_batch(2, seed=i) for i in range(batches)]
    trainer = pl.Trainer(max_steps=2 * batches, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    trainer.fit(module, DataLoader(data, batch_size=None))
    return trainer


def test_the_discriminator_trains_beside_the_generator_and_the_hinge_weight_warms_up(tmp_path):
    module = tiny_stage("render", adversarial_warmup=4, schedule="cosine", warmup_steps=0, **GAN)
    module.max_steps = 6  # trainer.max_steps: 3 batches of two optimizer steps
    disc_before = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    fusion_before = {k: v.clone() for k, v in module.fusion.state_dict().items()}
    weights, seen = [], []
    original = module.reduce_losses
    module.reduce_losses = lambda losses, valid: (weights.append(module.loss_weights["adversarial"]),
                                                  seen.append(float(losses["perceptual"].detach().mean())),
                                                  original(losses, valid))[-1]
    trainer = gan_fit(module, 3, tmp_path)
    assert trainer.global_step == 6 and module.generator_step == 3  # Lightning counts both optimizers' steps
    assert weights == pytest.approx([0.0, 0.025, 0.05])  # 0.1 x (0, 1, 2) / 4 generator steps
    assert all(value > 0 for value in seen)
    assert any(not torch.equal(v, module.discriminator.state_dict()[k]) for k, v in disc_before.items())
    assert any(not torch.equal(v, module.fusion.state_dict()[k]) for k, v in fusion_before.items())
    assert module.lr_factor(3) == pytest.approx(0.1)  # the cosine ends at the last batch, not half way


def test_warmup_ramp_and_config_errors():
    assert [adversarial_ramp(s, 4) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0] and adversarial_ramp(0, 0) == 1.0
    errors = " ".join(tiny_cfg(perceptual_weight=1.0, adversarial=False).validate())
    assert "stage.adversarial=true" in errors  # feature matching has no discriminator to match without the GAN
    assert tiny_cfg(perceptual_weight=1.0, adversarial=False, perceptual_network="conre").validate() == []
    assert "stage.perceptual_network must be one of" in " ".join(tiny_cfg(perceptual_network="vgg").validate())
    assert "adversarial_warmup" in " ".join(tiny_cfg(adversarial_warmup=-1).validate())


def test_the_conre_option_uses_the_seeds_face_encoder_and_requires_conre(tmp_path):
    from lightning_modules.face_perceptual import FacePerceptual
    from tests.unit.stage1_helpers import make_stage1_inputs

    make_stage1_inputs(tmp_path, resolution=32)
    module = tiny_stage("render", stages_dir=str(tmp_path), perceptual_weight=1.0, perceptual_network="conre")
    assert CodebookStage.requires(module.cfg) == ("conre",)
    losses = module.compute_losses(make_batch(2))
    assert isinstance(module.perceptual(), FacePerceptual) and losses["perceptual"].shape == (2,)
    assert (losses["perceptual"] > 0).all() and "adversarial" not in losses
