"""Two DDP processes (gloo) validating a one-shard val split report the validation metrics of one process.

The shard goes to rank 0; rank 1 reads only padding batches, which weigh nothing. This file is also the script each
run executes (Lightning's launcher starts rank 1 by running it again).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def launch(corpus: Path, out: Path, devices: int) -> dict[str, float]:
    from tests.ports import free_port  # here, not at the top: this file also runs as the ranks' script

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PL_")) and k not in ("LOCAL_RANK", "NODE_RANK", "RANK", "WORLD_SIZE")}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, __file__, "--corpus", str(corpus), "--out", str(out), "--devices", str(devices)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((out / "val.json").read_text())


@pytest.fixture(scope="module")
def one_shard_corpus(tmp_path_factory) -> Path:
    """Six speakers, two clips each: one val speaker, so the val split is one shard of two clips."""
    from datamodules.shards import ShardIndex
    from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus

    root = tmp_path_factory.mktemp("corpus") / "synthetic"
    write_synthetic_corpus(root, SyntheticConfig(speakers=6, clips_per_speaker=2, seconds=1.0, seed=0, shard_size=16))
    assert len(ShardIndex.load(root).splits["val"]) == 1
    return root


def test_two_ranks_validate_as_one_process_does(one_shard_corpus, tmp_path):
    one = launch(one_shard_corpus, tmp_path / "one", devices=1)
    two = launch(one_shard_corpus, tmp_path / "two", devices=2)
    names = ["val/loss", *(f"val/{name}" for name in one["losses"])]
    assert len(names) > 1 and all(one[name] > 0 for name in names)
    for name in names:
        assert two[name] == pytest.approx(one[name], rel=1e-5), name
    assert two["val/retrieval_top1"] == one["val/retrieval_top1"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, required=True)
    args = parser.parse_args()
    from trainer.config import compose
    from trainer.factory import build_run

    cfg = compose(["experiment=tiny", "stage=conre", f"data.root={args.corpus}", f"experiment.output_root={args.out}",
                   "tracking=disabled", "trainer=ddp", "trainer.accelerator=cpu", f"trainer.devices={args.devices}",
                   "trainer.process_timeout_s=60", "data.batch_size=4"])
    run = build_run(cfg)
    names = []
    compute = run.module.compute_losses

    def recorded(batch):
        losses = compute(batch)
        names[:] = list(losses)
        return losses

    run.module.compute_losses = recorded
    (metrics,) = run.trainer.validate(run.module, datamodule=run.data, verbose=False)
    if run.trainer.is_global_zero:
        Path(args.out, "val.json").write_text(json.dumps({**metrics, "losses": names}))


if __name__ == "__main__":
    main()
