"""The sbatch script that `seespeaker slurm submit` writes, and the checks before submission (no cluster)."""
from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from common.errors import UserError
from slurm.profile import SlurmProfile
from slurm.render import render_script
from slurm.submit import SubmitError, check_job, new_job, read_array_file, submit
from trainer.cli import main
from trainer.commands.slurm import load_profile

HOSTILE = ["run.name=x; rm -rf /", "tracking.tags=[$(touch pwned),`touch pwned2`]", "run.init_from=it's \"here\""]


def cpu_profile() -> SlurmProfile:
    return load_profile("local_cpu")


def gpu_profile() -> SlurmProfile:
    return load_profile("example_gpu")


def train_job(nodes=2, tasks=1, extra=(), array=None):
    return new_job(nodes, tasks, ["train", "experiment=tiny", "stage=conre", *extra], "test", array, "/tmp")


def srun_program_line(script: str) -> str:
    """The line after `srun ... \\`: the program and its arguments, as the batch shell sees them."""
    lines = script.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("srun "))
    assert lines[index].endswith("\\")
    return lines[index + 1].strip()


def arguments_as_received(script: str, tmp_path: Path, env: dict | None = None) -> list[str]:
    """Run the rendered argument construction with printf instead of python: one output line per argument."""
    program = srun_program_line(script)
    prefix = " ".join(shlex.quote(w) for w in [os.sys.executable, "-m", "trainer.cli"])
    assert program.startswith(prefix)
    case_block = script[script.index("case "):script.index("esac") + 4] if "case " in script else ""
    command = f"{case_block}\nprintf '%s\\n' {program[len(prefix):]}"
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path, check=True,
                         env={**os.environ, **(env or {})})
    return out.stdout.splitlines()


def test_gpu_profile_requests_gpus_and_cpu_profile_requests_none():
    gpu = render_script(gpu_profile(), train_job(2, 8))
    cpu = render_script(cpu_profile(), train_job(2, 1))
    assert "#SBATCH --gpus-per-node=8" in gpu.splitlines()
    assert "NCCL_DEBUG" in gpu and "TORCH_NCCL_ASYNC_ERROR_HANDLING" in gpu
    assert "gpus" not in cpu and "gres" not in cpu and "NCCL" not in cpu
    for script, nodes, tasks in ((gpu, 2, 8), (cpu, 2, 1)):
        assert f"#SBATCH --nodes={nodes}" in script and f"#SBATCH --ntasks-per-node={tasks}" in script
        assert "#SBATCH --requeue" in script and "export SEESPEAKER_PLAIN_LOGS=1" in script
        assert f"trainer.num_nodes={nodes} trainer.devices={tasks} trainer.requeue_signal=USR2" in script
    assert "#SBATCH --constraint=\"a100|h100\"" in gpu  # sbatch reads double quotes, not single ones


def test_requeue_signal_goes_to_the_training_tasks_not_only_the_batch_shell():
    profile = dataclasses.replace(cpu_profile(), requeue_signal="USR1", signal_seconds=90)
    script = render_script(profile, train_job())
    assert "#SBATCH --signal=USR1@90" in script.splitlines()
    assert "B:" not in script
    assert script.rstrip().endswith("trainer.requeue_signal=USR1")


def test_shell_metacharacters_reach_the_program_as_literal_arguments(tmp_path):
    script = render_script(cpu_profile(), train_job(extra=HOSTILE))
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    received = arguments_as_received(script, tmp_path)
    assert received == ["train", "experiment=tiny", "stage=conre", *HOSTILE, "trainer.num_nodes=2",
                        "trainer.devices=1", "trainer.requeue_signal=USR2"]
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_array_task_appends_its_own_line_of_overrides(tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# learning-rate sweep\nstage.lr=1e-3 run.name=a\n\n'run.name=b; echo hi' stage.lr=2e-3\n")
    lines = read_array_file(sweep)
    assert lines == [["stage.lr=1e-3", "run.name=a"], ["run.name=b; echo hi", "stage.lr=2e-3"]]
    script = render_script(cpu_profile(), train_job(array=lines))
    assert "#SBATCH --array=0-1" in script.splitlines() and "%A_%a.out" in script
    received = arguments_as_received(script, tmp_path, {"SLURM_ARRAY_TASK_ID": "1"})
    assert received[3:5] == ["run.name=b; echo hi", "stage.lr=2e-3"]
    assert received[-3:] == ["trainer.num_nodes=2", "trainer.devices=1", "trainer.requeue_signal=USR2"]


def test_array_lines_without_their_own_run_folder_are_refused(tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("stage.lr=1e-3\nstage.lr=2e-3\n")
    with pytest.raises(SubmitError, match=r"array line 1 .*run\.name"):
        check_job(train_job(array=read_array_file(sweep)), cpu_profile())


@pytest.mark.parametrize("override,flag", [("trainer.num_nodes=3", "--nodes"),
                                           ("trainer.devices=4", "--tasks-per-node"),
                                           ("trainer.requeue_signal=USR1", "the profile.s requeue_signal")])
def test_shape_disagreeing_with_trainer_overrides_fails_before_submission(override, flag, capsys):
    with pytest.raises(SubmitError, match=rf"{override.split('=')[0]}=.*disagrees with {flag}"):
        check_job(train_job(2, 1, extra=[override]), cpu_profile())
    code = main(["slurm", "submit", "--profile", "local_cpu", "--nodes", "2", "--tasks-per-node", "1", "--dry-run",
                 "--no-config-check", "--", "train", "experiment=tiny", "stage=conre", override])
    assert code == 2
    assert "disagrees" in capsys.readouterr().err


def test_matching_shape_overrides_are_accepted():
    check_job(train_job(2, 1, extra=["trainer.num_nodes=2", "trainer.devices=1"]), cpu_profile())


def test_more_tasks_than_gpus_is_refused():
    with pytest.raises(SubmitError, match="gpus_per_node=8"):
        check_job(train_job(1, 9), gpu_profile())


def test_profile_missing_a_required_field_names_it(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("time: '01:00:00'\ngpus_per_node: 4\n")
    with pytest.raises(UserError, match="partition"):
        load_profile(str(path))
    path.write_text("partition: gpu\ntime: 'soon'\nenv: {WANDB_API_KEY: abc}\n")
    with pytest.raises(UserError, match=r"time='soon'.*WANDB_API_KEY looks like a secret"):
        load_profile(str(path))


def test_sbatch_missing_from_path_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SubmitError, match="sbatch is not on PATH.*--dry-run"):
        submit(cpu_profile(), train_job(), env={"PATH": str(tmp_path)})
    assert not (tmp_path / "slurm-logs").exists()


def test_wandb_api_key_never_appears_in_the_script(monkeypatch, capsys):
    secret = "wandb-secret-0123456789abcdef"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    code = main(["slurm", "submit", "--profile", "local_cpu", "--nodes", "2", "--tasks-per-node", "1", "--dry-run",
                 "--no-config-check", "--", "train", "experiment=tiny", "stage=conre"])
    script = capsys.readouterr().out
    assert code == 0 and script.startswith("#!/bin/bash")
    assert secret not in script and "WANDB_API_KEY" not in script
    assert "export SEESPEAKER_WANDB_ID=seespeaker-conre-" in script


def test_the_command_after_the_separator_must_be_train():
    with pytest.raises(SubmitError, match="must be `train"):
        check_job(new_job(1, 1, ["evaluate", "x"], "test"), cpu_profile())


def test_the_dry_run_commands_of_the_slurm_guide_work(capsys, monkeypatch):
    repo = Path(__file__).resolve().parents[2]
    guide = (repo / "docs" / "slurm.md").read_text()
    commands = [line for line in guide.splitlines()
                if line.startswith("seespeaker slurm submit") and "--dry-run" in line]
    assert len(commands) >= 2
    monkeypatch.chdir(repo)
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
        script = capsys.readouterr().out
        assert script.startswith("#!/bin/bash") and "srun " in script


def test_a_config_error_fails_at_submission_not_in_the_queue(capsys):
    code = main(["slurm", "submit", "--profile", "local_cpu", "--nodes", "1", "--tasks-per-node", "1", "--dry-run",
                 "--", "train", "experiment=tiny", "stage=conre", "trainer.max_stepz=5"])
    assert code == 2
    err = capsys.readouterr().err
    assert "not a valid configuration" in err and "max_stepz" in err
