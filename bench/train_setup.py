"""What both sides of the training benchmark start from: the config, the earlier stages, the preloaded batches,
the data wait of the real reader, and the FLOPs of one training step."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import bench_corpus
from bench.untrained_stages import GROUPS, PAPER, build_untrained_stages
from common.files import atomic_write_text
from datamodules.datamodule import ShardDataModule
from lightning_modules.registry import FACE_PRIOR, training_order
from trainer.config import compose

# outside the timed window: no validation, media or checkpoints during the run (their intervals are set past its end)
QUIET = ["tracking=disabled", "run.resume=false", "run.export=false", "trainer.val_check_interval=100000000",
         "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_minutes=0",
         "trainer.media_every_n_steps=0"]
STAGES = tuple(GROUPS)


def experiments(scale: str) -> dict[str, str]:
    return dict(PAPER) if scale == "paper" else {group: scale for group in PAPER}


def stage_words(stage: str, scale: str, root: Path, steps: int, extra: list[str]) -> list[str]:
    """The ``seespeaker train`` words of one benchmark run (the bench corpus; speed does not depend on it)."""
    words = [f"experiment={experiments(scale)[GROUPS[stage]]}", f"stage={stage}", f"data.root={bench_corpus()}",
             f"experiment.output_root={root / 'runs'}", f"run.stages_dir={root / 'stages'}",
             f"trainer.max_steps={steps}", *QUIET]
    if stage == "autoencoder":
        words.append("stage.vae.pretrained_path=''")  # the configured architecture, randomly initialised
    return words + list(extra)


def prepare_stages(stage: str, scale: str, root: Path, log=print) -> None:
    """Untrained earlier stages (and the face prior) where ``stage`` loads them."""
    needed = set(training_order([stage], lambda s: compose(stage_words(s, scale, root, 1, [])).stage)) - {stage}
    if FACE_PRIOR in needed:
        needed.add("autoencoder")  # the prior is made from it
    if needed:
        build_untrained_stages(root / "stages", experiments(scale), log=log, only=needed)


def device_of(cfg) -> torch.device:
    from trainer.strategies import uses_gpu

    return torch.device("cuda", 0) if uses_gpu(cfg.trainer) else torch.device("cpu")


def short_buffer(data_cfg):
    """The data config with a shuffle buffer of one batch: the same reading and decoding per sample, without the
    start-up fill of a paper-scale buffer (thousands of samples per worker before the first batch)."""
    return dataclasses.replace(data_cfg, shuffle_buffer=min(data_cfg.shuffle_buffer, data_cfg.batch_size))


def preload(cfg, count: int, device: torch.device) -> list[dict[str, Any]]:
    """``count`` training batches from the real reader, on ``device`` (the skipped-sample count as a number)."""
    data = ShardDataModule(short_buffer(cfg.data), seed=cfg.experiment.seed)
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append({k: (int(v) if k == "skipped" else v.to(device) if isinstance(v, torch.Tensor) else v)
                        for k, v in batch.items()})
        if len(batches) == count:
            return batches
    raise RuntimeError(f"the reader gave {len(batches)} batches, fewer than {count}")


def reader_seconds_per_batch(cfg, batches: int = 8, budget_s: float = 20.0) -> float:
    """Seconds per batch of the real training reader alone (its workers as configured; the first batch, which
    starts them, is not counted; a one-batch shuffle buffer, which changes no per-sample work)."""
    data = ShardDataModule(short_buffer(cfg.data), seed=cfg.experiment.seed)
    data.setup("fit")
    iterator = iter(data.train_dataloader())
    next(iterator)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        next(iterator)
        seen += 1
        if time.perf_counter() - start > budget_s:
            break
    return (time.perf_counter() - start) / seen


def counted_flops(module: torch.nn.Module, batch: dict[str, Any], autocast, cache: Path) -> tuple[float, float]:
    """:func:`step_flops`, kept in ``cache`` for batches of the same shapes: the count takes 15-20 s at paper scale,
    and the strategy, precision plugin and compilation of a setting do not change it."""
    shapes = {name: list(value.shape) for name, value in sorted(batch.items()) if torch.is_tensor(value)}
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if kept.get("shapes") == shapes:
            return kept["total"], kept["trained"]
    total, trained = step_flops(module, batch, autocast)
    atomic_write_text(cache, json.dumps({"shapes": shapes, "total": total, "trained": trained}))
    return total, trained


def step_flops(module: torch.nn.Module, batch: dict[str, Any], autocast) -> tuple[float, float]:
    """FLOPs of one forward and backward: (all of them, those outside the frozen networks).

    The frozen networks (encoders of earlier stages, a VAE whose latents a paper run would precompute) are the
    largest submodules none of whose parameters train; what is counted under them is left out of the second."""
    forward = module.forward
    module.forward = lambda b: module.reduce_losses(module.compute_losses(b), b.get("valid"))  # enter the root
    try:
        with FlopCounterMode(display=False) as counter:
            with autocast():
                loss = module(batch)
            loss.backward()
    finally:
        module.forward = forward
    module.zero_grad(set_to_none=True)
    counts = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    total = float(counter.get_total_flops())
    frozen = sum(_counted(name, sub, counts) for name, sub in _frozen_roots(module))
    return total, total - float(frozen)


def _counted(name: str, module: torch.nn.Module, counts: dict[str, int]) -> int:
    """FLOPs counted under ``module``: its own count when it was called, else its called descendants' (a network
    used through a method, such as ``vae.encode``, is entered at its parts)."""
    if name in counts:
        return counts[name]
    return sum(_counted(f"{name}.{child_name}", child, counts) for child_name, child in module.named_children())


def _frozen_roots(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The flop counter's names of the largest submodules none of whose parameters train."""
    found = []

    def visit(sub: torch.nn.Module, name: str) -> None:
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            found.append((name, sub))
            return
        for child_name, child in sub.named_children():
            visit(child, f"{name}.{child_name}")

    visit(module, type(module).__name__)
    return found
