"""The prior weight a outside SAW: the plug-in and oracle estimates, files of the earlier formulation refused, and
``seespeaker generate --prior-weight`` reaching the sampler."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from lightning_modules.portrait_diffusion import PortraitDiffusionStage, PortraitSampler
from lightning_modules.prior_weight import oracle_prior_weight, plug_in_prior_weight, saw_loss
from lightning_modules.saw import SAWStage
from lightning_modules.stagefile import StageFile, StageFileError, StageFiles, save_stage_file
from tests.unit.stage1_helpers import export, make_stage1_inputs, tiny_portrait, tiny_saw
from trainer.cli import main


def gaussian_samples(mean_scale: float, spread: float, clips: int, count: int, seed: int = 0):
    """K samples per clip of N(m, spread^2 I) on [C=2, 4, 4] with ||m||^2 = mean_scale^2 * 16 per channel."""
    g = torch.Generator().manual_seed(seed)
    mean = mean_scale * torch.sign(torch.randn(clips, 1, 2, 4, 4, generator=g))
    return mean + spread * torch.randn(clips, count, 2, 4, 4, generator=g), mean[:, 0]


@pytest.mark.parametrize(("mean_scale", "spread"), [(1.0, 0.5), (0.5, 1.0), (1.0, 1.0)])
def test_plug_in_weight_estimates_the_closed_form_from_the_samples_spread(mean_scale, spread):
    samples, _ = gaussian_samples(mean_scale, spread, clips=200, count=64)
    optimum = spread ** 2 / (spread ** 2 + mean_scale ** 2)  # tr Sigma / (tr Sigma + ||m||^2), per channel
    a = plug_in_prior_weight(samples)
    assert a.shape == (200, 2) and abs(float(a.mean()) - optimum) < 0.03
    few = plug_in_prior_weight(samples[:, :4])  # K = 4: noisier, no bias of tr Sigma / K in ||m||^2
    assert abs(float(few.median()) - optimum) < 0.1
    assert torch.equal(plug_in_prior_weight(samples[:, :1].repeat(1, 3, 1, 1, 1)), torch.zeros(200, 2))
    with pytest.raises(ValueError, match="at least 2 samples"):
        plug_in_prior_weight(samples[:, 0])


def test_oracle_weight_fits_the_true_residual_and_minimises_the_loss():
    samples, _ = gaussian_samples(1.0, 1.0, clips=3, count=4)
    target = samples[:, 0] + 0.3 * torch.randn(3, 2, 4, 4)
    assert torch.allclose(oracle_prior_weight(samples[:, 0], samples[:, 0]), torch.zeros(3, 2), atol=1e-6)
    assert torch.allclose(oracle_prior_weight(2 * samples[:, 0], samples[:, 0]), torch.full((3, 2), 0.5), atol=1e-6)
    assert torch.equal(oracle_prior_weight(samples[:, 0], -samples[:, 0]), torch.ones(3, 2))  # clipped to [0, 1]
    a = oracle_prior_weight(samples, target)
    best = saw_loss(a, target, samples)
    for step in (-0.02, 0.02):  # the loss is a parabola in a with its minimum at the oracle's a (when unclipped)
        assert torch.all(saw_loss((a + step).clamp(0, 1), target, samples) >= best - 1e-6)


def old_file(folder, stage: str, config: dict, state: dict) -> StageFiles:
    save_stage_file(folder / f"{stage}.safetensors", StageFile(stage=stage, state=state, config=config))
    return StageFiles(folder)


def test_files_of_the_earlier_formulation_are_refused_naming_the_file(tmp_path):
    config = {"name": "portrait_diffusion", "prior_weight": 0.8, "prior_weight_mode": "drawn",
              "condition_on_prior_weight": True}
    state = {"model.unet.class_embedding.linear_1.weight": torch.zeros(2, 4)}
    files = old_file(tmp_path, "portrait_diffusion", config, state)
    path = str(tmp_path / "portrait_diffusion.safetensors")
    with pytest.raises(StageFileError, match=f"{path}.*earlier formulation.*a was given to the denoiser.*retrain"):
        PortraitDiffusionStage.for_inference(files)
    saw_state = {"saw.net.0.weight": torch.zeros(2, 2)}
    files = old_file(tmp_path, "saw", {"name": "saw", "joint": False, "reg_weight": 0.1}, saw_state)
    with pytest.raises(StageFileError, match=r"saw.safetensors.*earlier formulation.*stage\.joint.*retrain"):
        SAWStage.for_inference(files)


@pytest.fixture(scope="module")
def portrait_stages(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prior_weight")
    info = make_stage1_inputs(folder)
    export(PortraitDiffusionStage(tiny_portrait(), info["data"], str(folder)),
           folder / "portrait_diffusion.safetensors")
    return folder, info


def test_generate_prior_weight_reaches_the_sampler_without_a_saw_file(portrait_stages, tmp_path, monkeypatch,
                                                                     capsys):
    folder, _ = portrait_stages
    assert not (folder / "saw.safetensors").exists()
    audio = tmp_path / "speech.wav"
    t = np.arange(16000) / 16000
    sf.write(audio, (0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(np.float32),
             16000)
    seen = []
    real = PortraitSampler.sample

    def recording(self, speech, steps, guidance, seed=0, use_saw=True, prior_weight=None, parts=False):
        draw = real(self, speech, steps, guidance, seed, use_saw, prior_weight, parts=True)
        seen.append((prior_weight, draw.prior_weight))
        return draw.images

    monkeypatch.setattr(PortraitSampler, "sample", recording)
    out = tmp_path / "portrait"
    assert main(["generate", "--audio", str(audio), "--stages", str(folder), "--out", str(out), "--portrait-only",
                 "--steps", "2", "--prior-weight", "0.25"]) == 0
    assert (tmp_path / "portrait.png").is_file()
    assert seen[-1][0] == 0.25 and torch.equal(seen[-1][1], torch.full((1, 4), 0.25))
    assert main(["generate", "--audio", str(audio), "--stages", str(folder), "--out", str(out), "--portrait-only",
                 "--steps", "2", "--no-saw"]) == 0
    assert seen[-1][0] is None and torch.equal(seen[-1][1], torch.full((1, 4), 0.5))  # stage.prior_weight
    assert main(["generate", "--audio", str(audio), "--stages", str(folder), "--out", str(out), "--portrait-only",
                 "--prior-weight", "1.5"]) == 2
    assert "--prior-weight 1.5: the prior weight a must be in [0, 1]" in capsys.readouterr().err


def test_saw_refuses_a_denoiser_trained_without_a_prior(portrait_stages, tmp_path):
    folder, info = portrait_stages
    for name in ("conre", "autoencoder"):
        shutil.copy(folder / f"{name}.safetensors", tmp_path / f"{name}.safetensors")
    export(PortraitDiffusionStage(tiny_portrait(prior="none"), info["data"], str(tmp_path)),
           tmp_path / "portrait_diffusion.safetensors")
    with pytest.raises(StageFileError, match="without one.*stage.prior=residual"):
        SAWStage(tiny_saw(), info["data"], str(tmp_path))
