"""What a job does on a restart, and the profile and config mistakes that `seespeaker slurm submit` refuses before
anything is queued (no cluster: the batch script runs in bash with stand-ins for srun and scontrol)."""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pytest

from common.errors import UserError
from slurm.profile import time_limit_seconds
from slurm.render import render_script
from slurm.submit import new_job
from trainer.cli import main
from trainer.commands.slurm import load_profile
from trainer.config import compose

SRUN = '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n'  # drops srun's options, runs the task
SCONTROL = '#!/bin/sh\nprintf "node1\\nnode2\\n"\n'  # `scontrol show hostnames` of a two-node allocation
PRINT_ARGS = '#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n'  # the profile's python: prints what a task receives


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def task_arguments(tmp_path: Path, words: list[str], restart_count: int | None, array=None, task=0) -> list[str]:
    """Run the whole batch script as SLURM would on the first node; the arguments the training task receives."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    executable(bin_dir / "srun", SRUN)
    executable(bin_dir / "scontrol", SCONTROL)
    python = executable(tmp_path / "print args", PRINT_ARGS)
    profile = dataclasses.replace(load_profile("local_cpu"), python=str(python))
    job = new_job(2, 1, ["train", *words], "test", array, str(tmp_path))
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]",
           "SLURM_CPUS_PER_TASK": "1"}
    if restart_count is not None:
        env["SLURM_RESTART_COUNT"] = str(restart_count)
    if array:
        env["SLURM_ARRAY_TASK_ID"] = str(task)
    out = subprocess.run(["bash", "-s"], input=render_script(profile, job), capture_output=True, text=True,
                         env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()[1:]  # the first line is the script's own `seespeaker: job ...` line


@pytest.mark.parametrize("resume", ["resume=false", "run.resume=/old/run/checkpoints/last.ckpt", None])
def test_a_requeued_run_continues_from_its_own_checkpoint_whatever_resume_said(tmp_path, resume):
    words = ["experiment=tiny", "stage=conre", "run.name=rq", *([resume] if resume else [])]
    first = task_arguments(tmp_path, words, restart_count=None)
    requeued = task_arguments(tmp_path, words, restart_count=1)
    assert first[0] == "-m" and first[3:3 + len(words)] == words
    assert "run.resume=auto" not in first  # the first run starts as the user asked
    assert compose(first[3:]).run.resume == (resume.split("=", 1)[1] if resume else "auto")
    # the newest checkpoint of run folder conre-rq, not step 0; before the first one, the path the run started from
    given = resume.split("=", 1)[1] if resume else "auto"
    assert compose(requeued[3:]).run.resume == ("auto" if given in ("auto", "false") else f"auto:{given}")
    assert compose(requeued[3:]).run.dir == compose(first[3:]).run.dir
    assert task_arguments(tmp_path, words, restart_count=0) == first


def test_a_requeued_array_task_keeps_its_line_and_resumes(tmp_path):
    words = ["experiment=tiny", "stage=conre", "resume=false"]
    received = task_arguments(tmp_path, words, restart_count=2, array=[["run.name=a", "stage.lr=1e-3"]])
    cfg = compose(received[3:])
    assert (cfg.run.resume, cfg.run.name, cfg.stage.lr) == ("auto", "a", 1e-3)


def test_a_requeued_array_task_started_from_its_own_checkpoint_path_restarts_from_that_path(tmp_path):
    """Each task's restart word is its own: a task whose line names a checkpoint must not restart from step 0."""
    words = ["experiment=tiny", "stage=conre", "run.resume=/job/wide.ckpt"]
    array = [["run.name=a"], ["run.name=b", "run.resume=/task/b.ckpt"]]
    resumes = [compose(task_arguments(tmp_path, words, 1, array, task)[3:]).run.resume for task in (0, 1)]
    assert resumes == ["auto:/job/wide.ckpt", "auto:/task/b.ckpt"]
    first = compose(task_arguments(tmp_path, words, None, array, 1)[3:])
    assert first.run.resume == "/task/b.ckpt"


def test_the_job_requests_one_gpu_per_task_not_every_gpu_of_the_node():
    profile = load_profile("example_gpu")  # gpus_per_node: 8
    for tasks in (4, 8):
        script = render_script(profile, new_job(2, tasks, ["train", "stage=conre"], "test", None, "/tmp"))
        assert f"#SBATCH --gpus-per-node={tasks}" in script.splitlines()
        assert f"#SBATCH --ntasks-per-node={tasks}" in script.splitlines()


@pytest.mark.parametrize("value,seconds", [("90", 5400), ("1:30", 90), ("02:00:00", 7200), ("1-12", 129600),
                                           ("1-12:30", 131400), ("2-00:00:00", 172800), ("0", 0)])
def test_slurm_time_limits_in_seconds(value, seconds):
    assert time_limit_seconds(value) == seconds


@pytest.mark.parametrize("time", ["'00:05:00'", "'5'", "'00:04:00'"])
def test_a_signal_due_before_the_job_starts_is_refused(tmp_path, time):
    path = tmp_path / "cluster.yaml"
    path.write_text(f"partition: gpu\ntime: {time}\nsignal_seconds: 300\n")
    with pytest.raises(UserError, match=r"signal_seconds=300 is not shorter than time="):
        load_profile(str(path))
    path.write_text("partition: gpu\ntime: '00:05:01'\nsignal_seconds: 300\n")
    assert load_profile(str(path)).signal_seconds == 300


def test_a_secret_in_setup_lines_is_refused_and_never_printed(tmp_path, capsys):
    secret = "0123456789abcdef-secret"
    path = tmp_path / "cluster.yaml"
    path.write_text(f"partition: debug\ntime: '01:00:00'\nsetup_lines:\n  - module load cuda\n"
                    f"  - export WANDB_API_KEY={secret}\n  - HF_TOKEN='{secret}' true\n")
    code = main(["slurm", "submit", "--profile", str(path), "--nodes", "1", "--tasks-per-node", "1", "--dry-run",
                 "--no-config-check", "--", "train", "experiment=tiny", "stage=conre"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "setup_lines (line 2): WANDB_API_KEY" in err and "setup_lines (line 3): HF_TOKEN" in err
    assert secret not in err


def test_a_secret_read_when_the_job_runs_is_accepted(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("partition: debug\ntime: '01:00:00'\nsetup_lines:\n"
                    "  - export WANDB_API_KEY=\"$(cat \"$HOME/.wandb_key\")\"\n  - export HF_TOKEN=$HF_TOKEN_SITE\n")
    assert len(load_profile(str(path)).setup_lines) == 2


def test_a_gpu_trainer_on_a_profile_without_gpus_fails_at_submission(capsys):
    code = main(["slurm", "submit", "--profile", "local_cpu", "--nodes", "2", "--tasks-per-node", "1", "--dry-run",
                 "--", "train", "experiment=tiny", "stage=conre", "trainer=ddp"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "trainer.accelerator=gpu" in err and "gpus_per_node=0" in err


def test_a_cpu_trainer_on_a_gpu_profile_is_warned_about(capsys):
    base = ["slurm", "submit", "--profile", "example_gpu", "--nodes", "1", "--tasks-per-node", "8", "--dry-run",
            "--", "train", "experiment=tiny", "stage=conre"]
    assert main(base) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!/bin/bash") and "warning: trainer.accelerator=cpu" in err
    assert main([*base, "trainer=ddp"]) == 0
    assert "warning" not in capsys.readouterr().err
