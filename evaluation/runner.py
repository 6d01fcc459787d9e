"""The evaluation runner: one :class:`VideoSet` and one protocol in, every metric with its provenance out.

- LSE-C / LSE-D (``evaluation.lse``): the official SyncNet (``syncnet_v2.model``) when the protocol gives it,
  else the project's trained expert (an exported ``syncnet.safetensors``), labelled as such;
- FID over all frames pooled (``evaluation.fid``) against statistics of the real test clips, cached with their
  provenance (extractor hash, resize mode, the index file and the chosen clips);
- CSIM (``evaluation.identity``) of every frame against the speaker's reference face;
- PSNR / SSIM (torchmetrics' definitions) where a ground-truth clip exists;
- mouth_sync (``evaluation.mouth_sync``, when asked for): the expert-free sync measure, dlib's mouth opening against
  the speech loudness, with its shifted-speech null.
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio

from evaluation.fid import FeatureStats, InceptionFeatures, cached_stats, fid_from_stats, file_sha256
from evaluation.identity import ArcFaceEmbedder, DlibFaceEmbedder, csim, dataset_csim, face_recognition_models_dir
from evaluation.lse import SyncClip, lse_scores
from evaluation.protocol import LSE_CROP_NAMES, EvalProtocol
from evaluation.sources import EvalInputError, EvalVideo, TestSet, VideoSet, choose, resize_frames
from evaluation.ssim import ssim_per_frame
from lightning_modules.nets.syncnet import load_official_syncnet
from lightning_modules.stagefile import StageFiles
from lightning_modules.syncnet import SyncNetStage


def sync_expert(protocol: EvalProtocol, stages_dir: str | Path | None, device: str = "cpu"):
    """(expert, description) by the protocol: official weights, or the project's exported syncnet stage."""
    use_official = protocol.sync_expert == "official" or (protocol.sync_expert == "auto" and protocol.syncnet_weights)
    if use_official:
        if not protocol.syncnet_weights:
            raise EvalInputError("the protocol scores LSE with the official SyncNet: give --syncnet-weights "
                                 "PATH/syncnet_v2.model, or choose --protocol synthetic (the project's expert)")
        expert = load_official_syncnet(protocol.syncnet_weights, device)
        return expert, {"label": "official syncnet_v2", "layout": "official", "path": protocol.syncnet_weights,
                        "sha256": expert.weights_sha256, "input_size": expert.input_size, "region": "face"}
    path = Path(protocol.project_expert) if protocol.project_expert else None
    if path is None and stages_dir:
        path = Path(stages_dir) / "syncnet.safetensors"
    if path is None or not path.is_file():
        raise EvalInputError(f"no project sync expert at {path or '<no stages dir>'}: give an exported stages dir "
                             "(seespeaker export), --sync-expert PATH/syncnet.safetensors, or --syncnet-weights "
                             "for the official SyncNet")
    expert, cfg = SyncNetStage.for_inference(StageFiles.of(path, "syncnet"))
    return expert.to(device), {"label": f"project syncnet ({cfg.layout}; not comparable with published LSE)",
                               "layout": cfg.layout, "path": str(path), "sha256": file_sha256(path),
                               "input_size": expert.input_size, "region": cfg.region}


def score_lse(videos: list[EvalVideo], protocol: EvalProtocol, expert, info: dict, device: str = "cpu"):
    """(summary, per-video scores, details) of LSE-C / LSE-D / offset."""
    from evaluation.facecrop import reference_crops
    from evaluation.jpeg import jpeg_roundtrip

    clips, without_face = [], []
    for video in videos:
        frames = video.frames
        if protocol.crop_mode == "reference":
            try:
                frames = reference_crops(video.frames, protocol.crop_scale)
            except ValueError as exc:  # no face in any frame: no track to score, as in the reference pipeline
                without_face.append({"video": video.source, "reason": str(exc)})
                continue
        if protocol.lse_frames == "jpeg":
            frames = jpeg_roundtrip(frames, protocol.fps)
        if info["region"] == "lower_face":
            frames = np.ascontiguousarray(frames[:, frames.shape[1] // 2:])
        clips.append(SyncClip(video.key, frames, video.audio, fps=protocol.fps, sample_rate=protocol.sample_rate))
    if not clips:
        return {}, {}, {"videos_without_face": without_face, "note": "the reference crop found a face in no video"}
    result = lse_scores(expert, clips, batch_windows=protocol.batch_windows, device=device,
                        expert_label=info["label"], crop_mode=LSE_CROP_NAMES[protocol.crop_mode])
    per_video = {s.key: {"lse_c": s.lse_c, "lse_d": s.lse_d, "av_offset": s.offset, "sync_windows": s.n_windows}
                 for s in result.clips}
    details = {**result.protocol, "expert_weights_sha256": info["sha256"], "expert_path": info["path"],
               "expert_region": info["region"], "frames": protocol.lse_frames}
    if protocol.crop_mode == "reference":
        from evaluation.facecrop import DETECTOR

        details.update(face_detector=DETECTOR, videos_without_face=without_face)
    return {"lse_c": result.lse_c, "lse_d": result.lse_d}, per_video, details


def _strided(frames: np.ndarray, stride: int) -> np.ndarray:
    return frames[::stride]


def fid_cache_path(cache_dir: Path, digest: str, extractor: InceptionFeatures, stride: int) -> Path:
    """Where the real statistics of one clip set, extractor and resize mode are cached."""
    return cache_dir / f"real-{digest[:16]}-{extractor.sha256[:8]}-{extractor.resize_mode}-s{stride}.npz"


def _too_few_for_fid(videos: list[EvalVideo], test: TestSet, keys: list[str], stride: int) -> str:
    """Why FID cannot be computed (a covariance needs at least 2 frames on each side), else ""."""
    generated = sum(len(range(0, len(v.frames), stride)) for v in videos)
    real = sum(len(range(0, test.frame_counts.get(k, 0), stride)) for k in keys)
    if min(generated, real) >= 2:
        return ""
    return (f"{generated} generated and {real} real frames at frame stride {stride}; FID needs at least 2 on each "
            f"side (and >= 2048 to be unbiased): score more clips (--max-clips) or a smaller --frame-stride")


def _size_warning(videos: list[EvalVideo], test: TestSet) -> list[str]:
    sizes = sorted({v.frames.shape[1:3] for v in videos})
    real = next((faces[0].image.shape[:2] for faces in test.references.values()), None)
    if real is None or sizes == [real]:
        return []
    return [f"generated frames are {', '.join(f'{h}x{w}' for h, w in sizes)} px, the real frames {real[0]}x{real[1]} "
            "px: FID also measures the difference in size (set the protocol's resolution to the generated size)"]


def score_fid(videos: list[EvalVideo], protocol: EvalProtocol, test: TestSet, cache_dir: Path,
              device: str = "cpu") -> tuple[dict, dict]:
    """(summary, details) of FID: generated frames pooled against the real test clips' cached statistics."""
    keys = choose(test.keys(), protocol.max_clips, protocol.seed)
    too_few = _too_few_for_fid(videos, test, keys, protocol.fid_frame_stride)
    if too_few:
        return {}, {"note": too_few}
    extractor = InceptionFeatures(protocol.inception_weights or None, protocol.resize_mode, device=device)
    digest = test.digest(keys)
    source = f"{test.root.resolve()}:{test.split}:{digest}:stride{protocol.fid_frame_stride}"
    path = fid_cache_path(cache_dir, digest, extractor, protocol.fid_frame_stride)
    provenance = {**extractor.describe(), "source": source}
    reused = path.is_file() and FeatureStats.load(path).provenance == provenance
    real = cached_stats(path, extractor, (_strided(c.frames, protocol.fid_frame_stride)
                                          for c in test.iter_clips(keys)), source)
    fake = FeatureStats(provenance=extractor.describe())
    for video in videos:
        fake.update(extractor(_strided(video.frames, protocol.fid_frame_stride)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fid_from_stats(real, fake)
    return {"fid": result.fid}, {
        "n_real_frames": result.n_real, "n_generated_frames": result.n_generated,
        "frame_stride": protocol.fid_frame_stride,
        "extractor": result.extractor, "reference_stats": str(path), "reference_stats_reused": reused,
        "reference_clips": len(keys), "reference_source": source,
        "warnings": [str(w.message) for w in caught] + _size_warning(videos, test),
    }


def face_embedder(protocol: EvalProtocol):
    """(embedder, description with the weights' sha256): ArcFace ONNX when given, else dlib's ResNet."""
    if protocol.arcface_weights:
        embedder = ArcFaceEmbedder(protocol.arcface_weights)
        return embedder, {"model": embedder.name, "sha256": file_sha256(protocol.arcface_weights)}
    embedder = DlibFaceEmbedder()
    weights = face_recognition_models_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    return embedder, {"model": embedder.name, "sha256": file_sha256(weights)}


def _frame_landmarks(video: EvalVideo, protocol: EvalProtocol, index: np.ndarray):
    if protocol.csim_landmarks != "reference_clip" or video.truth is None:
        return None
    marks = video.truth.landmarks * (video.frames.shape[1] / video.truth.frames.shape[1])
    index = np.minimum(index, len(marks) - 1)
    return marks[index]


def score_csim(videos: list[EvalVideo], protocol: EvalProtocol, references: dict) -> tuple[dict, dict, dict]:
    """(summary, per-video CSIM, details): every frame against the speaker's reference face."""
    embedder, info = face_embedder(protocol)
    results, per_video, without_reference = [], {}, []
    for video in videos:
        reference = references.get(video.key)
        if reference is None:
            without_reference.append(video.key)
            continue
        index = np.arange(0, len(video.frames), protocol.csim_frame_stride)
        result = csim(embedder, reference.image, video.frames[index], reference.landmarks,
                      _frame_landmarks(video, protocol, index))
        results.append(result)
        per_video[video.key] = {"csim": result.csim, "csim_reference": reference.key}
    if not results:
        return {}, per_video, {**info, "videos_without_reference": without_reference,
                               "note": "no video could be paired with a test speaker (name files <sample key>.mp4)"}
    summary = dataset_csim(results)
    details = {**info, **{k: v for k, v in summary.items() if k != "csim"}, "frame_stride": protocol.csim_frame_stride,
               "frame_landmarks": protocol.csim_landmarks, "videos_without_reference": without_reference,
               "reference": "first frame of another real clip of the speaker (the same clip if it is the only one)"}
    return {"csim": summary["csim"]}, per_video, details


def _unit(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def score_psnr_ssim(videos: list[EvalVideo], metrics: list[str]) -> tuple[dict, dict, dict]:
    """(summary, per-video, details) of PSNR / SSIM against the ground-truth frames ([0, 1] range; SSIM as
    torchmetrics computes it, through ``evaluation.ssim``)."""
    per_video, resized, frames_used, lengths = {}, [], 0, {}
    for video in videos:
        if video.truth is None:
            continue
        count = min(len(video.frames), len(video.truth.frames))
        if len(video.frames) != len(video.truth.frames):
            lengths[video.key] = {"frames": len(video.frames), "truth_frames": len(video.truth.frames)}
        truth = video.truth.frames[:count]
        if truth.shape[1:3] != video.frames.shape[1:3]:
            truth = resize_frames(truth, video.frames.shape[1:3])
            resized.append(video.key)
        preds, target = _unit(video.frames[:count]), _unit(truth)
        row = {}
        if "psnr" in metrics:
            row["psnr"] = float(peak_signal_noise_ratio(preds, target, data_range=1.0, reduction="none",
                                                        dim=(1, 2, 3)).mean())
        if "ssim" in metrics:
            row["ssim"] = float(ssim_per_frame(preds, target).mean())
        per_video[video.key], frames_used = row, frames_used + count
    summary = {m: float(np.mean([r[m] for r in per_video.values()])) for m in ("psnr", "ssim")
               if m in metrics and per_video}
    details = {"n_videos": len(per_video), "n_frames": frames_used, "range": "uint8 / 255, data_range 1.0",
               "ssim": "gaussian kernel 11, sigma 1.5 (torchmetrics defaults)", "truth_resized_to_video": resized,
               "videos_without_truth": [v.key for v in videos if v.truth is None],
               "compared_on_the_shorter_length": lengths}
    if not per_video:
        details["note"] = "no video is paired with a test clip (name the files <sample key>.mp4)"
    return summary, per_video, details


def evaluate(videos: VideoSet, protocol: EvalProtocol, test: TestSet, stages_dir: str | Path | None = None,
             fid_cache_dir: str | Path | None = None, device: str = "cpu") -> dict:
    """Every metric of the protocol on ``videos``: ``{"metrics", "per_video", "details", "timing_s",
    "not_computed"}`` (an asked-for metric without a value, with the reason; an error when none has one)."""
    if not videos.videos:
        skipped = videos.skipped + videos.shard_skipped
        raise EvalInputError(f"no video left to score ({len(skipped)} skipped: "
                             + "; ".join(f"{s['video']}: {s['reason']}" for s in skipped[:5]) + ")")
    metrics, details, timing = {}, {}, {}
    per_video = {v.key: {"source": v.source, "n_frames": len(v.frames), "speaker": v.speaker, "notes": v.notes}
                 for v in videos.videos}

    def merge(rows: dict) -> None:
        for key, row in rows.items():
            per_video[key].update(row)

    if "lse" in protocol.metrics:
        start = time.perf_counter()
        expert, info = sync_expert(protocol, stages_dir, device)
        summary, rows, details["lse"] = score_lse(videos.videos, protocol, expert, info, device)
        metrics.update(summary), merge(rows)
        timing["lse"] = time.perf_counter() - start
    if "fid" in protocol.metrics:
        start = time.perf_counter()
        cache = Path(fid_cache_dir) if fid_cache_dir else default_cache_dir(test)
        summary, details["fid"] = score_fid(videos.videos, protocol, test, cache, device)
        metrics.update(summary)
        timing["fid"] = time.perf_counter() - start
    if "csim" in protocol.metrics:
        start = time.perf_counter()
        summary, rows, details["csim"] = score_csim(videos.videos, protocol, videos.references)
        metrics.update(summary), merge(rows)
        timing["csim"] = time.perf_counter() - start
    if {"psnr", "ssim"} & set(protocol.metrics) and videos.kind != "ground_truth":
        start = time.perf_counter()
        summary, rows, details["psnr_ssim"] = score_psnr_ssim(videos.videos, protocol.metrics)
        metrics.update(summary), merge(rows)
        timing["psnr_ssim"] = time.perf_counter() - start
    if "mouth_sync" in protocol.metrics:
        start = time.perf_counter()
        summary, rows, details["mouth_sync"] = score_mouth_sync(videos.videos, protocol)
        metrics.update(summary), merge(rows)
        timing["mouth_sync"] = time.perf_counter() - start
    not_computed = _not_computed(protocol, metrics, details, videos.kind)
    if not metrics:
        raise EvalInputError("no metric could be computed: " + "; ".join(f"{m}: {r}" for m, r in not_computed.items()))
    return {"metrics": metrics, "per_video": per_video, "details": details, "timing_s": timing,
            "not_computed": not_computed}


def _not_computed(protocol: EvalProtocol, metrics: dict, details: dict, kind: str) -> dict[str, str]:
    """Each asked-for metric that has no value, with the reason."""
    reasons = {}
    for metric in protocol.metrics:
        if {"lse": "lse_d", "mouth_sync": "mouth_sync_r"}.get(metric, metric) in metrics:
            continue
        if metric in ("psnr", "ssim") and kind == "ground_truth":
            reasons[metric] = "the ground-truth row is its own truth"
            continue
        section = details.get("psnr_ssim" if metric in ("psnr", "ssim") else metric, {})
        reasons[metric] = section.get("note", "no video has what it needs")
    return reasons


def score_mouth_sync(videos: list[EvalVideo], protocol: EvalProtocol) -> tuple[dict, dict, dict]:
    """(summary, per-video, details) of the expert-free sync measure: means over videos of the face rate, r, the
    shifted-speech null and their margin, and r against the real clip's mouth opening where the corpus stores it."""
    from datamodules.sample import MOTION_TRUTH_COLUMNS
    from evaluation.mouth_sync import MAX_LAG, MIN_SHIFT_SECONDS, video_mouth_sync

    per_video = {}
    for video in videos:
        truth = video.truth.motion_truth if video.truth is not None else None
        mouth = truth[:, MOTION_TRUTH_COLUMNS.index("mouth")] if truth is not None else None
        result = video_mouth_sync(video.frames, video.audio, protocol.sample_rate, protocol.fps, mouth_truth=mouth)
        per_video[video.key] = {f"mouth_sync_{k}": v for k, v in result.items() if k != "frames"}
    summary = {}
    for name in ("face_rate", "r", "null", "margin", "truth_r"):
        values = [row[f"mouth_sync_{name}"] for row in per_video.values()]
        finite = [v for v in values if np.isfinite(v)]
        summary[f"mouth_sync_{name}"] = float(np.mean(finite)) if finite else float("nan")
    details = {"max_lag_frames": MAX_LAG, "min_shift_seconds": MIN_SHIFT_SECONDS,
               "videos_without_value": [k for k, row in per_video.items() if not np.isfinite(row["mouth_sync_r"])],
               "note": "dlib 68-point inner-lip gap over the inter-ocular distance against the RMS amplitude of each "
                       "frame's speech; best lag within the max lag; null: circular shifts of at least the min shift"}
    return summary, per_video, details


def default_cache_dir(test: TestSet) -> Path:
    """``<data root>/fid_stats`` when writable, else ``~/.cache/seespeaker/fid_stats``."""
    folder = test.root / "fid_stats"
    if os.access(test.root, os.W_OK):
        return folder
    return Path.home() / ".cache" / "seespeaker" / "fid_stats"
