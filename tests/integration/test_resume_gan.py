"""A stage with two optimizers (the autoencoder's adversarial option) resumed mid-run trains on the same batches as
the uninterrupted run: Lightning's global step counts both optimizers' steps, the stream position one per batch."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl

from trainer.config import compose
from trainer.factory import build_run, fit


class KeyRecorder(pl.Callback):
    def __init__(self) -> None:
        self.keys: dict[int, tuple[str, ...]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys[trainer.global_step] = tuple(batch["key"])


def train(corpus: Path, root: Path, steps: int) -> dict[int, tuple[str, ...]]:
    cfg = compose(["experiment=tiny", "stage=autoencoder", "stage.adversarial=true", f"data.root={corpus}",
                   f"experiment.output_root={root}", "tracking=disabled", f"trainer.max_steps={steps}",
                   "data.batch_size=2", "data.samples_per_epoch=20", "trainer.val_check_interval=1000",
                   "trainer.limit_val_batches=0", "trainer.checkpoint_every_n_steps=6", "trainer.checkpoint_minutes=0",
                   "trainer.log_every_n_steps=1", "trainer.media_every_n_steps=0", "run.export=false", "seed=3"])
    run = build_run(cfg)
    recorder = KeyRecorder()
    run.trainer.callbacks.append(recorder)
    fit(run)
    return recorder.keys


def test_a_resumed_gan_stage_trains_on_the_uninterrupted_run_s_batches(synthetic_corpus, tmp_path):
    whole = train(synthetic_corpus, tmp_path / "whole", 12)
    assert sorted(whole) == [0, 2, 4, 6, 8, 10]  # two optimizer steps per batch
    train(synthetic_corpus, tmp_path / "split", 6)
    resumed = train(synthetic_corpus, tmp_path / "split", 12)
    assert sorted(resumed) == [6, 8, 10]
    assert resumed == {step: whole[step] for step in (6, 8, 10)}
