"""The autoencoder stage: real AutoencoderKL training, the measured latent scaling factor, its rebuilt VAE."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader

from lightning_modules.autoencoder import AutoencoderStage, build_vae, weights_hash
from lightning_modules.conre import ConReStage
from lightning_modules.stagefile import StageFileError, StageFiles
from tests.unit.stage1_helpers import export, synthetic_batch, tiny_autoencoder, tiny_conre, tiny_data


def fit(module, train_batches, val_batches, steps):
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=len(val_batches), val_check_interval=steps)
    trainer.fit(module, DataLoader(train_batches, batch_size=None), DataLoader(val_batches, batch_size=None))
    return trainer


def test_training_reduces_reconstruction_and_measures_scaling_factor():
    torch.manual_seed(0)
    module = AutoencoderStage(tiny_autoencoder(), tiny_data())
    batch = synthetic_batch(4, seed=1)
    val = [synthetic_batch(4, seed=10 + i) for i in range(3)]  # scale_batches=2: the third must not count
    before = module.compute_losses(batch)
    assert before["l1"].shape == (4,) and before["kl"].shape == (4,)
    fit(module, [batch] * 30, val, steps=30)
    module.eval()
    with torch.no_grad():
        after = module.compute_losses(batch)["l1"].mean()
        latents = torch.cat([module.vae.encode(b["frames"][:, 0]).latent_dist.mode() for b in val[:2]]).double()
    assert after < 0.8 * before["l1"].mean()
    expected = 1.0 / latents.std(unbiased=False)
    assert float(module.scaling_factor) == pytest.approx(float(expected), rel=1e-5)


def test_export_and_rebuilt_vae_keep_scaling_factor_and_hash(tmp_path):
    torch.manual_seed(0)
    module = AutoencoderStage(tiny_autoencoder(), tiny_data())
    module.scaling_factor.fill_(0.37)
    export(module, tmp_path / "autoencoder.safetensors")
    vae, scaling, vae_hash = AutoencoderStage.for_inference(StageFiles(tmp_path))
    assert scaling == pytest.approx(0.37)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())
    images = synthetic_batch(2)["frames"][:, 0]
    with torch.no_grad():
        assert torch.equal(vae.encode(images).latent_dist.mode(), module.vae.encode(images).latent_dist.mode())
    assert AutoencoderStage.for_inference(StageFiles(tmp_path)).vae_hash == vae_hash
    with torch.no_grad():
        module.vae.decoder.conv_out.bias.add_(1e-3)
    export(module, tmp_path / "other" / "autoencoder.safetensors")
    assert AutoencoderStage.for_inference(StageFiles(tmp_path / "other")).vae_hash != vae_hash


def test_pretrained_vae_from_local_folder_and_safetensors(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_autoencoder()
    reference = build_vae(cfg.vae)
    reference.save_pretrained(tmp_path / "vae_folder")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "vae.safetensors"))
    for source in (tmp_path / "vae_folder", tmp_path / "vae.safetensors"):
        cfg.vae.pretrained_path = str(source)
        module = AutoencoderStage(cfg, tiny_data())
        assert weights_hash(module.vae.state_dict()) == weights_hash(reference.state_dict())
    cfg.vae.pretrained_path = str(tmp_path / "no_such_vae")
    with pytest.raises(StageFileError, match="no_such_vae.*never downloads"):
        AutoencoderStage(cfg, tiny_data())


def test_decoder_finetune_freezes_encoder():
    cfg = tiny_autoencoder()
    cfg.finetune = "decoder"
    module = AutoencoderStage(cfg, tiny_data())
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("vae.decoder.", "vae.post_quant_conv.")) for n in trainable)


def test_optional_perceptual_and_adversarial_terms(tmp_path):
    torch.manual_seed(0)
    data = tiny_data()
    export(ConReStage(tiny_conre(), data), tmp_path / "conre.safetensors")
    cfg = tiny_autoencoder()
    cfg.perceptual_weight, cfg.adversarial, cfg.discriminator_channels = 0.5, True, [8, 16]
    module = AutoencoderStage(cfg, data, stages_dir=str(tmp_path))
    batch = synthetic_batch(4)
    losses = module.compute_losses(batch)
    assert set(losses) == {"l1", "kl", "perceptual", "adversarial"} and losses["perceptual"].shape == (4,)
    images = batch["frames"][:, 0]
    assert torch.all(losses["perceptual"] > 0) and torch.allclose(module.perceptual()(images, images), torch.zeros(4))
    discriminator = module.discriminator.net[0].weight.clone()
    decoder = module.vae.decoder.conv_out.weight.clone()
    trainer = fit(module, [batch] * 2, [batch], steps=2)
    assert not torch.equal(module.discriminator.net[0].weight, discriminator)
    assert not torch.equal(module.vae.decoder.conv_out.weight, decoder)
    assert "train/discriminator" in trainer.callback_metrics


@pytest.mark.parametrize("adversarial", [False, True])
def test_the_schedule_ends_at_the_last_batch_with_one_or_two_optimizers(adversarial):
    cfg = tiny_autoencoder()
    cfg.schedule, cfg.warmup_steps, cfg.adversarial, cfg.discriminator_channels = "cosine", 0, adversarial, [8, 16]
    module = AutoencoderStage(cfg, tiny_data(), max_steps=12)  # 12 optimizer steps: 6 batches with the GAN on
    batches = 6 if adversarial else 12
    assert module.lr_factor(batches) == pytest.approx(module.lr_factor(10**6))  # the cosine's floor
    assert module.lr_factor(batches // 2) > module.lr_factor(batches)
