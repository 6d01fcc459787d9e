"""The generation pipeline's parts: reading speech of any format, naming missing or unusable stage files, the
landmarks decoded from motion latents (the lip mask's source)."""
from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from generation.pipeline import PORTRAIT_STAGES, VIDEO_STAGES, GenerationOptions, TalkingFacePipeline, required_files
from generation.speech import GenerationError, load_speech
from lightning_modules.nets.face_frame import group_inputs
from lightning_modules.nets.motion import MotionEncoder


def tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 200 * t)
    return np.stack([wave] * channels, 1).astype(np.float32)


def encode_with_pyav(path, codec: str, rate: int, seconds: float) -> None:
    """Write a stereo tone with one of PyAV's encoders (aac in m4a, mp3)."""
    audio = tone(seconds, rate, 2).T.copy()
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.mark.parametrize("suffix, rate, channels", [("wav", 44100, 2), ("wav", 8000, 1), ("flac", 48000, 2)])
def test_speech_of_any_rate_and_channels_becomes_16k_mono(tmp_path, suffix, rate, channels):
    path = tmp_path / f"speech.{suffix}"
    sf.write(path, tone(1.5, rate, channels), rate)
    audio = load_speech(path)
    assert audio.ndim == 1 and audio.dtype == np.float32
    assert abs(len(audio) - 24000) <= 160  # 1.5 s at 16 kHz, within a resampler block
    assert 0.25 < np.abs(audio[1000:-1000]).max() < 0.35  # the tone survives resampling and down-mixing


@pytest.mark.parametrize("codec, suffix", [("aac", "m4a"), ("mp3", "mp3")])
def test_compressed_speech_is_decoded(tmp_path, codec, suffix):
    assert codec in av.codecs_available, f"this PyAV build has no {codec} codec; install the PyPI wheel of av"
    path = tmp_path / f"speech.{suffix}"
    encode_with_pyav(path, codec, 44100, 1.0)
    audio = load_speech(path)
    assert abs(len(audio) - 16000) < 1600 and np.abs(audio).max() > 0.1


def test_unusable_audio_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(GenerationError, match="does not exist"):
        load_speech(tmp_path / "nowhere.wav")
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(GenerationError, match="empty.wav.*zero length"):
        load_speech(empty)
    silent_video = tmp_path / "video_only.mp4"
    from common.media import write_mp4
    write_mp4(silent_video, np.zeros((3, 16, 16, 3), np.uint8))
    with pytest.raises(GenerationError, match="video_only.mp4 has no audio stream"):
        load_speech(silent_video)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    with pytest.raises(GenerationError, match="junk.wav cannot be decoded"):
        load_speech(junk)


def test_missing_stage_files_are_named_with_the_command_that_makes_them(tmp_path):
    stages = tmp_path / "tiny" / "stages"
    stages.mkdir(parents=True)
    for name in PORTRAIT_STAGES:
        (stages / f"{name}.safetensors").write_bytes(b"x")
    assert set(required_files(stages, portrait_only=True)) == set(PORTRAIT_STAGES)
    with pytest.raises(GenerationError) as info:
        required_files(stages, portrait_only=False)
    message = str(info.value)
    for name in VIDEO_STAGES:
        assert str(stages / f"{name}.safetensors") in message
    assert "seespeaker train experiment=tiny stage=motion_diffusion" in message
    assert "stage=codebook stage.phase=P run.name=P` for P = vqgan, transformer, render" in message


def test_an_unreadable_stage_file_is_an_error_naming_it(tmp_path):
    for name in PORTRAIT_STAGES + VIDEO_STAGES:
        (tmp_path / f"{name}.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(GenerationError, match="conre.safetensors cannot be used"):
        TalkingFacePipeline(tmp_path, GenerationOptions())


def faces(base: torch.Tensor, count: int) -> torch.Tensor:
    """Landmark sets that vary as faces do: shifted, scaled, with the mouth more or less open."""
    shift = torch.rand(count, 1, 2) * 8 - 4
    scale = 0.9 + 0.2 * torch.rand(count, 1, 1)
    mouth = torch.zeros(68, 2)
    mouth[48:68, 1] = torch.linspace(-1, 1, 20)
    opening = 3 * torch.rand(count, 1, 1)
    centre = base.mean(0)
    return (centre + (base - centre) * scale + shift + opening * mouth).clamp(0, 63)


def test_landmarks_decoded_from_motion_latents_invert_the_group_inputs():
    torch.manual_seed(0)
    size = 64
    encoder = MotionEncoder({"lips": 8, "jaw": 4, "brows": 4, "eyes": 4, "pose": 4}, hidden=64)
    test = faces(torch.rand(68, 2) * 24 + 20, 8)
    with torch.no_grad():
        untrained = encoder.landmarks(encoder(test, size), size)
    assert untrained.shape == (8, 68, 2) and untrained.min() >= 0 and untrained.max() <= size - 1
    exact = group_inputs(test, size)
    encoder.decoders = torch.nn.ModuleDict({name: Constant(value) for name, value in exact.items()})
    with torch.no_grad():  # decoders that reproduce the group inputs exactly give the landmarks back exactly
        decoded = encoder.landmarks(encoder(test, size), size)
    assert torch.allclose(decoded, test, atol=1e-3)
    moved = group_inputs(test + torch.tensor([3.0, -2.0]), size)
    encoder.decoders = torch.nn.ModuleDict({name: Constant(value) for name, value in moved.items()})
    with torch.no_grad():
        shifted = encoder.landmarks(encoder(test, size), size)
    assert torch.allclose(shifted - decoded, torch.tensor([3.0, -2.0]).expand_as(decoded), atol=1e-3)
    # a rolled, nodding head (rotation, vertical foreshortening about a point, a shift down): the frame undoes it
    angle = torch.tensor(0.15)
    turn = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    pivot = torch.tensor([32.0, 36.0])
    nodded = ((test - pivot) @ turn.T) * torch.tensor([1.0, 0.9]) + pivot + torch.tensor([0.0, 2.0])
    rolled = group_inputs(nodded, size)
    encoder.decoders = torch.nn.ModuleDict({name: Constant(value) for name, value in rolled.items()})
    with torch.no_grad():
        assert torch.allclose(encoder.landmarks(encoder(test, size), size), nodded, atol=1e-3)


def test_the_gaze_decoded_from_motion_latents_is_the_gaze_where_known_and_absent_elsewhere():
    torch.manual_seed(0)
    size = 64
    encoder = MotionEncoder({"lips": 8, "jaw": 4, "brows": 4, "eyes": 4, "pose": 4}, hidden=64)
    test = faces(torch.rand(68, 2) * 24 + 20, 4)
    gaze = torch.tensor([[0.5, -0.25], [-0.75, 0.5], [0.9, 0.9], [-0.3, -0.6]])
    known = torch.tensor([True, True, False, False])
    with torch.no_grad():
        untrained = encoder.gaze(encoder(test, size, gaze, known))
    assert untrained.shape == (4, 3) and untrained[:, :2].abs().max() <= 1
    assert untrained[:, 2].min() >= 0 and untrained[:, 2].max() <= 1
    exact = group_inputs(test, size, gaze, known)
    encoder.decoders = torch.nn.ModuleDict({name: Constant(value) for name, value in exact.items()})
    with torch.no_grad():
        decoded = encoder.gaze(encoder(test, size, gaze, known))
    expected = torch.tensor([[0.5, -0.25, 1.0], [-0.75, 0.5, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(decoded, expected, atol=1e-6)
    with torch.no_grad():  # the gaze entries decode to nothing but the gaze: the landmarks stay as they were
        assert torch.allclose(encoder.landmarks(encoder(test, size), size), test, atol=1e-3)


class Constant(torch.nn.Module):
    """A decoder that returns known group inputs (to check the geometry of the decoding alone)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.value
