"""The synthetic corpus, written as real WebDataset shards and read back through webdataset + the sample schema."""
from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from datamodules.sample import FPS, SAMPLE_RATE, SPLITS, decode_clip
from datamodules.shards import ShardIndex
from datamodules.synthetic import VOICE_SHARE, SyntheticConfig, draw_speaker, ideal_retrieval, write_synthetic_corpus

CORPUS = SyntheticConfig(speakers=40, clips_per_speaker=1, seconds=1.0, resolution=256, seed=0, shard_size=16)
SMALL = dict(speakers=3, clips_per_speaker=2, seconds=0.4, resolution=96, shard_size=4)


def read_corpus(root: Path) -> dict[str, list]:
    """Every clip of every split, decoded through webdataset and datamodules.sample."""
    index = ShardIndex.load(root)
    clips = {}
    for split in index.splits:
        dataset = wds.WebDataset(index.shard_paths(root, split), shardshuffle=False, empty_check=False)
        clips[split] = [decode_clip(sample) for sample in dataset]
    return clips


def write_and_read(root: Path, cfg: SyntheticConfig) -> dict[str, list]:
    write_synthetic_corpus(root, cfg)
    return read_corpus(root)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    index = write_synthetic_corpus(root, CORPUS)
    return root, index, read_corpus(root)


@pytest.fixture(scope="module")
def all_clips(corpus):
    return [clip for clips in corpus[2].values() for clip in clips]


def voice_features(audio: np.ndarray) -> list[float]:
    """Median f0 by autocorrelation and the spectral centroid (150-4000 Hz) of the loud frames."""
    frames = audio[: len(audio) // 640 * 640].reshape(-1, 640).astype(np.float64)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    loud = frames[rms > 0.4 * rms.max()]
    lo, hi = SAMPLE_RATE // 350, SAMPLE_RATE // 60
    f0 = []
    for x in loud:
        x = x - x.mean()
        ac = np.correlate(x, x, "full")[len(x) - 1:]
        f0.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    power = (np.abs(np.fft.rfft(loud * np.hanning(640), 1024, axis=1)) ** 2).sum(axis=0)
    freqs = np.fft.rfftfreq(1024, 1.0 / SAMPLE_RATE)
    band = (freqs > 150) & (freqs < 4000)
    return [float(np.median(f0)), float((freqs[band] * power[band]).sum() / power[band].sum())]


def face_measures(frames: np.ndarray, marks: np.ndarray) -> list[float]:
    """Face width (jaw 0-16), height (nose bridge 27 to chin 8), eye distance and cheek brightness."""
    width = np.median(marks[:, 16, 0] - marks[:, 0, 0])
    height = np.median(marks[:, 8, 1] - marks[:, 27, 1])
    eyes = np.median(np.linalg.norm(marks[:, 42:48].mean(1) - marks[:, 36:42].mean(1), axis=1))
    tones = []
    for frame, m in zip(frames, marks, strict=True):
        for a, b in ((31, 2), (35, 14)):  # cheeks: between the nostrils and the jaw
            x, y = np.round((m[a] + m[b]) / 2).astype(int)
            tones.append(frame[y - 5:y + 6, x - 5:x + 6].astype(np.float64).mean())
    return [float(width), float(height), float(eyes), float(np.median(tones))]


def mean_r2(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over the columns of ``y`` (standardised) of the R^2 of a least-squares fit from ``x``."""
    x = np.column_stack([np.ones(len(x)), (x - x.mean(0)) / x.std(0)])
    y = (y - y.mean(0)) / y.std(0)
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ beta
    return float(np.mean(1.0 - (residual ** 2).sum(0) / (y ** 2).sum(0)))


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = write_and_read(tmp_path / "a", SyntheticConfig(seed=3, **SMALL))
    again = write_and_read(tmp_path / "b", SyntheticConfig(seed=3, **SMALL))
    other = write_and_read(tmp_path / "c", SyntheticConfig(seed=4, **SMALL))
    for split in first:
        assert [c.key for c in first[split]] == [c.key for c in again[split]]
        for a, b in zip(first[split], again[split], strict=True):
            assert a.frames.tobytes() == b.frames.tobytes()
            assert a.audio.tobytes() == b.audio.tobytes()
            assert np.array_equal(a.landmarks, b.landmarks)
            assert a.meta == b.meta
    flat = lambda clips: {c.meta.speaker + c.meta.video: c for s in clips.values() for c in s}  # noqa: E731
    mine, theirs = flat(first), flat(other)
    assert mine.keys() == theirs.keys()
    for name, clip in mine.items():
        assert not np.array_equal(clip.audio, theirs[name].audio)
        assert np.abs(clip.frames.astype(int) - theirs[name].frames).mean() > 5


def test_bad_options_are_refused_with_the_option_named(tmp_path):
    with pytest.raises(ValueError, match="speakers=2"):
        write_synthetic_corpus(tmp_path, SyntheticConfig(speakers=2))
    with pytest.raises(ValueError, match="seconds=0.01"):
        write_synthetic_corpus(tmp_path, SyntheticConfig(seconds=0.01))
    with pytest.raises(ValueError, match="voice_share=1.0"):
        write_synthetic_corpus(tmp_path, SyntheticConfig(voice_share=1.0))
    with pytest.raises(ValueError, match="no training speaker"):
        write_synthetic_corpus(tmp_path, SyntheticConfig(speakers=4, val_speakers_fraction=0.5,
                                                         test_speakers_fraction=0.4))
    assert not any(tmp_path.iterdir()), "a refused config must write nothing"


def test_refuses_to_write_over_an_existing_corpus(corpus):
    with pytest.raises(ValueError, match="already holds a shard set"):
        write_synthetic_corpus(corpus[0], CORPUS)


def test_splits_are_speaker_disjoint_and_counts_match_the_tars(corpus):
    root, index, clips = corpus
    assert set(index.splits) == set(SPLITS)
    speakers = {split: {c.meta.speaker for c in clips[split]} for split in SPLITS}
    assert all(speakers[s] for s in SPLITS)
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])
    assert set().union(*speakers.values()) == {f"spk{i:03d}" for i in range(CORPUS.speakers)}
    for split in SPLITS:
        for info in index.splits[split]:
            with tarfile.open(root / info.path) as tar:
                keys = {name.split(".", 1)[0] for name in tar.getnames()}
            assert len(keys) == info.count <= CORPUS.shard_size
        assert index.num_samples(split) == len(clips[split])
        assert all(c.meta.split == split for c in clips[split])


def test_keys_meta_and_timing(all_clips):
    frames = CORPUS.frames
    for clip in all_clips:
        assert "." not in clip.key and clip.key.startswith(f"synthetic-{clip.meta.speaker}-")
        assert clip.frames.shape == (frames, 256, 256, 3)
        assert clip.landmarks.shape == (frames, 68, 2)
        assert len(clip.audio) == frames * SAMPLE_RATE // FPS
        assert clip.audio.dtype == np.float32 and np.abs(clip.audio).max() <= 1.0
        extra = clip.meta.extra
        assert {"face_width", "skin_tone", "eye_spacing", "hair_style"} <= set(extra["face_attributes"])
        assert {"f0", "vocal_tract_scale"} <= set(extra["voice"])


def test_voice_explains_about_half_of_the_face(all_clips):
    """Measured from the data: audio features -> face measures, R^2 pooled over four attributes."""
    voices = np.array([voice_features(c.audio) for c in all_clips])
    faces = np.array([face_measures(c.frames, c.landmarks) for c in all_clips])
    true_f0 = np.array([c.meta.extra["voice"]["f0"] for c in all_clips])
    assert np.corrcoef(voices[:, 0], true_f0)[0, 1] > 0.95, "the autocorrelation pitch must track the speaker's f0"
    r2 = mean_r2(voices, faces)
    print(f"voice -> face R^2 = {r2:.3f}")
    assert 0.3 <= r2 <= 0.7
    shuffled = mean_r2(voices[np.random.default_rng(0).permutation(len(voices))], faces)
    assert shuffled < 0.2, "R^2 must come from the pairing of voice and face, not from the fit"


def test_mouth_opening_follows_the_audio_envelope(all_clips):
    lips, dark, env = [], [], []
    for clip in all_clips:
        frames = clip.audio.reshape(-1, 640).astype(np.float64)
        env.append(np.sqrt((frames ** 2).mean(axis=1)) / np.sqrt((frames ** 2).mean(axis=1)).max())
        lips.append(clip.landmarks[:, 66, 1] - clip.landmarks[:, 62, 1])
        dark.append([mouth_dark_pixels(f, m) for f, m in zip(clip.frames, clip.landmarks, strict=True)])
    env, lips, dark = (np.concatenate(v) for v in (env, lips, dark))
    lip_corr, pixel_corr = np.corrcoef(env, lips)[0, 1], np.corrcoef(env, dark)[0, 1]
    print(f"envelope vs inner-lip distance r = {lip_corr:.3f}; vs dark mouth pixels r = {pixel_corr:.3f}")
    assert lip_corr > 0.6 and pixel_corr > 0.6


def test_mouth_width_follows_the_vowel(all_clips):
    """Spread lips for /i/, rounded (narrow) lips for /u/, relative to each speaker's own mouth."""
    spread, rounded = [], []
    for clip in all_clips:
        width = clip.landmarks[:, 54, 0] - clip.landmarks[:, 48, 0]
        vowels = np.array(list(clip.meta.extra["vowels"]))
        assert len(vowels) == len(width)
        neutral = np.median(width)
        spread += list(width[vowels == "i"] / neutral)
        rounded += list(width[vowels == "u"] / neutral)
    assert len(spread) > 20 and len(rounded) > 20
    assert np.mean(spread) > np.mean(rounded) + 0.2


def test_fine_detail_is_lost_at_64_pixels(all_clips):
    """Skin texture and freckles on the cheeks: a 64 px copy loses them, a 128 px copy less so."""
    import cv2

    def lost(frame: np.ndarray, size: int, x: int, y: int) -> float:
        small = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
        back = cv2.resize(small, frame.shape[:2], interpolation=cv2.INTER_CUBIC).astype(np.float64)
        return float(np.abs(frame[y - 8:y + 9, x - 8:x + 9] - back[y - 8:y + 9, x - 8:x + 9]).mean())

    at64, at128 = [], []
    for clip in all_clips:
        frame, marks = clip.frames[0], clip.landmarks[0]
        for a, b in ((31, 2), (35, 14)):
            x, y = np.round((marks[a] + marks[b]) / 2).astype(int)
            at64.append(lost(frame, 64, x, y))
            at128.append(lost(frame, 128, x, y))
    print(f"cheek detail lost (mean abs grey levels): 64 px {np.median(at64):.2f}, 128 px {np.median(at128):.2f}")
    assert np.median(at64) > 2.0
    assert np.median(at64) > 1.4 * np.median(at128)


def test_cli_names_the_bad_option(tmp_path, capsys):
    from trainer.cli import main

    assert main(["prepare", "synthetic", "--out", str(tmp_path / "c"), "--speakers", "2"]) != 0
    assert "speakers=2" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_cli_split_fractions_set_the_held_out_speakers(tmp_path):
    from trainer.cli import main

    out = tmp_path / "c"
    assert main(["prepare", "synthetic", "--out", str(out), "--speakers", "20", "--clips-per-speaker", "1",
                 "--seconds", "0.4", "--resolution", "64", "--val-fraction", "0.1", "--test-fraction", "0.25"]) == 0
    speakers = ShardIndex.load(out).extra["synthetic"]["speakers"]
    assert (len(speakers["train"]), len(speakers["val"]), len(speakers["test"])) == (13, 2, 5)
    assert ShardIndex.load(out).extra["synthetic"]["voice_share"] == VOICE_SHARE


def test_voice_share_sets_how_much_the_voice_tells_about_the_face(tmp_path):
    from trainer.cli import main

    out = tmp_path / "c"
    assert main(["prepare", "synthetic", "--out", str(out), "--speakers", "3", "--clips-per-speaker", "1",
                 "--seconds", "0.2", "--resolution", "64", "--voice-share", "0.9"]) == 0
    synthetic = ShardIndex.load(out).extra["synthetic"]
    assert synthetic["voice_share"] == synthetic["config"]["voice_share"] == 0.9
    clip = read_corpus(out)["train"][0]
    index = int(clip.meta.speaker[3:])
    assert clip.meta.extra["face_attributes"] == draw_speaker(0, index, 0.9).face.to_dict()
    assert clip.meta.extra["face_attributes"] != draw_speaker(0, index).face.to_dict()


def mouth_dark_pixels(frame: np.ndarray, marks: np.ndarray) -> float:
    """Pixels in the box around the outer lips darker than 0.6 x its median (the open mouth's inside)."""
    x0, y0 = np.floor(marks[48:60].min(0)).astype(int)
    x1, y1 = np.ceil(marks[48:60].max(0)).astype(int)
    grey = frame[y0:y1 + 1, x0:x1 + 1].astype(np.float64).mean(axis=2)
    return float((grey < 0.6 * np.median(grey)).sum())


def test_landmarks_lie_on_the_drawn_features(all_clips):
    open_mouths, open_eyes, jaw_steps = [], [], []
    for clip in all_clips:
        opening = np.asarray(clip.meta.extra["mouth_opening"])
        eyes = np.asarray(clip.meta.extra["eye_openness"])
        for frame, m, o, e in zip(clip.frames.astype(np.float64), clip.landmarks, opening, eyes, strict=True):
            if o > 0.5:  # inside the inner lips: the dark mouth (not skin, not lips)
                x, y = np.round(m[[62, 66]].mean(0) + [0, 0.2 * (m[66, 1] - m[62, 1])]).astype(int)
                open_mouths.append(frame[y, x].mean() < 90)
            if e == 1.0:  # the eye centre: iris/pupil, darker than the skin beside the eye
                for eye, corner in ((m[36:42], m[36]), (m[42:48], m[45])):
                    cx, cy = np.round(eye.mean(0)).astype(int)
                    sx, sy = np.round(corner + (corner - eye.mean(0)) * 0.6).astype(int)
                    open_eyes.append(frame[cy, cx].mean() < frame[sy, sx].mean() - 20)
            jaw_steps.append(jaw_contrast(frame, m))
    assert len(open_mouths) > 50 and np.mean(open_mouths) > 0.95
    assert len(open_eyes) > 50 and np.mean(open_eyes) > 0.95
    across, within = np.median(jaw_steps, axis=0)
    assert across > 2 * within, "the jaw landmarks must sit on the face's outline"


def jaw_contrast(frame: np.ndarray, marks: np.ndarray) -> tuple[float, float]:
    """Colour step across the jaw line at points 3-13 (3 px out vs 3 px in) and inside the face (3 vs 9 px in)."""
    across, within = [], []
    for point in marks[3:14]:
        normal = (point - marks[30]) / np.linalg.norm(point - marks[30])
        def at(d, point=point, normal=normal):
            return frame[tuple(np.round(point + d * normal).astype(int)[::-1])]

        across.append(np.abs(at(3) - at(-3)).max())
        within.append(np.abs(at(-3) - at(-9)).max())
    return float(np.median(across)), float(np.median(within))


def test_speaker_identity_is_stable_and_blinks_happen(tmp_path):
    cfg = SyntheticConfig(speakers=3, clips_per_speaker=2, seconds=4.0, resolution=96, shard_size=8, seed=1)
    clips = [c for s in write_and_read(tmp_path, cfg).values() for c in s]
    by_speaker = {}
    for clip in clips:
        by_speaker.setdefault(clip.meta.speaker, []).append(clip)
    for pair in by_speaker.values():
        a, b = pair
        assert a.meta.extra["face_attributes"] == b.meta.extra["face_attributes"]
        assert abs(voice_features(a.audio)[0] - voice_features(b.audio)[0]) < 0.1 * a.meta.extra["voice"]["f0"]
        widths = [np.median(c.landmarks[:, 16, 0] - c.landmarks[:, 0, 0]) for c in pair]
        assert abs(widths[0] - widths[1]) < 0.05 * widths[0]
    assert any(min(c.meta.extra["eye_openness"]) == 0.0 for c in clips)
    for clip in clips:  # the head moves, but only slightly
        centre = clip.landmarks[:, 27:36].mean(1)
        spread = np.ptp(centre, axis=0).max()
        assert 0.2 < spread < 0.1 * cfg.resolution


@pytest.mark.parametrize("share", [VOICE_SHARE, 0.9])
def test_the_ideal_reader_models_the_speakers_drawn(share):
    """Each correlated face attribute shares voice_share of its variance with exactly one voice latent, as the
    ideal-retrieval ceiling assumes; the ceiling lies between chance and a lookup and rises with the share."""
    speakers = [draw_speaker(5, i, share) for i in range(3000)]
    latents = np.array([[s.latents["size"], s.latents["register"]] for s in speakers])
    faces = np.array([[s.face.face_width, s.face.face_height, s.face.eye_spacing, s.face.skin_tone] for s in speakers])
    corr = np.corrcoef(np.column_stack([latents, faces]).T)[:2, 2:] ** 2              # [latent, attribute]
    expected = np.array([[1, 1, 0, 0], [0, 0, 1, 1]]) * share
    assert np.abs(corr - expected).max() < 0.06, corr.round(3)
    top1, top5 = ideal_retrieval(50, trials=4000, voice_share=share)
    assert 3 / 50 < top1 < top5 < 0.95  # above chance, below a lookup
    if share > VOICE_SHARE:
        assert top1 > ideal_retrieval(50, trials=4000)[0] + 0.05


def test_ideal_portrait_follows_only_the_voice_linked_latents():
    from dataclasses import replace

    from datamodules.synthetic import ideal_portrait
    speaker = draw_speaker(1, 3)
    image, marks = ideal_portrait(speaker, 64)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and marks.shape == (68, 2)
    unrelated = replace(speaker, face=replace(speaker.face, hair_colour=speaker.face.hair_colour + 1, freckles=0.9,
                                              jaw_squareness=3.3), voice=replace(speaker.voice, speech_rate=5.4))
    assert np.array_equal(ideal_portrait(unrelated, 64)[0], image)  # what the voice cannot tell is not drawn
    wider = replace(speaker, latents={**speaker.latents, "size": speaker.latents["size"] + 1.5})
    _, wide_marks = ideal_portrait(wider, 64)
    assert wide_marks[16, 0] - wide_marks[0, 0] > marks[16, 0] - marks[0, 0] + 1  # a larger speaker, a wider jaw
    darker = replace(speaker, latents={**speaker.latents, "register": speaker.latents["register"] + 1.5})
    cheek = (slice(36, 40), slice(22, 26))
    assert ideal_portrait(darker, 64)[0][cheek].mean() < image[cheek].mean() - 5  # register sets the skin tone
