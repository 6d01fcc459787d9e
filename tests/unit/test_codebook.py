"""The codebook stage: straight-through VQ and code usage, dead-code re-initialisation, the code transformer and its
temporal variant, the paper-scale configs, and the three phases exported into one file (the render phase:
test_codebook_render.py)."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from datamodules.config import DataConfig
from lightning_modules.codebook import CodebookStage
from lightning_modules.nets.vq import VectorQuantizer
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles, load_stage_file, save_stage_file
from tests.unit.codebook_helpers import HR, LR, make_batch, tiny_cfg, tiny_stage


def test_quantizer_is_straight_through_and_tracks_usage_and_perplexity():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4, beta=0.25, usage_decay=0.5)
    codes = vq.embedding.weight.detach()
    z = codes[torch.tensor([0, 1, 2, 3] * 4)].view(1, 4, 4, 4).permute(0, 3, 1, 2).clone() + 1e-4
    z.requires_grad_(True)
    out = vq(z)
    assert out.indices.shape == (1, 4, 4) and sorted(out.indices.unique().tolist()) == [0, 1, 2, 3]
    assert torch.allclose(out.latents, vq.lookup(out.indices), atol=1e-6)  # values are the codes
    weights = torch.randn_like(out.latents)
    (out.latents * weights).sum().backward()
    assert torch.equal(z.grad, weights)  # the gradient passes straight through
    assert torch.allclose(out.perplexity, torch.tensor(4.0), atol=1e-4)  # four codes used equally
    assert torch.allclose(vq.usage[:4], torch.full((4,), 0.5 * 0.125 + 0.5 * 0.25))
    assert torch.allclose(vq.usage[4:], torch.full((4,), 0.5 * 0.125))
    assert torch.allclose(out.commitment_loss, 0.25 * out.codebook_loss, atol=1e-9)


def test_dead_code_reinit_changes_only_dead_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4)
    vq.usage.fill_(1 / 16)
    dead = torch.tensor([2, 7, 11])
    vq.usage[dead] = 0.0
    before = vq.embedding.weight.detach().clone()
    candidates = torch.randn(50, 4) + 10.0
    replaced = vq.reinit_dead(candidates, threshold=0.1, generator=torch.Generator().manual_seed(0))
    after = vq.embedding.weight.detach()
    assert replaced.tolist() == dead.tolist()
    alive = torch.ones(16, dtype=torch.bool)
    alive[dead] = False
    assert torch.equal(after[alive], before[alive])
    for index in dead.tolist():  # each dead code is now one of the encoder outputs
        assert (candidates - after[index]).abs().sum(1).min() == 0
    assert torch.all(vq.usage[dead] == 1 / 16)
    assert len(vq.reinit_dead(candidates, threshold=0.1)) == 0  # nothing dead any more


def test_transformer_predicts_code_grid_and_its_loss_falls_on_a_fixed_batch():
    module = tiny_stage("transformer")
    batch = make_batch(2)
    logits, z, _ = module.predict_codes(batch["frames"])
    assert logits.shape == (2, 1, 64, 32) and z.shape == (2, 8, 8, 8)  # 128 / 2^4 = 32 / 2^2 = 8 x 8 tokens
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=3e-3)
    encoder_before = module.encoder.conv_in.weight.detach().clone()
    first = None
    for _ in range(25):
        losses = module.compute_losses(batch)
        loss = losses["ce"].mean() + losses["latent"].mean()
        first = float(losses["ce"].mean().detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(module.compute_losses(batch)["ce"].mean()) < 0.5 * first
    assert torch.equal(module.encoder.conv_in.weight, encoder_before)  # the VQ encoder stays frozen


def test_temporal_variant_attends_across_frames():
    for temporal in (False, True):
        module = tiny_stage("transformer", clip_frames=3, temporal=temporal).eval()
        lr = make_batch(1, frames=3)["frames"]
        changed = lr.clone()
        changed[:, 2] = -changed[:, 2]
        with torch.no_grad():
            first = module.predict_codes(lr)[0][:, 0]
            again = module.predict_codes(changed)[0][:, 0]
        moved = (first - again).abs().max()
        assert (moved > 1e-4) if temporal else (moved == 0), (temporal, moved)


@pytest.mark.parametrize("experiment, hr, levels", [("paper_codebook", 512, 6), ("paper_codebook_1024", 1024, 7)])
def test_paper_configs_construct_and_run_on_meta(experiment, hr, levels):
    from trainer.config import compose
    cfg = compose([f"experiment={experiment}"])
    stage = cfg.stage
    assert (cfg.data.hr_resolution, cfg.data.resolution, len(stage.channel_multipliers)) == (hr, 256, levels)
    assert (stage.codebook_size, stage.code_dim, stage.beta) == (1024, 256, 0.25)
    assert (stage.transformer_layers, stage.transformer_width, stage.transformer_heads) == (9, 512, 8)
    with torch.device("meta"):
        module = CodebookStage(stage, cfg.data, load_earlier=False)
        z = module.encoder(torch.randn(1, 3, hr, hr))
        logits = module.predict_codes(torch.randn(1, 1, 3, 256, 256))[0]
        image = module.render(torch.randn(1, 1, 3, 256, 256), 0.5)
    assert z.shape == (1, 256, 16, 16) and logits.shape == (1, 1, 256, 1024) and image.shape == (1, 3, hr, hr)
    assert module.num_optimizers == 2 and not module.automatic_optimization  # the GAN is on at paper scale
    transformer = sum(p.numel() for p in module.transformer.parameters())
    assert 25e6 < transformer < 35e6  # 9 x (attention + 4x MLP) at width 512 plus the heads


def fit(module: CodebookStage, root, steps: int = 2) -> pl.Trainer:
    batches = [make_batch(2, seed=i) for i in range(steps)]
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root))
    trainer.fit(module, DataLoader(batches, batch_size=None))
    return trainer


def test_three_phases_export_into_one_file_that_records_the_phase(tmp_path):
    from trainer.export import export_stage
    stages = tmp_path / "stages"
    with pytest.raises(StageFileError, match="stage.phase=vqgan"):
        tiny_stage("transformer", stages_dir=str(stages), load_earlier=True)
    exported = {}
    for phase in ("vqgan", "transformer", "render"):
        module = tiny_stage(phase, stages_dir=str(stages), load_earlier=phase != "vqgan", reinit_every=1,
                            usage_decay=0.0, adversarial=phase == "render", detail_gate=phase == "render")
        if phase != "vqgan":  # starts exactly where the previous export ended
            previous = exported[phase_before(phase)]
            assert all(torch.equal(module.state_dict()[k], v) for k, v in previous.weights().items()
                       if k in module.state_dict())
        trainer = fit(module, tmp_path / phase)
        if phase == "vqgan":  # with no usage memory, the codes a step leaves unused are dead and re-initialised
            assert trainer.callback_metrics["train/dead_codes_reset"] > 0
        ckpt = tmp_path / f"{phase}.ckpt"
        trainer.save_checkpoint(str(ckpt))
        assert torch.load(ckpt, weights_only=True)["seespeaker"]["phase"] == phase
        path = export_stage(ckpt, stages_dir=stages)
        assert path == stages / "codebook.safetensors"
        exported[phase] = load_stage_file(path, expect_stage="codebook")
        assert exported[phase].phase == phase
    final, first = exported["render"], exported["vqgan"]
    assert any(k.startswith("fusion.") for k in final.state) and any(k.startswith("transformer.") for k in final.state)
    frozen = [k for k in first.state if k.startswith(("encoder.", "decoder.", "quantizer.embedding"))]
    assert frozen and all(torch.equal(final.state[k], first.state[k]) for k in frozen)
    changed = [k for k in final.state
               if k.startswith("fusion.") and not torch.equal(final.state[k], exported["transformer"].state[k])]
    assert changed  # the render phase trained the fusion layers (with the GAN's two optimizers)
    gate = final.state["detail_gate.net.2.bias"]  # trained away from its initial logit(0.25)
    assert not torch.allclose(gate, torch.logit(torch.full_like(gate, 0.25)), atol=1e-4)
    loaded = CodebookStage.for_inference(StageFiles(stages))
    assert loaded.cfg.phase == "render" and loaded.detail_gate is not None
    without = {k: v for k, v in final.state.items() if ".shortcut." not in k}  # trained with stage.shortcut=false
    with pytest.raises(StageFileError, match="no tensor encoder.shortcut.weight"):
        loaded.load_phase_file(StageFile(stage="codebook", state=without, config={"layout": "compact"}, path="old"))


def test_the_shortcut_lets_the_vq_autoencoder_fit_the_colour_layout_first():
    """Smooth faces-like images: with the linear path the autoencoder beats the one without it after a few steps."""
    from lightning_modules.nets.vq_shortcut import vq_networks
    g = torch.Generator().manual_seed(0)
    images = F.interpolate(torch.rand(8, 3, 4, 4, generator=g) * 2 - 1, size=64, mode="bicubic").clamp(-1, 1)
    errors = {}
    for shortcut in (False, True):
        torch.manual_seed(0)
        encoder, decoder = (net(8, [1, 2, 2], 1, 8) for net in vq_networks(shortcut))
        optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)
        for _ in range(60):
            loss = (decoder(encoder(images)) - images).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        errors[shortcut] = float((decoder(encoder(images)) - images).abs().mean().detach())
    assert errors[True] < 0.6 * errors[False]


def phase_before(phase: str) -> str:
    return {"transformer": "vqgan", "render": "transformer"}[phase]


def test_generation_refuses_a_vqgan_only_file_and_resume_refuses_another_phase(tmp_path):
    from common.errors import CheckpointError
    module = tiny_stage("vqgan")
    save_stage_file(tmp_path / "codebook.safetensors",
                    StageFile(stage="codebook", state=module.state_dict(), config=asdict(module.cfg), phase="vqgan"))
    with pytest.raises(StageFileError, match="stage.phase=transformer"):
        CodebookStage.for_inference(StageFiles(tmp_path))
    with pytest.raises(CheckpointError, match="run.name=vqgan"):
        module.on_load_checkpoint({"seespeaker": {"phase": "render"}})


def test_mismatched_grids_are_a_config_error():
    with pytest.raises(ValueError, match="must match"):
        CodebookStage(tiny_cfg(), DataConfig(resolution=LR, hr_resolution=256))


def test_deepspeed_refuses_the_gan_phases_but_not_the_transformer():
    from common.errors import UserError
    from trainer.schemas import TrainerConfig
    from trainer.strategies import check_deepspeed_stage
    ds = TrainerConfig(strategy="deepspeed", deepspeed_stage=2)
    with pytest.raises(UserError, match="trainer=ddp"):
        check_deepspeed_stage(ds, tiny_stage("vqgan", adversarial=True))
    check_deepspeed_stage(ds, tiny_stage("transformer", adversarial=True))  # no GAN in this phase: one optimizer


def test_upscale_renders_a_video_window_by_window():
    module = tiny_stage("render", clip_frames=4, temporal=True).eval()
    frames = make_batch(1, frames=6)["frames"][0]
    out = module.upscale(frames, fidelity=0.3)
    assert out.shape == (6, 3, HR, HR) and out.min() >= -1 and out.max() <= 1
    with torch.no_grad():  # windows of window_frames = 4: frames 0-3 together, then 4-5
        first = module.render(frames[None, :4], 0.3).clamp(-1, 1)
        second = module.render(frames[None, 4:], 0.3).clamp(-1, 1)
    assert torch.allclose(out, torch.cat([first, second]), atol=1e-5)


@pytest.mark.parametrize("phase", ["vqgan", "render"])
def test_media_shows_input_output_and_target_side_by_side(phase):
    media = tiny_stage(phase).log_media(make_batch(2))[phase]
    assert media.image.shape == (2 * HR, 3 * HR, 3) and media.image.dtype.name == "uint8"


def test_validation_code_accuracy_averages_the_valid_samples_only():
    """val/code_accuracy is a mean over the valid samples, as val/loss: the padding that evens out the ranks'
    batches weighs nothing (real Trainer, one process)."""
    module = tiny_stage("transformer")
    first, padded = make_batch(2, seed=0), make_batch(2, seed=1)
    padded["valid"] = torch.tensor([True, False])

    def per_sample_accuracy(batch: dict) -> torch.Tensor:
        with torch.no_grad():
            target = module.quantizer(module.encoder(batch["hr_frames"].flatten(0, 1)), track_usage=False)
            logits, _, _ = module.predict_codes(module.degraded(batch["frames"]))
        return (logits.flatten(0, 1).argmax(-1) == target.indices.flatten(1)).float().mean(1)

    module.eval()
    accuracies = torch.cat([per_sample_accuracy(first), per_sample_accuracy(padded)])
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False)
    (metrics,) = trainer.validate(module, dataloaders=DataLoader([first, padded], batch_size=None), verbose=False)
    assert float(accuracies[:3].mean()) != pytest.approx(float(accuracies.mean()))  # the padding would show
    assert metrics["val/code_accuracy"] == pytest.approx(float(accuracies[:3].mean()), abs=1e-6)
