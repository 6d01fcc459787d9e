"""The codebook's render phase: the fidelity weight between the code path and the encoder path, the residual head
and its detail scale, the detail gate, what the phase trains and on which inputs, and back-projection."""
from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from datamodules.config import DataConfig
from lightning_modules.codebook import CodebookStage
from lightning_modules.codebook_parts import back_project
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles, save_stage_file
from tests.unit.codebook_helpers import HR, LR, make_batch, tiny_cfg, tiny_stage


def test_fidelity_weight_switches_between_the_code_path_and_the_encoder_path():
    module = tiny_stage("render").eval()
    lr = make_batch(2)["frames"]
    with torch.no_grad():
        logits, z, features = module.predict_codes(lr)
        codes = logits.argmax(-1).view(2, 8, 8)
        other = (codes + 5) % 32
        def decode(c, w):
            looked_up = module.quantizer.lookup(c)
            return module.decoder(looked_up, fuse=module.fusion.hook(features, w),
                                  shortcut_latent=module.fusion.blend(looked_up, z, w))
        w0, w1 = module.render(lr, 0.0), module.render(lr, 1.0)
        assert (w0 - w1).abs().mean() > 1e-3
        assert torch.allclose(w0, module.decoder(module.quantizer.lookup(codes)), atol=1e-6)  # pure codebook
        low = lr.flatten(0, 1)
        decoded = decode(other, 1.0)
        assert torch.allclose(w1, back_project(decoded, low, 1.0), atol=1e-6)  # w = 1: the codes no longer matter
        assert (decode(other, 0.5) - decode(codes, 1.0)).abs().mean() > 1e-4   # in between, both paths count
        per_sample = module.render(lr, torch.tensor([0.0, 1.0]))
        assert torch.allclose(per_sample[0], w0[0], atol=1e-6) and torch.allclose(per_sample[1], w1[1], atol=1e-6)


def test_residual_head_starts_the_render_phase_from_bicubic_and_learns_detail_on_it():
    module = tiny_stage("render", residual_head=True, consistency=False)
    batch = make_batch(2)
    lr = batch["frames"]
    bicubic = F.interpolate(lr.flatten(0, 1), size=HR, mode="bicubic", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(module.render(lr, 1.0), bicubic, atol=1e-6)  # the zero-initialised head adds nothing
        logits, z, _ = module.predict_codes(lr)
        codes = module.quantizer.lookup(logits.argmax(-1).view(2, 8, 8))
        assert torch.allclose(module.render(lr, 0.0), module.decoder(codes), atol=1e-6)  # w = 0: the codebook's face
    assert "residual_head" in module.trained_parts("render")
    optimizer = torch.optim.Adam(module.trainable_parameters(), lr=3e-3)
    for _ in range(5):
        loss = module.compute_losses(batch)["l1"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert (module.render(lr, 1.0) - bicubic).abs().mean() > 1e-4  # the head has learned some detail
    errors = tiny_cfg(residual_head=True, shortcut=False).validate()
    assert any("stage.residual_head" in e and "stage.shortcut=true" in e for e in errors)


def test_detail_scale_weighs_the_residual_heads_detail_in_eval_only():
    module = tiny_stage("render", residual_head=True, consistency=False, detail_scale=0.25)
    torch.nn.init.normal_(module.residual_head.net[-1].weight, std=0.1)  # a head that has learned some detail
    lr = make_batch(2)["frames"]
    bicubic = F.interpolate(lr.flatten(0, 1), size=HR, mode="bicubic", align_corners=False)
    with torch.no_grad():
        full = module.render(lr, 1.0, detail_scale=1.0) - bicubic
        assert full.abs().mean() > 1e-3
        for scale in (0.0, 0.5):  # linear in the scale: bicubic plus that share of the same detail
            assert torch.allclose(module.render(lr, 1.0, detail_scale=scale) - bicubic, scale * full, atol=1e-5)
        module.train()
        assert torch.allclose(module.render(lr, 1.0) - bicubic, full, atol=1e-5)  # training adds all of it
        module.eval()
        assert torch.allclose(module.render(lr, 1.0) - bicubic, 0.25 * full, atol=1e-5)  # eval: the stage's own
        assert torch.equal(module.upscale(lr[:, 0], 1.0), module.render(lr, 1.0).clamp(-1, 1))
    assert any("stage.detail_scale must be in [0, 1]" in e for e in tiny_cfg(detail_scale=1.5).validate())


def test_detail_gate_pulls_the_decoded_image_towards_bicubic_by_fidelity_and_gate():
    plain = tiny_stage("render").eval()
    module = tiny_stage("render", detail_gate=True).eval()
    lr = make_batch(2)["frames"]
    low = lr.flatten(0, 1)
    bicubic = F.interpolate(low, size=HR, mode="bicubic", align_corners=False)
    gate_bias = module.detail_gate.net[-1].bias
    with torch.no_grad():
        assert torch.allclose(module.render(lr, 0.0), plain.render(lr, 0.0), atol=1e-6)  # w = 0: the codes alone
        gate_bias.fill_(-30.0)  # gate closed: at w = 1 the output is back-projected bicubic
        assert torch.allclose(module.render(lr, 1.0), back_project(bicubic, low, 1.0), atol=1e-5)
        gate_bias.fill_(30.0)  # gate open: the decoder's output, as without the gate
        assert torch.allclose(module.render(lr, 1.0), plain.render(lr, 1.0), atol=1e-5)
        gate_bias.fill_(0.0)  # half open, half the fidelity: a quarter of the way to bicubic before back-projection
        plain.cfg.consistency = module.cfg.consistency = False
        decoded = plain.render(lr, 0.5)
        assert torch.allclose(module.render(lr, 0.5), decoded + 0.25 * (bicubic - decoded), atol=1e-5)
    module.cfg.consistency = True
    module.render(lr, 1.0).square().mean().backward()
    assert module.detail_gate.net[-1].weight.grad.abs().sum() > 0  # the gate learns from the image loss


@pytest.mark.parametrize("trains", [["fusion"], ["fusion", "decoder"]])
@pytest.mark.parametrize("gate", [False, True])
def test_render_phase_trains_the_networks_it_is_told(trains, gate):
    module = tiny_stage("render", render_trains=trains, detail_gate=gate)
    trained = {name for name, child in module.named_children() if any(p.requires_grad for p in child.parameters())}
    assert trained == set(trains) | ({"detail_gate"} if gate else set())  # no discriminator without the GAN
    assert "stage.render_trains" in "".join(tiny_cfg(render_trains=["codes"]).validate())


def test_render_inputs_can_come_through_the_autoencoder_like_stage_2_frames(tmp_path):
    from lightning_modules.autoencoder import AutoencoderStage
    from tests.unit.stage1_helpers import make_stage1_inputs

    make_stage1_inputs(tmp_path, resolution=LR)
    frames = make_batch(2, frames=2)["frames"]
    plain = tiny_stage("render", stages_dir=str(tmp_path)).eval()
    assert torch.equal(plain.render_inputs({"frames": frames}), frames)  # degrade 0: the real frames as they are
    module = tiny_stage("render", stages_dir=str(tmp_path), render_source="autoencoder").eval()
    vae = AutoencoderStage.for_inference(StageFiles(tmp_path)).vae
    with torch.no_grad():
        expected = vae.decode(vae.encode(frames.flatten(0, 1)).latent_dist.mode()).sample.clamp(-1, 1)
    assert torch.allclose(module.render_inputs({"frames": frames}), expected.view_as(frames), atol=1e-6)
    assert not any(k.startswith(("vae.", "_autoencoder")) for k in module.state_dict())  # never checkpointed
    assert "stage.render_source" in "".join(tiny_cfg(render_source="generated").validate())


def test_render_inputs_can_be_the_motion_stages_rendering_of_each_frame(tmp_path):
    from lightning_modules.motion_diffusion import MotionDiffusionConfig, MotionDiffusionStage
    from lightning_modules.motion_generation import rerender_frames
    from tests.unit.stage1_helpers import export, make_stage1_inputs

    make_stage1_inputs(tmp_path, resolution=LR)
    batch = make_batch(2, frames=3)
    batch["landmarks"] = (torch.rand(68, 2) * LR * 0.6 + LR * 0.2 + torch.randn(2, 3, 68, 2)).clamp(0, LR - 1)
    batch["audio"] = torch.randn(2, 3 * 640) * 0.1
    module = tiny_stage("render", clip_frames=3, stages_dir=str(tmp_path), render_source="motion").eval()
    with pytest.raises(StageFileError, match="motion_diffusion"):
        module.render_inputs(batch)  # the motion stage is not exported yet
    motion_cfg = MotionDiffusionConfig(
        window_frames=2, context_frames=0, previous_frames=2, frame_window=2, temporal_heads=4, lips_dim=4,
        jaw_dim=4, brows_dim=4, eyes_dim=2, pose_dim=2,
        encoder_hidden=16, transformer_width=16, transformer_layers=1, transformer_heads=2, unet_channels=[8, 16],
        attention_levels=[False, True], unet_layers=1, cross_attention_dim=16, attention_head_dim=4, frame_steps=2)
    export(MotionDiffusionStage(motion_cfg, DataConfig(resolution=LR, clip_frames=3), str(tmp_path)),
           tmp_path / "motion_diffusion.safetensors")
    inputs = module.render_inputs(batch)
    expected = rerender_frames(MotionDiffusionStage.for_inference(StageFiles(tmp_path)), batch["frames"],
                               batch["landmarks"], batch["audio"], LR, torch.Generator().manual_seed(0))
    assert torch.allclose(inputs, expected, atol=1e-5)  # degrade 0: exactly the motion stage's frames
    assert (inputs - batch["frames"]).abs().mean() > 0.05  # not the real frames
    assert not any("denoiser" in k or k.startswith("_motion") for k in module.state_dict())  # never checkpointed
    losses = module.render_losses(batch)
    assert losses["l1"].shape == (2,) and torch.isfinite(losses["l1"]).all()


@pytest.mark.parametrize("operator", ["bicubic", "area"])
def test_back_projection_moves_the_output_towards_the_input_by_the_fidelity_weight(operator):
    from lightning_modules.codebook_parts import downsample
    torch.manual_seed(0)
    low = F.interpolate(torch.rand(3, 3, 4, 4) * 2 - 1, size=16, mode="bilinear")  # image-like: smooth at 16 px
    output = torch.rand(3, 3, 64, 64) * 2 - 1
    down = lambda x: downsample(x, 16, operator)  # noqa: E731
    gap = lambda x: (down(x) - low).abs().mean().item()  # noqa: E731
    assert torch.equal(back_project(output, low, 0.0, operator), output)
    half, full = back_project(output, low, 0.5, operator), back_project(output, low, 1.0, operator)
    assert gap(full) < 0.25 * gap(output) and gap(full) < gap(half) < gap(output)
    smooth = F.interpolate(low, size=64, mode="bicubic", align_corners=False)  # detail the input cannot see stays
    detail = output - F.interpolate(down(output), size=64, mode="bicubic", align_corners=False)
    assert torch.allclose(full - detail, smooth, atol=1e-5)
    per_sample = back_project(output, low, torch.tensor([0.0, 1.0, 0.5]), operator)
    assert torch.equal(per_sample[0], output[0]) and torch.allclose(per_sample[1], full[1], atol=1e-6)
    expected = {"area": F.interpolate(output, size=16, mode="area"),  # the corpus's downsampler, or antialiased bicubic
                "bicubic": F.interpolate(output, size=16, mode="bicubic", align_corners=False, antialias=True)}
    assert torch.equal(down(output), expected[operator])


def test_back_projection_operator_is_an_option_and_old_files_load_as_area(tmp_path):
    module = tiny_stage("render").eval()
    assert module.cfg.back_projection_operator == "bicubic"  # new configs
    config = {k: v for k, v in asdict(module.cfg).items() if k not in ("back_projection_operator",
                                                                       "perceptual_network", "adversarial_warmup")}
    save_stage_file(tmp_path / "codebook.safetensors",
                    StageFile(stage="codebook", state=module.state_dict(), config=config, phase="render"))
    loaded = CodebookStage.for_inference(StageFiles(tmp_path))  # a file from before the options
    assert loaded.cfg.back_projection_operator == "area" and loaded.cfg.perceptual_network == "conre"
    lr = make_batch(2)["frames"]
    with torch.no_grad():
        module.cfg.back_projection_operator = "area"  # the same weights with the area operator: the old file's output
        assert torch.allclose(loaded.render(lr, 1.0), module.render(lr, 1.0), atol=1e-6)
        module.cfg.back_projection_operator = "bicubic"
        assert (loaded.render(lr, 1.0) - module.render(lr, 1.0)).abs().max() > 1e-4
    assert "stage.back_projection_operator" in "".join(tiny_cfg(back_projection_operator="nearest").validate())

