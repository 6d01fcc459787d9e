"""``python -m reports.corpus_strip``: the README's picture of one synthetic clip (corpus version 2).

Eight frames of one clip, in time order, picked where a motion peaks (brows raised, gaze to either side, a nod, the
jaw open, a blink) and one at rest, each captioned with its time and its stored truth; under them the clip's
per-frame truth (``motion_truth.npy``) with the picked frames marked. Same seed, same picture.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from common.media import write_png
from datamodules.sample import FPS, MOTION_TRUTH_COLUMNS
from datamodules.synth_face import base_layer
from datamodules.synthetic import SyntheticConfig, draw_speaker, make_clip

OUT = Path("docs/images/corpus_v2_strip.png")
COLUMN = {name: i for i, name in enumerate(MOTION_TRUTH_COLUMNS)}


def picked_frames(truth: np.ndarray) -> list[tuple[int, str]]:
    """(frame, why) for the frames the strip shows, in time order, each frame once."""
    rest = np.abs(truth[:, [COLUMN["brow_raise"], COLUMN["gaze_x"], COLUMN["nod"], COLUMN["jaw"],
                            COLUMN["blink"]]]).sum(1)
    wanted = [(int(np.argmin(rest)), "at rest"), (int(np.argmax(truth[:, COLUMN["brow_raise"]])), "brows up"),
              (int(np.argmin(truth[:, COLUMN["gaze_x"]])), "gaze left"),
              (int(np.argmax(truth[:, COLUMN["gaze_x"]])), "gaze right"),
              (int(np.argmax(truth[:, COLUMN["nod"]])), "nod"), (int(np.argmax(truth[:, COLUMN["jaw"]])), "jaw open"),
              (int(np.argmax(truth[:, COLUMN["blink"]])), "blink")]
    seen, out = set(), []
    for frame, why in wanted:
        if frame not in seen:
            seen.add(frame)
            out.append((frame, why))
    return sorted(out)


def strip(seed: int = 0, speaker: int = 0, clip: int = 1, seconds: float = 6.0, resolution: int = 256) -> np.ndarray:
    """The picture (uint8 RGB) of one clip of corpus version 2."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    face = draw_speaker(seed, speaker)
    base = base_layer(face.face, resolution, np.random.default_rng([seed, speaker, 0]), brows=False)
    made = make_clip(face, base, SyntheticConfig(seconds=seconds, resolution=resolution, seed=seed), clip, "train")
    truth, frames = made.motion_truth, made.frames
    picks = picked_frames(truth)
    crop = slice(int(0.12 * resolution), int(0.82 * resolution)), slice(int(0.15 * resolution), int(0.85 * resolution))
    fig = plt.figure(figsize=(2.2 * len(picks), 5.6), dpi=110)
    grid = fig.add_gridspec(2, len(picks), height_ratios=[1.25, 1.0], hspace=0.35, wspace=0.04)
    for i, (frame, why) in enumerate(picks):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(frames[frame][crop])
        ax.set_axis_off()
        row = truth[frame]
        ax.set_title(f"{frame / FPS:.2f} s: {why}\nbrow {row[COLUMN['brow_raise']]:.2f} nod {row[COLUMN['nod']]:.2f}\n"
                     f"gaze {row[COLUMN['gaze_x']]:+.2f},{row[COLUMN['gaze_y']]:+.2f} jaw {row[COLUMN['jaw']]:.2f}",
                     fontsize=7)
    ax = fig.add_subplot(grid[1, :])
    time = np.arange(len(truth)) / FPS
    for name in ("jaw", "brow_raise", "expression", "gaze_x", "gaze_y", "nod", "blink"):
        ax.plot(time, truth[:, COLUMN[name]], label=name, linewidth=1)
    for frame, _ in picks:
        ax.axvline(frame / FPS, color="0.6", linewidth=0.6, linestyle="--")
    ax.set_xlabel("seconds")
    ax.set_xlim(0, time[-1])
    ax.legend(ncol=7, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 1.18), frameon=False)
    ax.set_title(f"motion_truth.npy of the clip (mood {made.meta.extra['mood']:+.2f})", fontsize=8, pad=18)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    from PIL import Image
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where the PNG goes (default {OUT})")
    parser.add_argument("--speaker", type=int, default=0, help="speaker index of corpus seed 0 (default 0)")
    parser.add_argument("--clip", type=int, default=1, help="clip index of the speaker (default 1)")
    args = parser.parse_args(argv)
    write_png(args.out, strip(speaker=args.speaker, clip=args.clip))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
