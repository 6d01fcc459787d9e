"""The callbacks every stage trains with: EMA, media, throughput, data health, preemption checkpoints."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lightning_modules.ema import EMAWeights
from trainer.collectives import gather_over_ranks, global_rank, sum_over_ranks


class EMACallback(pl.Callback):
    """Keeps an fp32 EMA of the trainable weights, saved in the checkpoint and used for sampling and export."""

    def __init__(self, decay: float):
        self.decay = decay
        self.ema: EMAWeights | None = None
        self._pending: dict | None = None
        self._step_before = -1  # the global step when the current batch started

    @property
    def state_key(self) -> str:
        return "EMA"

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.ema = EMAWeights(pl_module, self.decay)
        if self._pending is not None:
            self.ema.load_state_dict(self._pending)
            self._pending = None
        pl_module.ema = self.ema

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_before = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Update after every batch on which the optimizer stepped: the last of each accumulation, and the partial
        accumulation Lightning steps on at the end of an epoch."""
        if self.ema is not None and trainer.global_step != self._step_before:
            self.ema.update(pl_module, getattr(pl_module, "step_skipped", None))  # a skipped step moves nothing

    def state_dict(self) -> dict[str, Any]:
        return self.ema.state_dict() if self.ema is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state_dict)
        else:
            self._pending = state_dict


class ThroughputMonitor(pl.Callback):
    """samples/s, step time, the fraction of step time spent waiting for data, and GPU memory."""

    def __init__(self, log_every: int = 10):
        self.log_every = log_every
        self._batch_ready = self._step_end = None
        self._wait = self._total = 0.0
        self._samples = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._step_end is not None:
            self._wait += now - self._step_end
        self._batch_ready = now
        self._samples += len(batch["key"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._step_end is not None:
            self._total += now - self._step_end
        self._step_end = now
        if (batch_idx + 1) % self.log_every or self._total <= 0:
            return
        metrics = {
            "perf/samples_per_s": self._samples * trainer.world_size / self._total,
            "perf/step_time_s": self._total / self.log_every,
            "perf/data_wait_fraction": self._wait / self._total,
        }
        if torch.cuda.is_available():
            metrics["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
        pl_module.log_dict(metrics, rank_zero_only=True)
        self._wait = self._total = 0.0
        self._samples = 0


class DataHealthMonitor(pl.Callback):
    """Counts skipped samples over every rank; stops every rank at the same step, with the same message, when the
    run's skip rate passes the threshold.

    Each rank counts its own batches; every ``log_every_n_steps`` batches (every batch in a single process) the
    ranks sum their counts over the CPU group and decide on the totals, all alike: a rank that stopped alone would
    leave the others waiting in the next collective. ``missing_shards`` is a count or a function giving it.
    """

    MIN_SEEN = 64
    MAX_PRINTED = 20

    def __init__(self, max_skip_fraction: float, missing_shards: int | Callable[[], int] = 0):
        self.max_skip_fraction = max_skip_fraction
        self.local_skipped = self.local_seen = 0  # this rank's, plus the restored run totals on rank 0
        self.skipped = self.seen = 0  # the run's totals over every rank at the last agreement
        self.printed = 0
        self.missing_shards = missing_shards
        self._trainer: pl.Trainer | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.local_skipped += int(batch.get("skipped", 0))
        self._print_skips(trainer, batch.get("skip_messages", []))
        self.local_seen += len(batch["key"])
        at_interval = (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0
        if not at_interval and trainer.world_size > 1:
            return
        self._agree(trainer)
        if at_interval:
            pl_module.log("data/skipped_samples", float(self.skipped), rank_zero_only=True)
        total = self.seen + self.skipped
        if total >= self.MIN_SEEN and self.skipped / total > self.max_skip_fraction:
            message = (f"{self.skipped} of {total} samples ({100 * self.skipped / total:.1f}%) over all ranks were "
                       f"unreadable by step {trainer.global_step}, more than data.max_skip_fraction="
                       f"{self.max_skip_fraction}; check the shards (see the warnings above) or raise the threshold")
            print(f"[data] rank {trainer.global_rank}: stopping: {message}", flush=True)
            raise RuntimeError(message)

    def on_train_end(self, trainer, pl_module) -> None:
        self._agree(trainer)  # the summary's totals include the batches since the last interval

    def _agree(self, trainer: pl.Trainer) -> None:
        self.skipped, self.seen = sum_over_ranks(trainer, [self.local_skipped, self.local_seen])

    def _print_skips(self, trainer: pl.Trainer, messages: list[str]) -> None:
        for message in messages:
            self.printed += 1
            if self.printed <= self.MAX_PRINTED:
                print(f"[data] rank {trainer.global_rank}: skipped {message}", flush=True)
            elif self.printed == self.MAX_PRINTED + 1:
                print("[data] further skipped samples are counted in data/skipped_samples and summary.json", flush=True)

    def summary(self) -> dict[str, int]:
        missing = self.missing_shards() if callable(self.missing_shards) else self.missing_shards
        return {"skipped_samples": self.skipped, "seen_samples": self.seen, "missing_shards": missing}

    def state_dict(self) -> dict[str, Any]:
        """The run's totals over every rank (every rank saves at the same point, so they agree here)."""
        if self._trainer is not None:
            self._agree(self._trainer)
        return {"skipped": self.skipped, "seen": self.seen}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The run's totals go to rank 0's count (the ranks' sum), whatever the number of ranks now."""
        self.skipped, self.seen = state_dict.get("skipped", 0), state_dict.get("seen", 0)
        self.local_skipped, self.local_seen = (self.skipped, self.seen) if global_rank() == 0 else (0, 0)


class MediaLogger(pl.Callback):
    """Calls the stage's ``log_media()`` on a fixed validation batch and saves/uploads the results.

    Rank 0 only, except under ZeRO-3 (sampling gathers partitioned parameters): then every rank runs it, rank 0
    uploads.
    """

    def __init__(self, run_dir: str, every_n_steps: int = 0, all_ranks: bool = False):
        self.media_dir = Path(run_dir) / "media"
        self.every_n_steps = every_n_steps
        self.all_ranks = all_ranks
        self._batch: dict[str, Any] | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._batch is None and batch_idx == 0:
            self._batch = {k: (v[:4] if isinstance(v, (torch.Tensor, list)) and k != "skipped" else v)
                           for k, v in batch.items()}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and not self.every_n_steps:
            self.log_now(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0:
            self.log_now(trainer, pl_module)

    def log_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batch is None or (not trainer.is_global_zero and not self.all_ranks):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            media = pl_module.log_media(self._batch)
        pl_module.train(was_training)
        if trainer.is_global_zero and media:
            self._save(trainer, media)

    def _save(self, trainer: pl.Trainer, media: dict) -> None:
        import cv2

        self.media_dir.mkdir(parents=True, exist_ok=True)
        step = trainer.global_step
        for name, item in media.items():
            if item.image is not None:
                path = self.media_dir / f"{name}-step{step:07d}.png"
                cv2.imwrite(str(path), np.ascontiguousarray(item.image[..., ::-1]))
            for logger in trainer.loggers:
                if hasattr(logger, "log_media_item"):
                    logger.log_media_item(f"media/{name}", item, step)


class PreemptionCheckpoint(pl.Callback):
    """SIGTERM or the requeue signal: every rank saves a checkpoint; for a requeue, rank 0 then requeues the job.

    Every rank waits until rank 0's ``scontrol requeue`` has answered: a rank that exited first would end the job
    step (``srun --kill-on-bad-exit``) and with it the requeue in flight. ``requeued`` tells the runner.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.requeued = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        agree = getattr(trainer._signal_connector, "agree", None)
        if agree is not None:
            agree()  # all ranks take a pending signal at this batch; Lightning's check then stops them together

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        path = self.dirpath / f"preempt-step={trainer.global_step}.ckpt"
        trainer.save_checkpoint(str(path), weights_only=False)  # the full state: the requeued job resumes from it
        requeue = getattr(trainer._signal_connector, "requeue_requested", False)
        if trainer.is_global_zero:
            from trainer.signals import mark_wandb_preempting

            print(f"[preemption] {'requeue signal' if requeue else 'SIGTERM'} at step {trainer.global_step}: "
                  f"saved {path}", flush=True)
            mark_wandb_preempting()
        if requeue:
            self.requeued = self._requeue(trainer)

    def _requeue(self, trainer: pl.Trainer) -> bool:
        """Rank 0 requeues the job; the broadcast of its answer holds every rank until then."""
        code = None
        if trainer.is_global_zero:
            from trainer.signals import requeue_slurm_job

            code = requeue_slurm_job()
            if code != 0:
                print(f"[preemption] scontrol requeue failed (exit code {code}): the job is not requeued. Resubmit "
                      f"it; run.resume=auto continues from the checkpoint saved in {self.dirpath}", flush=True)
        return trainer.strategy.broadcast(code, src=0) == 0


class RankInfo(pl.Callback):
    """One line per rank at the start of training (read from SLURM logs to check the job's layout)."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import socket

        print(f"[seespeaker] global_rank={trainer.global_rank} local_rank={trainer.local_rank} "
              f"node_rank={trainer.node_rank} world_size={trainer.world_size} host={socket.gethostname()}", flush=True)


class PlainProgress(pl.Callback):
    """Line-by-line progress for log files (SLURM, pipes): step, loss and speed every ``every`` steps, rank 0."""

    def __init__(self, every: int):
        self.every = max(1, every)
        self._start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step % self.every == 0:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/loss", "val/"))}
            shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
            print(f"step {step}/{trainer.max_steps} {shown} elapsed={time.time() - self._start:.0f}s", flush=True)


class RNGState(pl.Callback):
    """Saves every rank's Python, NumPy and torch generators with every checkpoint and restores each rank's own on
    resume.

    The checkpoint holds ``{global rank: state}`` (gathered over the CPU group: rank 0 writes the file) and, on a
    GPU, the generator of the rank's own device only. Restored when training starts (after the data loaders
    exist), so that a resumed run draws the same random numbers as an uninterrupted one from the next step on; a
    rank the checkpoint has no state for (more ranks than before) keeps its fresh per-rank seed.
    """

    def __init__(self) -> None:
        self._pending: dict[Any, Any] | None = None
        self._trainer: pl.Trainer | None = None

    @property
    def state_key(self) -> str:
        return "RNGState"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def _device(self) -> torch.device | None:
        device = self._trainer.strategy.root_device if self._trainer is not None else None
        return device if device is not None and device.type == "cuda" else None

    def state_dict(self) -> dict[int, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"python": random.getstate(), "torch": torch.get_rng_state(),
                 "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
        if self._device() is not None:
            state["cuda"] = torch.cuda.get_rng_state(self._device())
        return gather_over_ranks(self._trainer, state) if self._trainer is not None else {0: state}

    def load_state_dict(self, state_dict: dict[Any, Any]) -> None:
        self._pending = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._pending:
            return
        states, self._pending = self._pending, None
        if "python" in states:  # a single state: written before checkpoints held one per rank
            states = {0: states}
        state = states.get(trainer.global_rank)
        if state is None:
            print(f"[resume] rank {trainer.global_rank}: the checkpoint holds no random state for this rank "
                  f"({len(states)} ranks saved); it keeps its fresh seed", flush=True)
            return
        random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        cuda = state.get("cuda")
        if cuda is not None and self._device() is not None:
            torch.cuda.set_rng_state(cuda[self._device().index or 0] if isinstance(cuda, list) else cuda,
                                     self._device())
