"""make results' planner: a change to one stage's training code retrains that stage and everything downstream of it
in the stage graph, and nothing else; a change to evaluation code re-evaluates without retraining."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from lightning_modules.registry import STAGES
from reports.plan import plan_chain
from trainer.keys import ROOT, code_hash, evaluation_code_hash

PACKAGES = ("common", "datamodules", "lightning_modules", "generation", "evaluation", "trainer", "slurm", "reports")


@pytest.fixture
def copy_of_the_code(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def change_one_line(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def plan_after_change(root) -> dict[str, list[str]]:
    def reasons(stage: str) -> list[str]:
        return [] if code_hash(stage, root) == code_hash(stage) else ["training code changed"]
    return plan_chain(list(STAGES), reasons)


def test_an_unchanged_copy_reuses_everything(copy_of_the_code):
    assert not any(plan_after_change(copy_of_the_code).values())


def test_a_stage_code_change_retrains_it_and_what_is_downstream_only(copy_of_the_code):
    change_one_line(copy_of_the_code / "lightning_modules" / "portrait_diffusion.py",
                    'self.loss_weights = {"diffusion": 1.0}', 'self.loss_weights = {"diffusion": 2.0}')
    plan = plan_after_change(copy_of_the_code)
    assert {stage for stage, why in plan.items() if why} == {"portrait_diffusion", "saw"}
    assert plan["saw"] == ["portrait_diffusion retrains"]


def test_a_shared_module_change_retrains_every_stage_that_runs_it(copy_of_the_code):
    change_one_line(copy_of_the_code / "lightning_modules" / "nets" / "syncnet.py", "WINDOW_FRAMES = 5",
                    "WINDOW_FRAMES = 5  # frames per window")
    retrained = {stage for stage, why in plan_after_change(copy_of_the_code).items() if why}
    assert retrained == {"syncnet", "lip_enhancer"}


def test_an_evaluation_change_re_evaluates_without_retraining(copy_of_the_code):
    modules = ("reports.results_sync_eval",)
    before = evaluation_code_hash(modules, copy_of_the_code, stop=("reports.results",))
    change_one_line(copy_of_the_code / "evaluation" / "lse.py", "from __future__ import annotations",
                    "from __future__ import annotations  # LSE")
    assert evaluation_code_hash(modules, copy_of_the_code, stop=("reports.results",)) != before
    assert not any(plan_after_change(copy_of_the_code).values())


def test_a_dry_run_says_what_it_would_do_and_why_and_does_nothing(tmp_path, monkeypatch, capsys):
    import reports.results as results
    from reports import plan

    monkeypatch.setattr(plan, "LEDGER", plan.Ledger(dry_run=True))
    monkeypatch.setattr(results.subprocess, "run", lambda *a, **k: pytest.fail("a dry run ran a command"))
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    stages = results.shared_autoencoder(1, corpus)
    assert results.train("conre", 1, stages, corpus=corpus)
    assert results.train("portrait_diffusion", 1, stages, corpus=corpus)
    with pytest.raises(plan.DryRunStop):
        results.cached_evaluation("portrait", 1, [stages / "portrait_diffusion.safetensors"], dict, corpus)
    out = capsys.readouterr().out
    assert "autoencoder.safetensors: would train (no stage file)" in out and "would run: seespeaker prior" in out
    assert "conre retrains; autoencoder retrains; face_prior retrains" in out
    assert "evaluation would run (inputs retrain first" in out
    assert not (tmp_path / "outputs").exists()


def test_a_copy_follows_its_original_and_a_dry_run_counts_it_without_copying(tmp_path, monkeypatch):
    from reports import plan

    source, target = tmp_path / "seed0", tmp_path / "seed1"
    source.mkdir()
    for stage in ("conre", "autoencoder", "face_prior"):
        (source / f"{stage}.safetensors").write_bytes(stage.encode())
    monkeypatch.setattr(plan, "LEDGER", plan.Ledger(dry_run=True, planned={str(source / "conre.safetensors")}))
    plan.mirror_stage_files(source, target, ("conre", "autoencoder", "face_prior"))
    assert not target.exists()
    assert plan.LEDGER.planned == {str(source / "conre.safetensors"), str(target / "conre.safetensors")}
    assert plan.LEDGER.copied == {str(target / "autoencoder.safetensors"), str(target / "face_prior.safetensors")}
    plan.check_requirements("portrait_diffusion", target, [])  # the copies to come count as there
    with pytest.raises(plan.DryRunStop):
        plan.cached_result(tmp_path / "eval.json", {}, "portrait", [target / "face_prior.safetensors"])

    monkeypatch.setattr(plan, "LEDGER", plan.Ledger())
    plan.mirror_stage_files(source, target, ("autoencoder",))
    (source / "autoencoder.safetensors").write_bytes(b"retrained")
    plan.mirror_stage_files(source, target, ("autoencoder",))
    assert (target / "autoencoder.safetensors").read_bytes() == b"retrained"


def test_a_dry_run_stops_at_a_missing_requirement_that_nothing_brings(tmp_path, monkeypatch):
    from reports import plan

    monkeypatch.setattr(plan, "LEDGER", plan.Ledger(dry_run=True))
    with pytest.raises(SystemExit, match="portrait_diffusion needs conre, autoencoder, face_prior"):
        plan.check_requirements("portrait_diffusion", tmp_path, [])
    monkeypatch.setattr(plan, "LEDGER", plan.Ledger(train_only=True))  # they wait on an evaluation: so does it
    with pytest.raises(plan.DryRunStop, match="portrait_diffusion training"):
        plan.check_requirements("portrait_diffusion", tmp_path, [])


def test_train_only_trains_every_seed_and_evaluates_nothing_but_reuses_what_is_cached(tmp_path, monkeypatch, capsys):
    import json
    from functools import partial

    import reports.results as results
    from reports import plan
    from reports.results_sync_eval import evaluate_seed

    monkeypatch.setattr(plan, "LEDGER", plan.Ledger(train_only=True))
    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    evaluate = partial(evaluate_seed, None, None, None, 0)  # would fail if called
    reached = []

    def one_seed(seed: int) -> dict:
        reached.append(seed)
        return results.cached_evaluation("sync", seed, [], evaluate, corpus)

    with pytest.raises(plan.DryRunStop, match=r"sync \(seeds 3 of 3\)"):
        plan.every_seed(one_seed, (0, 1, 2))
    assert reached == [0, 1, 2]
    assert "the sync evaluation waits (--train-only; not evaluated yet)" in capsys.readouterr().out
    cache = corpus.stages(1) / "eval-sync.json"
    cache.parent.mkdir(parents=True)
    cache.write_text(json.dumps({"key": plan.evaluation_key(evaluate, []), "result": {"lse_c": 7.0}}))
    assert results.cached_evaluation("sync", 1, [], evaluate, corpus) == {"lse_c": 7.0}
    with pytest.raises(SystemExit):
        results.main(["--dry-run", "--train-only", "conre"])
    assert "exclude each other" in capsys.readouterr().err


def test_a_table_links_its_picture_only_when_the_picture_is_there(tmp_path):
    import reports.results as results

    image = tmp_path / "strip.png"
    with pytest.raises(SystemExit, match=r"strip.png: the picture of the codebook-256px table is missing"):
        results.picture(image, "codebook-256px", "a strip")
    image.write_bytes(b"png")
    assert results.picture(image, "codebook-256px", "a strip") == f"![a strip]({image})"


def git(repo, *words):
    subprocess.run(["git", "-C", str(repo), *words], check=True, capture_output=True)


def test_tables_go_to_the_readme_only_when_the_code_is_committed(monkeypatch, tmp_path):
    import reports.results as results
    from trainer.provenance import git_commit

    for path, text in [("README.md", "tables"), ("results/e2e.json", "{}"), ("docs/images/strip.png", "png"),
                       ("reports/table.py", "x = 1")]:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    monkeypatch.setattr(results, "ROOT", tmp_path)
    # what an interrupted run already wrote (a table, its numbers, a picture) is not a code change
    for path in ("README.md", "results/e2e.json", "docs/images/strip.png"):
        (tmp_path / path).write_text("written by a table")
    assert results.changed_code() == []
    assert results.targets(False, results.changed_code()) == (tmp_path / "README.md", tmp_path / "results")
    assert not git_commit(tmp_path).endswith("-dirty")  # a training started now records the same clean commit
    (tmp_path / "reports/table.py").write_text("x = 2")
    assert results.changed_code() == ["reports/table.py"]
    assert git_commit(tmp_path).endswith("-dirty")
    with pytest.raises(SystemExit, match=r"uncommitted changes \(reports/table.py\).*--allow-dirty"):
        results.targets(False, results.changed_code())
    readme, raw = results.targets(True, results.changed_code())
    assert "scratch" in readme.parts and "scratch" in raw.parts


def test_the_stamp_names_the_training_commits_dirty_ones_as_such():
    from reports.plan import Ledger

    ledger = Ledger(stages={"a": {"key": {"code": "1"}, "commit": "0123456789abcdef"},
                            "b": {"key": {"code": "1"}, "commit": "0123456789abcdef"},
                            "c": {"key": {"code": "2"}, "commit": "fedcba9876543210-dirty"}})
    summary = ledger.summary()
    assert "`0123456789ab` (2 files), `fedcba987654-dirty` (1 file)" in summary
    ledger.stages["c"]["key"] = {"code": "3"}
    assert ledger.summary() != summary  # the keys' hash follows every key


def test_an_evaluation_defined_in_the_module_run_as_main_is_keyed_on_its_code(monkeypatch):
    import sys
    import types

    from reports import plan

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="reports.results_conre")
    monkeypatch.setitem(sys.modules, "__main__", main)
    evaluate = types.FunctionType((lambda: {}).__code__, {"__name__": "__main__"})
    assert plan.module_name(evaluate) == "reports.results_conre"
    assert plan.evaluation_key(evaluate, [])["code"] == evaluation_code_hash(("reports.results_conre",),
                                                                             stop=("reports.results", "reports.plan"))


def test_an_evaluation_passed_as_a_partial_is_keyed_on_its_functions_module_not_the_tables():
    from functools import partial

    from reports import plan
    from reports.results_video_eval import evaluate_seed

    assert plan.module_name(partial(evaluate_seed, None, None, None, None, 0)) == "reports.results_video_eval"


def test_a_retraining_sets_aside_a_run_folder_of_another_key_and_resumes_one_of_its_own(tmp_path):
    """Resuming the old run folder would export the old weights under the new key (a stale file restamped)."""
    import json

    from reports.plan import set_aside_stale_run

    words = ["experiment=tiny", "stage=conre", f"experiment.output_root={tmp_path}", "run.name=seed0"]
    run_dir = tmp_path / "tiny" / "conre-seed0"
    run_dir.mkdir(parents=True)
    expected = {"format": 1, "code": "new"}
    (run_dir / "provenance.json").write_text(json.dumps({"training_key": expected}))
    assert set_aside_stale_run(words, expected) is None and run_dir.is_dir()  # an interrupted run: resumed
    (run_dir / "provenance.json").write_text(json.dumps({"training_key": {"format": 1, "code": "old"}}))
    (run_dir / "weights.ckpt").write_text("old")
    aside = set_aside_stale_run(words, expected)
    assert aside == tmp_path / "tiny" / "conre-seed0.stale-1" and not run_dir.exists()
    assert (aside / "weights.ckpt").read_text() == "old"  # nothing is deleted
    run_dir.mkdir()
    assert set_aside_stale_run(words, expected).name == "conre-seed0.stale-2"  # no provenance: not this key's


def test_the_stamp_gives_the_recorded_time_of_the_tables_runs_and_evaluations_each_once(tmp_path):
    from reports.plan import Ledger

    ledger = Ledger()
    ledger.runs = {"run-a": 5400.0, "run-b": None}
    ledger.evaluation_seconds = {"eval-x.json": 1800.0, "eval-y.json": 1800.0}
    assert "Recorded time: training 1.5 h (2 runs, 1 without a record), evaluation 1.0 h (2 evaluations)." in (
        ledger.summary())
    ledger.start_table()
    for cache, seconds in (("eval-x.json", 1800.0), ("eval-x.json", 1800.0)):  # two tables share one evaluation
        ledger.used_evaluation(cache, seconds)
    assert ledger.compute() == "training 0 min (0 runs), evaluation 30 min (1 evaluation)"
    ledger.start_table()
    assert ledger.compute(everything=True) == "training 0 min (0 runs), evaluation 30 min (1 evaluation)"


def test_a_run_of_every_table_writes_their_recorded_time_once_each_under_the_compute_marker(tmp_path, monkeypatch):
    import reports.results as results
    from reports import plan

    def table(name: str, shared: float, own: float):
        def make() -> tuple[dict, str]:
            plan.LEDGER.used_evaluation(tmp_path / "eval-shared.json", shared)  # both tables read one evaluation
            plan.LEDGER.used_evaluation(tmp_path / f"eval-{name}.json", own)
            return {}, f"table {name}"
        return make

    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    monkeypatch.setattr(results, "RESULTS", {"a": (corpus, table("a", 3600.0, 1800.0)),
                                             "b": (corpus, table("b", 3600.0, 5400.0))})
    monkeypatch.setattr(plan, "LEDGER", plan.Ledger())
    monkeypatch.setattr(results, "ensure_corpus", lambda corpus: None)
    monkeypatch.setattr(results, "table_commit", lambda changed: "0123456789abcdef")
    readme = tmp_path / "README.md"
    monkeypatch.setattr(results, "targets", lambda allow_dirty, changed: (readme, tmp_path / "raw"))
    (tmp_path / "raw").mkdir()
    readme.write_text("<!-- results:compute -->\nnot yet\n<!-- /results:compute -->\n")
    assert results.main(["a"]) == 0
    assert "not yet" in readme.read_text()  # one table is not `make results`' time
    assert results.main([]) == 0
    text = readme.read_text()
    block = text[text.index("<!-- results:compute -->"):text.index("<!-- /results:compute -->")]
    assert "training 0 min (0 runs), evaluation 3.0 h (3 evaluations)" in block
    assert "Recorded time: training 0 min (0 runs), evaluation 2.5 h (2 evaluations)." in text  # table b's own stamp


def test_a_run_trains_every_tables_stage_files_before_it_evaluates_or_writes_any_table(tmp_path, monkeypatch):
    import reports.results as results
    from reports import plan

    readme, events = tmp_path / "README.md", []

    def table(name: str):
        def make() -> tuple[dict, str]:
            events.append(f"train {name}" if not (tmp_path / name).exists() else f"reuse {name}")
            (tmp_path / name).touch()  # the stage file
            if plan.LEDGER.train_only:
                raise plan.DryRunStop(name)  # its evaluation waits
            events.append(f"evaluate {name} ({'README written' if readme.exists() else 'README untouched'})")
            return {}, f"table {name}"
        return make

    corpus = results.Corpus(tmp_path / "corpus", {}, tmp_path / "outputs")
    monkeypatch.setattr(results, "RESULTS", {"a": (corpus, table("a")), "b": (corpus, table("b"))})
    monkeypatch.setattr(plan, "LEDGER", plan.Ledger())
    monkeypatch.setattr(results, "ensure_corpus", lambda corpus: None)
    monkeypatch.setattr(results, "table_commit", lambda changed: "0123456789abcdef")
    monkeypatch.setattr(results, "targets", lambda allow_dirty, changed: (readme, tmp_path))
    assert results.main(["a", "b"]) == 0
    assert events == ["train a", "train b", "reuse a", "evaluate a (README untouched)",
                      "reuse b", "evaluate b (README written)"]
    assert "table a" in readme.read_text() and "table b" in readme.read_text() and not plan.LEDGER.train_only


def test_raw_numbers_keep_six_digits_and_put_each_list_of_readings_on_one_line():
    import json
    import math

    from reports.results import raw_json
    data = {"per_clip": {"clip-0": {"psnr": 26.924905777, "ssim": 0.830869257}, "clip-1": {"psnr": float("nan")}},
            "draws": [0.212841086, 0.0028880555, 3], "rows": [{"name": "bicubic", "interval": [1.0, 2.5]}],
            "empty": [], "none": None}
    text = raw_json(data)
    back = json.loads(text)
    assert back["per_clip"]["clip-0"] == {"psnr": 26.9249, "ssim": 0.830869}
    assert math.isnan(back["per_clip"]["clip-1"]["psnr"])
    assert back["draws"] == [0.212841, 0.00288806, 3] and back["rows"] == [{"name": "bicubic", "interval": [1.0, 2.5]}]
    assert back["empty"] == [] and back["none"] is None
    assert '"draws": [0.212841, 0.00288806, 3]' in text.splitlines()[5]
    assert len(text) < len(json.dumps(data, indent=2))


def test_a_stage_file_or_run_started_from_uncommitted_code_is_retrained_by_a_clean_run(monkeypatch, tmp_path):
    """Its key may match, but the table would name a dirty training commit: a clean run retrains it afresh (the run
    folder set aside, not resumed); an ``--allow-dirty`` run, whose tables go to scratch, reuses it."""
    import json

    import torch
    from safetensors.torch import save_file

    from reports import plan

    key = {"format": 1, "code": "same", "config": {"stage": "c"}, "corpus": "v2", "inputs": {}}
    path = tmp_path / "conre.safetensors"
    for commit, said in [("0123456789abcdef", []), ("0123456789abcdef-dirty", ["uncommitted code"])]:
        provenance = {"training_key": key, "git_commit": commit}
        save_file({"w": torch.zeros(1)}, str(path), metadata={"provenance": json.dumps(provenance)})
        monkeypatch.setattr(plan, "LEDGER", plan.Ledger())
        reasons = plan.retrain_reasons(path, key)
        assert len(reasons) == len(said) and all(w in r for w, r in zip(said, reasons, strict=True))
        monkeypatch.setattr(plan, "LEDGER", plan.Ledger(allow_dirty=True))
        assert plan.retrain_reasons(path, key) == []

    monkeypatch.setattr(plan, "LEDGER", plan.Ledger())
    words = ["experiment=tiny", "stage=conre", f"experiment.output_root={tmp_path}", "run.name=seed0"]
    run_dir = tmp_path / "tiny" / "conre-seed0"
    run_dir.mkdir(parents=True)
    starts = [{"training_key": key, "git_commit": "0123456789abcdef-dirty"},  # started dirty, resumed clean
              {"training_key": key, "git_commit": "0123456789abcdef"}]
    (run_dir / "provenance.jsonl").write_text("".join(json.dumps(s) + "\n" for s in starts))
    (run_dir / "provenance.json").write_text(json.dumps(starts[-1]))
    assert plan.set_aside_stale_run(words, key).name == "conre-seed0.stale-1"
    run_dir.mkdir()
    (run_dir / "provenance.jsonl").write_text(json.dumps(starts[-1]) + "\n")
    assert plan.set_aside_stale_run(words, key) is None  # clean from its first start: resumed


def test_a_dry_run_leaves_the_pictures_as_it_found_them(monkeypatch, tmp_path):
    """A dry run builds a table whose evaluations are all cached (to say so), which redraws its pictures."""
    import reports.results as results

    images = tmp_path / "docs" / "images"
    images.mkdir(parents=True)
    (images / "table.png").write_bytes(b"committed picture")

    def table() -> tuple[dict, str]:
        (images / "table.png").write_bytes(b"redrawn")
        (images / "new.png").write_bytes(b"new")
        return {}, "| table |"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(results.RESULTS, "conre", (results.SMALL, table))
    monkeypatch.setattr(results, "ensure_corpus", lambda corpus: None)
    monkeypatch.setattr(results, "changed_code", lambda: [])
    monkeypatch.setattr(results.plan, "LEDGER", results.plan.Ledger())
    assert results.main(["conre", "--dry-run"]) == 0
    assert sorted(p.name for p in images.iterdir()) == ["table.png"]
    assert (images / "table.png").read_bytes() == b"committed picture"
