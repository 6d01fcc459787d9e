"""`seespeaker slurm submit` on a real two-node SLURM cluster: plain jobs, quoting through sbatch and srun, 2-node
DDP training, requeue and resume, SIGTERM, job arrays. Training runs are a few tiny steps without validation
(validation is the stage tests' concern)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
TRAIN_STEPS = 8


def seespeaker(*args: str, env: dict, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (``python -m trainer.cli`` is the ``seespeaker`` console script)."""
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(autouse=True)
def no_job_outlives_its_test(request):
    """A failed test must not leave a job that holds the cluster's CPUs for the next one."""
    yield
    if "slurm_cluster" in request.fixturenames:
        request.getfixturevalue("slurm_cluster").cancel_all()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A tiny synthetic corpus (4 speakers, 1 s clips), written once for this module."""
    out = tmp_path_factory.mktemp("slurm-corpus") / "data"
    result = seespeaker("prepare", "synthetic", "--out", str(out), "--speakers", "4", "--clips-per-speaker", "2",
                        "--seconds", "1", "--resolution", "64", env=job_env(), cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out


def job_env(cluster=None) -> dict:
    """The submitting shell's environment: one thread per process, W&B offline, the cluster's clients on PATH."""
    env = cluster.env() if cluster is not None else dict(os.environ)
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(REPO))
    env.pop("WANDB_API_KEY", None)
    return env


def train_words(corpus: Path, out: Path, steps: int = TRAIN_STEPS, **extra: str) -> list[str]:
    words = {"data.root": str(corpus), "experiment.output_root": str(out), "trainer.strategy": "ddp",
             "trainer.max_steps": str(steps), "data.batch_size": "4", "data.samples_per_epoch": "64",
             "trainer.val_check_interval": "4", "trainer.limit_val_batches": "0", "trainer.log_every_n_steps": "1",
             "trainer.checkpoint_every_n_steps": "4", "trainer.process_timeout_s": "30", **extra}
    return ["train", "experiment=tiny", "stage=conre", *(f"{k}={v}" for k, v in words.items())]


def submit(cluster, workdir: Path, words: list[str], *options: str, nodes: int = 2, env: dict | None = None) -> str:
    """`seespeaker slurm submit --profile local_cpu --nodes 2 --tasks-per-node 1 -- <words>`; returns the job id.

    Only the first training test composes the config at submission (the default); the others pass
    --no-config-check, which saves importing every stage once per submission.
    """
    result = seespeaker("slurm", "submit", "--profile", "local_cpu", "--nodes", str(nodes), "--tasks-per-node", "1",
                        *options, "--", *words, env=env or job_env(cluster), cwd=workdir)
    assert result.returncode == 0, result.stderr
    match = re.search(r"^Submitted batch job (\d+)$", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match.group(1)


def job_log(workdir: Path, job: str) -> str:
    logs = list((workdir / "slurm-logs").glob(f"*-{job}.out"))
    return logs[0].read_text(errors="replace") if logs else ""


def metric_rows(run_dir: Path) -> list[dict]:
    """The rows of the run's metrics.jsonl, in file order."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def metric_steps(run_dir: Path) -> list[int]:
    return [int(row["step"]) for row in metric_rows(run_dir) if "step" in row]


def slurm_time(value: str) -> float:
    """Seconds since the epoch of a SLURM timestamp (local time, e.g. 2026-11-25T14:41:05)."""
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))


def wait_for_step(cluster, job: str, run_dir: Path, step: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if max(metric_steps(run_dir), default=-1) >= step:
            return
        assert cluster.job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), cluster.job_info(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job} did not reach step {step} in {timeout}s")


def test_two_nodes_run_one_task_each(slurm_cluster, tmp_path):
    script = ("#!/bin/bash\n#SBATCH --nodes=2\n#SBATCH --ntasks-per-node=1\n#SBATCH --output=out-%j.txt\n"
              "srun --label bash -c 'echo host=$(hostname) procid=$SLURM_PROCID node=$SLURM_NODEID "
              "ntasks=$SLURM_NTASKS; getent hosts node1'\n")
    job = slurm_cluster.sbatch(script, cwd=tmp_path)
    assert slurm_cluster.wait(job, timeout=30) == "COMPLETED"
    text = (tmp_path / f"out-{job}.txt").read_text()
    tasks = sorted(re.findall(r"^(\d): host=(\S+) procid=(\d) node=(\d) ntasks=(\d)$", text, re.MULTILINE))
    assert tasks == [("0", "node1", "0", "0", "2"), ("1", "node2", "1", "1", "2")], text
    assert text.count("10.77.0.1") == 2  # both nodes resolve the rendezvous host


def test_submitted_script_passes_hostile_values_literally(slurm_cluster, tmp_path):
    """Through the real sbatch, bash and srun, on both nodes: spaces in folders, shell syntax in values."""
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    show_args = workdir / "show args.sh"
    show_args.write_text('#!/bin/sh\nfor a in "$@"; do echo "arg=[$a]"; done\n')
    show_args.chmod(0o755)
    profile = tmp_path / "cluster.yaml"
    profile.write_text(f"partition: debug\ntime: '00:05:00'\npython: '{show_args}'\nlog_dir: 'logs dir'\n")
    hostile = ["run.name=x; rm -rf /", "tracking.tags=[$(touch pwned),`touch pwned2`]", "run.init_from=it's \"q\""]
    result = seespeaker("slurm", "submit", "--profile", str(profile), "--nodes", "2", "--tasks-per-node", "1",
                        "--no-config-check", "--", "train", *hostile, env=job_env(slurm_cluster), cwd=workdir)
    assert result.returncode == 0, result.stderr
    job = re.search(r"^Submitted batch job (\d+)$", result.stdout, re.MULTILINE).group(1)
    assert slurm_cluster.wait(job, timeout=30) == "COMPLETED"
    log = next((workdir / "logs dir").glob(f"*-{job}.out")).read_text()
    expected = ["-m", "trainer.cli", "train", *hostile, "trainer.num_nodes=2", "trainer.devices=1",
                "trainer.requeue_signal=USR2"]
    for rank in (0, 1):
        assert re.findall(rf"^{rank}: arg=\[(.*)\]$", log, re.MULTILINE) == expected, log
    assert not list(workdir.glob("pwned*")) and not list(tmp_path.glob("pwned*"))
    assert list((workdir / "logs dir").glob(f"*-{job}.sbatch"))  # the submitted script is kept next to its log


def test_a_script_sbatch_rejects_is_reported_and_leaves_nothing(slurm_cluster, tmp_path):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: nosuch\ntime: '00:05:00'\n")
    result = seespeaker("slurm", "submit", "--profile", str(profile), "--nodes", "1", "--tasks-per-node", "1",
                        "--no-config-check", "--", "train", "stage=conre", env=job_env(slurm_cluster), cwd=tmp_path)
    assert result.returncode == 2
    assert "sbatch rejected the script" in result.stderr and "partition" in result.stderr.lower(), result.stderr
    assert not (tmp_path / "slurm-logs").exists() and slurm_cluster.squeue() == []


def test_submit_trains_two_node_ddp_to_completion(slurm_cluster, corpus, tmp_path):
    job = submit(slurm_cluster, tmp_path, train_words(corpus, tmp_path / "out"))
    state = slurm_cluster.wait(job, timeout=150)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", log[-4000:]
    for rank in (0, 1):  # srun --label prefixes each line with the task's rank; task r runs on node r + 1
        assert re.search(rf"^{rank}: .*GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2", log, re.MULTILINE), log[-4000:]
        rank_line = rf"^{rank}: .*global_rank={rank} .*node_rank={rank} .*world_size=2 .*host=node{rank + 1}\b"
        assert re.search(rank_line, log, re.MULTILINE), log[-4000:]
    run_dir = tmp_path / "out" / "tiny" / "conre"
    assert list((run_dir / "checkpoints").glob("*.ckpt")), sorted(p.name for p in run_dir.rglob("*"))
    assert TRAIN_STEPS - 1 <= max(metric_steps(run_dir)) <= TRAIN_STEPS  # logged at the step index or after it
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    wandb_id = (run_dir / "wandb_id").read_text().strip()
    assert len(runs) == 1 and runs[0].name.endswith(f"-{wandb_id}")  # rank 0 only makes a W&B run


def scontrol_shim_env(cluster, folder: Path, on_requeue: str) -> dict:
    """The job's environment with an ``scontrol`` first on PATH that runs ``on_requeue`` (shell) for ``requeue``,
    then the cluster's own ``scontrol``."""
    folder.mkdir()
    shim = folder / "scontrol"
    shim.write_text(f'#!/bin/sh\nif [ "$1" = requeue ]; then {on_requeue}; fi\n'
                    f'exec "{cluster.bin_dir}/scontrol" "$@"\n')
    shim.chmod(0o755)
    env = job_env(cluster)
    env["PATH"] = f"{folder}:{env['PATH']}"
    return env


def test_requeue_signal_saves_requeues_and_resumes_the_same_run(slurm_cluster, corpus, tmp_path):
    """Submitted with resume=false (start over): the requeued run still continues from its own checkpoint.

    ``scontrol requeue`` answers 10 s late (a busy controller): rank 1 must not end the job step before rank 0's
    requeue went through."""
    steps = 30
    words = train_words(corpus, tmp_path / "out", steps, **{"run.name": "rq", "run.resume": "false"})
    job = submit(slurm_cluster, tmp_path, words, "--no-config-check",
                 env=scontrol_shim_env(slurm_cluster, tmp_path / "shim", "sleep 10"))
    run_dir = tmp_path / "out" / "tiny" / "conre-rq"
    wait_for_step(slurm_cluster, job, run_dir, 6)
    wandb_id = (run_dir / "wandb_id").read_text().strip()
    slurm_cluster.client("scancel", "--signal=USR2", job)
    state = slurm_cluster.wait(job, timeout=180, states={"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})
    log, info = job_log(tmp_path, job), slurm_cluster.job_info(job)
    assert state == "COMPLETED", log[-4000:]
    assert info["Restarts"] == "1", info
    assert "restart 0 on" in log and "restart 1 on" in log  # SLURM_RESTART_COUNT of each run, echoed by the script
    resumed = re.search(r"resuming from (\S+) .*step (\d+)", log)
    assert resumed, log[-4000:]
    resumed_step = int(resumed.group(2))
    assert 6 <= resumed_step < steps
    assert (run_dir / "wandb_id").read_text().strip() == wandb_id
    segments = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(p.name.endswith(f"-{wandb_id}") for p in segments)  # one W&B run, two parts
    restarted_at = slurm_time(info["StartTime"])  # the requeued run's start
    rows = metric_rows(run_dir)
    assert steps - 1 <= max(row["step"] for row in rows) <= steps  # Lightning logs at the step index or after it
    assert all(row["time"] < restarted_at for row in rows if row["step"] < resumed_step - 1)
    after = [row["step"] for row in rows if row["time"] > restarted_at]
    assert after and min(after) >= resumed_step - 1  # the requeued run continued the step count, not from 0


def test_a_failed_requeue_is_reported_with_what_to_do(slurm_cluster, corpus, tmp_path):
    words = train_words(corpus, tmp_path / "out", 400, **{"run.name": "norq", "trainer.checkpoint_every_n_steps": "0"})
    env = scontrol_shim_env(slurm_cluster, tmp_path / "shim", "echo 'requeue refused' >&2; exit 1")
    job = submit(slurm_cluster, tmp_path, words, "--no-config-check", env=env)
    run_dir = tmp_path / "out" / "tiny" / "conre-norq"
    wait_for_step(slurm_cluster, job, run_dir, 3)
    slurm_cluster.client("scancel", "--signal=USR2", job)
    slurm_cluster.wait(job, timeout=60)
    log, info = job_log(tmp_path, job), slurm_cluster.job_info(job)
    assert info["Restarts"] == "0", info
    failed = r"^0: \[preemption\] scontrol requeue failed \(exit code 1\).*Resubmit"
    assert re.search(failed, log, re.MULTILINE), log[-4000:]
    assert list((run_dir / "checkpoints").glob("preempt-step=*.ckpt"))  # what the resubmitted job resumes from


def test_sigterm_saves_a_checkpoint_before_the_job_ends(slurm_cluster, corpus, tmp_path):
    words = train_words(corpus, tmp_path / "out", 400, **{"run.name": "term", "trainer.checkpoint_every_n_steps": "0"})
    job = submit(slurm_cluster, tmp_path, words, "--no-config-check")
    run_dir = tmp_path / "out" / "tiny" / "conre-term"
    wait_for_step(slurm_cluster, job, run_dir, 3)
    slurm_cluster.client("scancel", "--signal=TERM", job)
    slurm_cluster.wait(job, timeout=60)
    log = job_log(tmp_path, job)
    saved = sorted((run_dir / "checkpoints").glob("*.ckpt"))  # checkpoint_every_n_steps=0: none but the SIGTERM one
    assert saved, log[-4000:]
    assert max(metric_steps(run_dir)) < 400


def test_array_runs_one_task_per_override_line(slurm_cluster, corpus, tmp_path):
    sweep = tmp_path / "sweep.txt"
    sweep.write_text("# two runs of the sweep\nrun.name=a trainer.max_steps=3\nrun.name=b trainer.max_steps=5\n")
    words = train_words(corpus, tmp_path / "out", **{"trainer.strategy": "auto"})
    job = submit(slurm_cluster, tmp_path, words, "--array", str(sweep), "--no-config-check", nodes=1)
    for task, (name, steps) in enumerate((("a", 3), ("b", 5))):
        state = slurm_cluster.wait(f"{job}_{task}", timeout=120)
        assert state == "COMPLETED", job_log(tmp_path, f"{job}_{task}")[-4000:]
        run_dir = tmp_path / "out" / "tiny" / f"conre-{name}"
        assert steps - 1 <= max(metric_steps(run_dir)) <= steps  # the line's own max_steps reached this task
        assert (run_dir / "wandb_id").read_text().strip().endswith(f"-{task}")  # one W&B run per task


def test_deepspeed_zero2_across_two_nodes_exports_the_trained_weights(slurm_cluster, corpus, tmp_path):
    import torch

    from lightning_modules.stagefile import load_stage_file
    from trainer.deepspeed_checkpoint import load_deepspeed_checkpoint

    words = train_words(corpus, tmp_path / "out", **{"trainer.strategy": "deepspeed", "trainer.deepspeed_stage": "2"})
    job = submit(slurm_cluster, tmp_path, words, "--no-config-check")
    state = slurm_cluster.wait(job, timeout=240)
    log = job_log(tmp_path, job)
    assert state == "COMPLETED", log[-4000:]
    assert re.search(r"^1: .*global_rank=1 .*world_size=2 .*host=node2\b", log, re.MULTILINE), log[-4000:]
    run_dir = tmp_path / "out" / "tiny" / "conre"
    final = run_dir / "checkpoints" / f"final-step={TRAIN_STEPS}.ckpt"
    assert final.is_dir(), sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    consolidated, _ = load_deepspeed_checkpoint(final)
    exported = load_stage_file(tmp_path / "out" / "tiny" / "stages" / "conre.safetensors", expect_stage="conre")
    assert set(exported.state) == set(consolidated)
    for key, value in consolidated.items():
        assert torch.equal(exported.state[key], value.float()), key
