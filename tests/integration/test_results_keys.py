"""make results reuses a stage file only while its training key holds: a real run records the key that the planner
computes for the same words, and a changed config, corpus or input says so."""
from __future__ import annotations

import json

import pytest

from datamodules.synthetic import CORPUS_VERSION
from reports import plan
from trainer.cli import main
from trainer.keys import stage_file_key


@pytest.fixture(scope="module")
def trained(synthetic_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("keys")
    words = ["experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}", f"experiment.output_root={out}",
             "trainer.max_steps=4", "trainer.val_check_interval=4", "trainer.limit_val_batches=1", "tracking=disabled"]
    assert main(["train", *words]) == 0
    return out / "tiny" / "stages" / "conre.safetensors", words


def test_a_trained_stage_records_the_key_the_planner_expects(trained):
    path, words = trained
    key = stage_file_key(path)
    assert set(key) == {"format", "code", "config", "corpus", "inputs"} and key["corpus"]["version"] == CORPUS_VERSION
    assert plan.retrain_reasons(path, plan.expected_key(words)) == []


def test_a_changed_config_or_input_is_a_reason_to_retrain(trained, tmp_path):
    path, words = trained
    reasons = plan.retrain_reasons(path, plan.expected_key([*words, "stage.recon_weight=0.5"]))
    assert reasons == ["config section 'stage' changed"]
    reasons = plan.retrain_reasons(path, plan.expected_key([*words, "trainer.max_steps=5"]))
    assert reasons == ["config section 'trainer' changed"]
    assert plan.retrain_reasons(tmp_path / "missing.safetensors", plan.expected_key(words)) == ["no stage file"]
    expected = plan.expected_key(words)
    expected["inputs"]["autoencoder"] = "0123"
    assert plan.retrain_reasons(path, expected) == ["input autoencoder changed"]


def test_a_changed_corpus_is_a_reason_to_retrain(trained, synthetic_corpus, tmp_path):
    path, words = trained
    copy = tmp_path / "corpus"
    copy.mkdir()
    index = json.loads((synthetic_corpus / "index.json").read_text())
    index["extra"]["synthetic"]["version"] = 2
    (copy / "index.json").write_text(json.dumps(index))
    reasons = plan.retrain_reasons(path, plan.expected_key([*words, f"data.root={copy}"]))
    assert len(reasons) == 1 and reasons[0].startswith("corpus changed") and "'version': 2" in reasons[0]


def test_the_codebook_phases_chain_their_keys(synthetic_corpus, tmp_path):
    from tests.integration.tiny_stages import codebook_train_words

    runs = [codebook_train_words(synthetic_corpus, tmp_path / "out", phase)[1:] for phase in ("vqgan", "transformer",
                                                                                                "render")]
    runs = [[*words, f"run.stages_dir={tmp_path / 'stages'}"] for words in runs]
    for words in runs:
        assert main(["train", *words]) == 0
    path = tmp_path / "stages" / "codebook.safetensors"
    assert stage_file_key(path)["inputs"]["codebook"]["inputs"]["codebook"]["config"]  # render <- transformer <- vqgan
    assert plan.retrain_reasons(path, plan.phase_chain_key(runs)) == []
    changed = [runs[0][:-1] + ["stage.codebook_size=16", runs[0][-1]], *runs[1:]]
    reasons = plan.retrain_reasons(path, plan.phase_chain_key(changed))
    assert reasons == ["codebook phase file: codebook phase file: config section 'stage' changed"]
