"""The pure parts of the Stage-1 ablation table: the speech conditions, the nearest-voice faces, the choices on val,
retrieval with undetected faces, Spearman with its interval, and the table rendered from cached evaluations."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reports.results as results
import reports.results_portrait_table as table
from reports import plan
from reports.results_portrait_ablation import GRID_COLUMNS, ROWS, WEIGHTED, grid_png
from reports.results_portrait_stats import (
    CONDITIONS,
    choose_on_val,
    condition_audio,
    errors_by_prior_weight,
    gallery_hits,
    nearest_speakers,
    nearest_voice_latents,
    spearman,
    spearman_interval,
)


def speech(clips: int = 3, samples: int = 32000) -> torch.Tensor:
    t = torch.arange(samples) / 16000
    return torch.stack([0.3 * torch.sin(2 * torch.pi * (100 + 40 * i) * t) for i in range(clips)])


def test_every_row_and_run_sees_the_same_audio_of_a_clip_under_a_condition():
    audio, keys = speech(), ["a", "b", "c"]
    assert torch.equal(condition_audio(audio, keys, "clean 2 s"), audio)
    for condition in ("0.5 s", "0 dB"):
        first, again = condition_audio(audio, keys, condition), condition_audio(audio.clone(), keys, condition)
        assert torch.equal(first, again)  # the same audio for every row and every call
        reordered = condition_audio(audio[[2, 0, 1]], ["c", "a", "b"], condition)
        assert torch.equal(reordered, first[[2, 0, 1]])  # a clip's audio follows its key, not its place
    short = condition_audio(audio, keys, "0.5 s")
    assert torch.equal(short[:, :8000], audio[:, :8000]) and not short[:, 8000:].any()  # clean 0.5 s, then zeros
    noisy = condition_audio(audio, keys, "0 dB")
    noise = noisy - audio
    ratio = audio.square().sum(1) / noise.square().sum(1)
    assert torch.allclose(ratio, torch.ones(3), rtol=1e-3)  # 0 dB: as much noise as speech
    assert set(CONDITIONS) == {"clean 2 s", "0.5 s", "0 dB"}


def test_the_nearest_voice_face_is_the_mean_face_of_the_nearest_training_speakers():
    # training clips of speakers 0, 1, 2 (two clips of 0), each voice along one axis
    embedding = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0, 1.0]])
    speaker = torch.tensor([0, 0, 1, 2])
    latents = torch.tensor([1.0, 3.0, 10.0, 100.0])[:, None, None, None].expand(4, 2, 1, 1)
    query = torch.tensor([[1.0, 0.05, 0], [0.1, 0.0, 1.0], [0.7, 0.6, 0.0]])
    assert nearest_speakers(query, embedding, speaker, 1).flatten().tolist() == [0, 2, 0]
    assert nearest_speakers(query, embedding, speaker, 2)[2].tolist() == [0, 1]
    one = nearest_voice_latents(query, embedding, speaker, latents, 1)
    assert one[:, 0, 0, 0].tolist() == [2.0, 100.0, 2.0]  # speaker 0's mean of its two clips
    two = nearest_voice_latents(query, embedding, speaker, latents, 2)
    assert two[2, 0, 0, 0].item() == pytest.approx((2.0 + 10.0) / 2)  # equal weight per speaker, not per clip
    with pytest.raises(ValueError, match="3 training speakers"):
        nearest_speakers(query, embedding, speaker, 10)


def test_the_choice_on_val_takes_the_lowest_loss_and_the_first_of_ties():
    assert choose_on_val({0.0: 2.0, 0.5: 1.0, 1.0: 1.5}) == 0.5
    assert choose_on_val({3.0: 1.0, 1.0: 1.0}) == 3.0
    with pytest.raises(ValueError):
        choose_on_val({})
    residual = torch.randn(5, 4, 2, 2)
    errors = errors_by_prior_weight(residual, residual, (0.0, 0.5, 1.0))
    assert errors[0.0] == pytest.approx(0.0) and errors[1.0] == pytest.approx(residual.square().mean().item())
    assert choose_on_val(errors_by_prior_weight(residual, 2 * residual, (0.0, 0.5, 1.0))) == 0.5


def test_an_undetected_face_is_a_miss_and_a_speaker_without_a_found_real_face_cannot_be_retrieved():
    real = torch.eye(3)
    speaker = torch.tensor([0, 1, 2])
    query = torch.eye(3)
    everyone = torch.ones(3, dtype=torch.bool)
    assert gallery_hits(query, everyone, real, everyone, speaker, 1).tolist() == [1, 1, 1]
    assert gallery_hits(query, torch.tensor([True, False, True]), real, everyone, speaker, 1).tolist() == [1, 0, 1]
    assert gallery_hits(query, everyone, real, torch.tensor([True, True, False]), speaker, 1).tolist() == [1, 1, 0]
    assert gallery_hits(query, everyone, real, torch.zeros(3, dtype=torch.bool), speaker, 1).tolist() == [0, 0, 0]


def test_spearman_with_a_speaker_bootstrap_interval():
    assert spearman(np.array([1, 2, 3]), np.array([10, 20, 40])) == pytest.approx(1.0)
    assert np.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))
    clips = [f"c{i}" for i in range(40)]
    speaker_of = {c: f"s{i // 2}" for i, c in enumerate(clips)}
    x = {c: float(i) for i, c in enumerate(clips)}
    rho, low, high = spearman_interval(x, {c: 2 * v + 1 for c, v in x.items()}, speaker_of, n=200)
    assert (rho, low, high) == pytest.approx((1.0, 1.0, 1.0))
    rho, low, high = spearman_interval(x, {c: -v for c, v in x.items()}, speaker_of, n=200)
    assert rho == pytest.approx(-1.0)
    noise = np.random.default_rng(0).normal(size=40)
    rho, low, high = spearman_interval(x, dict(zip(clips, noise, strict=True)), speaker_of, n=300)
    assert low < rho < high and low < 0 < high
    with pytest.raises(ValueError, match="different clips"):
        spearman_interval(x, {"c0": 1.0}, speaker_of)


class FakeCorpus:
    root = Path("data/fake")
    train_words: dict = {}

    def __init__(self, output_root: Path):
        self.output_root = output_root

    def voice_share(self) -> float:
        return 0.9


def fake_seed(seed: int) -> dict:
    """What one seed's cached evaluation holds, with made-up numbers for 4 clips of 2 speakers."""
    rng = np.random.default_rng(seed)
    clips = ["k0", "k1", "k2", "k3"]
    metrics = [m for m, _ in table.COLUMNS]
    rows = {c: {row: {m: rng.uniform(size=4).round().tolist() if "top" in m or m == "dlib_found"
                      else rng.uniform(size=4).tolist() for m in metrics} for row in ROWS} for c in CONDITIONS}
    tile = torch.zeros(8, 3, 4, 4)
    return {"seed": seed, "choices": {"prior_weight": 0.3, "guidance": 2.0}, "rows": rows,
            "prior_weights": {c: {row: rng.uniform(size=4).tolist() for row in WEIGHTED} for c in CONDITIONS},
            "clips": clips, "speakers": {"k0": "s0", "k1": "s0", "k2": "s1", "k3": "s1"},
            "real_dlib_found": 0.75, "grid_png": grid_png([tile] * len(GRID_COLUMNS))}


def test_the_table_is_made_from_the_cached_evaluations_and_writes_the_grid(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(results, "train", lambda *args, **kwargs: trained.append(args) or False)
    monkeypatch.setattr(results, "ROOT", tmp_path)
    monkeypatch.setattr(table, "ablation_seed", lambda seed, corpus: fake_seed(seed))
    data, text = table.portrait_results(FakeCorpus(tmp_path / "voice09"))
    assert trained == [("conre", table.JUDGE_SEED, tmp_path / "voice09" / "small" / "judge-stages",
                        "data.speaker_part=1/2")]
    assert "Primary metric, declared before the numbers" in text and "What these numbers do not show" in text
    for row in ROWS:
        assert text.count(f"| {row} |") == len(CONDITIONS)
    assert "- clean 2 s: SAW − plug-in a (K samples), latent err ↓:" in text and "Spearman correlation" in text
    assert text.count("(primary metric)") == 3  # the pairs on the primary metric, clean speech only
    assert "rise of the mean a from clean 2 s to 0 dB" in text
    assert data["grid"] == "docs/images/portraits_ablation_voice09_seed0.png"  # relative: no machine's path
    grid = tmp_path / data["grid"]
    assert Image.open(io.BytesIO(grid.read_bytes())).size == (4 * len(GRID_COLUMNS), 4 * 8)
    assert all("grid_png" not in r for r in data["per_seed"])
    assert base64.b64decode(fake_seed(0)["grid_png"])[:4] == b"\x89PNG"


def test_a_dry_run_lists_every_seed_before_it_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "train", lambda *args, **kwargs: False)
    seen = []

    def stop(seed, corpus):
        seen.append(seed)
        raise plan.DryRunStop("portrait-ablation")

    monkeypatch.setattr(table, "ablation_seed", stop)
    with pytest.raises(plan.DryRunStop, match="seeds 3 of 3"):
        table.portrait_results(FakeCorpus(tmp_path))
    assert seen == list(results.SEEDS)


def test_the_cached_evaluation_is_keyed_on_the_evaluation_module_not_the_table():
    from functools import partial

    from reports.results_portrait_ablation import evaluate_ablation
    evaluate = partial(evaluate_ablation, Path("s"), Path("n"), Path("j"), None, 0, None)
    assert plan.module_name(evaluate) == "reports.results_portrait_ablation"
