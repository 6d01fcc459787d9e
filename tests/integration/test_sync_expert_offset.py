"""A sync expert trained on the shards finds a known audio shift of held-out clips, as LSE reports it."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from datamodules.config import DataConfig
from datamodules.datamodule import ShardDataModule
from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus
from evaluation.lse import SyncClip, lse_scores
from lightning_modules.stagefile import StageFiles
from lightning_modules.syncnet import SyncNetStage, sync_region
from trainer.cli import main as seespeaker

SAMPLES_PER_FRAME = 640
MARGIN, FRAMES = 10, 80  # frames of a 100-frame (4 s) clip kept clear of the shifted audio's ends
SHIFTS = (-10, -6, -3, -1, 0, 1, 2, 5, 8, 10)


@pytest.fixture(scope="module")
def sync_corpus(tmp_path_factory) -> Path:
    """40 speakers x 2 clips of 4 s: enough speakers for the expert to generalise, clips long enough for k = 10."""
    root = tmp_path_factory.mktemp("sync_corpus") / "synthetic"
    write_synthetic_corpus(root, SyntheticConfig(speakers=40, clips_per_speaker=2, seconds=4.0, resolution=128, seed=3,
                                                 shard_size=16))
    return root


@pytest.fixture(scope="module")
def trained_expert(sync_corpus, tmp_path_factory) -> Path:
    """The small scale's sync expert trained for 300 steps on the corpus's training speakers."""
    out = tmp_path_factory.mktemp("sync_expert")
    code = seespeaker(["train", "experiment=small", "stage=syncnet", f"data.root={sync_corpus}",
                       f"experiment.output_root={out}", f"run.stages_dir={out / 'stages'}", "trainer.max_steps=300",
                       "trainer.val_check_interval=300", "trainer.checkpoint_every_n_steps=0", "tracking=disabled"])
    assert code == 0
    return out / "stages" / "syncnet.safetensors"


def held_out_clips(corpus: Path) -> list[dict]:
    data = DataConfig(root=str(corpus), resolution=64, clip_frames=100, audio_seconds=4.0, batch_size=4)
    dm = ShardDataModule(replace(data, num_workers=0))
    dm.setup()
    clips = []
    for batch in dm.eval_dataloader("test"):
        clips += [{"frames": batch["frames"][i], "audio": batch["audio"][i]}
                  for i in torch.nonzero(batch["valid"]).flatten().tolist()]
    return clips


def shifted(clip: dict, shift: int, region: str) -> SyncClip:
    """Frames MARGIN .. MARGIN+FRAMES with the audio ``shift`` frames ahead (it plays frame t + shift at t)."""
    frames = sync_region(clip["frames"][MARGIN:MARGIN + FRAMES], region)
    start = (MARGIN + shift) * SAMPLES_PER_FRAME
    return SyncClip(f"shift{shift}", frames, clip["audio"][start:start + FRAMES * SAMPLES_PER_FRAME])


def test_the_trained_expert_reports_the_shift_of_held_out_clips(trained_expert, sync_corpus):
    expert, cfg = SyncNetStage.for_inference(StageFiles.of(trained_expert, "syncnet"))
    clips = held_out_clips(sync_corpus)
    assert len(clips) >= 4
    for clip in clips:
        result = lse_scores(expert, [shifted(clip, shift, cfg.region) for shift in SHIFTS])
        assert [score.offset for score in result.clips] == list(SHIFTS)
        in_sync = result.clips[SHIFTS.index(0)]
        assert in_sync.lse_c > 1.0
