"""The motion stage: group-local motion latents, previous-frame augmentation only in training, sliding windows."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from diffusers import AutoencoderKL

from datamodules.config import DataConfig
from lightning_modules.motion_diffusion import MotionDiffusionConfig, MotionDiffusionStage
from lightning_modules.motion_generation import (
    FrozenParts,
    GenerationInputError,
    generate_motion_video,
    rerender_frames,
)
from lightning_modules.nets.encoders import SpeechEncoder
from lightning_modules.nets.motion import LANDMARK_GROUPS, LandmarkMismatchError, MotionEncoder

RES, WINDOW, CONTEXT, PREVIOUS = 32, 4, 2, 2
PER_FRAME = 640


def tiny_stage(seed: int = 0, prev_noise_max_step: int = 200) -> MotionDiffusionStage:
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=RES)
    frozen = FrozenParts(vae, 0.5, SpeechEncoder(32, 16, 2))
    cfg = MotionDiffusionConfig(
        window_frames=WINDOW, context_frames=CONTEXT, previous_frames=PREVIOUS, lips_dim=8, expression_dim=4,
        eyes_dim=4, pose_dim=4, encoder_hidden=32, transformer_width=32, transformer_layers=1, transformer_heads=2,
        unet_channels=[16, 32], attention_levels=[False, True], unet_layers=1, cross_attention_dim=32,
        attention_head_dim=4, frames_per_clip=2, motion_steps=2, frame_steps=2,
        prev_noise_max_step=prev_noise_max_step, media_frames=8)
    data = DataConfig(resolution=RES, clip_frames=WINDOW + CONTEXT, batch_size=2)
    return MotionDiffusionStage(cfg, data, frozen=frozen)


def landmarks_grid(batch: int, frames: int) -> torch.Tensor:
    """Plausible, distinct landmark sets inside a RES x RES frame."""
    base = torch.rand(68, 2) * RES * 0.6 + RES * 0.2
    return (base + torch.randn(batch, frames, 68, 2)).clamp(0, RES - 1)


def make_batch(batch: int = 2, frames: int = WINDOW + CONTEXT, same_frames: bool = False) -> dict:
    pics = torch.rand(batch, 1 if same_frames else frames, 3, RES, RES) * 2 - 1
    return {
        "key": [f"k{i}" for i in range(batch)], "speaker": [f"s{i}" for i in range(batch)],
        "speaker_index": torch.arange(batch), "valid": torch.ones(batch, dtype=torch.bool),
        "frames": pics.expand(-1, frames, -1, -1, -1).contiguous(),
        "landmarks": landmarks_grid(batch, frames), "audio": torch.randn(batch, 32000) * 0.1,
        "frame_start": torch.zeros(batch, dtype=torch.long),
    }


def test_motion_groups_have_their_sizes_and_react_only_to_their_landmarks():
    torch.manual_seed(0)
    encoder = MotionEncoder({"lips": 12, "expression": 6, "eyes": 4, "pose": 5}, hidden=32)
    landmarks = landmarks_grid(3, 2)
    base = encoder.groups(encoder(landmarks, RES))
    assert {k: v.shape[-1] for k, v in base.items()} == {"lips": 12, "expression": 6, "eyes": 4, "pose": 5}
    # measure: the max absolute change of each group; only the moved group may change, exactly nothing else
    for moved in ("lips", "eyes", "expression"):
        shifted = landmarks.clone()
        idx = list(LANDMARK_GROUPS[moved])
        shifted[..., idx, :] += torch.randn(len(idx), 2) * 2.0
        after = encoder.groups(encoder(shifted, RES))
        change = {name: (after[name] - base[name]).abs().max().item() for name in base}
        assert change[moved] > 1e-2, (moved, change)
        assert all(change[name] == 0.0 for name in base if name != moved), (moved, change)


def test_landmark_count_disagreeing_with_frames_is_refused():
    stage = tiny_stage()
    batch = make_batch()
    batch["landmarks"] = batch["landmarks"][:, :-1]
    with pytest.raises(LandmarkMismatchError, match="landmark frames for 6 video frames"):
        stage.compute_losses(batch)


def _capture(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(lambda m, args, kwargs: store.append(kwargs), with_kwargs=True)


def test_previous_frames_are_noise_augmented_in_training_with_the_step_given():
    stage = tiny_stage(prev_noise_max_step=900)
    batch = make_batch(batch=4, same_frames=True)  # every frame latent equals the reference latent
    calls: list = []
    handle = _capture(stage.frame_denoiser, calls)
    stage.compute_losses(batch)
    handle.remove()
    kwargs = calls[0]
    clean = kwargs["portrait"].repeat(1, PREVIOUS, 1, 1)
    steps = kwargs["prev_noise_step"]
    assert (steps > 0).any()
    moved = (kwargs["previous"] - clean).flatten(1).abs().amax(1)
    assert torch.all(moved[steps > 0] > 1e-3)
    assert torch.all(moved[steps == 0] == 0)


def test_sliding_window_length_continuity_and_no_augmentation_at_sampling():
    stage = tiny_stage().eval()
    n_frames = 2 * WINDOW + 1  # not a multiple of the window
    audio = torch.randn(n_frames * PER_FRAME + 100) * 0.1
    motion_calls: list = []
    frame_calls: list = []
    handles = [_capture(stage.motion_denoiser, motion_calls), _capture(stage.frame_denoiser, frame_calls)]
    frames, motion, latents = generate_motion_video(stage.parts(), torch.rand(3, RES, RES) * 2 - 1, audio,
                                                    generator=torch.Generator().manual_seed(0), return_latents=True)
    for h in handles:
        h.remove()
    assert frames.shape == (n_frames, 3, RES, RES) and motion.shape[0] == n_frames and latents.shape[0] == n_frames
    steps = stage.cfg.motion_steps
    assert len(motion_calls) == 3 * steps  # three windows
    assert motion_calls[0]["context"] is None
    for k in (1, 2):  # window k's context = the last motion latents of window k - 1
        start = k * WINDOW
        assert torch.equal(motion_calls[k * steps]["context"][0], motion[start - CONTEXT:start])
    per_frame = stage.cfg.frame_steps
    assert all(int(c["prev_noise_step"].max()) == 0 for c in frame_calls)
    for index in (WINDOW, 2 * WINDOW):  # the first frame of a window continues from the frames just before it
        previous = frame_calls[index * per_frame]["previous"][0]
        assert torch.equal(previous, torch.cat([latents[index - 2], latents[index - 1]], dim=0))


def test_rerendering_denoises_every_frame_from_its_own_motion_and_the_real_frames_before_it():
    stage = tiny_stage().eval()
    batch = make_batch(batch=2, frames=3)
    calls: list = []
    handle = _capture(stage.frame_denoiser, calls)
    out = rerender_frames(stage.parts(), batch["frames"], batch["landmarks"], batch["audio"][:, :3 * PER_FRAME],
                          RES, generator=torch.Generator().manual_seed(0))
    handle.remove()
    assert out.shape == batch["frames"].shape and out.abs().max() <= 1
    assert len(calls) == stage.cfg.frame_steps  # one batched sampler run for all frames
    kwargs = calls[-1]
    latents = stage.frozen.encode(batch["frames"].flatten(0, 1)).view(2, 3, -1, RES // 4, RES // 4)
    expected_previous = {0: [latents[1, 0], latents[1, 0]], 1: [latents[1, 0], latents[1, 0]],
                         2: [latents[1, 0], latents[1, 1]]}  # clip 1; before the clip: its first frame
    for frame, parts in expected_previous.items():
        assert torch.allclose(kwargs["previous"][3 + frame], torch.cat(parts), atol=1e-6)
    assert torch.allclose(kwargs["portrait"][4], latents[1, 0], atol=1e-6)
    motion = stage.motion_encoder(batch["landmarks"], RES)
    assert torch.allclose(kwargs["motion"][4], motion[1, 1], atol=1e-6)
    assert not torch.allclose(kwargs["motion"][4], kwargs["motion"][5])
    assert int(kwargs["prev_noise_step"].max()) == 0


def test_bad_generation_inputs_are_named():
    stage = tiny_stage().eval()
    portrait = torch.rand(3, RES, RES) * 2 - 1
    with pytest.raises(GenerationInputError, match="shorter than one window"):
        generate_motion_video(stage.parts(), portrait, torch.zeros((WINDOW - 1) * PER_FRAME))
    with pytest.raises(GenerationInputError, match="trained at 25.0 fps"):
        generate_motion_video(stage.parts(), portrait, torch.zeros(20 * PER_FRAME), fps=30)
    with pytest.raises(GenerationInputError, match="mono"):
        generate_motion_video(stage.parts(), portrait, torch.zeros(2, 20 * PER_FRAME))


def test_trainer_steps_update_only_the_stage_and_export_no_frozen_weights():
    stage = tiny_stage()
    batches = [make_batch() for _ in range(3)]
    before = {k: v.clone() for k, v in stage.state_dict().items()}
    vae_before = [p.clone() for p in stage.frozen.vae.parameters()]
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(stage, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    after = stage.state_dict()
    assert not any(k.startswith(("frozen", "vae", "speech")) for k in after)
    changed = [k for k in after if k.startswith("frame_denoiser.unet") and not torch.equal(after[k], before[k])]
    assert changed and any(not torch.equal(after[k], before[k]) for k in after if k.startswith("motion_encoder"))
    assert all(torch.equal(a, b) for a, b in zip(vae_before, stage.frozen.vae.parameters(), strict=True))


class RecordingDenoiser(torch.nn.Module):
    """Stands in for the motion transformer: records what it is asked and answers zeros."""

    def forward(self, noisy, timestep, **_):
        self.seen = noisy
        return torch.zeros_like(noisy)


def test_motion_transformer_regresses_the_clean_motion_and_the_frame_unet_the_noise():
    stage = tiny_stage()
    assert (stage.motion_scheduler.config.prediction_type,
            stage.scheduler.config.prediction_type) == ("sample", "epsilon")
    stage.motion_denoiser = RecordingDenoiser()
    clean = torch.randn(2, WINDOW + CONTEXT, stage.motion_encoder.dim)
    audio = torch.randn(2, WINDOW + CONTEXT, 4 * stage.cfg.n_mels)
    loss = stage.motion_loss(clean, audio, torch.randn(2, 32), CONTEXT, slice(CONTEXT, CONTEXT + WINDOW))
    # a zero prediction costs exactly the clean latents' energy: the target is the motion, not the noise
    assert torch.allclose(loss, clean[:, CONTEXT:].square().mean(dim=(1, 2)))
    assert not torch.allclose(stage.motion_denoiser.seen, clean[:, CONTEXT:])


def test_landmark_maps_show_a_two_pixel_mouth_opening_only_in_the_lips_channels():
    from lightning_modules.nets.motion import landmark_maps, map_channels
    closed = landmarks_grid(1, 1)[0, 0]
    opened = closed.clone()
    opened[57:60, 1] += 2.0  # lower lip down by two pixels (a quarter of a latent pixel at factor 8)
    maps = landmark_maps(torch.stack([closed, opened]), RES, factor=4)
    assert maps.shape == (2, map_channels(4), RES // 4, RES // 4)
    lips, others = maps[:, :16], maps[:, 16:]  # pixel-unshuffle keeps each map's channels together
    assert torch.equal(others[0], others[1])
    assert (lips[0] - lips[1]).abs().max() > 0.5


def test_the_frame_unet_sees_the_maps_of_its_own_frames_motion():
    stage = tiny_stage().eval()
    torch.nn.init.normal_(stage.motion_denoiser.out[1].weight)  # zero-initialised, it gives every frame one motion
    calls: list = []
    handle = _capture(stage.frame_denoiser, calls)
    n_frames = WINDOW + 1
    frames, motion, _ = generate_motion_video(stage.parts(), torch.rand(3, RES, RES) * 2 - 1,
                                              torch.randn(n_frames * PER_FRAME) * 0.1,
                                              generator=torch.Generator().manual_seed(0), return_latents=True)
    handle.remove()
    expected = stage.parts().motion_maps(motion, RES // stage.frozen.downsample)
    per_frame = stage.cfg.frame_steps
    for index in range(n_frames):
        assert torch.equal(calls[index * per_frame]["maps"][0], expected[index])
    assert not torch.equal(expected[0], expected[-1])


def test_mouth_loss_weight_raises_the_weight_of_an_error_in_the_lower_face_only():
    stage = tiny_stage()
    landmarks = landmarks_grid(2, 1)[:, 0]
    latent = RES // stage.frozen.downsample
    weights = stage.mouth_weights(landmarks, latent)
    assert torch.equal(weights, torch.ones_like(weights))  # off by default
    stage.cfg.mouth_loss_weight = 4.0
    weights = stage.mouth_weights(landmarks, latent)
    from lightning_modules.nets.lip import lower_face_mask
    mask = torch.nn.functional.adaptive_avg_pool2d(lower_face_mask(landmarks, RES), latent)
    assert torch.allclose(weights, 1 + 4.0 * mask)
    assert weights.max() > 4.0 and weights.min() < 1.1
