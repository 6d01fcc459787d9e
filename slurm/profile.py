"""The typed SLURM cluster profile (``configs/slurm/<name>.yaml``): what a cluster offers and how to use it."""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field

from omegaconf import MISSING

SECRET_NAME = re.compile(r"(API_KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
MEMORY = re.compile(r"^\d+[KMGT]?$")
# NAME=value in a shell line, where NAME looks like a secret and the value is a literal (not "$(...)" or "$VAR").
SECRET_ASSIGNMENT = re.compile(r"(?<![\w$])(\w*(?:API_KEY|TOKEN|SECRET|PASSWORD|PASSWD)\w*)=(?![\"']?\$)",
                               re.IGNORECASE)


@dataclass
class SlurmProfile:
    """One cluster: where jobs go, what each node gives a job, and how preemption is announced."""

    partition: str = field(default=MISSING, metadata={"help": "partition (queue) the job is submitted to"})
    time: str = field(default=MISSING, metadata={
        "help": "wall-clock limit per job run, SLURM syntax (e.g. 04:00:00 or 2-00:00:00); a requeued run "
                "starts a new limit"})
    account: str = field(default="", metadata={"help": "account charged for the job (empty: the user's default)"})
    gpus_per_node: int = field(default=0, metadata={
        "help": "GPUs per node (0 for CPU clusters: no GPU request, gloo backend); a job requests one GPU per task, "
                "so at most this many tasks per node"})
    cpus_per_task: int = field(default=1, metadata={"help": "CPU cores per task (one task per device)"})
    mem: str = field(default="", metadata={"help": "memory per node, SLURM syntax (e.g. 64G; empty: cluster default)"})
    constraint: str = field(default="", metadata={"help": "node feature constraint (e.g. a100|h100; empty: none)"})
    exclude: str = field(default="", metadata={"help": "nodes never to use (SLURM host list; empty: none)"})
    qos: str = field(default="", metadata={"help": "quality of service (empty: the partition's default)"})
    setup_lines: list[str] = field(default_factory=list, metadata={
        "help": "shell lines run in the batch script before srun (module load, source a venv, ...)"})
    requeue_signal: str = field(default="USR2", metadata={
        "help": "signal SLURM sends before the time limit; Lightning saves, requeues the job and exits on it",
        "choices": ("USR1", "USR2", "URG", "HUP")})
    signal_seconds: int = field(default=120, metadata={
        "help": "seconds before the time limit at which the requeue signal is sent (time to save a checkpoint)"})
    python: str = field(default="", metadata={
        "help": "Python interpreter on the compute nodes (empty: the one running `seespeaker slurm submit`)"})
    log_dir: str = field(default="slurm-logs", metadata={
        "help": "folder of the job logs, <log_dir>/<job name>-<job id>.out (relative: to the submit folder)"})
    env: dict[str, str] = field(default_factory=dict, metadata={
        "help": "extra environment exported in the job (never secrets: those pass from the submitting shell)"})

    def validate(self) -> list[str]:
        """Problems with this profile, each naming the field and what to write instead."""
        errors = []
        if not self.partition.strip():
            errors.append("partition must not be empty")
        if not SLURM_TIME.match(self.time):
            errors.append(f"time={self.time!r} is not SLURM time syntax (e.g. 04:00:00 or 1-12:00:00)")
        if self.gpus_per_node < 0:
            errors.append(f"gpus_per_node must be >= 0, got {self.gpus_per_node}")
        if self.cpus_per_task < 1:
            errors.append(f"cpus_per_task must be >= 1, got {self.cpus_per_task}")
        if self.mem and not MEMORY.match(self.mem):
            errors.append(f"mem={self.mem!r} is not SLURM memory syntax (e.g. 64G or 16000M)")
        if not hasattr(signal, f"SIG{self.requeue_signal}"):
            errors.append(f"requeue_signal={self.requeue_signal!r} is not a signal name (USR1, USR2, ...)")
        if self.signal_seconds < 1 or self.signal_seconds > 65535:
            errors.append(f"signal_seconds must be in [1, 65535], got {self.signal_seconds}")
        elif SLURM_TIME.match(self.time) and 0 < time_limit_seconds(self.time) <= self.signal_seconds:
            errors.append(f"signal_seconds={self.signal_seconds} is not shorter than time={self.time} "
                          f"({time_limit_seconds(self.time)} s): the requeue signal would come as soon as the job "
                          "starts, on every requeue; lower signal_seconds or raise time")
        errors += self._secret_errors()
        return errors

    def _secret_errors(self) -> list[str]:
        """Bad names in ``env``, and secrets that ``env`` or ``setup_lines`` would write into every job script."""
        errors = []
        for name in self.env:
            if not ENV_NAME.match(name):
                errors.append(f"env: {name!r} is not a valid environment variable name")
            elif SECRET_NAME.search(name):
                errors.append(f"env: {name} looks like a secret; export it in the shell that submits the job "
                              "(SLURM passes it on) instead of writing it into a profile or a job script")
        for number, line in enumerate(self.setup_lines, start=1):
            for name in SECRET_ASSIGNMENT.findall(line):
                errors.append(f"setup_lines (line {number}): {name} is given a literal value, which would be written "
                              "into every job script; export it in the shell that submits the job (SLURM passes it "
                              f"on) or read it when the job runs, e.g. {name}=\"$(cat <file only you can read>)\"")
        return errors

    @property
    def uses_gpus(self) -> bool:
        """Whether jobs on this cluster request GPUs (and so use NCCL)."""
        return self.gpus_per_node > 0


def time_limit_seconds(value: str) -> int:
    """Seconds of a SLURM time limit (M, M:S, H:M:S, D-H, D-H:M or D-H:M:S); 0 means no limit."""
    days, _, clock = value.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if days:
        hours, minutes, seconds = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        hours, minutes, seconds = parts
    else:
        hours, minutes, seconds = 0, parts[0], (parts + [0])[1]
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds
