"""Preparation throughput: clips/s per worker at 256 and 512 px and the 1 -> 2 worker scaling.

Builds a small VoxCeleb2-layout corpus of animated real-photo videos (H.264 + AAC, 384 x 384, 25 fps), then
runs the real preparation (decode, dlib tracking, aligned crop, JPEG/FLAC encoding, shard writing) at each
resolution with 1 and 2 workers. Writes ``bench/out/prepare.json``.

Wall-clock rates depend on what else the machine runs; clips per CPU-second (this process and the
workers' time on the sources) does much less, and the load average at each measurement is recorded beside it.

Run: python -m bench.prepare_bench [--sources 8] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out" / "prepare.json"


def make_corpus(root: Path, sources: int, seconds: float, size: int) -> None:
    from datamodules.prepare import testmedia

    for i in range(sources):
        path = root / "dev" / "mp4" / f"id{i:05d}" / f"bench{i:07d}" / "00001.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        testmedia.write_video(path, seconds, size=size, seed=i)


def pool_start_seconds(workers: int) -> float:
    """Seconds until a fresh pool has every worker ready (0 for one worker: it works in this process)."""
    from datamodules.prepare.runner import _pool

    start = time.perf_counter()
    with _pool(workers) as pool:
        if pool is not None:
            pool.map(abs, range(workers), chunksize=1)
        return time.perf_counter() - start


def measure(root: Path, out: Path, resolution: int, workers: int) -> dict:
    from datamodules.prepare.listing import list_voxceleb2
    from datamodules.prepare.process import PrepareOptions
    from datamodules.prepare.runner import run

    options = PrepareOptions(resolution=resolution, clip_seconds=0)
    cpu_before = _cpu_seconds()
    start = time.perf_counter()
    summary = run(list_voxceleb2(root), out, "voxceleb2", options, workers=workers, shard_size=64, progress=False)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu_before
    if workers > 1:
        cpu += summary.work_cpu_seconds  # the pool's workers are the fork server's children, not ours
    if summary.skipped:
        raise RuntimeError(f"benchmark sources were skipped: {summary.skipped}")
    startup = pool_start_seconds(workers)
    rate = summary.clips / seconds
    steady = summary.clips / max(seconds - startup, 1e-6)
    return {"resolution": resolution, "workers": workers, "clips": summary.clips, "seconds": round(seconds, 3),
            "clips_per_s": round(rate, 3), "clips_per_s_per_worker": round(rate / workers, 3),
            "pool_start_s": round(startup, 3), "steady_clips_per_s": round(steady, 3),
            "steady_clips_per_s_per_worker": round(steady / workers, 3),
            "cpu_seconds": round(cpu, 3), "clips_per_cpu_s": round(summary.clips / cpu, 3),
            "load_average": round(os.getloadavg()[0], 2)}


def _cpu_seconds() -> float:
    """CPU time of this process (for one worker: all the work; for a pool: writing shards)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=8, help="videos in the benchmark corpus (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per video (default 3)")
    parser.add_argument("--size", type=int, default=384, help="source frame size in pixels (default 384)")
    parser.add_argument("--out", default=str(OUT), help=f"JSON result path (default {OUT})")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="prepare-bench-") as tmp:
        corpus = Path(tmp) / "corpus"
        make_corpus(corpus, args.sources, args.seconds, args.size)
        from datamodules.prepare import faces

        faces.models()  # one worker works in this process: load the models before timing, as the pool does
        for resolution in (256, 512):
            for workers in (1, 2):
                row = measure(corpus, Path(tmp) / f"out-{resolution}-{workers}", resolution, workers)
                rows.append(row)
                print(f"{resolution} px, {workers} worker(s): {row['clips_per_s']:.2f} clips/s "
                      f"({row['clips_per_s_per_worker']:.2f} per worker; without the pool's start "
                      f"{row['steady_clips_per_s_per_worker']:.2f} per worker; "
                      f"{row['clips_per_cpu_s']:.2f} per CPU-second, "
                      f"{row['clips']} clips of {args.seconds:g} s, load average {row['load_average']})")
    scaling = {}
    for resolution in (256, 512):
        one, two = (next(r for r in rows if r["resolution"] == resolution and r["workers"] == w) for w in (1, 2))
        scaling[str(resolution)] = {"wall": round(two["clips_per_s"] / one["clips_per_s"], 3),
                                    "steady": round(two["steady_clips_per_s"] / one["steady_clips_per_s"], 3)}
        print(f"{resolution} px: 1 -> 2 workers speed-up {scaling[str(resolution)]['wall']:.2f}x "
              f"({scaling[str(resolution)]['steady']:.2f}x without the pool's start)")
    result = {"benchmark": "prepare", "rows": rows, "scaling_1_to_2": scaling, "sources": args.sources,
              "seconds_per_source": args.seconds, "source_size": args.size, "cpu_count": os.cpu_count(),
              "machine": platform.machine(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
