"""The LightningDataModule over a prepared shard set."""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader

from datamodules.config import DataConfig
from datamodules.pipeline import ClipStream, ClipWindow, WorkerProgress
from datamodules.shards import ShardIndex, ShardSetError

log = logging.getLogger("seespeaker.data")


class WorkerSignals:
    """The loaders' ``worker_init_fn``: a preemption signal is the trainer's to act on, never a worker's end.

    SLURM signals every process of a job step, the DataLoader workers included. torch's worker dies from a SIGTERM
    its parent did not send, and the main process then raises "DataLoader worker is killed" wherever it is, before
    the trainer reaches the batch where it saves its preemption checkpoint. So a worker ignores the requeue signal,
    and a SIGTERM ends it only when its parent sends it (torch's own shutdown of the loader): the signal is blocked
    and a daemon thread waits for it. Lightning's worker seeding, which a worker_init_fn of our own replaces, runs
    after that when ``seed_everything(workers=True)`` asked for it.
    """

    def __init__(self, ignored: tuple[int, ...], rank: int, seed_workers: bool):
        self.ignored, self.rank, self.seed_workers = ignored, rank, seed_workers

    def __call__(self, worker_id: int) -> None:
        for signum in self.ignored:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), daemon=True,
                         name="sigterm-from-parent").start()
        if self.seed_workers:
            pl_worker_init_function(worker_id, rank=self.rank)


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


class ReportingDataLoader(DataLoader):
    """A DataLoader whose worker crash names the sample key the dead worker was decoding."""

    def __init__(self, dataset: ClipStream, **kwargs):
        self.progress_dir = tempfile.mkdtemp(prefix="seespeaker-loader-") if kwargs.get("num_workers") else ""
        dataset.progress_dir = self.progress_dir
        super().__init__(dataset, **kwargs)

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as exc:
                if "DataLoader worker" not in str(exc):
                    raise
                keys = WorkerProgress.last_keys(self.progress_dir)
                raise RuntimeError(f"{exc}; the workers' last samples: {keys or 'unknown'}. Check that sample "
                                   f"(a corrupt file, or memory: lower data.num_workers)") from exc
            yield batch

    def __del__(self):
        if getattr(self, "progress_dir", ""):
            shutil.rmtree(self.progress_dir, ignore_errors=True)


class ShardDataModule(pl.LightningDataModule):
    """Train and validation loaders of a shard set; the window comes from the data config."""

    def __init__(self, cfg: DataConfig, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.window = ClipWindow.from_config(cfg)
        self.index: ShardIndex | None = None
        self.missing_shards: list[str] = []

    def setup(self, stage: str | None = None) -> None:
        self.index = ShardIndex.load(self.cfg.root)

    def split_shards(self, split: str) -> tuple[list[str], list[int]]:
        """Existing shards of a split and their sample counts; missing shards are reported and counted."""
        assert self.index is not None, "call setup() first"
        infos = self.index.splits.get(split) or []
        paths = self.index.shard_paths(self.cfg.root, split)
        kept = [(p, i.count) for p, i in zip(paths, infos, strict=True) if Path(p).is_file()]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            self.missing_shards = sorted(set(self.missing_shards) | set(missing))
            log.warning("%d of %d %s shards listed in %s/index.json are missing (skipped): %s",
                        len(missing), len(paths), split, self.cfg.root, missing[:3])
        if not kept:
            raise ShardSetError(f"none of the {len(paths)} {split} shards of {self.cfg.root} exist; re-run prepare")
        return [p for p, _ in kept], [c for _, c in kept]

    def _rank(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _requeue_signals(self) -> tuple[int, ...]:
        """USR2 and the requeue signal of the trainer's SLURM environment (handled by the trainer's main process)."""
        connector = getattr(self.trainer, "_accelerator_connector", None)
        requeue = getattr(getattr(connector, "cluster_environment", None), "requeue_signal", None)
        return tuple({signal.SIGUSR2, *([requeue] if requeue else [])})

    def _loader(self, dataset: ClipStream) -> DataLoader:
        workers = self.cfg.num_workers
        seed_workers = bool(int(os.environ.get("PL_SEED_WORKERS", 0)))
        init = WorkerSignals(self._requeue_signals(), self._rank()[0], seed_workers)
        return ReportingDataLoader(dataset, batch_size=None, num_workers=workers,
                          pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
                          persistent_workers=False, prefetch_factor=4 if workers else None,
                          worker_init_fn=init if workers else None)

    def train_dataloader(self) -> DataLoader:
        """The training stream of this rank, positioned by the global step (a resumed run continues it exactly)."""
        rank, world = self._rank()
        shards, counts = self.split_shards(self.cfg.train_split)
        batches = self.epoch_batches()
        epoch, skip = divmod(self.consumed_batches(), batches)
        stream = ClipStream(shards, self.window, self.cfg.batch_size, train=True, rank=rank, world_size=world,
                            seed=self.seed, epoch=epoch, batches=batches, shuffle_buffer=self.cfg.shuffle_buffer,
                            skip_batches=skip, speaker_part=self.cfg.speaker_part_numbers(), shard_counts=counts,
                            root=str(self.cfg.root))
        return self._loader(stream)

    def epoch_batches(self) -> int:
        """Training batches per epoch: ``samples_per_epoch // batch_size`` rounded down to a multiple of the loader
        workers (each worker yields as many) and of the gradient accumulation (an epoch never ends inside an
        accumulation, where Lightning would step on a partial one and the step count stop telling the position)."""
        unit = math.lcm(max(1, self.cfg.num_workers), self._accumulation())
        batches = max(1, self.cfg.samples_per_epoch // self.cfg.batch_size)
        return max(unit, batches - batches % unit)

    def _accumulation(self) -> int:
        return int(self.trainer.accumulate_grad_batches) if self.trainer is not None else 1

    def consumed_batches(self) -> int:
        """Training batches this rank has consumed so far: optimizer steps x accumulation, where the steps are
        Lightning's global step over the stage's optimizers (a GAN stage steps two per batch)."""
        if self.trainer is None:
            return 0
        optimizers = max(1, int(getattr(self.trainer.lightning_module, "num_optimizers", 1) or 1))
        return self.trainer.global_step // optimizers * self._accumulation()

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader(self.cfg.val_split, self.cfg.val_samples)

    def eval_dataloader(self, split: str, max_samples: int = 0) -> DataLoader:
        rank, world = self._rank()
        shards, counts = self.split_shards(split)
        batches = -(-max_samples // self.cfg.batch_size) if max_samples else 0
        stream = ClipStream(shards, self.window, self.cfg.batch_size, train=False, rank=rank, world_size=world,
                            seed=self.seed, batches=batches, shard_counts=counts)
        return self._loader(stream)
