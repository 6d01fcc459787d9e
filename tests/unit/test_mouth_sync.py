"""The expert-free sync measure: a mouth that opens with the speech scores high above its shifted-speech null, a
mouth that moves with other speech or not at all does not, on series and on the synthetic corpus's drawn frames."""
from __future__ import annotations

import math

import numpy as np
import pytest

from datamodules.sample import MOTION_TRUTH_COLUMNS
from datamodules.synthetic import SyntheticConfig, base_layer, draw_speaker, make_clip
from evaluation.mouth_sync import best_lag_correlation, frame_loudness, mouth_sync, video_mouth_sync

MOUTH = MOTION_TRUTH_COLUMNS.index("mouth")


def speech_like(frames: int, seed: int) -> np.ndarray:
    """A syllable-rate loudness series with pauses."""
    rng = np.random.default_rng(seed)
    return np.clip(np.convolve(rng.normal(size=frames), np.ones(4) / 4, mode="same"), 0, None)


def test_loudness_is_the_rms_of_each_frames_span():
    audio = np.concatenate([np.full(640, 0.5), np.zeros(640), np.full(320, -0.2)])
    assert frame_loudness(audio, 4) == pytest.approx([0.5, 0.0, 0.2, 0.0])  # the last frame is past the end


def test_best_lag_finds_a_delayed_mouth():
    loudness = speech_like(200, 0)
    mouth = np.roll(loudness, 2)  # the mouth follows the speech by two frames
    r, lag = best_lag_correlation(mouth, loudness)
    assert lag == -2 and r > 0.99


def test_coupled_mouth_beats_the_null_and_an_unrelated_one_does_not():
    loudness = speech_like(200, 1)
    coupled = mouth_sync(loudness + 0.05 * np.random.default_rng(2).normal(size=200), loudness)
    other = mouth_sync(speech_like(200, 3), loudness)
    frozen = mouth_sync(np.full(200, 0.3), loudness)
    assert coupled["r"] > 0.9 and coupled["margin"] > 0.7
    assert abs(other["margin"]) < 0.15 and other["null"] > 0  # the best of 7 lags is biased up: the null says so
    assert frozen["r"] == 0.0 and frozen["margin"] == pytest.approx(0.0)
    assert math.isnan(mouth_sync(loudness[:40], loudness[:40])["null"])  # too short for a one-second shift


@pytest.fixture(scope="module")
def drawn_clips():
    cfg = SyntheticConfig(seconds=4.0, resolution=128)
    clips = []
    for number in (5, 6):
        speaker = draw_speaker(0, number)
        base = base_layer(speaker.face, 128, np.random.default_rng([0, number, 0]), brows=False)
        clips.append(make_clip(speaker, base, cfg, 1, "test"))
    return clips


def test_drawn_frames_sync_with_their_own_speech_only(drawn_clips):
    first, second = drawn_clips
    own = video_mouth_sync(first.frames, first.audio, mouth_truth=first.motion_truth[:, MOUTH])
    swapped = video_mouth_sync(first.frames, second.audio)
    assert own["face_rate"] >= 0.9 and own["frames"] == len(first.frames)
    assert own["r"] > 0.7 and own["margin"] > 0.4 and own["truth_r"] > 0.7
    assert swapped["margin"] < own["margin"] - 0.4 and swapped["margin"] < 0.3
    assert math.isnan(swapped["truth_r"])


def test_a_video_without_faces_scores_nothing(drawn_clips):
    blank = np.zeros_like(drawn_clips[0].frames)
    result = video_mouth_sync(blank, drawn_clips[0].audio)
    assert result["face_rate"] == 0.0 and math.isnan(result["r"]) and math.isnan(result["margin"])


def test_the_demo_gates_pass_a_talking_face_and_stop_a_blank_one(drawn_clips, tmp_path):
    import json

    from common.media import write_mp4
    from reports.demo import measure_demo

    clip = drawn_clips[0]
    talking = write_mp4(tmp_path / "talking.mp4", clip.frames, clip.audio, fps=25, sr=16000)
    blank = write_mp4(tmp_path / "blank.mp4", np.zeros_like(clip.frames), clip.audio, fps=25, sr=16000)
    assert measure_demo(talking, clip, tmp_path / "talking.json").endswith(f"a talking face; {tmp_path}/talking.json")
    assert json.loads((tmp_path / "talking.json").read_text())["passed"] is True
    assert "below the gates" in measure_demo(blank, clip, tmp_path / "blank.json")
    saved = json.loads((tmp_path / "blank.json").read_text())
    assert saved["passed"] is False and saved["generated"]["face_rate"] == 0.0 and saved["real"]["face_rate"] >= 0.9


def test_the_demo_picture_holds_the_portrait_and_the_frames_one_second_apart_over_the_real_clip(drawn_clips, tmp_path):
    from PIL import Image

    from common.media import write_mp4, write_png
    from reports.demo import frames_picture

    clip = drawn_clips[0]
    size = clip.frames.shape[1]
    generated = 255 - clip.frames  # told apart from the real frames in every pixel
    video = write_mp4(tmp_path / "talking.mp4", generated, clip.audio, fps=25, sr=16000)
    portrait = write_png(tmp_path / "portrait.png", np.full_like(clip.frames[0], 200))
    count = 3  # the clip's 4 s hold frames 0, 25 and 50
    picture = np.asarray(Image.open(frames_picture(video, portrait, clip, tmp_path / "frames.png", count)))
    assert picture.shape == (2 * size, (count + 1) * size, 3)
    cell = lambda row, col: picture[row * size:(row + 1) * size, col * size:(col + 1) * size].astype(float)  # noqa: E731
    assert np.abs(cell(0, 0) - 200).mean() < 2  # the portrait
    for col in range(1, count + 1):
        t = 25 * (col - 1)
        assert np.abs(cell(1, col) - clip.frames[t]).mean() < 2  # the real frame at that second
        assert np.abs(cell(0, col) - generated[t]).mean() < np.abs(cell(0, col) - clip.frames[t]).mean() / 4
