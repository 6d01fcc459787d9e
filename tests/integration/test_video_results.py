"""The video table's evaluation on untrained tiny stages: identical motion for both renderers, every row through one
measurement path, the truth scoring itself as perfect, the renderers' UNet calls per frame."""
from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch

from datamodules.config import DataConfig
from lightning_modules.motion_diffusion import MotionDiffusionStage
from reports import results_video_eval
from tests.integration.tiny_stages import make_generation_stages, tiny_motion
from tests.unit.stage1_helpers import export


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    stages = make_generation_stages(root / "stages")
    baseline = root / "sequential"
    baseline.mkdir()
    for name in ("conre", "autoencoder"):
        shutil.copy2(stages / f"{name}.safetensors", baseline)
    cfg = dataclasses.replace(tiny_motion(), frame_renderer="sequential",
                              motion_from=str(stages / "motion_diffusion.safetensors"))
    torch.manual_seed(5)
    export(MotionDiffusionStage(cfg, DataConfig(resolution=64, clip_frames=10), str(baseline)),
           baseline / "motion_diffusion.safetensors")
    return stages, baseline


def test_both_renderers_draw_the_same_motion_and_every_row_is_scored_alike(chains, synthetic_corpus, tmp_path,
                                                                          monkeypatch):
    stages, baseline = chains
    monkeypatch.setattr(results_video_eval, "CLIPS", 2)
    monkeypatch.setattr(results_video_eval, "IMAGE", tmp_path / "join.png")
    monkeypatch.setattr(results_video_eval, "LONG_SECONDS", 6.0)
    data = DataConfig(root=str(synthetic_corpus), resolution=64, clip_frames=10, batch_size=2)
    drawn = []
    original = results_video_eval.render_frames
    monkeypatch.setattr(results_video_eval, "render_frames",
                        lambda parts, portrait, motion, *rest: drawn.append(motion) or original(parts, portrait,
                                                                                               motion, *rest))
    result = results_video_eval.evaluate_seed(stages, baseline, data, stages / "syncnet.safetensors", seed=0)
    # per clip: the sampled motion drawn by both renderers, then the real landmarks' motion by the windowed one
    assert torch.equal(drawn[0], drawn[1]) and torch.equal(drawn[3], drawn[4])
    assert not torch.equal(drawn[0], drawn[2]) and drawn[2].shape == drawn[0].shape
    keys = set(result["speakers"])
    assert len(keys) == 2 and all(set(result["per_clip"][row]) == keys for row in results_video_eval.ROWS)
    for values in result["per_clip"]["truth"].values():  # the truth measured against itself
        assert values["temporal_consistency"] == 0 and values["seam_ratio"] > 0
        assert values["lips_error"] == 0 or math.isnan(values["lips_error"])  # NaN: too few faces found
        assert math.isfinite(values["lse_c"])
    generated = result["per_clip"]["windowed"]
    assert all(v["temporal_consistency"] > 0 for v in generated.values())
    calls = result["denoiser_calls_per_frame"]
    steps = tiny_motion().frame_steps
    assert calls["sequential"] == steps and calls["windowed"] == pytest.approx(math.ceil(50 / 4) * steps / 50)
    assert (tmp_path / "join.png").is_file()
    long = result["long_speech"]  # 6 s of a fresh clip of the first test speaker: two 5 s segments per row
    assert set(long) == {"windowed", "sequential", "truth"} and all(len(v["colour"]) == 2 for v in long.values())
    assert len(drawn) == 6 + 2 and drawn[-1].shape[1] == 150 and torch.equal(drawn[-1], drawn[-2])


def test_generation_makes_under_2_5_denoiser_calls_per_output_frame(chains):
    """At the tiny experiment's frame steps (5) and a 20-step portrait, 2 s of speech: the windowed renderer's
    13 windows x 5 steps + 20 = 85 calls for 50 frames (one call per frame and step made it 270)."""
    from generation.pipeline import GenerationOptions, TalkingFacePipeline

    stages, _ = chains
    pipeline = TalkingFacePipeline(stages, GenerationOptions(steps=20, frame_steps=5, codebook=False))
    calls = {"portrait": 0, "frame": 0, "motion": 0}
    counters = {"portrait": pipeline.portraits.denoiser, "frame": pipeline.motion.frame_denoiser,
                "motion": pipeline.motion.motion_denoiser}
    for name, module in counters.items():
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    speech = torch.randn(32000) * 0.1
    portrait = pipeline.portrait(speech, {})
    frames, _ = pipeline.video(portrait, speech, {}, lambda step: None)
    assert len(frames) == 50 and calls["portrait"] == 20 and calls["frame"] == 13 * 5
    assert (calls["portrait"] + calls["frame"]) / len(frames) <= 2.5


def test_bf16_generation_runs_the_networks_in_bf16_and_returns_float32_frames(chains):
    from generation.pipeline import GenerationOptions, TalkingFacePipeline

    stages, _ = chains
    speech = torch.randn(16000) * 0.1
    outputs, dtypes = {}, []
    for precision in ("fp32", "bf16"):
        pipeline = TalkingFacePipeline(stages, GenerationOptions(steps=4, frame_steps=2, codebook=False,
                                                                 precision=precision))
        conv = pipeline.motion.frame_denoiser.unet.conv_in
        handle = conv.register_forward_hook(lambda _, __, out: dtypes.append(out.dtype))
        portrait = pipeline.portrait(speech, {})
        outputs[precision] = pipeline.video(portrait, speech, {}, lambda step: None)[0]
        handle.remove()
    assert dtypes[0] == torch.float32 and dtypes[-1] == torch.bfloat16
    assert outputs["bf16"].dtype == torch.float32 and outputs["bf16"].isfinite().all()
    assert (outputs["bf16"] - outputs["fp32"]).abs().mean() < 0.05  # the same video, to bf16's precision
