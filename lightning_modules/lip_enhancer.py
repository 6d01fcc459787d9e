"""Stage 2b: region enhancement of the mouth, synchronised by the frozen sync expert.

Training data (``input_source``): real clips whose mouths are degraded (each frame's lower face replaced by the
blurred lower face of another frame of the clip; then only the ``syncnet`` stage is needed), or (``motion``) the
exported motion stage's rendering of each real clip (:mod:`lightning_modules.motion_rerender`), the frames the
enhancer refines at generation time (:func:`refine_video`); the targets are the real frames either way.
Losses, per sample:

- ``recon``: L1 inside the lower-face mask, normalised by the mask area;
- ``feature``: distance between the frozen expert's video embeddings of the refined and the real windows
  (a perceptual loss in the sync expert's feature space);
- ``sync``: cross-entropy over audio offsets -K..K with logits ``-||v - a_k|| / tau``, target the in-sync offset;
- ``adversarial`` (``adversarial=true``): hinge GAN on the lower face; two optimizers with manual optimisation,
  so DeepSpeed refuses it, and Lightning's own clipping must be off (``trainer.gradient_clip_val=0``; the stage
  clips each optimizer's gradients itself by ``adversarial_grad_clip``).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from common.images import to_uint8
from common.media import write_mp4
from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.media_strip import frame_strip
from lightning_modules.motion_rerender import MotionRerender
from lightning_modules.nets.audio_features import LogMel
from lightning_modules.nets.lip import LipRefiner, PatchDiscriminator, degrade_mouths, lower_face_mask
from lightning_modules.nets.motion import audio_context, check_landmarks, per_frame_audio
from lightning_modules.nets.syncnet import WINDOW_FRAMES, SyncExpert
from lightning_modules.stagefile import StageFiles
from lightning_modules.syncnet import SyncNetStage, offset_sync_loss, sync_region, video_windows_at

INPUT_SOURCES = ("degraded", "motion")


@dataclass
class LipEnhancerConfig(StageConfig):
    """The mouth refiner's size and its loss mix."""

    name: str = "lip_enhancer"
    channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512], metadata={"help": "refiner UNet widths"})
    cond_dim: int = field(default=256, metadata={"help": "audio conditioning width"})
    audio_radius: int = field(default=2,
                              metadata={"help": "audio of this many neighbouring frames each side conditions a frame"})
    n_mels: int = field(default=80, metadata={"help": "log-mel bins of the audio conditioning"})
    mask_feather: float = field(default=0.04, metadata={"help": "mask edge softness as a fraction of the frame size"})
    recon_weight: float = field(default=1.0, metadata={"help": "weight of the mask-weighted L1"})
    feature_weight: float = field(default=0.1,
                                  metadata={"help": "weight of the expert-feature (perceptual) loss; 0: off"})
    sync_weight: float = field(default=0.3, metadata={"help": "weight of the sync expert's offset cross-entropy"})
    sync_max_offset: int = field(default=5, metadata={"help": "offsets -K..K of the sync loss (K = this)"})
    sync_temperature: float = field(default=1.0, metadata={"help": "tau of the sync logits -distance / tau"})
    sync_windows: int = field(default=2, metadata={"help": "five-frame windows per clip for the sync loss"})
    adversarial: bool = field(default=False, metadata={"help": "add a patch GAN (two optimizers: DDP only)"})
    adversarial_weight: float = field(default=0.05, metadata={"help": "weight of the generator's hinge loss"})
    adversarial_grad_clip: float = field(default=1.0, metadata={"help": "gradient norm clip of both optimizers with "
                                         "adversarial=true (the stage clips itself: set trainer.gradient_clip_val=0)"})
    discriminator_channels: list[int] = field(default_factory=lambda: [64, 128, 256],
                                              metadata={"help": "discriminator widths"})
    input_source: str = field(default="degraded", metadata={
        "help": "training inputs: degraded (real frames, each lower face replaced by another frame's, blurred) | "
                "motion (the exported motion stage's rendering of each frame, its default renderer: what the "
                "enhancer refines at generation)", "choices": INPUT_SOURCES})
    media_frames: int = field(default=50, metadata={"help": "frames of the logged validation video"})
    monitor: str = "val/sync"

    def validate(self) -> list[str]:
        errors = super().validate()
        if len(self.channels) < 2:
            errors.append(f"stage.channels needs at least two widths, got {self.channels}")
        if self.sync_max_offset < 1 or self.sync_windows < 1:
            errors.append("stage.sync_max_offset and stage.sync_windows must be at least 1")
        if self.input_source not in INPUT_SOURCES:
            errors.append(f"stage.input_source must be one of {', '.join(INPUT_SOURCES)}, got {self.input_source!r}")
        return errors


def refine_frames(refiner: LipRefiner, mel: LogMel, audio_radius: int, frames: torch.Tensor, mask: torch.Tensor,
                  reference: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
    """Run the refiner over every frame of a batch of clips with each frame's audio context."""
    steps = frames.shape[1]
    sound = audio_context(per_frame_audio(mel, audio, steps), audio_radius).flatten(2)
    ref = reference[:, None].expand(-1, steps, -1, -1, -1)
    out = refiner(frames.flatten(0, 1), mask.flatten(0, 1), ref.flatten(0, 1), sound.flatten(0, 1))
    return out.view_as(frames)


@dataclass
class LipRefinerParts:
    """What refining a generated video needs (no sync expert): the config, the refiner and its audio features."""

    cfg: LipEnhancerConfig
    refiner: LipRefiner
    mel: LogMel

    def refine(self, frames, mask, reference, audio) -> torch.Tensor:
        return refine_frames(self.refiner, self.mel, self.cfg.audio_radius, frames, mask, reference, audio)


class FrozenExpert:
    """The sync expert, kept outside the module tree: never trained, never exported with this stage, always in
    eval mode (its batch norms keep their statistics)."""

    def __init__(self, expert: SyncExpert, region: str):
        self.expert, self.region = expert.eval().requires_grad_(False), region

    def on(self, device: torch.device) -> SyncExpert:
        if next(self.expert.parameters()).device != device:
            self.expert.to(device)
        return self.expert


class LipEnhancerStage(StageModule):
    config_class = LipEnhancerConfig

    def __init__(self, cfg: LipEnhancerConfig, data, stages_dir: str = "", max_steps: int = 1000,
                 expert: FrozenExpert | None = None):
        super().__init__(cfg, data, stages_dir, max_steps)
        if data.clip_frames < WINDOW_FRAMES:
            raise ValueError(f"data.clip_frames={data.clip_frames}: the sync loss needs at least "
                             f"{WINDOW_FRAMES} frames")
        if expert is None:
            loaded = SyncNetStage.for_inference(self.earlier)
            expert = FrozenExpert(loaded.expert, loaded.cfg.region)
        self.frozen = expert
        audio_dim = 4 * cfg.n_mels * (2 * cfg.audio_radius + 1)
        self.refiner = LipRefiner(audio_dim, list(cfg.channels), cfg.cond_dim)
        self.mel = LogMel(n_mels=cfg.n_mels)
        self.motion_rerender = MotionRerender("stage.input_source=motion")
        self.discriminator = PatchDiscriminator(list(cfg.discriminator_channels)) if cfg.adversarial else None
        self.num_optimizers = 2 if cfg.adversarial else 1
        self.automatic_optimization = not cfg.adversarial
        self.loss_weights = {"recon": cfg.recon_weight, "feature": cfg.feature_weight, "sync": cfg.sync_weight,
                             "adversarial": cfg.adversarial_weight}

    @classmethod
    def requires(cls, cfg: LipEnhancerConfig) -> tuple[str, ...]:
        return ("syncnet",) + (("conre", "autoencoder", "motion_diffusion") if cfg.input_source == "motion" else ())

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> LipRefinerParts:
        """The trained refiner from the exported ``lip_enhancer`` file (no sync expert: generation needs none)."""
        stage = files["lip_enhancer"]
        cfg = stage.typed_config(LipEnhancerConfig)
        refiner = LipRefiner(4 * cfg.n_mels * (2 * cfg.audio_radius + 1), list(cfg.channels), cfg.cond_dim)
        refiner.load_state_dict(stage.sub_state("refiner", use_ema))
        return LipRefinerParts(cfg, refiner.eval(), LogMel(n_mels=cfg.n_mels))

    # ---- refinement -----------------------------------------------------------------------------------
    def refine(self, frames: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
               audio: torch.Tensor) -> torch.Tensor:
        """frames [B, T, 3, R, R], mask [B, T, 1, R, R], reference [B, 3, R, R], speech [B, N] -> refined frames."""
        return refine_frames(self.refiner, self.mel, self.cfg.audio_radius, frames, mask, reference, audio)

    def masks(self, landmarks: torch.Tensor) -> torch.Tensor:
        return lower_face_mask(landmarks, self.data_cfg.resolution, self.cfg.mask_feather)

    def inputs(self, batch: dict[str, Any], mask: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """The frames to refine: the real ones with degraded mouths, or the motion stage's rendering of them."""
        if self.cfg.input_source == "motion":
            return self.motion_rerender(self.earlier, batch, self.data_cfg.resolution, self.training)
        return degrade_mouths(batch["frames"], mask, generator)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        frames, audio = batch["frames"], batch["audio"]
        batch_size, steps = frames.shape[:2]
        check_landmarks(batch["landmarks"], steps)
        mask = self.masks(batch["landmarks"])
        reference = frames[torch.arange(batch_size), torch.randint(0, steps, (batch_size,))]
        refined = self.refine(self.inputs(batch, mask), mask, reference, audio)
        self._last = (refined, frames, mask)
        area = mask.sum(dim=(1, 2, 3, 4)).clamp_min(1.0) * 3
        losses = {"recon": ((refined - frames).abs() * mask).sum(dim=(1, 2, 3, 4)) / area}
        expert = self.frozen.on(frames.device)
        starts = torch.randint(0, steps - WINDOW_FRAMES + 1, (batch_size, self.cfg.sync_windows), device=frames.device)
        losses["sync"] = offset_sync_loss(expert, refined, audio, starts, self.cfg.sync_max_offset,
                                          self.cfg.sync_temperature, self.frozen.region)
        if self.cfg.feature_weight > 0:
            losses["feature"] = self.feature_distance(expert, refined, frames, starts)
        if self.discriminator is not None:
            fake = self.discriminator((refined * mask).flatten(0, 1))
            losses["adversarial"] = -fake.view(batch_size, -1).mean(1)
        return losses

    def feature_distance(self, expert: SyncExpert, refined, frames, starts) -> torch.Tensor:
        """Per-sample mean distance of the expert's video embeddings of refined and real windows."""
        def embed(x):
            crops = expert.preprocess(sync_region(x, self.frozen.region))
            return expert.forward_lip(video_windows_at(crops, starts).flatten(0, 1))
        with torch.no_grad():
            target = embed(frames)
        return F.pairwise_distance(embed(refined), target).view(starts.shape).mean(1)

    # ---- adversarial option: two optimizers, manual optimisation ------------------------------------------
    def adversarial_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        refined, frames, mask = self._last
        return (frames * mask).flatten(0, 1), (refined * mask).flatten(0, 1)

    def adversarial_clip(self) -> float | None:
        return self.cfg.adversarial_grad_clip or None

    def configure_optimizers(self):
        if self.discriminator is None:
            return super().configure_optimizers()
        return self.adversarial_optimizers(self.refiner.parameters())

    # ---- media ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """The first validation clip: the input (degraded mouth or the motion stage's frames) | refined | real, with
        its speech, and the same as a picture of 6 frames per row."""
        frames, audio = batch["frames"][:1, : self.cfg.media_frames], batch["audio"][:1]
        clip = {"frames": frames, "audio": audio, "landmarks": batch["landmarks"][:1, : frames.shape[1]],
                **{key: batch[key][:1] for key in ("motion_truth", "has_motion_truth") if key in batch}}
        mask = self.masks(clip["landmarks"])
        source = self.inputs(clip, mask, torch.Generator().manual_seed(0))
        with self.ema_scope():
            refined = self.refine(source, mask, frames[:, 0], audio)
        side = torch.cat([source[0], refined[0], frames[0]], dim=-1)
        per_frame = int(self.data_cfg.sample_rate // self.data_cfg.fps)
        root = getattr(self.trainer, "default_root_dir", None) if self._trainer is not None else None
        folder = Path(root) / "media" if root else Path(tempfile.mkdtemp(prefix="seespeaker-media-"))
        path = folder / f"lips_step{self.global_step:07d}.mp4"
        write_mp4(path, to_uint8(side), audio[0, : len(side) * per_frame].float().cpu().numpy(),
                  fps=int(self.data_cfg.fps), sr=self.data_cfg.sample_rate)
        strip = frame_strip([source[0], refined[0], frames[0]])
        return {"lips": Media(video_path=str(path), caption=f"{self.cfg.input_source} | refined | real"),
                "lips_frames": Media(image=strip, caption=f"rows: {self.cfg.input_source}, refined, real")}


@torch.no_grad()
def refine_video(stage: LipEnhancerStage | LipRefinerParts, frames: torch.Tensor, landmarks: torch.Tensor,
                 audio: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Refine the lower face of a generated video: frames [T, 3, R, R], landmarks [T, 68, 2] or one set [68, 2]
    (e.g. the portrait's) for all frames, mono speech [N] -> refined frames [T, 3, R, R]. ``stage`` is the
    training stage or ``LipEnhancerStage.for_inference``'s parts."""
    steps = frames.shape[0]
    marks = landmarks[None].expand(steps, -1, -1) if landmarks.ndim == 2 else landmarks
    check_landmarks(marks[None], steps)
    mask = lower_face_mask(marks[None], frames.shape[-1], stage.cfg.mask_feather)
    reference = frames[0] if reference is None else reference
    return stage.refine(frames[None], mask, reference[None], audio.reshape(1, -1))[0]
