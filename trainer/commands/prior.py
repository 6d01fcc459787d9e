"""``seespeaker prior``: the statistical face prior (mean VAE latent, optional PCA) over the training shards."""
from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from common.errors import SeespeakerError, UserError
from trainer.cli import add_command
from trainer.commands import check_output, replacing


def stream_face_latents(shards: list[str], counts: list[int], vae, scaling_factor: float, resolution: int,
                        batch_size: int, workers: int, stats: dict) -> Iterator[torch.Tensor]:
    """Scaled latents of the first frame of every clip, each clip read once; counts skipped samples in ``stats``."""
    from torch.utils.data import DataLoader

    from datamodules.pipeline import ClipStream, ClipWindow
    from lightning_modules.autoencoder import encode_latents

    window = ClipWindow(frames=1, resolution=resolution, audio_samples=640)
    stream = ClipStream(shards, window, batch_size, train=False, shard_counts=counts)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    with torch.no_grad():
        for batch in loader:
            stats["skipped"] += int(batch.get("skipped", 0))
            valid = batch["valid"]
            if not valid.any():
                continue
            stats["faces"] += int(valid.sum())
            yield encode_latents(vae, batch["frames"][valid, 0], scaling_factor).double()


def vae_resolution(stage_file, override: int) -> int:
    """The face size the VAE was trained on: ``--resolution`` or the autoencoder run's data.resolution."""
    if override:
        return override
    run_config = stage_file.provenance.get("run_config") or {}
    resolution = (run_config.get("data") or {}).get("resolution")
    if not resolution:
        raise UserError(f"{stage_file.path} does not record the face resolution it was trained on; "
                        f"pass --resolution (the data.resolution of the portrait stage)")
    return int(resolution)


def prior(args: argparse.Namespace) -> int:
    """Compute the face prior: the float64 mean VAE latent of the training faces (+ top-k PCA with --pca).

    Streams the training split of the shard set through the exported autoencoder (bounded memory: one batch
    plus, with --pca, a D x D scatter matrix) and writes a safetensors file with its provenance (the shards,
    the face count and the VAE's hash), replacing an earlier --out (said so) once it is complete. The portrait
    stage reads <stages>/face_prior.safetensors by default.
    Example: seespeaker prior --data data/synthetic --stages outputs/tiny/stages \\
      --out outputs/tiny/stages/face_prior.safetensors
    """
    from datamodules.shards import ShardIndex
    from lightning_modules.autoencoder import AutoencoderStage
    from lightning_modules.prior import FacePriorError, compute_face_prior
    from lightning_modules.stagefile import StageFiles

    if args.pca < 0 or args.workers < 0 or args.batch_size < 1:
        raise UserError("--pca and --workers must be >= 0 and --batch-size >= 1")
    replaces = check_output("--out", args.out, "face_prior.safetensors")
    try:
        index = ShardIndex.load(args.data)
        infos = index.splits.get(args.split) or []
        shards = index.shard_paths(args.data, args.split)
        stages = StageFiles(args.stages, needed_by="the face prior")
        stage_file = stages["autoencoder"]
        vae, scaling, vae_hash = AutoencoderStage.for_inference(stages)
    except SeespeakerError as exc:
        raise UserError(str(exc)) from None
    present = [(p, i.count) for p, i in zip(shards, infos, strict=True) if Path(p).is_file()]
    if len(present) < len(shards):
        print(f"warning: {len(shards) - len(present)} of {len(shards)} {args.split} shards listed in "
              f"{args.data}/index.json are missing and were skipped")
    if not present:
        raise UserError(f"none of the {args.split} shards of {args.data} exist; re-run `seespeaker prepare`")
    resolution = vae_resolution(stage_file, args.resolution)
    stats = {"faces": 0, "skipped": 0}
    start = time.time()
    latents = stream_face_latents([p for p, _ in present], [c for _, c in present], vae, scaling, resolution,
                                  args.batch_size, args.workers, stats)
    relative = [str(Path(p).relative_to(Path(args.data))) if Path(p).is_relative_to(Path(args.data)) else p
                for p, _ in present]
    extra = {"data_root": str(args.data), "split": args.split, "resolution": resolution,
             "skipped_samples": 0, "vae_file": str(stage_file.path)}
    try:
        face_prior = compute_face_prior(latents, vae_hash, pca=args.pca, shards=relative, extra=extra)
    except (FacePriorError, ValueError) as exc:
        raise UserError(str(exc)) from None
    face_prior.extra["skipped_samples"] = stats["skipped"]
    if replaces:
        print(replacing(args.out))
    path = face_prior.save(args.out)
    kept = 0 if face_prior.basis is None else face_prior.basis.shape[0]  # at most the latent's size
    print(f"face prior of {face_prior.count} faces from {len(present)} shards ({stats['skipped']} bad samples "
          f"skipped), latent {tuple(face_prior.mean.shape)}, pca {kept}, VAE {vae_hash}, "
          f"{time.time() - start:.1f} s -> {path}")
    return 0


def register(subparsers) -> None:
    parser = add_command(subparsers, "prior", prior)
    parser.add_argument("--data", required=True, help="shard set root (index.json + split folders)")
    parser.add_argument("--stages", required=True, help="folder holding the exported autoencoder.safetensors")
    parser.add_argument("--out", required=True, help="output file, e.g. <stages>/face_prior.safetensors")
    parser.add_argument("--pca", type=int, default=0, help="also keep the top-k PCA basis (default 0: mean only)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--split", default="train", help="split to read (default train)")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per VAE batch (default 32)")
    parser.add_argument("--resolution", type=int, default=0,
                        help="face size in pixels (default: the autoencoder run's data.resolution)")
