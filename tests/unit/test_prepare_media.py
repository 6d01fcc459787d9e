"""Decoding real containers for preparation: the mono down-mix of stereo speech, and HDTF crop windows that cannot
apply to the video at hand (given for another resolution, or already applied to a cut clip)."""
from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from datamodules.prepare import media
from datamodules.prepare import testmedia as tm
from datamodules.prepare.listing import SourceItem
from datamodules.prepare.process import PrepareOptions, crop_region, process_item


def write_stereo(path, left: np.ndarray, right: np.ndarray, rate: int, seconds: float = 2.0) -> None:
    """An H.264 + stereo AAC mp4 whose channels carry ``left`` and ``right``."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        audio = container.add_stream("aac", rate=rate, layout="stereo")
        for i in range(int(seconds * 25)):
            frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        pcm = (np.stack([left, right], axis=1) * 32767).astype(np.int16)
        for start in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[start:start + 1024].reshape(1, -1), format="s16", layout="stereo")
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


@pytest.mark.parametrize("rate", [44100, 48000])
def test_loud_stereo_speech_is_averaged_to_mono_without_clipping(tmp_path, rate):
    t = np.arange(2 * rate) / rate
    voice = 0.9 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    write_stereo(tmp_path / "alike.mp4", voice, voice, rate)
    audio, present = media.read_audio(str(tmp_path / "alike.mp4"), 0.5, 1.0)
    expected = np.interp(0.5 + np.arange(16000) / 16000, t, voice)
    assert present == 1.0
    assert np.mean(np.abs(audio) > 0.99) == 0.0, "the down-mix clipped the speech"
    assert np.abs(audio[200:-200] - expected[200:-200]).max() < 0.05
    write_stereo(tmp_path / "left.mp4", voice, np.zeros_like(voice), rate)
    left, _ = media.read_audio(str(tmp_path / "left.mp4"), 0.5, 1.0)
    assert np.abs(left[200:-200] - expected[200:-200] / 2).max() < 0.05  # the mean of the two channels


def info(width: int, height: int) -> media.VideoInfo:
    return media.VideoInfo(duration=10.0, width=width, height=height, fps=25.0, has_audio=True, audio_duration=10.0)


def test_crop_window_applies_only_where_it_can():
    window = (483.0, 0.0, 390.0, 390.0)  # Radio10_0.mp4 in 1080 p pixels
    long = SourceItem("hdtf/RD/Radio10_0", "hdtf", "x.mp4", "Radio", "Radio10_0", start=30.0, end=60.0,
                      crop_window=window, annotation_height=1080)
    roi, extra = crop_region(long, info(1280, 720))
    assert roi is not None and extra["crop_window"] == [322.0, 0.0, 260.0, 260.0] and extra["notes"] == []
    unlisted = SourceItem("hdtf/RD/Radio10_0", "hdtf", "x.mp4", "Radio", "Radio10_0", start=30.0, end=60.0,
                          crop_window=(1300.0, 0.0, 390.0, 390.0))  # its height is missing from resolution.txt
    assert crop_region(unlisted, info(1280, 720)) == (None, {"crop_window_annotated": [1300.0, 0.0, 390.0, 390.0],
                                                            "notes": ["crop_window_outside"]})
    cut = SourceItem("hdtf/RD/Radio10_0", "hdtf", "x.mp4", "Radio", "Radio10_0", crop_window=window,
                     annotation_height=1080)  # an already-split clip, cropped and resized to 512 x 512
    roi, extra = crop_region(cut, info(512, 512))
    assert roi is None and extra["notes"] == ["crop_window_applied_already"]
    assert crop_region(cut, info(1920, 1080))[0] is not None  # a split clip that is not cropped yet


def test_a_crop_window_for_another_resolution_still_finds_the_face(tmp_path):
    path = tmp_path / "Radio10.mp4"
    tm.write_video(path, 2.0, seed=3)
    item = SourceItem("hdtf/RD/Radio10_0", "hdtf", str(path), "Radio", "Radio10_0", start=0.0, end=2.0,
                      crop_window=(483.0, 0.0, 390.0, 390.0))
    result = process_item(item, PrepareOptions(clip_seconds=0))
    assert (result.outcome, result.reason) == ("written", ""), result.detail
    assert "crop_window_outside" in result.notes
