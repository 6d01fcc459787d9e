"""From a resolved config to a running Lightning Trainer: stage, data, strategy, callbacks, loggers, resume."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from common.resume import resume_parts
from datamodules.datamodule import ShardDataModule
from lightning_modules.registry import stage_class
from lightning_modules.stagefile import load_stage_file
from trainer import provenance
from trainer.callbacks import (
    DataHealthMonitor,
    EMACallback,
    MediaLogger,
    PlainProgress,
    PreemptionCheckpoint,
    RankInfo,
    RNGState,
    ThroughputMonitor,
)
from trainer.checkpoints import CHECKPOINT_DIR, AtomicCheckpointIO, find_resume_checkpoint, remove_stale_temporaries
from trainer.config import ConfigError, to_container, to_yaml
from trainer.keys import training_key
from trainer.schemas import Config, requeue_signal
from trainer.signals import FlagSignalConnector
from trainer.strategies import build_strategy, media_needs_all_ranks
from trainer.sync_free import ScalarLRMonitor, SteadyRichProgressBar, TimedCheckpoint, skip_sigterm_broadcast
from trainer.tracking import build_loggers

log = logging.getLogger("seespeaker.train")


@dataclass
class TrainingRun:
    cfg: Config
    module: pl.LightningModule
    data: ShardDataModule
    trainer: pl.Trainer
    ckpt_path: str | None
    health: DataHealthMonitor


def global_rank_from_env(devices: int = 1) -> int:
    """This process's global rank before the Trainer exists (SLURM, torchrun or Lightning's launcher)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ and (name != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
            return int(os.environ[name])
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * devices + local


def plain_logs() -> bool:
    """Line-by-line logs (no live progress bar) in SLURM log files and other non-terminals."""
    return os.environ.get("SEESPEAKER_PLAIN_LOGS") == "1" or not sys.stdout.isatty()


def build_module(cfg: Config) -> pl.LightningModule:
    cls = stage_class(cfg.stage.name)
    module = cls(cfg.stage, cfg.data, stages_dir=cfg.run.stages_dir, max_steps=cfg.trainer.max_steps)
    module.max_bad_steps = cfg.trainer.max_bad_steps
    if cfg.run.init_from:
        stage_file = load_stage_file(cfg.run.init_from)
        module.load_weights(stage_file.weights(use_ema=True), cfg.run.init_from)
    return module


def trained_networks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The stage's top-level networks that train (any parameter with ``requires_grad``) and their direct children
    that hold parameters (a stage may call a network's parts, e.g. its speech encoder, on their own)."""
    found = []
    for child in module.children():
        if any(p.requires_grad for p in child.parameters()):
            found.append(child)
            found.extend(c for c in child.children() if any(True for _ in c.parameters()))
    return found


def gradient_checkpointing(module: torch.nn.Module) -> int:
    """Turn on gradient checkpointing in the trained networks that support it (diffusers' models); how many."""
    turned = 0
    for network in module.modules():
        supports = getattr(network, "_supports_gradient_checkpointing", False)
        if supports and any(p.requires_grad for p in network.parameters()):
            network.enable_gradient_checkpointing()
            turned += 1
    return turned


def apply_speed_knobs(module: torch.nn.Module, t) -> None:
    """``trainer.channels_last``, ``trainer.compile`` (in place: state-dict keys do not change) and the stage's
    ``gradient_checkpointing`` where its config has that field."""
    if getattr(getattr(module, "cfg", None), "gradient_checkpointing", False):
        gradient_checkpointing(module)
    if t.channels_last:
        module.to(memory_format=torch.channels_last)
    if t.compile:
        for network in trained_networks(module):
            if getattr(network, "_compiled_call_impl", None) is None:
                network.compile()


def build_callbacks(cfg: Config, health: DataHealthMonitor) -> list[pl.Callback]:
    ckpt_dir = str(Path(cfg.run.dir) / CHECKPOINT_DIR)
    t = cfg.trainer
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="step={step}", auto_insert_metric_name=False,
                        every_n_train_steps=t.checkpoint_every_n_steps or None,
                        save_top_k=-1 if t.checkpoint_every_n_steps else 0, save_last=False),
        ModelCheckpoint(dirpath=ckpt_dir, filename="best-step={step}", auto_insert_metric_name=False,
                        monitor=cfg.stage.monitor, mode=cfg.stage.monitor_mode, save_top_k=t.save_top_k),
        PreemptionCheckpoint(ckpt_dir),
        ThroughputMonitor(log_every=t.log_every_n_steps),
        ScalarLRMonitor(logging_interval="step"),
        health,
        MediaLogger(cfg.run.dir, t.media_every_n_steps, all_ranks=media_needs_all_ranks(t)),
        RankInfo(),
        RNGState(),
        PlainProgress(t.log_every_n_steps) if plain_logs() else SteadyRichProgressBar(t.log_every_n_steps),
    ]
    if t.checkpoint_minutes > 0:  # the clock is consulted at logging intervals (a broadcast under DDP)
        callbacks.append(TimedCheckpoint(t.log_every_n_steps, dirpath=ckpt_dir, filename="time-step={step}",
                                         auto_insert_metric_name=False, save_top_k=1,
                                         train_time_interval=timedelta(minutes=t.checkpoint_minutes)))
    if t.ema_decay > 0:
        callbacks.append(EMACallback(t.ema_decay))
    return callbacks


def resolve_resume(cfg: Config) -> str | None:
    mode, path = resume_parts(cfg.run.resume)
    if mode == "off":
        return None
    if mode == "auto":
        found = find_resume_checkpoint(cfg.run.dir)
        if found is not None:
            print(f"[resume=auto] resuming from {found.path} ({found.kind}, step {found.step})")
            return str(found.path)
        if not path:
            print(f"[resume=auto] no complete checkpoint in {cfg.run.dir}: starting fresh")
            return None
        print(f"[resume={cfg.run.resume}] no complete checkpoint in {cfg.run.dir} yet: resuming from {path}")
    if not Path(path).exists():
        raise ConfigError(f"run.resume={cfg.run.resume}: no such checkpoint {path}; use resume=auto, resume=false or "
                          "a checkpoint path")
    return path


def cluster_plugins(cfg: Config) -> list[Any]:
    from pytorch_lightning.plugins.environments import SLURMEnvironment

    plugins: list[Any] = [AtomicCheckpointIO()] if cfg.trainer.strategy != "deepspeed" else []
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=True, requeue_signal=requeue_signal(cfg.trainer.requeue_signal)))
    return plugins


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank`` > 0's random streams (diffusion noise and timesteps, dropout, random windows): fixed
    by (seed, rank) and distinct per rank, so that the ranks of a global batch draw independent numbers."""
    import numpy as np

    return int(np.random.SeedSequence([seed % 2**63, rank]).generate_state(1)[0])


def seed_rank_streams(seed: int, rank: int) -> None:
    """Seed the Python, NumPy and torch generators of rank > 0 from (seed, rank); rank 0 goes on with the run's
    seed, so that a one-process run draws what it drew before ranks had streams of their own. Lightning re-applies
    the seed when the processes join (``reset_seed`` reads ``PL_GLOBAL_SEED``), so the rank's seed is the one it
    re-applies. The training data's order does not come from these generators (the shard pipeline seeds its own
    per rank)."""
    if rank > 0:
        pl.seed_everything(rank_seed(seed, rank), workers=True, verbose=False)


def build_run(cfg: Config, argv: list[str] | None = None) -> TrainingRun:
    pl.seed_everything(cfg.experiment.seed, workers=True, verbose=False)  # the same initial weights on every rank
    rank = global_rank_from_env(cfg.trainer.devices)
    is_zero = rank == 0
    config_dict = to_container(cfg)
    if is_zero:
        remove_stale_temporaries(cfg.run.dir)
        prov = provenance.collect(argv)
        prov["training_key"] = training_key(cfg, config_dict)
        provenance.save(cfg.run.dir, to_yaml(cfg), prov)
        config_dict["_provenance"] = prov
    module = build_module(cfg)
    apply_speed_knobs(module, cfg.trainer)
    module.provenance = config_dict.get("_provenance", {})
    data = ShardDataModule(cfg.data, seed=cfg.experiment.seed)
    data.setup("fit")
    seed_rank_streams(cfg.experiment.seed, rank)
    health = DataHealthMonitor(cfg.data.max_skip_fraction, missing_shards=lambda: len(data.missing_shards))
    strategy, extra = build_strategy(cfg.trainer, module)
    t = cfg.trainer
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
        max_steps=t.max_steps, accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=((t.gradient_clip_val or None) if module.automatic_optimization and t.strategy != "deepspeed"
                           else None),
        val_check_interval=t.val_check_interval, check_val_every_n_epoch=None, limit_val_batches=t.limit_val_batches,
        log_every_n_steps=t.log_every_n_steps, default_root_dir=cfg.run.dir, callbacks=build_callbacks(cfg, health),
        logger=build_loggers(cfg, config_dict, is_zero), plugins=cluster_plugins(cfg), enable_model_summary=is_zero,
        reload_dataloaders_every_n_epochs=1, num_sanity_val_steps=0, deterministic=t.deterministic or None,
        enable_progress_bar=not plain_logs(), **extra,
    )
    trainer._signal_connector = FlagSignalConnector(trainer)
    skip_sigterm_broadcast(trainer)  # the connector's agreement replaces Lightning's per-step broadcast
    if trainer.is_global_zero:
        print(f"[seespeaker] stage={cfg.stage.name} run_dir={cfg.run.dir} world={cfg.world_size} "
              f"global_batch={cfg.data.batch_size}x{cfg.world_size}x{t.accumulate_grad_batches}={cfg.global_batch}",
              flush=True)
    return TrainingRun(cfg, module, data, trainer, resolve_resume(cfg), health)


def fit(run: TrainingRun) -> None:
    torch.set_float32_matmul_precision("high")
    run.trainer.fit(run.module, datamodule=run.data, ckpt_path=run.ckpt_path, weights_only=True)
