"""The shared speech degradation: the lengths and SNRs it states are the ones measured, and the cues read them back."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lightning_modules.conre import ConReConfig
from lightning_modules.nets.speech_degradation import SpeechDegradationConfig, degrade_speech, speech_cues
from lightning_modules.portrait_diffusion import PortraitDiffusionConfig
from lightning_modules.saw import SAWConfig


def voices(count: int, seconds: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Speech-like test signals at 16 kHz: pitched tones in syllables (2.5 a second) with pauses ~50 dB down."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * 16000)) / 16000
    pitch = 100 + 200 * torch.rand(count, 1, generator=g)
    envelope = 0.003 + torch.sin(2 * math.pi * 2.5 * t + torch.rand(count, 1, generator=g)).clamp_min(0) ** 2
    return 0.4 * envelope * torch.sin(2 * math.pi * pitch * t)


@pytest.mark.parametrize("noise", ["white", "speech_shaped"])
def test_degradation_keeps_the_stated_length_and_adds_noise_at_the_stated_snr(noise):
    clean = voices(64)
    out = degrade_speech(clean, [0.5, 2.0], [None, 20.0, 10.0, 0.0], noise, generator=torch.Generator().manual_seed(1))
    kept = out.kept
    assert torch.all((kept >= 8000) & (kept <= 32000)) and float(kept.float().std()) > 3000
    positions = torch.arange(clean.shape[1])[None]
    assert torch.all(out.audio[positions >= kept[:, None]] == 0)  # zero-filled after the kept speech
    inside = positions < kept[:, None]
    added = (out.audio - clean) * inside
    measured = 10 * torch.log10((clean * inside).square().sum(1) / added.square().sum(1))
    noisy = ~out.snr_db.isnan()
    assert set(out.snr_db[noisy].tolist()) == {20.0, 10.0, 0.0} and (~noisy).sum() > 5
    assert torch.allclose(measured[noisy], out.snr_db[noisy], atol=0.01)
    assert torch.all(added[~noisy] == 0)


def test_speech_shaped_noise_follows_the_speech_spectrum_and_white_noise_is_flat():
    clean = voices(8)
    spectra = {}
    for noise in ("white", "speech_shaped"):
        degraded = degrade_speech(clean, [2.0, 2.0], [0.0], noise, generator=torch.Generator().manual_seed(2))
        added = degraded.audio - clean
        spectra[noise] = torch.fft.rfft(added, dim=-1).abs().square().mean(0)
    low, high = slice(50 * 2, 350 * 2), slice(4000 * 2, 7000 * 2)  # bins of 0.5 Hz: the voices' band, far above it
    assert spectra["speech_shaped"][low].mean() > 100 * spectra["speech_shaped"][high].mean()
    assert spectra["white"][low].mean() < 2 * spectra["white"][high].mean()


def test_cues_read_the_duration_present_and_an_snr_that_falls_with_the_noise():
    clean = voices(16)
    for seconds in (0.5, 1.0, 2.0):
        cues = speech_cues(degrade_speech(clean, [seconds, seconds], [None]).audio)
        assert torch.allclose(cues[:, 0], torch.full((16,), seconds), atol=0.021)
    estimates = [float(speech_cues(degrade_speech(clean, [2.0, 2.0], [snr]).audio)[:, 1].mean())
                 for snr in (None, 20.0, 10.0, 0.0)]
    assert all(a > b + 5 for a, b in zip(estimates, estimates[1:], strict=False)), estimates
    assert torch.equal(speech_cues(torch.zeros(2, 16000)), torch.zeros(2, 2))


def test_every_speech_stage_has_the_knobs_and_degradation_is_on_by_default_and_validated():
    for config in (ConReConfig, PortraitDiffusionConfig, SAWConfig):
        cfg = config()
        assert isinstance(cfg, SpeechDegradationConfig) and cfg.speech_degradation
        assert (cfg.speech_seconds, cfg.speech_snr_db, cfg.speech_noise) == ([0.5, 2.0], [None, 20.0, 10.0, 0.0],
                                                                             "white")
        assert not cfg.validate()
        assert any("stage.speech_seconds" in e for e in config(speech_seconds=[0.2, 1.0]).validate())
        assert any("stage.speech_snr_db" in e for e in config(speech_snr_db=[]).validate())
    audio = voices(2)
    assert torch.equal(SAWConfig().training_speech(audio, training=False), audio)
    assert torch.equal(SAWConfig(speech_degradation=False).training_speech(audio, training=True), audio)
    assert not torch.equal(SAWConfig().training_speech(audio, training=True), audio)


def test_conre_files_from_before_degradation_read_as_trained_on_clean_speech():
    from lightning_modules.stagefile import config_from_dict

    new = {f.name for f in dataclasses.fields(SpeechDegradationConfig)}
    fields = {k: v for k, v in ConReConfig().__dict__.items() if k not in new}
    cfg = config_from_dict(ConReConfig, fields, "old conre file", "stage")
    assert cfg.speech_degradation is False and cfg.speech_snr_db == [None, 20.0, 10.0, 0.0]
