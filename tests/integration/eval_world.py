"""What the `seespeaker evaluate` tests share: a tiny synthetic corpus with a random compact sync expert exported as
a stage file, and a stand-in for TalkingFacePipeline (a full tiny stage chain takes minutes to train) that makes grey
frames, one per 640 samples of speech."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from datamodules.sample import decode_clip
from datamodules.shards import ShardIndex
from datamodules.synthetic import SyntheticConfig, write_synthetic_corpus
from lightning_modules.nets.syncnet import build_syncnet
from lightning_modules.stagefile import StageFile, save_stage_file
from lightning_modules.syncnet import SyncNetConfig


def evaluation_world(root: Path, clip_size: int | None = None) -> dict:
    """2 test speakers x 2 clips of 30 frames (decoded at ``clip_size``, else as written) and a random compact expert
    in ``<root>/stages/syncnet.safetensors``."""
    corpus = root / "corpus"
    write_synthetic_corpus(corpus, SyntheticConfig(speakers=4, clips_per_speaker=2, seconds=1.2, seed=3, shard_size=4,
                                                   val_speakers_fraction=0.25, test_speakers_fraction=0.5))
    torch.manual_seed(0)
    config = asdict(SyncNetConfig(layout="compact", embedding_dim=32, width=8, input_size=64))
    expert = build_syncnet("compact", embedding_dim=32, width=8, input_size=64)
    save_stage_file(root / "stages" / "syncnet.safetensors",
                    StageFile("syncnet", {f"expert.{k}": v for k, v in expert.state_dict().items()}, config=config))
    clips = []
    for url in ShardIndex.load(corpus).shard_paths(corpus, "test"):
        clips += [decode_clip(s, clip_size) for s in wds.WebDataset(url, shardshuffle=False, empty_check=False)]
    return {"root": root, "corpus": corpus, "stages": root / "stages", "clips": sorted(clips, key=lambda c: c.key)}


def grey_pipeline(calls: list, fail_on_call: int = 0) -> type:
    """A class with TalkingFacePipeline's interface; each portrait call appends (speech length, seed) to ``calls``,
    and call number ``fail_on_call`` (1-based; 0: none) raises as a clip the generator cannot take."""

    class GreyPipeline:
        def __init__(self, stages_dir, options):
            self.options = options

        def portrait(self, speech, timings):
            calls.append((len(speech), self.options.seed))
            if len(calls) == fail_on_call:
                raise ValueError("the speech is shorter than the motion window")
            return torch.zeros(3, 64, 64)

        def video(self, portrait, speech, timings, advance):
            return None, np.full((len(speech) // 640, 64, 64, 3), 128, np.uint8)

    return GreyPipeline
