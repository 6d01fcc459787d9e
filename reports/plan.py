"""What ``make results`` reuses, redoes and why: training keys of stage files, keys of cached evaluations, the plan
of a chain in the stage graph, and the ledger of what one table used (printed next to it).

A stage file is reused only while the training key a run would record now (``trainer.keys``) equals the one it
records; an evaluation only while the hash of its code and of its input files hold. With ``--dry-run`` nothing
is trained or evaluated: each step says what it would do and why.
"""
from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DryRunStop(Exception):
    """A dry run (or a ``--train-only`` run) reached an evaluation that would have to run: the rest of the table
    needs its numbers."""


@dataclass
class Ledger:
    """What the table being made used: stage files (path -> key and training commit), evaluations (cache -> key)
    and the time each recorded (``runs``: training run folder -> seconds; ``evaluation_seconds``: cache -> seconds;
    ``all_runs``, ``all_evaluations``: the same over every table of the run); in a dry run, the stage files that
    would be retrained (``planned``) and those that would only be copied in from a folder whose file is reused
    (``copied``). Unless ``allow_dirty``, a stage file trained from uncommitted code is not reused."""

    dry_run: bool = False
    allow_dirty: bool = False
    train_only: bool = False
    stages: dict[str, dict] = field(default_factory=dict)
    evaluations: dict[str, dict] = field(default_factory=dict)
    planned: set[str] = field(default_factory=set)
    copied: set[str] = field(default_factory=set)
    runs: dict[str, float | None] = field(default_factory=dict)
    evaluation_seconds: dict[str, float | None] = field(default_factory=dict)
    all_runs: dict[str, float | None] = field(default_factory=dict)
    all_evaluations: dict[str, float | None] = field(default_factory=dict)

    def start_table(self) -> None:
        for record in (self.stages, self.evaluations, self.runs, self.evaluation_seconds):
            record.clear()

    def used_stage(self, path: Path, earlier_runs: tuple[Path, ...] = ()) -> None:
        """``path`` goes into the table: its key, commit, and the training time of its run folder (the one its
        checkpoint came from) and of ``earlier_runs`` (a codebook's earlier phases)."""
        from lightning_modules.stagefile import StageFileError
        from trainer.keys import stage_file_provenance
        from trainer.runs import active_seconds
        try:
            provenance = stage_file_provenance(path)
        except StageFileError:
            provenance = {}
        self.stages[str(path)] = {"key": provenance.get("training_key") or {},
                                  "commit": provenance.get("git_commit", "")}
        checkpoint = provenance.get("source_checkpoint")
        source = (Path(checkpoint).parent.parent,) if checkpoint else ()  # <run>/checkpoints/<file or folder>
        for run in map(str, (*earlier_runs, *source)):
            if run not in self.all_runs:  # a run shared by several tables is read once
                self.all_runs[run] = active_seconds(run)
            self.runs[run] = self.all_runs[run]

    def used_evaluation(self, cache: Path, seconds: float | None) -> None:
        self.evaluation_seconds[str(cache)] = self.all_evaluations[str(cache)] = seconds

    def compute(self, everything: bool = False) -> str:
        """The recorded time of this table's (``everything``: the whole run's) trainings and evaluations, each run
        folder and evaluation counted once."""
        runs, evaluations = ((self.all_runs, self.all_evaluations) if everything else
                             (self.runs, self.evaluation_seconds))
        return f"training {recorded_time(runs, 'run')}, evaluation {recorded_time(evaluations, 'evaluation')}"

    def summary(self) -> str:
        """One line for under a table: the commits its stage files were trained at, its keys' hashes and the time
        its trainings and evaluations recorded."""
        from collections import Counter

        from trainer.keys import digest
        commits = Counter(short_commit(record["commit"]) for record in self.stages.values())
        trained = ", ".join(f"`{c}` ({n} file{'s' if n > 1 else ''})" for c, n in sorted(commits.items())) or "none"
        stage_keys = digest({path: record["key"] for path, record in sorted(self.stages.items())})
        eval_keys = digest(dict(sorted(self.evaluations.items())))
        return (f"Stage files trained at {trained}. Keys: stage files `{stage_keys}`, evaluations `{eval_keys}`. "
                f"Recorded time: {self.compute()}.")


def recorded_time(seconds: dict[str, float | None], what: str) -> str:
    """"2.4 h (12 runs)" or "14 min (3 runs)", with how many recorded no time (a run folder set aside, a cache from
    before caches kept their time)."""
    known = sum(s for s in seconds.values() if s is not None)
    missing = sum(s is None for s in seconds.values())
    amount = f"{known / 3600:.1f} h" if known >= 3600 else f"{known / 60:.0f} min"
    counted = f"{len(seconds)} {what}{'s' if len(seconds) != 1 else ''}"
    return f"{amount} ({counted}{f', {missing} without a record' if missing else ''})"


LEDGER = Ledger()


def short_commit(commit: str) -> str:
    """``0123456789ab``, ``0123456789ab-dirty`` or ``unknown``."""
    return (commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")) if commit else "unknown"


def run_words(stage: str, seed: int, stages: Path, words: tuple[str, ...], name: str, corpus: Any) -> list[str]:
    """The ``seespeaker train`` words of one small stage run (after the subcommand)."""
    return ["experiment=small", f"stage={stage}", f"seed={seed}", f"run.name={name or f'seed{seed}'}",
            f"experiment.output_root={corpus.output_root}", f"run.stages_dir={stages}", f"data.root={corpus.root}",
            *corpus.train_words.get(stage, ()), *words]


def expected_key(words: list[str], earlier_phase: dict | None = None) -> dict:
    """The training key a run with these words would record now."""
    from trainer.config import compose, to_container
    from trainer.keys import training_key
    cfg = compose(words)
    return training_key(cfg, to_container(cfg), earlier_phase=earlier_phase)


def phase_chain_key(phase_runs: list[list[str]]) -> dict:
    """The key the last of phases trained in turn into one file would record: each phase's key holds the key of the
    phase file it starts from."""
    expected = None
    for words in phase_runs:
        expected = expected_key(words, earlier_phase=expected)
    return expected


def retrain_reasons(path: Path, expected: dict) -> list[str]:
    """Why the stage file at ``path`` cannot be reused for a run whose key is ``expected`` ([]: reuse it): its key
    differs, or (unless ``LEDGER.allow_dirty``) it was trained from uncommitted code, which no table may name."""
    from lightning_modules.stagefile import StageFileError
    from trainer.keys import key_changes, stage_file_provenance
    if not path.is_file():
        return ["no stage file"]
    try:
        provenance = stage_file_provenance(path)
    except StageFileError as exc:
        return [f"unreadable stage file ({exc})"]
    reasons = key_changes(expected, provenance.get("training_key") or {})
    return reasons + dirty_reason(provenance.get("git_commit", ""))


def dirty_reason(commit: str) -> list[str]:
    """[why] a file or run trained at ``commit`` is not reused by a clean run, or []."""
    if commit.endswith("-dirty") and not LEDGER.allow_dirty:
        return [f"trained from uncommitted code (`{short_commit(commit)}`); the tables name clean training commits"]
    return []


def run_folder(words: list[str]) -> Path:
    """The run folder of a ``seespeaker train`` run with these words."""
    from trainer.config import compose
    return Path(compose(words).run.dir)


def run_starts(run_dir: Path) -> list[dict]:
    """The provenance of each start of a run folder, oldest first (``provenance.jsonl``; ``provenance.json`` alone
    for a folder without the history)."""
    try:
        lines = (run_dir / "provenance.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        pass
    try:
        return [json.loads((run_dir / "provenance.json").read_text())]
    except (OSError, ValueError):
        return []


def set_aside_stale_run(words: list[str], expected: dict) -> Path | None:
    """Before a retraining: a run folder left by a run of another key (``resume=auto`` would continue it, and
    the export would then carry the new key on the old run's weights) is renamed ``<run>.stale-<n>``, never
    deleted; a folder of the same key (an interrupted run) stays, to be resumed, unless one of its starts was from
    uncommitted code (:func:`dirty_reason`). Returns the new name, if any."""
    run_dir = run_folder(words)
    if not run_dir.is_dir():
        return None
    starts = run_starts(run_dir)
    recorded = starts[-1] if starts else {}
    if recorded.get("training_key") == expected and not any(dirty_reason(s.get("git_commit", "")) for s in starts):
        return None
    index = 1
    while run_dir.with_name(f"{run_dir.name}.stale-{index}").exists():
        index += 1
    aside = run_dir.with_name(f"{run_dir.name}.stale-{index}")
    run_dir.rename(aside)
    why = "started from uncommitted code" if recorded.get("training_key") == expected else "of another training key"
    print(f"  {run_dir}: from a run {why}; moved to {aside} and trained afresh", flush=True)
    return aside


def upstream_reasons(stage: str, stages: Path, words: list[str]) -> list[str]:
    """In a dry run: the requirements of ``stage`` that the plan retrains before it."""
    from lightning_modules.registry import node_file, requires
    from trainer.config import compose
    cfg = compose(words).stage
    return [f"{node} retrains" for node in requires(stage, cfg) if str(stages / node_file(node)) in LEDGER.planned]


def plan_chain(stages: list[str], reasons_of: Callable[[str], list[str]],
               config_of: Callable[[str], object] | None = None) -> dict[str, list[str]]:
    """stage -> why it retrains ([]: reused), in training order: a stage retrains for its own reasons or because
    something it needs in the stage graph retrains."""
    from lightning_modules.registry import STAGES, requires, training_order
    plan: dict[str, list[str]] = {}
    for node in training_order(stages, config_of):
        if node not in STAGES:
            continue
        upstream = [f"{needed} retrains" for needed in requires(node, config_of(node) if config_of else None)
                    if plan.get(needed)]
        plan[node] = reasons_of(node) + upstream
    return plan


def mirror_stage_files(source: Path, target: Path, stages: tuple[str, ...]) -> Path:
    """Copy these stage files from ``source`` into ``target`` where the copy differs; returns ``target``. In a dry
    run nothing is copied: a copy counts as planned when its source would retrain (or is missing), and as copied when
    only the copy would change."""
    from trainer.keys import file_digest

    for name in (f"{stage}.safetensors" for stage in stages):
        copy, original = target / name, source / name
        stale = not copy.is_file() or not original.is_file() or file_digest(copy) != file_digest(original)
        if LEDGER.dry_run:
            if str(original) in LEDGER.planned or not original.is_file():
                LEDGER.planned.add(str(copy))
            elif stale:
                LEDGER.copied.add(str(copy))
            continue
        if stale:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(original, copy)
    return target


def check_requirements(stage: str, stages: Path, words: list[str]) -> None:
    """Stop with the missing nodes of the stage graph (in training order) before a stage that would need them."""
    from lightning_modules.registry import node_file, requires, training_order
    from trainer.config import compose

    cfg = compose(["experiment=small", f"stage={stage}", *(w for w in words if not w.startswith("data.root="))]).stage
    missing = [node for node in requires(stage, cfg) if not (stages / node_file(node)).is_file()
               and str(stages / node_file(node)) not in LEDGER.planned | LEDGER.copied]
    if missing and LEDGER.train_only:  # they wait on an evaluation (a setting chosen on val), and so does this stage
        print(f"~ {stages / node_file(stage)}: waits (--train-only; it needs {', '.join(missing)}, not trained yet)",
              flush=True)
        raise DryRunStop(f"{stage} training")
    if missing:
        order = [node for node in training_order(missing) if not (stages / node_file(node)).is_file()]
        raise SystemExit(f"{stage} needs {', '.join(missing)} in {stages}; make them first, in order: "
                         f"{' -> '.join(order)}")


def every_seed(one_seed: Callable[[int], Any], seeds: tuple[int, ...]) -> list:
    """``one_seed(seed)`` for each seed in turn. A dry run (or a ``--train-only`` run) goes on to the next seeds after
    one stops at an evaluation it would run, to list (or train) everything, and stops the table after the last."""
    results, waiting = [], []
    for seed in seeds:
        try:
            results.append(one_seed(seed))
        except DryRunStop as stop:
            waiting.append(str(stop))
    if waiting:
        raise DryRunStop(f"{waiting[0]} (seeds {len(seeds) - len(results)} of {len(seeds)})")
    return results


def evaluation_key(evaluate: Callable[[], dict], inputs: list[Path]) -> dict:
    """The key of an evaluation: the hash of the module ``evaluate`` is defined in (and what it imports) and the
    SHA-256 of each input file."""
    from evaluation.fid import file_sha256
    from trainer.keys import evaluation_code_hash
    return {"code": evaluation_code_hash((module_name(evaluate),), stop=("reports.results", "reports.plan")),
            "inputs": {str(path): file_sha256(path) for path in inputs if path.is_file()}}


def module_name(function: Callable) -> str:
    """The importable name of the module ``function`` is defined in (``python -m`` runs it as ``__main__``); of a
    ``functools.partial``, its function's: a table passes its evaluation as a partial of the evaluation module's
    function, so that the key covers that module's code, not the table's wording."""
    module = getattr(function, "func", function).__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        return spec.name if spec is not None else module
    return module


def evaluation_change(found: dict, expected: dict) -> str:
    """Why a cached evaluation is redone, in words."""
    if not found:
        return "the cache records no key"
    changed = [part for part in ("code", "inputs") if found.get(part) != expected[part]]
    return "changed: " + ", ".join(f"{part} ({found.get(part)} -> {expected[part]})" if part == "code" else part
                                   for part in changed)


def last_duration(cache: Path) -> str:
    """How long the same evaluation last took, of this seed's cache or another seed's (the caches record their
    wall time), so that a split chain can size its windows; empty when no cache records one."""
    for path in [cache, *sorted(cache.parent.parent.glob(f"*/{cache.name}"))]:
        seconds = json.loads(path.read_text()).get("seconds") if path.is_file() else None
        if seconds is not None:
            which = "" if path == cache else f" in {path.parent.name}"
            return f"; it took {seconds / 60:.0f} min last time{which}"
    return ""


def cached_result(cache: Path, key: dict, name: str, inputs: list[Path], progress=None) -> dict | None:
    """The cached result when its key holds (None: it has to be computed); says which and why, and where a resumable
    evaluation's ``progress`` (:class:`reports.progress.ChunkProgress`) would resume it."""
    LEDGER.evaluations[str(cache)] = key
    saved = json.loads(cache.read_text()) if cache.is_file() else {}
    planned = [str(p) for p in inputs if str(p) in LEDGER.planned]
    copied = [str(p) for p in inputs if str(p) in LEDGER.copied]
    if saved.get("key") == key and not planned and not copied:
        LEDGER.used_evaluation(cache, saved.get("seconds"))
        print(f"= {cache}: the {name} evaluation is reused (same code and inputs)", flush=True)
        return saved["result"]
    why = (f"inputs retrain first: {', '.join(planned)}" if planned else
           f"inputs are copied in first: {', '.join(copied)}" if copied else
           evaluation_change(saved.get("key") or {}, key) if saved else "not evaluated yet")
    why += last_duration(cache) + ("" if progress is None else progress.describe())
    if LEDGER.train_only:
        print(f"~ {cache}: the {name} evaluation waits (--train-only; {why})", flush=True)
        raise DryRunStop(name)
    print(f"~ {cache}: the {name} evaluation {'would run' if LEDGER.dry_run else 'runs'} ({why})", flush=True)
    if LEDGER.dry_run:
        raise DryRunStop(name)
    return None
