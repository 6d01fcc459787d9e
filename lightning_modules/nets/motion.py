"""Holistic motion in a latent space: landmark groups -> motion latents, audio -> motion sequences, and the
frame-latent denoiser conditioned on them.

- :class:`MotionEncoder`: 68 iBUG landmarks of a frame -> a motion latent made of named groups (lips,
  expression, eyes, pose). The face frame (centre, scale) comes from the pose points only, so moving the mouth
  changes the lips group and nothing else.
- :class:`MotionDenoiser`: a temporal diffusion transformer over a window of motion latents, conditioned on
  per-frame audio features, the speaker embedding and the motion of the frames before the window.
- :class:`FrameDenoiser`: diffusers' ``UNet2DConditionModel`` over one frame latent with the portrait latent and
  the previous frame latents as extra input channels, motion-group and audio tokens by cross-attention, and the
  noise level of the (augmented) previous frames given as a second timestep embedding. With motion maps, the
  frame's motion latent is also decoded to landmarks and drawn as heatmaps (:func:`landmark_maps`) that enter as
  input channels at every latent pixel: cross-attention tokens alone left the mouth of the rendered frames still.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torch import nn

from common.errors import SeespeakerError

N_LANDMARKS = 68
LANDMARK_GROUPS: dict[str, tuple[int, ...]] = {
    "lips": tuple(range(48, 68)),                       # outer and inner lip contour
    "expression": tuple(range(17, 27)),                 # eyebrows
    "eyes": tuple(range(36, 48)),                       # both eye contours (blinks, gaze)
    "pose": tuple(range(0, 17)) + tuple(range(27, 36)),  # jaw line and nose: the rigid face frame
}
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


def face_frame(landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre [..., 1, 2] and scale [..., 1, 1] of the face from the pose points only."""
    pose = landmarks[..., LANDMARK_GROUPS["pose"], :]
    centre = pose.mean(dim=-2, keepdim=True)
    scale = (pose - centre).square().sum(-1).mean(-1, keepdim=True).sqrt().unsqueeze(-1).clamp_min(1e-3)
    return centre, scale


def group_inputs(landmarks: torch.Tensor, image_size: int) -> dict[str, torch.Tensor]:
    """Per-group network inputs [..., 2 * n_points]: points in the face frame; pose adds the frame itself."""
    centre, scale = face_frame(landmarks)
    relative = (landmarks - centre) / scale
    out = {name: relative[..., idx, :].flatten(-2) for name, idx in LANDMARK_GROUPS.items()}
    absolute = torch.cat([centre.flatten(-2) / image_size * 2 - 1, scale.flatten(-2) / image_size], dim=-1)
    out["pose"] = torch.cat([out["pose"], absolute], dim=-1)
    return out


class MotionEncoder(nn.Module):
    """Landmarks [..., 68, 2] (pixels of an ``image_size`` frame) -> motion latent [..., sum(group dims)].

    Each group has its own MLP and a parameter-free layer norm, so every group latent has unit scale (the
    diffusion's noise scale) and depends only on its own points (and the face frame). ``decode`` maps the
    latent back to each group's points in the face frame: the reconstruction loss that keeps groups meaningful.
    """

    def __init__(self, group_dims: dict[str, int], hidden: int = 128):
        super().__init__()
        if set(group_dims) != set(LANDMARK_GROUPS):
            raise ValueError(f"motion groups must be {sorted(LANDMARK_GROUPS)}, got {sorted(group_dims)}")
        self.group_dims = {name: int(group_dims[name]) for name in LANDMARK_GROUPS}
        in_dims = {name: 2 * len(idx) + (3 if name == "pose" else 0) for name, idx in LANDMARK_GROUPS.items()}
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

    def forward(self, landmarks: torch.Tensor, image_size: int) -> torch.Tensor:
        inputs = group_inputs(landmarks.float(), image_size)
        parts = [F.layer_norm(self.encoders[name](inputs[name]), (dim,)) for name, dim in self.group_dims.items()]
        return torch.cat(parts, dim=-1)

    def groups(self, latent: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: latent[..., sl] for name, sl in self.group_slices().items()}

    def landmarks(self, latent: torch.Tensor, image_size: int) -> torch.Tensor:
        """Motion latents [..., M] -> landmarks [..., 68, 2] in pixels of an ``image_size`` frame, decoded by the
        group decoders (points in the face frame; the pose group also gives the frame's centre and scale)."""
        flat = latent.reshape(-1, latent.shape[-1])
        groups = self.groups(flat)
        pose = self.decoders["pose"](groups["pose"])
        centre = ((pose[:, -3:-1] + 1) / 2 * image_size)[:, None]
        scale = (pose[:, -1:].abs() * image_size).clamp_min(1.0)[:, None]
        points = flat.new_zeros(flat.shape[0], N_LANDMARKS, 2)
        for name, index in LANDMARK_GROUPS.items():
            decoded = self.decoders[name](groups[name])[:, : 2 * len(index)].view(-1, len(index), 2)
            points[:, list(index)] = decoded * scale + centre
        return points.clamp(0, image_size - 1).view(*latent.shape[:-1], N_LANDMARKS, 2)

    def reconstruction_error(self, latent: torch.Tensor, landmarks: torch.Tensor, image_size: int) -> torch.Tensor:
        """Mean squared error of the decoded group inputs, per leading index (e.g. [B, T] -> [B, T])."""
        targets = group_inputs(landmarks.float(), image_size)
        errors = [(self.decoders[n](g) - targets[n]).square().mean(-1) for n, g in self.groups(latent).items()]
        return torch.stack(errors).mean(0)


MAP_GROUPS = (tuple(range(48, 68)), tuple(range(0, 48)))  # the lips, and every other point


def landmark_maps(landmarks: torch.Tensor, image_size: int, factor: int, sigma: float | None = None) -> torch.Tensor:
    """Landmarks [N, 68, 2] in pixels -> heatmaps at latent resolution [N, 2 * factor^2, size / f, size / f].

    One map for the lips and one for the other points, each a sum of Gaussians (``sigma`` pixels, by default
    one pixel of a 64 px frame) drawn at the frame's resolution and folded into channels by pixel-unshuffle,
    so that sub-latent-pixel changes (a mouth opening by two pixels) stay visible. Separable: memory is
    O(N * points * size), not O(N * points * size^2)."""
    sigma = sigma or image_size / 64
    coords = torch.arange(image_size, device=landmarks.device, dtype=torch.float32) + 0.5
    maps = []
    for index in MAP_GROUPS:
        points = landmarks[:, list(index)].float()
        gx = torch.exp(-(coords - points[..., 0:1]).square() / (2 * sigma ** 2))   # [N, K, W]
        gy = torch.exp(-(coords - points[..., 1:2]).square() / (2 * sigma ** 2))   # [N, K, H]
        maps.append(torch.bmm(gy.transpose(1, 2), gx).clamp(max=1.0))            # [N, H, W]
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
    """One frame latent at a time: the UNet plus the token projections for motion groups and audio."""

    def __init__(self, unet: UNet2DConditionModel, group_dims: dict[str, int], audio_dim: int, previous_frames: int):
        super().__init__()
        self.unet = unet
        self.previous_frames = previous_frames
        cross = unet.config.cross_attention_dim
        self.group_dims = dict(group_dims)
        self.group_tokens = nn.ModuleDict({name: nn.Linear(dim, cross) for name, dim in group_dims.items()})
        self.group_embedding = nn.Parameter(torch.randn(len(group_dims), cross) * 0.02)
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
                maps: torch.Tensor | None = None) -> torch.Tensor:
        """noisy, portrait [N, C, h, w]; previous [N, P * C, h, w] (oldest first); steps [N]; the motion's
        landmark maps [N, K, h, w] when the UNet was built for them -> prediction."""
        x = torch.cat([noisy, portrait, previous] + ([] if maps is None else [maps]), dim=1)
        return self.unet(x, timestep, encoder_hidden_states=self.tokens(motion, audio),
                         class_labels=prev_noise_step).sample
