"""The windowed frame renderer: frames of a window attend to each other, windows continue from their motion frames."""
from __future__ import annotations

import torch

from lightning_modules.motion_diffusion import MotionDiffusionConfig
from lightning_modules.motion_generation import generate_motion_video
from lightning_modules.stagefile import config_from_dict
from tests.unit.test_motion_diffusion import PER_FRAME, RES, make_batch, rerender_with_calls, tiny_stage

K, T = 2, 2  # tiny_stage's previous_frames and frame_window


def _capture(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    """Record every call's arguments, the positional ``noisy`` and ``timestep`` by name."""
    def record(_, args, kwargs):
        store.append({**kwargs, **dict(zip(("noisy", "timestep"), args, strict=False))})
    return module.register_forward_pre_hook(record, with_kwargs=True)


def windowed(**options):
    return tiny_stage(renderer="windowed", **options)


def open_temporal_layers(stage) -> None:
    """Give every temporal layer a non-zero output projection (they start as the identity)."""
    torch.manual_seed(3)
    for layer in stage.frame_denoiser.temporal:
        torch.nn.init.normal_(layer.attention.out_proj.weight, std=0.5)


def denoise(stage, noisy: torch.Tensor, frames: int) -> torch.Tensor:
    n, latent = len(noisy), noisy.shape[1:]
    maps = stage.frame_denoiser.unet.config.in_channels - (2 + K) * latent[0]
    return stage.frame_denoiser(noisy, torch.full((n,), 500), portrait=torch.zeros(n, *latent),
                                previous=torch.zeros(n, K * latent[0], *latent[1:]),
                                prev_noise_step=torch.zeros(n, dtype=torch.long), motion=torch.zeros(n, 24),
                                audio=torch.zeros(n, 5, 320), maps=torch.zeros(n, maps, *latent[1:]),
                                frames=frames)


def test_new_temporal_layers_pass_frames_through_and_trained_ones_mix_only_frames_of_one_window():
    stage = windowed().eval()
    noisy = torch.randn(8, 4, RES // 4, RES // 4)
    with torch.no_grad():
        assert torch.allclose(denoise(stage, noisy, 4), denoise(stage, noisy, 1), atol=1e-6)
        open_temporal_layers(stage)
        before = denoise(stage, noisy, 4)
        moved = noisy.clone()
        moved[0] += 1.0  # frame 0 of the first window
        after = denoise(stage, moved, 4)
    assert (after[1:4] - before[1:4]).abs().max() > 1e-3  # the window's other frames see it
    assert torch.allclose(after[4:], before[4:], atol=1e-6)  # the second window does not


def test_generation_denoises_whole_windows_continuing_from_the_last_latents_of_the_window_before():
    stage = windowed().eval()
    n_frames = 2 * T + 1  # three windows, the last one short
    audio = torch.randn(max(n_frames, stage.cfg.window_frames) * PER_FRAME + 100) * 0.1
    calls: list = []
    handle = _capture(stage.frame_denoiser, calls)
    frames, _, latents = generate_motion_video(stage.parts(), torch.rand(3, RES, RES) * 2 - 1, audio,
                                               generator=torch.Generator().manual_seed(0), return_latents=True)
    handle.remove()
    steps, count = stage.cfg.frame_steps, len(frames)
    windows = -(-count // T)
    assert len(calls) == windows * steps  # one UNet call per window and step, not per frame
    assert all(c["frames"] == K + T and len(c["motion"]) == K + T for c in calls)
    assert all(int(c["prev_noise_step"].max()) == 0 for c in calls)
    portrait = calls[0]["portrait"][0]
    assert torch.equal(calls[0]["previous"][0], torch.cat([portrait] * K))  # before the video: the portrait
    for window in range(1, windows):
        start = window * T
        call = calls[window * steps]
        assert torch.equal(call["previous"][0], torch.cat(list(latents[start - K:start])))
        assert torch.equal(call["previous"][0], call["previous"][-1])  # every frame of the window sees them
        assert torch.allclose(call["noisy"][:K].flatten(0, 1), call["previous"][0])  # and as the first K tokens


def test_training_renders_windows_from_augmented_motion_frames_or_the_portrait():
    stage = windowed(prev_noise_max_step=900, frame_windows=1)
    batch = make_batch(batch=4)
    calls: list = []
    handle = _capture(stage.frame_denoiser, calls)
    losses = stage.compute_losses(batch)
    handle.remove()
    kwargs = calls[0]
    assert len(kwargs["motion"]) == K + T and kwargs["frames"] == K + T  # one window, from the first clip
    assert losses["frame"].shape == (4,) and losses["frame"][1:].eq(0).all() and losses["frame"][0] > 0
    step = int(kwargs["prev_noise_step"][0])
    assert kwargs["prev_noise_step"].eq(step).all() and kwargs["timestep"][:K].eq(step).all()
    stage = windowed(prev_noise_max_step=0, first_window_probability=1.0)
    batch = make_batch(batch=2, same_frames=True)
    calls.clear()
    handle = _capture(stage.frame_denoiser, calls)
    stage.compute_losses(batch)
    handle.remove()
    kwargs = calls[0]
    assert torch.allclose(kwargs["previous"], kwargs["portrait"].repeat(1, K, 1, 1), atol=1e-6)


def test_the_frame_change_loss_charges_a_frozen_window_the_true_change_and_a_constant_error_nothing():
    stage = windowed(prediction_type="sample", temporal_loss_weight=0.5)
    frozen = stage.frame_denoiser.register_forward_hook(lambda module, args, out: torch.zeros_like(out))
    still = stage.compute_losses(make_batch(batch=2, same_frames=True))
    moving = stage.compute_losses(make_batch(batch=2))
    frozen.remove()
    assert still["frame"].gt(0).all() and still["frame_change"].abs().max() < 1e-8
    assert moving["frame_change"].gt(1e-4).all()
    assert stage.loss_weights["frame_change"] == 0.5
    assert windowed().loss_weights["frame_change"] == 0.0  # logged, not optimised, unless asked for
    errors = MotionDiffusionConfig(frame_renderer="sequential", temporal_loss_weight=0.5).validate()
    assert any("stage.temporal_loss_weight" in error for error in errors)


def test_rerendering_by_windows_starts_each_window_from_the_real_latents_before_it():
    stage = windowed().eval()
    batch, out, calls = rerender_with_calls(stage, 5)
    assert out.shape == batch["frames"].shape
    assert len(calls) == stage.cfg.frame_steps  # every window of both clips in one batched run
    latents = stage.frozen.encode(batch["frames"].flatten(0, 1)).view(2, 5, -1, RES // 4, RES // 4)
    previous = calls[-1]["previous"].view(2, 3, K + T, -1, RES // 4, RES // 4)  # clip, window, image
    assert torch.allclose(previous[1, 0, 0], torch.cat([latents[1, 0]] * K), atol=1e-6)
    assert torch.allclose(previous[1, 2, 0], torch.cat([latents[1, 2], latents[1, 3]]), atol=1e-6)


def test_window_settings_are_checked_and_files_without_them_are_sequential():
    cfg = MotionDiffusionConfig(window_frames=8, frame_window=3)
    assert any("frame_window=3 must divide stage.window_frames=8" in e for e in cfg.validate())
    cfg = MotionDiffusionConfig(window_frames=8, frame_window=4, unet_channels=[48, 96], temporal_heads=5)
    assert any("temporal_heads=5" in e for e in cfg.validate())
    saved = {k: v for k, v in vars(MotionDiffusionConfig()).items() if k not in
             ("frame_renderer", "frame_window", "frame_windows", "first_window_probability", "temporal_heads",
              "gradient_checkpointing")}
    old = config_from_dict(MotionDiffusionConfig, saved, "old.safetensors", "stage")
    assert old.frame_renderer == "sequential" and not old.windowed and not old.validate()


def test_a_baseline_renderer_trains_on_the_frozen_motion_of_another_stage_file(tmp_path):
    from types import SimpleNamespace

    from tests.unit.stage1_helpers import export
    from trainer.keys import file_digest, input_identity

    source = export(windowed(seed=1), tmp_path / "windowed" / "motion_diffusion.safetensors")
    baseline = tiny_stage(seed=2, motion_from=str(source))
    loaded = windowed(seed=1)
    for name in ("motion_encoder", "motion_denoiser"):
        theirs, ours = getattr(loaded, name).state_dict(), getattr(baseline, name).state_dict()
        assert all(torch.equal(theirs[k], ours[k]) for k in theirs)
    trainable = {id(p) for p in baseline.trainable_parameters()}
    assert not any(id(p) in trainable for p in baseline.motion_encoder.parameters())
    assert any(id(p) in trainable for p in baseline.frame_denoiser.parameters())
    losses = baseline.compute_losses(make_batch())
    assert baseline.reduce_losses(losses, None).requires_grad and baseline.loss_weights["motion"] == 0
    cfg = SimpleNamespace(stage=baseline.cfg, run=SimpleNamespace(stages_dir=str(tmp_path)))
    assert input_identity(cfg)["motion_from"] == file_digest(source)  # the source file is in the training key
