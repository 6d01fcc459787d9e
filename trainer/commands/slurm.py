"""``seespeaker slurm``: run training on a SLURM cluster."""
from __future__ import annotations

import argparse
import sys

from common.errors import UserError
from trainer.cli import add_command


def slurm_submit(args: argparse.Namespace) -> int:
    """Render an sbatch script for a training run and submit it with sbatch.

    One task per device: --nodes N --tasks-per-node T starts N x T training processes with srun, and appends
    trainer.num_nodes=N trainer.devices=T trainer.requeue_signal=<profile's signal> to the train arguments.
    The job is requeueable: SLURM sends the profile's requeue signal before the time limit (or
    `scancel --signal=USR2 <job>` does), Lightning saves a checkpoint and requeues the job, and the requeued
    run resumes from it (resume=auto) with the same W&B run.

    Examples:
      seespeaker slurm submit --profile example_gpu --nodes 2 --tasks-per-node 8 -- train experiment=small stage=conre
      seespeaker slurm submit --profile local_cpu --nodes 2 --tasks-per-node 1 --dry-run \\
        -- train experiment=tiny stage=conre
      seespeaker slurm submit --profile my_cluster.yaml --nodes 1 --tasks-per-node 4 --array sweep.txt \\
        -- train stage=saw
    """
    from slurm.submit import SubmitError, new_job, read_array_file, submit

    train_args = list(args.train_args)
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    profile = load_profile(args.profile)
    try:
        array = read_array_file(args.array) if args.array else []
        job = new_job(args.nodes, args.tasks_per_node, train_args, profile_name=args.profile, array_overrides=array)
        if args.config_check and train_args[:1] == ["train"]:
            check_train_config(job, profile)
        result = submit(profile, job, dry_run=args.dry_run)
    except SubmitError as exc:
        raise UserError(str(exc)) from None
    if args.dry_run:
        print(result.script, end="")
        return 0
    print(f"Submitted batch job {result.job_id}")
    tasks = f"{len(job.array_overrides)} array tasks, " if job.is_array else ""
    print(f"  {tasks}{job.nodes} node(s) x {job.tasks_per_node} task(s); script {result.script_path}")
    print(f"  log {profile.log_dir}/{job.job_name}-{result.job_id}{'_<task>' if job.is_array else ''}.out; "
          f"W&B run id {job.wandb_run_id}{'-<task>' if job.is_array else ''} (kept on requeue)")
    return 0


def load_profile(choice: str):
    """A SLURM profile from ``configs/slurm/<choice>.yaml`` or a YAML path."""
    from slurm.profile import SlurmProfile
    from trainer.config import ConfigError, load_group_file

    try:
        return load_group_file("slurm", choice, SlurmProfile)
    except ConfigError as exc:
        raise UserError(f"--profile {choice}: {exc}") from None


def check_train_config(job, profile) -> None:
    """Compose the training config each task will run, so that config errors (and a trainer that would not use
    the profile's GPUs, or needs GPUs it has not) fail now and not in the queue."""
    from slurm.submit import check_accelerator
    from trainer.config import ConfigError, compose

    appended = job.appended_overrides(profile)
    for index, extra in enumerate(job.array_overrides or [[]]):
        where = f" (array line {index + 1})" if job.is_array else ""
        try:
            cfg = compose(job.train_args[1:] + extra + appended)
        except ConfigError as exc:
            raise UserError(f"the train arguments{where} are not a valid configuration: {exc}") from None
        warning = check_accelerator(profile, cfg.trainer.accelerator, where)
        if warning:
            print(warning, file=sys.stderr)


def register(subparsers) -> None:
    parser = subparsers.add_parser("slurm", help="submit training jobs to a SLURM cluster", description=__doc__)
    sub = parser.add_subparsers(dest="slurm_command", metavar="<command>", required=True)
    p = add_command(sub, "submit", slurm_submit)
    p.add_argument("--profile", required=True,
                   help="cluster profile: a name in configs/slurm/ (local_cpu, example_gpu) or a YAML file")
    p.add_argument("--nodes", type=int, required=True, help="nodes (trainer.num_nodes)")
    p.add_argument("--tasks-per-node", type=int, required=True, help="processes per node, one per device "
                   "(trainer.devices)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script instead of submitting it")
    p.add_argument("--array", metavar="FILE", help="job array: one task per line of overrides in FILE, "
                   "appended to the train arguments (each line must set run.name or run.dir)")
    p.add_argument("--no-config-check", dest="config_check", action="store_false",
                   help="submit without composing the training config first")
    p.add_argument("train_args", nargs=argparse.REMAINDER, metavar="-- train ...",
                   help="the training command: train experiment=... stage=... [key=value ...]")
