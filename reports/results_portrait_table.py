"""``make results portrait`` / ``portrait_voice09``: the Stage-1 ablation table, its stage files and its grid.

Per seed: the Stage-1 chain (conre, portrait_diffusion, saw; the autoencoder and prior shared from seed 0), a second
portrait_diffusion with ``stage.prior=none`` in its own folder (``stages-seed<s>-noprior``, run ``seed<s>-noprior``),
and one judge for every seed: a ConRe trained with seed 100 on ``data.speaker_part=1/2`` into ``judge-stages`` (run
``judge``), used for nothing but scoring. The evaluation (``results_portrait_ablation``) is cached per seed.
"""
from __future__ import annotations

import base64
import statistics
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
from reports.results import Corpus
from reports.results_portrait_ablation import (
    DLIB_SIZE,
    GRID_COLUMNS,
    GRID_SPEAKERS,
    GUIDANCE,
    GUIDANCE_GRID,
    JUDGE_SIZE,
    PRIOR_WEIGHT_GRID,
    ROWS,
    SAMPLE_STEPS,
    SAMPLES,
    evaluate_ablation,
)
from reports.results_portrait_stats import CONDITIONS, spearman_interval

JUDGE_SEED = 100
PRIMARY = ("clean 2 s", "conre_top5")  # pre-declared: top-5 by the ConRe judge, clean speech, voice share 0.9
COLUMNS = (("latent_error", "latent err ↓"), ("conre_cosine", "judge cos"), ("conre_top1", "judge top-1"),
           ("conre_top5", "judge top-5"), ("dlib_found", "dlib found"), ("dlib_top1", "dlib top-1"),
           ("dlib_top5", "dlib top-5"))
# (row, minus row, metric) differences with a paired interval, per condition
PAIRS = (("SAW", "best constant a", "latent_error"), ("SAW", "plug-in a (K samples)", "latent_error"),
         ("SAW", "best constant a", PRIMARY[1]), ("SAW", "nearest voice, k = 1", PRIMARY[1]),
         ("SAW", "nearest voice, k = 10", PRIMARY[1]))
LABELS = dict(COLUMNS)
STAGE1 = ("conre", "autoencoder", "face_prior", "portrait_diffusion", "saw")


def judge_file(corpus: Corpus) -> Path:
    return corpus.output_root / "small" / "judge-stages" / "conre.safetensors"


def no_prior_folder(corpus: Corpus, seed: int) -> Path:
    return corpus.output_root / "small" / f"stages-seed{seed}-noprior"


def ablation_seed(seed: int, corpus: Corpus) -> dict:
    """One seed's stage files trained (or reused) and its ablation evaluated (or reused)."""
    from reports.results import cached_evaluation, shared_autoencoder, train
    from trainer.config import compose

    judge = judge_file(corpus)
    stages = shared_autoencoder(seed, corpus)
    for stage in ("conre", "portrait_diffusion", "saw"):
        train(stage, seed, stages, corpus=corpus)
    no_prior = no_prior_folder(corpus, seed)
    plan.mirror_stage_files(stages, no_prior, ("conre", "autoencoder"))
    train("portrait_diffusion", seed, no_prior, "stage.prior=none", name=f"seed{seed}-noprior", corpus=corpus)
    data = compose(["experiment=small", "stage=portrait_diffusion", f"data.root={corpus.root}"]).data
    inputs = [judge, no_prior / "portrait_diffusion.safetensors",
              *(stages / f"{name}.safetensors" for name in STAGE1)]
    result = cached_evaluation("portrait-ablation", seed, inputs,
                               partial(evaluate_ablation, stages, no_prior, judge, data, seed, corpus), corpus)
    return {"seed": seed, **result}


def clip_values(per_seed: list[dict], condition: str, row: str, metric: str) -> dict[str, float]:
    return seed_mean_by_clip([dict(zip(r["clips"], r["rows"][condition][row][metric], strict=True))
                              for r in per_seed])


def seed_means(per_seed: list[dict], condition: str, row: str, metric: str) -> list[float]:
    return [statistics.fmean(r["rows"][condition][row][metric]) for r in per_seed]


def cell(per_seed: list[dict], condition: str, row: str, metric: str) -> str:
    interval = speaker_bootstrap(clip_values(per_seed, condition, row, metric), per_seed[0]["speakers"])
    return format_seeds_and_interval(seed_means(per_seed, condition, row, metric), interval)


def pair_line(per_seed: list[dict], condition: str, row: str, other: str, metric: str) -> str:
    """One paired difference of two rows on the same clips, marked when it is the primary metric."""
    primary = " (primary metric)" if (condition, metric) == PRIMARY else ""
    difference = paired_speaker_bootstrap(clip_values(per_seed, condition, row, metric),
                                          clip_values(per_seed, condition, other, metric), per_seed[0]["speakers"])
    return f"- {condition}: {row} − {other}, {LABELS[metric]}{primary}: {format_interval(*difference)}"


def weight_values(per_seed: list[dict], condition: str, row: str, tag: str = "") -> dict[str, float]:
    """A row's a per clip (channel mean), averaged over seeds; keys tagged with ``tag`` to pool conditions."""
    values = seed_mean_by_clip([dict(zip(r["clips"], r["prior_weights"][condition][row], strict=True))
                                for r in per_seed])
    return {f"{clip}{tag}": value for clip, value in values.items()}


def weight_lines(per_seed: list[dict]) -> list[str]:
    """SAW's a per condition, its rise under degraded speech, and its rank correlation with the oracle a."""
    speakers = per_seed[0]["speakers"]
    lines = ["", "SAW's prior weight a (channel mean per clip; mean ± std over seeds of the mean over clips, and the "
             "std across clips):"]
    for condition in CONDITIONS:
        means = [statistics.fmean(r["prior_weights"][condition]["SAW"]) for r in per_seed]
        spreads = [statistics.pstdev(r["prior_weights"][condition]["SAW"]) for r in per_seed]
        lines.append(f"- {condition}: mean {format_seeds_and_interval(means, None)}, std across clips "
                     f"{format_seeds_and_interval(spreads, None)}")
    clean = weight_values(per_seed, "clean 2 s", "SAW")
    for condition in list(CONDITIONS)[1:]:
        rise = paired_speaker_bootstrap(weight_values(per_seed, condition, "SAW"), clean, speakers)
        lines.append(f"- rise of the mean a from clean 2 s to {condition}: {format_interval(*rise)} "
                     f"(paired over test speakers)")
    saw, oracle, owner = {}, {}, {}
    for condition in CONDITIONS:
        saw |= weight_values(per_seed, condition, "SAW", f"|{condition}")
        oracle |= weight_values(per_seed, condition, "oracle a (SAW's ceiling)", f"|{condition}")
        owner |= {f"{clip}|{condition}": speaker for clip, speaker in speakers.items()}
    lines.append("- Spearman correlation of SAW's a with the oracle a over the held-out clips of all three "
                 f"conditions: {format_interval(*spearman_interval(saw, oracle, owner))} (speakers resampled); "
                 "per condition: " + ", ".join(f"{condition} " + format_interval(*spearman_interval(
                     weight_values(per_seed, condition, "SAW"),
                     weight_values(per_seed, condition, "oracle a (SAW's ceiling)"), speakers))
                     for condition in CONDITIONS))
    return lines


def write_grid(per_seed: list[dict], corpus: Corpus) -> Path:
    """Seed 0's grid of GRID_COLUMNS for 8 held-out speakers (clean speech) into docs/images/."""
    from reports.results import ROOT
    name = corpus.output_root.name if corpus.output_root.name != "results" else "small"
    path = ROOT / "docs" / "images" / f"portraits_ablation_{name}_seed{per_seed[0]['seed']}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(per_seed[0]["grid_png"]))
    return path


def choice_line(per_seed: list[dict]) -> str:
    a = ", ".join(f"{r['choices']['prior_weight']:g}" for r in per_seed)
    g = ", ".join(f"{r['choices']['guidance']:g}" for r in per_seed)
    return (f"Chosen on val (by the mean latent error to the true face; never by a judge): the constant a over "
            f"{', '.join(f'{v:g}' for v in PRIOR_WEIGHT_GRID)} at guidance {GUIDANCE:g}: {a} (seeds in order); "
            f"the guidance at a = 0 over {', '.join(f'{v:g}' for v in GUIDANCE_GRID)}: {g}.")


def portrait_results(corpus: Corpus) -> tuple[dict, str]:
    """Train (or reuse) every seed's Stage-1 files, the no-prior denoisers and the judge; tabulate the ablation."""
    from reports.results import ROOT, SEEDS, train

    judge = judge_file(corpus)  # one judge for every seed, trained first
    train("conre", JUDGE_SEED, judge.parent, "data.speaker_part=1/2", name="judge", corpus=corpus)
    per_seed = plan.every_seed(lambda seed: ablation_seed(seed, corpus), SEEDS)
    grid = write_grid(per_seed, corpus)
    share = corpus.voice_share()
    speakers = len(set(per_seed[0]["speakers"].values()))
    real_found = format_seeds_and_interval([r["real_dlib_found"] for r in per_seed], None)
    lines = [f"Stage-1 ablation on the test speakers of `{corpus.root}` (voice share {share:g}; {len(SEEDS)} seeds, "
             f"mean ± std over seeds [95% interval over test speakers, seed-averaged clips, speakers resampled]; one "
             f"portrait per test clip and condition, {SAMPLE_STEPS} sampler steps, guidance {GUIDANCE:g} unless the "
             f"row says otherwise). **Primary metric, declared before the numbers: top-5 retrieval of the speaker "
             f"among the test speakers by the ConRe judge, clean 2 s speech, on the voice-share-0.9 corpus "
             f"(`portrait_voice09`); everything else is secondary.** Judges, independent of the generator: a ConRe "
             f"trained with seed {JUDGE_SEED} on the other half of the training speakers (`data.speaker_part=1/2`), "
             f"never used to train or choose a portrait stage, at {JUDGE_SIZE} px; dlib's "
             f"`dlib_face_recognition_resnet_model_v1` at {DLIB_SIZE} px with the face and its landmarks detected in "
             f"the image (an undetected face is a miss; *found*: the detection rate). The galleries are the test "
             f"speakers' mean real-face embeddings; dlib found {real_found} of the real test faces itself, the rest "
             f"are aligned from the corpus's landmarks. Every row reaches both "
             f"judges through one resize ({MEASUREMENT_RESIZE}). Latent error: mean squared error of the row's VAE "
             f"latent to the true face's (image rows: their encoding). Chance among the {speakers} test speakers: "
             f"top-1 {1 / speakers:.3f}, top-5 {min(5, speakers) / speakers:.3f}. {choice_line(per_seed)}"]
    header = "| row | " + " | ".join(label for _, label in COLUMNS) + " |"
    for condition in CONDITIONS:
        lines += ["", f"**{condition}**" + (" (the same degraded audio for every row and seed)"
                                            if CONDITIONS[condition] else ""), "", header,
                  "|---" * (len(COLUMNS) + 1) + "|"]
        lines += [f"| {row} | " + " | ".join(cell(per_seed, condition, row, m) for m, _ in COLUMNS) + " |"
                  for row in ROWS]
    lines += ["", "Differences on the same clips (mean [paired 95% interval over test speakers]):"]
    lines += [pair_line(per_seed, condition, *pair) for condition in CONDITIONS for pair in PAIRS]
    lines += weight_lines(per_seed)
    lines += ["", f"![{', '.join(GRID_COLUMNS)}](docs/images/{grid.name}) Seed {per_seed[0]['seed']}, clean speech, "
              f"one clip of each of {GRID_SPEAKERS} test speakers; columns, left to right: {', '.join(GRID_COLUMNS)}.",
              "",
              "Rows: *no prior*: a second denoiser trained on z itself (`stage.prior=none`); *a = 0*: the raw "
              "residual sample on the prior; *best constant a*, *best guidance*: chosen on val as above; *SAW*: "
              "a(speech) of the saw stage; *plug-in*: a from the spread of the clip's own "
              f"K = {SAMPLES} samples (no network); *oracle*: a fitted to the true face from the same K samples; the "
              "generated rows shrink the same first sample. *nearest voice, k*: the decoded mean face latent of the "
              "k training speakers whose mean ConRe speech embedding (the portrait stage's encoder) is nearest to the "
              "clip's; *mean face*: the face prior decoded; *random training face*: a real frame of a random training "
              "clip; *ideal reader*: `datamodules.synthetic.ideal_portrait`.", "",
              "What these numbers do not show: they are on a synthetic corpus whose faces depend on the voice by "
              "construction, at 64 px, with small networks trained minutes each; the judge ConRe and the portrait's "
              "ConRe are both trained on the same corpus's training speakers (different halves for the judge, all "
              "of them for the portrait's), so they may share its biases; the ceiling rows are oracle or ideal, not "
              "achievable; dlib at 256 px sees upsampled 64 px faces; seeds vary ConRe, the denoisers and SAW, not "
              "the autoencoder, the prior, the corpus or the judge; the oracle and plug-in a use K samples, the "
              "portrait one; three conditions are a few points of the degradations SAW trained on."]
    if corpus.train_words:
        lines[-1] += " Trained on this corpus with, beyond `experiment=small`: " + "; ".join(
            f"{stage} `{' '.join(words)}`" for stage, words in corpus.train_words.items()) + "."
    for seed_result in per_seed:
        seed_result.pop("grid_png", None)
    return {"corpus": str(corpus.root), "voice_share": share, "train_words": corpus.train_words,
            "primary": list(PRIMARY), "grid": grid.relative_to(ROOT).as_posix(), "per_seed": per_seed}, "\n".join(lines)
