"""Evaluation speed on the CPU: Inception (FID) frames/s, SyncNet windows/s (compact and official layouts, random
weights), and LSE over N clips with the windows of many clips batched against a per-video loop (one clip at a
time in batches of 20 windows, as the reference ``syncnet_python`` scripts run), in the same process; and the
tables' per-frame measures against their baselines in the same process: SSIM per frame at 256 px by
``evaluation.ssim.ssim_per_frame`` against torchmetrics', and the Inception trunk on channels-last input (as
``InceptionFeatures`` feeds it) against contiguous input.

``python -m bench.eval_bench`` writes ``bench/out/eval.json``. One thread (per-core figures).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import write_report
from evaluation.fid import InceptionFeatures
from evaluation.lse import SyncClip, lse_scores
from lightning_modules.nets.syncnet import build_syncnet

CLIP_FRAMES = 30
REFERENCE_BATCH = 20  # windows per forward pass in syncnet_python's evaluation
BATCHED_WINDOWS = 128
CLIPS = {"compact": 20, "official": 4}


def timed(fn, repeat: int = 1) -> float:
    """Seconds per call (best of ``repeat``)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def inception_rate(frames: int = 16) -> dict:
    extractor = InceptionFeatures()
    images = np.random.default_rng(0).integers(0, 256, (frames, 64, 64, 3), dtype=np.uint8)
    extractor(images[:2])  # first call compiles the TorchScript graph
    seconds = timed(lambda: extractor(images))
    return {"what": "FID Inception features (64 px -> 299, tf1_bilinear)", "items": frames,
            "per_s": round(frames / seconds, 2), "unit": "frames/s"}


def syncnet_rate(layout: str, windows: int) -> dict:
    expert = build_syncnet(layout).eval()
    size = expert.input_size
    video = torch.rand(windows, 3, 5, size, size) * 255
    mfcc = torch.randn(windows, 1, 13, 20)
    with torch.no_grad():
        expert.forward_lip(video[:2]), expert.forward_aud(mfcc[:2])
        seconds = timed(lambda: (expert.forward_lip(video), expert.forward_aud(mfcc)), repeat=2)
    return {"what": f"SyncNet {layout} ({size} px) video + audio embeddings", "items": windows,
            "per_s": round(windows / seconds, 2), "unit": "windows/s"}


def clips(count: int) -> list[SyncClip]:
    rng = np.random.default_rng(1)
    return [SyncClip(f"c{i}", rng.integers(0, 256, (CLIP_FRAMES, 64, 64, 3), dtype=np.uint8),
                     (rng.standard_normal(CLIP_FRAMES * 640) * 0.1).astype(np.float32)) for i in range(count)]


def batched_vs_loop(layout: str) -> dict:
    expert = build_syncnet(layout).eval()
    data = clips(CLIPS[layout])
    batched_result = []
    batched = timed(lambda: batched_result.append(lse_scores(expert, data, batch_windows=BATCHED_WINDOWS)))
    looped_result = []
    looped = timed(lambda: looped_result.append([lse_scores(expert, [c], batch_windows=REFERENCE_BATCH)
                                                 for c in data]))
    same = np.allclose([c.lse_d for c in batched_result[0].clips], [r.lse_d for r in looped_result[0]], rtol=1e-4)
    return {"what": f"LSE of {len(data)} clips x {CLIP_FRAMES} frames, {layout}", "items": len(data),
            "batched_s": round(batched, 2), "per_video_s": round(looped, 2), "speedup": round(looped / batched, 2),
            "same_scores": bool(same)}


def ssim_vs_torchmetrics(frames: int = 64, size: int = 256) -> dict:
    from torchmetrics.functional.image import structural_similarity_index_measure

    from evaluation.ssim import ssim_per_frame
    target = torch.rand(frames, 3, size, size, generator=torch.Generator().manual_seed(2))
    pred = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    ours, reference = [], []
    new = timed(lambda: ours.append(ssim_per_frame(pred, target)), repeat=2)
    baseline = timed(lambda: reference.append(torch.cat([
        structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
        for p, t in zip(pred.split(32), target.split(32), strict=True)])), repeat=2)
    return {"what": f"SSIM per frame, {size} px: matrix blur vs torchmetrics", "items": frames,
            "new_s": round(new, 2), "baseline_s": round(baseline, 2), "speedup": round(baseline / new, 2),
            "same_scores": bool(torch.allclose(ours[0], reference[0], atol=1e-6, rtol=0))}


def inception_channels_last(frames: int = 16) -> dict:
    model = InceptionFeatures().model
    batch = torch.rand(frames, 3, 299, 299, generator=torch.Generator().manual_seed(4)) * 2 - 1
    last = batch.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        model(batch[:2]), model(last[:2])  # the TorchScript graph's first calls
        outputs = {}
        baseline = timed(lambda: outputs.update(contiguous=model(batch)), repeat=2)
        new = timed(lambda: outputs.update(last=model(last)), repeat=2)
    return {"what": "Inception trunk, 299 px: channels-last vs contiguous input", "items": frames,
            "new_s": round(new, 2), "baseline_s": round(baseline, 2), "speedup": round(baseline / new, 2),
            "same_scores": bool(torch.allclose(outputs["last"], outputs["contiguous"], atol=1e-4, rtol=0))}


def main() -> None:
    torch.set_num_threads(1)
    rows = [inception_rate(), syncnet_rate("compact", 64), syncnet_rate("official", 16)]
    rows += [batched_vs_loop("compact"), batched_vs_loop("official"), ssim_vs_torchmetrics(),
             inception_channels_last()]
    columns = ["what", "items", "per_s", "unit", "batched_s", "per_video_s", "new_s", "baseline_s", "speedup",
               "same_scores"]
    write_report("eval", rows, columns,
                 notes=f"batched: the windows of consecutive clips share forward passes of {BATCHED_WINDOWS}; "
                       f"per-video: one clip at a time, {REFERENCE_BATCH} windows per pass (the reference scripts).")


if __name__ == "__main__":
    main()
