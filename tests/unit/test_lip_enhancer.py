"""The lip enhancer: lower-face mask, region-only refinement, the frozen expert's sync loss, the GAN option."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from datamodules.config import DataConfig
from lightning_modules.lip_enhancer import LipEnhancerConfig, LipEnhancerStage, refine_video
from lightning_modules.nets.lip import degrade_mouths, lower_face_mask
from lightning_modules.nets.motion import LandmarkMismatchError
from lightning_modules.stagefile import StageFile, StageFiles, save_stage_file
from lightning_modules.syncnet import SyncNetConfig, SyncNetStage

RES, FRAMES = 32, 7


def face_landmarks(batch: int, frames: int) -> torch.Tensor:
    """A face in the middle of the frame: jaw 0-16 on a U, nose 27-35, eyes 36-47, mouth 48-67 low."""
    pts = torch.zeros(68, 2)
    angle = torch.linspace(3.3, 6.1, 17)
    pts[:17] = torch.stack([16 + 11 * torch.cos(angle), 14 - 13 * torch.sin(angle)], -1)
    pts[17:27] = torch.stack([torch.linspace(8, 24, 10), torch.full((10,), 9.0)], -1)
    pts[27:36] = torch.stack([torch.full((9,), 16.0), torch.linspace(11, 19, 9)], -1)
    pts[36:48] = torch.stack([torch.linspace(9, 23, 12), torch.full((12,), 12.0)], -1)
    pts[48:68] = torch.stack([torch.linspace(12, 20, 20), 23 + torch.sin(torch.linspace(0, 6.28, 20))], -1)
    return pts.expand(batch, frames, 68, 2).clone()


def make_batch(batch: int = 2) -> dict:
    g = torch.Generator().manual_seed(1)
    return {
        "key": [f"k{i}" for i in range(batch)], "speaker": [f"s{i}" for i in range(batch)],
        "speaker_index": torch.arange(batch), "valid": torch.ones(batch, dtype=torch.bool),
        "frames": torch.rand(batch, FRAMES, 3, RES, RES, generator=g) * 2 - 1,
        "landmarks": face_landmarks(batch, FRAMES), "audio": torch.randn(batch, 16000, generator=g) * 0.2,
        "frame_start": torch.zeros(batch, dtype=torch.long),
    }


@pytest.fixture(scope="module")
def stages_dir(tmp_path_factory):
    """An exported compact syncnet stage (untrained: the loss wiring, not its quality, is under test)."""
    torch.manual_seed(0)
    cfg = SyncNetConfig(layout="compact", embedding_dim=32, width=8, input_size=RES, max_offset=2)
    sync = SyncNetStage(cfg, DataConfig(resolution=RES, clip_frames=FRAMES))
    root = tmp_path_factory.mktemp("stages")
    save_stage_file(root / "syncnet.safetensors",
                    StageFile(stage="syncnet", state=sync.state_dict(), config=asdict(cfg)))
    return root


def tiny_stage(stages_dir, **overrides) -> LipEnhancerStage:
    torch.manual_seed(0)
    cfg = LipEnhancerConfig(channels=[8, 16], cond_dim=16, n_mels=20, sync_max_offset=1, sync_windows=1,
                            discriminator_channels=[8, 16], lr=1e-3, warmup_steps=0, **overrides)
    return LipEnhancerStage(cfg, DataConfig(resolution=RES, clip_frames=FRAMES), stages_dir=str(stages_dir))


def test_mask_covers_the_mouth_and_not_the_eyes():
    marks = face_landmarks(1, 1)[0, 0]
    mask = lower_face_mask(marks, RES)[0]
    at = lambda p: mask[int(p[1]), int(p[0])].item()  # noqa: E731
    assert all(at(marks[i]) > 0.5 for i in (51, 57, 62, 66))
    assert all(at(marks[i]) < 0.05 for i in (37, 44, 19, 24))
    assert mask[: int(marks[33, 1]) - 3].max() < 0.2   # nothing above the nose tip


def test_degradation_and_refinement_touch_only_the_lower_face(stages_dir):
    stage = tiny_stage(stages_dir)
    batch = make_batch()
    mask = stage.masks(batch["landmarks"])
    degraded = degrade_mouths(batch["frames"], mask)
    outside = mask < 1e-4
    assert torch.allclose(degraded.expand_as(batch["frames"])[outside.expand_as(degraded)],
                          batch["frames"][outside.expand_as(degraded)], atol=1e-3)
    torch.nn.init.normal_(stage.refiner.out.weight, std=0.5)   # a refiner that changes what it sees
    refined = stage.refine(degraded, mask, batch["frames"][:, 0], batch["audio"])
    change = (refined - degraded).abs().amax(dim=2, keepdim=True)
    assert change[mask > 0.9].mean() > 0.05
    assert change[outside].max() < 1e-3


def test_losses_train_the_refiner_and_leave_the_expert_frozen(stages_dir):
    stage = tiny_stage(stages_dir)
    expert_before = {k: v.clone() for k, v in stage.frozen.expert.state_dict().items()}
    losses = stage.compute_losses(make_batch())
    assert set(losses) == {"recon", "sync", "feature"} and all(v.shape == (2,) for v in losses.values())
    losses["sync"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.refiner.parameters())
    assert all(p.grad is None for p in stage.frozen.expert.parameters())
    assert not any(k.startswith(("frozen", "expert")) for k in stage.state_dict())
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(stage, train_dataloaders=torch.utils.data.DataLoader([make_batch()] * 2, batch_size=None))
    for key, value in stage.frozen.expert.state_dict().items():   # batch-norm statistics included
        assert torch.equal(value, expert_before[key]), key


def test_adversarial_option_uses_two_optimizers(stages_dir):
    stage = tiny_stage(stages_dir, adversarial=True)
    assert stage.num_optimizers == 2 and not stage.automatic_optimization
    disc_before = [p.clone() for p in stage.discriminator.parameters()]
    refiner_before = [p.clone() for p in stage.refiner.parameters()]
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(stage, train_dataloaders=torch.utils.data.DataLoader([make_batch()] * 2, batch_size=None))
    assert len(trainer.optimizers) == 2
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, stage.discriminator.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(refiner_before, stage.refiner.parameters(), strict=True))


def test_landmarks_that_disagree_with_frames_are_refused(stages_dir):
    stage = tiny_stage(stages_dir)
    batch = make_batch()
    batch["landmarks"] = batch["landmarks"][:, :3]
    with pytest.raises(LandmarkMismatchError, match="3 landmark frames for 7 video frames"):
        stage.compute_losses(batch)
    video = batch["frames"][0]
    with pytest.raises(LandmarkMismatchError):
        refine_video(stage, video, face_landmarks(1, 4)[0], batch["audio"][0])
    one_set = refine_video(stage, video, face_landmarks(1, 1)[0, 0], batch["audio"][0])
    assert one_set.shape == video.shape


def test_exported_refiner_refines_like_the_stage(stages_dir, tmp_path):
    stage = tiny_stage(stages_dir).eval()
    torch.nn.init.normal_(stage.refiner.out.weight, std=0.5)
    save_stage_file(tmp_path / "lip_enhancer.safetensors", StageFile(
        stage="lip_enhancer", state=stage.state_dict(), config=asdict(stage.cfg)))
    parts = LipEnhancerStage.for_inference(StageFiles(tmp_path))
    batch = make_batch()
    marks = batch["landmarks"][0]
    ours = refine_video(stage, batch["frames"][0], marks, batch["audio"][0])
    loaded = refine_video(parts, batch["frames"][0], marks, batch["audio"][0])
    assert torch.allclose(ours, loaded, atol=1e-5) and not torch.allclose(ours, batch["frames"][0], atol=1e-3)


def test_missing_syncnet_stage_names_the_stage_and_the_fix(tmp_path):
    with pytest.raises(ValueError, match="needs the exported 'syncnet' stage.*stage=syncnet"):
        tiny_stage(tmp_path)


def test_inputs_can_be_the_motion_stages_rendering_of_each_clip(stages_dir, tmp_path):
    import shutil

    from lightning_modules.motion_diffusion import MotionDiffusionConfig, MotionDiffusionStage
    from lightning_modules.motion_generation import rerender_frames
    from lightning_modules.stagefile import StageFileError
    from tests.unit.stage1_helpers import export, make_stage1_inputs

    make_stage1_inputs(tmp_path, resolution=RES)
    shutil.copy(stages_dir / "syncnet.safetensors", tmp_path)
    stage = tiny_stage(tmp_path, input_source="motion")
    assert LipEnhancerStage.requires(stage.cfg) == ("syncnet", "conre", "autoencoder", "motion_diffusion")
    batch = make_batch()
    mask = stage.masks(batch["landmarks"])
    with pytest.raises(StageFileError, match="stage.input_source=motion needs the exported motion_diffusion"):
        stage.inputs(batch, mask)
    motion_cfg = MotionDiffusionConfig(
        window_frames=4, context_frames=0, previous_frames=1, frame_window=4, temporal_heads=4, lips_dim=4,
        jaw_dim=4, brows_dim=4, eyes_dim=2, pose_dim=2, encoder_hidden=16, transformer_width=16,
        transformer_layers=1, transformer_heads=2, unet_channels=[8, 16], attention_levels=[False, True],
        unet_layers=1, cross_attention_dim=16, attention_head_dim=4, frame_steps=2)
    export(MotionDiffusionStage(motion_cfg, DataConfig(resolution=RES, clip_frames=FRAMES), str(tmp_path)),
           tmp_path / "motion_diffusion.safetensors")
    stage.eval()
    inputs = stage.inputs(batch, mask)
    expected = rerender_frames(MotionDiffusionStage.for_inference(StageFiles(tmp_path)), batch["frames"],
                               batch["landmarks"], batch["audio"], RES, torch.Generator().manual_seed(0))
    assert torch.allclose(inputs, expected, atol=1e-5)  # the motion stage's frames, not degraded real ones
    assert not torch.allclose(inputs, degrade_mouths(batch["frames"], mask, torch.Generator().manual_seed(0)))
    stage.train()
    losses = stage.compute_losses(batch)
    sum(losses.values()).sum().backward()
    assert all(torch.isfinite(v).all() for v in losses.values())
    assert all(p.grad is not None for p in stage.refiner.parameters() if p.requires_grad)
    assert not any("denoiser" in k or "motion_encoder" in k for k in stage.state_dict())  # never checkpointed
    assert "stage.input_source" in "".join(LipEnhancerConfig(input_source="generated").validate())


def test_media_are_the_video_and_a_picture_of_its_frames(stages_dir):
    from common.images import to_uint8

    batch = make_batch()
    media = tiny_stage(stages_dir).log_media(batch)
    assert Path(media["lips"].video_path).is_file()
    strip = media["lips_frames"].image
    tiles = min(6, FRAMES)
    assert strip.shape == (3 * RES, tiles * RES, 3) and strip.dtype == np.uint8
    real = batch["frames"][0]
    assert np.array_equal(strip[2 * RES:, :RES], to_uint8(real[0]))  # the real row, first frame
    assert np.array_equal(strip[2 * RES:, -RES:], to_uint8(real[FRAMES - 1]))  # ... and last frame
    assert not np.array_equal(strip[RES:2 * RES], strip[2 * RES:])  # the refined row is not the real one
