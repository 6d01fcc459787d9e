"""SAW on a linear-Gaussian toy with an exact posterior sampler: the real SAW module, cues and loss learn the
closed-form a* = tr Sigma / (tr Sigma + ||m||^2), which rises as the speech degrades.

The toy: a speaker u ~ N(0, I_D); the face residual of channel c is r_c = alpha_c u + tau e_c. The toy's speech is a
waveform (amplitude-modulated tones at 1600 Hz, degraded by the real ``degrade_speech``: a kept length T and an SNR)
together with the embedding a speech encoder would read from it, y = u + sigma eps, whose noise grows as the speech
degrades: sigma^2 = 0.25 (2 s / T) (1 + 10 * 10^(-SNR/10)). SAW sees exactly what it sees in the stage: the
embedding y (direction and norm) and ``speech_cues`` of the waveform. The posterior is exact:
u | y ~ N(y / (1 + sigma^2), sigma^2 / (1 + sigma^2) I), so r_c | y has mean m_c = alpha_c y / (1 + sigma^2) and
tr Sigma_c = D (alpha_c^2 sigma^2 / (1 + sigma^2) + tau^2).
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from lightning_modules.nets.speech_degradation import degrade_speech, speech_cues
from lightning_modules.prior_weight import saw_loss, shrink_towards_prior
from lightning_modules.saw import SampleAdaptiveWeighting

SR = 1600  # the toy's sample rate: 2 s windows of 3200 samples
DIM, CHANNELS, SAMPLES = 16, 2, 4  # D = 4 x 4 positions per channel, K samples per clip
ALPHA, TAU = torch.tensor([1.0, 0.5]), 0.3
SNRS = [None, 20.0, 10.0, 0.0]


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: threads only contend
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def waveforms(count: int, g: torch.Generator) -> torch.Tensor:
    t = torch.arange(2 * SR) / SR
    rate, pitch = 1.0 + 2.0 * torch.rand(count, 1, generator=g), 150 + 300 * torch.rand(count, 1, generator=g)
    envelope = 0.05 + 0.95 * torch.sin(math.pi * rate * t + 6.3 * torch.rand(count, 1, generator=g)).abs() ** 2
    return 0.5 * envelope * torch.sin(2 * math.pi * pitch * t)


def toy_speech(count: int, g: torch.Generator, seconds=(0.5, 2.0), snrs=SNRS) -> tuple[torch.Tensor, torch.Tensor]:
    """(cues [N, 2] of degraded toy waveforms, the embedding noise sigma^2 [N] their degradation implies)."""
    degraded = degrade_speech(waveforms(count, g), list(seconds), list(snrs), sample_rate=SR, generator=g)
    noise = torch.where(degraded.snr_db.isnan(), 0.0, 10.0 ** (-degraded.snr_db.nan_to_num(0.0) / 10))
    return speech_cues(degraded.audio, SR), 0.25 * (2.0 * SR / degraded.kept) * (1 + 10 * noise)


def toy_batch(cues: torch.Tensor, noise: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Embedding, cues, true residual [B, C, 4, 4], K exact posterior samples [B, K, C, 4, 4] and a* [B, C]."""
    count = len(noise)
    u = torch.randn(count, DIM, generator=g)
    y = u + noise.sqrt()[:, None] * torch.randn(count, DIM, generator=g)
    residual = ALPHA[None, :, None] * u[:, None] + TAU * torch.randn(count, CHANNELS, DIM, generator=g)
    mean, var = y / (1 + noise)[:, None], (noise / (1 + noise))[:, None]
    drawn = mean[:, None] + var[:, None].sqrt() * torch.randn(count, SAMPLES, DIM, generator=g)
    samples = ALPHA[None, None, :, None] * drawn[:, :, None] + TAU * torch.randn(count, SAMPLES, CHANNELS, DIM,
                                                                                 generator=g)
    trace = DIM * (ALPHA[None] ** 2 * var + TAU ** 2)
    mean_norm = ALPHA[None] ** 2 * mean.square().sum(1, keepdim=True)
    return {"embedding": y, "cues": cues, "residual": residual.reshape(count, CHANNELS, 4, 4),
            "samples": samples.reshape(count, SAMPLES, CHANNELS, 4, 4), "a_star": trace / (trace + mean_norm)}


def draw(pool, g: torch.Generator, size: int) -> dict[str, torch.Tensor]:
    pick = torch.randint(len(pool[1]), (size,), generator=g)
    return toy_batch(pool[0][pick], pool[1][pick], g)


def loss_of(saw: SampleAdaptiveWeighting, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    a = saw(batch["embedding"], batch["cues"])
    return saw_loss(a, batch["residual"], batch["samples"]), a


@pytest.fixture(scope="module")
def toy():
    with one_thread():
        g = torch.Generator().manual_seed(0)
        pool = toy_speech(2048, g)
        torch.manual_seed(0)
        saw = SampleAdaptiveWeighting(DIM, CHANNELS, hidden_dim=64, initial=0.5)
        gradients = []
        for _ in range(32):  # the mean gradient in a at initialisation, batch by batch
            losses, a = loss_of(saw, draw(pool, g, 256))
            gradients.append(torch.autograd.grad(losses.mean(), a)[0].sum())
        steps = 600
        optimizer = torch.optim.Adam(saw.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(steps):
            losses, _ = loss_of(saw, draw(pool, g, 512))
            optimizer.zero_grad()
            losses.mean().backward()
            optimizer.step()
            schedule.step()
    return {"saw": saw.eval(), "pool": pool, "gradients": torch.stack(gradients), "g": g}


def test_the_loss_gradient_in_a_at_initialisation_is_clearly_non_zero(toy):
    gradients = toy["gradients"]
    t = gradients.mean() / (gradients.std() / math.sqrt(len(gradients)))
    assert abs(float(t)) > 5, f"t = {float(t):.2f}"


def test_trained_saw_reaches_the_closed_form_optimum(toy):
    batch = draw(toy["pool"], toy["g"], 2048)
    with torch.no_grad():
        _, a = loss_of(toy["saw"], batch)
    error = (a - batch["a_star"]).abs()
    assert float(error.mean()) < 0.05, f"mean |a - a*| = {float(error.mean()):.3f}"
    assert float(batch["a_star"].std()) > 0.1  # a* does vary from clip to clip: SAW is not a constant


def test_a_rises_as_the_speech_degrades(toy):
    levels = [((2.0, 2.0), [None]), ((1.0, 1.0), [10.0]), ((0.5, 0.5), [0.0])]
    means, optimal = [], []
    for seconds, snrs in levels:
        batch = toy_batch(*toy_speech(512, toy["g"], seconds, snrs), toy["g"])
        with torch.no_grad():
            means.append(loss_of(toy["saw"], batch)[1].mean(0))
        optimal.append(batch["a_star"].mean(0))
    means, optimal = torch.stack(means), torch.stack(optimal)
    assert torch.all(optimal[1:] > optimal[:-1] + 0.05)
    assert torch.all(means[1:] > means[:-1] + 0.05), means
    assert torch.allclose(means, optimal, atol=0.05)


def test_a_of_one_gives_the_prior_exactly_and_zero_the_raw_sample():
    g = torch.Generator().manual_seed(1)
    prior, residual = torch.randn(CHANNELS, 4, 4, generator=g), torch.randn(3, CHANNELS, 4, 4, generator=g)
    assert torch.equal(shrink_towards_prior(prior, residual, torch.ones(3, CHANNELS)), prior.expand(3, -1, -1, -1))
    assert torch.equal(shrink_towards_prior(prior, residual, torch.zeros(3, CHANNELS)), prior + residual)
