"""LSE-D / LSE-C / offset equal SyncNet's reference evaluation loop and find a known shift."""

import math

import numpy as np
import pytest
import python_speech_features
import torch

from evaluation.lse import SyncClip, lse_scores, offset_distances
from evaluation.mfcc import mfcc
from lightning_modules.nets.syncnet import preprocess_frames
from tests.unit.syncnet_reference import load_reference_module, random_compact_expert


@pytest.fixture(scope="module")
def calc_pdist():
    return load_reference_module("SyncNetInstance").calc_pdist


@pytest.fixture(scope="module")
def expert():
    return random_compact_expert(0.5, 2.0)


def reference_loop(expert, frames_rgb: np.ndarray, audio: np.ndarray, calc_pdist, vshift: int = 15):
    """SyncNetInstance.evaluate's computation, step by step, for frames already at the input size."""
    im = np.stack([frame[..., ::-1] for frame in frames_rgb], axis=3)[None]
    imtv = torch.from_numpy(np.transpose(im, (0, 3, 4, 1, 2)).astype(float)).float()
    cc = np.stack([np.array(i) for i in zip(*python_speech_features.mfcc(audio, 16000), strict=True)])[None, None]
    cct = torch.from_numpy(cc.astype(float)).float()
    lastframe = min(len(frames_rgb), math.floor(len(audio) / 640)) - 5
    with torch.no_grad():
        im_feat = torch.cat([expert.forward_lip(imtv[:, :, v:v + 5]) for v in range(lastframe)])
        cc_feat = torch.cat([expert.forward_aud(cct[:, :, :, v * 4:v * 4 + 20]) for v in range(lastframe)])
    dists = calc_pdist(im_feat, cc_feat, vshift=vshift)
    mdist = torch.mean(torch.stack(dists, 1), 1)
    minval, minidx = torch.min(mdist, 0)
    return float(minval), float(torch.median(mdist) - minval), int(vshift - minidx), mdist


def test_distance_matrix_equals_reference_calc_pdist(calc_pdist):
    torch.manual_seed(3)
    video, audio = torch.randn(12, 8), torch.randn(12, 8)
    reference = torch.stack(calc_pdist(video, audio, vshift=15))
    ours = offset_distances(video, audio, vshift=15)
    assert ours.shape == (12, 31)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def random_clip(key: str, n_frames: int, n_samples: int, seed: int) -> SyncClip:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n_frames, 64, 64, 3)).astype(np.uint8)
    audio = rng.integers(-8000, 8000, n_samples).astype(np.int16)
    return SyncClip(key, frames, audio)


@pytest.mark.parametrize("batch_windows", [1, 4, 64])
def test_batched_scores_equal_the_reference_loop(expert, calc_pdist, batch_windows):
    clips = [random_clip("a", 12, 12 * 640, 1), random_clip("b", 20, 17 * 640 + 300, 2),
             random_clip("c", 9, 11 * 640, 3)]
    result = lse_scores(expert, clips, batch_windows=batch_windows)
    assert [s.key for s in result.clips] == ["a", "b", "c"]
    assert [s.n_windows for s in result.clips] == [7, 12, 4]
    for clip, score in zip(clips, result.clips, strict=True):
        lse_d, lse_c, offset, mdist = reference_loop(expert, clip.frames, clip.audio, calc_pdist)
        assert score.offset == offset
        assert score.lse_d == pytest.approx(lse_d, rel=1e-5)
        assert score.lse_c == pytest.approx(lse_c, rel=1e-4, abs=1e-5)
        np.testing.assert_allclose(score.mean_distances, mdist.numpy(), rtol=1e-5)
    assert result.lse_d == pytest.approx(np.mean([s.lse_d for s in result.clips]))
    assert result.protocol["crop_mode"] == "whole_frame" and result.protocol["vshift"] == 15


class CodeExpert(torch.nn.Module):
    """A sync expert whose audio and video embeddings are the same one-hot code of a frame:
    the video code is the grey level of the window's first frame, the audio code the log energy
    of MFCC column 1 (samples inside the window's first frame)."""

    input_size = 16
    n_codes = 6

    def __init__(self):
        super().__init__()
        tone = 400 * np.sin(2 * np.pi * 1000 * np.arange(800) / 16000)
        self.base_log_energy = float(mfcc(tone)[1, 0])

    def preprocess(self, frames):
        return preprocess_frames(frames, self.input_size)

    def one_hot(self, code: torch.Tensor) -> torch.Tensor:
        code = code.round().long().clamp(0, self.n_codes - 1)
        return torch.nn.functional.one_hot(code, self.n_codes).float() * 10

    def forward_lip(self, video):
        return self.one_hot((video[:, :, 0].mean(dim=(1, 2, 3)) - 20) / 30)

    def forward_aud(self, mfcc_window):
        return self.one_hot((mfcc_window[:, 0, 0, 1] - self.base_log_energy) / math.log(4))


def coded_clip(key: str, codes: np.ndarray, shift: int, n_frames: int) -> SyncClip:
    """Video shows codes[m + t]; audio is ahead by ``shift`` frames (it plays codes[m + t + shift])."""
    margin = 4
    video_codes = codes[margin:margin + n_frames]
    audio_codes = codes[margin + shift:margin + shift + n_frames]
    frames = np.repeat((20 + 30 * video_codes).astype(np.uint8)[:, None, None, None], 16, axis=1)
    frames = np.broadcast_to(frames, (n_frames, 16, 16, 3)).copy()
    t = np.arange(n_frames * 640)
    audio = np.repeat(400.0 * 2.0 ** audio_codes, 640) * np.sin(2 * np.pi * 1000 * t / 16000)
    return SyncClip(key, frames, np.round(audio).astype(np.int16))


def test_an_expert_with_coinciding_embeddings_finds_the_known_shift():
    rng = np.random.default_rng(7)
    shifts = {"lead2": 2, "sync": 0, "lag3": -3}
    clips = [coded_clip(key, rng.integers(0, 6, 40), shift, 30) for key, shift in shifts.items()]
    result = lse_scores(CodeExpert(), clips, batch_windows=8)
    for score, shift in zip(result.clips, shifts.values(), strict=True):
        assert score.offset == shift
        best = 15 - shift
        assert score.mean_distances[best] == pytest.approx(10 * abs(shift) / score.n_windows, abs=1e-3)
        assert score.lse_c > 5


def test_short_clips_and_wrong_rates_are_clear_errors(expert):
    with pytest.raises(ValueError, match="at least 6"):
        lse_scores(expert, [random_clip("short", 5, 5 * 640, 0)])
    with pytest.raises(ValueError, match="at least 6"):
        lse_scores(expert, [random_clip("short_audio", 10, 5 * 640 + 639, 0)])
    clip = random_clip("fps", 10, 6400, 0)
    clip.fps = 30
    with pytest.raises(ValueError, match="30 fps"):
        lse_scores(expert, [clip])
    clip = random_clip("rate", 10, 6400, 0)
    clip.sample_rate = 22050
    with pytest.raises(ValueError, match="22050 Hz"):
        lse_scores(expert, [clip])


def test_float_audio_scores_like_its_int16_samples(expert):
    clip = random_clip("float", 10, 6400, 4)
    as_float = SyncClip("float", clip.frames, clip.audio.astype(np.float32) / 32768.0)
    assert lse_scores(expert, [as_float]).clips[0] == lse_scores(expert, [clip]).clips[0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_scores_on_the_gpu_equal_the_cpu(expert):
    clips = [random_clip("a", 12, 12 * 640, 1), random_clip("b", 20, 17 * 640 + 300, 2)]
    on_cpu = lse_scores(expert, clips, batch_windows=8)
    on_gpu = lse_scores(expert.cuda(), clips, batch_windows=8)
    expert.cpu()
    for cpu_score, gpu_score in zip(on_cpu.clips, on_gpu.clips, strict=True):
        assert gpu_score.offset == cpu_score.offset
        assert gpu_score.lse_d == pytest.approx(cpu_score.lse_d, rel=1e-3)
        np.testing.assert_allclose(gpu_score.mean_distances, cpu_score.mean_distances, rtol=1e-3)


def test_float_frames_score_like_their_uint8_rounding(expert):
    clip = random_clip("frames", 10, 6400, 5)
    as_float = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    float_clip = SyncClip("frames", as_float, clip.audio)
    assert lse_scores(expert, [float_clip]).clips[0] == lse_scores(expert, [clip]).clips[0]
