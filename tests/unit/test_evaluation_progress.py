"""A resumable evaluation stopped after some chunks resumes at the next one, under the same key only, and gives
the result an unstopped one gives; its progress file goes once the result is cached."""
from __future__ import annotations

import pytest
import torch

from reports import results
from reports.progress import ChunkProgress


class Stopped(Exception):
    """The job was killed (preempted) here."""


class StopsAfter(ChunkProgress):
    """A progress file whose job is killed right after it saves chunk ``stop``."""

    def __init__(self, path, key: dict, stop: int):
        super().__init__(path, key)
        self.stop = stop

    def save(self, chunks: int, data: dict, tensors: dict) -> None:
        super().save(chunks, data, tensors)
        if chunks == self.stop:
            raise Stopped


def chunked_sum(chunks: int, stop_after: int | None = None, calls: list | None = None, progress=None) -> dict:
    """A chunked evaluation: chunk i adds i to a total and a row of i's to a tensor; stops after ``stop_after``."""
    total, rows, done = 0, torch.zeros(0, 2), 0
    if progress is not None and (saved := progress.resume()) is not None:
        done, data, tensors = saved
        total, rows = data["total"], tensors["rows"]
    for chunk in range(done, chunks):
        if calls is not None:
            calls.append(chunk)
        total, rows = total + chunk, torch.cat([rows, torch.full((1, 2), float(chunk))])
        if progress is not None:
            progress.save(chunk + 1, {"total": total}, {"rows": rows})
        if stop_after is not None and chunk + 1 == stop_after:
            raise Stopped
    return {"total": total, "rows": rows.tolist()}


def test_progress_is_used_again_under_the_same_key_only(tmp_path):
    path = tmp_path / "eval-x.progress.pt"
    ChunkProgress(path, {"code": "a"}).save(3, {"total": 3, "nan": float("nan")}, {"rows": torch.ones(3, 2)})
    chunks, data, tensors = ChunkProgress(path, {"code": "a"}).resume()
    assert chunks == 3 and data["total"] == 3 and data["nan"] != data["nan"]
    assert torch.equal(tensors["rows"], torch.ones(3, 2))
    assert ChunkProgress(path, {"code": "b"}).resume() is None  # the code changed: start over
    ChunkProgress(path, {"code": "a"}).clear()
    assert not path.exists() and ChunkProgress(path, {"code": "a"}).resume() is None


def test_a_stopped_evaluation_resumes_at_its_next_chunk_and_gives_the_unstopped_result(tmp_path):
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    calls: list[int] = []

    def evaluate(progress=None, stop_after=None):
        return chunked_sum(5, stop_after, calls, progress)

    with pytest.raises(Stopped):
        results.cached_evaluation("sum", 0, [], lambda progress: evaluate(progress, stop_after=2), corpus,
                                  resumable=True)
    progress_file = corpus.stages(0) / "eval-sum.progress.pt"
    assert progress_file.is_file() and calls == [0, 1]
    resumed = results.cached_evaluation("sum", 0, [], evaluate, corpus, resumable=True)
    assert calls == [0, 1, 2, 3, 4]  # chunks 0 and 1 were not done again
    assert resumed == chunked_sum(5) == {"total": 10, "rows": [[float(i)] * 2 for i in range(5)]}
    assert not progress_file.exists() and (corpus.stages(0) / "eval-sum.json").is_file()


def test_progress_saved_under_other_code_is_not_resumed(tmp_path, capsys):
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    progress_file = corpus.stages(0) / "eval-sum.progress.pt"
    progress_file.parent.mkdir(parents=True)
    ChunkProgress(progress_file, {"code": "older", "inputs": {}}).save(4, {"total": 100}, {"rows": torch.zeros(4, 2)})
    calls: list[int] = []
    result = results.cached_evaluation("sum", 0, [], lambda progress: chunked_sum(5, None, calls, progress), corpus,
                                       resumable=True)
    assert calls == [0, 1, 2, 3, 4] and result["total"] == 10
    assert "starts over" in capsys.readouterr().out


def test_the_plan_says_where_a_stopped_evaluation_resumes(tmp_path, capsys, monkeypatch):
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    with pytest.raises(Stopped):
        results.cached_evaluation("sum", 0, [], lambda progress: chunked_sum(5, 3, None, progress), corpus,
                                  resumable=True)
    monkeypatch.setattr(results.plan.LEDGER, "dry_run", True)
    with pytest.raises(results.plan.DryRunStop):
        results.cached_evaluation("sum", 0, [], lambda progress: chunked_sum(5, None, None, progress), corpus,
                                  resumable=True)
    assert "it resumes after chunk 3 of eval-sum.progress.pt" in capsys.readouterr().out
