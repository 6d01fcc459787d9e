"""Typed schemas of the run-level config groups: experiment, trainer, tracking, run."""
from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from datamodules.config import DataConfig

STRATEGIES = ("auto", "ddp", "deepspeed")
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
ACCELERATORS = ("cpu", "gpu", "auto")
SCALES = ("tiny", "small", "paper")
TRACKING_MODES = ("offline", "online", "disabled", "auto")
UNCATCHABLE = ("SIGKILL", "SIGSTOP", "SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE")  # or raised by a fault, not sent
REQUEUE_SIGNALS = tuple(sorted(s.name.removeprefix("SIG") for s in signal.valid_signals()
                               if isinstance(s, signal.Signals) and s.name not in UNCATCHABLE))


def requeue_signal(name: str) -> signal.Signals | None:
    """The catchable signal that ``name`` names (``USR2``, ``SIGUSR2`` or ``usr2``), else None."""
    short = name.upper().removeprefix("SIG")
    return getattr(signal, f"SIG{short}") if short in REQUEUE_SIGNALS else None


@dataclass
class ExperimentConfig:
    """Which experiment this is and where its outputs go."""

    name: str = field(default="tiny", metadata={"help": "experiment name: W&B group, output folder"})
    scale: str = field(default="tiny", metadata={"help": "tiny | small | paper", "choices": SCALES})
    seed: int = field(default=0, metadata={"help": "global seed (data order, initialisation, sampling)"})
    output_root: str = field(default="outputs", metadata={"help": "folder that holds every run of every experiment"})


@dataclass
class TrainerConfig:
    """How to train: hardware, precision, length, checkpoints."""

    accelerator: str = field(default="cpu", metadata={"help": "cpu | gpu | auto", "choices": ACCELERATORS})
    strategy: str = field(default="auto", metadata={"help": "auto | ddp | deepspeed", "choices": STRATEGIES})
    devices: int = field(default=1, metadata={"help": "processes (devices) per node"})
    num_nodes: int = field(default=1, metadata={"help": "nodes"})
    precision: str = field(default="32-true", metadata={"help": "Lightning precision", "choices": PRECISIONS})
    max_steps: int = field(default=100, metadata={"help": "optimizer steps to train"})
    accumulate_grad_batches: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    gradient_clip_val: float = field(default=1.0, metadata={"help": "gradient norm clip (0: off)"})
    val_check_interval: int = field(default=50, metadata={"help": "validate every N training batches"})
    limit_val_batches: int = field(default=4, metadata={"help": "validation batches per rank per check"})
    log_every_n_steps: int = field(default=10, metadata={"help": "metric logging period in steps"})
    checkpoint_every_n_steps: int = field(default=50, metadata={"help": "step-based checkpoint period (0: off)"})
    checkpoint_minutes: float = field(default=10.0, metadata={"help": "time-based checkpoint period (0: off)"})
    save_top_k: int = field(default=2, metadata={"help": "best checkpoints kept by the monitored metric"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay (0: no EMA)"})
    deepspeed_stage: int = field(default=2, metadata={
        "help": "ZeRO stage when strategy=deepspeed", "choices": (1, 2, 3)})
    deepspeed_offload: bool = field(default=False, metadata={
        "help": "offload optimizer and parameters to CPU (ZeRO-3)"})
    deepspeed_bucket_size: int = field(default=200_000_000, metadata={
        "help": "elements per DeepSpeed reduce / all-gather bucket (larger: fewer, bigger collectives)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the trained networks (GPU: the first steps compile; numerics may differ slightly)"})
    channels_last: bool = field(default=False, metadata={
        "help": "channels-last memory format for the networks' 4-d weights (GPU convolutions in bf16)"})
    requeue_signal: str = field(default="USR2", metadata={"help": "signal SLURM sends before the time limit"})
    process_timeout_s: int = field(default=1800, metadata={"help": "collective timeout in seconds"})
    max_bad_steps: int = field(default=10, metadata={"help": "stop after this many non-finite losses in a row"})
    media_every_n_steps: int = field(default=0, metadata={"help": "log_media() period (0: at validation only)"})
    deterministic: bool = field(default=False, metadata={"help": "ask torch for deterministic kernels"})

    def validate(self) -> list[str]:
        errors = []
        for name in ("devices", "num_nodes", "max_steps", "accumulate_grad_batches"):
            if getattr(self, name) < 1:
                errors.append(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.deepspeed_bucket_size < 1:
            errors.append(f"trainer.deepspeed_bucket_size must be >= 1, got {self.deepspeed_bucket_size}")
        if not 0.0 <= self.ema_decay < 1.0:
            errors.append(f"trainer.ema_decay must be in [0, 1), got {self.ema_decay}")
        if requeue_signal(self.requeue_signal) is None:
            errors.append(f"trainer.requeue_signal={self.requeue_signal!r} is not a signal the trainer can catch; use "
                          f"USR1 or USR2 (the SLURM profile's requeue_signal) or one of {', '.join(REQUEUE_SIGNALS)}")
        return errors


@dataclass
class TrackingConfig:
    """Weights & Biases and the local metric log."""

    mode: str = field(default="auto", metadata={
        "help": "auto (online with an API key, else offline) | online | offline | disabled", "choices": TRACKING_MODES})
    project: str = field(default="seespeaker", metadata={"help": "W&B project (env WANDB_PROJECT wins)"})
    entity: str = field(default="", metadata={"help": "W&B entity (env WANDB_ENTITY wins)"})
    tags: list[str] = field(default_factory=list, metadata={"help": "extra W&B tags"})
    log_artifacts: bool = field(default=True, metadata={"help": "upload the exported stage file as an artifact"})


@dataclass
class RunConfig:
    """This run: its folder, how it starts."""

    name: str = field(default="", metadata={"help": "optional suffix that tells apart runs of one stage"})
    dir: str = field(default="", metadata={"help": "run folder (derived: <output_root>/<experiment>/<stage>[-<name>])"})
    stages_dir: str = field(default="", metadata={
        "help": "exported stage files (derived: <output_root>/<experiment>/stages)"})
    resume: str = field(default="auto", metadata={
        "help": "auto or true (newest complete checkpoint of run.dir, else fresh) | false | <path> | auto:<path> "
                "(newest of run.dir, else <path>: what a requeued job that was started from <path> resumes with)"})
    init_from: str = field(default="", metadata={
        "help": "exported stage file to load weights from (no optimizer state)"})
    export: bool = field(default=True, metadata={"help": "export the stage file into stages_dir when training ends"})


@dataclass
class Config:
    """The resolved configuration of one training run."""

    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    stage: Any = None
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def world_size(self) -> int:
        return self.trainer.devices * self.trainer.num_nodes

    @property
    def global_batch(self) -> int:
        return self.data.batch_size * self.world_size * self.trainer.accumulate_grad_batches
