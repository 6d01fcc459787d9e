"""``python -m reports.motion_val``: the val readings that choose the motion stage's loss weights, on val clips, never
on test ones: ``--option mouth_loss_weight`` (the extra frame-loss weight on the lower face, read by the sync scorer's
LSE-C) or ``--option temporal_loss_weight`` (the windowed renderer's frame_change loss, read by the temporal
consistency outside the mouth).

For each value a motion stage of one seed is trained as the small chain trains it (the small config's value is the
seed's own table file; the others train beside it on the same autoencoder and ConRe files). Each val clip (one per
val speaker) is animated from its real first frame with its own speech, motion sampled by each stage, through the
video table's measurement path (:func:`reports.results_video_eval.render_clip` and ``clip_metrics``: temporal
consistency, flicker, seam ratio and the per-group motion error and correlation at its measurement size) and, when
the sync table's scorer is there, its LSE path (:func:`reports.results_sync_eval.score_rows`). Every value's
difference from the small config's comes with a paired 95% interval over val speakers. The value best on the
option's deciding measure is named, and so is a tie: when that difference's interval contains 0, the two are not told
apart on val and the small config's value stands (changing it retrains every Stage-2 table). The reading is written
as JSON under ``--out`` and printed.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from evaluation.intervals import format_interval, paired_speaker_bootstrap, speaker_bootstrap
from evaluation.lse import SyncClip
from evaluation.measure import to_measurement_size
from evaluation.motion_groups import frame_landmarks
from lightning_modules.motion_diffusion import MotionDiffusionStage
from lightning_modules.stagefile import StageFiles
from reports.eval_inputs import test_clips
from reports.results_sync_eval import CLIPS, score_rows
from reports.results_video_eval import MEASURE_SIZE, clip_metrics, render_clip

SHARED = ("conre", "autoencoder")  # what each value's folder takes from the seed's own
# option -> (deciding measure, +1 when higher is better, -1 when lower is, the values read by default, folder tag)
OPTIONS = {"mouth_loss_weight": ("lse_c", 1, (0.0, 2.0, 8.0, 16.0), "mouth"),
           "temporal_loss_weight": ("temporal_consistency", -1, (0.0, 1.0), "temporal")}
MEASURES = ("lse_c", "lse_d", "temporal_consistency", "flicker_generated", "seam_ratio", "lips_error", "lips_r")


def value_folder(seed: int, option: str, value: float, default: float) -> Path:
    """The stages folder of one value: the seed's own for the small config's value, a sibling for the others."""
    from reports.results import OUTPUT_ROOT, SMALL
    if value == default:
        return SMALL.stages(seed)
    tag = OPTIONS[option][3]
    return OUTPUT_ROOT / "small" / f"{tag}-val" / f"stages-seed{seed}-{tag}{value:g}"


def seed_stages(seed: int) -> Path:
    """The seed's own table files (the small config's value and what every value shares), trained or reused."""
    from reports.results import shared_autoencoder, train
    stages = shared_autoencoder(seed)
    for stage in ("conre", "motion_diffusion"):
        train(stage, seed, stages)
    return stages


def train_value(seed: int, option: str, value: float, default: float, stages: Path) -> Path:
    """The value's motion stage beside the seed's ``stages``, trained (or reused while its training key holds) as
    the small chain trains it."""
    from reports import plan
    from reports.results import train
    folder = value_folder(seed, option, value, default)
    if folder != stages:
        plan.mirror_stage_files(stages, folder, SHARED)
        train("motion_diffusion", seed, folder, f"stage.{option}={value:g}", name=folder.name.removeprefix("stages-"))
    return folder


@torch.no_grad()
def clip_readings(folders: dict[str, Path], clips: list[dict], seed: int) -> tuple[dict, dict[str, list[SyncClip]]]:
    """({value: {clip: measures}}, {value: clips for the LSE scorer}) of each value's stage, the truth as a row."""
    parts = {name: MotionDiffusionStage.for_inference(StageFiles(folder)) for name, folder in folders.items()}
    per_clip: dict[str, dict] = {name: {} for name in [*parts, "truth"]}
    sync: dict[str, list[SyncClip]] = {name: [] for name in per_clip}
    window = next(iter(parts.values())).cfg.frame_window
    for index, clip in enumerate(clips):
        real_landmarks, _ = frame_landmarks(to_measurement_size(clip["frames"], MEASURE_SIZE))
        truth = clip["motion_truth"].numpy()
        videos = {"truth": clip["frames"]}
        for name, stage in parts.items():
            features = stage.audio_features(clip["audio"].float()[None], clip["frames"].shape[0])
            videos |= {name: render_clip({"windowed": stage}, clip, features, 1000 * seed + index)[0]["windowed"]}
        for name, video in videos.items():
            per_clip[name][clip["key"]] = clip_metrics(video, clip["frames"], real_landmarks, truth, window)
            sync[name].append(SyncClip(clip["key"], video, clip["audio"]))
    return per_clip, sync


def finite(row: dict[str, dict], measure: str) -> dict[str, float]:
    return {k: v[measure] for k, v in row.items() if v.get(measure) is not None and math.isfinite(v[measure])}


def both_finite(a: dict[str, dict], b: dict[str, dict], measure: str) -> tuple[dict[str, float], dict[str, float]]:
    """Two rows' values of one measure ({clip: measures} each) on the clips where both have one (a landmark or mouth
    measure is NaN where dlib finds too few faces), ready to be paired."""
    first, second = finite(a, measure), finite(b, measure)
    common = first.keys() & second.keys()
    return {k: first[k] for k in common}, {k: second[k] for k in common}


def differences(scores: dict[str, dict], default: str, speakers: dict[str, str],
                measures: tuple[str, ...] = ("lse_c", "lse_d")) -> dict[str, dict]:
    """{value: {measure: (mean, low, high)}}: each value minus the default, paired over val speakers."""
    return {name: {m: paired_speaker_bootstrap(*both_finite(row["per_clip"], scores[default]["per_clip"], m), speakers)
                   for m in measures}
            for name, row in scores.items() if name not in (default, "truth")}


def report(scores: dict[str, dict], diffs: dict[str, dict], speakers: dict[str, str], default: str,
           option: str = "mouth_loss_weight", measures: tuple[str, ...] = ("lse_c", "lse_d")) -> list[str]:
    lines = [f"| {option} | " + " | ".join(measures) + " | " + " | ".join(f"{m} − default" for m in measures) + " |",
             "|---|" + "---|" * 2 * len(measures)]
    for name, row in scores.items():
        cells = [format_interval(*speaker_bootstrap(finite(row["per_clip"], m), speakers), digits=digits(m))
                 for m in measures]
        cells += ([format_interval(*diffs[name][m], digits=digits(m)) for m in measures] if name in diffs
                  else ["—"] * len(measures))
        label = name + (" (small config)" if name == default else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def choice(option: str, means: dict[str, float], diffs: dict[str, dict], default: str) -> tuple[str, bool]:
    """(the value best on the option's deciding measure, whether it ties with the default: the interval of its
    difference from the default contains 0)."""
    deciding, sign = OPTIONS[option][:2]
    chosen = max(means, key=lambda name: sign * means[name])
    return chosen, chosen != default and diffs[chosen][deciding][1] * diffs[chosen][deciding][2] <= 0


def digits(measure: str) -> int:
    return 5 if measure in ("temporal_consistency", "flicker_generated") else 3


def main(argv: list[str] | None = None) -> None:
    from common.files import atomic_write_text
    from reports.results import CORPUS, OUTPUT_ROOT, ensure_corpus
    from trainer.config import compose

    parser = argparse.ArgumentParser(prog="python -m reports.motion_val", description=__doc__.split("\n\n")[0])
    parser.add_argument("--option", choices=sorted(OPTIONS), default="mouth_loss_weight", help="the weight read")
    parser.add_argument("--values", type=float, nargs="+", help="values read (the small config's is always among "
                        "them; default: 0 2 8 16 for the mouth weight, 0 1 for the temporal one)")
    parser.add_argument("--seed", type=int, default=0, help="the motion stages' and the sampler's seed")
    parser.add_argument("--clips", type=int, default=CLIPS, help="val clips read, one per val speaker first")
    parser.add_argument("--out", type=Path, default=Path("outputs/motion-val"), help="where the JSON reading goes")
    args = parser.parse_args(argv)
    deciding, _, values, tag = OPTIONS[args.option]
    scorer = OUTPUT_ROOT / "small" / "scorer-stages" / "syncnet.safetensors"
    if deciding == "lse_c" and not scorer.is_file():
        parser.error(f"no sync scorer at {scorer}: make it first with `make results NAMES=sync`")
    ensure_corpus()
    default = float(getattr(compose(["experiment=small", "stage=motion_diffusion"]).stage, args.option))
    stages = seed_stages(args.seed)
    folders = {f"{v:g}": train_value(args.seed, args.option, v, default, stages)
               for v in sorted({*(args.values or values), default})}
    data = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"]).data
    clips = test_clips(data, args.clips, split="val")
    speakers = {clip["key"]: clip["speaker"] for clip in clips}
    per_clip, sync = clip_readings(folders, clips, args.seed)
    lse = score_rows(sync, scorer, MEASURE_SIZE) if scorer.is_file() else {}
    scores = {name: {"per_clip": {k: v | lse.get(name, {}).get("per_clip", {}).get(k, {}) for k, v in row.items()}}
              for name, row in per_clip.items()}
    measures = tuple(m for m in MEASURES if lse or not m.startswith("lse"))
    diffs = differences(scores, f"{default:g}", speakers, measures)
    means = {name: statistics.mean(finite(scores[name]["per_clip"], deciding).values()) for name in folders}
    chosen, tie = choice(args.option, means, diffs, f"{default:g}")
    path = args.out / f"{tag}-seed{args.seed}-{'-'.join(folders)}.json"  # one file per set of values read
    atomic_write_text(path, json.dumps({"split": "val", "option": args.option, "clips": len(clips), "seed": args.seed,
                                        "default": default, "chosen": chosen,
                                        "folders": {k: str(v) for k, v in folders.items()}, "scores": scores,
                                        "differences": diffs, "speakers": speakers}, indent=1, default=float))
    print("\n".join(report(scores, diffs, speakers, f"{default:g}", args.option, measures)))
    verdict = f"a tie with the small config's {default:g}, which stands" if tie else "the choice"
    print(f"\nbest val {deciding}: {args.option} {chosen}, {verdict} ({len(clips)} val clips, seed {args.seed}; "
          f"{path})")


if __name__ == "__main__":
    main()
