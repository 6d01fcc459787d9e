"""`seespeaker runs` on run folders written by hand as training writes them: odd files, resumed and finished runs,
the monitored metric's direction, and the mistakes a user can make on the command line."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from trainer.cli import main


def run_folder(root: Path, name: str, rows: list[dict], config: str = "stage:\n  name: conre\n",
               summary: object = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(config)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"time": time.time(), **r}) + "\n" for r in rows))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def column(out: str, header: str) -> list[str]:
    lines = out.splitlines()
    index = lines[0].split().index(header)
    return [line.split()[index] for line in lines[2:]]


def losses(steps: range) -> list[dict]:
    return [{"step": s, "train/loss": 1.0 / (s + 1)} for s in steps]


def test_a_summary_that_is_not_an_object_is_a_warning_and_the_other_runs_are_listed(tmp_path, capsys):
    run_folder(tmp_path, "a", losses(range(9, 20, 10)), summary=[1, 2])
    run_folder(tmp_path, "b", losses(range(9, 30, 10)), summary={"global_step": 30})
    assert main(["runs", "list", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "a: summary.json unreadable (summary.json holds a list" in captured.err
    assert column(captured.out, "steps") == ["20", "30"]


def test_a_resumed_run_counts_the_steps_logged_after_its_earlier_end_and_is_unfinished(tmp_path, capsys):
    run_folder(tmp_path, "resumed", losses(range(9, 30, 10)), summary={"global_step": 20})  # ended at 20, now at 30
    run_folder(tmp_path, "done", losses(range(9, 20, 10)), summary={"global_step": 20})
    run_folder(tmp_path, "running", losses(range(9, 20, 10)))
    assert main(["runs", "list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert column(out, "run") == [str(tmp_path / n) for n in ("done", "resumed", "running")]
    assert column(out, "steps") == ["20", "30", "20"]
    assert column(out, "state") == ["finished", "unfinished", "unfinished"]
    assert all(re.fullmatch(r"\d+s", age) for age in column(out, "updated"))  # logged seconds ago


def test_best_of_the_monitored_metric_follows_the_runs_monitor_mode(tmp_path, capsys):
    config = "stage:\n  name: saw\n  monitor: val/score\n  monitor_mode: max\n"
    rows = [{"step": 9, "val/score": 0.1}, {"step": 19, "val/score": 0.5}, {"step": 29, "val/score": 0.3}]
    run = run_folder(tmp_path, "a", rows, config=config)
    assert main(["runs", "list", str(run)]) == 0
    assert column(capsys.readouterr().out, "best") == ["0.5"]
    assert main(["runs", "compare", str(run), "--metrics", "val/score"]) == 0
    assert "0.3/0.5" in capsys.readouterr().out  # final / best


def test_show_of_a_folder_with_several_runs_names_them_instead_of_picking_one(tmp_path, capsys):
    for name in ("a", "b"):
        run_folder(tmp_path, name, losses(range(9, 20, 10)), summary={"global_step": 20})
    assert main(["runs", "show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 runs" in err and str(tmp_path / "a") in err and str(tmp_path / "b") in err
    assert main(["runs", "show", str(tmp_path / "b")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(rf"run {re.escape(str(tmp_path / 'b'))} \(finished, last logged \d+s ago\)", first)


def test_compare_with_no_known_metric_is_a_user_error(tmp_path, capsys):
    a = run_folder(tmp_path, "a", losses(range(9, 20, 10)))
    assert main(["runs", "compare", str(a), "--metrics", "val/los"]) == 2
    err = capsys.readouterr().err
    assert "unknown metric 'val/los'" in err and "train/loss" in err


def test_a_plot_path_matplotlib_cannot_write_is_refused_before_any_work(tmp_path, capsys):
    a = run_folder(tmp_path, "a", losses(range(9, 20, 10)))
    assert main(["runs", "compare", str(a), "--plot", str(tmp_path / "curves.xyz")]) == 2
    assert "curves.xyz" in (err := capsys.readouterr().err) and "curves.png" in err
    (tmp_path / "plots").mkdir()
    assert main(["runs", "compare", str(a), "--plot", str(tmp_path / "plots")]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert list((tmp_path / "plots").iterdir()) == []


def test_a_run_reached_through_two_paths_is_listed_once(tmp_path, capsys):
    a = run_folder(tmp_path, "a", losses(range(9, 20, 10)))
    assert main(["runs", "list", str(tmp_path), str(a)]) == 0
    assert column(capsys.readouterr().out, "run") == [str(a)]


def test_sync_of_a_folder_that_does_not_exist_names_it(tmp_path, capsys):
    assert main(["runs", "sync", str(tmp_path / "nowhere"), "--dry-run"]) == 2
    assert f"{tmp_path / 'nowhere'} is not a run folder" in capsys.readouterr().err
