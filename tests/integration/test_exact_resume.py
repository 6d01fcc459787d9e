"""A run interrupted at step k and resumed reproduces an uninterrupted run's losses from step k+1 on."""
from __future__ import annotations

from pathlib import Path

from trainer.cli import main
from trainer.tracking import read_metrics


def losses(run: Path) -> dict[int, float]:
    rows, _ = read_metrics(run / "metrics.jsonl")  # the last write for a step wins
    return {row["step"]: row["train/loss"] for row in rows if "train/loss" in row}


def test_resumed_run_reproduces_the_uninterrupted_losses(synthetic_corpus, tmp_path):
    common = ["train", "experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}", "tracking=disabled",
              "stage.schedule=constant", "stage.warmup_steps=0", "trainer.log_every_n_steps=1",
              "trainer.val_check_interval=1000", "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=8",
              "seed=3"]
    assert main([*common, f"experiment.output_root={tmp_path / 'whole'}", "trainer.max_steps=16"]) == 0
    assert main([*common, f"experiment.output_root={tmp_path / 'split'}", "trainer.max_steps=8"]) == 0
    assert main([*common, f"experiment.output_root={tmp_path / 'split'}", "trainer.max_steps=16"]) == 0
    whole = losses(tmp_path / "whole" / "tiny" / "conre")
    split = losses(tmp_path / "split" / "tiny" / "conre")
    after = [step for step in sorted(whole) if 8 <= step < 16]
    assert len(after) >= 7
    assert [whole[s] for s in after] == [split[s] for s in after]  # bitwise: same data, RNG, optimizer, EMA
