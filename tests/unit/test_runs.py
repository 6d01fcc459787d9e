"""`seespeaker runs list` and `runs compare` on run folders written by hand (no training)."""
from __future__ import annotations

import json
from pathlib import Path

from trainer.cli import main


def run_folder(root: Path, name: str, logged_steps: range, summary: dict | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("stage:\n  name: conre\n  monitor: val/loss\n")
    rows = [{"step": s, "time": 0.0, "train/loss": 1.0 / (s + 1)} for s in logged_steps]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def steps_column(out: str, header: str = "steps") -> list[str]:
    lines = out.splitlines()
    column = lines[0].split().index(header)
    return [line.split()[column] for line in lines[2:]]


def test_list_shows_the_number_of_steps_not_the_last_step_index(tmp_path, capsys):
    run_folder(tmp_path, "a-finished", range(9, 100, 10), summary={"global_step": 100})
    run_folder(tmp_path, "b-running", range(9, 60, 10))  # no summary.json yet: 60 steps logged so far
    assert main(["runs", "list", str(tmp_path)]) == 0
    assert steps_column(capsys.readouterr().out) == ["100", "60"]


def test_compare_shows_the_number_of_steps(tmp_path, capsys):
    a = run_folder(tmp_path, "a", range(9, 100, 10))
    b = run_folder(tmp_path, "b", range(9, 50, 10))
    assert main(["runs", "compare", str(a), str(b), "--metrics", "train/loss"]) == 0
    assert steps_column(capsys.readouterr().out) == ["100", "50"]


def test_a_runs_active_time_leaves_out_the_wait_between_a_preemption_and_its_resume(tmp_path):
    from datetime import datetime

    from trainer.runs import active_seconds

    run = tmp_path / "run"
    run.mkdir()
    starts = ["2026-01-02T03:00:00+0000", "2026-01-02T09:00:00+0000"]  # preempted, resumed six hours later
    (run / "provenance.jsonl").write_text("".join(json.dumps({"time": t}) + "\n" for t in starts))
    first, second = (datetime.strptime(t, "%Y-%m-%dT%H:%M:%S%z").timestamp() for t in starts)
    logged = [first + 60, first + 600, second + 30, second + 900.5]
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "time": t}) + "\n" for i, t in enumerate(logged)))
    assert active_seconds(run) == 600 + 900.5
    (run / "metrics.jsonl").unlink()
    assert active_seconds(run) is None
