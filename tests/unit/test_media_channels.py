"""read_mp4 on stereo audio in every sample format a decoder hands out (packed and planar, integer and float):
the channels are averaged, the length is the duration in samples and integer PCM is scaled to [-1, 1]."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from common.media import read_mp4

RATE = 16000
AAC_FRAME = 1024  # AAC may add up to one frame of padding


def stereo_tone() -> np.ndarray:
    """[2, N]: a 0.5-amplitude 440 Hz tone on the left channel, silence on the right (their mean peaks at 0.25)."""
    left = 0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    return np.stack([left, np.zeros_like(left)]).astype(np.float32)


def frame_of(samples: np.ndarray, fmt: str) -> av.AudioFrame:
    """One stereo frame of ``samples`` [2, n] in the sample format ``fmt`` (packed: one interleaved row)."""
    data = samples if fmt.endswith("p") else samples.T.reshape(1, -1)
    if fmt.startswith("s16"):
        data = np.round(data * 32767).astype(np.int16)
    elif fmt.startswith("s32"):
        data = np.round(data * (2**31 - 1)).astype(np.int32)
    return av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout="stereo")


def write(path: Path, codec: str, fmt: str | None) -> Path:
    """One second of a 16 px grey video with ``stereo_tone()`` encoded by ``codec``."""
    audio = stereo_tone()
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 16
        video.pix_fmt = "yuv420p"
        sound = container.add_stream(codec, rate=RATE)
        sound.layout = "stereo"
        if fmt:
            sound.format = fmt
        for _ in range(25):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.full((16, 16, 3), 128, np.uint8), "rgb24")))
        container.mux(video.encode())
        for start in range(0, RATE, 1000):
            frame = frame_of(audio[:, start:start + 1000], sound.format.name)
            frame.sample_rate, frame.pts, frame.time_base = RATE, start, Fraction(1, RATE)
            container.mux(sound.encode(frame))
        container.mux(sound.encode())
    return path


def decoded_format(path: Path) -> str:
    with av.open(str(path)) as container:
        return next(container.decode(audio=0)).format.name


@pytest.mark.parametrize("codec, suffix, fmt, decoded", [
    ("pcm_s16le", "mov", "s16", "s16"),   # packed 16-bit integer
    ("pcm_s32le", "mov", "s32", "s32"),   # packed 32-bit integer
    ("flac", "mp4", None, "s16"),         # lossless, packed integer
    ("alac", "mp4", None, "s32p"),        # lossless, planar integer
    ("aac", "mp4", None, "fltp"),         # lossy, planar float
])
def test_stereo_is_averaged_at_its_length_and_scaled(tmp_path, codec, suffix, fmt, decoded):
    path = write(tmp_path / f"{codec}.{suffix}", codec, fmt)
    assert decoded_format(path) == decoded
    frames, audio, fps, rate = read_mp4(path)
    assert len(frames) == 25 and fps == 25.0 and rate == RATE and audio.dtype == np.float32
    expected = stereo_tone().mean(axis=0)
    if codec == "aac":
        assert RATE <= len(audio) <= RATE + AAC_FRAME and abs(np.abs(audio).max() - 0.25) < 0.02
        spectrum = np.abs(np.fft.rfft(audio))
        assert abs(np.argmax(spectrum) * RATE / len(audio) - 440) < 5
    else:
        assert len(audio) == RATE
        np.testing.assert_allclose(audio, expected, atol=1e-4)  # lossless: the mean of the channels itself
