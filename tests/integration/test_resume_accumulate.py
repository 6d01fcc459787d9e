"""Gradient accumulation across epochs: every batch of the stream is trained on (no epoch ends inside an
accumulation, so the step count keeps telling the stream position), and the EMA follows every optimizer step,
including the one Lightning takes on a partial accumulation at the end of an epoch."""
from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from datamodules.pipeline import ClipStream
from trainer.callbacks import EMACallback
from trainer.config import compose
from trainer.factory import build_run, fit


class KeyRecorder(pl.Callback):
    def __init__(self) -> None:
        self.keys: list[tuple[int, tuple[str, ...]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.append((trainer.current_epoch, tuple(batch["key"])))


def test_every_stream_batch_is_trained_on_with_accumulation(synthetic_corpus, tmp_path):
    cfg = compose(["experiment=tiny", "stage=conre", f"data.root={synthetic_corpus}", "tracking=disabled",
                   f"experiment.output_root={tmp_path}", "trainer.max_steps=6", "data.batch_size=2",
                   "data.samples_per_epoch=10", "data.num_workers=0", "trainer.accumulate_grad_batches=2",
                   "trainer.val_check_interval=1000", "trainer.limit_val_batches=0",
                   "trainer.checkpoint_every_n_steps=0", "trainer.checkpoint_minutes=0", "trainer.log_every_n_steps=1",
                   "run.export=false", "resume=false"])
    run = build_run(cfg)
    recorder = KeyRecorder()
    run.trainer.callbacks.append(recorder)
    fit(run)
    data, trained = run.data, {}
    for epoch, keys in recorder.keys:
        trained.setdefault(epoch, []).append(keys)
    shards, counts = data.split_shards(cfg.data.train_split)
    stream = [tuple(b["key"]) for b in ClipStream(shards, data.window, 2, train=True, seed=data.seed, epoch=1,
                                                   batches=len(trained[0]), shuffle_buffer=cfg.data.shuffle_buffer,
                                                   shard_counts=counts)]
    assert trained[1] == stream  # epoch 1 of the stream, every batch from its first
    assert len(trained[0]) % 2 == 0  # 5 batches of samples_per_epoch, rounded to whole accumulations
    ema = next(c for c in run.trainer.callbacks if isinstance(c, EMACallback)).ema
    assert ema.num_updates == run.trainer.global_step == 6


class Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return (self.net(batch) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_ema_updates_on_the_step_lightning_takes_on_a_partial_accumulation(tmp_path):
    """5 batches, accumulation 2: the optimizer steps after batches 2, 4 and 5 (the epoch's end)."""
    ema = EMACallback(0.9)
    trainer = pl.Trainer(max_epochs=2, accumulate_grad_batches=2, callbacks=[ema], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(Linear(), train_dataloaders=DataLoader(torch.randn(15, 4), batch_size=3))
    assert trainer.global_step == 6
    assert ema.ema.num_updates == 6
