"""Preemption signals handled at a batch boundary, never inside the signal handler.

Lightning's handlers run collectives (a broadcast, a checkpoint barrier) inside the handler itself; when SLURM
signals every task at once those collectives interleave with the training's own and can deadlock. Here the
handlers only set a *pending* flag. At the end of every training batch the ranks agree on it (a max all-reduce,
:meth:`FlagSignalConnector.agree`), so that Lightning's per-batch check raises ``SIGTERMException`` on every rank
at the same batch, whichever rank the signal reached first (Lightning alone syncs rank 0's flag only: a rank
signalled before rank 0 would stop alone and leave the others blocked in a collective). The
``PreemptionCheckpoint`` callback then saves on every rank, and for the requeue signal rank 0 asks SLURM to
requeue the job once the checkpoint is complete.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import torch
import torch.distributed as dist
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.trainer.connectors.signal_connector import _SignalConnector

from trainer import tracking


class FlagSignalConnector(_SignalConnector):
    """SIGTERM and the SLURM requeue signal set flags; the loop acts on them at the next batch."""

    def __init__(self, trainer) -> None:
        super().__init__(trainer)
        self.requeue_requested = False
        self.pending_sigterm = self.pending_requeue = False

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False
        self.requeue_requested = False
        self.pending_sigterm = self.pending_requeue = False
        tracking.STOP_LOGGING.clear()  # a preemption of an earlier training in this process does not silence this one
        self._original_handlers = self._get_current_signal_handlers()
        environment = self.trainer._accelerator_connector.cluster_environment
        self._register_signal(signal.SIGTERM, self._on_sigterm)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue and environment.requeue_signal:
            self._register_signal(environment.requeue_signal, self._on_requeue_signal)

    def _on_sigterm(self, signum, frame) -> None:
        launcher = self.trainer.strategy.launcher
        if launcher is not None and not self.pending_sigterm and not SLURMEnvironment.detect():
            launcher.kill(signum)  # forward to the processes Lightning's launcher started
        self.pending_sigterm = True
        tracking.STOP_LOGGING.set()

    def _on_requeue_signal(self, signum, frame) -> None:
        self.pending_requeue = True
        self.pending_sigterm = True
        tracking.STOP_LOGGING.set()

    def agree(self) -> None:
        """Every rank takes the signal if any rank has it pending (called at the same point on every rank).

        The flags travel over a CPU (gloo) group, created on first use by every rank at the same batch: a device
        collective read back on the host would stall the GPU at every step."""
        flags = torch.tensor([int(self.pending_sigterm), int(self.pending_requeue)])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self._cpu_group())
        sigterm, requeue = (bool(v) for v in flags.tolist())
        self.received_sigterm = self.received_sigterm or sigterm
        self.requeue_requested = self.requeue_requested or requeue

    def _cpu_group(self):
        """The default group where it is gloo already, else a gloo group of every rank (made once)."""
        if dist.get_backend() == "gloo":
            return None
        if getattr(self, "_gloo", None) is None:
            self._gloo = dist.new_group(backend="gloo")
        return self._gloo


def requeue_slurm_job(timeout_s: float = 60) -> int:
    """``scontrol requeue`` this job (or array task); the exit code of scontrol (127: not found, 124: timed out)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job):
        return 1
    print(f"[preemption] requeueing SLURM job {job}", flush=True)
    try:
        return subprocess.call(["scontrol", "requeue", job], timeout=timeout_s)
    except FileNotFoundError:
        return 127
    except subprocess.TimeoutExpired:
        return 124


def mark_wandb_preempting() -> None:
    """Tell W&B that this run is preempted, not failed, before a requeue ends the job and W&B's process with it."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    try:
        wandb.run.mark_preempting()
    except Exception as exc:  # W&B's own process may be gone: SLURM signals every process of the job
        print(f"[tracking] W&B could not record the preemption ({exc}); metrics.jsonl has every value", flush=True)
