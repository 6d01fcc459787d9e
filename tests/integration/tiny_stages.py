"""Every exported stage file that ``seespeaker generate`` reads, built small and fast: untrained Stage-1 and
Stage-2 networks exported as ``seespeaker export`` writes them (generation's wiring, not its quality, is what the
generate tests measure), and the codebook trained phase by phase through the CLI."""
from __future__ import annotations

from pathlib import Path

from datamodules.config import DataConfig
from lightning_modules.lip_enhancer import LipEnhancerConfig, LipEnhancerStage
from lightning_modules.motion_diffusion import MotionDiffusionConfig, MotionDiffusionStage
from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.saw import SAWStage
from lightning_modules.syncnet import SyncNetConfig, SyncNetStage
from tests.unit.stage1_helpers import export, make_stage1_inputs, tiny_portrait, tiny_saw

RESOLUTION = 64
CODEBOOK_WORDS = ["stage.base_channels=4", "stage.codebook_size=32", "stage.code_dim=16", "stage.transformer_layers=1",
                  "stage.transformer_width=32", "data.batch_size=2", "trainer.max_steps=2",
                  "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "trainer.checkpoint_every_n_steps=0",
                  "trainer.ema_decay=0", "tracking=disabled"]


def tiny_motion() -> MotionDiffusionConfig:
    return MotionDiffusionConfig(
        window_frames=8, context_frames=2, previous_frames=1, frame_window=4, temporal_heads=4, lips_dim=8,
        jaw_dim=4, brows_dim=4, eyes_dim=4, pose_dim=4,
        encoder_hidden=32, transformer_width=32, transformer_layers=1, transformer_heads=2, unet_channels=[16, 32],
        unet_layers=1, attention_levels=[False, True], cross_attention_dim=32, attention_head_dim=4, motion_steps=2,
        frame_steps=2)


def make_generation_stages(stages_dir: Path, seed: int = 0) -> Path:
    """conre, autoencoder, face prior, portrait_diffusion, saw, motion_diffusion, syncnet, lip_enhancer (untrained,
    64 px) in ``stages_dir``; the codebook comes from :func:`codebook_train_words`."""
    info = make_stage1_inputs(stages_dir, resolution=RESOLUTION, seed=seed)
    data, root = info["data"], str(stages_dir)
    export(PortraitDiffusionStage(tiny_portrait(), data, root), stages_dir / "portrait_diffusion.safetensors")
    export(SAWStage(tiny_saw(), data, root), stages_dir / "saw.safetensors")
    clips = DataConfig(resolution=RESOLUTION, clip_frames=10, batch_size=2)
    motion = MotionDiffusionStage(tiny_motion(), clips, root)
    export(motion, stages_dir / "motion_diffusion.safetensors")
    sync_cfg = SyncNetConfig(layout="compact", embedding_dim=32, width=8, input_size=RESOLUTION, max_offset=2)
    export(SyncNetStage(sync_cfg, DataConfig(resolution=RESOLUTION, clip_frames=10)),
           stages_dir / "syncnet.safetensors")
    lips = LipEnhancerStage(LipEnhancerConfig(channels=[8, 16], cond_dim=16, discriminator_channels=[8]),
                            DataConfig(resolution=RESOLUTION, clip_frames=7), root)
    export(lips, stages_dir / "lip_enhancer.safetensors")
    return stages_dir


def codebook_train_words(corpus: Path, output_root: Path, phase: str) -> list[str]:
    """The `seespeaker train` words of one tiny codebook phase (a few steps: the wiring, not the learning)."""
    return ["train", "experiment=tiny", "stage=codebook", f"stage.phase={phase}", f"run.name={phase}",
            f"data.root={corpus}", f"experiment.output_root={output_root}", *CODEBOOK_WORDS]
