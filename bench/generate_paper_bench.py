"""Speech -> 512 px video at paper scale on one CUDA GPU: frames/s of the output video and seconds per step.

The stages are built untrained from the paper configs (bench/untrained_stages.py: the SD-sized portrait and frame
UNets, the SD VAE architecture, the 256 -> 512 codebook); speed does not depend on the weights. One warm-up
generation (kernels, cuDNN autotuning) precedes the timed ones. Each row is one sampler setting; TF32 matmuls are
on, as a GPU user would run. A second table times the codebook renderer alone (256 -> 512 px) by batch.
Without a GPU it says so and exits; on a CPU the same code runs at the tiny scale with ``--scale=tiny``.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from bench.common import write_report
from bench.generate_bench import pipeline_row, renderer_rows
from bench.untrained_stages import PAPER, TINY, build_untrained_stages
from generation.pipeline import GenerationOptions

SECONDS = 30.0  # long enough that the first window's costs do not decide the rate
# (portrait steps, motion steps, frame steps per frame): reduced-step samplers, then the paper configs' own
SETTINGS = [(25, 10, 10), (50, 50, 50)]


def options(steps: tuple[int, int, int], device: str) -> GenerationOptions:
    portrait, motion, frame = steps
    return GenerationOptions(steps=portrait, motion_steps=motion, frame_steps=frame, seed=0, device=device,
                             batch_frames=32, precision="auto")  # the codebook at batch 32, bf16 on CUDA


def run(scale: str, stages_root: Path, settings: list[tuple[int, int, int]], seconds: float) -> None:
    """Build the stages, warm up, then one row per sampler setting; the report is rewritten after each row so
    that a run stopped early keeps what it measured."""
    device = "cuda" if scale == "paper" else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    stages = build_untrained_stages(stages_root / scale, PAPER if scale == "paper" else TINY)
    renderer = renderer_rows(stages, device, batches=(1, 8, 32), frames=64)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "none"
    notes = (f"GPU: {gpu}; {scale} scale, untrained stages built from the {scale} configs; {seconds:g} s of speech "
             f"at 25 fps; steps = portrait/motion/frame sampler steps; seconds exclude loading the stages; "
             f"s_first_frame = seconds until the first frames reach the mp4 writer; "
             f"video_fps = output frames per second of generation. Codebook renderer alone "
             f"({renderer[0]['size']} px): " + ", ".join(f"batch {r['batch_frames']}: {r['frames_s']} frames/s"
                                                          for r in renderer))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="seespeaker-bench-") as tmp:
        scratch = Path(tmp)
        pipeline_row(stages, scratch, options(settings[0], device), 1.0)  # warm-up
        for steps in settings:
            rows.append(pipeline_row(stages, scratch, options(steps, device), seconds))
            write_report(f"generate-{scale}", rows, list(rows[0]), notes=notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench generate_paper", description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("paper", "tiny"), default="paper")
    parser.add_argument("--stages", type=Path, default=Path(tempfile.gettempdir()) / "seespeaker-untrained-stages")
    parser.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--quick", action="store_true", help="only the first (reduced-step) sampler setting")
    args = parser.parse_args(argv if argv is not None else [])
    if args.scale == "paper" and not torch.cuda.is_available():
        print("generate_paper: no CUDA GPU here; this benchmark runs at paper scale on a GPU "
              "(or pass --scale=tiny to run the same code on the CPU)")
        return
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    run(args.scale, args.stages, SETTINGS[:1] if args.quick else SETTINGS, args.seconds)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
