"""``make results NAMES=codebook``: the codebook renderer against bicubic on frames it has not seen.

The VQ phase trains once, with seed 0 (:func:`reports.results.shared_vq_words`), and every seed and both variants
start from it, as CodeFormer's transformer and decoder start from a codebook trained once. Per seed: the seed's chain
up to its motion stage (the files the video table trains too), the transformer and render phases (with the
discriminator's feature matching as the perceptual term and the hinge GAN, as configs/experiment/small.yaml says),
and the temporal variant: the same two phases with ``stage.temporal=true`` on clips of its window, trained into its
own folder (:func:`temporal_corpus`). One identity judge serves every seed: the portrait table's ConRe,
trained with seed 100 on ``data.speaker_part=1/2`` and used for nothing but scoring. The evaluation
(:mod:`reports.results_codebook_eval`) is cached per seed.
"""
from __future__ import annotations

import math
import statistics
from functools import partial

import numpy as np

from evaluation.intervals import (
    format_interval,
    format_seeds_and_interval,
    paired_speaker_bootstrap,
    seed_mean_by_clip,
    speaker_bootstrap,
)
from evaluation.kid import interval_of_draws
from evaluation.measure import MEASUREMENT_RESIZE
from reports import plan
from reports import results_codebook_eval as ev
from reports.measures import frame_scores, ssim_per_frame, unit  # noqa: F401  (the table's measurement, tested here)
from reports.results_codebook_eval import MEASURE_SIZE  # noqa: F401
from reports.table_units import shown

# Lightning counts both optimizers' steps with the GAN on. The shared VQ phase trains 1000 batches (2000 steps): with
# the linear shortcut (stage.shortcut, lightning_modules/nets/vq_shortcut.py) an L1-only VQ of the small config's
# widths passed bicubic from 8 px on the val frames (0.102) by 300-400 batches, where the one without it stayed at
# 0.198 after 500 batches of the full recipe. The render phase (fusion, decoder and residual head) trains 600 batches
# (1200 steps), the transformer phase (no GAN) 300.
# The render phase's default fidelity (validation, export, generation) is 1 and its detail scale 0.4, both chosen on
# val by reports/codebook_val.py (the figures: the README's codebook section): the detail scale is the largest read
# (0.25-1) whose PSNR stays within 0.5 dB of bicubic on both val sets; the perceptual and GAN weights halved scored
# worse there.
PHASE_WORDS = {"vqgan": ("trainer.max_steps=2000",), "transformer": ("trainer.max_steps=300",),
               "render": ("trainer.max_steps=1200", "stage.fidelity_weight=1.0", "stage.detail_scale=0.4")}
# the temporal variant: windows of the small config's stage.window_frames (4) frames, as many frames per batch (8)
TEMPORAL_WORDS = ("stage.temporal=true", "data.clip_frames=4", "data.batch_size=2")
SETS = {"stage2": "held-out stage-2 frames (the seed's windowed motion stage re-rendering real test clips)",
        "degraded": "the degraded real set (fixed seed, a recorded recipe per frame)"}
METRICS = (("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("kid", "KID×10³ ↓"), ("fid", "FID ↓"),
           ("temporal_consistency", "temporal cons. ×10³ ↓"), ("flicker_generated", "flicker ×10³"),
           ("identity_dlib", "identity dlib ↑"), ("identity_conre", "identity judge ↑"), ("gate_opening", "gate"),
           ("detail", "|detail|"))
PER_CLIP = ("psnr", "ssim", "temporal_consistency", "flicker_generated", "identity_dlib", "identity_conre")
PAIRED = {"psnr": "PSNR", "ssim": "SSIM", "kid": "KID×10³", "identity_dlib": "identity dlib",
          "identity_conre": "identity judge", "temporal_consistency": "temporal cons. ×10³"}


def temporal_corpus():
    """The small corpus with the temporal variant's words on every codebook phase and its own output folder (its
    run folders and stage files apart from the renderer's)."""
    from reports.results import CORPUS, CORPUS_OPTIONS, OUTPUT_ROOT, Corpus
    return Corpus(CORPUS, CORPUS_OPTIONS, OUTPUT_ROOT / "codebook-temporal", {"codebook": TEMPORAL_WORDS})


def codebook_seed(seed: int) -> dict:
    """One seed's stages trained (or reused) and its two test sets scored (or reused)."""
    from reports.results import CORPUS, SMALL, cached_evaluation, shared_autoencoder, train, train_codebook
    from reports.results_portrait_table import JUDGE_SEED, judge_file
    from trainer.config import compose

    judge = judge_file(SMALL)
    train("conre", JUDGE_SEED, judge.parent, "data.speaker_part=1/2", name="judge")
    stages = shared_autoencoder(seed)
    train("conre", seed, stages)
    train("motion_diffusion", seed, stages)
    train_codebook(seed, stages, PHASE_WORDS)
    temporal = temporal_corpus()
    train_codebook(seed, temporal.stages(seed), PHASE_WORDS, temporal)
    data = compose(["experiment=small", "stage=codebook", f"data.root={CORPUS}"]).data
    inputs = [stages / "codebook.safetensors", temporal.stages(seed) / "codebook.safetensors", judge,
              *(stages / f"{name}.safetensors" for name in ("conre", "autoencoder", "motion_diffusion"))]
    result = cached_evaluation(f"codebook-{ev.MEASURE_SIZE}px", seed, inputs,
                               partial(ev.evaluate_codebook, stages, temporal.stages(seed), judge, data, seed),
                               resumable=True)
    return {"seed": seed, **result}


def row_values(per_seed: list[dict], test_set: str, row: str, metric: str) -> list[float]:
    values = [r["sets"][test_set]["rows"][row].get(metric) for r in per_seed]
    if metric == "kid":
        return [1000 * v["kid"] for v in values]
    return [shown(metric, v) for v in values if v is not None]


def clip_values(per_seed: list[dict], test_set: str, row: str, metric: str) -> dict[str, float]:
    """A row's per-clip values of one metric averaged over the seeds (clips NaN in any seed left out)."""
    per = [{k: shown(metric, v[metric]) for k, v in r["sets"][test_set]["rows"][row]["per_clip"].items()}
           for r in per_seed]
    keep = [k for k in per[0] if all(math.isfinite(p[k]) for p in per)]
    return seed_mean_by_clip([{k: p[k] for k in keep} for p in per])


def cell(per_seed: list[dict], test_set: str, row: str, metric: str) -> str:
    """mean ± std over seeds, [95% interval over test speakers] for per-clip metrics, the subset spread for KID."""
    values = row_values(per_seed, test_set, row, metric)
    if not values:
        return "—"
    digits = 2 if metric in ("psnr", "fid", "kid") else 3
    if metric in PER_CLIP:
        interval = speaker_bootstrap(clip_values(per_seed, test_set, row, metric), per_seed[0]["speakers"])
        return format_seeds_and_interval(values, interval, digits)
    text = format_seeds_and_interval(values, None, digits)
    if metric == "kid":
        spread = statistics.fmean(1000 * r["sets"][test_set]["rows"][row]["kid"]["kid_std"] for r in per_seed)
        text += f" (subsets ± {spread:.2f})"
    return text


def kid_difference(per_seed: list[dict], test_set: str, row: str) -> tuple[float, float, float]:
    """KID×10³ of ``row`` minus bicubic: the seed mean, and the paired speaker interval of the seed-mean difference
    (each seed's bootstrap draws share the speaker draws, so they are averaged draw by draw)."""
    point = statistics.fmean(a - b for a, b in zip(row_values(per_seed, test_set, row, "kid"),
                                                    row_values(per_seed, test_set, "bicubic", "kid"), strict=True))
    draws = np.mean([r["sets"][test_set]["kid_draws"][f"{row}-bicubic"] for r in per_seed], axis=0) * 1000
    return interval_of_draws(point, draws)


def difference(per_seed: list[dict], test_set: str, row: str, metric: str) -> tuple[float, float, float]:
    if metric == "kid":
        return kid_difference(per_seed, test_set, row)
    return paired_speaker_bootstrap(clip_values(per_seed, test_set, row, metric),
                                    clip_values(per_seed, test_set, "bicubic", metric), per_seed[0]["speakers"])


def labels(per_seed: list[dict]) -> dict[str, str]:
    first = per_seed[0]
    default = first["training"]["fidelity_weight"]
    own = first["training"].get("detail_scale", 1.0)
    scale = "" if own == 1.0 else f", detail × {own:g}"  # the temporal variant trains with it too
    names = {"bicubic": "bicubic", "back_projected": "back-projected bicubic (bicubic operator)",
             "back_projected_area": "back-projected bicubic (area operator: the corpus's downsampler)",
             "temporal": f"temporal variant (window {first['training']['temporal_window']}, w = {default:g}{scale})"}
    for row in first["rows"]:
        if row.startswith("renderer_w"):
            w = float(row[len("renderer_w"):])
            names[row] = f"renderer, w = {w:g}{scale if w > 0 else ''}" + (" (default)" if w == default else "")
        elif row.startswith("renderer_s"):
            names[row] = f"renderer, w = {default:g}, detail × {float(row[len('renderer_s'):]):g}"
    return names


def set_table(per_seed: list[dict], test_set: str) -> list[str]:
    names = labels(per_seed)
    first = per_seed[0]["sets"][test_set]["rows"]
    truth = shown("flicker_generated", first["bicubic"]["flicker_real"])
    lines = [f"**{SETS[test_set]}**", "", "| output | " + " | ".join(label for _, label in METRICS) + " |",
             "|---|" + "---|" * len(METRICS)]
    for row in per_seed[0]["rows"]:
        lines.append(f"| {names[row]} | " + " | ".join(cell(per_seed, test_set, row, m) for m, _ in METRICS) + " |")
    lines += ["", f"The real clips' flicker ×10³: {truth:.3f}. Differences from bicubic on the same clips (mean "
              f"[paired 95% interval over test speakers; KID: the speaker bootstrap of its Inception features]):"]
    for row in per_seed[0]["rows"]:
        if row != "bicubic":
            parts = [f"{label} {format_interval(*difference(per_seed, test_set, row, m))}"
                     for m, label in PAIRED.items()]
            lines.append(f"- {names[row]}: " + ", ".join(parts))
    return lines


def target_lines(per_seed: list[dict]) -> list[str]:
    """The issue's targets on the stage-2 frames, each with its numbers and whether it is met."""
    renderer = per_seed[0]["primary"][1]

    def seeds(row: str, metric: str) -> list[float]:
        return row_values(per_seed, "stage2", row, metric)

    gaps = [b - r for b, r in zip(seeds("bicubic", "fid"), seeds(renderer, "fid"), strict=True)]
    spread = statistics.stdev(seeds(renderer, "fid")) if len(gaps) > 1 else math.nan
    kid = kid_difference(per_seed, "stage2", renderer)
    psnr = statistics.fmean(seeds(renderer, "psnr")) - statistics.fmean(seeds("bicubic", "psnr"))
    lines = [f"- FID below bicubic's by more than twice its std over seeds: {statistics.fmean(gaps):.2f} lower, "
             f"2 × std {2 * spread:.2f}: {verdict(statistics.fmean(gaps) > 2 * spread)}",
             f"- KID's paired interval excludes 0 (below it): {format_interval(*kid, digits=2)}: "
             f"{verdict(kid[2] < 0)}",
             f"- PSNR within 0.5 dB of bicubic: {psnr:+.2f} dB: {verdict(psnr >= -0.5)}"]
    for metric in ("identity_dlib", "identity_conre"):
        gap = statistics.fmean(seeds(renderer, metric)) - statistics.fmean(seeds("bicubic", metric))
        seed_spread = statistics.stdev(seeds(renderer, metric)) if len(per_seed) > 1 else 0.0
        lines.append(f"- {PAIRED[metric]} not worse beyond the seed spread: {gap:+.4f} against std "
                     f"{seed_spread:.4f}: {verdict(gap >= -seed_spread)}")
    return lines


def verdict(met: bool) -> str:
    return "**met**" if met else "**not met**"


def codebook_results() -> tuple[dict, str]:
    """Train (or reuse) every seed's renderer, temporal variant and motion stage; tabulate both test sets."""
    from reports.results import SEEDS, picture

    per_seed = plan.every_seed(codebook_seed, SEEDS)
    first, training = per_seed[0], per_seed[0]["training"]
    degraded = first["degraded"]
    beyond = degraded["beyond_training"]
    renderer = labels(per_seed)[first["primary"][1]]
    lines = [f"4x upscaling (64 -> 256 px) of {first['frames']} held-out frames ({ev.FRAMES_PER_CLIP} of each test "
             f"clip), {len(SEEDS)} seeds: mean ± std over seeds [95% interval over test speakers, seed-averaged "
             f"clips]. Every row and the real frame are measured at {ev.MEASURE_SIZE} px ({MEASUREMENT_RESIZE}). "
             f"FID (every frame, {first['sets']['stage2']['rows']['bicubic']['fid_frames']}) for bicubic and "
             f"the {renderer}; KID (cubic kernel, subsets of {ev.KID_SUBSET}) on every {ev.STRIDE}th frame for every "
             f"row, identity likewise: the cosine to the real frame's embedding by dlib's ResNet (both aligned by "
             f"the real frame's corpus landmarks) and by the independent ConRe judge (seed 100, the other half of "
             f"the training speakers, at {first['judge_size']} px). Temporal consistency and flicker outside the "
             f"mouth (evaluation/temporal.py); gate: the detail gate's mean opening; |detail|: the residual head's "
             f"mean absolute output (on the [-1, 1] scale, before the fidelity weight and the detail scale), where "
             f"the renderer has it.",
             "", f"Training: the VQ phase once (seed 0), shared by every seed and both renderers; the seeds vary the "
             f"transformer and render phases. Perceptual network {training['perceptual_network']} (the "
             f"discriminator's features; no judge of this table) at weight {training['perceptual_weight']:g}, "
             f"hinge GAN {training['adversarial_weight']:g} (warm-up {training['adversarial_warmup']} generator "
             f"steps), inputs degraded real frames (degrade {training['degrade']:g}), back-projection operator "
             f"{training['back_projection_operator']}. The degraded set: seed {degraded['seed']}, per frame a blur "
             f"(Gaussian or motion), a two-step resize chain, noise and JPEG (evaluation/degraded.py); beyond the "
             f"training range in blur {beyond['blur']}, resize {beyond['resize']}, noise {beyond['noise']}, JPEG "
             f"{beyond['jpeg']}, any {beyond['any']} of {len(degraded['recipes'])} frames (recipes in "
             f"results/codebook.json).", ""]
    for test_set in SETS:
        lines += [*set_table(per_seed, test_set), ""]
    lines += ["Targets on the held-out stage-2 frames:", *target_lines(per_seed), "",
              picture(ev.IMAGE, f"codebook-{ev.MEASURE_SIZE}px", "64 px input, bicubic, renderer, real 256 px"), "",
              f"Columns of the picture: the 64 px stage-2 frame (pixels enlarged), bicubic, the {renderer}, the real "
              f"256 px frame; frame 0 of the first 4 test clips, seed 0."]
    kept = [{k: v for k, v in r.items() if k != "degraded"} | {"degraded_digests": r["degraded"]["digests"]}
            for r in per_seed]
    return {"per_seed": kept, "degraded_set": degraded}, "\n".join(lines)
