"""The Stage-1 configs compose at every scale; the paper-scale networks construct (meta device) at SD size."""
from __future__ import annotations

import pytest
import torch

from lightning_modules.autoencoder import AutoencoderStage, build_vae
from lightning_modules.conre import build_speech_encoder
from lightning_modules.nets.portrait_denoiser import PortraitDenoiser
from lightning_modules.saw import SampleAdaptiveWeighting
from lightning_modules.stagefile import StageFileError
from trainer.config import compose


def paper(stage: str):
    return compose(["experiment=paper_stage1", f"stage={stage}"])


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_portrait_denoiser_is_sd_sized_and_runs_on_meta():
    cfg, conre = paper("portrait_diffusion"), paper("conre")
    assert cfg.data.resolution == 256 and cfg.stage.unet.block_out_channels == [320, 640, 1280, 1280]
    with torch.device("meta"):
        model = PortraitDenoiser(cfg.stage.unet, build_speech_encoder(conre.stage), latent_channels=4,
                                 latent_size=32)
        assert 850e6 < count(model.unet) < 880e6
        context = torch.randn(1, 101, cfg.stage.unet.cross_attention_dim)
        out = model(torch.randn(1, 4, 32, 32), torch.tensor([500]), context)
    assert out.shape == (1, 4, 32, 32) and out.device.type == "meta"


def test_paper_vae_maps_256_px_to_4x32x32_and_needs_a_local_path():
    cfg = paper("autoencoder")
    with torch.device("meta"):
        vae = build_vae(cfg.stage.vae)
        latent = vae.encode(torch.randn(1, 3, 256, 256)).latent_dist.mode()
    assert latent.shape == (1, 4, 32, 32)
    assert 80e6 < count(vae) < 90e6  # the SD VAE
    cfg.stage.vae.pretrained_path = "/nonexistent/sd-vae"
    with pytest.raises(StageFileError, match="/nonexistent/sd-vae.*local diffusers VAE folder"):
        AutoencoderStage(cfg.stage, cfg.data)


def test_paper_saw_and_stage_choices():
    cfg, conre = paper("saw"), paper("conre")
    saw = SampleAdaptiveWeighting(conre.stage.embed_dim, 4, cfg.stage.hidden_dim, 0.5)
    a = saw(torch.randn(3, conre.stage.embed_dim), torch.tensor([[2.0, 40.0], [1.0, 10.0], [0.5, 0.0]]))
    assert a.shape == (3, 4) and torch.all((a > 0) & (a < 1))
    assert (cfg.stage.samples_per_clip, cfg.stage.cache_steps, cfg.data.speaker_part) == (4, 25, "0/5")
    portrait = paper("portrait_diffusion").stage
    assert (portrait.prediction_type, portrait.loss_weighting, portrait.snr_gamma) == ("epsilon", "min_snr", 5.0)


@pytest.mark.parametrize("experiment", ["tiny", "small"])
def test_cpu_scales_keep_attention_at_16px_or_below(experiment):
    auto = compose([f"experiment={experiment}", "stage=autoencoder"])
    portrait = compose([f"experiment={experiment}", "stage=portrait_diffusion"])
    assert auto.stage.vae.pretrained_path == "" and not auto.stage.vae.mid_block_attention
    latent = portrait.data.resolution // 2 ** (len(auto.stage.vae.block_out_channels) - 1)
    for level, attention in enumerate(portrait.stage.unet.attention_levels):
        assert not attention or latent // 2 ** level <= 16
    with torch.device("meta"):
        unet_params = count(PortraitDenoiser(portrait.stage.unet, build_speech_encoder(compose(
            [f"experiment={experiment}", "stage=conre"]).stage), 4, latent).unet)
    assert unet_params < 5e6


def test_paper_codebook_1024_builds_on_paper_codebook():
    base = compose(["experiment=paper_codebook", "stage=codebook"])
    wide = compose(["experiment=paper_codebook_1024", "stage=codebook"])
    assert (wide.data.hr_resolution, wide.data.batch_size) == (1024, 4)
    assert wide.stage.channel_multipliers == [1, 1, 2, 2, 4, 4, 8]  # one more VQ level: 16 x 16 tokens at 1024 px
    assert wide.trainer == base.trainer and wide.tracking == base.tracking  # set only in paper_codebook.yaml
    assert (wide.data.resolution, wide.data.clip_frames) == (base.data.resolution, base.data.clip_frames)


def test_the_paper_chain_shares_one_stages_folder_and_the_1024_codebook_keeps_its_own():
    folders = {compose([f"experiment={e}", f"stage={s}"]).run.stages_dir
               for e, s in (("paper_stage1", "conre"), ("paper_stage1", "saw"), ("paper_stage2", "motion_diffusion"),
                            ("paper_codebook", "codebook"))}
    assert folders == {"outputs/paper/stages"}  # motion_diffusion and the codebook read conre from there
    wide = compose(["experiment=paper_codebook_1024", "stage=codebook"])
    assert wide.run.stages_dir == "outputs/paper_codebook_1024/stages"  # never over the 512 px codebook file
    assert compose(["experiment=paper_stage2", "stage=syncnet"]).run.dir == "outputs/paper/syncnet"


def test_a_network_built_on_meta_leaves_no_meta_tensor_in_the_feature_caches():
    from lightning_modules.nets.audio_features import mel_filterbank
    mel_filterbank.cache_clear()
    tiny = compose(["experiment=tiny", "stage=conre"]).stage
    with torch.device("meta"):
        build_speech_encoder(tiny)
    real = build_speech_encoder(tiny)  # the cached filterbank is handed to it
    assert not any(t.is_meta for t in [*real.parameters(), *real.buffers()])
