"""make results: a seed's evaluation is reused while its stage files are unchanged, and redone when one changes."""
from __future__ import annotations

import pytest

import reports.results as results


def test_evaluation_is_reused_until_an_input_file_changes(tmp_path):
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    stages = corpus.stages(1)
    stages.mkdir(parents=True)
    stage_file = stages / "motion_diffusion.safetensors"
    stage_file.write_bytes(b"weights v1")
    calls = []

    def evaluate():
        calls.append(1)
        return {"lse_c": float(len(calls))}

    first = results.cached_evaluation("sync", 1, [stage_file], evaluate, corpus)
    again = results.cached_evaluation("sync", 1, [stage_file], evaluate, corpus)
    assert first == again == {"lse_c": 1.0} and len(calls) == 1
    stage_file.write_bytes(b"weights v2")  # retrained: the cached rows no longer describe these files
    assert results.cached_evaluation("sync", 1, [stage_file], evaluate, corpus) == {"lse_c": 2.0}
    (stages / "codebook.safetensors").write_bytes(b"a new stage joins the inputs")
    both = [stage_file, stages / "codebook.safetensors"]
    assert results.cached_evaluation("sync", 1, both, evaluate, corpus) == {"lse_c": 3.0}
    assert results.cached_evaluation("sync", 1, both, evaluate, corpus) == {"lse_c": 3.0} and len(calls) == 3


def test_a_redone_evaluation_says_how_long_the_last_one_took(tmp_path, capsys):
    import json

    from reports import plan
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    for seed in (0, 1):
        corpus.stages(seed).mkdir(parents=True)
    results.cached_evaluation("sync", 0, [], lambda: {"lse_c": 1.0}, corpus)
    record = json.loads((corpus.stages(0) / "eval-sync.json").read_text())
    assert record["result"] == {"lse_c": 1.0} and record["seconds"] >= 0
    record["seconds"] = 4680.0  # as a long evaluation would record
    (corpus.stages(0) / "eval-sync.json").write_text(json.dumps(record))
    capsys.readouterr()
    plan.LEDGER.dry_run = True
    try:
        with pytest.raises(plan.DryRunStop):
            results.cached_evaluation("sync", 1, [], lambda: {"lse_c": 2.0}, corpus)
    finally:
        plan.LEDGER.dry_run = False
    assert "not evaluated yet; it took 78 min last time in stages-seed0" in capsys.readouterr().out
