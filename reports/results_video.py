"""``make results NAMES=video``: the windowed frame renderer against the sequential one, on identical motion.

Per seed, the motion stage trains with the windowed renderer (its default); the sequential baseline is today's
one-frame UNet with its own weights, trained for the same steps on the same corpus with the windowed file's motion
encoder and transformer loaded and frozen (``stage.motion_from``). Each seed's evaluation
(:mod:`reports.results_video_eval`) is cached under a key of its own code, so a change to this table's layout or
aggregation reuses it. Per-clip values are averaged over the seeds before the speaker bootstrap; a clip none of
whose seeds gave a value (no face found, a constant landmark series) is left out and counted under the table.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from evaluation.intervals import format_interval, paired_speaker_bootstrap
from evaluation.measure import MEASUREMENT_RESIZE
from evaluation.motion_groups import AUDIO_DRIVEN
from reports import plan
from reports.results_video_eval import LONG_SECONDS, MEASURE_SIZE, PICTURE_ROWS, ROWS, evaluate_seed
from reports.table_units import clip_values, row_cell


def baseline_stages(seed: int, stages: Path) -> Path:
    """The sequential baseline's folder: the seed's conre, autoencoder and prior, and a motion stage trained on the
    windowed file's frozen motion networks (by the per-frame loss: the frame_change loss is the windowed renderer's)."""
    from reports.results import OUTPUT_ROOT, train
    folder = plan.mirror_stage_files(stages, OUTPUT_ROOT / "small" / f"sequential-seed{seed}",
                                     ("conre", "autoencoder", "face_prior"))
    train("motion_diffusion", seed, folder, "stage.frame_renderer=sequential", "stage.temporal_loss_weight=0",
          f"stage.motion_from={stages / 'motion_diffusion.safetensors'}", name=f"seed{seed}-sequential")
    return folder


def video_seed(seed: int) -> dict:
    """One seed's chain (trained or reused), rendered and scored."""
    from reports.results import CORPUS, OUTPUT_ROOT, cached_evaluation, shared_autoencoder, train
    from trainer.config import compose

    scorer = OUTPUT_ROOT / "small" / "scorer-stages" / "syncnet.safetensors"
    train("syncnet", 100, scorer.parent, "data.speaker_part=1/2", name="scorer")
    stages = shared_autoencoder(seed)
    train("conre", seed, stages)
    train("motion_diffusion", seed, stages)
    baseline = baseline_stages(seed, stages)
    data = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"]).data
    inputs = [scorer, stages / "conre.safetensors", stages / "autoencoder.safetensors",
              stages / "motion_diffusion.safetensors", baseline / "motion_diffusion.safetensors"]
    result = cached_evaluation(f"video-{MEASURE_SIZE}px", seed, inputs,
                               partial(evaluate_seed, stages, baseline, data, scorer, seed))
    return {"seed": seed, **result}


METRICS = (("lse_c", "LSE-C ↑"), ("lse_d", "LSE-D ↓"), *((f"{g}_error", f"{g} error ↓") for g in AUDIO_DRIVEN),
           *((f"{g}_r", f"{g} r") for g in AUDIO_DRIVEN), ("blink_rate_generated", "blinks/s"),
           ("temporal_consistency", "temporal cons. ×10³ ↓"), ("flicker_generated", "flicker ×10³"),
           ("seam_ratio", "seam ratio (1.0)"))


def left_out_line(per_seed: list[dict]) -> str:
    """Which cells average fewer clips than the table has, and why."""
    clips = len(per_seed[0]["speakers"])
    short = []
    for row in ROWS:
        by_count: dict[int, list[str]] = {}
        for metric, label in METRICS:
            by_count.setdefault(len(clip_values(per_seed, row, metric)), []).append(label)
        short += [f"{ROWS[row]} {count}/{clips} ({', '.join(labels)})"
                  for count, labels in sorted(by_count.items()) if count < clips]
    if not short:
        return f"Every cell averages all {clips} clips."
    return ("Clips with a value on at least one seed (the others have none: dlib found a face in too few of the "
            "frames, or a measure's series is constant, so that its correlation is undefined): "
            + "; ".join(short) + ".")


def paired_cell(per_seed: list[dict], metric: str) -> str:
    """Windowed − sequential over the clips both have a value for, with its paired speaker interval."""
    windowed, sequential = clip_values(per_seed, "windowed", metric), clip_values(per_seed, "sequential", metric)
    both = windowed.keys() & sequential.keys()
    if not both:
        return "-"
    return format_interval(*paired_speaker_bootstrap({c: windowed[c] for c in both}, {c: sequential[c] for c in both},
                                                     per_seed[0]["speakers"]))


def long_speech_line(per_seed: list[dict]) -> str:
    """Identity and colour drift over the long generation, per row: slopes per 5 s segment, mean ± std over seeds."""
    def slope(row: str, name: str) -> str:
        values = [r["long_speech"][row][name] for r in per_seed]
        values = [float(np.mean(v)) if isinstance(v, list) else v for v in values]
        values = [v for v in values if np.isfinite(v)]
        if not values:
            return "none (too few faces found)"
        return f"{np.mean(values):+.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.4f} ({len(values)} seeds)"

    first = per_seed[0]["long_speech"]["windowed"]
    parts = [f"{ROWS[row]}: identity {slope(row, 'identity_slope')}, colour {slope(row, 'colour_slope')}"
             for row in ROWS if row in per_seed[0]["long_speech"]]
    return (f"{LONG_SECONDS:.0f} s of a fresh clip of the first test speaker's speech (the corpus generator, a clip "
            f"it never wrote), animated from its first frame: slope per {first['segment_seconds']:.0f} s segment of "
            f"the dlib identity similarity to that frame and of the mean colour (mean of R, G, B), mean ± std over "
            f"seeds (0 is a video that holds; per-segment values in results/video.json): " + "; ".join(parts) + ".")


def video_results() -> tuple[dict, str]:
    """Train (or reuse) both renderers over the seeds and tabulate them with the truth."""
    from reports.results import SEEDS

    per_seed = plan.every_seed(video_seed, SEEDS)
    return {"per_seed": per_seed}, video_table(per_seed)


def video_table(per_seed: list[dict]) -> str:
    """The README block of the seeds' evaluations."""
    from reports.results import picture
    from reports.results_video_eval import IMAGE  # read when the table is made (tests point it elsewhere)
    speakers = per_seed[0]["speakers"]
    seeds = len(per_seed)
    lines = [f"Sequential vs windowed frame rendering of the same motion: {len(speakers)} held-out clips (2 s, one "
             f"per test speaker, animated from the clip's first frame), {seeds} seeds, mean ± std over seeds "
             f"[95% interval over test speakers]. Every row is measured at {MEASURE_SIZE} px ({MEASUREMENT_RESIZE}). "
             f"Motion error: RMSE of a group's measure against the real clip's, over the real series' std (a frozen "
             f"face scores 1); r: correlation with the corpus's driver of that group; temporal consistency: mean "
             f"|generated − true| frame-to-frame change outside the mouth; seam ratio: change across the window "
             f"joins over the change within windows (every {per_seed[0]['window']} frames; truth 1.0). Two rows place "
             f"the error: the windowed renderer given the motion encoder's latents of the real landmarks instead of "
             f"sampled motion (the motion stage's share), and the real frames through the autoencoder (what any "
             f"renderer of its latents can reach).", "",
             "| videos | " + " | ".join(label for _, label in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for row, name in ROWS.items():
        lines.append(f"| {name} | " + " | ".join(row_cell(per_seed, row, m) for m, _ in METRICS) + " |")
    paired = [f"{label} {paired_cell(per_seed, metric)}" for metric, label in METRICS
              if not metric.endswith("_r") and metric != "flicker_generated"]
    lines += ["", left_out_line(per_seed), "",
              "Windowed − sequential on the clips both rows scored (mean [paired 95% interval over test speakers]): "
              + ", ".join(paired) + "."]
    lines += ["", long_speech_line(per_seed)]
    speed = {row: [r["frames_per_second"][row] for r in per_seed] for row in ("windowed", "sequential")}
    calls = per_seed[0]["denoiser_calls_per_frame"]
    lines += ["", "Rendering speed in the same process and threads "
              f"({per_seed[0]['threads']}), equal sampler steps, frames/s of 64 px video including decoding (median "
              "over clips, per seed): " + "; ".join(f"{ROWS[row]} " + ", ".join(f"{v:.1f}" for v in values)
                                                    for row, values in speed.items())
              + ". Frame-UNet calls per output frame: " + ", ".join(f"{ROWS[r]} {v:.2f}" for r, v in calls.items())
              + ".", "", picture(IMAGE, f"video-{MEASURE_SIZE}px",
                                 "truth, reconstruction, true motion, windowed, sequential across a window join"),
              "", "Rows of the picture: " + ", ".join(ROWS[row] for row in PICTURE_ROWS) + "; frames 4 each side "
              "of the first window join, "
              "seed 0, first test clip. The blink and gaze statistics against the corpus truth are in "
              "results/video.json; dlib follows the synthetic faces' lips well but their jaw, brows and nods "
              "weakly, so read a group's r against the truth row's r (its ceiling here), not against 1."]
    return "\n".join(lines)
