"""make results: each results corpus is written with its own options (the voice share included), and a corpus or
stage files that do not match them are refused with what to move aside."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

import reports.results as results

OPTIONS = {"speakers": 6, "clips_per_speaker": 1, "seed": 3, "val_speakers_fraction": 0.2,
           "test_speakers_fraction": 0.2, "voice_share": 0.8}


def test_a_results_corpus_is_written_with_its_options_and_another_is_refused(tmp_path):
    corpus = results.Corpus(tmp_path / "corpus", OPTIONS, tmp_path / "outputs")
    results.ensure_corpus(corpus)
    written = results.corpus_config(corpus.root)
    assert {k: written[k] for k in OPTIONS} == OPTIONS
    assert corpus.voice_share() == 0.8
    marker = tmp_path / "outputs" / "small" / "corpus.json"
    assert json.loads(marker.read_text()) == written

    results.ensure_corpus(corpus)  # the same options again: accepted, nothing rewritten
    assert results.corpus_config(corpus.root) == written

    other_share = replace(corpus, options={**OPTIONS, "voice_share": 0.9})
    with pytest.raises(SystemExit, match=r"voice_share.*\(0\.8, 0\.9\).*move .*corpus"):
        results.ensure_corpus(other_share)

    marker.write_text(json.dumps({**written, "seed": 4}))  # stage files trained on another corpus
    with pytest.raises(SystemExit, match=r"trained on another corpus.*move .*outputs/small aside"):
        results.ensure_corpus(corpus)


def test_the_results_corpora_differ_only_in_the_voice_share():
    assert results.VOICE09.options == {**results.SMALL.options, "voice_share": 0.9}
    assert results.VOICE09.output_root != results.SMALL.output_root
    assert set(results.VOICE09.options) <= set(results.PREPARE_FLAGS)


def test_a_corpus_trains_its_stages_on_itself_with_its_own_overrides(tmp_path, monkeypatch):
    commands = []
    monkeypatch.setattr(results, "run", lambda *words: commands.append(words))
    corpus = results.Corpus(tmp_path / "corpus", OPTIONS, tmp_path / "outputs",
                            {"autoencoder": ("trainer.max_steps=7",)})
    stages = corpus.stages(2)
    assert results.train("autoencoder", 2, stages, "stage.lr=0.1", corpus=corpus)
    assert results.train("conre", 2, stages, corpus=corpus)
    autoencoder, conre = commands
    assert f"data.root={corpus.root}" in autoencoder and f"experiment.output_root={corpus.output_root}" in autoencoder
    assert autoencoder[-2:] == ("trainer.max_steps=7", "stage.lr=0.1")  # the caller's words win
    assert not any(word.startswith("trainer.max_steps") for word in conre)
    stages.mkdir(parents=True)
    (stages / "conre.safetensors").write_bytes(b"not a stage file")  # a file is reused only when its key matches
    assert results.train("conre", 2, stages, corpus=corpus) and len(commands) == 3


def test_every_seed_and_variant_starts_its_codebook_from_one_shared_vq_phase(tmp_path, monkeypatch):
    import torch

    from lightning_modules.stagefile import StageFile, save_stage_file
    from reports import plan

    vq_stages, commands = tmp_path / "vq-stages", []
    monkeypatch.setattr(results, "VQ_STAGES", vq_stages)

    def run(*words):  # the VQ run leaves a stage file that records the key it ran under, as a real run does
        commands.append(words)
        if "stage.phase=vqgan" in words:
            key = plan.expected_key(list(words[1:]))
            save_stage_file(vq_stages / "codebook.safetensors", StageFile(
                stage="codebook", state={"w": torch.zeros(1)}, phase="vqgan", provenance={"training_key": key}))

    monkeypatch.setattr(results, "run", run)
    phase_words = {"vqgan": ("trainer.max_steps=5",), "render": ("trainer.max_steps=7",)}
    temporal = results.Corpus(tmp_path / "corpus", OPTIONS, tmp_path / "temporal",
                              {"codebook": ("stage.temporal=true",)})
    assert results.train_codebook(1, tmp_path / "seed1", phase_words)
    assert results.train_codebook(1, tmp_path / "temporal1", phase_words, temporal)
    phases = [next(w for w in c if w.startswith("stage.phase=")).split("=")[1] for c in commands]
    assert phases == ["vqgan", "transformer", "render", "transformer", "render"]  # the VQ phase trained once
    vq = commands[0]
    assert "seed=0" in vq and f"run.stages_dir={vq_stages}" in vq and "trainer.max_steps=5" in vq
    assert "stage.temporal=true" not in vq and "stage.temporal=true" in commands[3]
    assert "seed=1" in commands[1] and "trainer.max_steps=7" in commands[2]
    shared = (vq_stages / "codebook.safetensors").read_bytes()
    assert all((tmp_path / f / "codebook.safetensors").read_bytes() == shared for f in ("seed1", "temporal1"))
