"""Stage 2a: holistic motion in a latent space, and the motion-conditioned frame-latent diffusion.

Trained jointly on windows of ``window_frames`` frames (after ``context_frames`` frames of motion context):

- ``landmark``: the motion encoder's groups (lips, jaw, brows, eyes, pose; see :mod:`lightning_modules.nets.motion`)
  reconstruct their own inputs, landmarks in the face frame and, where the corpus knows it (``has_motion_truth``),
  the gaze (keeps the groups meaningful); each group's error is also logged as ``landmark_<group>``;
- ``motion``: the temporal transformer denoises the window's (stop-gradient) motion latents from the per-frame
  log-mel features and the frozen ConRe speaker embedding, given the motion before the window (dropped at
  ``context_dropout``, so that a video can start without it); it predicts the clean latents by default
  (``motion_prediction_type``): an epsilon prediction's error is amplified ~15x at the noisiest steps, which
  made few-step sampling of these low-dimensional latents diverge;
- ``frame``: the UNet denoises the latents of ``frames_per_clip`` frames of the window given the portrait
  (reference) latent, the ``previous_frames`` latents before each frame, noise-augmented by a random step up to
  ``prev_noise_max_step`` (the step is given to the network), the frame's motion latent and its audio; with
  ``motion_maps`` also the motion latent's decoded landmarks and gaze drawn as heatmaps, and with ``mouth_loss_weight``
  the lower face (from the frame's landmarks) weighs more in the loss. With ``frame_renderer: windowed`` (the
  default) the UNet, with temporal attention, denoises a window of ``frame_window`` frames jointly instead, given
  ``previous_frames`` motion frames before it (:func:`window_loss`); ``sequential`` is the one-frame baseline, which
  ``motion_from`` can train on another file's frozen motion networks;
- ``frame_change`` (windowed): the squared frame-to-frame change of the frame prediction's error within a window,
  weighted by ``temporal_loss_weight``. The frames of a window share one noise step, so with the clean-latent
  prediction this is the error of the predicted change between neighbouring latents against the true change: a
  per-frame loss leaves errors free to differ from frame to frame (flicker), while a frozen window pays for every
  true change. Logged at weight 0 too.

Generation (``generate_motion_video`` in :mod:`lightning_modules.motion_generation`) runs the same networks over
sliding windows.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from common.images import to_uint8
from common.media import write_mp4
from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.frame_windows import denoise_windows
from lightning_modules.motion_generation import FrozenParts, MotionParts, generate_motion_video, truth_gaze
from lightning_modules.nets.audio_features import LogMel
from lightning_modules.nets.lip import lower_face_mask
from lightning_modules.nets.motion import (
    LANDMARK_GROUPS,
    FrameDenoiser,
    MotionDenoiser,
    MotionEncoder,
    audio_context,
    build_frame_unet,
    check_landmarks,
    map_channels,
)
from lightning_modules.stagefile import StageFiles

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FRAME_RENDERERS = ("windowed", "sequential")


@dataclass
class MotionDiffusionConfig(StageConfig):
    """Motion latents, the temporal motion transformer and the frame-latent UNet."""

    name: str = "motion_diffusion"
    window_frames: int = field(default=16, metadata={"help": "frames per generated window"})
    context_frames: int = field(default=4,
                                metadata={"help": "motion frames of the previous window the transformer sees"})
    previous_frames: int = field(default=2, metadata={"help": "previous frame latents concatenated to the UNet input"})
    lips_dim: int = field(default=32, metadata={"help": "motion latent size of the lips group (points 48-67)"})
    jaw_dim: int = field(default=8, metadata={"help": "motion latent size of the jaw group (points 0-16)"})
    brows_dim: int = field(default=16, metadata={"help": "motion latent size of the brows group (points 17-26: brow "
                           "raise and resting expression)"})
    eyes_dim: int = field(default=8, metadata={"help": "motion latent size of the eyes group (points 36-47 and the "
                          "gaze where the corpus knows it)"})
    pose_dim: int = field(default=8, metadata={"help": "motion latent size of the head pose group (the face frame "
                          "and the nose, points 27-35)"})
    encoder_hidden: int = field(default=256, metadata={"help": "hidden width of each group's landmark MLP"})
    transformer_width: int = field(default=512, metadata={"help": "motion transformer width"})
    transformer_layers: int = field(default=8, metadata={"help": "motion transformer layers"})
    transformer_heads: int = field(default=8, metadata={"help": "motion transformer attention heads"})
    unet_channels: list[int] = field(default_factory=lambda: [320, 640, 1280, 1280],
                                     metadata={"help": "UNet block widths"})
    unet_layers: int = field(default=2, metadata={"help": "UNet layers per block"})
    attention_levels: list[bool] = field(default_factory=lambda: [True, True, True, False],
                                         metadata={"help": "cross-attention at each UNet level, highest resolution "
                                         "first"})
    cross_attention_dim: int = field(default=768, metadata={"help": "width of the motion/audio tokens"})
    attention_head_dim: int = field(default=8,
                                    metadata={"help": "UNet attention heads setting (diffusers' attention_head_dim)"})
    audio_radius: int = field(default=2,
                              metadata={"help": "audio tokens per frame: the frame and this many neighbours each side"})
    n_mels: int = field(default=80, metadata={"help": "log-mel bins of the audio features"})
    speaker_dim: int = field(default=512, metadata={"help": "ConRe speaker embedding size (read from the conre stage)"})
    num_train_timesteps: int = field(default=1000, metadata={"help": "DDPM training steps"})
    prediction_type: str = field(default="epsilon",
                                 metadata={"help": "what the frame UNet predicts", "choices": PREDICTION_TYPES})
    motion_prediction_type: str = field(default="sample", metadata={"help": "what the motion transformer predicts: the "
                                        "clean motion (sample), as motion diffusion models do, keeps few-step sampling "
                                        "of the low-dimensional latents stable", "choices": PREDICTION_TYPES})
    motion_maps: bool = field(default=True, metadata={"help": "also give the frame UNet the motion latent's decoded "
                              "landmarks as heatmap input channels (without them the rendered mouths ignored the "
                              "motion)"})
    frame_renderer: str = field(default="windowed", metadata={"help": "windowed: the frame UNet denoises windows of "
                                "frame_window frames jointly, with temporal attention and the previous window's last "
                                "previous_frames latents as motion frames; sequential: one frame per UNet call, given "
                                "the previous_frames latents before it (the baseline)", "choices": FRAME_RENDERERS})
    frame_window: int = field(default=16, metadata={"help": "frames per window of the windowed renderer (divides "
                              "window_frames, so every motion-window join is a frame-window join)"})
    frame_windows: int = field(default=0, metadata={"help": "windows rendered per training step, from the first clips "
                               "of the batch (0: one per clip)"})
    first_window_probability: float = field(default=0.2, metadata={"help": "training probability that a window's "
                                            "motion frames are the portrait latent, as for a video's first window"})
    temporal_heads: int = field(default=8, metadata={"help": "heads of the windowed renderer's temporal attention"})
    motion_from: str = field(default="", metadata={"help": "a motion_diffusion.safetensors whose motion encoder and "
                             "transformer (EMA) are loaded and frozen: only the frame renderer trains, so that two "
                             "renderers can be compared on identical motion"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute the frame UNet's activations in "
                                         "the backward pass (less memory for long windows, ~30% more compute)"})
    # files from before the options: the transformer predicted what the frame UNet did, saw no landmark maps, frames
    # were rendered one at a time, by the per-frame loss alone
    file_defaults: ClassVar[dict[str, Any]] = {
        "motion_prediction_type": lambda saved: saved.get("prediction_type", "epsilon"), "motion_maps": False,
        "frame_renderer": "sequential", "frame_window": 1, "frame_windows": 0, "first_window_probability": 0.0,
        "temporal_heads": 0, "gradient_checkpointing": False, "motion_from": "", "temporal_loss_weight": 0.0}
    temporal_loss_weight: float = field(default=0.0, metadata={"help": "windowed renderer: weight of the frame_change "
                                        "loss (the predicted frame-to-frame change against the true one)"})
    mouth_loss_weight: float = field(default=0.0, metadata={"help": "extra frame-loss weight on the lower face: "
                                     "per-pixel weight 1 + this inside the landmark mask"})
    prev_noise_max_step: int = field(default=200, metadata={"help": "largest noise step that augments the previous "
                                     "frames in training"})
    context_dropout: float = field(default=0.2,
                                   metadata={"help": "probability of training the transformer without motion context"})
    frames_per_clip: int = field(default=4, metadata={"help": "frames of each window rendered per training step"})
    motion_weight: float = field(default=1.0, metadata={"help": "weight of the motion diffusion loss"})
    frame_weight: float = field(default=1.0, metadata={"help": "weight of the frame diffusion loss"})
    landmark_weight: float = field(default=1.0, metadata={"help": "weight of the landmark reconstruction loss"})
    motion_steps: int = field(default=50, metadata={"help": "DDIM steps for motion sampling"})
    frame_steps: int = field(default=50, metadata={"help": "DDIM steps per frame"})
    media_frames: int = field(default=50, metadata={"help": "frames of the logged validation video"})

    def validate(self) -> list[str]:
        errors = super().validate()
        for name in ("window_frames", "previous_frames", "frames_per_clip", "motion_steps", "frame_steps",
                     *(f"{group}_dim" for group in LANDMARK_GROUPS)):
            if getattr(self, name) <= 0:
                errors.append(f"stage.{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.context_frames < self.window_frames:
            errors.append(f"stage.context_frames must be in [0, window_frames), got {self.context_frames}")
        if len(self.attention_levels) != len(self.unet_channels):
            errors.append(f"stage.attention_levels needs one flag per stage.unet_channels entry "
                          f"({len(self.unet_channels)}), got {self.attention_levels}")
        if self.mouth_loss_weight < 0:
            errors.append(f"stage.mouth_loss_weight must be >= 0, got {self.mouth_loss_weight}")
        if self.temporal_loss_weight < 0 or (self.temporal_loss_weight > 0 and not self.windowed):
            errors.append(f"stage.temporal_loss_weight={self.temporal_loss_weight} must be >= 0, and 0 with "
                          f"stage.frame_renderer=sequential (its frames are denoised at different noise steps)")
        errors += self.window_errors()
        if not 0 <= self.prev_noise_max_step < self.num_train_timesteps:
            errors.append(f"stage.prev_noise_max_step must be in [0, {self.num_train_timesteps}), "
                          f"got {self.prev_noise_max_step}")
        return errors

    def window_errors(self) -> list[str]:
        if self.frame_renderer not in FRAME_RENDERERS:
            return [f"stage.frame_renderer must be one of {', '.join(FRAME_RENDERERS)}, got {self.frame_renderer!r}"]
        if not self.windowed:
            return []
        errors = []
        if self.frame_window <= 0 or self.window_frames % self.frame_window:
            errors.append(f"stage.frame_window={self.frame_window} must divide stage.window_frames="
                          f"{self.window_frames}, so that the motion and frame windows join at the same frames")
        if self.temporal_heads <= 0 or any(width % self.temporal_heads for width in self.unet_channels):
            errors.append(f"stage.temporal_heads={self.temporal_heads} must divide every stage.unet_channels entry "
                          f"{list(self.unet_channels)}")
        if self.frame_windows < 0 or not 0 <= self.first_window_probability <= 1:
            errors.append(f"stage.frame_windows must be >= 0 (got {self.frame_windows}) and "
                          f"stage.first_window_probability in [0, 1] (got {self.first_window_probability})")
        return errors

    def input_files(self) -> dict[str, str]:
        return {"motion_from": self.motion_from} if self.motion_from else {}

    @property
    def windowed(self) -> bool:
        return self.frame_renderer == "windowed"

    def group_dims(self) -> dict[str, int]:
        """Each motion group's latent size, in the motion latent's order (:data:`LANDMARK_GROUPS`)."""
        dims = {"lips": self.lips_dim, "jaw": self.jaw_dim, "brows": self.brows_dim, "eyes": self.eyes_dim,
                "pose": self.pose_dim}
        return {name: dims[name] for name in LANDMARK_GROUPS}


def build_motion_networks(cfg: MotionDiffusionConfig, latent_channels: int, latent_size: int, downsample: int):
    """(motion encoder, motion transformer, frame denoiser) of a config; ``downsample`` is the VAE's factor."""
    encoder = MotionEncoder(cfg.group_dims(), cfg.encoder_hidden)
    audio_dim = 4 * cfg.n_mels
    transformer = MotionDenoiser(encoder.dim, audio_dim, cfg.speaker_dim, cfg.transformer_width,
                                 cfg.transformer_layers, cfg.transformer_heads, cfg.context_frames,
                                 max_frames=cfg.window_frames)
    unet = build_frame_unet(latent_channels, cfg.previous_frames, list(cfg.unet_channels), cfg.cross_attention_dim,
                            cfg.unet_layers, cfg.attention_head_dim, latent_size, list(cfg.attention_levels),
                            extra_channels=map_channels(downsample) if cfg.motion_maps else 0)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    temporal = (cfg.temporal_heads, cfg.previous_frames + cfg.frame_window) if cfg.windowed else (0, 1)
    return encoder, transformer, FrameDenoiser(unet, cfg.group_dims(), audio_dim, cfg.previous_frames, *temporal)


def build_scheduler(cfg: MotionDiffusionConfig, prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, prediction_type=prediction_type,
                         beta_schedule="scaled_linear", clip_sample=False)


def diffusion_target(scheduler: DDPMScheduler, clean: torch.Tensor, noise: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, t)
    return clean


def augment_previous(scheduler: DDPMScheduler, previous: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Noise the previous-frame latents [N, ...] to ``steps`` [N]; step 0 leaves a latent exactly as it was."""
    noisy = scheduler.add_noise(previous, torch.randn_like(previous), steps)
    keep = (steps == 0).view(-1, *([1] * (previous.ndim - 1)))
    return torch.where(keep, previous, noisy)


class MotionDiffusionStage(StageModule):
    config_class = MotionDiffusionConfig

    def __init__(self, cfg: MotionDiffusionConfig, data, stages_dir: str = "", max_steps: int = 1000,
                 frozen: FrozenParts | None = None):
        super().__init__(cfg, data, stages_dir, max_steps)
        if data.clip_frames < cfg.window_frames:
            raise ValueError(f"data.clip_frames={data.clip_frames} is shorter than stage.window_frames="
                             f"{cfg.window_frames}; set data.clip_frames to at least window_frames + context_frames")
        self.frozen = frozen or FrozenParts.from_stages(self.earlier)
        cfg.speaker_dim = self.frozen.speaker_dim
        latent_size = data.resolution // self.frozen.downsample
        self.motion_encoder, self.motion_denoiser, self.frame_denoiser = build_motion_networks(
            cfg, self.frozen.latent_channels, latent_size, self.frozen.downsample)
        self.scheduler = build_scheduler(cfg, cfg.prediction_type)
        self.motion_scheduler = build_scheduler(cfg, cfg.motion_prediction_type)
        self.mel = LogMel(n_mels=cfg.n_mels)
        self.loss_weights = {"motion": cfg.motion_weight, "frame": cfg.frame_weight, "landmark": cfg.landmark_weight,
                             "frame_change": cfg.temporal_loss_weight,
                             **{f"landmark_{group}": 0.0 for group in LANDMARK_GROUPS}}  # logged, not optimised
        if cfg.motion_from:
            self.load_motion(cfg.motion_from)

    def load_motion(self, path: str) -> None:
        """Take the motion encoder and transformer of another motion stage file and freeze them (their losses are
        then logged only)."""
        source = StageFiles.of(path, "motion_diffusion")["motion_diffusion"]
        for name in ("motion_encoder", "motion_denoiser"):
            module = getattr(self, name)
            try:
                module.load_state_dict(source.sub_state(name, use_ema=True))
            except RuntimeError as error:
                raise ValueError(f"stage.motion_from={path}: its {name} does not fit this stage's config (the group "
                                 f"sizes and transformer settings must match the file's): {error}") from error
            module.requires_grad_(False)
        self.loss_weights.update(motion=0.0, landmark=0.0)


    @classmethod
    def requires(cls, cfg: MotionDiffusionConfig) -> tuple[str, ...]:
        return ("conre", "autoencoder")

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True, fps: float = 25.0) -> MotionParts:
        """Generation networks from the exported ``motion_diffusion`` file (and its frozen VAE and speech encoder).

        The portrait may then have any size the VAE divides (the UNet is convolutional); the motion stage's own
        training resolution is the one it renders best."""
        stage = files["motion_diffusion"]
        frozen = FrozenParts.from_stages(files)
        cfg = stage.typed_config(MotionDiffusionConfig)
        cfg.speaker_dim = frozen.speaker_dim
        encoder, transformer, renderer = build_motion_networks(cfg, frozen.latent_channels, 8, frozen.downsample)
        encoder.load_state_dict(stage.sub_state("motion_encoder", use_ema))
        transformer.load_state_dict(stage.sub_state("motion_denoiser", use_ema))
        renderer.load_state_dict(stage.sub_state("frame_denoiser", use_ema))
        return MotionParts(cfg, transformer.eval(), renderer.eval(), frozen, build_scheduler(cfg, cfg.prediction_type),
                           build_scheduler(cfg, cfg.motion_prediction_type), LogMel(n_mels=cfg.n_mels),
                           resolution=0, fps=fps, motion_encoder=encoder.eval())
    def parts(self) -> MotionParts:
        """The networks that generation needs, with this stage's config."""
        return MotionParts(self.cfg, self.motion_denoiser, self.frame_denoiser, self.frozen, self.scheduler,
                           self.motion_scheduler, self.mel, self.data_cfg.resolution, self.data_cfg.fps,
                           motion_encoder=self.motion_encoder)

    # ---- conditioning ---------------------------------------------------------------------------------
    @torch.no_grad()
    def conditioning(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-frame audio features [B, T, 4 * n_mels], speaker embedding [B, S])."""
        audio = batch["audio"]
        return self.parts().audio_features(audio, batch["frames"].shape[1]), self.frozen.speaker(audio)

    # ---- losses ---------------------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        frames, landmarks = batch["frames"], batch["landmarks"]
        n_frames, cfg = frames.shape[1], self.cfg
        check_landmarks(landmarks, n_frames)
        audio, speaker = self.conditioning(batch)
        gaze, gaze_mask = truth_gaze(batch, n_frames)
        motion = self.motion_encoder(landmarks, self.data_cfg.resolution, gaze, gaze_mask)
        groups = self.motion_encoder.group_errors(motion, landmarks, self.data_cfg.resolution, gaze, gaze_mask)
        landmark = torch.stack(list(groups.values())).mean(0).mean(1)
        start = cfg.context_frames if n_frames >= cfg.window_frames + cfg.context_frames else 0
        window = slice(start, start + cfg.window_frames)
        motion_loss = self.motion_loss(motion.detach(), audio, speaker, start, window)
        render_loss = self.window_loss if cfg.windowed else self.frame_loss
        frame_losses = render_loss(frames, motion, audio, window, landmarks)
        per_group = {f"landmark_{name}": error.detach().mean(1) for name, error in groups.items()}
        return {"motion": motion_loss, **frame_losses, "landmark": landmark, **per_group}

    def motion_loss(self, motion, audio, speaker, start: int, window: slice) -> torch.Tensor:
        clean = motion[:, window]
        noise = torch.randn_like(clean)
        scheduler = self.motion_scheduler
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(clean),), device=clean.device)
        noisy = scheduler.add_noise(clean, noise, t)
        context = motion[:, :start] if start > 0 else None
        has_context = torch.rand(len(clean), device=clean.device) >= self.cfg.context_dropout if start > 0 else None
        pred = self.motion_denoiser(noisy, t, audio=audio[:, window], speaker=speaker, context=context,
                                    has_context=has_context)
        return (pred - diffusion_target(scheduler, clean, noise, t)).square().mean(dim=(1, 2))

    def span_latents(self, frames: torch.Tensor, span: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents of the frames at ``span`` [B, L] (only those are encoded) and of a random reference frame;
        positions before the clip are the reference latent. Returns ([B, L, C, h, w], reference [B, C, h, w])."""
        batch, device = frames.shape[0], frames.device
        rows = torch.arange(batch, device=device)
        reference_index = torch.randint(0, frames.shape[1], (batch,), device=device)
        picked = torch.cat([frames[rows[:, None], span.clamp_min(0)], frames[rows, reference_index][:, None]], 1)
        encoded = self.frozen.encode(picked.flatten(0, 1)).unflatten(0, picked.shape[:2])
        reference = encoded[:, -1]
        inside = (span >= 0).view(*span.shape, 1, 1, 1)
        return torch.where(inside, encoded[:, :-1], reference[:, None]), reference

    def frame_loss(self, frames, motion, audio, window: slice, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Denoise ``frames_per_clip`` consecutive frames of the window, each from its noise-augmented previous
        latents, the reference latent, its motion latent (and its maps) and its audio."""
        batch, device, cfg = frames.shape[0], frames.device, self.cfg
        k, n_prev = min(cfg.frames_per_clip, window.stop - window.start), cfg.previous_frames
        first = torch.randint(window.start, window.stop - k + 1, (batch,), device=device)
        span = first[:, None] + torch.arange(-n_prev, k, device=device)               # [B, P + k]
        latents, reference = self.span_latents(frames, span)
        clean = latents[:, n_prev:].flatten(0, 1)                                      # [B * k, C, h, w]
        previous = torch.stack([latents[:, j:j + n_prev].flatten(1, 2) for j in range(k)], 1).flatten(0, 1)
        aug_steps = torch.randint(0, cfg.prev_noise_max_step + 1, (len(clean),), device=device)
        previous = augment_previous(self.scheduler, previous, aug_steps)
        rows = torch.arange(batch, device=device).repeat_interleave(k)
        index = span[:, n_prev:].flatten()
        noise = torch.randn_like(clean)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(clean),), device=device)
        noisy = self.scheduler.add_noise(clean, noise, t)
        sound = audio_context(audio, cfg.audio_radius)[rows, index]
        maps = self.parts().motion_maps(motion[rows, index].detach(), clean.shape[-1])
        pred = self.frame_denoiser(noisy, t, portrait=reference.repeat_interleave(k, 0), previous=previous,
                                   prev_noise_step=aug_steps, motion=motion[rows, index], audio=sound, maps=maps)
        squared = (pred - diffusion_target(self.scheduler, clean, noise, t)).square().mean(dim=1, keepdim=True)
        weight = self.mouth_weights(landmarks[rows, index], clean.shape[-1])
        error = (squared * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))
        return {"frame": error.view(batch, k).mean(1)}

    def window_loss(self, frames, motion, audio, window: slice, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        """Denoise one window of ``frame_window`` frames per clip (of the first ``frame_windows`` clips) jointly,
        given its ``previous_frames`` motion frames: the real latents before it, noise-augmented, or the reference
        latent (at ``first_window_probability``, and before the clip's start). Per clip: ``frame`` and
        ``frame_change`` (the squared change of the error between neighbouring frames), scaled so that their batch
        means are the means over the rendered windows."""
        batch, device, cfg = frames.shape[0], frames.device, self.cfg
        count = min(batch, cfg.frame_windows or batch)
        k, size = cfg.previous_frames, min(cfg.frame_window, window.stop - window.start)
        first = torch.randint(window.start, window.stop - size + 1, (count,), device=device)
        span = first[:, None] + torch.arange(-k, size, device=device)                # [W, K + T]
        latents, reference = self.span_latents(frames[:count], span)
        starts_video = torch.rand(count, device=device) < cfg.first_window_probability
        motion_frames = torch.where(starts_video.view(-1, 1, 1, 1, 1), reference[:, None], latents[:, :k])
        aug = torch.randint(0, cfg.prev_noise_max_step + 1, (count,), device=device)
        motion_frames = augment_previous(self.scheduler, motion_frames.flatten(1, 2), aug).view_as(motion_frames)
        clean, noise = latents[:, k:], torch.randn_like(latents[:, k:])
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (count,), device=device)
        noisy = self.scheduler.add_noise(clean.flatten(1, 2), noise.flatten(1, 2), t).view_as(clean)
        rows, at = torch.arange(count, device=device)[:, None], span.clamp_min(0)
        tokens = motion[rows, at]
        maps = self.parts().motion_maps(tokens.flatten(0, 1).detach(), clean.shape[-1])
        pred = denoise_windows(self.frame_denoiser, noisy, t, motion_frames, aug, reference, tokens,
                               audio_context(audio, cfg.audio_radius)[rows, at],
                               None if maps is None else maps.unflatten(0, span.shape))
        target = diffusion_target(self.scheduler, clean.flatten(1, 2), noise.flatten(1, 2), t).view_as(clean)
        squared = (pred - target).square().mean(dim=2, keepdim=True).flatten(0, 1)
        weight = self.mouth_weights(landmarks[rows, at[:, k:]].flatten(0, 1), clean.shape[-1])
        error = ((squared * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))).view(count, size).mean(1)
        miss = pred - target
        change = (miss[:, 1:] - miss[:, :-1]).square().mean(dim=(1, 2, 3, 4)) if size > 1 else torch.zeros_like(error)
        return {name: torch.cat([value * batch / count, value.new_zeros(batch - count)])
                for name, value in (("frame", error), ("frame_change", change))}

    def mouth_weights(self, landmarks: torch.Tensor, latent_size: int) -> torch.Tensor:
        """Per-latent-pixel loss weights [N, 1, h, w]: 1, plus ``mouth_loss_weight`` inside the lower face."""
        if self.cfg.mouth_loss_weight <= 0:
            return torch.ones(len(landmarks), 1, latent_size, latent_size, device=landmarks.device)
        mask = lower_face_mask(landmarks, self.data_cfg.resolution)
        return 1 + self.cfg.mouth_loss_weight * F.adaptive_avg_pool2d(mask, latent_size)

    # ---- media ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """A generated video of the first validation clip's speech (left) beside the real frames (right)."""
        per_frame = int(self.data_cfg.sample_rate // self.data_cfg.fps)
        audio = batch["audio"][0]
        n_frames = max(min(self.cfg.media_frames, audio.shape[-1] // per_frame), self.cfg.window_frames)
        audio = F.pad(audio, (0, max(0, n_frames * per_frame - audio.shape[-1])))[: n_frames * per_frame]
        with self.ema_scope():
            video = generate_motion_video(self.parts(), batch["frames"][0, 0], audio,
                                          fps=self.data_cfg.fps, sample_rate=self.data_cfg.sample_rate)
        real = batch["frames"][0]
        real = torch.cat([real, real[-1:].expand(max(0, len(video) - len(real)), -1, -1, -1)])[: len(video)]
        side = torch.cat([video.to(real.device), real], dim=-1)
        path = Path(self._media_dir()) / f"motion_step{self.global_step:07d}.mp4"
        write_mp4(path, to_uint8(side), audio.float().cpu().numpy(),
                  fps=int(self.data_cfg.fps), sr=self.data_cfg.sample_rate)
        return {"generated": Media(video_path=str(path), caption="generated (left) | real (right)")}

    def _media_dir(self) -> str:
        root = getattr(self.trainer, "default_root_dir", None) if self._trainer is not None else None
        path = Path(root) / "media" if root else Path(tempfile.mkdtemp(prefix="seespeaker-media-"))
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
