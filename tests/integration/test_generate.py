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
    from common.media import Mp4Writer
    real_write = Mp4Writer.write

    def write_then_fail(self, frames):
        real_write(self, frames[:2])  # some packets are on disk already
        raise OSError("disk full")

    monkeypatch.setattr(Mp4Writer, "write", write_then_fail)
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


def face_png(path: Path, size: tuple[int, int], hue: int) -> Path:
    """A face-like test image: a bright oval on a coloured ground, its colours set by ``hue`` (0 or 1)."""
    from PIL import Image
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    oval = ((x - width / 2) / (0.3 * width)) ** 2 + ((y - height / 2) / (0.4 * height)) ** 2 < 1
    image = np.zeros((height, width, 3), np.uint8)
    image[...] = (40, 60 + 100 * hue, 200 - 150 * hue)
    image[oval] = (220 - 120 * hue, 170, 140 + 80 * hue)
    Image.fromarray(image).save(path)
    return path


def pil_resize(path: Path, size: int) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC)).astype(np.float64)


def test_a_given_portrait_is_what_the_motion_stage_animates_without_any_portrait_stage(stages, tmp_path,
                                                                                         monkeypatch, capsys):
    """The untrained tiny stages do not reproduce a face, so the first frame cannot be compared with the portrait
    here (the shipped stages' test below does): this checks that the face the motion stage encodes is the given
    image, resized to the size it animates (64 px; from 96), and that no portrait stage file is read."""
    from lightning_modules.motion_generation import FrozenParts
    partial = tmp_path / "stages"
    shutil.copytree(stages, partial)
    for name in ("portrait_diffusion", "saw", "face_prior"):
        (partial / f"{name}.safetensors").unlink()
    given, other = face_png(tmp_path / "face.png", (96, 96), 0), face_png(tmp_path / "other.png", (96, 96), 1)
    encoded = []
    real_encode = FrozenParts.encode

    def spy(self, images):
        encoded.append(images.detach().cpu().clone())
        return real_encode(self, images)

    monkeypatch.setattr(FrozenParts, "encode", spy)
    audio, out, used = speech(tmp_path / "speech.wav", 0.8), tmp_path / "talk.mp4", tmp_path / "used.png"
    code = main(["generate", "--audio", str(audio), "--stages", str(partial), "--out", str(out), "--portrait",
                 str(given), "--save-portrait", str(used), *FAST])
    assert code == 0, capsys.readouterr().err
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == int(0.8 * 25)
    from common.images import to_uint8
    animated = to_uint8(encoded[0][0]).astype(np.float64)  # the motion stage's first encode: the portrait
    assert animated.shape == (64, 64, 3)
    to_given = np.abs(animated - pil_resize(given, 64)).mean()
    to_other = np.abs(animated - pil_resize(other, 64)).mean()
    assert to_given < 2.0 and to_other > 40.0, (to_given, to_other)  # PIL's bicubic is the independent reference
    from PIL import Image
    assert np.array_equal(np.asarray(Image.open(used)), animated.astype(np.uint8))


def test_portrait_mistakes_are_named_with_what_to_do(stages, tmp_path, capsys):
    audio, out = speech(tmp_path / "speech.wav", 0.8), tmp_path / "never.mp4"
    wide, text = face_png(tmp_path / "wide.png", (96, 64), 0), tmp_path / "notes.png"
    text.write_text("not an image")
    square = face_png(tmp_path / "face.png", (64, 64), 0)
    cases = [(["--portrait", str(wide)], "wide.png is 96 x 64 px but must be square", "crop it to 64 x 64 px"),
             (["--portrait", str(tmp_path / "none.png")], "none.png does not exist", "give a square image"),
             (["--portrait", str(text)], "notes.png is not an image that can be read", "give a PNG or JPEG"),
             (["--portrait", str(square), "--portrait-only"], "leaves nothing to generate", "drop --portrait-only"),
             (["--portrait", str(square), "--no-saw"], "--no-saw shapes a portrait generated", "drop --no-saw")]
    for words, what, fix in cases:
        assert main(["generate", "--audio", str(audio), "--stages", str(stages), "--out", str(out), *words,
                     *FAST]) == 2
        err = capsys.readouterr().err
        assert what in err and fix in err, err
        assert not out.exists()


SHIPPED = Path(__file__).resolve().parents[2] / "demo"


def shipped_corpus() -> dict:
    """The corpus options and test speakers of the shipped demo stages (``demo/`` is in git: `make demo-stages`)."""
    import json

    return json.loads((SHIPPED / "MANIFEST.json").read_text())["corpus"]


def test_with_the_shipped_stages_the_video_starts_from_the_given_portrait(tmp_path, capsys):
    """Trained stages reproduce the face they animate: the first frame is much closer to the given portrait (a test
    speaker's real frame) than to another test speaker's, both at the video's size."""
    from common.media import read_mp4, write_png
    from reports.demo import speaker_clip
    corpus = shipped_corpus()
    first, second = (speaker_clip(corpus["options"], s, 1.2) for s in corpus["test_speakers"][:2])
    given, other = write_png(tmp_path / "given.png", first.frames[0]), write_png(tmp_path / "other.png",
                                                                                   second.frames[0])
    audio, out = tmp_path / "speech.wav", tmp_path / "talk.mp4"
    sf.write(audio, first.audio, 16000)
    assert main(["generate", "--audio", str(audio), "--stages", str(SHIPPED / "stages"), "--out", str(out),
                 "--portrait", str(given)]) == 0, capsys.readouterr().err
    frame = read_mp4(out)[0][0].astype(np.float64)
    size = frame.shape[0]
    to_given = np.abs(frame - pil_resize(given, size)).mean()
    to_other = np.abs(frame - pil_resize(other, size)).mean()
    assert to_given < 0.5 * to_other, (to_given, to_other)


def test_the_shipped_stages_make_at_most_2_5_denoiser_calls_per_output_frame_at_their_defaults():
    """2 s of a test speaker's speech at the default settings: the portrait's 50 steps and the windowed frame
    renderer's windows x its steps, over 50 frames (a call per frame and step, as before the windows, made 10)."""
    import torch

    from generation.pipeline import GenerationOptions, TalkingFacePipeline
    from reports.demo import speaker_clip
    corpus = shipped_corpus()
    clip = speaker_clip(corpus["options"], corpus["test_speakers"][0], 2.0)
    pipeline = TalkingFacePipeline(SHIPPED / "stages", GenerationOptions(seed=0, codebook=False))
    calls = {"portrait": 0, "frame": 0}
    for name, module in (("portrait", pipeline.portraits.denoiser), ("frame", pipeline.motion.frame_denoiser)):
        module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
    speech = torch.from_numpy(clip.audio).float()
    frames, _ = pipeline.video(pipeline.portrait(speech, {}), speech, {}, lambda step: None)
    assert len(frames) == 50 and calls["portrait"] == GenerationOptions().steps
    assert (calls["portrait"] + calls["frame"]) / len(frames) <= 2.5, calls


def test_streamed_chunks_are_the_whole_clip_and_leave_before_the_last_window(stages, tmp_path, monkeypatch):
    import torch

    import generation.pipeline as pipeline_module
    from generation.pipeline import GenerationOptions, TalkingFacePipeline
    from generation.speech import load_speech
    from lightning_modules.motion_generation import render_frames, sample_motion

    events: list[str] = []
    made = pipeline_module.frame_latents

    def recorded(*args):
        for window in made(*args):
            events.append("window")
            yield window

    heard: list[torch.Tensor] = []
    refine = pipeline_module.refine_video

    def listened(stage, frames, landmarks, audio, reference=None):
        heard.append(audio.cpu())
        return refine(stage, frames, landmarks, audio, reference)

    monkeypatch.setattr(pipeline_module, "frame_latents", recorded)
    monkeypatch.setattr(pipeline_module, "refine_video", listened)
    voice = torch.from_numpy(load_speech(speech(tmp_path / "speech.wav", 1.5)))
    pipeline = TalkingFacePipeline(stages, GenerationOptions(steps=2, motion_steps=1, frame_steps=1, batch_frames=4))
    face = pipeline.portrait(voice, {})
    chunks = []
    for chunk in pipeline.video_chunks(face, voice, {}, lambda name: None):
        events.append("chunk")
        chunks.append(chunk)
    assert len(chunks) > 1 and events.index("chunk") < len(events) - 1 - events[::-1].index("window")
    n_samples = int(1.5 * 25) * 640  # each chunk's lips heard their own stretch of the speech
    assert torch.equal(torch.cat(heard)[:n_samples], voice[:n_samples])

    parts, n_frames = pipeline.motion_parts(), int(1.5 * 25)  # the whole clip, one stage after the other
    generator = torch.Generator().manual_seed(0)
    features = parts.audio_features(voice[None], n_frames)
    motion = sample_motion(parts, features, parts.frozen.speaker(voice[None]), n_frames, generator)
    latents = render_frames(parts, parts.frozen.encode(face[None]), motion, features, generator)
    low = torch.cat([parts.frozen.decode(c) for c in latents.split(4)])
    marks = parts.motion_encoder.landmarks(motion[0], face.shape[-1])
    low = pipeline.refine_lips(low, marks, voice, face)
    assert torch.allclose(torch.cat([c[0] for c in chunks]), low, atol=1e-5)
    assert torch.allclose(torch.cat([c[1] for c in chunks]), pipeline.render(low), atol=1e-5)
