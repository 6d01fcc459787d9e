"""``make results``: train the chain at the small scale over 3 seeds and write the README's result tables.

Each table is written between ``<!-- results:<name> -->`` and ``<!-- /results:<name> -->`` in README.md, with
the machine and the commit, whatever the numbers are. Raw numbers go to ``results/<name>.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from common.files import atomic_write_bytes, atomic_write_text
from reports import plan
from reports.choices import CHOICES, choices_note
from reports.progress import ChunkProgress
from trainer.provenance import changed_files, git_commit, machine

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path("data/synthetic_small")
OUTPUT_ROOT = Path("outputs/results")
SEEDS = (0, 1, 2)
VQ_STAGES = OUTPUT_ROOT / "small" / "vq-stages"  # the codebook's VQ phase, shared (:func:`shared_vq_words`)


def run(*words: str) -> None:
    """Run one ``seespeaker`` command (in a dry run: only say it)."""
    cmd = [sys.executable, "-m", "trainer.cli", *words]
    print(("would run: " if plan.LEDGER.dry_run else "$ ") + "seespeaker " + " ".join(words), flush=True)
    if not plan.LEDGER.dry_run:
        subprocess.run(cmd, check=True)


# The small corpus: 400 training speakers (speech-to-face needs many speakers to generalise rather than
# memorise), 50 val and 50 test speakers with 3 clips each.
CORPUS_OPTIONS = {"speakers": 500, "clips_per_speaker": 3, "seed": 1, "val_speakers_fraction": 0.1,
                  "test_speakers_fraction": 0.1, "version": 2}
PREPARE_FLAGS = {"speakers": "--speakers", "clips_per_speaker": "--clips-per-speaker", "seed": "--seed",
                 "val_speakers_fraction": "--val-fraction", "test_speakers_fraction": "--test-fraction",
                 "voice_share": "--voice-share", "version": "--version"}


@dataclass(frozen=True)
class Corpus:
    """A synthetic corpus ``make results`` writes, and the folder its stage files and runs go to."""

    root: Path
    options: dict
    output_root: Path
    train_words: dict = field(default_factory=dict)
    """extra command-line overrides of a stage's training on this corpus ({stage: (word, ...)})"""

    def stages(self, seed: int) -> Path:
        return self.output_root / "small" / f"stages-seed{seed}"

    def voice_share(self) -> float:
        """The voice share the corpus was written with (what its ideal-reader ceilings must assume)."""
        from datamodules.shards import ShardIndex
        return float(ShardIndex.load(self.root).extra["synthetic"]["voice_share"])


SMALL = Corpus(CORPUS, CORPUS_OPTIONS, OUTPUT_ROOT)
# The same corpus with the voice explaining 90% of each voice-linked face attribute (56% in SMALL): on SMALL even
# the ideal reader's portrait is at chance for dlib's embedding. Its autoencoder trains as the small config's (3000
# steps) and its portrait diffusion 1200 (600 in the small config), for the sharper latents.
VOICE09 = Corpus(Path("data/synthetic_small_voice09"), {**CORPUS_OPTIONS, "voice_share": 0.9},
                 OUTPUT_ROOT / "voice09", {"portrait_diffusion": ("trainer.max_steps=1200",)})


def corpus_config(root: Path) -> dict:
    """The options an existing synthetic corpus was written with ({} when there is none)."""
    from datamodules.shards import INDEX_NAME, ShardIndex
    if not (root / INDEX_NAME).is_file():
        return {}
    return ShardIndex.load(root).extra.get("synthetic", {}).get("config", {})


def ensure_corpus(corpus: Corpus = SMALL) -> None:
    """Write a results corpus, or check that the one there (and the stage files trained on it) is the right one."""
    written = corpus_config(corpus.root)
    if not written:
        run("prepare", "synthetic", "--out", str(corpus.root),
            *(word for key, value in corpus.options.items() for word in (PREPARE_FLAGS[key], str(value))))
        if plan.LEDGER.dry_run:
            return
        written = corpus_config(corpus.root)
    differs = {k: (written.get(k), v) for k, v in corpus.options.items() if written.get(k) != v}
    outputs = corpus.output_root / "small"
    if differs:
        raise SystemExit(f"{corpus.root} was written with other options than make results uses ({differs}, as "
                         f"(found, wanted)): move {corpus.root} and {outputs} aside, then run make results again")
    marker = outputs / "corpus.json"
    if marker.is_file() and json.loads(marker.read_text()) != written:
        raise SystemExit(f"the stage files under {outputs} were trained on another corpus than {corpus.root} "
                         f"(see {marker}): move {outputs} aside, then run make results again")
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps(written, indent=2, sort_keys=True))


RAW_DIGITS = 6  # significant digits of the raw numbers: beyond every table's precision


def raw_json(value, indent: str = "") -> str:
    """``value`` as JSON for results/: floats to RAW_DIGITS significant digits, and every list or dict of plain
    numbers and strings (per-clip readings, intervals) on one line, so a regeneration adds kilobytes, not megabytes."""
    if isinstance(value, float):
        return json.dumps(float(f"{value:.{RAW_DIGITS}g}"))
    if not isinstance(value, dict | list | tuple):
        return json.dumps(value)
    is_dict = isinstance(value, dict)
    children = list(value.values()) if is_dict else list(value)
    parts = [raw_json(child, indent + "  ") for child in children]
    if is_dict:
        parts = [f"{json.dumps(str(key))}: {part}" for key, part in zip(value, parts, strict=True)]
    opening, closing = "{}" if is_dict else "[]"
    if not any(isinstance(child, dict | list | tuple) for child in children):
        return opening + ", ".join(parts) + closing
    return opening + "\n" + ",\n".join(indent + "  " + part for part in parts) + "\n" + indent + closing


def mean_spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def cached_evaluation(name: str, seed: int, inputs: list[Path], evaluate: Callable[..., dict],
                      corpus: Corpus = SMALL, resumable: bool = False) -> dict:
    """One seed's evaluation, reused from ``<stages>/eval-<name>.json`` only while its key holds (the hash of the
    code that computes it and of its input files): an interrupted ``make results`` resumes, and seeds can be
    evaluated apart. A ``resumable`` evaluation takes ``progress`` (:class:`reports.progress.ChunkProgress`, the file
    ``eval-<name>.progress.pt`` under the same key) and resumes inside itself at its next chunk."""
    cache = corpus.stages(seed) / f"eval-{name}.json"
    key = plan.evaluation_key(evaluate, inputs)
    progress = ChunkProgress(cache.with_name(f"eval-{name}.progress.pt"), key) if resumable else None
    result = plan.cached_result(cache, key, name, inputs, progress)
    if result is None:
        started = time.time()
        result = evaluate(progress=progress) if resumable else evaluate()
        seconds = time.time() - started if progress is None else progress.seconds()
        record = {"key": key, "result": result, "seconds": round(seconds, 1)}
        atomic_write_text(cache, json.dumps(record, indent=2))
        plan.LEDGER.used_evaluation(cache, record["seconds"])
        if progress is not None:
            progress.clear()
    return result


def train(stage: str, seed: int, stages: Path, *words: str, name: str = "", force: bool = False,
          corpus: Corpus = SMALL) -> bool:
    """Train and export one small stage into ``stages`` unless its exported file's training key matches the key the
    run would have now (code, config, corpus, inputs) or ``force``; say why it trains. True when it trains."""
    path = stages / f"{stage}.safetensors"
    full = plan.run_words(stage, seed, stages, words, name, corpus)
    reasons = ["asked to"] if force else plan.retrain_reasons(path, plan.expected_key(full))
    if plan.LEDGER.dry_run:
        reasons += plan.upstream_reasons(stage, stages, full)
    if not reasons:
        print(f"= {path}: reused (its training key matches)", flush=True)
        plan.LEDGER.used_stage(path)
        return False
    print(f"~ {path}: {'would train' if plan.LEDGER.dry_run else 'trains'} ({'; '.join(reasons)})", flush=True)
    plan.check_requirements(stage, stages, [*corpus.train_words.get(stage, ()), *words])
    if plan.LEDGER.dry_run:
        plan.LEDGER.planned.add(str(path))
        return True
    plan.set_aside_stale_run(full, plan.expected_key(full))
    run("train", *full)
    plan.LEDGER.used_stage(path)
    return True


def shared_vq_words(phase_words: dict[str, tuple[str, ...]]) -> list[str]:
    """The run of the codebook's VQ phase that every seed and both renderer variants start from: seed 0 on the small
    corpus, trained once (as CodeFormer trains its codebook once and then its transformer and decoder on top); the
    seeds and the variants differ in the transformer and render phases."""
    return plan.run_words("codebook", 0, VQ_STAGES,
                          ("stage.phase=vqgan", *phase_words.get("vqgan", ())), "vq", SMALL)


def train_codebook(seed: int, stages: Path, phase_words: dict[str, tuple[str, ...]], corpus: Corpus = SMALL) -> bool:
    """The codebook into ``stages``: the shared VQ phase (:func:`shared_vq_words`, trained when its key does not
    hold), copied in, then the transformer and render phases in turn; unless the file's key chain holds (each phase's
    key records the key of the phase file it started from, so the render file's key covers all three). True when
    they train."""
    from lightning_modules.codebook_parts import PHASES

    path = stages / "codebook.safetensors"
    vq = shared_vq_words(phase_words)
    runs = [vq, *(plan.run_words("codebook", seed, stages, (f"stage.phase={phase}", *phase_words.get(phase, ())),
                                 f"seed{seed}-{phase}", corpus) for phase in PHASES[1:])]
    reasons = plan.retrain_reasons(path, plan.phase_chain_key(runs))
    earlier = tuple(plan.run_folder(words) for words in runs[:-1])  # the render phase's is the file's own
    if not reasons:
        print(f"= {path}: reused (the key chain of its three phases matches)", flush=True)
        plan.LEDGER.used_stage(path, earlier)
        return False
    print(f"~ {path}: {'would train' if plan.LEDGER.dry_run else 'trains'} phase by phase ({'; '.join(reasons)})",
          flush=True)
    if plan.LEDGER.dry_run:
        plan.LEDGER.planned.add(str(path))
        return True
    expected = plan.expected_key(vq)
    if plan.retrain_reasons(VQ_STAGES / "codebook.safetensors", expected):
        plan.set_aside_stale_run(vq, expected)
        run("train", *vq)
    plan.mirror_stage_files(VQ_STAGES, stages, ("codebook",))
    for words in runs[1:]:
        expected = plan.expected_key(words, earlier_phase=expected)
        plan.set_aside_stale_run(words, expected)
        run("train", *words)
    plan.LEDGER.used_stage(path, earlier)
    return True


def shared_autoencoder(seed: int, corpus: Corpus = SMALL) -> Path:
    """Seed 0's autoencoder and face prior, shared by every seed (the seeds vary the stages under test); the prior
    is recomputed whenever the autoencoder retrains, and each seed's copies follow seed 0's files."""
    first, stages = corpus.stages(0), corpus.stages(seed)
    prior = first / "face_prior.safetensors"
    if train("autoencoder", 0, first, corpus=corpus) or not prior.is_file():
        run("prior", "--data", str(corpus.root), "--stages", str(first), "--out", str(prior))
    return plan.mirror_stage_files(first, stages, ("autoencoder", "face_prior"))


def picture(path: Path, evaluation: str, alt: str) -> str:
    """The Markdown of a picture that seed 0's ``evaluation`` writes beside its numbers. Stops when the file is not
    there: the evaluation's result came from the cache, which does not hold the picture."""
    if not path.is_file():
        cache = SMALL.stages(0) / f"eval-{evaluation}.json"
        raise SystemExit(f"{path}: the picture of the {evaluation} table is missing; seed 0's {evaluation} evaluation "
                         f"writes it and its numbers were reused from {cache}. Restore the picture (git checkout -- "
                         f"{path}) or delete {cache} to evaluate seed 0 again.")
    return f"![{alt}]({path})"


def from_module(module: str, name: str, *args) -> Callable[[], tuple[dict, str]]:
    """A results section defined in another module of this package, imported only when it runs."""
    def section() -> tuple[dict, str]:
        return getattr(importlib.import_module(f"reports.{module}"), name)(*args)
    return section


# Each section with the corpus it trains on.
RESULTS: dict[str, tuple[Corpus, Callable[[], tuple[dict, str]]]] = {
    "motion_encoder": (SMALL, from_module("results_motion", "motion_encoder_results")),
    "conre": (SMALL, from_module("results_conre", "conre_results")),
    # the Stage-1 ablation (reports/results_portrait_table.py); its primary metric is read on portrait_voice09
    "portrait": (SMALL, from_module("results_portrait_table", "portrait_results", SMALL)),
    "portrait_voice09": (VOICE09, from_module("results_portrait_table", "portrait_results", VOICE09)),
    "sync": (SMALL, from_module("results_sync", "sync_results")),
    "codebook": (SMALL, from_module("results_codebook", "codebook_results")),
    "video": (SMALL, from_module("results_video", "video_results")),
    "autoencoder": (SMALL, from_module("results_autoencoder", "autoencoder_results")),
    "e2e": (SMALL, from_module("results_e2e", "e2e_results")),
}


COMPUTE = ("The time `make results` takes, from what every table's trainings and evaluations recorded (each run "
           "folder and evaluation counted once; a run's wait between a preemption and its resume not counted): "
           "{total}. The chain ran over several allocations, so this is the sum of the recorded times, not the wall "
           "time of one uninterrupted command.")


def write_table(name: str, table: str, target: Path, commit: str, summary: str | None = None) -> None:
    """Put ``table`` between its markers in ``target`` (the README, or the scratch file of a dirty tree), stamped
    with the machine, the commit it was evaluated at and ``summary`` (by default the ledger's: the commits its stage
    files were trained at, its keys and its recorded time)."""
    text = target.read_text() if target.is_file() else ""
    short = commit[:12] + (" with uncommitted changes" if commit.endswith("-dirty") else "")
    summary = plan.LEDGER.summary() if summary is None else summary
    stamp = f"Machine: {machine()}. Evaluated at commit `{short}`, {time.strftime('%Y-%m-%d')}. {summary}".rstrip()
    block = f"<!-- results:{name} -->\n{table}\n\n{stamp}\n<!-- /results:{name} -->"
    pattern = re.compile(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block + "\n"
    atomic_write_text(target, text)


def changed_code(repo: Path | None = None) -> list[str]:
    """The tracked files changed since the last commit, apart from what ``make results`` writes itself (the
    DOCUMENTS, which a training run ignores too): an interrupted run that already wrote a table or a picture resumes
    at the same commit."""
    return changed_files(repo or ROOT)


def table_commit(changed: list[str]) -> str:
    """The commit the tables are computed at: ``git_commit()``, marked dirty only for ``changed`` code
    (:func:`changed_code`)."""
    commit = git_commit().removesuffix("-dirty")
    return f"{commit}-dirty" if commit and changed else commit


def targets(allow_dirty: bool, changed: list[str]) -> tuple[Path, Path]:
    """(tables file, raw numbers folder): the README and results/ when no code is ``changed``; scratch ones
    otherwise."""
    if not changed:
        return ROOT / "README.md", ROOT / "results"
    if not allow_dirty:
        raise SystemExit(f"the working tree has uncommitted changes ({', '.join(changed[:5])}"
                         f"{', ...' if len(changed) > 5 else ''}): the README's tables name the commit they were "
                         "made at, so commit first (or pass --allow-dirty to write them to results/scratch/ only)")
    return ROOT / "results" / "scratch" / "README-results.md", ROOT / "results" / "scratch"


@contextlib.contextmanager
def pictures_kept(folder: Path = Path("docs/images")) -> Iterator[None]:
    """The pictures under ``folder`` (where the tables draw them, from the working directory) as they were before:
    a dry run builds each table whose evaluations are all cached, to say so, and building one redraws its pictures;
    the dry run leaves the tree as it found it."""
    before = {path: path.read_bytes() for path in folder.rglob("*") if path.is_file()}
    try:
        yield
    finally:
        for path in [p for p in folder.rglob("*") if p.is_file() and p not in before]:
            path.unlink()
        for path, data in before.items():
            if not path.is_file() or path.read_bytes() != data:
                atomic_write_bytes(path, data)


def train_every_table(names: list[str]) -> None:
    """The first pass of a run: the stage files of every table are trained before any table is evaluated, so that
    no table, number or picture is written into the tree before a training (each stage file records a clean commit).
    A training that needs an evaluation's choice (a setting chosen on val) waits for the second pass."""
    plan.LEDGER.train_only = True
    try:
        for name in names:
            plan.LEDGER.start_table()
            try:
                RESULTS[name][1]()
            except plan.DryRunStop:
                pass
    finally:
        plan.LEDGER.train_only = False
    print(f"-- the stage files of {' '.join(names)} are trained; the evaluations follow\n", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RESULTS), help=f"which results ({', '.join(RESULTS)})")
    parser.add_argument("--dry-run", action="store_true", help="say what would be trained, evaluated and reused, "
                        "and why, without doing it")
    parser.add_argument("--allow-dirty", action="store_true", help="run with uncommitted changes; the tables go to "
                        "results/scratch/ instead of the README")
    parser.add_argument("--train-only", action="store_true", help="train every stage file the tables need and "
                        "evaluate nothing (a table whose evaluations are all cached is still written); the "
                        "trainings resume where they stopped, so a long chain can be split over allocations")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in RESULTS]
    if unknown:
        parser.error(f"unknown results {unknown}: choose from {', '.join(RESULTS)}")
    if args.dry_run and args.train_only:
        parser.error("--dry-run and --train-only exclude each other: --dry-run alone lists what would train")
    plan.LEDGER.dry_run, plan.LEDGER.train_only = args.dry_run, args.train_only
    plan.LEDGER.allow_dirty = args.allow_dirty
    changed = changed_code()  # checked once, before anything runs
    commit = table_commit(changed)  # the commit the tables are computed at
    readme, raw = targets(args.allow_dirty or args.dry_run, changed)
    for corpus in {RESULTS[name][0].root: RESULTS[name][0] for name in args.names}.values():
        ensure_corpus(corpus)
    if not (args.dry_run or args.train_only):
        train_every_table(args.names)
    for name in args.names:
        plan.LEDGER.start_table()
        try:
            with pictures_kept() if args.dry_run else contextlib.nullcontext():
                data, table = RESULTS[name][1]()
        except plan.DryRunStop as stop:
            done = "its stage files are trained; " if args.train_only else ""
            print(f"-- {name}: {done}the rest of this table needs the {stop} evaluation above\n", flush=True)
            continue
        if args.dry_run:
            print(f"-- {name}: every stage file and evaluation would be reused\n", flush=True)
            continue
        data.update({"machine": machine(), "commit": commit, "date": time.strftime("%Y-%m-%d"),
                     "choices": CHOICES.get(name, []),
                     "stage_files": plan.LEDGER.stages, "evaluations": plan.LEDGER.evaluations})
        atomic_write_text(raw / f"{name}.json", raw_json(data) + "\n")
        table += choices_note(name)
        write_table(name, table, readme, commit)
        print(table)
    if not args.dry_run:
        total = plan.LEDGER.compute(everything=True)
        print(f"-- recorded time of {' '.join(args.names)}: {total}", flush=True)
        if set(args.names) == set(RESULTS):
            write_table("compute", COMPUTE.format(total=total), readme, commit, summary="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
