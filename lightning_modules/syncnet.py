"""The audio-visual sync expert, trained on the shards: in-sync windows against shifted and other-clip audio.

A window is five frames (the whole face, or its lower half with ``region=lower_face``) and MFCC columns
4i .. 4i+19 of the speech (python_speech_features' MFCC of int16-valued samples, as LSE computes it). The
embeddings are not normalised and LSE scores raw distances, so the loss works on distances: for each video
window, the candidates are the audio windows at offsets -K .. K of the same clip and the in-sync audio of the
other clips in the batch, and the zero vector (LSE zero-pads the audio embeddings at both ends of a clip, so an
expert whose video embeddings lie near the origin reports padded offsets); the cross-entropy over logits
``-||v - a|| / tau`` makes the in-sync audio the nearest.
Offsets whose audio lies outside the clip's speech are masked. Validation reports the AV-offset accuracy: for each
clip, the offset of least mean distance (as LSE finds it) is correct when it is 0.

The same distance cross-entropy is the lip enhancer's sync loss (:func:`offset_sync_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from lightning_modules.base import Media, StageConfig, StageModule
from lightning_modules.nets.mfcc import float_audio_to_int16_scale, syncnet_mfcc
from lightning_modules.nets.syncnet import MFCC_WINDOW, WINDOW_FRAMES, SyncExpert, build_syncnet
from lightning_modules.stagefile import StageFiles

PAIRWISE_EPS = 1e-6
REGIONS = ("face", "lower_face")


@dataclass
class SyncNetConfig(StageConfig):
    """The sync expert's layout and how its training windows and negatives are drawn."""

    name: str = "syncnet"
    layout: str = field(default="official", metadata={"help": "official (syncnet_v2 layout, 224 px) | compact",
                                                      "choices": ("official", "compact")})
    embedding_dim: int = field(default=1024, metadata={"help": "embedding size (1024 for the official layout)"})
    width: int = field(default=32, metadata={"help": "compact layout: base channel width"})
    input_size: int = field(default=64, metadata={"help": "compact layout: crop size in pixels (official: 224)"})
    region: str = field(default="face", metadata={"help": "what the video branch sees: the whole face crop (as LSE "
                        "feeds it) or its lower half", "choices": REGIONS})
    max_offset: int = field(default=5, metadata={"help": "shifted-audio negatives at offsets -K..K frames (K = this)"})
    other_clip_negatives: bool = field(default=True, metadata={"help": "also contrast against the in-sync audio of the "
                                       "other clips in the batch"})
    padding_negative: bool = field(default=True, metadata={"help": "also contrast against the zero vector, which LSE's "
                                   "zero padding of the audio embeddings puts at both ends of every clip (keeps video "
                                   "embeddings far from it)"})
    temperature: float = field(default=1.0, metadata={"help": "tau of the logits -distance / tau"})
    windows_per_clip: int = field(default=2, metadata={"help": "five-frame windows drawn from each clip per step"})
    monitor: str = "val/av_offset_accuracy"
    monitor_mode: str = "max"

    def validate(self) -> list[str]:
        errors = super().validate()
        if self.max_offset < 1:
            errors.append(f"stage.max_offset must be at least 1, got {self.max_offset}")
        if self.temperature <= 0:
            errors.append(f"stage.temperature must be positive, got {self.temperature}")
        if self.windows_per_clip < 1:
            errors.append(f"stage.windows_per_clip must be at least 1, got {self.windows_per_clip}")
        return errors

    def expert_sizes(self) -> dict[str, int]:
        if self.layout == "official":
            return {"embedding_dim": self.embedding_dim}
        return {"embedding_dim": self.embedding_dim, "width": self.width, "input_size": self.input_size}


def sync_region(frames: torch.Tensor, region: str) -> torch.Tensor:
    """frames [..., 3, H, W] -> the part the expert sees (the lower half rows for ``lower_face``)."""
    if region == "lower_face":
        return frames[..., frames.shape[-2] // 2:, :]
    return frames


def batch_mfcc(audio: torch.Tensor, columns: int | None = None) -> torch.Tensor:
    """Float speech [B, N] in [-1, 1] -> SyncNet MFCC [B, 13, F] (float32, of the int16-valued samples).

    ``columns`` computes only the first columns (from the samples they span; they equal those of the whole)."""
    if columns is not None:
        audio = audio[..., : (columns - 1) * 160 + 400]
    return syncnet_mfcc(float_audio_to_int16_scale(audio.detach()), dtype=torch.float32).to(audio.device)


def needed_columns(starts: torch.Tensor, offsets: torch.Tensor) -> int:
    """MFCC columns that the windows at ``starts`` shifted by ``offsets`` can reach."""
    return 4 * int(starts.max() + offsets.max()) + MFCC_WINDOW


def offset_audio_windows(mfcc: torch.Tensor, starts: torch.Tensor,
                         offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mfcc [B, 13, F], frame starts [B, W], offsets [K] -> windows [B, W, K, 1, 13, 20] and a validity mask
    [B, W, K] (False where the shifted audio window leaves the speech)."""
    frame = starts[:, :, None] + offsets[None, None, :]
    valid = (frame >= 0) & (4 * frame + MFCC_WINDOW <= mfcc.shape[-1])
    columns = 4 * frame.clamp_min(0)[..., None] + torch.arange(MFCC_WINDOW, device=mfcc.device)
    columns = columns.clamp_max(mfcc.shape[-1] - 1)
    b = torch.arange(mfcc.shape[0], device=mfcc.device)[:, None, None, None]
    windows = mfcc.permute(0, 2, 1)[b, columns]               # [B, W, K, 20, 13]
    return windows.transpose(-1, -2).unsqueeze(3), valid


def video_windows_at(frames: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Preprocessed frames [B, T, 3, S, S], starts [B, W] -> windows [B, W, 3, 5, S, S]."""
    index = starts[:, :, None] + torch.arange(WINDOW_FRAMES, device=frames.device)
    b = torch.arange(frames.shape[0], device=frames.device)[:, None, None]
    return frames[b, index].transpose(2, 3)


def distance_logits(video: torch.Tensor, audio: torch.Tensor, temperature: float) -> torch.Tensor:
    """video [N, D], audio candidates [N, K, D] -> logits [N, K] = -||v - a_k|| / tau (unnormalised embeddings)."""
    return -F.pairwise_distance(video[:, None, :], audio, eps=PAIRWISE_EPS) / temperature


def offset_cross_entropy(logits: torch.Tensor, target: int | torch.Tensor,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per-window cross-entropy [N] over candidate logits [N, K] (invalid candidates masked), target index."""
    if valid is not None:
        logits = logits.masked_fill(~valid, float("-inf"))
    target = torch.as_tensor(target, device=logits.device).expand(logits.shape[0])
    return F.cross_entropy(logits, target, reduction="none")


def offset_sync_loss(expert: SyncExpert, frames: torch.Tensor, audio: torch.Tensor, starts: torch.Tensor,
                     max_offset: int, temperature: float, region: str = "face") -> torch.Tensor:
    """The sync loss of frames [B, T, 3, R, R] in [-1, 1] (differentiable) against their speech [B, N]:
    per-sample mean over the windows at ``starts`` [B, W] of the cross-entropy over offsets -K..K, target 0."""
    offsets = torch.arange(-max_offset, max_offset + 1, device=frames.device)
    crops = expert.preprocess(sync_region(frames, region))
    video = expert.forward_lip(video_windows_at(crops, starts).flatten(0, 1))     # [B * W, D]
    windows, valid = offset_audio_windows(batch_mfcc(audio, needed_columns(starts, offsets)), starts, offsets)
    audio_emb = expert.forward_aud(windows.flatten(0, 2)).view(*valid.shape, -1)  # [B, W, K, D]
    logits = distance_logits(video, audio_emb.flatten(0, 1), temperature)
    loss = offset_cross_entropy(logits, max_offset, valid.flatten(0, 1))
    return loss.view(starts.shape).mean(1)


class TrainedExpert(NamedTuple):
    """The trained sync expert (eval mode, frozen) and its config."""

    expert: SyncExpert
    cfg: SyncNetConfig


class SyncNetStage(StageModule):
    config_class = SyncNetConfig

    def __init__(self, cfg: SyncNetConfig, data, stages_dir: str = "", max_steps: int = 1000):
        super().__init__(cfg, data, stages_dir, max_steps)
        if data.clip_frames < WINDOW_FRAMES + cfg.max_offset:
            raise ValueError(f"data.clip_frames={data.clip_frames}: the sync expert needs clips of at least "
                             f"{WINDOW_FRAMES + cfg.max_offset} frames (5-frame windows shifted by up to "
                             f"stage.max_offset={cfg.max_offset}); raise data.clip_frames or lower stage.max_offset")
        self.expert = build_syncnet(cfg.layout, **cfg.expert_sizes())
        self.loss_weights = {"sync": 1.0}
        self._val_correct: list[torch.Tensor] = []

    @classmethod
    def for_inference(cls, files: StageFiles, use_ema: bool = True) -> TrainedExpert:
        """The trained expert from the exported ``syncnet`` file."""
        stage = files["syncnet"]
        cfg = stage.typed_config(SyncNetConfig)
        expert = build_syncnet(cfg.layout, **cfg.expert_sizes())
        expert.load_state_dict(stage.sub_state("expert", use_ema))
        return TrainedExpert(expert.eval().requires_grad_(False), cfg)

    def draw_starts(self, batch: int, n_frames: int, device: torch.device) -> torch.Tensor:
        """Random window starts [B, W] among 0 .. T-5."""
        return torch.randint(0, n_frames - WINDOW_FRAMES + 1, (batch, self.cfg.windows_per_clip), device=device)

    def embed(self, batch: dict[str, Any], starts: torch.Tensor, offsets: torch.Tensor):
        """(video [B, W, D], audio [B, W, K, D], valid [B, W, K]) embeddings of the windows at ``starts``."""
        crops = self.expert.preprocess(sync_region(batch["frames"], self.cfg.region))
        video = self.expert.forward_lip(video_windows_at(crops, starts).flatten(0, 1)).view(*starts.shape, -1)
        mfcc = batch_mfcc(batch["audio"], needed_columns(starts, offsets))
        windows, valid = offset_audio_windows(mfcc, starts, offsets)
        audio = self.expert.forward_aud(windows.flatten(0, 2)).view(*valid.shape, -1)
        return video, audio, valid

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        frames = batch["frames"]
        k, device = self.cfg.max_offset, frames.device
        offsets = torch.arange(-k, k + 1, device=device)
        starts = self.draw_starts(frames.shape[0], frames.shape[1], device)
        video, audio, valid = self.embed(batch, starts, offsets)
        n_batch, n_win = starts.shape
        candidates, mask = audio, valid
        if self.cfg.other_clip_negatives and n_batch > 1:
            in_sync = audio[:, :, k].reshape(1, 1, n_batch * n_win, -1).expand(n_batch, n_win, -1, -1)
            own = torch.arange(n_batch, device=device).repeat_interleave(n_win)
            other = own[None, None, :] != torch.arange(n_batch, device=device)[:, None, None]
            candidates = torch.cat([audio, in_sync], dim=2)
            mask = torch.cat([valid, other.expand(n_batch, n_win, -1)], dim=2)
        if self.cfg.padding_negative:
            candidates = torch.cat([candidates, candidates.new_zeros(n_batch, n_win, 1, candidates.shape[-1])], dim=2)
            mask = torch.cat([mask, mask.new_ones(n_batch, n_win, 1)], dim=2)
        logits = distance_logits(video.flatten(0, 1), candidates.flatten(0, 1), self.cfg.temperature)
        loss = offset_cross_entropy(logits, k, mask.flatten(0, 1)).view(n_batch, n_win)
        return {"sync": loss.mean(1)}

    @torch.no_grad()
    def clip_offsets(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """LSE's way per clip: mean distance m[k] over the windows where every offset fits, predicted offset
        = argmin m - K (0 is in sync); returns (offset [B], mean distances [B, 2K+1]). Needs T >= K + 5."""
        frames = batch["frames"]
        k, device = self.cfg.max_offset, frames.device
        n_windows = frames.shape[1] - WINDOW_FRAMES + 1 - k
        if n_windows < 1:
            raise ValueError(f"validation clips of {frames.shape[1]} frames are too short for offsets of +-{k} "
                             f"frames; set data.clip_frames >= {k + WINDOW_FRAMES} or lower stage.max_offset")
        starts = torch.arange(k, k + n_windows, device=device).expand(frames.shape[0], -1)
        offsets = torch.arange(-k, k + 1, device=device)
        video, audio, valid = self.embed(batch, starts, offsets)
        distance = F.pairwise_distance(video[:, :, None, :], audio, eps=PAIRWISE_EPS)
        distance = distance.masked_fill(~valid, float("nan"))
        mean = distance.nanmean(dim=1)
        return mean.nan_to_num(float("inf")).argmin(dim=1) - k, mean

    def validation_metrics(self, batch: dict[str, Any]) -> None:
        offset, _ = self.clip_offsets(batch)
        self._val_correct.append((offset == 0)[batch["valid"]].float())

    def on_validation_epoch_end(self) -> None:
        if not self._val_correct:
            return
        correct = torch.cat(self._val_correct)
        self._val_correct.clear()
        stats = torch.stack([correct.sum(), torch.tensor(float(len(correct)), device=correct.device)])
        if self.trainer.world_size > 1:
            stats = self.trainer.strategy.reduce(stats, reduce_op="sum")
        self.log("val/av_offset_accuracy", stats[0] / stats[1].clamp_min(1.0), rank_zero_only=True)
        self.log("val/av_offset_chance", 1.0 / (2 * self.cfg.max_offset + 1), rank_zero_only=True)

    @torch.no_grad()
    def log_media(self, batch: dict[str, Any]) -> dict[str, Media]:
        """Per clip, the mean audio-video distance at each offset (rows: clips, columns: -K..K; dark = near)."""
        with self.ema_scope():
            _, mean = self.clip_offsets(batch)
        mean = mean.float().cpu()
        lo, hi = mean.min(dim=1, keepdim=True).values, mean.max(dim=1, keepdim=True).values
        img = ((mean - lo) / (hi - lo + 1e-8) * 255).to(torch.uint8)
        img = img.repeat_interleave(16, 0).repeat_interleave(16, 1)
        return {"offset_distances": Media(image=img[..., None].expand(-1, -1, 3).numpy(),
                                          caption="mean distance per offset (centre column = in sync)")}
