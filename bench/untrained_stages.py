"""Every stage file that generation reads, untrained, at the network sizes of chosen experiment configs.

Speed does not depend on the weights, so the generation benchmark at paper scale builds its stages here from the
paper configs (the SD-sized portrait UNet, the SD VAE architecture, the 256 -> 512 codebook) instead of training
them. Each stage is built from its composed config exactly as ``seespeaker train`` builds it, then exported as
``seespeaker export`` writes it; the face prior is the mean latent of random images through that VAE.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from lightning_modules.stagefile import StageFile, save_stage_file

PAPER = {"stage1": "paper_stage1", "stage2": "paper_stage2", "codebook": "paper_codebook"}
TINY = {"stage1": "tiny", "stage2": "tiny", "codebook": "tiny"}
# stage -> experiment group, in the order each reads the ones before it
GROUPS = {"conre": "stage1", "autoencoder": "stage1", "portrait_diffusion": "stage1", "saw": "stage1",
          "syncnet": "stage2", "motion_diffusion": "stage2", "lip_enhancer": "stage2", "codebook": "codebook"}
SD_SCALING = 0.18215
PRIOR_IMAGES = 8


def stage_words(stage: str, folder: Path, experiments: dict[str, str]) -> list[str]:
    words = [f"experiment={experiments[GROUPS[stage]]}", f"stage={stage}", f"run.stages_dir={folder}",
             "tracking=disabled"]
    if stage == "autoencoder":
        words.append("stage.vae.pretrained_path=''")  # the configured architecture, randomly initialised
    return words


def write_face_prior(folder: Path, resolution: int) -> None:
    from lightning_modules.autoencoder import AutoencoderStage
    from lightning_modules.prior import compute_face_prior
    from lightning_modules.stagefile import StageFiles

    vae = AutoencoderStage.for_inference(StageFiles(folder))
    images = torch.rand(PRIOR_IMAGES, 3, resolution, resolution) * 2 - 1
    with torch.no_grad():
        latents = [vae.encode(images[i:i + 2]) for i in range(0, PRIOR_IMAGES, 2)]
    compute_face_prior(latents, vae.vae_hash, shards=["random images"]).save(folder / "face_prior.safetensors")


def build_untrained_stages(folder: Path, experiments: dict[str, str] = PAPER, log=print,
                           only: set[str] | None = None) -> Path:
    """Write conre ... codebook (render phase) and the face prior into ``folder`` (those in ``only`` where given);
    existing files are kept."""
    from trainer.config import compose
    from trainer.factory import build_module

    folder.mkdir(parents=True, exist_ok=True)
    for stage in GROUPS:
        path = folder / f"{stage}.safetensors"
        if only is not None and stage not in only:
            continue
        if not path.is_file():
            cfg = compose(stage_words(stage, folder, experiments))
            module = build_module(cfg)
            phase = ""
            if stage == "autoencoder":
                module.scaling_factor.fill_(SD_SCALING)
            if stage == "codebook":
                module.set_phase(phase := "render")
            params = sum(p.numel() for p in module.parameters()) / 1e6
            save_stage_file(path, StageFile(stage=stage, state=module.state_dict(), config=asdict(module.cfg),
                                            phase=phase, provenance={"untrained": True}))
            log(f"built {stage} ({experiments[GROUPS[stage]]}, {params:.1f} M parameters)")
            del module
        if stage == "autoencoder" and not (folder / "face_prior.safetensors").is_file():
            write_face_prior(folder, compose(stage_words(stage, folder, experiments)).data.resolution)
    return folder
