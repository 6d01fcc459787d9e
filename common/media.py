"""Media files, written atomically: short mp4 files with their speech muxed in (PyAV: H.264 video + AAC audio)
and PNG images.

``write_mp4`` is what the video stages' ``log_media`` use; the generation pipeline streams its chunks through
``BackgroundMp4Writer`` while it renders the next ones; ``read_mp4`` decodes one back (frames and audio) for tests
and evaluation of written videos.
"""
from __future__ import annotations

import queue
import threading
from contextlib import ExitStack
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
    with Mp4Writer(path, audio, fps, sr) as writer:
        writer.write(frames)
    return Path(path)


class Mp4Writer:
    """An mp4 written chunk by chunk (``with Mp4Writer(path, audio) as w: w.write(frames)``): H.264 frames as they
    come, the speech (cut or padded to the frames written) when the block ends. The file appears, renamed into
    place, only when the block ends without an error; otherwise nothing is left."""

    def __init__(self, path: str | Path, audio=None, fps: int = 25, sr: int = 16000):
        if fps <= 0 or int(fps) != fps:
            raise VideoWriteError(f"write_mp4 needs a positive whole frame rate, got {fps}")
        self.path, self.audio, self.fps, self.sr = Path(path), _check_audio(audio, sr), int(fps), sr
        self.frames_written = 0
        self._stack = ExitStack()
        self._container = self._video = self._sound = None

    def __enter__(self) -> Mp4Writer:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._container = self._stack.enter_context(av.open(str(tmp), mode="w", format="mp4"))
        return self

    def write(self, frames: np.ndarray) -> None:
        """Encode uint8 frames [t, H, W, 3]; every chunk has the first one's size."""
        frames = _check_frames(frames)
        if self._video is None:
            self._video = self._container.add_stream("libx264", rate=self.fps)
            self._video.width, self._video.height = frames.shape[2], frames.shape[1]
            self._video.pix_fmt = "yuv420p"
            self._video.options = {"crf": "18", "preset": "veryfast"}
            if self.audio is not None:  # every stream before the first packet: the header is written then
                self._sound = self._container.add_stream("aac", rate=self.sr)
                self._sound.layout = "mono"
        elif frames.shape[1:3] != (self._video.height, self._video.width):
            raise VideoWriteError(f"write_mp4: frames of {frames.shape[1]} x {frames.shape[2]} after frames of "
                                  f"{self._video.height} x {self._video.width}; every chunk needs one size")
        for image in frames:
            for packet in self._video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                self._container.mux(packet)
        self.frames_written += len(frames)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as error:
                self._stack.__exit__(type(error), error, error.__traceback__)  # nothing renamed into place
                raise
        self._stack.__exit__(exc_type, exc, tb)

    def _finish(self) -> None:
        if self._video is None:
            raise VideoWriteError("write_mp4 got zero frames")
        for packet in self._video.encode():
            self._container.mux(packet)
        if self.audio is not None:
            self._mux_audio(int(round(self.frames_written * self.sr / self.fps)))

    def _mux_audio(self, n_samples: int) -> None:
        sound = self._sound
        audio = np.pad(self.audio[:n_samples], (0, max(0, n_samples - len(self.audio))))
        chunk = 1024
        for start in range(0, n_samples, chunk):
            piece = audio[start:start + chunk][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format="flt", layout="mono")
            frame.sample_rate = self.sr
            frame.pts = start
            frame.time_base = Fraction(1, self.sr)
            for packet in sound.encode(frame):
                self._container.mux(packet)
        for packet in sound.encode():
            self._container.mux(packet)


class BackgroundMp4Writer:
    """An :class:`Mp4Writer` fed from a thread of its own: :meth:`put` hands a chunk over (waiting while
    ``queued`` chunks are pending) and returns, so the caller renders the next frames while this one encodes. An
    error of the writer is raised by the next :meth:`put` or by the block's end."""

    def __init__(self, path: str | Path, audio=None, fps: int = 25, sr: int = 16000, queued: int = 2):
        self.writer = Mp4Writer(path, audio, fps, sr)
        self._queue: queue.Queue = queue.Queue(maxsize=queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mp4-writer", daemon=True)

    def __enter__(self) -> BackgroundMp4Writer:
        self.writer.__enter__()
        self._thread.start()
        return self

    def put(self, frames: np.ndarray) -> None:
        self._raise_error()
        self._queue.put(frames)

    def _run(self) -> None:
        while (frames := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.writer.write(frames)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def __exit__(self, exc_type, exc, tb) -> None:
        self._queue.put(None)
        self._thread.join()
        if exc_type is None and self._error is not None:
            self.writer.__exit__(type(self._error), self._error, None)
            raise self._error
        self.writer.__exit__(exc_type, exc, tb)


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """One planar float frame [C, N] in [-1, 1] -> the mean of its channels [N]."""
    return frame.to_ndarray().mean(axis=0)


def read_audio_stream(container: av.container.InputContainer) -> tuple[np.ndarray, int]:
    """(mono float32 audio [N] in [-1, 1], sample rate) of the first audio stream; empty and 0 without one.

    Every decoded frame goes through a resampler to planar float at the same rate and layout: packed frames
    (interleaved channels, one row) and integer PCM (s16, s32) come out as one row per channel in [-1, 1], which
    are then averaged."""
    if not container.streams.audio:
        return np.zeros(0, np.float32), 0
    to_float = av.AudioResampler(format="fltp")
    chunks = []
    for frame in container.decode(audio=0):
        chunks.extend(_mono(out) for out in to_float.resample(frame))
    chunks.extend(_mono(out) for out in to_float.resample(None))
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return audio, container.streams.audio[0].rate


def read_mp4(path: str | Path) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Decode ``path`` -> (frames uint8 [T, H, W, 3], mono float audio [N] in [-1, 1], fps, sample rate; audio may
    be empty). Multi-channel audio is averaged; integer PCM is scaled to [-1, 1]."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
    with av.open(str(path)) as container:
        audio, sample_rate = read_audio_stream(container)
    return np.stack(frames), audio, fps, sample_rate
