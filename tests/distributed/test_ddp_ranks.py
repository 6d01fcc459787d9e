"""Two-process DDP (gloo): each rank draws its own random numbers, resumes its own, and the ranks share one data
health decision."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest

from tests.ports import free_port

REPO = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent('''
    """Train through the runner with a callback that records, per rank and step, a draw from the torch generator
    and the batch's keys into <out>/rank<r>.json. Usage: driver.py OUT train-words... (env RANK1_DATA: rank 1's
    data.root)."""
    import json, os, sys
    from pathlib import Path

    import pytorch_lightning as pl
    import torch

    from trainer import factory
    from trainer.config import compose
    from trainer.runner import run_training

    out, words = Path(sys.argv[1]), sys.argv[2:]
    if os.environ.get("LOCAL_RANK", "0") == "1" and os.environ.get("RANK1_DATA"):
        words = [*words, "data.root=" + os.environ["RANK1_DATA"]]

    class Record(pl.Callback):
        rows = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.rows[trainer.global_step] = [torch.rand(()).item(), list(batch["key"])]

        def on_train_end(self, trainer, pl_module):
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.rows))

    build_callbacks = factory.build_callbacks
    factory.build_callbacks = lambda cfg, health: [*build_callbacks(cfg, health), Record()]
    sys.exit(run_training(compose(words), words))
''')


def train(tmp_path: Path, out: str, *words: str, rank1_data: Path | None = None) -> subprocess.CompletedProcess:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), "RANK1_DATA": str(rank1_data or "")}
    for name in [k for k in env if k.startswith(("SLURM_", "WANDB_API_KEY"))]:
        env.pop(name)
    cmd = [sys.executable, str(driver), str(tmp_path / out), "experiment=tiny", "stage=conre", "trainer=ddp",
           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.process_timeout_s=60", "data.num_workers=0",
           "trainer.val_check_interval=1000", "trainer.limit_val_batches=0", "trainer.checkpoint_minutes=0",
           "run.export=false", "seed=3", *words]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def records(tmp_path: Path, out: str) -> list[dict[int, tuple[float, list[str]]]]:
    return [{int(k): tuple(v) for k, v in json.loads((tmp_path / out / f"rank{r}.json").read_text()).items()}
            for r in (0, 1)]


def test_ranks_draw_their_own_numbers_and_resume_their_own_streams(synthetic_corpus, tmp_path):
    common = [f"data.root={synthetic_corpus}", "tracking=disabled", "trainer.checkpoint_every_n_steps=3",
              "stage.schedule=constant", "stage.warmup_steps=0", "trainer.ema_decay=0"]
    for out, steps, root in (("whole", 6, "a"), ("first", 3, "b"), ("rest", 6, "b")):
        done = train(tmp_path, out, *common, f"trainer.max_steps={steps}", f"experiment.output_root={tmp_path / root}")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    whole, rest = records(tmp_path, "whole"), records(tmp_path, "rest")
    assert all(whole[0][s][0] != whole[1][s][0] for s in range(6))  # the ranks' generators differ
    assert sorted(rest[0]) == sorted(rest[1]) == [3, 4, 5]
    for rank in (0, 1):
        assert {s: whole[rank][s] for s in (3, 4, 5)} == rest[rank]  # its own draws and batches after the resume
    assert whole[0][0][1] != whole[1][0][1]  # the ranks read different samples


def corrupt_copy(corpus: Path, out: Path) -> None:
    """``corpus`` with an unreadable audio file in every second training sample."""
    shutil.copytree(corpus, out)
    for shard in sorted((out / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
        keys = sorted({m.name.split(".", 1)[0] for m, _ in members})
        bad = set(keys[::2])
        with tarfile.open(shard, "w") as tar:
            for member, data in members:
                if member.name.endswith(".audio.flac") and member.name.split(".", 1)[0] in bad:
                    data = b"not a flac file"
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


@pytest.fixture(scope="module")
def corpora(synthetic_corpus, tmp_path_factory) -> tuple[Path, Path]:
    """(rank 0's corpus: one shard of its index missing, rank 1's: every second training sample unreadable)."""
    root = tmp_path_factory.mktemp("corpora")
    shutil.copytree(synthetic_corpus, root / "missing")
    index = json.loads((root / "missing" / "index.json").read_text())
    index["splits"]["train"].append({**index["splits"]["train"][0], "path": "train/gone.tar"})
    (root / "missing" / "index.json").write_text(json.dumps(index))
    corrupt_copy(synthetic_corpus, root / "bad")
    return root / "missing", root / "bad"


def wandb_summary(run: Path) -> dict:
    (segment,) = (run / "wandb").glob("offline-run-*")
    exe = Path(sys.executable).with_name("wandb")
    out = subprocess.run([str(exe), "leet", "inspect", "--json", str(segment)], capture_output=True, text=True,
                         timeout=120, check=True)
    summary: dict = {}
    for record in map(json.loads, out.stdout.splitlines()):
        summary.update(record.get("summary", {}).get("update", {}) if record.get("type") == "summary" else {})
    return summary


def test_skips_on_one_rank_are_counted_and_stop_every_rank_at_the_same_step(corpora, tmp_path):
    missing, bad = corpora
    words = [f"data.root={missing}", "trainer.checkpoint_every_n_steps=0", "trainer.log_every_n_steps=2",
             "trainer.max_steps=4", f"experiment.output_root={tmp_path / 'ok'}"]
    done = train(tmp_path, "ok", *words, "tracking=offline", "data.max_skip_fraction=0.9", rank1_data=bad)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "ok" / "tiny" / "conre"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seen_samples"] == 2 * 4 * 16 and summary["skipped_samples"] >= 16  # rank 1's skips
    logged = wandb_summary(run)
    assert logged["data/missing_shards"] == 1 and logged["data/skipped_samples"] == summary["skipped_samples"]

    words[-1] = f"experiment.output_root={tmp_path / 'stop'}"
    stopped = train(tmp_path, "stop", *words, "tracking=disabled", "data.max_skip_fraction=0.2", rank1_data=bad)
    assert stopped.returncode != 0
    lines = [line for line in stopped.stdout.splitlines() if ": stopping: " in line]
    assert sorted(line.split(":")[0] for line in lines) == ["[data] rank 0", "[data] rank 1"], stopped.stdout[-3000:]
    assert len({line.split(": stopping: ")[1] for line in lines}) == 1  # the same totals, the same step
    assert "over all ranks were unreadable by step" in lines[0]
