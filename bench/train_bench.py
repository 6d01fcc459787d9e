"""Training throughput: a real ``seespeaker train`` against a bare PyTorch loop doing the same math.

``python -m bench train [--stage=S ...] [--scale=tiny|small|paper] [--pairs=5] [--steps=100] [--warmup=10]
[--set=KEY=VALUE ...] [--save=TAG]``

Per stage, both sides run on the same preloaded batches in one process with the same threads, interleaved
(bare, framework, bare, framework, ...): ``--pairs`` pairs of ``--steps`` timed steps after ``--warmup`` steps. The
framework side is the Trainer built by ``trainer.factory.build_run`` with its default callbacks (validation, media
and checkpoint intervals set past the run's end); the bare side is ``bench.train_loops.BareLoop``. Reported: the
median per-pair ratio (bare time / framework time: 1.0 means no overhead) with a 95% bootstrap interval,
samples/s of both sides, the data wait (the real reader timed alone: what a step waits for its batch), peak GPU
memory, GFLOP per step (all, and of the networks that train) and, on a GPU, the MFU of the trained networks at
989 TFLOP/s (H100/H200 dense bf16). ``--set`` passes overrides to both sides (``--set=trainer.compile=true``,
``--set=trainer=deepspeed_zero2``, ``--set=trainer.devices=1``). ``--save=TAG`` also writes
``bench/results/train-<scale>-<date>-<TAG>.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from bench.common import write_report
from bench.train_loops import autocast_for, bare_module, bare_window, framework_window, use_clock
from bench.train_setup import (
    STAGES,
    counted_flops,
    device_of,
    preload,
    prepare_stages,
    reader_seconds_per_batch,
    stage_words,
)
from bench.train_stats import data_wait_s, meets, mfu, summarize
from trainer.config import compose
from trainer.factory import apply_speed_knobs

COLUMNS = ["stage", "ratio", "interval", "bare_ms", "framework_ms", "bare_samples_s", "framework_samples_s",
           "data_wait_ms", "peak_gb", "gflop_step", "trained_share", "mfu"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench train")
    parser.add_argument("--stage", action="append", choices=STAGES, help="stage(s); all by default")
    parser.add_argument("--scale", default="small", choices=("tiny", "small", "paper"))
    parser.add_argument("--pairs", type=int, default=5, help="0: only build the earlier stages (with --workdir)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batches", type=int, default=4, help="distinct preloaded batches")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--reader-seconds", type=float, default=20.0, help="time budget of the reader's own timing")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0")) or None)
    parser.add_argument("--clock", default="wall", choices=("wall", "process"),
                        help="process: CPU time of this process, a diagnostic for a shared machine (one thread)")
    parser.add_argument("--workdir", default="", help="keep the untrained earlier stages here (reused by later runs)")
    parser.add_argument("--save", default="", metavar="TAG", help="also write the JSON under bench/results/")
    return parser.parse_args(argv)


@contextlib.contextmanager
def quiet():
    """Lightning's and the run's own messages off the terminal (they still run, inside the timed window too)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def bench_stage(stage: str, args: argparse.Namespace, root: Path) -> dict:
    total = args.warmup + args.steps
    words = stage_words(stage, args.scale, root, total, args.overrides)
    started = time.time()

    def phase(name: str) -> None:
        print(f"  {stage}: {name} at {time.time() - started:.1f} s", flush=True)

    with quiet():
        prepare_stages(stage, args.scale, root, log=lambda *_: None)
    phase("earlier stages ready")
    cfg = compose(words)
    device = device_of(cfg)
    batches = preload(cfg, args.batches, device)
    phase("batches preloaded")
    batch_s = reader_seconds_per_batch(cfg, budget_s=args.reader_seconds)
    phase("reader timed")
    with quiet():
        bare = bare_module(cfg, device, knobs=False)
        flops, trained = counted_flops(bare, batches[0], autocast_for(cfg, device), root / f"flops-{stage}.json")
        apply_speed_knobs(bare, cfg.trainer)
    phase("FLOPs counted")
    pairs, framework = [], None
    for index in range(args.pairs):
        with quiet():
            bare_side, bare = bare_window(words, batches, args.warmup, args.steps, device, bare)
        if index == 0:
            phase("first bare window done")  # with trainer.compile, most of it is the compilation
        with quiet():
            framework_side, framework = framework_window(words, batches, args.warmup, args.steps, device, framework)
        pair = (bare_side, framework_side)
        pairs.append(pair)
        print(f"  {stage} pair {index + 1}/{args.pairs}: bare {pair[0].step_s * 1e3:.1f} ms/step, "
              f"framework {pair[1].step_s * 1e3:.1f} ms/step", flush=True)
    summary = summarize(pairs)
    step_s = summary["framework_step_ms"] / 1e3
    return {
        "stage": stage, "ratio": round(summary["ratio"], 3),
        "interval": f"[{summary['ratio_low']:.3f}, {summary['ratio_high']:.3f}]",
        "bare_ms": round(summary["bare_step_ms"], 2), "framework_ms": round(summary["framework_step_ms"], 2),
        "bare_samples_s": round(summary["bare_samples_s"], 1),
        "framework_samples_s": round(summary["framework_samples_s"], 1),
        "data_wait_ms": round(1e3 * data_wait_s(batch_s, step_s, cfg.data.num_workers), 1),
        "reader_batch_ms": round(1e3 * batch_s, 1), "workers": cfg.data.num_workers,
        "peak_gb": round(max(summary["bare_peak_gb"], summary["framework_peak_gb"]), 2),
        "gflop_step": round(flops / 1e9, 2), "trained_share": round(trained / flops, 3) if flops else 0.0,
        "mfu": round(mfu(trained, step_s), 4) if device.type == "cuda" else "",
        "meets": meets(summary), "batch": cfg.data.batch_size, "precision": cfg.trainer.precision,
        "ratios": [round(b.seconds / f.seconds, 4) for b, f in pairs],
    }


def main(argv: list[str] | None = None) -> None:
    args = parse(argv or [])
    if args.threads:
        torch.set_num_threads(args.threads)
    use_clock(args.clock)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning_fabric").setLevel(logging.ERROR)
    os.environ.setdefault("SEESPEAKER_PLAIN_LOGS", "1")
    stages = args.stage or list(STAGES)
    root = Path(args.workdir or tempfile.mkdtemp(prefix="train-bench-")).resolve()
    rows, start = [], time.time()
    try:
        for stage in stages:
            if args.pairs == 0:
                with quiet():
                    prepare_stages(stage, args.scale, root, log=lambda *_: None)
                continue
            rows.append(bench_stage(stage, args, root))
    finally:
        shutil.rmtree(root / "runs", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(root, ignore_errors=True)
    if not rows:
        return
    notes = (f"scale {args.scale}; {args.pairs} pairs of {args.steps} steps after {args.warmup} warm-up steps, "
             f"bare then framework in each pair; ratio = bare time / framework time, median over pairs with a 95% "
             f"bootstrap interval; threads {torch.get_num_threads()}; {args.clock} clock; "
             f"overrides {args.overrides or 'none'}; "
             f"{time.time() - start:.0f} s in all")
    path = write_report(f"train-{args.scale}", rows, COLUMNS, notes)
    if args.save:
        out = Path("bench/results") / f"train-{args.scale}-{time.strftime('%Y-%m-%d')}-{args.save}.json"
        out.write_text(path.read_text())
        print(f"wrote {out}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
