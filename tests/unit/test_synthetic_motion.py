"""Corpus version 2: a talking head whose every motion is driven as in real speech, with its truth stored."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from datamodules.pipeline import ClipWindow, decode_window
from datamodules.sample import FPS, MOTION_TRUTH, MOTION_TRUTH_COLUMNS
from datamodules.shards import ShardIndex
from datamodules.synth_face import base_layer
from datamodules.synth_motion import (
    BLINK_SECONDS,
    GAZE_HOLD_SECONDS,
    clip_motion,
    emphasis,
)
from datamodules.synth_voice import frame_envelope, frame_means
from datamodules.synthetic import SyntheticConfig, draw_speaker, make_clip, write_synthetic_corpus

sys.path.insert(0, str(Path(__file__).parent))
from test_synthetic import CORPUS, face_measures, mean_r2, read_corpus, voice_features  # noqa: E402

COLUMN = {name: i for i, name in enumerate(MOTION_TRUTH_COLUMNS)}


def motions(clips: int, seconds: float, seed: int = 0):
    """(speaker index, motion) of ``clips`` clips of 20 speakers, drawn without rendering a frame."""
    out = []
    for i in range(clips):
        speaker = draw_speaker(seed, i % 20)
        rng = np.random.default_rng([seed, i % 20, i // 20 + 2])
        out.append((i % 20, clip_motion(speaker.voice, int(seconds * FPS), rng)))
    return out


@pytest.fixture(scope="module")
def hundred():
    return motions(100, 4.0)


def within_clip_correlation(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Pearson r of two per-frame tracks pooled over clips, each standardised within its clip."""
    def z(x):
        return (x - x.mean()) / (x.std() + 1e-9)
    a = np.concatenate([z(x) for x, _ in pairs])
    b = np.concatenate([z(y) for _, y in pairs])
    return float(np.corrcoef(a, b)[0, 1])


def test_every_motion_group_moves_within_clips(hundred):
    truths = [m.truth() for _, m in hundred]
    spread = np.array([t.std(0) for t in truths])                      # [clip, column]
    for name in ("mouth", "jaw", "brow_raise", "nod"):
        assert (spread[:, COLUMN[name]] > 0.02).mean() >= 0.95, name
    assert (spread[:, COLUMN["expression"]] > 0.005).mean() >= 0.95  # a slow sway about the clip's resting mood
    eyes = spread[:, [COLUMN["gaze_x"], COLUMN["gaze_y"], COLUMN["blink"]]].max(1)
    assert (eyes > 0.05).mean() >= 0.8, "within 4 s most clips blink or shift their gaze"
    assert all(np.abs(t).max() <= 1.0 for t in truths)


def test_brows_follow_emphasis_and_nods_follow_loudness(hundred):
    brow, nod, shuffled = [], [], []
    for i, (_, m) in enumerate(hundred):
        pitch, loudness = frame_means(m.speech.f0), frame_envelope(m.speech.audio)
        brow.append((m.brow_raise, emphasis(pitch, loudness)))
        nod.append((m.nod, loudness))
        other = hundred[(i + 1) % len(hundred)][1]
        shuffled.append((m.brow_raise, emphasis(frame_means(other.speech.f0), frame_envelope(other.speech.audio))))
    r_brow, r_nod = within_clip_correlation(brow), within_clip_correlation(nod)
    print(f"brow raise vs emphasis r = {r_brow:.3f}; nod vs loudness r = {r_nod:.3f}; brow raise vs another clip's "
          f"emphasis r = {within_clip_correlation(shuffled):.3f}")
    assert r_brow >= 0.5 and r_nod >= 0.5
    assert abs(within_clip_correlation(shuffled)) < 0.15, "the coupling is within a clip, not a shared shape"


def test_the_mood_is_per_clip_and_carried_by_the_prosody(hundred):
    moods = np.array([m.mood for _, m in hundred])
    speakers = np.array([s for s, _ in hundred])
    within = np.mean([moods[speakers == s].var() for s in range(20)])
    assert within > 0.6 * moods.var(), "a mood drawn per speaker would be an identity cue"
    pitch_range = np.array([np.log(m.speech.f0).std() for _, m in hundred])
    resting = np.array([np.median(m.expression) for _, m in hundred])
    assert np.corrcoef(moods, pitch_range)[0, 1] > 0.3, "a lively clip has a wider intonation"
    assert np.corrcoef(moods, resting)[0, 1] > 0.95


def test_blink_and_gaze_shift_rates_lie_in_the_ranges_the_generator_states():
    long = motions(10, 60.0, seed=3)
    minutes = sum(len(m.blink) for _, m in long) / FPS / 60
    blinks = sum(int(((m.blink[1:] > 0) & (m.blink[:-1] == 0)).sum() + (m.blink[0] > 0)) for _, m in long)
    shifts = sum(int((np.abs(np.diff(m.gaze, axis=0)).max(1) > 1e-6).sum()) for _, m in long) / 2  # 2 frames each
    seconds = minutes * 60
    print(f"{blinks / minutes:.1f} blinks a minute, {shifts / seconds:.2f} gaze shifts a second")
    assert 60 / BLINK_SECONDS[1] <= blinks / minutes <= 60 / BLINK_SECONDS[0]
    assert 1 / (GAZE_HOLD_SECONDS[1] + 2 / FPS) <= shifts / seconds <= 1 / GAZE_HOLD_SECONDS[0]


def test_the_drawn_frames_show_the_motion():
    """Landmarks and pixels move with the truth: brows with the raise, the chin with the jaw, the face's vertical
    extent with the nod, the irises with the gaze."""
    speaker = draw_speaker(0, 5)
    cfg = SyntheticConfig(seconds=8.0, resolution=256)
    base = base_layer(speaker.face, 256, np.random.default_rng([0, 5, 0]), brows=False)
    clip = make_clip(speaker, base, cfg, 1, "train")
    truth, marks = clip.motion_truth, clip.landmarks.astype(np.float64)
    eye_line = marks[:, [36, 39, 42, 45], 1].mean(1)
    brow_height = eye_line - marks[:, 17:27, 1].mean(1)
    extent = marks[:, 30, 1] - eye_line
    assert np.corrcoef(brow_height, truth[:, COLUMN["brow_raise"]])[0, 1] > 0.9
    chin = (marks[:, 8, 1] - eye_line) / extent  # in the face's own vertical scale, which a nod shortens
    assert np.corrcoef(chin, truth[:, COLUMN["jaw"]])[0, 1] > 0.9
    span = np.linalg.norm(marks[:, 45] - marks[:, 36], axis=1)  # across the face: a nod leaves it
    assert np.corrcoef(extent / span, truth[:, COLUMN["nod"]])[0, 1] < -0.9, "a nod foreshortens the face"
    open_eyes = truth[:, COLUMN["blink"]] == 0
    dark_x = [pupil_offset(f, m) for f, m in zip(clip.frames[open_eyes], marks[open_eyes], strict=True)]
    assert np.corrcoef(dark_x, truth[open_eyes, COLUMN["gaze_x"]])[0, 1] > 0.8


def pupil_offset(frame: np.ndarray, marks: np.ndarray) -> float:
    """Horizontal offset of the darkest pixels within the subject's right eye from its centre, in eye widths."""
    eye = marks[36:42]
    (x0, y0), (x1, y1) = np.floor(eye.min(0)).astype(int), np.ceil(eye.max(0)).astype(int)
    grey = frame[y0:y1 + 1, x0:x1 + 1].astype(np.float64).mean(2)
    ys, xs = np.nonzero(grey <= np.quantile(grey, 0.1))
    return float((xs.mean() + x0 - eye[:, 0].mean()) / (eye[3, 0] - eye[0, 0]))


def test_version_2_stores_the_truth_and_version_1_reads_without_it(tmp_path):
    small = dict(speakers=3, clips_per_speaker=1, seconds=0.4, resolution=96, shard_size=4)
    roots = {v: tmp_path / f"v{v}" for v in (1, 2)}
    for version, root in roots.items():
        write_synthetic_corpus(root, SyntheticConfig(**small, version=version))
        assert ShardIndex.load(root).corpus_version() == version
    v1, v2 = ([c for s in read_corpus(roots[v]).values() for c in s] for v in (1, 2))
    assert all(c.motion_truth is None and "mood" not in c.meta.extra for c in v1)
    for clip in v2:
        assert clip.motion_truth.shape == (10, len(MOTION_TRUTH_COLUMNS)) and clip.motion_truth.dtype == np.float32
        assert np.allclose(1 - clip.motion_truth[:, COLUMN["blink"]], clip.meta.extra["eye_openness"], atol=1e-3)
    window = ClipWindow(frames=4, resolution=64, audio_samples=4 * 640)
    for version, root in roots.items():
        sample = next(iter(wds.WebDataset(ShardIndex.load(root).shard_paths(root, "train"), shardshuffle=False)))
        decoded = decode_window(sample, window, start=2)
        assert decoded["has_motion_truth"] == (version == 2) and decoded["motion_truth"].shape == (4, 8)
        assert (MOTION_TRUTH in sample) == (version == 2)


def test_the_voice_tells_as_much_of_the_face_as_in_version_1(tmp_path):
    """Identity is drawn as before and the mood moves no speaker's mean pitch: voice -> face R^2 on 100 speakers
    (the same faces, speech of the other version) within 0.05 of version 1's."""
    r2 = {}
    for version in (1, 2):
        root = tmp_path / f"v{version}"
        write_synthetic_corpus(root, replace(CORPUS, speakers=100, version=version))
        clips = [c for s in read_corpus(root).values() for c in s]
        voices = np.array([voice_features(c.audio) for c in clips])
        faces = np.array([face_measures(c.frames, c.landmarks) for c in clips])
        r2[version] = mean_r2(voices, faces)
    print(f"voice -> face R^2: version 1 {r2[1]:.3f}, version 2 {r2[2]:.3f}")
    assert abs(r2[2] - r2[1]) < 0.05
