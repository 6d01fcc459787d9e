"""The generation benchmark's untrained stages: built from the experiment configs, they are what generation reads."""
from __future__ import annotations

import torch

from bench.untrained_stages import SD_SCALING, TINY, build_untrained_stages
from generation.pipeline import required_files
from lightning_modules.autoencoder import AutoencoderStage
from lightning_modules.prior import FacePrior
from lightning_modules.stagefile import StageFiles, load_stage_file
from trainer.config import compose


def test_untrained_stages_follow_their_configs_and_cover_generation(tmp_path):
    folder = build_untrained_stages(tmp_path / "stages", TINY, log=lambda line: None)
    files = required_files(folder, portrait_only=False)  # raises when any file generation reads is missing
    assert set(files) == {"conre", "autoencoder", "portrait_diffusion", "saw", "motion_diffusion", "lip_enhancer",
                          "codebook"}
    portrait = load_stage_file(files["portrait_diffusion"], expect_stage="portrait_diffusion")
    wanted = compose(["experiment=tiny", "stage=portrait_diffusion"]).stage.unet.block_out_channels
    assert portrait.config["unet"]["block_out_channels"] == list(wanted)
    assert load_stage_file(files["codebook"]).phase == "render"
    vae, scaling, vae_hash = AutoencoderStage.for_inference(StageFiles(folder))
    assert float(scaling) == torch.tensor(SD_SCALING).item()
    FacePrior.load(folder / "face_prior.safetensors", expect_vae_hash=vae_hash)  # made with this VAE
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    build_untrained_stages(folder, TINY, log=lambda line: None)  # a second call keeps what is there
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_generation_row_times_the_first_frame_before_the_whole_video(tmp_path):
    """The pipeline streams chunks of frames to the mp4 writer: the first frames arrive while later ones render."""
    from bench.generate_bench import pipeline_row
    from common.media import read_mp4
    from generation.pipeline import GenerationOptions

    folder = build_untrained_stages(tmp_path / "stages", TINY, log=lambda line: None)
    options = GenerationOptions(steps=2, motion_steps=2, frame_steps=1, seed=0, device="cpu", batch_frames=8)
    row = pipeline_row(folder, tmp_path, options, seconds=2.6)
    assert row["frames"] == 65 and len(read_mp4(tmp_path / "bench.mp4")[0]) == 65
    assert 0 < row["s_first_frame"] < 0.5 * row["seconds"]  # 9 chunks of 8 frames: the first is early
    steps = sum(v for k, v in row.items() if k.startswith("s_") and k not in ("s_first_frame", "s_load_stages"))
    assert steps <= row["seconds"] * 1.05  # the step timings partition the generation, loading apart
