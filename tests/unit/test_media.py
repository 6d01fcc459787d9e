"""write_mp4 and the streaming writers: frames and speech go in, PyAV reads back the same frame count, rate, picture
and sound; a failure leaves no file."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from common.images import to_uint8
from common.media import BackgroundMp4Writer, Mp4Writer, VideoWriteError, read_mp4, write_mp4

AAC_FRAME = 1024  # samples per AAC frame: the container may round the audio up to whole frames


def _clip(n_frames: int, size: int = 64, sr: int = 16000, fps: int = 25, tone_hz: float = 440.0):
    frames = np.zeros((n_frames, size, size, 3), np.uint8)
    for t in range(n_frames):  # a bright bar that moves one step per frame
        frames[t, :, (t * 4) % size:(t * 4) % size + 8] = 255
    audio = 0.5 * np.sin(2 * np.pi * tone_hz * np.arange(int(n_frames * sr / fps)) / sr).astype(np.float32)
    return frames, audio


def test_round_trip_frame_count_picture_and_audio(tmp_path):
    frames, audio = _clip(13)
    path = write_mp4(tmp_path / "clip.mp4", frames, audio, fps=25, sr=16000)
    decoded, sound, fps, sr = read_mp4(path)
    assert decoded.shape == frames.shape
    assert fps == 25.0 and sr == 16000
    # lossy H.264 at crf 18: the moving bar is where it was written in every frame
    assert np.abs(decoded.astype(float) - frames.astype(float)).mean() < 8.0
    assert abs(len(sound) - len(audio)) <= 2 * AAC_FRAME
    spectrum = np.abs(np.fft.rfft(sound))
    peak_hz = np.argmax(spectrum) * sr / len(sound)
    assert abs(peak_hz - 440.0) < 10.0


def test_audio_is_cut_to_video_duration(tmp_path):
    frames, audio = _clip(10)
    long_audio = np.concatenate([audio, audio, audio])
    _, sound, _, sr = read_mp4(write_mp4(tmp_path / "cut.mp4", frames, long_audio))
    assert abs(len(sound) / sr - 10 / 25) <= 2 * AAC_FRAME / sr


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    frames, audio = _clip(5)
    write_mp4(tmp_path / "a.mp4", frames, audio)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]
    with pytest.raises(VideoWriteError, match="even frame size"):
        write_mp4(tmp_path / "b.mp4", np.zeros((3, 63, 64, 3), np.uint8), audio)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4"]


@pytest.mark.parametrize("frames, message", [
    (np.zeros((4, 64, 64), np.uint8), r"\[T, H, W, 3\]"),
    (np.zeros((4, 64, 64, 3), np.float32), "uint8"),
    (np.zeros((0, 64, 64, 3), np.uint8), "zero frames"),
])
def test_bad_frames_are_named(tmp_path, frames, message):
    with pytest.raises(VideoWriteError, match=message):
        write_mp4(tmp_path / "bad.mp4", frames, None)


def test_stereo_audio_and_fractional_fps_are_refused(tmp_path):
    frames, audio = _clip(4)
    with pytest.raises(VideoWriteError, match="mono"):
        write_mp4(tmp_path / "s.mp4", frames, np.stack([audio, audio]))
    with pytest.raises(VideoWriteError, match="frame rate"):
        write_mp4(tmp_path / "f.mp4", frames, audio, fps=29.97)


def test_to_uint8_maps_minus_one_one_to_bytes():
    import torch
    frames = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = to_uint8(frames)
    assert out.shape == (2, 2, 2, 3) and out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [0, 128, 255]


def test_chunks_written_in_the_background_decode_as_the_whole_clip_written_at_once(tmp_path):
    frames, audio = _clip(13)
    whole, _, _, _ = read_mp4(write_mp4(tmp_path / "whole.mp4", frames, audio))
    with BackgroundMp4Writer(tmp_path / "chunks.mp4", audio, queued=1) as writer:
        for chunk in np.array_split(frames, [4, 5, 11]):
            writer.put(chunk)
    decoded, sound, fps, sr = read_mp4(tmp_path / "chunks.mp4")
    assert np.array_equal(decoded, whole) and fps == 25.0 and sr == 16000
    assert abs(len(sound) - len(audio)) <= 2 * AAC_FRAME


def test_a_failure_while_streaming_leaves_no_file(tmp_path):
    frames, audio = _clip(6)
    with pytest.raises(RuntimeError, match="renderer failed"):
        with BackgroundMp4Writer(tmp_path / "broken.mp4", audio) as writer:
            writer.put(frames[:3])
            raise RuntimeError("renderer failed")
    with pytest.raises(VideoWriteError, match="every chunk needs one size"):
        with BackgroundMp4Writer(tmp_path / "sizes.mp4", audio) as writer:
            writer.put(frames[:3])
            writer.put(np.zeros((2, 32, 32, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_the_writer_encodes_while_the_caller_goes_on(tmp_path):
    frames, _ = _clip(8)
    encoding, released = threading.Event(), threading.Event()

    class Slow(Mp4Writer):
        def write(self, chunk):
            encoding.set()
            assert released.wait(10), "the caller never went on while this chunk was encoding"
            super().write(chunk)

    writer = BackgroundMp4Writer(tmp_path / "slow.mp4")
    writer.writer = Slow(tmp_path / "slow.mp4")
    with writer:
        writer.put(frames[:4])
        assert encoding.wait(10)
        writer.put(frames[4:])  # queued while the first chunk is still encoding
        released.set()
    assert read_mp4(tmp_path / "slow.mp4")[0].shape == frames.shape
