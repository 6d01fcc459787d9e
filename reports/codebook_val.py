"""``python -m reports.codebook_val --stages DIR [DIR ...]``: the val reading that chooses the codebook renderer's
recipe and default fidelity, through the table's own measurement path (:mod:`reports.results_codebook_eval`) on val
clips, never on test ones.

Each stages folder holds a renderer (``codebook.safetensors``) and the motion stage that makes its stage-2 inputs.
For both val sets (stage 2 and degraded) every row gets PSNR, SSIM, FID (every frame), KID (every STRIDE-th frame,
subsets of half of them) and identity to the real frame; there is no temporal row. The readings are written as JSON
under ``--out`` and printed as one table per set. The small config's choices read this way are listed under the
codebook table (``CHOICES`` in reports/choices.py).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from reports import results_codebook_eval as ev

COLUMNS = (("psnr", "PSNR"), ("ssim", "SSIM"), ("fid", "FID"), ("kid", "KID×10³"), ("identity_dlib", "id dlib"),
           ("identity_conre", "id judge"), ("detail", "|detail|"))


def reading(clips: int, fidelities: tuple[float, ...], detail_scales: tuple[float, ...] = ()) -> ev.Reading:
    strided = clips * ev.FRAMES_PER_CLIP // ev.STRIDE
    return ev.Reading(split="val", max_clips=clips, fidelities=fidelities, detail_scales=detail_scales,
                      fid_every_row=True, kid_subset=max(2, strided // 2))


def summary(result: dict) -> dict[str, dict[str, dict[str, float | None]]]:
    """{set: {row: {metric: value}}} with KID as its mean ×10³."""
    out = {}
    for name, scores in result["sets"].items():
        out[name] = {row: {metric: 1000 * values["kid"]["kid"] if metric == "kid" else values.get(metric)
                           for metric, _ in COLUMNS} for row, values in scores["rows"].items()}
    return out


def table(label: str, rows: dict[str, dict[str, float | None]]) -> list[str]:
    lines = [f"| {label} | " + " | ".join(title for _, title in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row, values in rows.items():
        cells = ("—" if values[m] is None else f"{values[m]:.4g}" for m, _ in COLUMNS)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    from common.files import atomic_write_text
    from reports.results import CORPUS, SMALL
    from reports.results_portrait_table import judge_file
    from trainer.config import compose

    parser = argparse.ArgumentParser(prog="python -m reports.codebook_val", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=Path, nargs="+", required=True, help="stages folders, one per renderer")
    parser.add_argument("--clips", type=int, default=32, help="val clips read (16 frames each)")
    parser.add_argument("--fidelities", type=float, nargs="+", default=[0.5, 0.75, 1.0],
                        help="fidelities read besides each renderer's default")
    parser.add_argument("--detail-scales", type=float, nargs="*", default=[],
                        help="residual head detail scales read at each renderer's default fidelity besides its own")
    parser.add_argument("--seed", type=int, default=0, help="the stage-2 re-rendering's seed")
    parser.add_argument("--data", type=Path, default=CORPUS, help="the corpus whose val split is read")
    parser.add_argument("--judge", type=Path, default=judge_file(SMALL), help="the independent ConRe judge's file")
    parser.add_argument("--out", type=Path, default=Path("outputs/codebook-val"), help="where the JSON readings go")
    args = parser.parse_args(argv)
    for stages in args.stages:
        if not (stages / "codebook.safetensors").is_file():
            parser.error(f"--stages {stages}: no codebook.safetensors there; give a folder with a trained renderer "
                         f"and its motion stage")
    data = compose(["experiment=small", "stage=codebook", f"data.root={args.data}"]).data
    for stages in args.stages:
        result = ev.evaluate_codebook(stages, None, args.judge, data, args.seed,
                                      reading=reading(args.clips, tuple(args.fidelities), tuple(args.detail_scales)))
        readings = summary(result)
        path = args.out / f"{stages.name}.json"
        atomic_write_text(path, json.dumps({"stages": str(stages), "frames": result["frames"], "sets": readings,
                                            "training": result["training"]}, indent=1))
        print(f"{stages} ({result['frames']} val frames; {path})")
        for name, rows in readings.items():
            print("\n".join(table(name, rows)) + "\n")


if __name__ == "__main__":
    main()
