"""Decoding with PyAV: frames resampled to a constant 25 fps by their timestamps, audio to 16 kHz mono.

Variable-frame-rate sources are handled by timestamps: output frame ``i`` of a window starting at ``start``
is the source frame whose presentation time is nearest ``start + i / 25``. Audio is down-mixed by averaging
its channels and resampled with a polyphase filter (``scipy.signal.resample_poly``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from scipy.signal import resample_poly

from common.errors import SeespeakerError

FPS = 25
SAMPLE_RATE = 16000


class MediaError(SeespeakerError):
    """A source that cannot be used; ``reason`` is the manifest's short code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class VideoInfo:
    """What the container says about a file."""

    duration: float
    width: int
    height: int
    fps: float
    has_audio: bool
    audio_duration: float = 0.0


def _open(path: str):
    try:
        return av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise MediaError("corrupt_video", f"cannot open {path!r}: {exc}") from exc


def probe(path: str) -> VideoInfo:
    """Duration, size, nominal rate and whether there is an audio track; ``corrupt_video`` when unreadable."""
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError("corrupt_video", f"{path!r} has no video stream")
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1e6
        else:
            duration = 0.0
        rate = stream.average_rate or stream.guessed_rate or FPS
        width, height = stream.codec_context.width, stream.codec_context.height
        if not width or not height:
            raise MediaError("corrupt_video", f"{path!r}: video stream has no frame size")
        audio_duration = 0.0
        if container.streams.audio:
            audio = container.streams.audio[0]
            if audio.duration is not None and audio.time_base is not None:
                audio_duration = float(audio.duration * audio.time_base)
            else:
                audio_duration = duration
        return VideoInfo(duration, width, height, float(rate), bool(container.streams.audio), audio_duration)


def _seek(container, stream, start: float) -> None:
    if start > 0.0:
        container.seek(int(max(start - 1.0, 0.0) / stream.time_base), stream=stream, backward=True)


def read_frames(path: str, start: float, end: float, roi: tuple[int, int, int, int] | None = None,
                fps: int = FPS) -> tuple[np.ndarray, dict]:
    """RGB frames at constant ``fps`` for ``[start, end)``, optionally cropped to ``roi`` (x0, y0, x1, y1).

    Returns ``(frames T x H x W x 3 uint8, stats)``; stats has the source frame count and whether the
    source frame intervals were irregular (variable frame rate).
    """
    count = int(math.floor((end - start) * fps + 1e-6))
    targets = start + np.arange(count) / fps
    out: list[np.ndarray] = []
    pts_seen: list[float] = []
    prev: tuple[float, np.ndarray] | None = None
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            _seek(container, stream, start)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * stream.time_base)
                pts_seen.append(t)
                if t < start - 1.0 / fps:
                    prev = (t, frame)
                    continue
                while prev is not None and len(out) < count and targets[len(out)] <= (prev[0] + t) / 2:
                    out.append(_rgb(prev[1], roi))
                if len(out) >= count:
                    break
                prev = (t, frame)
            else:
                last_duration = 1.0 / fps if len(pts_seen) < 2 else pts_seen[-1] - pts_seen[-2]
                while prev is not None and len(out) < count and targets[len(out)] < prev[0] + last_duration:
                    out.append(_rgb(prev[1], roi))
        except av.error.FFmpegError as exc:
            raise MediaError("corrupt_video", f"{path!r}: decoding failed at {len(out)} frames: {exc}") from exc
    if not out:
        raise MediaError("corrupt_video", f"{path!r}: no decodable frames in {start:.2f}-{end:.2f} s")
    gaps = np.diff(np.asarray(pts_seen[-200:]))
    vfr = bool(len(gaps) > 2 and gaps.std() > 0.1 * max(gaps.mean(), 1e-6))
    return np.stack(out), {"source_frames": len(pts_seen), "vfr": vfr}


def _rgb(frame, roi) -> np.ndarray:
    if isinstance(frame, np.ndarray):
        return frame
    img = frame.to_ndarray(format="rgb24")
    if roi is not None:
        x0, y0, x1, y1 = roi
        img = np.ascontiguousarray(img[y0:y1, x0:x1])
    return img


def read_audio(path: str, start: float, seconds: float, rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
    """Mono float32 audio at ``rate`` from ``start`` for ``seconds`` (zero-padded) and the seconds actually present.

    Raises ``MediaError('no_audio')`` when the file has no audio track.
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError("no_audio", f"{path!r} has no audio track")
        stream = container.streams.audio[0]
        native = stream.codec_context.sample_rate or rate
        # Planar float in the source's own layout: the channels are averaged here, since FFmpeg's down-mix
        # adds them at -3 dB each and so clips loud audio whose channels are alike (most "stereo" speech).
        planar = av.AudioResampler(format="fltp", rate=native)
        chunks: list[np.ndarray] = []
        first_time: float | None = None
        stop = start + seconds + 0.5
        try:
            _seek(container, stream, start)
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else None
                if first_time is None:
                    first_time = t if t is not None else 0.0
                for out in planar.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
                if t is not None and t > stop:
                    break
        except av.error.FFmpegError as exc:
            raise MediaError("corrupt_audio", f"{path!r}: audio decoding failed: {exc}") from exc
    if not chunks:
        raise MediaError("no_audio", f"{path!r}: the audio track holds no samples")
    samples = np.concatenate(chunks).astype(np.float32)
    offset = int(round((start - (first_time or 0.0)) * native))
    samples = samples[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), samples])
    samples = samples[: int(math.ceil((seconds + 0.1) * native))]
    resampled = resample_to(samples, native, rate)
    wanted = int(round(seconds * rate))
    present = min(len(resampled), wanted) / rate
    audio = np.zeros(wanted, np.float32)
    audio[: min(wanted, len(resampled))] = resampled[:wanted]
    return np.clip(audio, -1.0, 1.0), present


def resample_to(samples: np.ndarray, source_rate: int, rate: int) -> np.ndarray:
    """Polyphase resampling from ``source_rate`` to ``rate``."""
    if source_rate == rate:
        return samples.astype(np.float32)
    ratio = Fraction(rate, source_rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)
