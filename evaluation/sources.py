"""The videos an evaluation scores, and the real clips they are compared with.

Three sources give the same :class:`VideoSet`:
- ``videos_from_dir``: mp4 files with audio, scored as they are (PyAV decode). A video at another frame rate is
  resampled or refused per the protocol, never silently scored; one without audio is an error or a counted skip.
  A file named ``<sample key>.mp4`` is paired with that test clip (ground truth for PSNR/SSIM, its speaker for CSIM).
- ``videos_from_truth``: the real test clips themselves (the ground-truth row of a results table);
- ``videos_from_generator``: each test clip's speech through a generator (the speech-to-video pipeline).
Every test clip's speaker gets a reference face: the first frame of another real clip of that speaker (or of the
same clip when the speaker has only one).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from scipy.signal import resample_poly
from webdataset.tariterators import tarfile_samples

from common.errors import SeespeakerError
from common.media import read_mp4
from datamodules.sample import Clip, SampleError, decode_clip, decode_frames, decode_landmarks, decode_meta
from datamodules.shards import INDEX_NAME, ShardIndex
from evaluation.protocol import EvalProtocol

MIN_SYNC_FRAMES = 6


class EvalInputError(SeespeakerError, ValueError):
    """An input the evaluation refuses (the message names the file and what to do)."""


@dataclass
class ReferenceFace:
    """A speaker's real face: the first frame of one of their real clips, with its 68 landmarks."""

    key: str
    image: np.ndarray
    landmarks: np.ndarray


@dataclass
class EvalVideo:
    """One video to score: uint8 RGB frames [T, H, W, 3] at the protocol's fps and mono float audio [N]."""

    key: str
    frames: np.ndarray
    audio: np.ndarray
    source: str
    speaker: str = ""
    truth: Clip | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class VideoSet:
    """The videos of one evaluation, what was skipped (with reasons) and each video's reference face (by key).

    ``shard_skipped`` is the test set's own list of shard samples it could not read (with reasons): later reads of
    the shards (the FID statistics) add to the same list."""

    kind: str
    videos: list[EvalVideo]
    skipped: list[dict] = field(default_factory=list)
    references: dict[str, ReferenceFace] = field(default_factory=dict)
    shard_skipped: list[dict] = field(default_factory=list)


class TestSet:
    """The real clips of one split: keys and metadata in a first pass, whole clips decoded on demand."""

    def __init__(self, root: str | Path, split: str, resolution: int = 0):
        self.root, self.split, self.resolution = Path(root), split, resolution or None
        if not (self.root / INDEX_NAME).is_file():
            raise EvalInputError(f"--data {self.root}: no {INDEX_NAME}; "
                                 f"give the folder that `seespeaker prepare` wrote")
        self.index = ShardIndex.load(self.root)
        if split not in self.index.splits:
            raise EvalInputError(f"--data {self.root} has no split {split!r}; splits: {', '.join(self.index.splits)}")
        self.urls = self.index.shard_paths(self.root, split)
        self.skipped: list[dict] = []
        self.speakers: dict[str, str] = {}
        self.frame_counts: dict[str, int] = {}
        self.references: dict[str, list[ReferenceFace]] = {}
        for sample in self._samples():
            try:
                meta = decode_meta(sample)
                key = str(sample["__key__"])
                frame = decode_frames(sample, [0], self.resolution)[0]
                marks = decode_landmarks(sample, meta.num_frames)[0] * (frame.shape[0] / meta.resolution)
            except (SampleError, KeyError) as exc:
                self._skip(str(sample.get("__key__")), str(exc))
                continue
            self.speakers[key], self.frame_counts[key] = meta.speaker, meta.num_frames
            self.references.setdefault(meta.speaker, []).append(ReferenceFace(key, frame, marks))

    def _skip(self, video: str, reason: str) -> None:
        """Count an unreadable sample (or shard) once, however many passes over the shards meet it."""
        entry = {"video": video, "reason": reason}
        if entry not in self.skipped:
            self.skipped.append(entry)

    def _samples(self):
        return tarfile_samples(({"url": u} for u in self.urls),
                               handler=lambda exc: self._skip("shard", str(exc)) or True)

    def keys(self) -> list[str]:
        """Every readable clip key of the split, sorted."""
        return sorted(self.speakers)

    def iter_clips(self, keys: list[str]):
        """The whole clips of ``keys`` one at a time, in shard order (frames at the protocol resolution,
        landmarks scaled to match)."""
        wanted = set(keys)
        for sample in self._samples():
            key = str(sample.get("__key__"))
            if key not in wanted:
                continue
            try:
                clip = decode_clip(sample, self.resolution)
            except (SampleError, KeyError) as exc:  # a later frame or the audio is corrupt: skipped and counted
                self._skip(key, str(exc))
                continue
            yield clip

    def clips(self, keys: list[str]) -> dict[str, Clip]:
        """The whole clips of ``keys`` by key."""
        return {clip.key: clip for clip in self.iter_clips(keys)}

    def reference(self, speaker: str, key: str) -> ReferenceFace | None:
        """The speaker's reference face: another clip's first frame when there is one, else this clip's."""
        faces = self.references.get(speaker, [])
        others = [f for f in faces if f.key != key]
        return (others or faces or [None])[0]

    def digest(self, keys: list[str]) -> str:
        """sha256 of the index file and the chosen keys: what a cached statistic of these clips depends on."""
        digest = hashlib.sha256((self.root / INDEX_NAME).read_bytes())
        digest.update(json.dumps([self.split, sorted(keys), self.resolution]).encode())
        return digest.hexdigest()


def choose(keys: list[str], max_clips: int, seed: int) -> list[str]:
    """All keys, or a seeded subset of ``max_clips`` of them (sorted)."""
    if not max_clips or max_clips >= len(keys):
        return sorted(keys)
    picked = np.random.default_rng(seed).choice(len(keys), size=max_clips, replace=False)
    return sorted(keys[i] for i in picked)


def resample_frames(frames: np.ndarray, source_fps: float, target_fps: float) -> np.ndarray:
    """Frames at ``target_fps``: for each output time, the nearest source frame (ffmpeg's fps filter rule)."""
    count = int(np.floor(len(frames) * target_fps / source_fps + 1e-6))
    index = np.minimum(np.floor(np.arange(count) * source_fps / target_fps + 0.5).astype(int), len(frames) - 1)
    return frames[index]


def resample_audio(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of mono float audio."""
    if source_rate == target_rate:
        return audio
    g = np.gcd(int(source_rate), int(target_rate))
    return resample_poly(audio, target_rate // g, source_rate // g).astype(np.float32)


def read_video(path: Path, protocol: EvalProtocol) -> tuple[EvalVideo | None, str]:
    """(video, "") or (None, reason to skip). Raises EvalInputError where the protocol says to refuse."""
    try:
        frames, audio, fps, rate = read_mp4(path)
    except Exception as exc:  # PyAV raises several error types for broken files
        return None, f"not a readable video ({type(exc).__name__}: {exc})"
    if not fps > 0:
        return None, "the video stream states no frame rate; re-encode it at a fixed rate (e.g. ffmpeg -r 25)"
    video = EvalVideo(path.stem, frames, audio, str(path))
    if rate == 0 or len(audio) == 0:
        if protocol.missing_audio == "error":
            raise EvalInputError(f"{path} has no audio track: LSE needs the speech. Mux the audio in, or use a "
                                 "protocol with missing_audio: skip to count and skip such videos")
        return None, "no audio track"
    if abs(fps - protocol.fps) > 1e-3:
        if protocol.fps_mismatch == "refuse":
            raise EvalInputError(f"{path} is {fps:g} fps, the protocol scores {protocol.fps:g} fps video: re-encode "
                                 f"it at {protocol.fps:g} fps, or use fps_mismatch: resample")
        video.frames = resample_frames(frames, fps, protocol.fps)
        video.notes.append(f"resampled {fps:g} -> {protocol.fps:g} fps ({len(frames)} -> {len(video.frames)} frames)")
    if rate != protocol.sample_rate:
        video.audio = resample_audio(audio, rate, protocol.sample_rate)
        video.notes.append(f"audio resampled {rate} -> {protocol.sample_rate} Hz")
    return video, ""


def _check_length(video: EvalVideo, protocol: EvalProtocol) -> str:
    """A reason to skip a video LSE cannot score (fewer than 6 frames with speech under them), else ""."""
    if "lse" not in protocol.metrics:
        return ""
    if len(video.frames) < MIN_SYNC_FRAMES:
        return f"{len(video.frames)} frames; LSE needs at least {MIN_SYNC_FRAMES} (0.24 s at 25 fps)"
    audio_frames = int(len(video.audio) // (protocol.sample_rate / protocol.fps))
    if audio_frames < MIN_SYNC_FRAMES:
        return (f"{len(video.audio)} audio samples cover {audio_frames} frames; LSE needs speech under at least "
                f"{MIN_SYNC_FRAMES} frames")
    return ""


def _attach(videos: list[EvalVideo], test: TestSet | None) -> dict[str, ReferenceFace]:
    """Pair videos with their test clips (ground truth, speaker) and collect the speakers' reference faces."""
    references = {}
    if test is None:
        return references
    truth = test.clips([v.key for v in videos if v.key in test.speakers])
    for video in videos:
        if video.key in test.speakers:
            video.truth = truth.get(video.key)
            video.speaker = test.speakers[video.key]
            face = test.reference(video.speaker, video.key)
            if face is not None:
                references[video.key] = face
    return references


def videos_from_dir(folder: str | Path, protocol: EvalProtocol, test: TestSet | None) -> VideoSet:
    """Every ``*.mp4`` under ``folder`` (sorted; a seeded subset with max_clips)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalInputError(f"--videos {folder}: no such folder; give the folder of generated .mp4 files")
    paths = sorted(folder.glob("*.mp4"))
    if not paths:
        raise EvalInputError(f"--videos {folder}: no .mp4 files there; give the folder of generated videos")
    chosen = set(choose([p.stem for p in paths], protocol.max_clips, protocol.seed))
    videos, skipped = [], []
    for path in (p for p in paths if p.stem in chosen):
        video, reason = read_video(path, protocol)
        reason = reason or _check_length(video, protocol)
        if reason:
            skipped.append({"video": str(path), "reason": reason})
        else:
            videos.append(video)
    references = _attach(videos, test)
    return VideoSet("videos", videos, skipped, references, test.skipped if test else [])


def _test_clip_videos(test: TestSet, protocol: EvalProtocol, make: Callable[[Clip], EvalVideo], kind: str) -> VideoSet:
    keys = choose(test.keys(), protocol.max_clips, protocol.seed)
    videos, clips = [], test.clips(keys)
    unread = {s["video"] for s in test.skipped}  # clips whose frames or audio do not decode: counted there
    skipped = [{"video": k, "reason": "not found on a second read of the shards (were they rewritten meanwhile?)"}
               for k in keys if k not in clips and k not in unread]
    for key, clip in sorted(clips.items()):
        try:
            video = make(clip)
        except EvalInputError as exc:  # one clip the generator cannot take does not end a long evaluation
            skipped.append({"video": key, "reason": str(exc)})
            continue
        video.truth, video.speaker = clip, clip.meta.speaker
        reason = _check_length(video, protocol)
        if reason:
            skipped.append({"video": key, "reason": reason})
        else:
            videos.append(video)
    references = {v.key: test.reference(v.speaker, v.key) for v in videos}
    return VideoSet(kind, videos, skipped, {k: f for k, f in references.items() if f is not None}, test.skipped)


def videos_from_truth(test: TestSet, protocol: EvalProtocol) -> VideoSet:
    """The real test clips as they are (the ground-truth reference row)."""
    return _test_clip_videos(test, protocol, lambda clip: EvalVideo(clip.key, clip.frames, clip.audio,
                                                                     f"{test.split}:{clip.key}"), "ground_truth")


def videos_from_generator(test: TestSet, protocol: EvalProtocol,
                          generate: Callable[[np.ndarray, int, str], np.ndarray]) -> VideoSet:
    """Each test clip's speech through ``generate(audio, seed, key) -> uint8 frames [T, H, W, 3]`` at the
    protocol's fps; the clip is the ground truth."""
    def make(clip: Clip) -> EvalVideo:
        frames = np.asarray(generate(clip.audio, protocol.seed, clip.key))
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise EvalInputError(f"the generator returned {frames.dtype} {frames.shape} for {clip.key}; "
                                 "expected uint8 frames [T, H, W, 3]")
        return EvalVideo(clip.key, frames, clip.audio, f"generated:{clip.key}")

    return _test_clip_videos(test, protocol, make, "generated")


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 frames [T, H, W, 3] resized to (H, W) with OpenCV's area filter (no-op when equal)."""
    if frames.shape[1:3] == tuple(size):
        return frames
    return np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in frames])
