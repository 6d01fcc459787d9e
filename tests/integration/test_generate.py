"""`seespeaker generate` end to end: the codebook trained phase by phase through the CLI on the synthetic corpus,
every other stage exported small, then speech files -> mp4 (frames at 25 fps, the speech muxed in), and the
errors a user can make: no audio stream, zero-length audio, missing or unusable stage files, a failed write."""
from __future__ import annotations

import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from lightning_modules.stagefile import load_stage_file
from tests.integration.tiny_stages import codebook_train_words, make_generation_stages
from trainer.cli import main

FAST = ["--steps", "2", "--motion-steps", "1", "--frame-steps", "1"]


@pytest.fixture(scope="module")
def stages(synthetic_corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("generate")
    folder = make_generation_stages(root / "tiny" / "stages")
    for phase in ("vqgan", "transformer", "render"):
        assert main(codebook_train_words(synthetic_corpus, root, phase)) == 0
        assert load_stage_file(folder / "codebook.safetensors").phase == phase
    return folder


def speech(path: Path, seconds: float, rate: int = 44100, channels: int = 2) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    voice = 0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2
    sf.write(path, np.stack([voice] * channels, 1).astype(np.float32), rate)
    return path


def test_generate_writes_an_mp4_with_a_frame_per_40_ms_and_the_speech(stages, tmp_path, capsys):
    audio, out = speech(tmp_path / "speech.wav", 1.3), tmp_path / "talk.mp4"
    portrait = tmp_path / "portrait.png"
    code = main(["generate", "--audio", str(audio), "--stages", str(stages), "--out", str(out),
                 "--save-portrait", str(portrait), *FAST])
    assert code == 0, capsys.readouterr().err
    with av.open(str(out)) as container:
        assert container.streams.audio and container.streams.audio[0].rate == 16000
        video = container.streams.video[0]
        assert float(video.average_rate) == 25.0
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == int(1.3 * 25) and frames[0].shape == (256, 256, 3)  # 64 px -> 256 px by the codebook
    with av.open(str(out)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples / 16000 - len(frames) / 25) < 0.1
    from PIL import Image
    assert Image.open(portrait).size == (64, 64)
    assert "step times" in capsys.readouterr().out


def test_portrait_only_writes_no_video(stages, tmp_path):
    audio, out = speech(tmp_path / "speech.flac", 0.8, rate=22050, channels=1), tmp_path / "only.mp4"
    assert main(["generate", "--audio", str(audio), "--stages", str(stages), "--out", str(out), "--portrait-only",
                 *FAST]) == 0
    assert (tmp_path / "only.png").is_file() and not out.exists()


def test_no_codebook_writes_the_low_resolution_frames_without_needing_the_codebook(stages, tmp_path):
    partial = tmp_path / "stages"
    shutil.copytree(stages, partial)
    (partial / "codebook.safetensors").unlink()
    audio, out = speech(tmp_path / "speech.wav", 0.8), tmp_path / "low.mp4"
    assert main(["generate", "--audio", str(audio), "--stages", str(partial), "--out", str(out), "--no-codebook",
                 *FAST]) == 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == int(0.8 * 25) and frames[0].shape == (64, 64, 3)
    assert main(["generate", "--audio", str(audio), "--stages", str(partial), "--out", str(tmp_path / "x.mp4"),
                 *FAST]) == 2


def test_bad_inputs_fail_with_messages_naming_the_file(stages, tmp_path, capsys):
    out = tmp_path / "never.mp4"
    video_only = tmp_path / "no_sound.mp4"
    from common.media import write_mp4
    write_mp4(video_only, np.zeros((5, 16, 16, 3), np.uint8))
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    partial = tmp_path / "tiny" / "stages"
    shutil.copytree(stages, partial)
    (partial / "lip_enhancer.safetensors").unlink()
    broken = tmp_path / "broken"
    shutil.copytree(stages, broken)
    shutil.copy(stages / "conre.safetensors", broken / "motion_diffusion.safetensors")
    good = speech(tmp_path / "speech.wav", 0.8)
    cases = [(video_only, stages, "no_sound.mp4 has no audio stream"), (empty, stages, "empty.wav holds no audio"),
             (good, partial, "lip_enhancer.safetensors (make it with "
                             "`seespeaker train experiment=tiny stage=lip_enhancer`"),
             (good, broken, "motion_diffusion.safetensors cannot be used")]
    for audio, folder, expected in cases:
        assert main(["generate", "--audio", str(audio), "--stages", str(folder), "--out", str(out), *FAST]) == 2
        assert expected in capsys.readouterr().err
        assert not out.exists()


def test_a_failed_write_leaves_no_partial_mp4(stages, tmp_path, monkeypatch, capsys):
    import common.media as video_io
    real_mux = video_io._mux

    def mux_then_fail(container, frames, audio, fps, sr):
        real_mux(container, frames[:2], None, fps, sr)  # some packets are on disk already
        raise OSError("disk full")

    monkeypatch.setattr(video_io, "_mux", mux_then_fail)
    out = tmp_path / "video" / "talk.mp4"
    with pytest.raises(OSError, match="disk full"):
        main(["generate", "--audio", str(speech(tmp_path / "speech.wav", 0.7)), "--stages", str(stages),
              "--out", str(out), *FAST])
    assert not out.exists()
    assert list(out.parent.glob("*")) == []  # no temporary file left behind either


@pytest.mark.cuda
def test_generate_on_the_gpu_matches_the_cpu_frame_count(stages, tmp_path):
    audio, out = speech(tmp_path / "speech.wav", 0.9), tmp_path / "gpu.mp4"
    assert main(["generate", "--audio", str(audio), "--stages", str(stages), "--out", str(out), "--device", "cuda",
                 *FAST]) == 0
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == int(0.9 * 25)


def test_asking_for_a_missing_gpu_is_a_user_error(stages, tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the error cannot occur")
    audio = speech(tmp_path / "speech.wav", 0.8)
    assert main(["generate", "--audio", str(audio), "--stages", str(stages), "--out", str(tmp_path / "x.mp4"),
                 "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
