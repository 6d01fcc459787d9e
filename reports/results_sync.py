"""``make results sync``: LSE-C / LSE-D of what each Stage-2 step does to the lip sync, by an independent expert.

For held-out (test) clips, each animated from the clip's real first frame with the clip's speech (Stage 2
scored on its own, without the portrait's error), the rows are: (i) the frames of ``motion_diffusion``,
(ii) the same after ``lip_enhancer``, (v) the final videos after the ``codebook`` renderer, (iii) the
ground-truth clips, (iv) the lip-enhanced frames paired with another test clip's audio (a speaker's face
with someone else's speech: the floor).

The scorer is a *second* sync expert, trained with another seed on the other half of the training speakers
(``data.speaker_part=1/2``) than the expert the lip enhancer trained against (``0/2``); it never saw the
enhancer's expert's speakers, and the enhancer never saw it. Every row reaches it through
:func:`evaluation.measure.to_measurement_size` at ``MEASURE_SIZE`` (the 64 px rows go up by bicubic), and every
mean comes with its 95% interval over test speakers (:mod:`evaluation.intervals`).
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

from evaluation.intervals import (
    format_interval,
    format_seeds_and_interval,
    paired_speaker_bootstrap,
    seed_mean_by_clip,
    speaker_bootstrap,
)
from evaluation.measure import MEASUREMENT_RESIZE
from reports import plan
from reports.results_sync_eval import MEASURE_SIZE, METRICS, ROWS, evaluate_seed

# row differences worth an interval of their own: (row, minus row, what the difference says)
PAIRS = (("lip_enhancer", "motion_diffusion", "what the lip enhancer adds"),
         ("codebook", "lip_enhancer", "what the codebook renderer changes"),
         ("lip_enhancer", "mismatched", "sync above the floor of another clip's audio"))


def expert_accuracy(run_dir: Path) -> float:
    """The final validation AV-offset accuracy of a syncnet run (its summary.json); NaN when it is missing."""
    try:
        return float(json.loads((run_dir / "summary.json").read_text())["val/av_offset_accuracy"])
    except (OSError, KeyError, ValueError):
        return float("nan")


def sync_seed(seed: int) -> dict:
    """One seed's rows: its Stage-2 chain and codebook trained (or reused), generated, and scored by the scorer."""
    from reports.results import CORPUS, OUTPUT_ROOT, cached_evaluation, shared_autoencoder, train, train_codebook
    from reports.results_codebook import PHASE_WORDS
    from trainer.config import compose

    scorer = OUTPUT_ROOT / "small" / "scorer-stages" / "syncnet.safetensors"
    train("syncnet", 100, scorer.parent, "data.speaker_part=1/2", name="scorer")
    stages = shared_autoencoder(seed)
    train("conre", seed, stages)
    train("syncnet", seed, stages, "data.speaker_part=0/2")
    for stage in ("motion_diffusion", "lip_enhancer"):
        train(stage, seed, stages)
    train_codebook(seed, stages, PHASE_WORDS)  # row (v): every seed has it, or the table would drop it
    data = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"]).data
    inputs = [scorer] + [stages / f"{name}.safetensors" for name in
                         ("conre", "autoencoder", "motion_diffusion", "lip_enhancer", "codebook")]
    result = cached_evaluation(f"sync-{MEASURE_SIZE}px", seed, inputs,
                               partial(evaluate_seed, stages, data, scorer, seed))
    return {"seed": seed, **result}


def clip_values(per_seed: list[dict], row: str, metric: str) -> dict[str, float]:
    """A row's per-clip values of one metric, averaged over the seeds."""
    return seed_mean_by_clip([{clip: v[metric] for clip, v in r["rows"][row]["per_clip"].items()}
                              for r in per_seed])


def cell(per_seed: list[dict], row: str, metric: str) -> str:
    """One row's metric as mean ± std over seeds [95% interval over test speakers]."""
    interval = speaker_bootstrap(clip_values(per_seed, row, metric), per_seed[0]["speakers"])
    return format_seeds_and_interval([r["rows"][row][metric] for r in per_seed], interval)


def paired_lines(per_seed: list[dict], names: list[str]) -> list[str]:
    """One line per PAIRS entry whose rows are in the table: the LSE-C and LSE-D differences with their
    paired intervals over test speakers."""
    lines = []
    for row, other, meaning in PAIRS:
        if row in names and other in names:
            diffs = [f"{label} " + format_interval(*paired_speaker_bootstrap(
                clip_values(per_seed, row, metric), clip_values(per_seed, other, metric), per_seed[0]["speakers"]))
                for metric, label in (("lse_c", "LSE-C"), ("lse_d", "LSE-D"))]
            lines.append(f"- {ROWS[row]} − {ROWS[other]} ({meaning}): " + ", ".join(diffs))
    return lines


def left_out_lines(per_seed: list[dict]) -> list[str]:
    """A line for each row some seed has no videos of (the table shows only rows every seed has), naming the seeds."""
    lines = []
    for name in ROWS:
        missing = [str(r["seed"]) for r in per_seed if name not in r["rows"]]
        if missing:
            lines += ["", f"Row {ROWS[name]} is left out: seed(s) {', '.join(missing)} have no such videos."]
    return lines


def sync_results() -> tuple[dict, str]:
    """Train (or reuse) the small Stage-2 chain and its independent scorer, and tabulate LSE per step."""
    from reports.results import OUTPUT_ROOT, SEEDS

    per_seed = plan.every_seed(sync_seed, SEEDS)
    names = [n for n in ROWS if all(n in r["rows"] for r in per_seed)]
    lines = [f"LSE of Stage 2 on {per_seed[0]['rows']['truth']['clips']} held-out clips (2 s each, animated from "
             f"the clip's first frame with its speech; {len(SEEDS)} seeds, mean ± std over seeds [95% interval "
             f"over test speakers, seed-averaged clips, speakers resampled]), scored by the *scorer*: a "
             f"second compact sync expert trained with seed 100 on the other half of the training speakers "
             f"(`data.speaker_part=1/2`) than the expert the lip enhancer trained against (`0/2`). Every row is "
             f"measured at {MEASURE_SIZE} px ({MEASUREMENT_RESIZE}) before the scorer. LSE-C: higher "
             f"is better; LSE-D: lower is better; in sync: clips whose LSE offset is 0.", "",
             "| videos | LSE-C | LSE-D | in sync |", "|---|---|---|---|"]
    for name in names:
        lines.append(f"| {ROWS[name]} | " + " | ".join(cell(per_seed, name, m) for m in METRICS) + " |")
    lines += left_out_lines(per_seed)
    pairs = paired_lines(per_seed, names)
    if pairs:
        lines += ["", "Differences of rows on the same clips (mean [paired 95% interval over test speakers]):",
                  *pairs]
    accuracy = {name: expert_accuracy(OUTPUT_ROOT / "small" / f"syncnet-{name}")
                 for name in ["scorer", *(f"seed{seed}" for seed in SEEDS)]}
    lines += ["", "AV-offset accuracy of the experts on the validation speakers' clips (12 frames, offsets -4..4, "
              "chance 0.111): " + ", ".join(f"{name} {value:.3f}" for name, value in accuracy.items()) + ".",
              "", "The scorer is the project's compact expert, not the official SyncNet: these numbers compare rows "
              "of this table, not published LSE values. The autoencoder is seed 0's, shared by all seeds."]
    return {"per_seed": per_seed, "expert_val_offset_accuracy": accuracy}, "\n".join(lines)
