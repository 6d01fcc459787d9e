from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from evaluation.ssim import ssim_per_frame


def test_ssim_per_frame_equals_torchmetrics_frame_by_frame_whatever_the_chunk():
    torch.manual_seed(0)
    target = torch.rand(7, 3, 64, 48)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
    pred[0] = target[0]  # identical frames score exactly 1
    reference = structural_similarity_index_measure(pred, target, data_range=1.0, reduction="none")
    for chunk in (3, 32):
        per_frame = ssim_per_frame(pred, target, chunk=chunk)
        assert per_frame.shape == (7,)
        assert torch.allclose(per_frame, reference, atol=1e-6, rtol=0)
    assert abs(float(ssim_per_frame(pred[:1], target[:1])) - 1.0) < 1e-6
    assert float(ssim_per_frame(pred[1:], target[1:]).max()) < 0.99


def test_seespeaker_evaluate_scores_ssim_per_video_as_torchmetrics_does():
    from datamodules.sample import Clip, ClipMeta
    from evaluation.runner import score_psnr_ssim
    from evaluation.sources import EvalVideo

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (5, 32, 40, 3), dtype=np.uint8)
    noisy = np.clip(truth + rng.normal(0, 20, truth.shape), 0, 255).astype(np.uint8)
    meta = ClipMeta(dataset="synthetic", speaker="s0", video="v0", clip=0, split="test", num_frames=5)
    clip = Clip(key="s0_v0_0", frames=truth, audio=np.zeros(3200, np.float32), landmarks=np.zeros((5, 68, 2)),
                meta=meta)
    videos = [EvalVideo(key="s0_v0_0", frames=noisy, audio=clip.audio, source="test", truth=clip),
              EvalVideo(key="unpaired", frames=noisy, audio=clip.audio, source="test")]
    summary, per_video, details = score_psnr_ssim(videos, ["ssim"])

    def unit(frames):
        return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
    reference = structural_similarity_index_measure(unit(noisy), unit(truth), data_range=1.0, reduction="none")
    expected = float(reference.mean())
    assert abs(per_video["s0_v0_0"]["ssim"] - expected) < 1e-6 and summary["ssim"] == per_video["s0_v0_0"]["ssim"]
    assert 0.2 < expected < 0.99 and details["videos_without_truth"] == ["unpaired"]
