"""The data path at paper scale: samples per CPU-second of each stage's training reader, against what a GPU step
consumes, and the loader workers per GPU that keep the data wait under 5%.

Each stage's paper config (its window: a frame and 2 s of audio at 256 px for a portrait stage, 20 frames for the
motion stage, 256 + 512 px pairs for the codebook, read from a corpus written at 512 and never upsampled) reads in
this process with no workers and one thread, for ``--seconds`` of CPU time after its first batch. The rate is per
CPU-second (``time.process_time``), so it is the rate of one loader worker on one core, and holds on a busy
machine. What a GPU step consumes is taken from the training benchmark's GPU results (``bench/results/train-paper-
*.json``, framework samples/s); a stage without one gets no worker count.

``python -m bench data_path [--stages=a,b] [--seconds=S]``; JSON to ``bench/out/data_path.json``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from bench.common import bench_corpus, write_report
from bench.train_setup import STAGES, short_buffer, stage_words
from datamodules.datamodule import ShardDataModule
from datamodules.synthetic import SyntheticConfig
from trainer.config import compose

RESULTS = Path(__file__).resolve().parent / "results"
HEADROOM = 1.05  # the loader produces 5% more than the step consumes: the wait stays under 5% as rates jitter
COLUMNS = ["stage", "window", "batch", "samples_per_core_s", "gpu_samples_s", "gpu", "workers_per_gpu"]


def corpus_for(resolution: int) -> Path:
    """A synthetic corpus written at ``resolution`` (the 256 px one is the benchmarks' own)."""
    if resolution <= 256:
        return bench_corpus()
    return bench_corpus(Path(f"data/synthetic_{resolution}"),
                        SyntheticConfig(speakers=6, clips_per_speaker=4, resolution=resolution))


def window_words(data) -> str:
    size = f"{data.resolution}" + (f" + {data.hr_resolution}" if data.hr_resolution else "")
    return f"{data.clip_frames} frame{'s' if data.clip_frames > 1 else ''} at {size} px, {data.audio_seconds:g} s audio"


def samples_per_cpu_second(data_cfg, seed: int, seconds: float) -> float:
    """Samples the reader delivers per second of this process's CPU time, after its first batch."""
    data = ShardDataModule(short_buffer(data_cfg), seed=seed)
    data.setup("fit")
    iterator = iter(data.train_dataloader())
    next(iterator)
    start, samples = time.process_time(), 0
    while time.process_time() - start < seconds:
        samples += len(next(iterator)["valid"])
    return samples / (time.process_time() - start)


def gpu_consumption(stage: str) -> tuple[float, str]:
    """The newest GPU training benchmark's framework samples/s for ``stage`` (0 where none was measured)."""
    for path in sorted(RESULTS.glob("train-paper-*.json"), reverse=True):
        report = json.loads(path.read_text())
        for row in report.get("rows", []):
            if row.get("stage") == stage and row.get("mfu") not in ("", None):
                return float(row["framework_samples_s"]), report["machine"].split(", ")[-1]
    return 0.0, ""


def measure(stage: str, root: Path, seconds: float) -> dict:
    probe = compose(stage_words(stage, "paper", root, 1, []))
    corpus = corpus_for(max(probe.data.resolution, probe.data.hr_resolution))
    cfg = compose(stage_words(stage, "paper", root, 1, [f"data.root={corpus}", "data.num_workers=0"]))
    rate = samples_per_cpu_second(cfg.data, cfg.experiment.seed, seconds)
    consumed, gpu = gpu_consumption(stage)
    return {"stage": stage, "window": window_words(cfg.data), "batch": cfg.data.batch_size,
            "samples_per_core_s": round(rate, 1), "gpu_samples_s": round(consumed, 1) if consumed else "",
            "gpu": gpu, "workers_per_gpu": math.ceil(HEADROOM * consumed / rate) if consumed else ""}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench data_path", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages")
    parser.add_argument("--seconds", type=float, default=8.0, help="CPU seconds of reading per stage")
    args = parser.parse_args(argv or [])
    torch.set_num_threads(1)
    root = Path("bench/out/data_path")
    rows = [measure(stage, root, args.seconds) for stage in args.stages.split(",")]
    write_report("data_path", rows, COLUMNS,
                 notes=f"paper configs, one process, no workers, one thread; samples per CPU-second after the first "
                       f"batch, {args.seconds:g} s each; workers_per_gpu = ceil({HEADROOM} x GPU samples/s / "
                       f"samples per core-second), where a GPU rate was measured")
