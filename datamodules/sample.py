"""The one-clip-per-sample schema shared by every shard writer and reader.

A WebDataset sample is one clip:

- ``__key__``: ``<dataset>-<speaker>-<video>-<clip>`` (no dots: WebDataset splits keys at the first dot);
- ``fNNNN.jpg``: the aligned face frames, 25 fps, RGB JPEG;
- ``audio.flac``: mono 16 kHz;
- ``landmarks.npy``: ``T x 68 x 2`` float16, crop pixel coordinates;
- ``meta.json``: :class:`ClipMeta`;
- optional ``motion_truth.npy`` (schema 2): ``T x 8`` float32, the true motion of every frame, columns
  :data:`MOTION_TRUTH_COLUMNS` -- only a synthetic corpus knows it; real corpora have no such member;
- optional features: ``mel.npy``, ``speech_emb.npy``, ``latents.npy``.

Decoding is lazy: :func:`decode_frames` decodes only the JPEGs of the requested frame indices.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import cv2
import numpy as np
import soundfile as sf

from common.errors import SeespeakerError

SCHEMA_VERSION = 2  # 2 added the optional motion_truth.npy member
READABLE_SCHEMA_VERSIONS = (1, 2)  # schema 1 shards are schema 2 shards without motion truth
SAMPLE_RATE = 16000
FPS = 25
NUM_LANDMARKS = 68
REQUIRED_FIELDS = ("meta.json", "audio.flac", "landmarks.npy")
FEATURE_FIELDS = ("mel.npy", "speech_emb.npy", "latents.npy")
SPLITS = ("train", "val", "test")
MOTION_TRUTH = "motion_truth.npy"
# The columns of motion_truth.npy, each per frame:
#   jaw          jaw drop, 0 closed .. 1 fully open
#   mouth        lip opening, 0 closed .. 1 fully open
#   brow_raise   brows raised above their resting height by emphasis, 0 .. 1
#   expression   the clip's resting expression set by its mood, -1 (frown: inner brows down) .. 1 (brows arched up)
#   gaze_x       where the irises point, -1 (image left) .. 1 (image right), in eye half-widths
#   gaze_y       -1 (up) .. 1 (down), in eye half-heights
#   nod          head pitch, 0 level .. 1 fully down (positive: the face moves down and foreshortens)
#   blink        eye closure, 0 open .. 1 shut
MOTION_TRUTH_COLUMNS = ("jaw", "mouth", "brow_raise", "expression", "gaze_x", "gaze_y", "nod", "blink")

# Landmark index groups of the 68-point (iBUG 300-W) layout.
JAW = slice(0, 17)
BROWS = slice(17, 27)
NOSE = slice(27, 36)
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
MOUTH = slice(48, 68)
INNER_LIPS = slice(60, 68)


class SampleError(SeespeakerError, ValueError):
    """A sample that cannot be decoded; carries the sample key and the reason."""

    def __init__(self, key: str, reason: str):
        super().__init__(f"sample {key!r}: {reason}")
        self.key = key
        self.reason = reason


@dataclass
class ClipMeta:
    """What a clip is and where it came from (``meta.json``)."""

    dataset: str
    speaker: str
    video: str
    clip: int
    split: str
    num_frames: int
    fps: float = FPS
    sample_rate: int = SAMPLE_RATE
    start: float = 0.0
    end: float = 0.0
    resolution: int = 256
    crop_box: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ClipMeta:
        raw = json.loads(data)
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        return cls(**known)


@dataclass
class Clip:
    """A decoded clip: what a writer receives and what the reader can hand back."""

    key: str
    frames: np.ndarray  # T x H x W x 3 uint8 RGB
    audio: np.ndarray  # N float32 mono at meta.sample_rate
    landmarks: np.ndarray  # T x 68 x 2 crop pixel coordinates
    meta: ClipMeta
    features: dict[str, np.ndarray] = field(default_factory=dict)
    motion_truth: np.ndarray | None = None  # T x len(MOTION_TRUTH_COLUMNS) float32, where the corpus knows it


_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_]+")


def key_part(text: str) -> str:
    """A key component: anything but letters, digits and ``_`` becomes ``_`` (dots and dashes included)."""
    return _KEY_UNSAFE.sub("_", str(text)).strip("_") or "x"


def make_key(dataset: str, speaker: str, video: str, clip: int | str) -> str:
    """The sample key ``<dataset>-<speaker>-<video>-<clip>``, safe for WebDataset and file systems."""
    return "-".join(key_part(p) for p in (dataset, speaker, video, clip))


def frame_name(index: int) -> str:
    return f"f{index:04d}.jpg"


def encode_clip(clip: Clip, jpeg_quality: int = 95) -> dict[str, Any]:
    """The tar members of one clip, ready for ``webdataset.TarWriter.write``."""
    frames, landmarks, meta = clip.frames, clip.landmarks, clip.meta
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise SampleError(clip.key, f"frames must be T x H x W x 3 uint8, got {frames.shape} {frames.dtype}")
    if landmarks.shape != (len(frames), NUM_LANDMARKS, 2):
        raise SampleError(clip.key, f"landmarks must be {len(frames)} x 68 x 2, got {landmarks.shape}")
    if meta.num_frames != len(frames):
        raise SampleError(clip.key, f"meta.num_frames={meta.num_frames} but {len(frames)} frames given")
    sample: dict[str, Any] = {"__key__": clip.key, "meta.json": meta.to_json()}
    params = [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality]
    for i, frame in enumerate(frames):
        ok, buf = cv2.imencode(".jpg", frame[..., ::-1], params)
        if not ok:
            raise SampleError(clip.key, f"could not JPEG-encode frame {i}")
        sample[frame_name(i)] = buf.tobytes()
    sample["audio.flac"] = encode_audio(clip.audio, meta.sample_rate)
    sample["landmarks.npy"] = encode_npy(landmarks.astype(np.float16))
    if clip.motion_truth is not None:
        if clip.motion_truth.shape != (len(frames), len(MOTION_TRUTH_COLUMNS)):
            raise SampleError(clip.key, f"motion truth must be {len(frames)} x {len(MOTION_TRUTH_COLUMNS)} "
                              f"({', '.join(MOTION_TRUTH_COLUMNS)}), got {clip.motion_truth.shape}")
        sample[MOTION_TRUTH] = encode_npy(clip.motion_truth.astype(np.float32))
    for name, value in clip.features.items():
        sample[name if name.endswith(".npy") else f"{name}.npy"] = encode_npy(value)
    return sample


def encode_audio(audio: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0).astype(np.float32), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(key: str, name: str, data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for corrupt data
        raise SampleError(key, f"{name} is not a readable .npy array ({exc})") from exc


def check_fields(sample: dict[str, Any]) -> str:
    """Raise :class:`SampleError` if a required member is missing; return the key."""
    key = str(sample.get("__key__", "<no key>"))
    missing = [name for name in REQUIRED_FIELDS if name not in sample]
    if missing:
        raise SampleError(key, f"missing required member(s) {missing}")
    return key


def decode_meta(sample: dict[str, Any]) -> ClipMeta:
    key = check_fields(sample)
    try:
        return ClipMeta.from_json(sample["meta.json"])
    except (ValueError, TypeError) as exc:
        raise SampleError(key, f"meta.json is invalid ({exc})") from exc


def decode_audio(sample: dict[str, Any], expected_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip's mono float32 audio; a corrupt file or another sample rate raises SampleError."""
    key = str(sample.get("__key__"))
    try:
        audio, rate = sf.read(io.BytesIO(sample["audio.flac"]), dtype="float32", always_2d=False)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError for corrupt data
        raise SampleError(key, f"audio.flac is not readable ({exc})") from exc
    if rate != expected_rate:
        raise SampleError(key, f"audio is {rate} Hz, expected {expected_rate} Hz; re-run prepare")
    if audio.ndim != 1:
        audio = audio.mean(axis=1)
    return audio.astype(np.float32)


def decode_landmarks(sample: dict[str, Any], num_frames: int) -> np.ndarray:
    key = str(sample.get("__key__"))
    marks = decode_npy(key, "landmarks.npy", sample["landmarks.npy"])
    if marks.shape != (num_frames, NUM_LANDMARKS, 2):
        raise SampleError(key, f"landmarks.npy has shape {marks.shape}, expected ({num_frames}, 68, 2)")
    return marks.astype(np.float32)


def decode_motion_truth(sample: dict[str, Any], num_frames: int) -> np.ndarray | None:
    """The clip's true motion ``T x 8`` float32 (:data:`MOTION_TRUTH_COLUMNS`), or None where it has none."""
    if MOTION_TRUTH not in sample:
        return None
    key = str(sample.get("__key__"))
    truth = decode_npy(key, MOTION_TRUTH, sample[MOTION_TRUTH])
    if truth.shape != (num_frames, len(MOTION_TRUTH_COLUMNS)):
        raise SampleError(key, f"{MOTION_TRUTH} has shape {truth.shape}, expected ({num_frames}, "
                          f"{len(MOTION_TRUTH_COLUMNS)}): columns {', '.join(MOTION_TRUTH_COLUMNS)}")
    return truth.astype(np.float32)


def decode_frames(sample: dict[str, Any], indices: list[int] | np.ndarray, resolution: int | None = None) -> np.ndarray:
    """Decode only the requested frames to ``len(indices) x R x R x 3`` uint8 RGB (resized when asked)."""
    key = str(sample.get("__key__"))
    out = []
    for i in indices:
        data = sample.get(frame_name(int(i)))
        if data is None:
            raise SampleError(key, f"frame {frame_name(int(i))} is missing")
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise SampleError(key, f"{frame_name(int(i))} is not a decodable JPEG")
        if resolution is not None and img.shape[0] != resolution:
            img = cv2.resize(img, (resolution, resolution), interpolation=cv2.INTER_AREA)
        out.append(img[..., ::-1])
    return np.ascontiguousarray(np.stack(out))


def decode_clip(sample: dict[str, Any], resolution: int | None = None) -> Clip:
    """Decode a whole sample (every frame); for tools and tests, not for training."""
    meta = decode_meta(sample)
    features = {n: decode_npy(meta.video, n, sample[n]) for n in FEATURE_FIELDS if n in sample}
    landmarks = decode_landmarks(sample, meta.num_frames)
    frames = decode_frames(sample, range(meta.num_frames), resolution)
    if resolution is not None:
        landmarks = landmarks * (resolution / meta.resolution)
    return Clip(str(sample["__key__"]), frames, decode_audio(sample, meta.sample_rate), landmarks, meta, features,
                decode_motion_truth(sample, meta.num_frames))
