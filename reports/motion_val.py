"""``python -m reports.motion_val``: the val reading that chooses the motion stage's ``stage.mouth_loss_weight``
(the extra frame-loss weight on the lower face), on val clips, never on test ones.

For each weight a motion stage of one seed is trained as the small chain trains it (the small config's weight is
the seed's own table file; the others train beside it on the same autoencoder and ConRe files), each val clip (one
per val speaker) is animated from its real first frame with its own speech by the default (windowed) renderer, and
the motion stage's frames (before the lip enhancer) are scored by the sync table's independent scorer through the
sync table's measurement path (:func:`reports.results_sync_eval.score_rows`). Each weight's LSE-C and LSE-D
differences from the small config's come with a paired 95% interval over val speakers. The weight with the highest
val LSE-C is named, and so is a tie: when its LSE-C interval against the small config's contains 0, the two are not
told apart on val and the small config's weight stands (changing it retrains every Stage-2 table). The reading is
written as JSON under ``--out`` and printed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from evaluation.intervals import format_interval, paired_speaker_bootstrap, speaker_bootstrap
from evaluation.lse import SyncClip
from generation.pipeline import GenerationOptions, TalkingFacePipeline
from reports.eval_inputs import test_clips
from reports.results_sync_eval import CLIPS, score_rows

SHARED = ("conre", "autoencoder", "lip_enhancer")  # what each weight's folder takes from the seed's own


def weight_folder(seed: int, weight: float, default: float) -> Path:
    """The stages folder of one weight: the seed's own for the small config's weight, a sibling for the others."""
    from reports.results import OUTPUT_ROOT, SMALL
    if weight == default:
        return SMALL.stages(seed)
    return OUTPUT_ROOT / "small" / "mouth-val" / f"stages-seed{seed}-mouth{weight:g}"


def seed_stages(seed: int) -> Path:
    """The seed's own table files (the small config's weight and what every weight shares), trained or reused."""
    from reports.results import shared_autoencoder, train
    stages = shared_autoencoder(seed)
    for stage in ("conre", "motion_diffusion", "lip_enhancer"):
        train(stage, seed, stages)
    return stages


def train_weight(seed: int, weight: float, default: float, stages: Path) -> Path:
    """The weight's motion stage beside the seed's ``stages``, trained (or reused while its training key holds) as
    the small chain trains it."""
    from reports import plan
    from reports.results import train
    folder = weight_folder(seed, weight, default)
    if folder != stages:
        plan.mirror_stage_files(stages, folder, SHARED)
        train("motion_diffusion", seed, folder, f"stage.mouth_loss_weight={weight:g}",
              name=f"seed{seed}-mouth{weight:g}")
    return folder


@torch.no_grad()
def motion_rows(folder: Path, clips: list[dict], seed: int) -> list[SyncClip]:
    """Each clip animated from its first frame and speech: the motion stage's frames, before the lip enhancer."""
    pipeline = TalkingFacePipeline(folder, GenerationOptions(seed=seed, codebook=False), given_portrait=True)
    rows = []
    for clip in clips:
        steps: dict[str, torch.Tensor] = {}
        pipeline.video(clip["frames"][0], clip["audio"], {}, lambda step: None, steps)
        rows.append(SyncClip(clip["key"], steps["motion_diffusion"], clip["audio"]))
    return rows


def differences(scores: dict[str, dict], default: str, speakers: dict[str, str]) -> dict[str, dict]:
    """{weight: {metric: (mean, low, high)}}: each weight minus the default, paired over val speakers."""
    out = {}
    for name, row in scores.items():
        if name in (default, "truth"):
            continue
        out[name] = {metric: paired_speaker_bootstrap(
            {k: v[metric] for k, v in row["per_clip"].items()},
            {k: v[metric] for k, v in scores[default]["per_clip"].items()}, speakers) for metric in ("lse_c", "lse_d")}
    return out


def report(scores: dict[str, dict], diffs: dict[str, dict], speakers: dict[str, str], default: str) -> list[str]:
    lines = ["| mouth_loss_weight | LSE-C ↑ | LSE-D ↓ | LSE-C − default | LSE-D − default |", "|---|---|---|---|---|"]
    for name, row in scores.items():
        cells = [format_interval(*speaker_bootstrap({k: v[m] for k, v in row["per_clip"].items()}, speakers))
                 for m in ("lse_c", "lse_d")]
        cells += ([format_interval(*diffs[name][m]) for m in ("lse_c", "lse_d")] if name in diffs else ["—", "—"])
        label = name + (" (small config)" if name == default else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    from common.files import atomic_write_text
    from reports.results import CORPUS, OUTPUT_ROOT, ensure_corpus
    from trainer.config import compose

    parser = argparse.ArgumentParser(prog="python -m reports.motion_val", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 2.0, 8.0, 16.0],
                        help="mouth loss weights read (the small config's is always among them)")
    parser.add_argument("--seed", type=int, default=0, help="the motion stages' and the sampler's seed")
    parser.add_argument("--clips", type=int, default=CLIPS, help="val clips read, one per val speaker first")
    parser.add_argument("--out", type=Path, default=Path("outputs/motion-val"), help="where the JSON reading goes")
    args = parser.parse_args(argv)
    ensure_corpus()
    default = float(compose(["experiment=small", "stage=motion_diffusion"]).stage.mouth_loss_weight)
    weights = sorted({*args.weights, default})
    stages = seed_stages(args.seed)
    folders = {f"{w:g}": train_weight(args.seed, w, default, stages) for w in weights}
    scorer = OUTPUT_ROOT / "small" / "scorer-stages" / "syncnet.safetensors"
    if not scorer.is_file():
        parser.error(f"no sync scorer at {scorer}: make it first with `make results NAMES=sync`")
    data = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"]).data
    clips = test_clips(data, args.clips, split="val")
    speakers = {clip["key"]: clip["speaker"] for clip in clips}
    rows = {name: motion_rows(folder, clips, args.seed) for name, folder in folders.items()}
    rows["truth"] = [SyncClip(clip["key"], clip["frames"], clip["audio"]) for clip in clips]
    scores = score_rows(rows, scorer)
    diffs = differences(scores, f"{default:g}", speakers)
    chosen = max((name for name in folders), key=lambda name: scores[name]["lse_c"])
    path = args.out / f"mouth-seed{args.seed}.json"
    atomic_write_text(path, json.dumps({"split": "val", "clips": len(clips), "seed": args.seed, "default": default,
                                        "chosen": chosen, "folders": {k: str(v) for k, v in folders.items()},
                                        "scores": scores, "differences": diffs, "speakers": speakers}, indent=1))
    print("\n".join(report(scores, diffs, speakers, f"{default:g}")))
    tie = chosen != f"{default:g}" and diffs[chosen]["lse_c"][1] <= 0
    verdict = f"a tie with the small config's {default:g}, which stands" if tie else "the choice"
    print(f"\nhighest val LSE-C: mouth_loss_weight {chosen}, {verdict} ({len(clips)} val clips, seed {args.seed}; "
          f"{path})")


if __name__ == "__main__":
    main()
