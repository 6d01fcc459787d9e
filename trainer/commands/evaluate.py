"""``seespeaker evaluate``: score videos (generated, given, or the ground truth) under a metric protocol."""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from common.errors import SeespeakerError, UserError
from evaluation.protocol import LSE_FRAMES, TRUTH_METRICS
from trainer import provenance
from trainer.cli import add_command


def load_protocol(args: argparse.Namespace):
    """The protocol file named by --protocol, with the command-line choices applied."""
    from evaluation.protocol import EvalProtocol, with_overrides
    from trainer.config import ConfigError, load_group_file

    try:
        protocol = load_group_file("eval", args.protocol, EvalProtocol)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    overrides = {"metrics": metrics, "syncnet_weights": args.syncnet_weights, "project_expert": args.project_expert,
                 "arcface_weights": args.arcface, "inception_weights": args.inception, "max_clips": args.max_clips,
                 "fid_frame_stride": args.frame_stride, "csim_frame_stride": args.frame_stride,
                 "lse_frames": args.lse_frames}
    try:
        return with_overrides(protocol, overrides)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def stages_dir_of(source: str | None) -> Path | None:
    """An exported stages folder as given, or the stages folder a training run folder names in its config."""
    if not source:
        return None
    path = Path(source)
    if not path.exists():
        raise UserError(f"{path} does not exist; give an exported stages folder or a training run folder")
    if path.is_file():
        raise UserError(f"{path} is a file; give the folder of exported stage files (`seespeaker export <run folder>` "
                        "writes them from a checkpoint) or the training run folder")
    if (path / "config.yaml").is_file():
        from trainer.runs import load_run

        stages = load_run(path).config.get("run.stages_dir")
        if not stages:
            raise UserError(f"{path}/config.yaml names no run.stages_dir; give the stages folder itself")
        if not Path(stages).is_dir():
            raise UserError(f"{path}/config.yaml names run.stages_dir {stages}, which is not a folder here; give the "
                            "stages folder itself (relative paths are read from the current folder)")
        return Path(stages)
    return path


def files_digest(paths: list[Path]) -> str:
    """One sha256 over the names and contents of ``paths``: two results of one folder tell whether it changed."""
    from evaluation.fid import file_sha256

    lines = sorted(f"{p.name} {file_sha256(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def collect(args: argparse.Namespace, protocol, test, stages: Path | None):
    """The VideoSet to score and a description of where it came from."""
    from evaluation import sources

    if args.videos:
        videos = sources.videos_from_dir(args.videos, protocol, test)
        return videos, {"kind": "videos", "path": args.videos, "videos_sha256": files_digest(
            [Path(v.source) for v in videos.videos] + [Path(s["video"]) for s in videos.skipped])}
    if args.ground_truth:
        return sources.videos_from_truth(test, protocol), {"kind": "ground_truth", "path": str(test.root)}
    if stages is None:
        raise UserError("nothing to score: give an exported stages folder or run folder (generates the test "
                        "videos), --videos DIR, or --ground-truth")
    from evaluation.generation import load_generator

    generate, info = load_generator(stages, args.device)
    return sources.videos_from_generator(test, protocol, generate), {"kind": "generated", **info}


def evaluate(args: argparse.Namespace) -> int:
    """Score talking-face videos: LSE-C/D, FID, CSIM, PSNR/SSIM -> results.json + results.md.

    What is scored: an exported stages folder or a training run folder (the test clips' speech is turned into
    videos by the speech-to-video pipeline), --videos DIR (mp4 files with audio, as they are; name them
    <sample key>.mp4 to pair them with ground truth), or --ground-truth (the real test clips: the reference row).
    The protocol (configs/eval/<name>.yaml or a path) fixes the sync expert, crop and resize modes, fps and seed;
    every value is written with it. Examples:
      seespeaker evaluate --ground-truth --data data/synthetic --protocol synthetic \\
          --project-expert stages/syncnet.safetensors --out eval/gt
      seespeaker evaluate --videos generated/ --data data/hdtf --protocol default \\
          --syncnet-weights syncnet_v2.model --out eval/ours
      seespeaker evaluate --videos generated/ --metrics lse --syncnet-weights syncnet_v2.model --out eval/lse
          (no shards: LSE and mouth_sync need only the files; --lse-frames jpeg scores the frames as
          syncnet_python's run_syncnet.py extracts them)
      seespeaker evaluate --compare eval/gt eval/ours
    """
    from evaluation.report import ResultsReadError, compare

    if args.compare:
        try:
            print(compare(args.compare))
        except ResultsReadError as exc:
            raise UserError(str(exc)) from None
        return 0
    if not args.out:
        raise UserError("--out DIR is required: the folder results.json and results.md go to (or use --compare A B)")
    if args.videos and args.ground_truth:
        raise UserError("give either --videos DIR or --ground-truth, not both")
    return run_evaluation(args)


def run_evaluation(args: argparse.Namespace) -> int:
    """Collect, score, write; user errors from the evaluation become one message."""
    from evaluation.report import ResultsReadError, build_results, log_to_wandb, write_results
    from evaluation.runner import evaluate as score
    from evaluation.sources import TestSet

    protocol = load_protocol(args)
    stages = stages_dir_of(args.source)
    truth_metrics = [m for m in protocol.metrics if m in TRUTH_METRICS]
    if not args.data and (not args.videos or truth_metrics):
        need = (f"the metrics {', '.join(truth_metrics)} compare with the real test clips" if args.videos else
                "the test clips' speech and ground truth come from it")
        raise UserError(f"--data <test shards root> is required here: {need}; with --videos, --metrics "
                        f"lse,mouth_sync scores the files without shards")
    try:
        test = TestSet(args.data, args.split, protocol.resolution) if args.data else None
        videos, source = collect(args, protocol, test, stages)
        source.update({"data": str(args.data) if args.data else None, "split": args.split,
                       "test_set_sha256": test.digest(test.keys()) if test else None,
                       "label": args.label or source["kind"]})
        scores = score(videos, protocol, test, stages, args.fid_cache, args.device)
    except (SeespeakerError, FileNotFoundError, ImportError) as exc:
        raise UserError(str(exc)) from None
    results = build_results(scores, videos, protocol, source, argv=sys.argv, provenance=provenance.collect())
    json_path, md_path, kept = write_results(results, args.out)
    for skip in results["skipped"] + results["shard_skipped"]:
        print(f"skipped {skip['video']}: {skip['reason']}", file=sys.stderr)
    for metric, reason in results["not_computed"].items():
        print(f"{metric} not computed: {reason}", file=sys.stderr)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}" + (f" (the earlier results are kept as {kept})" if kept else ""))
    if args.wandb_run_dir:
        try:
            run_id = log_to_wandb(results, args.wandb_run_dir)
        except ResultsReadError as exc:
            raise UserError(str(exc)) from None
        write_results(results, args.wandb_run_dir)
        print(f"appended to W&B run {run_id} ({args.wandb_run_dir})")
    return 0


def register(subparsers) -> None:
    parser = add_command(subparsers, "evaluate", evaluate)
    parser.add_argument("source", nargs="?", help="exported stages folder or training run folder (generates videos; "
                        "with --videos/--ground-truth it only supplies the project's sync expert)")
    parser.add_argument("--videos", help="folder of mp4 files with audio to score as they are")
    parser.add_argument("--ground-truth", action="store_true", help="score the real test clips (the reference row)")
    parser.add_argument("--data", help="root of the prepared test shards (index.json)")
    parser.add_argument("--split", default="test", help="split of --data to score (default: test)")
    parser.add_argument("--protocol", default="default", help="configs/eval/NAME or a YAML path (default: default)")
    parser.add_argument("--metrics", help="comma list overriding the protocol: lse,fid,csim,psnr,ssim,mouth_sync")
    parser.add_argument("--lse-frames", choices=LSE_FRAMES, default=None,
                        help="frames SyncNet scores: decoded as they are, or jpeg: through ffmpeg's default JPEG "
                             "extraction first, as syncnet_python's run_syncnet.py reads them")
    parser.add_argument("--syncnet-weights", help="official syncnet_v2.model")
    parser.add_argument("--project-expert", "--sync-expert", dest="project_expert", metavar="PATH",
                        help="the project's exported syncnet.safetensors (protocol.project_expert; the protocol's "
                        "sync_expert says which expert scores LSE)")
    parser.add_argument("--arcface", help="ArcFace ONNX (w600k_r50.onnx) for CSIM")
    parser.add_argument("--inception", help="TorchScript Inception 2015-12-05 file for FID")
    parser.add_argument("--max-clips", type=int, default=None, help="score a seeded subset of N clips")
    parser.add_argument("--frame-stride", type=int, default=None,
                        help="FID and CSIM use every n-th frame (a quick look; published numbers use 1)")
    parser.add_argument("--fid-cache", help="folder of cached real FID statistics (default: <data>/fid_stats)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--label", help="name of this row in results.md (default: the source kind)")
    parser.add_argument("--out", help="folder for results.json and results.md")
    parser.add_argument("--wandb-run-dir", help="also append the results to this training run's W&B run")
    parser.add_argument("--compare", nargs="+", metavar="RESULTS", help="print several results side by side")
