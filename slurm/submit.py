"""Check a job against the trainer config, write its sbatch script and submit it with ``sbatch``."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from common.errors import SeespeakerError
from common.files import atomic_write_text
from slurm.profile import SlurmProfile
from slurm.render import JobSpec, job_name_from, render_script

SHAPE_KEYS = ("trainer.num_nodes", "trainer.devices", "trainer.requeue_signal")
RUN_FOLDER_KEYS = ("run.name", "run.dir")
JOB_ID = re.compile(r"^(\d+)(;.*)?$")


class SubmitError(SeespeakerError, ValueError):
    """A submission that cannot go ahead; the message says what was wrong and what to do."""


@dataclass
class SubmitResult:
    """What a submission produced: the script (always) and the job id (unless a dry run)."""

    script: str
    script_path: Path | None = None
    job_id: str | None = None


def expected_overrides(job: JobSpec, profile: SlurmProfile) -> dict[str, str]:
    """The values the job appends for the shape keys, by key."""
    return dict(word.split("=", 1) for word in job.appended_overrides(profile))


def check_shape(job: JobSpec, profile: SlurmProfile, words: list[str], where: str) -> None:
    """Fail when ``words`` set trainer.num_nodes / trainer.devices / trainer.requeue_signal to other values than
    the job's ``--nodes`` / ``--tasks-per-node`` / the profile's signal."""
    expected = expected_overrides(job, profile)
    for word in words:
        key, _, value = word.partition("=")
        key = key.lstrip("+")
        if key in SHAPE_KEYS and value != expected[key]:
            flag = {"trainer.num_nodes": "--nodes", "trainer.devices": "--tasks-per-node",
                    "trainer.requeue_signal": "the profile's requeue_signal"}[key]
            raise SubmitError(
                f"{where}: {key}={value} disagrees with {flag} ({expected[key]}): the job runs "
                f"{job.nodes} node(s) x {job.tasks_per_node} task(s); drop the {key} override (submit sets it) "
                f"or change {flag}")


def check_accelerator(profile: SlurmProfile, accelerator: str, where: str = "") -> str:
    """The trainer's accelerator against the profile's GPUs: a SubmitError when the run needs GPUs the job does not
    request; a warning (returned, else "") when the job requests GPUs that the run leaves idle."""
    if accelerator == "gpu" and not profile.uses_gpus:
        raise SubmitError(f"trainer.accelerator=gpu{where}, but the profile requests no GPUs (gpus_per_node=0): the "
                          "job would fail as it starts; use a profile with gpus_per_node > 0 or a CPU trainer "
                          "(trainer=cpu or trainer.accelerator=cpu)")
    if accelerator == "cpu" and profile.uses_gpus:
        return (f"warning: trainer.accelerator=cpu{where}, but the profile requests GPUs (gpus_per_node="
                f"{profile.gpus_per_node}): the job would hold them and train on the CPUs; choose a GPU trainer "
                "(e.g. trainer=ddp) or a CPU profile")
    return ""


def check_job(job: JobSpec, profile: SlurmProfile) -> None:
    """Every check that can fail before anything is written or submitted."""
    if job.nodes < 1 or job.tasks_per_node < 1:
        raise SubmitError(f"--nodes ({job.nodes}) and --tasks-per-node ({job.tasks_per_node}) must be >= 1")
    if profile.uses_gpus and job.tasks_per_node > profile.gpus_per_node:
        raise SubmitError(f"--tasks-per-node={job.tasks_per_node} exceeds the profile's gpus_per_node="
                          f"{profile.gpus_per_node}: one task drives one GPU; lower --tasks-per-node")
    if not job.train_args or job.train_args[0] != "train":
        raise SubmitError("the command after '--' must be `train ...`, e.g. "
                          "`seespeaker slurm submit --profile P --nodes 2 --tasks-per-node 1 -- train "
                          "experiment=tiny stage=conre`")
    check_shape(job, profile, job.train_args[1:], "train arguments")
    for index, words in enumerate(job.array_overrides):
        check_shape(job, profile, words, f"array line {index + 1}")
        if len(job.array_overrides) > 1 and not any(w.split("=", 1)[0] in RUN_FOLDER_KEYS for w in words):
            raise SubmitError(f"array line {index + 1} ({' '.join(words)}) sets neither run.name nor run.dir: "
                              "every task of an array needs its own run folder, or they overwrite each other's "
                              "checkpoints; add run.name=<something unique> to the line")


def read_array_file(path: str | Path) -> list[list[str]]:
    """Override lines of a sweep: one task per non-empty line, shell words; ``#`` starts a comment."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SubmitError(f"--array {path}: cannot read it ({exc.strerror})") from None
    tasks = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise SubmitError(f"{path}:{number}: {exc} in {line!r}") from None
        if not words:
            continue
        bad = [w for w in words if "=" not in w]
        if bad:
            raise SubmitError(f"{path}:{number}: {bad[0]!r} is not key=value; each line holds overrides such as "
                              "`stage.lr=1e-4 run.name=lr1e-4`")
        tasks.append(words)
    if not tasks:
        raise SubmitError(f"--array {path}: no override lines (blank lines and # comments are skipped)")
    return tasks


def new_job(nodes: int, tasks_per_node: int, train_args: list[str], profile_name: str,
            array_overrides: list[list[str]] | None = None, workdir: str | None = None) -> JobSpec:
    """A job with its name, working folder and a fresh W&B run id."""
    name = job_name_from(train_args)
    submit_id = uuid.uuid4().hex[:8]
    array_overrides = array_overrides or []
    return JobSpec(nodes=nodes, tasks_per_node=tasks_per_node, train_args=list(train_args), job_name=name,
                   profile_name=profile_name, workdir=workdir or os.getcwd(), wandb_run_id=f"{name}-{submit_id}",
                   array_overrides=array_overrides)


def find_sbatch(env: dict | None = None) -> str:
    """The ``sbatch`` on PATH, or a SubmitError saying how to get one."""
    path = shutil.which("sbatch", path=(env or os.environ).get("PATH"))
    if path is None:
        raise SubmitError("sbatch is not on PATH: run this on a SLURM login node (or load the cluster's slurm "
                          "module), or use --dry-run to print the script without submitting")
    return path


def save_script(script: str, job: JobSpec, log_dir: Path, job_id: str) -> Path:
    """Keep the submitted script next to its log (atomically), so that the run can be resubmitted as it was."""
    path = log_dir / f"{job.job_name}-{job_id}.sbatch"
    return atomic_write_text(path, script)


def parse_job_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` output (``<id>`` or ``<id>;<cluster>``)."""
    match = JOB_ID.match(stdout.strip())
    if not match:
        raise SubmitError(f"sbatch printed no job id (output: {stdout.strip()!r})")
    return match.group(1)


def submit(profile: SlurmProfile, job: JobSpec, dry_run: bool = False, env: dict | None = None) -> SubmitResult:
    """Check, render and (unless ``dry_run``) submit the job; returns the script and the job id."""
    check_job(job, profile)
    script = render_script(profile, job)
    if dry_run:
        return SubmitResult(script=script)
    sbatch = find_sbatch(env)
    log_dir = Path(job.workdir) / profile.log_dir
    created = not log_dir.exists()
    log_dir.mkdir(parents=True, exist_ok=True)  # SLURM does not create the folder of --output
    result = subprocess.run([sbatch, "--parsable"], input=script, capture_output=True, text=True, env=env,
                            cwd=job.workdir)
    if result.returncode != 0:
        if created and not any(log_dir.iterdir()):
            log_dir.rmdir()
        raise SubmitError(f"sbatch rejected the script (exit {result.returncode}): {result.stderr.strip()}; "
                          "see it with --dry-run")
    job_id = parse_job_id(result.stdout)
    return SubmitResult(script=script, script_path=save_script(script, job, log_dir, job_id), job_id=job_id)
