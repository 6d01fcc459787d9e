"""What the evaluations read from a prepared corpus: the test clips of the Stage-2 tables (a 2 s window of each),
the first frame of every clip of a split (Stage 1), and the ideal reader's portrait of each speaker (the ceiling).

Evaluation modules import these from here, not from a table module, so that a cached evaluation's key (the hash of
its module and of what that imports) does not follow the wording of a table.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from datamodules.datamodule import ShardDataModule

if TYPE_CHECKING:
    from reports.results import Corpus

CLIP_FRAMES = 50  # 2 s per clip


def test_clips(data, clips: int, split: str = "test") -> list[dict]:
    """The first ``CLIP_FRAMES`` frames and their speech of the first ``clips`` clips of ``split``, one per speaker
    first."""
    dm = ShardDataModule(replace(data, num_workers=0, clip_frames=CLIP_FRAMES, audio_seconds=CLIP_FRAMES / 25,
                                 hr_resolution=0, batch_size=8))
    dm.setup()
    found, seen = [], set()
    for batch in dm.eval_dataloader(split):
        for i in torch.nonzero(batch["valid"]).flatten().tolist():
            found.append({"key": batch["key"][i], "speaker": batch["speaker"][i], "frames": batch["frames"][i],
                          "audio": batch["audio"][i], "motion_truth": batch["motion_truth"][i],
                          "landmarks": batch["landmarks"][i], "has_motion_truth": batch["has_motion_truth"][i],
                          "first_speaker_clip": batch["speaker"][i] not in seen})
            seen.add(batch["speaker"][i])
    found.sort(key=lambda c: not c["first_speaker_clip"])  # one clip per speaker before any second clip
    return found[:clips]


def first_frames(data, split: str) -> dict[str, torch.Tensor]:
    """Every clip of a split once: its first frame [-1, 1], landmarks, 16 kHz speech and speaker index; and the
    clips' keys and speaker names."""
    dm = ShardDataModule(replace(data, num_workers=0, clip_frames=1))
    dm.setup()
    parts: dict[str, list[torch.Tensor]] = {"frames": [], "landmarks": [], "audio": [], "speaker": []}
    ids: list[str] = []
    keys: list[str] = []
    for batch in dm.eval_dataloader(split):
        valid = batch["valid"]
        ids += [name for name, ok in zip(batch["speaker"], valid.tolist(), strict=True) if ok]
        keys += [key for key, ok in zip(batch["key"], valid.tolist(), strict=True) if ok]
        parts["frames"].append(batch["frames"][valid, 0])
        parts["landmarks"].append(batch["landmarks"][valid, 0])
        parts["audio"].append(batch["audio"][valid])
        parts["speaker"].append(batch["speaker_index"][valid])
    return {k: torch.cat(v) for k, v in parts.items()} | {"speaker_id": ids, "key": keys}


def ideal_images(speaker_ids: list[str], resolution: int, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
    """The ideal reader's portrait of each query's speaker, with its landmarks."""
    from datamodules.synthetic import draw_speaker, ideal_portrait
    share = corpus.voice_share()
    drawn = [ideal_portrait(draw_speaker(corpus.options["seed"], int(name[3:]), share), resolution)
             for name in speaker_ids]
    return np.stack([image for image, _ in drawn]), np.stack([marks for _, marks in drawn])
