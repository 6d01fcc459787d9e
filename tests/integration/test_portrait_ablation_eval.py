"""The Stage-1 ablation's evaluation end to end on untrained tiny stage files and a tiny synthetic corpus: every row,
condition and metric has a value per test clip, the choices come from the grids, and the grid PNG is made."""
from __future__ import annotations

import base64
import io
import shutil

import pytest
import torch
from PIL import Image

import reports.results_portrait_ablation as ablation
from datamodules.config import DataConfig
from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus
from lightning_modules.portrait_diffusion import PortraitDiffusionStage
from lightning_modules.saw import SAWStage
from reports.results import Corpus
from reports.results_portrait_stats import CONDITIONS
from tests.unit.stage1_helpers import export, make_stage1_inputs, tiny_data, tiny_portrait, tiny_saw

RESOLUTION = 64


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    corpus = root / "corpus"
    write_synthetic_corpus(corpus, SyntheticConfig(speakers=14, clips_per_speaker=1, seconds=2.0, resolution=64,
                                                   seed=3, shard_size=8, val_speakers_fraction=0.08,
                                                   test_speakers_fraction=0.15))
    stages, no_prior, judge = root / "stages", root / "noprior", root / "judge"
    data = make_stage1_inputs(stages, resolution=RESOLUTION)["data"]
    export(PortraitDiffusionStage(tiny_portrait(), data, str(stages)), stages / "portrait_diffusion.safetensors")
    export(SAWStage(tiny_saw(), data, str(stages)), stages / "saw.safetensors")
    for folder, names in ((no_prior, ("conre", "autoencoder")), (judge, ("conre",))):
        folder.mkdir()
        for name in names:
            shutil.copy2(stages / f"{name}.safetensors", folder / f"{name}.safetensors")
    export(PortraitDiffusionStage(tiny_portrait(prior="none"), tiny_data(RESOLUTION), str(no_prior)),
           no_prior / "portrait_diffusion.safetensors")
    return {"corpus": Corpus(corpus, {"seed": 3}, root / "outputs"), "stages": stages, "no_prior": no_prior,
            "judge": judge / "conre.safetensors"}


def test_the_ablation_scores_every_row_condition_and_clip(world, monkeypatch):
    monkeypatch.setattr(ablation, "SAMPLE_STEPS", 2)
    monkeypatch.setattr(ablation, "SAMPLES", 2)
    monkeypatch.setattr(ablation, "GUIDANCE_GRID", (1.0, 3.0))
    monkeypatch.setattr(ablation, "GRID_SPEAKERS", 2)
    torch.manual_seed(0)
    corpus = world["corpus"]
    data = DataConfig(root=str(corpus.root), resolution=RESOLUTION, audio_seconds=2.0, batch_size=4, num_workers=0)
    result = ablation.evaluate_ablation(world["stages"], world["no_prior"], world["judge"], data, 0, corpus)
    clips = result["clips"]
    assert len(clips) >= 2 and set(result["speakers"]) == set(clips)
    assert result["choices"]["prior_weight"] in ablation.PRIOR_WEIGHT_GRID
    assert result["choices"]["guidance"] in (1.0, 3.0)
    assert set(result["rows"]) == set(CONDITIONS)
    rows = set(ablation.ROWS)
    for condition, by_row in result["rows"].items():
        assert set(by_row) == rows
        for row, metrics in by_row.items():
            assert set(metrics) == set(ablation.METRICS)
            assert all(len(values) == len(clips) for values in metrics.values()), (condition, row)
        assert all(len(result["prior_weights"][condition][row]) == len(clips) for row in ablation.WEIGHTED)
        # the rows that shrink the same sample by a = 0 differ from the raw sample only by guidance
        if result["choices"]["guidance"] == ablation.GUIDANCE:
            assert by_row["best guidance, a = 0"] == by_row["a = 0 (raw sample)"]
    for row in ("mean face (prior decoded)", "random training face", "ideal reader's portrait (ceiling)"):
        assert result["rows"]["0 dB"][row] == result["rows"]["clean 2 s"][row]  # no speech in these rows
    assert result["rows"]["0 dB"]["SAW"] != result["rows"]["clean 2 s"]["SAW"]
    oracle = result["prior_weights"]["clean 2 s"]["oracle a (SAW's ceiling)"]
    assert all(0.0 <= a <= 1.0 for a in oracle)
    image = Image.open(io.BytesIO(base64.b64decode(result["grid_png"])))
    assert image.size == (RESOLUTION * len(ablation.GRID_COLUMNS), RESOLUTION * 2)
