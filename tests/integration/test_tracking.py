"""W&B offline for real, the local metric log, and `seespeaker runs` on real run folders."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.runs import merge_offline_segments, offline_history

SECRET = "wandb-secret-key-0123456789abcdef0123456789abcdef"


def train(corpus: Path, out: Path, name: str, *extra: str) -> Path:
    words = ["train", "experiment=tiny", "stage=conre", f"data.root={corpus}", f"experiment.output_root={out}",
             f"run.name={name}", "trainer.max_steps=20", "trainer.val_check_interval=10",
             "trainer.checkpoint_every_n_steps=10", "tracking=offline", *extra]
    assert main(words) == 0
    return out / "tiny" / f"conre-{name}"


@pytest.fixture(scope="module")
def two_runs(synthetic_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracking")
    os.environ["WANDB_API_KEY"] = SECRET
    try:
        a = train(synthetic_corpus, out, "a", "stage.lr=1.0e-3")
        b = train(synthetic_corpus, out, "b", "stage.lr=2.0e-3")
    finally:
        os.environ.pop("WANDB_API_KEY", None)
    return a, b


def test_offline_run_holds_config_and_metric_history(two_runs):
    run = two_runs[0]
    (segment,) = (run / "wandb").glob("offline-run-*")
    rows = offline_history(segment)
    steps = [r["trainer/global_step"] for r in rows if "train/loss" in r]
    assert steps and max(steps) >= 15
    local = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"] for r in local if "train/loss" in r} == set(steps)


def test_compare_shows_exactly_the_differing_value_and_plots(two_runs, tmp_path, capsys):
    png = tmp_path / "compare.png"
    assert main(["runs", "compare", *map(str, two_runs), "--metrics", "train/loss", "--plot", str(png)]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[:3] == ["run", "steps", "stage.lr"] and "train/loss" in header[3]
    assert png.is_file() and png.stat().st_size > 5000


def test_bad_run_folders_get_messages_and_the_rest_is_printed(two_runs, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n{not json\n')
    assert main(["runs", "compare", str(two_runs[0]), str(broken), "--metrics", "train/loss,nonexistent/metric"]) == 0
    captured = capsys.readouterr()
    assert "no config.yaml" in captured.err and "1 corrupt line" in captured.err
    assert "unknown metric 'nonexistent/metric'" in captured.err and "train/loss" in captured.err
    assert str(two_runs[0]) in captured.out and str(broken) in captured.out


def test_no_secret_is_written_anywhere(two_runs):
    for run in two_runs:
        for path in run.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert SECRET.encode() not in path.read_bytes(), path


def test_resumed_training_keeps_the_run_id_and_merges_one_continuous_history(two_runs, synthetic_corpus):
    run = two_runs[0]
    run_id = (run / "wandb_id").read_text().strip()
    train(synthetic_corpus, run.parent.parent, "a", "stage.lr=1.0e-3", "trainer.max_steps=30")
    segments = sorted((run / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(s.name.endswith(run_id) for s in segments)
    merged = merge_offline_segments(run)
    assert merged.name.endswith(run_id)
    steps = [r["trainer/global_step"] for r in offline_history(merged) if "train/loss" in r]
    assert steps == sorted(set(steps)), "duplicate or out-of-order steps after the resume point"
    assert min(steps) < 10 and max(steps) >= 25
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    assert max(gaps) <= 5, f"gap in the merged history: {steps}"
