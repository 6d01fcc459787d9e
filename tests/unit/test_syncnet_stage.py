"""The sync expert's stage: the distance cross-entropy, LSE-aligned windows, training and export.

The official layout's key names and shapes are tested in test_syncnet_layout.py.
"""
from __future__ import annotations

from dataclasses import asdict

import pytest
import pytorch_lightning as pl
import torch

from datamodules.config import DataConfig
from lightning_modules.nets.syncnet import mfcc_windows
from lightning_modules.stagefile import StageFile, StageFiles, save_stage_file
from lightning_modules.syncnet import (
    SyncNetConfig,
    SyncNetStage,
    batch_mfcc,
    distance_logits,
    offset_audio_windows,
    offset_cross_entropy,
    offset_sync_loss,
)

FRAMES, RES = 9, 32


def tiny_stage(max_offset: int = 2, clip_frames: int = FRAMES) -> SyncNetStage:
    torch.manual_seed(0)
    cfg = SyncNetConfig(layout="compact", embedding_dim=32, width=8, input_size=RES, max_offset=max_offset,
                        windows_per_clip=2, lr=3e-3, warmup_steps=0, schedule="constant")
    return SyncNetStage(cfg, DataConfig(resolution=RES, clip_frames=clip_frames, batch_size=4))


def make_batch(batch: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "key": [f"k{i}" for i in range(batch)], "speaker": [f"s{i}" for i in range(batch)],
        "speaker_index": torch.arange(batch), "valid": torch.ones(batch, dtype=torch.bool),
        "frames": torch.rand(batch, FRAMES, 3, RES, RES, generator=g) * 2 - 1,
        "landmarks": torch.rand(batch, FRAMES, 68, 2, generator=g) * RES,
        "audio": torch.randn(batch, 16000, generator=g) * 0.2,
        "frame_start": torch.zeros(batch, dtype=torch.long),
    }


def test_loss_is_lowest_when_the_target_is_the_nearest_offset():
    torch.manual_seed(0)
    video = torch.randn(6, 16) * 3
    audio = video[:, None, :] + torch.randn(6, 7, 16) * 3   # 7 offsets, all far ...
    nearest = torch.tensor([0, 3, 6, 2, 5, 1])
    audio[torch.arange(6), nearest] = video + 0.1 * torch.randn(6, 16)  # ... but one, different per window
    logits = distance_logits(video, audio, temperature=1.0)
    assert torch.equal(logits.argmax(1), nearest)
    for row, k in enumerate(nearest.tolist()):
        losses = torch.stack([offset_cross_entropy(logits[row:row + 1], j)[0] for j in range(7)])
        assert losses.argmin().item() == k
        assert losses[k] < losses[[j for j in range(7) if j != k]].min() - 1.0


def test_masked_offsets_carry_no_probability():
    logits = torch.tensor([[5.0, 0.0, -1.0]])
    valid = torch.tensor([[False, True, True]])
    masked = offset_cross_entropy(logits, 1, valid)
    unmasked = offset_cross_entropy(logits[:, 1:], 0)
    assert torch.allclose(masked, unmasked)


def test_offset_windows_are_lse_columns_and_out_of_speech_windows_are_invalid():
    audio = torch.randn(2, 8000) * 0.3                      # 0.5 s -> 49 MFCC columns, 12 frames
    mfcc = batch_mfcc(audio)
    starts = torch.tensor([[0, 3], [5, 7]])
    offsets = torch.arange(-2, 3)
    windows, valid = offset_audio_windows(mfcc, starts, offsets)
    assert windows.shape == (2, 2, 5, 1, 13, 20)
    for b in range(2):
        for w in range(2):
            for j, k in enumerate(offsets.tolist()):
                frame = starts[b, w].item() + k
                fits = frame >= 0 and 4 * frame + 20 <= mfcc.shape[-1]
                assert valid[b, w, j].item() == fits
                if fits:
                    assert torch.equal(windows[b, w, j], mfcc_windows(mfcc[b], [frame])[0])


def test_mfcc_of_the_needed_columns_equals_the_whole():
    audio = torch.randn(2, 16000) * 0.3
    whole = batch_mfcc(audio)
    assert torch.allclose(batch_mfcc(audio, 52), whole[..., :52], atol=1e-4)


def test_clips_shorter_than_window_plus_shift_are_refused():
    with pytest.raises(ValueError, match="clip_frames=8.*max_offset=4"):
        tiny_stage(max_offset=4, clip_frames=8)
    stage = tiny_stage(max_offset=4)
    short = make_batch()
    short["frames"] = short["frames"][:, :8]
    with pytest.raises(ValueError, match="too short for offsets"):
        stage.clip_offsets(short)


def test_training_lowers_the_sync_loss_and_export_round_trips(tmp_path):
    stage = tiny_stage()
    batch = make_batch()
    fixed = torch.tensor([[0, 2], [1, 3], [2, 4], [0, 4]])
    stage.draw_starts = lambda n, t, device: fixed            # the same windows every step: a fit we can measure
    stage.eval()
    with torch.no_grad():
        before = stage.compute_losses(batch)["sync"]
    assert before.shape == (4,)
    stage.train()
    trainer = pl.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(stage, train_dataloaders=torch.utils.data.DataLoader([batch] * 30, batch_size=None))
    stage.eval()
    with torch.no_grad():
        after = stage.compute_losses(batch)["sync"]
        offsets, mean = stage.clip_offsets(batch)
    assert after.mean() < 0.5 * before.mean(), (before, after)
    assert mean.shape == (4, 5) and offsets.shape == (4,)

    save_stage_file(tmp_path / "syncnet.safetensors",
                           StageFile(stage="syncnet", state=stage.state_dict(), config=asdict(stage.cfg)))
    expert, cfg = SyncNetStage.for_inference(StageFiles(tmp_path))
    assert cfg.layout == "compact" and not any(p.requires_grad for p in expert.parameters())
    with torch.no_grad():
        ours = offset_sync_loss(stage.expert, batch["frames"], batch["audio"], fixed, 2, 1.0)
        loaded = offset_sync_loss(expert, batch["frames"], batch["audio"], fixed, 2, 1.0)
    assert torch.allclose(ours, loaded, atol=1e-5)
