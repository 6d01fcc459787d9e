"""The motion stage: previous-frame augmentation only in training, sliding windows, landmark maps, its losses."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from diffusers import AutoencoderKL

from datamodules.config import DataConfig
from datamodules.sample import MOTION_TRUTH_COLUMNS
from lightning_modules.motion_diffusion import MotionDiffusionConfig, MotionDiffusionStage
from lightning_modules.motion_generation import (
    FrozenParts,
    GenerationInputError,
    generate_motion_video,
    rerender_frames,
)
from lightning_modules.nets.encoders import SpeechEncoder
from lightning_modules.nets.face_frame import LANDMARK_GROUPS
from lightning_modules.nets.motion import (
    LandmarkMismatchError,
    landmark_maps,
    map_channels,
    pupil_points,
)
from tests.unit.motion_faces import RES, face_landmarks, faces, landmarks_grid

WINDOW, CONTEXT, PREVIOUS = 4, 2, 2
PER_FRAME = 640


def tiny_stage(seed: int = 0, prev_noise_max_step: int = 200, renderer: str = "sequential",
               **options) -> MotionDiffusionStage:
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=RES)
    frozen = FrozenParts(vae, 0.5, SpeechEncoder(32, 16, 2))
    cfg = MotionDiffusionConfig(
        window_frames=WINDOW, context_frames=CONTEXT, previous_frames=PREVIOUS, lips_dim=8, jaw_dim=4, brows_dim=4,
        eyes_dim=4, pose_dim=4, encoder_hidden=32, transformer_width=32, transformer_layers=1, transformer_heads=2,
        unet_channels=[16, 32], attention_levels=[False, True], unet_layers=1, cross_attention_dim=32,
        attention_head_dim=4, frames_per_clip=2, motion_steps=2, frame_steps=2,
        prev_noise_max_step=prev_noise_max_step, media_frames=8, frame_renderer=renderer, frame_window=2,
        temporal_heads=4, **options)
    assert not cfg.validate(), cfg.validate()
    data = DataConfig(resolution=RES, clip_frames=WINDOW + CONTEXT, batch_size=2)
    return MotionDiffusionStage(cfg, data, frozen=frozen)


def make_batch(batch: int = 2, frames: int = WINDOW + CONTEXT, same_frames: bool = False) -> dict:
    pics = torch.rand(batch, 1 if same_frames else frames, 3, RES, RES) * 2 - 1
    truth = torch.rand(batch, frames, len(MOTION_TRUTH_COLUMNS)) * 2 - 1
    return {
        "key": [f"k{i}" for i in range(batch)], "speaker": [f"s{i}" for i in range(batch)],
        "speaker_index": torch.arange(batch), "valid": torch.ones(batch, dtype=torch.bool),
        "frames": pics.expand(-1, frames, -1, -1, -1).contiguous(),
        "landmarks": landmarks_grid(batch, frames), "audio": torch.randn(batch, 32000) * 0.1,
        "frame_start": torch.zeros(batch, dtype=torch.long),
        "motion_truth": truth, "has_motion_truth": torch.arange(batch) % 2 == 0,  # a synthetic clip, a real one
    }



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


def rerender_with_calls(stage: MotionDiffusionStage, frames: int) -> tuple[dict, torch.Tensor, list[dict]]:
    """(batch of 2 clips, their re-rendering, the frame denoiser's keyword arguments of every call)."""
    batch = make_batch(batch=2, frames=frames)
    calls: list = []
    handle = _capture(stage.frame_denoiser, calls)
    out = rerender_frames(stage.parts(), batch["frames"], batch["landmarks"],
                          batch["audio"][:, :frames * PER_FRAME], RES, generator=torch.Generator().manual_seed(0))
    handle.remove()
    return batch, out, calls


def test_rerendering_denoises_every_frame_from_its_own_motion_and_the_real_frames_before_it():
    stage = tiny_stage().eval()
    batch, out, calls = rerender_with_calls(stage, 3)
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
    landmarks = faces(2, 1)[:, 0]  # plausible faces: the lower face covers whole latent pixels
    latent = RES // stage.frozen.downsample
    weights = stage.mouth_weights(landmarks, latent)
    assert torch.equal(weights, torch.ones_like(weights))  # off by default
    stage.cfg.mouth_loss_weight = 4.0
    weights = stage.mouth_weights(landmarks, latent)
    from lightning_modules.nets.lip import lower_face_mask
    mask = torch.nn.functional.adaptive_avg_pool2d(lower_face_mask(landmarks, RES), latent)
    assert torch.allclose(weights, 1 + 4.0 * mask)
    assert weights.max() > 4.0 and weights.min() < 1.1


def other_map(maps: torch.Tensor, factor: int) -> torch.Tensor:
    """The non-lip map of :func:`landmark_maps` back at the frame's resolution [N, H, W]."""
    half = maps.shape[1] // 2
    return torch.nn.functional.pixel_shuffle(maps[:, half:], factor)[:, 0]


def test_landmark_maps_draw_pupils_where_the_gaze_looks_weighted_by_presence():
    size, factor = 64, 4
    face = face_landmarks(size)[None].expand(5, -1, -1)
    gaze = torch.tensor([[0.8, 0.0, 1.0], [-0.8, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, -1.0, 1.0], [0.8, 0.0, 0.5]])
    without = landmark_maps(face, size, factor)
    maps = landmark_maps(face, size, factor, gaze=gaze)
    assert maps.shape == without.shape == (5, map_channels(factor), size // factor, size // factor)
    half = map_channels(factor) // 2
    assert torch.equal(maps[:, :half], without[:, :half])  # the lips map has no pupils
    assert torch.equal(landmark_maps(face, size, factor, gaze=gaze * torch.tensor([1.0, 1.0, 0.0])), without)
    added = other_map(maps, factor) - other_map(without, factor)       # the pupil blobs alone
    assert added.min() >= 0
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    left = (xs < size / 2).float()  # the image-left eye's blob

    def centre(index: int) -> torch.Tensor:
        weight = added[index] * left
        return torch.stack([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()

    half_width = (face[0, 39, 0] - face[0, 36, 0]) / 2
    moved_x = centre(0)[0] - centre(1)[0]  # looking right vs looking left: 1.6 half widths apart
    assert 0.7 * 1.6 * half_width < moved_x < 1.3 * 1.6 * half_width, (moved_x, half_width)
    assert centre(2)[1] - centre(3)[1] > 1.0  # looking down vs up
    looking_right = face[0, 36:42].mean(0) + torch.tensor([0.8 * half_width, 0.0])
    assert torch.allclose(pupil_points(face[:1], gaze[:1])[0, 0], looking_right)
    assert 0 < added[4].max() < added[0].max()  # half present: a fainter blob


def test_the_frame_unet_maps_draw_the_gaze_the_motion_latent_decodes_to():
    stage = tiny_stage().eval()
    encoder, latent = stage.motion_encoder, RES // stage.frozen.downsample
    with torch.no_grad():
        encoder.decoders["eyes"][-1].bias[-1] = 5.0  # the decoded gaze is present
        motion = encoder(faces(1, 3)[0], RES)
        gaze = encoder.gaze(motion)
        maps = stage.parts().motion_maps(motion, latent)
        factor = stage.frozen.downsample
        expected = landmark_maps(encoder.landmarks(motion, RES), RES, factor, gaze=gaze)
    assert torch.equal(gaze[:, 2], torch.ones(3))
    assert torch.equal(maps, expected)
    assert not torch.equal(maps, landmark_maps(encoder.landmarks(motion, RES), RES, factor))


def test_the_stage_encodes_the_corpus_gaze_where_the_clip_has_motion_truth():
    stage = tiny_stage()
    batch = make_batch()  # clip 0 has motion truth, clip 1 (a real corpus) has none
    outputs: list = []
    handle = stage.motion_encoder.register_forward_hook(lambda module, args, out: outputs.append(out))
    torch.manual_seed(0)
    losses = stage.compute_losses(batch)
    batch["motion_truth"] = batch["motion_truth"].flip(-1)  # another gaze for both clips
    torch.manual_seed(0)
    stage.compute_losses(batch)
    handle.remove()
    first, second = (stage.motion_encoder.groups(out) for out in outputs)
    assert not torch.allclose(first["eyes"][0], second["eyes"][0])  # clip 0: its gaze is an input
    assert torch.equal(first["eyes"][1], second["eyes"][1])  # clip 1: no gaze, whatever the member holds
    assert all(torch.equal(first[name], second[name]) for name in first if name != "eyes")
    for name in LANDMARK_GROUPS:  # each group's reconstruction error is logged, not optimised
        assert losses[f"landmark_{name}"].shape == (2,) and stage.loss_weights[f"landmark_{name}"] == 0.0
    groups = torch.stack([losses[f"landmark_{name}"] for name in LANDMARK_GROUPS]).mean(0)
    assert torch.allclose(losses["landmark"], groups)
