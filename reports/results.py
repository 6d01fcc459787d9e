"""``make results``: train the chain at the small scale over 3 seeds and write the README's result tables.

Each table is written between ``<!-- results:<name> -->`` and ``<!-- /results:<name> -->`` in README.md, with
the machine and the commit, whatever the numbers are. Raw numbers go to ``results/<name>.json``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common.files import atomic_write_text
from trainer.provenance import git_commit, machine

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path("data/synthetic_small")
OUTPUT_ROOT = Path("outputs/results")
SEEDS = (0, 1, 2)


def run(*words: str) -> None:
    cmd = [sys.executable, "-m", "trainer.cli", *words]
    print("$ seespeaker " + " ".join(words), flush=True)
    subprocess.run(cmd, check=True)


# The small corpus: 400 training speakers (speech-to-face needs many speakers to generalise rather than
# memorise), 50 val and 50 test speakers with 3 clips each.
CORPUS_OPTIONS = {"speakers": 500, "clips_per_speaker": 3, "seed": 1, "val_speakers_fraction": 0.1,
                  "test_speakers_fraction": 0.1}
PREPARE_FLAGS = {"speakers": "--speakers", "clips_per_speaker": "--clips-per-speaker", "seed": "--seed",
                 "val_speakers_fraction": "--val-fraction", "test_speakers_fraction": "--test-fraction",
                 "voice_share": "--voice-share"}


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
# the ideal reader's portrait is at chance for dlib's embedding. Its autoencoder trains 2000 steps (300 in the
# small config: that one blurs the eyes and mouth away, and dlib finds a face in few of its decodings) and its
# portrait diffusion 1200 (600), for the sharper latents.
VOICE09 = Corpus(Path("data/synthetic_small_voice09"), {**CORPUS_OPTIONS, "voice_share": 0.9},
                 OUTPUT_ROOT / "voice09", {"autoencoder": ("trainer.max_steps=2000",),
                                           "portrait_diffusion": ("trainer.max_steps=1200",)})


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


def mean_spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def cached_evaluation(name: str, seed: int, inputs: list[Path], evaluate: Callable[[], dict],
                      corpus: Corpus = SMALL) -> dict:
    """One seed's evaluation, reused from ``<stages>/eval-<name>.json`` only while its key holds: the hash of the
    code that computes it (the module ``evaluate`` is defined in, and what it imports) and the SHA-256 of every
    input file. An interrupted ``make results`` resumes, and seeds can be evaluated apart."""
    from evaluation.fid import file_sha256
    from trainer.keys import evaluation_code_hash

    cache = corpus.stages(seed) / f"eval-{name}.json"
    key = {"code": evaluation_code_hash((evaluate.__module__,), stop=("reports.results",)),
           "inputs": {str(path): file_sha256(path) for path in inputs if path.is_file()}}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            print(f"= {cache}: the {name} evaluation is reused (same code and inputs)", flush=True)
            return saved["result"]
        print(f"~ {cache}: the {name} evaluation is redone ({evaluation_change(saved.get('key') or {}, key)})",
              flush=True)
    result = evaluate()
    atomic_write_text(cache, json.dumps({"key": key, "result": result}, indent=2))
    return result


def evaluation_change(found: dict, expected: dict) -> str:
    if not found:
        return "the cache records no key"
    changed = [part for part in ("code", "inputs") if found.get(part) != expected[part]]
    return "changed: " + ", ".join(f"{part} ({found.get(part)} -> {expected[part]})" if part == "code" else part
                                   for part in changed)


def run_words(stage: str, seed: int, stages: Path, words: tuple[str, ...], name: str, corpus: Corpus) -> list[str]:
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


def retrain_reasons(path: Path, expected: dict) -> list[str]:
    """Why the stage file at ``path`` cannot be reused for a run whose key is ``expected`` ([]: reuse it)."""
    from lightning_modules.stagefile import StageFileError
    from trainer.keys import key_changes, stage_file_key
    if not path.is_file():
        return ["no stage file"]
    try:
        return key_changes(expected, stage_file_key(path))
    except StageFileError as exc:
        return [f"unreadable stage file ({exc})"]


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


def train(stage: str, seed: int, stages: Path, *words: str, name: str = "", force: bool = False,
          corpus: Corpus = SMALL) -> bool:
    """Train and export one small stage into ``stages`` unless its exported file's training key matches the key the
    run would have now (code, config, corpus, inputs) or ``force``; say why it trains. True when it trained."""
    path = stages / f"{stage}.safetensors"
    full = run_words(stage, seed, stages, words, name, corpus)
    reasons = ["asked to"] if force else retrain_reasons(path, expected_key(full))
    if not reasons:
        print(f"= {path}: reused (its training key matches)", flush=True)
        return False
    print(f"~ {path}: trains ({'; '.join(reasons)})", flush=True)
    check_requirements(stage, stages, [*corpus.train_words.get(stage, ()), *words])
    run("train", *full)
    return True


def check_requirements(stage: str, stages: Path, words: list[str]) -> None:
    """Stop with the missing nodes of the stage graph (in training order) before a stage that would need them."""
    from lightning_modules.registry import node_file, requires, training_order
    from trainer.config import compose

    cfg = compose(["experiment=small", f"stage={stage}", *(w for w in words if not w.startswith("data.root="))]).stage
    missing = [node for node in requires(stage, cfg) if not (stages / node_file(node)).is_file()]
    if missing:
        order = [node for node in training_order(missing) if not (stages / node_file(node)).is_file()]
        raise SystemExit(f"{stage} needs {', '.join(missing)} in {stages}; make them first, in order: "
                         f"{' -> '.join(order)}")


def shared_autoencoder(seed: int, corpus: Corpus = SMALL) -> Path:
    """Seed 0's autoencoder and face prior, shared by every seed (the seeds vary the stages under test); the prior
    is recomputed whenever the autoencoder retrains, and each seed's copies follow seed 0's files."""
    from trainer.keys import file_digest

    first, stages = corpus.stages(0), corpus.stages(seed)
    prior = first / "face_prior.safetensors"
    if train("autoencoder", 0, first, corpus=corpus) or not prior.is_file():
        run("prior", "--data", str(corpus.root), "--stages", str(first), "--out", str(prior))
    stages.mkdir(parents=True, exist_ok=True)
    for name in ("autoencoder.safetensors", "face_prior.safetensors"):
        copy = stages / name
        if not copy.is_file() or file_digest(copy) != file_digest(first / name):
            shutil.copy2(first / name, copy)
    return stages


def conre_results() -> tuple[dict, str]:
    """Speech-to-face retrieval of held-out (test) speakers by the small ConRe, 3 seeds, against chance."""
    from datamodules.synthetic import ideal_retrieval
    from evaluation.conre_eval import conre_retrieval
    from trainer.config import compose

    per_seed = []
    for seed in SEEDS:
        stages = SMALL.stages(seed)
        start = time.time()
        trained = train("conre", seed, stages)
        minutes = (time.time() - start) / 60 if trained else None  # None: an existing export was reused
        cfg = compose(["experiment=small", "stage=conre", f"data.root={CORPUS}"])
        test = conre_retrieval(str(stages / "conre.safetensors"), cfg.data, "test")
        train_split = conre_retrieval(str(stages / "conre.safetensors"), cfg.data, "train")
        per_seed.append({"seed": seed, "test": test.__dict__, "train": train_split.__dict__, "train_minutes": minutes})
    top1 = [r["test"]["top1"] for r in per_seed]
    top5 = [r["test"]["top5"] for r in per_seed]
    chance1, chance5 = per_seed[0]["test"]["chance_top1"], per_seed[0]["test"]["chance_top5"]
    speakers = per_seed[0]["test"]["speakers"]
    ideal1, ideal5 = ideal_retrieval(speakers, voice_share=SMALL.voice_share())
    lines = [
        f"ConRe speech-to-face retrieval among {speakers} held-out speakers "
        f"(small scale, seeds {', '.join(map(str, SEEDS))}; mean ± std).",
        "",
        "| | top-1 | top-5 |",
        "|---|---|---|",
        f"| ConRe (small) | {mean_spread(top1)} | {mean_spread(top5)} |",
        f"| chance | {chance1:.3f} | {chance5:.3f} |",
        f"| ratio to chance | {statistics.mean(top1) / chance1:.2f}x | {statistics.mean(top5) / chance5:.2f}x |",
        f"| ideal reader (ceiling) | {ideal1:.3f} | {ideal5:.3f} |",
        "",
        "Ideal reader: knows each voice's two face-related latents exactly and reads the face attributes without "
        "error (`datamodules.synthetic.ideal_retrieval`); no encoder pair can do better on this corpus.",
        "",
        f"Training speakers (fit): top-1 {mean_spread([r['train']['top1'] for r in per_seed])}. "
        + train_time(per_seed),
    ]
    return {"per_seed": per_seed, "ideal_reader": {"top1": ideal1, "top5": ideal5}}, "\n".join(lines)


def train_time(per_seed: list[dict]) -> str:
    minutes = [r["train_minutes"] for r in per_seed if r["train_minutes"] is not None]
    if not minutes:
        return "Stage files of an earlier run were reused (no training time measured)."
    return f"Train time per trained seed: {mean_spread(minutes)} min."


def from_module(module: str, name: str, *args) -> Callable[[], tuple[dict, str]]:
    """A results section defined in another module of this package, imported only when it runs."""
    def section() -> tuple[dict, str]:
        return getattr(importlib.import_module(f"reports.{module}"), name)(*args)
    return section


# Each section with the corpus it trains on.
RESULTS: dict[str, tuple[Corpus, Callable[[], tuple[dict, str]]]] = {
    "conre": (SMALL, conre_results),
    "portrait": (SMALL, from_module("results_portrait", "portrait_results", SMALL)),
    "portrait_voice09": (VOICE09, from_module("results_portrait", "portrait_results", VOICE09)),
    "sync": (SMALL, from_module("results_sync", "sync_results")),
    "codebook": (SMALL, from_module("results_codebook", "codebook_results")),
}


def write_table(name: str, table: str) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    commit = git_commit()
    short = commit[:12] + (" with uncommitted changes" if commit.endswith("-dirty") else "")
    stamp = f"Machine: {machine()}. Commit: `{short}`. Date: {time.strftime('%Y-%m-%d')}."
    block = f"<!-- results:{name} -->\n{table}\n\n{stamp}\n<!-- /results:{name} -->"
    pattern = re.compile(rf"<!-- results:{name} -->.*?<!-- /results:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block + "\n"
    atomic_write_text(readme, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=list(RESULTS), help=f"which results ({', '.join(RESULTS)})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in RESULTS]
    if unknown:
        parser.error(f"unknown results {unknown}: choose from {', '.join(RESULTS)}")
    for corpus in {RESULTS[name][0].root: RESULTS[name][0] for name in args.names}.values():
        ensure_corpus(corpus)
    for name in args.names:
        data, table = RESULTS[name][1]()
        data.update({"machine": machine(), "commit": git_commit(), "date": time.strftime("%Y-%m-%d")})
        atomic_write_text(ROOT / "results" / f"{name}.json", json.dumps(data, indent=2))
        write_table(name, table)
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
