"""The training benchmark's framework window counts batches, also for a stage with two optimizers a batch."""
from __future__ import annotations

import pytest
import torch

from bench.train_loops import WindowTimer, framework_window
from bench.train_setup import QUIET, preload
from trainer.config import compose


def gan_codebook_words(corpus, root, steps: int) -> list[str]:
    return ["experiment=tiny", "stage=codebook", "stage.adversarial=true", f"data.root={corpus}",
            f"experiment.output_root={root / 'runs'}", f"run.stages_dir={root / 'stages'}",
            f"trainer.max_steps={steps}", *QUIET]


def test_a_gan_stage_window_runs_every_batch_and_times_a_positive_span(synthetic_corpus, tmp_path, monkeypatch):
    warmup, steps = 1, 3
    words = gan_codebook_words(synthetic_corpus, tmp_path, warmup + steps)
    batches = preload(compose(words), 2, torch.device("cpu"))
    seen = []
    original = WindowTimer.on_train_batch_end

    def counting(self, trainer, module, outputs, batch, batch_idx):
        seen.append((batch_idx, trainer.global_step))
        original(self, trainer, module, outputs, batch, batch_idx)

    monkeypatch.setattr(WindowTimer, "on_train_batch_end", counting)
    window, _ = framework_window(words, batches, warmup, steps, torch.device("cpu"))
    assert [index for index, _ in seen] == list(range(warmup + steps))
    assert seen[-1][1] == 2 * (warmup + steps)  # generator and discriminator each step once a batch
    assert window.seconds > 0 and window.steps == steps


def test_a_window_the_run_stopped_short_of_is_an_error_not_a_time():
    timer = WindowTimer(warmup=2, steps=5, device=torch.device("cpu"))
    for index in range(4):
        timer.on_train_batch_start(None, None, None, index)
        timer.on_train_batch_end(None, None, None, None, index)
    with pytest.raises(RuntimeError, match="stopped after 4 batches"):
        timer.seconds()
