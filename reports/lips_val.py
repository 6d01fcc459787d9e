"""``python -m reports.lips_val``: the val reading that chooses one training option of the lip enhancer on val clips,
never on test ones: ``stage.input_source`` by default (degraded real frames, or the motion stage's rendering of the
real clips), or any other (``--option stage.sync_weight --values 0.3 1.0``).

For each value a lip enhancer of one seed trains as the small chain trains it (the small config's value is the seed's
own table file; each other value trains beside it on the same expert, motion, ConRe and autoencoder files). Each val
clip (one per val speaker) is animated by the generation pipeline with the seed's motion stage in two conditions: from
its real first frame (the sync table's) and from the portrait the seed's SAW stage draws from its speech (the
end-to-end table's). Every enhancer refines the same frames (the pipeline's seed fixes the motion). Each row is
measured at the tables' measurement size as they measure it: LSE by the sync table's scorer (:func:`score_rows`) and
the expert-free mouth sync (:mod:`evaluation.mouth_sync`: r with the speech's loudness minus the shifted-speech null,
r with the real clip's mouth opening), and, not as a judge, LSE-C by the seed's own sync expert (what the enhancer's
sync loss sees); the real clips are a row, measured the same way. How the motion stage's frames stand against the
real clips, what each enhancer adds to them, and each other value's difference from the small config's come with
paired 95% intervals over val speakers. The value with the highest LSE-C in the end-to-end condition is named, and
so is a tie with the small config's (that difference's interval contains 0), in which case the small config's value
stands. The reading is written as JSON under ``--out`` and printed.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from common.images import to_uint8
from evaluation.intervals import format_interval, paired_speaker_bootstrap, speaker_bootstrap
from evaluation.lse import SyncClip
from evaluation.measure import to_measurement_size
from evaluation.mouth_sync import mouth_openings, opening_sync
from generation.pipeline import GenerationOptions, TalkingFacePipeline
from generation.portrait import PortraitGenerator, fit_portrait
from lightning_modules.lip_enhancer import INPUT_SOURCES, LipEnhancerStage
from lightning_modules.stagefile import StageFiles
from reports.eval_inputs import test_clips
from reports.motion_val import both_finite, finite
from reports.results_e2e_eval import MOUTH
from reports.results_sync_eval import CLIPS, MEASURE_SIZE, score_rows

SHARED = ("conre", "autoencoder", "motion_diffusion", "syncnet")  # what each value's folder takes from the seed's
CONDITIONS = {"real": "animated from the real first frame", "generated": "animated from the generated portrait"}
# expert_lse_c: LSE-C by the seed's own sync expert, the one the enhancer's sync loss uses (not a judge: it says what
# that loss sees)
MEASURES = ("lse_c", "lse_d", "mouth_margin", "mouth_truth_r", "mouth_face_rate", "expert_lse_c")
DECIDING = ("generated", "lse_c")
MOTION = "motion_diffusion"
TRUTH = "truth"  # the real val clips, measured through the same path
DEFAULT_OPTION = "stage.input_source"


@dataclass(frozen=True)
class Variant:
    """One value of the option read: ``stage.sync_weight=1.0`` is the row ``sync_weight=1.0``."""

    option: str
    value: str

    @property
    def key(self) -> str:
        """The option's last part: ``sync_weight`` of ``stage.sync_weight``."""
        return self.option.rsplit(".", 1)[-1]

    @property
    def label(self) -> str:
        return f"{self.key}={self.value}"

    @property
    def word(self) -> str:
        return f"{self.option}={self.value}"


def variant_folder(seed: int, variant: Variant, default: Variant) -> Path:
    """The stages folder of one value: the seed's own for the small config's, a sibling for another."""
    from reports.results import OUTPUT_ROOT, SMALL
    if variant == default:
        return SMALL.stages(seed)
    return OUTPUT_ROOT / "small" / "lips-val" / f"stages-seed{seed}-{variant.key}-{variant.value}"


def seed_stages(seed: int) -> Path:
    """The seed's own table files that every value shares, trained or reused."""
    from reports.results import shared_autoencoder, train
    stages = shared_autoencoder(seed)
    for stage in ("conre", "portrait_diffusion", "saw", "motion_diffusion"):
        train(stage, seed, stages)
    train("syncnet", seed, stages, "data.speaker_part=0/2")
    return stages


def train_variant(seed: int, variant: Variant, default: Variant, stages: Path) -> Path:
    """The value's lip enhancer beside the seed's ``stages``, trained (or reused while its key holds)."""
    from reports import plan
    from reports.results import train
    folder = variant_folder(seed, variant, default)
    if folder == stages:
        train("lip_enhancer", seed, stages)
    else:
        plan.mirror_stage_files(stages, folder, SHARED)
        train("lip_enhancer", seed, folder, variant.word, name=folder.name.removeprefix("stages-"))
    return folder


def clip_rows(pipeline: TalkingFacePipeline, refiners: dict, face: torch.Tensor, clip: dict) -> dict[str, torch.Tensor]:
    """{motion_diffusion, each value}: one clip animated from ``face``, refined by each value's enhancer."""
    videos: dict[str, torch.Tensor] = {}
    for label, lips in refiners.items():
        pipeline.lips, steps = lips, {}
        pipeline.video(face, clip["audio"], {}, lambda _: None, steps)
        if MOTION in videos and not torch.equal(videos[MOTION], steps[MOTION]):
            raise RuntimeError("the pipeline drew different motion for the same seed: the enhancers would not refine "
                               "the same frames")
        videos[MOTION], videos[label] = steps[MOTION], steps["lip_enhancer"]
    return videos


@torch.no_grad()
def condition_readings(pipeline: TalkingFacePipeline, refiners: dict, faces: torch.Tensor, clips: list[dict],
                       condition: str = "") -> tuple[dict, dict[str, list[SyncClip]]]:
    """({row: {clip: mouth measures}}, {row: clips for the scorer}) of one condition's faces [N, 3, r, r], the real
    clips (TRUTH) among the rows."""
    per_clip: dict[str, dict] = {}
    sync: dict[str, list[SyncClip]] = {}
    for index, clip in enumerate(clips):
        print(f"{condition}: clip {index + 1}/{len(clips)}", flush=True)
        truth = clip["motion_truth"][:, MOUTH].numpy() if bool(clip["has_motion_truth"]) else None
        for row, video in {TRUTH: clip["frames"], **clip_rows(pipeline, refiners, faces[index], clip)}.items():
            opening = mouth_openings(to_uint8(to_measurement_size(video, MEASURE_SIZE)))
            measures = opening_sync(opening, clip["audio"].numpy(), mouth_truth=truth)
            per_clip.setdefault(row, {})[clip["key"]] = {f"mouth_{k}": v for k, v in measures.items()
                                                         if k != "frames"}
            sync.setdefault(row, []).append(SyncClip(clip["key"], video, clip["audio"]))
    return per_clip, sync


def generated_portraits(stages: Path, clips: list[dict], size: int, seed: int) -> torch.Tensor:
    """The seed's SAW portraits of the clips' speech, as the end-to-end table draws them, at ``size``."""
    options = GenerationOptions(seed=seed)
    audio = torch.stack([clip["audio"] for clip in clips])
    with torch.no_grad():
        faces = PortraitGenerator(stages, use_saw=True).generate_batch(audio, options.steps, options.guidance, seed)
    return torch.stack([fit_portrait(face, size) for face in faces])


def read(folders: dict[str, Path], stages: Path, clips: list[dict], scorer: Path, seed: int) -> dict[str, dict]:
    """{condition: {row: {"per_clip": {clip: measures}}}} of every condition and row."""
    pipeline = TalkingFacePipeline(stages, GenerationOptions(seed=seed, codebook=False), given_portrait=True)
    refiners = {label: LipEnhancerStage.for_inference(StageFiles(folder)) for label, folder in folders.items()}
    size = pipeline.animation_size()
    faces = {"real": torch.stack([fit_portrait(clip["frames"][0], size) for clip in clips]),
             "generated": generated_portraits(stages, clips, size, seed)}
    scores = {}
    for condition, condition_faces in faces.items():
        per_clip, sync = condition_readings(pipeline, refiners, condition_faces, clips, condition)
        lse = score_rows(sync, scorer, MEASURE_SIZE)
        own = score_rows(sync, stages / "syncnet.safetensors", MEASURE_SIZE)
        scores[condition] = {row: {"per_clip": {k: v | lse[row]["per_clip"].get(k, {})
                                                | {"expert_lse_c": own[row]["per_clip"].get(k, {}).get("lse_c")}
                                                for k, v in measures.items()}}
                             for row, measures in per_clip.items()}
    return scores


def differences(rows: dict[str, dict], pairs: list[tuple[str, str]], speakers: dict[str, str]) -> dict[str, dict]:
    """{"a − b": {measure: (mean, low, high)}} of each pair of rows, paired over val speakers."""
    return {f"{a} − {b}": {m: paired_speaker_bootstrap(*both_finite(rows[a]["per_clip"], rows[b]["per_clip"], m),
                                                       speakers) for m in MEASURES}
            for a, b in pairs}


def report(scores: dict[str, dict], diffs: dict[str, dict], speakers: dict[str, str]) -> list[str]:
    lines = []
    for condition, rows in scores.items():
        lines += [f"\n{CONDITIONS[condition]}:", "| row | " + " | ".join(MEASURES) + " |",
                  "|---|" + "---|" * len(MEASURES)]
        lines += [f"| {row} | " + " | ".join(format_interval(*speaker_bootstrap(finite(r["per_clip"], m), speakers))
                                            for m in MEASURES) + " |" for row, r in rows.items()]
        lines += [f"- {pair}: " + ", ".join(f"{m} {format_interval(*d)}" for m, d in diff.items())
                  for pair, diff in diffs[condition].items()]
    return lines


def choice(means: dict[str, float], differences: dict[str, tuple[float, float, float]],
           default: str) -> tuple[str, bool]:
    """(the row with the highest mean, whether it ties with the default: the interval of its difference from the
    default, ``differences[row]``, contains 0)."""
    chosen = max(means, key=means.get)
    return chosen, chosen != default and differences[chosen][1] * differences[chosen][2] <= 0


def variants(parser: argparse.ArgumentParser, option: str, values: list[str] | None) -> tuple[list[Variant], Variant]:
    """(every value read, the small config's first; the small config's value) of ``option``, each value as the
    config reads it (``1`` of a float option is ``1.0``)."""
    from trainer.config import compose

    def value_of(*words: str) -> str:
        return str(functools.reduce(getattr, option.split("."), compose(["experiment=small", "stage=lip_enhancer",
                                                                          *words])))
    try:
        default = Variant(option, value_of())
    except AttributeError:
        parser.error(f"--option {option}: not an option of the lip enhancer's config (e.g. stage.sync_weight)")
    if values is None and option != DEFAULT_OPTION:
        parser.error(f"--option {option}: give the values to read with --values")
    read: dict[str, None] = {}
    for value in values or INPUT_SOURCES:
        try:
            read[value_of(f"{option}={value}")] = None
        except Exception as exc:  # the config's own message names the key and what it accepts
            parser.error(f"--values {value}: {exc}")
    others = [Variant(option, value) for value in read if value != default.value]
    if not others:
        parser.error(f"--values: only the small config's {default.word}; give another value")
    return [default, *others], default


def main(argv: list[str] | None = None) -> None:
    from common.files import atomic_write_text
    from reports.results import CORPUS, OUTPUT_ROOT, ensure_corpus
    from trainer.config import compose

    parser = argparse.ArgumentParser(prog="python -m reports.lips_val", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the stages' and the sampler's seed")
    parser.add_argument("--clips", type=int, default=CLIPS, help="val clips read, one per val speaker first")
    parser.add_argument("--option", default=DEFAULT_OPTION, help="the lip enhancer's option read (a config path)")
    parser.add_argument("--values", nargs="+", help="its values (default for stage.input_source: every source)")
    parser.add_argument("--out", type=Path, default=Path("outputs/lips-val"), help="where the JSON reading goes")
    args = parser.parse_args(argv)
    scorer = OUTPUT_ROOT / "small" / "scorer-stages" / "syncnet.safetensors"
    if not scorer.is_file():
        parser.error(f"no sync scorer at {scorer}: make it first with `make results NAMES=sync`")
    read_variants, default = variants(parser, args.option, args.values)
    ensure_corpus()
    stages = seed_stages(args.seed)
    folders = {v.label: train_variant(args.seed, v, default, stages) for v in read_variants}
    data = compose(["experiment=small", "stage=motion_diffusion", f"data.root={CORPUS}"]).data
    clips = test_clips(data, args.clips, split="val")
    speakers = {clip["key"]: clip["speaker"] for clip in clips}
    path = args.out / f"lips-{default.key}-seed{args.seed}.json"
    scores = read(folders, stages, clips, scorer, args.seed)
    atomic_write_text(path, json.dumps({"scores": scores}, default=float))  # kept should the summary below fail
    others = [v.label for v in read_variants if v != default]
    pairs = [(MOTION, TRUTH), *((v.label, MOTION) for v in read_variants),
             *((label, default.label) for label in others)]
    diffs = {condition: differences(rows, pairs, speakers) for condition, rows in scores.items()}
    condition, measure = DECIDING
    means = {v.label: statistics.mean(finite(scores[condition][v.label]["per_clip"], measure).values())
             for v in read_variants}
    against_default = {label: diffs[condition][f"{label} − {default.label}"][measure] for label in others}
    chosen, tie = choice(means, against_default, default.label)
    atomic_write_text(path, json.dumps({"split": "val", "clips": len(clips), "seed": args.seed, "option": args.option,
                                        "default": default.label, "chosen": chosen,
                                        "folders": {k: str(v) for k, v in folders.items()},
                                        "scores": scores, "differences": diffs, "speakers": speakers},
                                       indent=1, default=float))
    print("\n".join(report(scores, diffs, speakers)))
    verdict = f"a tie with the small config's {default.label}, which stands" if tie else "the choice"
    print(f"\nbest val {measure} ({CONDITIONS[condition]}): {chosen}, {verdict} ({len(clips)} val clips, "
          f"seed {args.seed}; {path})")


if __name__ == "__main__":
    main()
