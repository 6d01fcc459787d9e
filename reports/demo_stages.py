"""``make demo-stages``: the small-scale stage files that ``make results`` trained, made shippable for ``make demo``.

Each stage generation reads (``generation.pipeline``: ``PORTRAIT_STAGES`` + ``VIDEO_STAGES``; not the sync expert,
not the face prior, which live inside the portrait stage's file) is rewritten from
``outputs/results/small/stages-seed0`` into ``demo/stages/``: the EMA weights only (as the ``model.`` tensors of a
stage file; generation samples with the EMA weights), in float16, and only the tensors generation's loaders read
(``INFERENCE_PREFIXES``: no discriminator, no training-only head such as ConRe's predictor and temperature, no
frozen copy of an earlier stage). The stage config and the provenance are kept as they are; a ``demo`` metadata
entry names the source file, its sha256 and what was dropped. The set is refused when it would exceed
``LIMIT_BYTES`` and is not written at all then.

``demo/MANIFEST.json`` gives per file its sha256 and size, and from the provenance the file records: the clean
commit that trained it, the command, the corpus options and index hash, the seed, the machine and the wall time;
and, for ``make demo``, the synthetic corpus's generator options and test speakers (a held-out speaker's speech is
synthesised from them). Every write is atomic; the manifest is written last.

:func:`check_demo_stages` is what the unit test and ``make demo`` run: the sums, the total size, and that every
file loads through generation's own loaders, failing with ``STALE`` and the details.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from common.errors import SeespeakerError
from common.files import atomic_write_bytes, atomic_write_text
from generation.pipeline import PORTRAIT_STAGES, VIDEO_STAGES
from lightning_modules.stagefile import FORMAT_VERSION, StageFile, load_stage_file

SOURCE = Path("outputs/results/small/stages-seed0")
DEMO = Path("demo")
MANIFEST = "MANIFEST.json"
STAGES = "stages"
LIMIT_BYTES = 30_000_000  # 30 MB for the whole set
STALE = "stale demo stages: run `make demo-stages`"
DEMO_STAGES = PORTRAIT_STAGES + VIDEO_STAGES
FP16_MAX = float(torch.finfo(torch.float16).max)
# What generation's loaders read of each stage file (``for_inference`` of each stage); None: every tensor but a
# discriminator's (the codebook loads its whole module non-strictly).
INFERENCE_PREFIXES: dict[str, tuple[str, ...] | None] = {
    "conre": ("speech_encoder.", "face_encoder."),
    "autoencoder": ("vae.", "scaling_factor"),
    "portrait_diffusion": ("model.",),
    "saw": ("saw.",),
    "motion_diffusion": ("motion_encoder.", "motion_denoiser.", "frame_denoiser."),
    "lip_enhancer": ("refiner.",),
    "codebook": None,
}
DISCRIMINATOR = "discriminator."
FIELDS = {
    "sha256": "of the shipped file",
    "commit": "the git commit the stage trained at (its provenance's git_commit)",
    "command": "the training command (its provenance's command)",
    "corpus": "the data options of the run, and the shard index's hash and corpus version from its training key",
    "seed": "experiment.seed of the run",
    "machine": "host, platform and Python of the training run (its provenance)",
    "wall_seconds": "from each start of the run (provenance.jsonl) to the last metric it logged before the next "
                    "(metrics.jsonl), summed: a resumed run's wait is not counted; null when the run folder is gone; "
                    "a codebook file: its last phase's run",
}


class DemoStagesError(SeespeakerError, ValueError):
    """Demo stage files that cannot be made, or that are stale."""


# ---- writing -------------------------------------------------------------------------------------------------
def shippable_weights(stage: StageFile) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(the EMA weights generation reads, float tensors as float16; the top-level names dropped)."""
    prefixes = INFERENCE_PREFIXES[stage.stage]
    kept, dropped = {}, set()
    for name, tensor in stage.weights(use_ema=True).items():
        wanted = (not name.startswith(DISCRIMINATOR) if prefixes is None
                  else any(name == p or name.startswith(p) for p in prefixes))
        if not wanted:
            dropped.add(name.split(".")[0])
            continue
        if tensor.is_floating_point():
            if tensor.numel() and float(tensor.abs().max()) > FP16_MAX:
                raise DemoStagesError(f"{stage.path}: tensor {name!r} holds values beyond float16's range "
                                      f"({float(tensor.abs().max()):.3g}); it cannot be shipped in float16")
            tensor = tensor.to(torch.float16)
        kept[name] = tensor.detach().cpu().contiguous().clone()
    return kept, sorted(dropped)


def shippable_bytes(stage: StageFile, source_sha256: str) -> tuple[bytes, list[str]]:
    """The shipped file's bytes (a stage file: ``model.`` tensors, the original config and provenance)."""
    weights, dropped = shippable_weights(stage)
    demo = {"source": stage.path, "source_sha256": source_sha256, "weights": "ema", "dtype": "float16",
            "dropped": dropped}
    metadata = {"format": FORMAT_VERSION, "stage": stage.stage, "phase": stage.phase,
                "config": json.dumps(stage.config, sort_keys=True, default=str),
                "provenance": json.dumps(stage.provenance, sort_keys=True, default=str),
                "demo": json.dumps(demo, sort_keys=True)}
    return save({f"model.{k}": v for k, v in weights.items()}, metadata=metadata), dropped


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wall_seconds(provenance: dict[str, Any]) -> float | None:
    """The time the run of the file's checkpoint trained (:func:`trainer.runs.active_seconds`)."""
    from trainer.runs import active_seconds
    checkpoint = provenance.get("source_checkpoint")
    return active_seconds(Path(checkpoint).parent.parent) if checkpoint else None  # <run>/checkpoints/<file>


def provenance_record(stage: StageFile) -> dict[str, Any]:
    """What the manifest says of one file, all from the provenance it records."""
    prov = stage.provenance
    run = prov.get("run_config") or {}
    corpus = (prov.get("training_key") or {}).get("corpus") or {}
    argv = list(prov.get("command") or [])
    return {
        "commit": prov.get("git_commit", ""),
        "command": ("seespeaker " + shlex.join(argv[1:])) if argv else "",
        "corpus": {"options": run.get("data") or {}, "index": corpus.get("index", ""),
                   "version": corpus.get("version")},
        "seed": (run.get("experiment") or {}).get("seed"),
        "machine": ", ".join(str(prov[k]) for k in ("host", "platform", "python") if prov.get(k)),
        "started": prov.get("time", ""),
        "wall_seconds": wall_seconds(prov),
        "global_step": prov.get("global_step"),
    }


def corpus_record(stages: Iterable[StageFile]) -> dict[str, Any]:
    """The synthetic corpus the stages trained on: its root, index hash, generator options and test speakers (read
    from its index, which must still be the one the training keys record)."""
    from datamodules.shards import INDEX_NAME, ShardIndex
    from trainer.keys import file_digest

    seen = {}
    for stage in stages:
        root = ((stage.provenance.get("run_config") or {}).get("data") or {}).get("root")
        index = ((stage.provenance.get("training_key") or {}).get("corpus") or {}).get("index")
        if root:
            seen[(root, index)] = stage.path
    if len({root for root, _ in seen}) != 1 or len(seen) != 1:
        raise DemoStagesError(f"the stage files do not record one corpus they all trained on ({sorted(seen)}); "
                              f"retrain them together with `make results`")
    (root, index), _ = next(iter(seen.items()))
    path = Path(root) / INDEX_NAME
    if not path.is_file() or file_digest(path) != index:
        found = file_digest(path) if path.is_file() else "no index"
        raise DemoStagesError(f"the corpus the stages trained on, {root} (index {index}), is not here ({found}): "
                              f"`make results` writes it; the demo synthesises a test speaker from its options")
    extra = ShardIndex.load(root).extra.get("synthetic") or {}
    if "config" not in extra:
        raise DemoStagesError(f"{root} is not a synthetic corpus: the demo needs the generator's options to "
                              f"synthesise a held-out speaker's speech")
    return {"root": str(root), "index": index, "options": extra["config"],
            "test_speakers": list((extra.get("speakers") or {}).get("test") or [])}


def check_chain(stages: dict[str, StageFile], source: Path) -> list[str]:
    """Stages whose training key names an input file other than the one in ``source`` (a chain out of step)."""
    from trainer.keys import file_digest
    notes = []
    for name, stage in stages.items():
        for node, digest in ((stage.provenance.get("training_key") or {}).get("inputs") or {}).items():
            path = source / f"{node}.safetensors"
            if isinstance(digest, str) and path.is_file() and digest and file_digest(path) != digest:
                notes.append(f"{name} trained on another {path.name} than the one in {source}")
    return notes


def write_demo_stages(source: Path = SOURCE, demo: Path = DEMO, stages: tuple[str, ...] = DEMO_STAGES,
                      allow_dirty: bool = False, need_corpus: bool = True,
                      limit: int = LIMIT_BYTES) -> dict[str, Any]:
    """Write ``demo/stages/<stage>.safetensors`` and ``demo/MANIFEST.json`` from the stage files in ``source``;
    returns the manifest. Nothing is written when a file is missing or not from a clean commit, or when the set
    would exceed ``limit`` bytes."""
    missing = [s for s in stages if not (source / f"{s}.safetensors").is_file()]
    if missing:
        raise DemoStagesError(f"{source} lacks {', '.join(f'{s}.safetensors' for s in missing)}: train the small "
                              f"chain with `make results` first (it writes {SOURCE})")
    loaded = {s: load_stage_file(source / f"{s}.safetensors", expect_stage=s) for s in stages}
    dirty = [f"{s.path} ({s.provenance.get('git_commit') or 'no commit recorded'})" for s in loaded.values()
             if not s.provenance.get("git_commit") or s.provenance["git_commit"].endswith("-dirty")]
    if dirty and not allow_dirty:
        raise DemoStagesError("not trained at a clean commit: " + "; ".join(dirty) + ". Retrain them with `make "
                              "results` from a clean checkout (or pass --allow-dirty to ship them, recorded as such)")
    for note in check_chain(loaded, source):
        print(f"[demo-stages] warning: {note}", flush=True)
    files, blobs = {}, {}
    for name, stage in loaded.items():
        blob, dropped = shippable_bytes(stage, file_sha256(source / f"{name}.safetensors"))
        blobs[f"{name}.safetensors"] = blob
        files[f"{name}.safetensors"] = {"stage": name, "phase": stage.phase, "sha256": sha256(blob),
                                        "bytes": len(blob), "dropped": dropped, **provenance_record(stage)}
    total = sum(len(b) for b in blobs.values())
    if total > limit:
        sizes = ", ".join(f"{n} {len(b) / 1e6:.1f} MB" for n, b in blobs.items())
        raise DemoStagesError(f"the demo stages would take {total / 1e6:.1f} MB, over the {limit / 1e6:g} MB limit "
                              f"({sizes}); shrink the small stages' networks or ship fewer of them")
    manifest = {"made_by": "python -m reports.demo_stages (make demo-stages)", "source": str(source),
                "total_bytes": total, "limit_bytes": limit, "fields": FIELDS, "files": files,
                "corpus": corpus_record(loaded.values()) if need_corpus else None}
    folder = demo / STAGES
    for name, blob in blobs.items():
        atomic_write_bytes(folder / name, blob)
    for old in folder.glob("*.safetensors"):
        if old.name not in blobs:
            old.unlink()
    atomic_write_text(demo / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


# ---- checking ------------------------------------------------------------------------------------------------
def stale(details: list[str]) -> DemoStagesError:
    return DemoStagesError(STALE + "\n  " + "\n  ".join(details))


def check_demo_stages(demo: Path = DEMO, limit: int = LIMIT_BYTES) -> dict[str, Any]:
    """The manifest of ``demo`` once its files match their sums, fit ``limit`` and load through generation's
    loaders; else a DemoStagesError starting with ``STALE`` (or naming the size)."""
    path = demo / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        raise stale([f"{path} cannot be read ({exc})"]) from exc
    folder = demo / STAGES
    problems = [f"{folder / n} is missing" for n in files if not (folder / n).is_file()]
    problems += [f"{folder / n}: sha256 {file_sha256(folder / n)}, the manifest records {r['sha256']}"
                 for n, r in files.items() if (folder / n).is_file() and file_sha256(folder / n) != r["sha256"]]
    problems += [f"{p} is not in {path}" for p in sorted(folder.glob("*.safetensors")) if p.name not in files]
    if problems:
        raise stale(problems)
    total = sum((folder / n).stat().st_size for n in files)
    if total > limit:
        raise DemoStagesError(f"the demo stages in {folder} take {total / 1e6:.1f} MB, over the {limit / 1e6:g} MB "
                              f"limit; run `make demo-stages` with smaller small-scale stages")
    load_with_generation(folder, "codebook.safetensors" in files)
    return manifest


def load_with_generation(folder: Path, codebook: bool) -> None:
    """Every file through the loaders ``seespeaker generate`` uses (a stale file: ``STALE`` and why)."""
    from generation.pipeline import GenerationOptions, TalkingFacePipeline
    try:
        TalkingFacePipeline(folder, GenerationOptions(codebook=codebook))
    except (SeespeakerError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise stale([f"{folder} does not load with this seespeaker: {exc}"]) from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reports.demo_stages", description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="the small-scale stages folder")
    parser.add_argument("--out", type=Path, default=DEMO, help="the demo folder (stages/ and MANIFEST.json)")
    parser.add_argument("--allow-dirty", action="store_true", help="ship files trained at a dirty commit")
    args = parser.parse_args(argv)
    try:
        manifest = write_demo_stages(args.source, args.out, allow_dirty=args.allow_dirty)
        check_demo_stages(args.out)
    except SeespeakerError as exc:
        print(f"[demo-stages] {exc}", file=sys.stderr)
        return 2
    for name, record in manifest["files"].items():
        print(f"  {args.out / STAGES / name}: {record['bytes'] / 1e6:.2f} MB, trained at {record['commit'][:12]}")
    print(f"[demo-stages] {len(manifest['files'])} files, {manifest['total_bytes'] / 1e6:.1f} MB in "
          f"{args.out / STAGES}; manifest {args.out / MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
