"""Render the sbatch script of a training job: a profile, a shape (nodes x tasks) and the train words in, text out.

Every value that reaches a shell line is quoted with ``shlex.quote``, so a config value such as
``run.name='x; rm -rf /'`` reaches the program as one literal argument; ``#SBATCH`` values, which sbatch parses
itself, use the double quotes sbatch understands. Secrets are never written into the script: SLURM passes the
submitting shell's environment (``WANDB_API_KEY`` included) to the job.
"""
from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.resume import resume_parts
from slurm.profile import SlurmProfile

TEMPLATE = Path(__file__).with_name("template.sh.template")
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
JOB_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
GPU_ENV = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "NCCL_DEBUG": "WARN"}


@dataclass
class JobSpec:
    """What one submission runs: the shape, the train words and the W&B identity."""

    nodes: int
    tasks_per_node: int
    train_args: list[str]
    job_name: str = "seespeaker"
    profile_name: str = "profile"
    workdir: str = "."
    wandb_run_id: str = ""
    array_overrides: list[list[str]] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        return bool(self.array_overrides)

    def restart_resume(self) -> str:
        """The ``run.resume`` word of a restart (:func:`restart_resume_word` of the train words); an array job's
        differs per task, so the script reads its task's (``TASK_RESTART``, set by :func:`array_case`)."""
        if self.is_array:
            return '"${TASK_RESTART}"'
        return shlex.quote(restart_resume_word(self.train_args))

    def appended_overrides(self, profile: SlurmProfile) -> list[str]:
        """The overrides that make the trainer's shape and requeue signal match the job's."""
        return [f"trainer.num_nodes={self.nodes}", f"trainer.devices={self.tasks_per_node}",
                f"trainer.requeue_signal={profile.requeue_signal}"]


def restart_resume_word(words: list[str]) -> str:
    """The ``run.resume`` word of a restart: the run's own newest checkpoint, else what the first run started from
    (``auto:<path>`` when the words name a checkpoint: a node that fails before the run's first own checkpoint must
    not start it from step 0). The last ``resume``/``run.resume`` word of ``words`` is the one the run used."""
    given = [word.split("=", 1)[1] for word in words if word.split("=", 1)[0] in ("resume", "run.resume")]
    _, start = resume_parts(given[-1] if given else "auto")
    return f"run.resume=auto:{start}" if start else "run.resume=auto"


def job_name_from(train_args: list[str]) -> str:
    """``seespeaker-<stage>[-<run name>]`` from the train words (letters, digits, ``_.-`` only)."""
    values = dict(word.split("=", 1) for word in train_args if "=" in word)
    parts = ["seespeaker", values.get("stage", ""), values.get("run.name", "")]
    name = "-".join(JOB_NAME_CHARS.sub("_", p) for p in parts if p)
    return name[:64]


def signal_spec(profile: SlurmProfile) -> str:
    """``--signal`` value: sent to the job steps (the srun tasks), where Lightning's SLURMEnvironment listens.

    Without the ``B:`` prefix SLURM signals every task of every step but not the batch shell; with it only the
    shell would get the signal and the training processes would never see it.
    """
    return f"{profile.requeue_signal}@{profile.signal_seconds}"


def render_script(profile: SlurmProfile, job: JobSpec, template: Path = TEMPLATE) -> str:
    """The complete sbatch script text."""
    log_dir = profile.log_dir.rstrip("/") or "."
    output = f"{log_dir}/%x-%A_%a.out" if job.is_array else f"{log_dir}/%x-%j.out"
    values = {
        "profile_name": job.profile_name.replace("\n", " "),
        "job_name": directive_quote(job.job_name),
        "nodes": str(job.nodes),
        "tasks_per_node": str(job.tasks_per_node),
        "cpus_per_task": str(profile.cpus_per_task),
        "time": directive_quote(profile.time),
        "partition": directive_quote(profile.partition),
        "optional_directives": optional_directives(profile, job),
        "output": directive_quote(output),
        "workdir": directive_quote(job.workdir),
        "signal_spec": directive_quote(signal_spec(profile)),
        "setup_lines": "\n".join(profile.setup_lines) + ("\n" if profile.setup_lines else ""),
        "task_case": array_case(job.train_args, job.array_overrides),
        "master_addr": master_addr(profile),
        "wandb_env": wandb_env(job),
        "backend_env": export_lines(GPU_ENV if profile.uses_gpus else {}, keep_existing=True),
        "profile_env": export_lines({k: v for k, v in profile.env.items() if k != "MASTER_ADDR"}),
        "command": launch_command(profile, job),
        "restart_resume": job.restart_resume(),
    }
    text = template.read_text()
    unknown = set(PLACEHOLDER.findall(text)) - set(values)
    if unknown:
        raise ValueError(f"{template}: unknown placeholders {sorted(unknown)}")
    text = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    return re.sub(r"\n{3,}", "\n\n", text)


def directive_quote(value: str) -> str:
    """A value for an ``#SBATCH`` line. sbatch, not the shell, reads these lines: it understands double quotes
    and backslashes but not single quotes, so a value that ``shlex.quote`` would change is double-quoted."""
    if "\n" in value or "\r" in value:
        raise ValueError(f"a value of an #SBATCH line must be one line, got {value!r}")
    if shlex.quote(value) == value:
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def optional_directives(profile: SlurmProfile, job: JobSpec) -> str:
    """``#SBATCH`` lines present only when the profile or the job asks for them."""
    lines = []
    if profile.uses_gpus:  # one GPU per task: a GPU no task drives would sit idle, held from other jobs
        lines.append(f"--gpus-per-node={job.tasks_per_node}")
    for flag, value in (("account", profile.account), ("mem", profile.mem), ("constraint", profile.constraint),
                        ("exclude", profile.exclude), ("qos", profile.qos)):
        if value:
            lines.append(f"--{flag}={directive_quote(value)}")
    if job.is_array:
        lines.append(f"--array=0-{len(job.array_overrides) - 1}")
    return "".join(f"#SBATCH {line}\n" for line in lines)


def array_case(train_args: list[str], array_overrides: list[list[str]]) -> str:
    """A ``case`` on the array task id that sets TASK_ARGS to that task's override words and TASK_RESTART to its
    restart word (a task whose line names a checkpoint restarts from it before its own first checkpoint)."""
    if not array_overrides:
        return ""
    lines = ["# Array task i appends the overrides of line i of the array file.",
             'case "${SLURM_ARRAY_TASK_ID:?this script is a job array}" in']
    for index, words in enumerate(array_overrides):
        restart = shlex.quote(restart_resume_word([*train_args, *words]))
        lines.append(f"  {index}) TASK_ARGS=({' '.join(shlex.quote(w) for w in words)}); TASK_RESTART={restart} ;;")
    lines.append('  *) echo "no overrides for array task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;')
    lines.append("esac")
    return "\n".join(lines) + "\n"


def master_addr(profile: SlurmProfile) -> str:
    """The rendezvous host: the profile's MASTER_ADDR if set, else the first node of the allocation."""
    if "MASTER_ADDR" in profile.env:
        return shlex.quote(profile.env["MASTER_ADDR"])
    return '"$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | sed -n 1p)"'


def wandb_env(job: JobSpec) -> str:
    """The W&B run id a fresh run takes (array task i: ``<id>-<i>``); a run folder's saved ``wandb_id`` wins, so a
    requeued or resubmitted run continues its own W&B run."""
    if not job.wandb_run_id:
        return ""
    run_id = shlex.quote(job.wandb_run_id)
    if job.is_array:
        run_id += '"-${SLURM_ARRAY_TASK_ID}"'
    return f"export SEESPEAKER_WANDB_ID={run_id}"


def export_lines(env: dict[str, str], keep_existing: bool = False) -> str:
    """``export NAME=value`` lines with quoted values; ``keep_existing`` keeps a value the job already has."""
    if keep_existing:
        return "\n".join(f"export {name}=${{{name}:-{shlex.quote(str(value))}}}" for name, value in env.items())
    return "\n".join(f"export {name}={shlex.quote(str(value))}" for name, value in env.items())


def launch_command(profile: SlurmProfile, job: JobSpec) -> str:
    """The program srun starts once per task:
    ``<python> -m trainer.cli train <words> <task words> [run.resume=auto or auto:<path> on a restart] <shape>``.

    The template sets RESTART_ARGS; ``${A[@]+"${A[@]}"}`` expands an empty array to nothing under ``set -u`` in
    every bash (before 4.4 a plain ``"${A[@]}"`` of an empty array is an unbound-variable error)."""
    python = profile.python or sys.executable
    words = [python, "-m", "trainer.cli", *job.train_args]
    quoted = [shlex.quote(w) for w in words]
    if job.is_array:
        quoted.append('"${TASK_ARGS[@]}"')
    quoted.append('${RESTART_ARGS[@]+"${RESTART_ARGS[@]}"}')
    quoted += [shlex.quote(w) for w in job.appended_overrides(profile)]
    return " ".join(quoted)
