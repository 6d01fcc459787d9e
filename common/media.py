"""Media files, written atomically: short mp4 files with their speech muxed in (PyAV: H.264 video + AAC audio)
and PNG images.

``write_mp4`` is what the video stages' ``log_media`` and the generation pipeline use; ``read_mp4`` decodes one
back (frames and audio) for tests and evaluation of written videos.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from common.errors import SeespeakerError
from common.files import atomic_path


class VideoWriteError(SeespeakerError, ValueError):
    """Frames or audio that cannot be written as an mp4 (wrong shape, dtype, rate)."""


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoWriteError(f"write_mp4 needs frames shaped [T, H, W, 3], got {tuple(frames.shape)}")
    if frames.dtype != np.uint8:
        raise VideoWriteError(f"write_mp4 needs uint8 frames, got {frames.dtype}; convert with "
                              f"common.images.to_uint8")
    if len(frames) == 0:
        raise VideoWriteError("write_mp4 got zero frames")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise VideoWriteError(f"H.264 (yuv420p) needs an even frame size, got {height} x {width}")
    return frames


def _check_audio(audio, sample_rate: int) -> np.ndarray | None:
    if audio is None:
        return None
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise VideoWriteError(f"write_mp4 needs mono audio shaped [N], got {tuple(audio.shape)}")
    if sample_rate <= 0:
        raise VideoWriteError(f"write_mp4 needs a positive sample rate, got {sample_rate}")
    return np.clip(audio, -1.0, 1.0)


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write a uint8 image atomically (temporary file renamed into place)."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path


def write_mp4(path: str | Path, frames: np.ndarray, audio=None, fps: int = 25, sr: int = 16000) -> Path:
    """Write ``frames`` (uint8 [T, H, W, 3], RGB) and mono ``audio`` (float in [-1, 1], ``sr`` Hz) to ``path``.

    The file is written under a temporary name in the same folder and renamed into place, so a reader never
    sees a half-written video. The audio is cut or zero-padded to the video's duration.
    """
    frames = _check_frames(frames)
    audio = _check_audio(audio, sr)
    if fps <= 0 or int(fps) != fps:
        raise VideoWriteError(f"write_mp4 needs a positive whole frame rate, got {fps}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            _mux(container, frames, audio, int(fps), sr)
    return path


def _mux(container, frames: np.ndarray, audio: np.ndarray | None, fps: int, sr: int) -> None:
    video = container.add_stream("libx264", rate=fps)
    video.width, video.height = frames.shape[2], frames.shape[1]
    video.pix_fmt = "yuv420p"
    video.options = {"crf": "18", "preset": "veryfast"}
    sound = None
    if audio is not None:
        sound = container.add_stream("aac", rate=sr)
        sound.layout = "mono"
    for image in frames:
        for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if sound is None:
        return
    n_samples = int(round(len(frames) * sr / fps))
    audio = np.pad(audio[:n_samples], (0, max(0, n_samples - len(audio))))
    chunk = 1024
    for start in range(0, n_samples, chunk):
        piece = audio[start:start + chunk][None, :]
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        for packet in sound.encode(frame):
            container.mux(packet)
    for packet in sound.encode():
        container.mux(packet)


def read_mp4(path: str | Path) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Decode ``path`` -> (frames uint8 [T, H, W, 3], mono float audio [N], fps, sample rate; audio may be empty)."""
    frames, chunks, sample_rate = [], [], 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
    with av.open(str(path)) as container:
        if container.streams.audio:
            sample_rate = container.streams.audio[0].rate
            for frame in container.decode(audio=0):
                data = frame.to_ndarray()
                chunks.append(data.reshape(-1) if data.shape[0] == 1 else data.mean(axis=0))
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return np.stack(frames), audio, fps, sample_rate
