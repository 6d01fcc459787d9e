"""Holistic motion in a latent space: landmark groups -> motion latents, audio -> motion sequences, and the
frame-latent denoiser conditioned on them.

- :class:`MotionEncoder`: 68 iBUG landmarks of a frame (and, where the corpus knows it, the gaze) -> a motion latent
  made of named groups that follow what moves a face: ``lips``, ``jaw``, ``brows`` (brow raise and resting
  expression), ``eyes`` (lids and gaze) and ``pose`` (the head). Every group sees its points in an affine face frame
  taken from rigid points only (nose bridge and eye corners; :mod:`lightning_modules.nets.face_frame`), so opening
  the mouth changes the lips and jaw groups and nothing else, and a head that nods, rolls, moves or scales changes
  the pose group only.
- :class:`MotionDenoiser`: a temporal diffusion transformer over a window of motion latents, conditioned on
  per-frame audio features, the speaker embedding and the motion of the frames before the window.
- :class:`FrameDenoiser`: diffusers' ``UNet2DConditionModel`` over frame latents with the portrait latent and
  the previous (motion) frame latents as extra input channels, motion-group and audio tokens by cross-attention,
  and the noise level of the (augmented) previous frames given as a second timestep embedding. With motion maps, the
  frame's motion latent is also decoded to landmarks and gaze and drawn as heatmaps (:func:`landmark_maps`) that
  enter as input channels at every latent pixel: cross-attention tokens alone left the mouth of the rendered frames
  still. Built with temporal layers (:mod:`lightning_modules.nets.temporal`) it denoises whole windows jointly.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from common.errors import SeespeakerError
from lightning_modules.nets.face_frame import (
    EYE_POINTS,
    FRAME_FEATURES,
    GAZE_FEATURES,
    GAZE_UNITS,
    LANDMARK_GROUPS,
    frame_from_features,
    from_frame,
    group_input_dims,
    group_inputs,
)
from lightning_modules.nets.temporal import add_temporal_layers, set_window

N_LANDMARKS = 68
MEL_PER_FRAME = 4  # 100 mel frames per second at hop 160 / 16 kHz, 25 video frames per second


class LandmarkMismatchError(SeespeakerError, ValueError):
    """Landmarks that do not fit the frames they belong to."""


def check_landmarks(landmarks: torch.Tensor, n_frames: int) -> None:
    """Landmarks must be [B, T, 68, 2] with T equal to the frame count."""
    if landmarks.ndim != 4 or landmarks.shape[-2:] != (N_LANDMARKS, 2):
        raise LandmarkMismatchError(f"landmarks must be [B, T, 68, 2] (iBUG 68 points), got {tuple(landmarks.shape)}")
    if landmarks.shape[1] != n_frames:
        raise LandmarkMismatchError(
            f"{landmarks.shape[1]} landmark frames for {n_frames} video frames; each frame needs its landmarks "
            f"(re-run `seespeaker prepare` for this corpus)")


class MotionEncoder(nn.Module):
    """Landmarks [..., 68, 2] (pixels of an ``image_size`` frame) and an optional gaze -> motion latent
    [..., sum(group dims)].

    Each group has its own MLP and a parameter-free layer norm, so every group latent has unit scale (the
    diffusion's noise scale) and depends only on its own inputs (:func:`group_inputs`). The decoders map the latent
    back to each group's inputs: the reconstruction loss that keeps groups meaningful, and the landmarks and gaze
    the frame UNet's maps are drawn from.
    """

    def __init__(self, group_dims: dict[str, int], hidden: int = 128):
        super().__init__()
        if set(group_dims) != set(LANDMARK_GROUPS):
            raise ValueError(f"motion groups must be {sorted(LANDMARK_GROUPS)}, got {sorted(group_dims)}")
        self.group_dims = {name: int(group_dims[name]) for name in LANDMARK_GROUPS}
        in_dims = group_input_dims()
        self.encoders = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(in_dims[name], hidden), nn.GELU(), nn.Linear(hidden, dim))
            for name, dim in self.group_dims.items()})
        self.decoders = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, in_dims[name]))
            for name, dim in self.group_dims.items()})

    @property
    def dim(self) -> int:
        return sum(self.group_dims.values())

    def group_slices(self) -> dict[str, slice]:
        """Where each named group lives in the concatenated latent."""
        out, start = {}, 0
        for name, dim in self.group_dims.items():
            out[name] = slice(start, start + dim)
            start += dim
        return out

    def forward(self, landmarks: torch.Tensor, image_size: int, gaze: torch.Tensor | None = None,
                gaze_mask: torch.Tensor | None = None) -> torch.Tensor:
        """landmarks [..., 68, 2]; gaze [..., 2] (x, y in -1..1) where known, ``gaze_mask`` [...] (bool or float)
        saying where -> latent [..., M]."""
        inputs = group_inputs(landmarks, image_size, gaze, gaze_mask)
        parts = [F.layer_norm(self.encoders[name](inputs[name]), (dim,)) for name, dim in self.group_dims.items()]
        return torch.cat(parts, dim=-1)

    def groups(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: latent[..., sl] for name, sl in self.group_slices().items()}

    def decode(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        """Motion latents [..., M] -> each group's decoded inputs [..., n] (see :func:`group_inputs`)."""
        return {name: self.decoders[name](part) for name, part in self.groups(latent).items()}

    def landmarks(self, latent: torch.Tensor, image_size: int) -> torch.Tensor:
        """Motion latents [..., M] -> landmarks [..., 68, 2] in pixels of an ``image_size`` frame, decoded by the
        group decoders (points in the face frame; the pose group also gives the frame)."""
        decoded = self.decode(latent)
        frame = frame_from_features(decoded["pose"][..., -FRAME_FEATURES:], image_size)
        points = latent.new_zeros(*latent.shape[:-1], N_LANDMARKS, 2)
        for name, index in LANDMARK_GROUPS.items():
            coords = decoded[name][..., : 2 * len(index)].unflatten(-1, (len(index), 2))
            points[..., list(index), :] = from_frame(coords, frame)
        return points.clamp(0, image_size - 1)

    def gaze(self, latent: torch.Tensor) -> torch.Tensor:
        """Motion latents [..., M] -> the decoded gaze [..., 3]: x and y (clamped to [-1, 1]) and its presence
        (clamped to [0, 1]; near 0 for a clip whose gaze was unknown)."""
        entries = self.decoders["eyes"](self.groups(latent)["eyes"])[..., EYE_POINTS:EYE_POINTS + GAZE_FEATURES]
        return torch.cat([(entries[..., :2] / GAZE_UNITS).clamp(-1, 1), entries[..., 2:].clamp(0, 1)], dim=-1)

    def group_errors(self, latent: torch.Tensor, landmarks: torch.Tensor, image_size: int,
                     gaze: torch.Tensor | None = None,
                     gaze_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Per group, the mean squared error of its decoded inputs (frame units), per leading index (e.g. [B, T]).
        The gaze's x and y count only where the gaze is known (m = 1); its presence entry (m) counts everywhere."""
        targets = group_inputs(landmarks, image_size, gaze, gaze_mask)
        errors = {}
        for name, decoded in self.decode(latent).items():
            squared = (decoded - targets[name]).square()
            if name == "eyes":
                known = targets[name][..., -1:]
                weight = torch.ones_like(squared)
                weight[..., EYE_POINTS:EYE_POINTS + 2] = known
                errors[name] = (squared * weight).sum(-1) / weight.sum(-1)
            else:
                errors[name] = squared.mean(-1)
        return errors

    def reconstruction_error(self, latent: torch.Tensor, landmarks: torch.Tensor, image_size: int,
                             gaze: torch.Tensor | None = None, gaze_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The mean over groups of :meth:`group_errors`, per leading index (e.g. [B, T] -> [B, T])."""
        errors = self.group_errors(latent, landmarks, image_size, gaze, gaze_mask)
        return torch.stack(list(errors.values())).mean(0)


MAP_GROUPS = (tuple(range(48, 68)), tuple(range(0, 48)))  # the lips, and every other point (and the pupils)
EYES = (tuple(range(36, 42)), tuple(range(42, 48)))  # each eye: image-left corner, two upper, corner, two lower


def pupil_points(landmarks: torch.Tensor, gaze: torch.Tensor) -> torch.Tensor:
    """Landmarks [..., 68, 2] and gaze [..., >= 2] (x, y in -1..1) -> the two pupils [..., 2, 2] in pixels: each
    eye's centre moved by gaze_x half eye widths along the eye's corner line (towards the image right) and gaze_y
    half eye heights (lid to lid) across it (down)."""
    out = []
    for index in EYES:
        eye = landmarks[..., list(index), :].float()
        half_width = (eye[..., 3, :] - eye[..., 0, :]) / 2
        width = half_width.norm(dim=-1, keepdim=True).clamp_min(1e-6)
        down = torch.stack([-half_width[..., 1], half_width[..., 0]], dim=-1) / width
        lids = (eye[..., 1, :] - eye[..., 5, :]).norm(dim=-1) + (eye[..., 2, :] - eye[..., 4, :]).norm(dim=-1)
        half_height = lids / 4
        out.append(eye.mean(dim=-2) + gaze[..., 0:1] * half_width + (gaze[..., 1] * half_height)[..., None] * down)
    return torch.stack(out, dim=-2)


def landmark_maps(landmarks: torch.Tensor, image_size: int, factor: int, sigma: float | None = None,
                  gaze: torch.Tensor | None = None) -> torch.Tensor:
    """Landmarks [N, 68, 2] in pixels -> heatmaps at latent resolution [N, 2 * factor^2, size / f, size / f].

    One map for the lips and one for the other points, each a sum of Gaussians (``sigma`` pixels, by default
    one pixel of a 64 px frame) drawn at the frame's resolution and folded into channels by pixel-unshuffle,
    so that sub-latent-pixel changes (a mouth opening by two pixels) stay visible. With ``gaze`` [N, 3] (x, y,
    presence), the second map also holds a pupil per eye (:func:`pupil_points`) weighted by the presence.
    Separable: memory is O(N * points * size), not O(N * points * size^2)."""
    sigma = sigma or image_size / 64
    coords = torch.arange(image_size, device=landmarks.device, dtype=torch.float32) + 0.5
    maps = []
    for group, index in enumerate(MAP_GROUPS):
        points = landmarks[:, list(index)].float()
        weight = torch.ones(points.shape[:2], device=points.device)
        if gaze is not None and group == 1:
            gaze = gaze.to(points.device).float()
            points = torch.cat([points, pupil_points(landmarks, gaze)], dim=1)
            weight = torch.cat([weight, gaze[:, 2:3].clamp(0, 1).expand(-1, 2)], dim=1)
        gx = torch.exp(-(coords - points[..., 0:1]).square() / (2 * sigma ** 2))                       # [N, K, W]
        gy = torch.exp(-(coords - points[..., 1:2]).square() / (2 * sigma ** 2)) * weight[..., None]  # [N, K, H]
        maps.append(torch.bmm(gy.transpose(1, 2), gx).clamp(max=1.0))                                # [N, H, W]
    return F.pixel_unshuffle(torch.stack(maps, dim=1), factor)


def map_channels(factor: int) -> int:
    """Input channels that :func:`landmark_maps` adds at a VAE downsampling ``factor``."""
    return len(MAP_GROUPS) * factor * factor


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


def frame_audio_features(mel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """log-mel [B, n_mels, F] -> per video frame features [B, n_frames, 4 * n_mels] (mel frames 4t .. 4t+3)."""
    need = n_frames * MEL_PER_FRAME
    if mel.shape[-1] < need:
        mel = F.pad(mel, (0, need - mel.shape[-1]))
    mel = mel[..., :need]
    return mel.reshape(mel.shape[0], mel.shape[1], n_frames, MEL_PER_FRAME).permute(0, 2, 3, 1).flatten(2)


def per_frame_audio(mel: nn.Module, audio: torch.Tensor, n_frames: int) -> torch.Tensor:
    """audio [B, N] -> per-frame log-mel features [B, n_frames, 4 * n_mels], normalised over each utterance."""
    if mel.filters.device != audio.device:
        mel.to(audio.device)
    spec = mel(audio.float())
    spec = (spec - spec.mean(dim=(1, 2), keepdim=True)) / (spec.std(dim=(1, 2), keepdim=True) + 1e-5)
    return frame_audio_features(spec, n_frames)


def audio_context(features: torch.Tensor, radius: int) -> torch.Tensor:
    """[B, T, D] -> [B, T, 2 * radius + 1, D]: each frame's audio with its neighbours (zeros past the ends)."""
    padded = F.pad(features, (0, 0, radius, radius))
    return padded.unfold(1, 2 * radius + 1, 1).permute(0, 1, 3, 2)


class MotionDenoiser(nn.Module):
    """Temporal diffusion transformer: noisy motion window [B, T, M] -> prediction [B, T, M].

    Tokens: ``context`` motion latents of the frames before the window (a learned null token stands in when
    there are none), then the window's noisy latents plus their frame's audio. The diffusion timestep and the
    speaker embedding are added to every token.
    """

    def __init__(self, motion_dim: int, audio_dim: int, speaker_dim: int, width: int = 256, layers: int = 4,
                 heads: int = 4, context_frames: int = 4, max_frames: int = 64):
        super().__init__()
        self.width, self.context_frames = width, context_frames
        self.motion_in = nn.Linear(motion_dim, width)
        self.context_in = nn.Linear(motion_dim, width)
        self.null_context = nn.Parameter(torch.zeros(max(context_frames, 1), width))
        self.audio_in = nn.Sequential(nn.Linear(audio_dim, width), nn.GELU(), nn.Linear(width, width))
        self.speaker_in = nn.Linear(speaker_dim, width)
        self.time_in = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.position = nn.Parameter(torch.randn(context_frames + max_frames, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, motion_dim))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, audio: torch.Tensor, speaker: torch.Tensor,
                context: torch.Tensor | None = None, has_context: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, _ = noisy.shape
        if frames + self.context_frames > len(self.position):
            raise ValueError(f"window of {frames} frames exceeds the denoiser's maximum of "
                             f"{len(self.position) - self.context_frames}")
        cond = self.time_in(timestep_embedding(timestep.expand(batch), self.width)) + self.speaker_in(speaker)
        window = self.motion_in(noisy) + self.audio_in(audio)
        null = self.null_context[None, :self.context_frames].expand(batch, -1, -1)
        if context is None or self.context_frames == 0:
            ctx = null
        else:
            ctx = self.context_in(context[:, -self.context_frames:])
            if has_context is not None:
                ctx = torch.where(has_context[:, None, None], ctx, null)
        tokens = torch.cat([ctx, window], dim=1) + self.position[None, :self.context_frames + frames] + cond[:, None]
        return self.out(self.blocks(tokens)[:, self.context_frames:])


def build_frame_unet(latent_channels: int, previous_frames: int, block_channels: list[int], cross_dim: int,
                     layers_per_block: int = 1, head_dim: int = 8, sample_size: int = 8,
                     attention_levels: list[bool] | None = None, extra_channels: int = 0) -> UNet2DConditionModel:
    """A UNet2DConditionModel whose input is [noisy | portrait | previous frames | ``extra_channels`` of motion
    maps] and whose second timestep embedding (``class_labels``) carries the previous frames' noise-augmentation
    step.
    ``attention_levels`` says which resolution levels (highest first) have cross-attention blocks."""
    n = len(block_channels)
    levels = list(attention_levels) if attention_levels else [True] * (n - 1) + [False]
    if len(levels) != n:
        raise ValueError(f"attention_levels needs one flag per UNet level ({n}), got {levels}")
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels))
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=latent_channels * (2 + previous_frames) + extra_channels,
        out_channels=latent_channels,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=tuple(block_channels),
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_dim,
        attention_head_dim=head_dim,
        norm_num_groups=min(32, min(block_channels) // 2) if min(block_channels) < 64 else 32,
        class_embed_type="timestep",
    )


class FrameDenoiser(nn.Module):
    """The UNet plus the token projections for motion groups and audio. Without ``temporal_heads`` every image of a
    batch is denoised on its own; with them, ``frames`` consecutive images of a batch form one window whose frames
    attend to each other (up to ``max_frames`` per window)."""

    def __init__(self, unet: UNet2DConditionModel, group_dims: dict[str, int], audio_dim: int, previous_frames: int,
                 temporal_heads: int = 0, max_frames: int = 1):
        super().__init__()
        self.unet = unet
        self.previous_frames = previous_frames
        self.temporal = add_temporal_layers(unet, temporal_heads, max_frames) if temporal_heads else []
        cross = unet.config.cross_attention_dim
        self.group_dims = {name: int(group_dims[name]) for name in LANDMARK_GROUPS}  # the motion latent's order
        self.group_tokens = nn.ModuleDict({name: nn.Linear(dim, cross) for name, dim in self.group_dims.items()})
        self.group_embedding = nn.Parameter(torch.randn(len(self.group_dims), cross) * 0.02)
        self.audio_tokens = nn.Linear(audio_dim, cross)
        self.audio_embedding = nn.Parameter(torch.randn(64, cross) * 0.02)

    def tokens(self, motion: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """motion [N, M] and audio context [N, A, D] -> cross-attention tokens [N, groups + A, cross]."""
        parts, start = [], 0
        for name, dim in self.group_dims.items():
            parts.append(self.group_tokens[name](motion[:, start:start + dim]))
            start += dim
        groups = torch.stack(parts, dim=1) + self.group_embedding[None]
        sound = self.audio_tokens(audio) + self.audio_embedding[None, :audio.shape[1]]
        return torch.cat([groups, sound], dim=1)

    def forward(self, noisy: torch.Tensor, timestep: torch.Tensor, portrait: torch.Tensor, previous: torch.Tensor,
                prev_noise_step: torch.Tensor, motion: torch.Tensor, audio: torch.Tensor,
                maps: torch.Tensor | None = None, frames: int = 1) -> torch.Tensor:
        """noisy, portrait [N, C, h, w]; previous [N, P * C, h, w] (oldest first); steps [N]; the motion's
        landmark maps [N, K, h, w] when the UNet was built for them -> prediction. ``frames``: images per window
        (windows of consecutive images; 1 without temporal layers)."""
        if frames > 1 and not self.temporal:
            raise ValueError(f"a window of {frames} frames needs a frame denoiser built with temporal layers")
        set_window(self.temporal, frames)
        x = torch.cat([noisy, portrait, previous] + ([] if maps is None else [maps]), dim=1)
        return self.unet(x, timestep, encoder_hidden_states=self.tokens(motion, audio),
                         class_labels=prev_noise_step).sample
