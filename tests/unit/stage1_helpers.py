"""Tiny Stage-1 building blocks shared by the stage-1 unit tests: synthetic batches and exported stage files."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from datamodules.config import DataConfig
from lightning_modules.autoencoder import AutoencoderConfig, AutoencoderStage, VAEConfig
from lightning_modules.conre import ConReConfig, ConReStage
from lightning_modules.nets.portrait_denoiser import UNetConfig
from lightning_modules.portrait_diffusion import PortraitDiffusionConfig
from lightning_modules.prior import compute_face_prior
from lightning_modules.saw import SAWConfig
from lightning_modules.stagefile import StageFile, StageFiles, save_stage_file

RESOLUTION = 32
AUDIO_SAMPLES = 8000


def tiny_data(resolution: int = RESOLUTION) -> DataConfig:
    return DataConfig(resolution=resolution, batch_size=4, audio_seconds=AUDIO_SAMPLES / 16000)


def tiny_conre() -> ConReConfig:
    return ConReConfig(embed_dim=32, speech_width=32, speech_layers=2, face_channels=[8, 16])


def tiny_autoencoder() -> AutoencoderConfig:
    vae = VAEConfig(block_out_channels=[16, 32, 32], layers_per_block=1, latent_channels=4, norm_num_groups=8,
                    mid_block_attention=False)
    return AutoencoderConfig(vae=vae, lr=1e-3, scale_batches=2)


def tiny_portrait(**overrides) -> PortraitDiffusionConfig:
    unet = UNetConfig(block_out_channels=[32, 64], attention_levels=[False, True], layers_per_block=1,
                      cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    return PortraitDiffusionConfig(unet=unet, lr=1e-3, sample_steps=4, media_samples=2, **overrides)


def tiny_saw(**overrides) -> SAWConfig:
    settings = {"hidden_dim": 16, "lr": 1e-3, "sample_steps": 3, "media_samples": 2, "samples_per_clip": 2,
                "cache_steps": 2} | overrides
    return SAWConfig(**settings)


def synthetic_batch(batch_size: int = 4, resolution: int = RESOLUTION, seed: int = 0) -> dict:
    """A batch in the training format: faces with per-speaker colour, speech with per-speaker pitch."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(AUDIO_SAMPLES) / 16000
    speakers = torch.arange(batch_size) % 3
    audio = torch.stack([0.3 * torch.sin(2 * torch.pi * (120 + 60 * s) * t)
                         + 0.01 * torch.randn(AUDIO_SAMPLES, generator=g)
                         for s in speakers.tolist()])
    base = torch.linspace(-1, 1, resolution)
    face = base[None, :, None] * base[None, None, :]
    frames = torch.stack([(face * (0.3 + 0.2 * s)
                           + 0.1 * torch.randn(3, resolution, resolution, generator=g)).clamp(-1, 1)
                          for s in speakers.tolist()])[:, None]
    return {
        "key": [f"synthetic-s{s}-v0-{i}" for i, s in enumerate(speakers.tolist())],
        "speaker": [f"s{s}" for s in speakers.tolist()],
        "speaker_index": speakers.long(),
        "frames": frames.float(),
        "landmarks": torch.zeros(batch_size, 1, 68, 2),
        "audio": audio.float(),
        "frame_start": torch.zeros(batch_size, dtype=torch.long),
        "valid": torch.ones(batch_size, dtype=torch.bool),
    }


def export(module, path: Path) -> Path:
    """Write a module as an exported stage file (fp32 weights + config), as ``seespeaker export`` does."""
    return save_stage_file(path, StageFile(stage=module.cfg.name, state=module.state_dict(), config=asdict(module.cfg)))


def make_stage1_inputs(stages_dir: Path, resolution: int = RESOLUTION, seed: int = 0) -> dict:
    """Untrained conre + autoencoder stage files and a face prior in ``stages_dir``."""
    torch.manual_seed(seed)
    stages_dir.mkdir(parents=True, exist_ok=True)
    data = tiny_data(resolution)
    export(ConReStage(tiny_conre(), data), stages_dir / "conre.safetensors")
    auto = AutoencoderStage(tiny_autoencoder(), data)
    auto.scaling_factor.fill_(0.5)
    export(auto, stages_dir / "autoencoder.safetensors")
    vae = AutoencoderStage.for_inference(StageFiles(stages_dir))
    with torch.no_grad():
        latents = [vae.encode(synthetic_batch(4, resolution, seed=i)["frames"][:, 0]) for i in range(2)]
    compute_face_prior(latents, vae.vae_hash, shards=["synthetic"]).save(stages_dir / "face_prior.safetensors")
    return {"data": data, "vae_hash": vae.vae_hash}


def portrait_from_speech(audio, sample_rate: int, folder, steps: int = 3, guidance: float = 3.0, seed: int = 0,
                         use_saw: bool = True, prior_weight: float | None = None):
    """One uint8 portrait through generation's own path: the speech made ready, then the PortraitGenerator."""
    from common.images import to_uint8
    from generation.portrait import PortraitGenerator
    from generation.speech import prepare_speech
    speech = prepare_speech(audio, sample_rate)
    return to_uint8(PortraitGenerator(folder, use_saw, prior_weight=prior_weight).generate(speech, steps, guidance,
                                                                                          seed))
