"""Speech-to-face retrieval of an exported ConRe stage on a split of a shard set."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from datamodules.config import DataConfig
from datamodules.datamodule import ShardDataModule
from lightning_modules.conre import ConReStage
from lightning_modules.retrieval import retrieval_hits
from lightning_modules.stagefile import StageFiles


@dataclass
class RetrievalResult:
    split: str
    clips: int
    speakers: int
    top1: float
    top5: float
    chance_top1: float
    chance_top5: float
    per_clip: dict[str, dict] = field(default_factory=dict)  # clip key -> {"speaker", "top1", "top5"} (0 or 1)


@torch.no_grad()
def conre_retrieval(stage_path: str, data: DataConfig, split: str, use_ema: bool = True) -> RetrievalResult:
    """Each clip's speech embedding against per-speaker mean face embeddings of the same split (every clip once)."""
    speech_encoder, face_encoder = ConReStage.for_inference(StageFiles.of(stage_path, "conre"), use_ema)
    dm = ShardDataModule(replace(data, num_workers=0))
    dm.setup()
    speech, face, speaker, keys, names = [], [], [], [], []
    for batch in dm.eval_dataloader(split):
        valid = batch["valid"]
        if not valid.any():
            continue
        speech.append(F.normalize(speech_encoder(batch["audio"][valid]), dim=-1))
        face.append(F.normalize(face_encoder(batch["frames"][valid, 0]), dim=-1))
        speaker.append(batch["speaker_index"][valid])
        keys += [k for k, v in zip(batch["key"], valid.tolist(), strict=True) if v]
        names += [s for s, v in zip(batch["speaker"], valid.tolist(), strict=True) if v]
    speech_t, face_t, speaker_t = torch.cat(speech), torch.cat(face), torch.cat(speaker)
    hits1, chance1 = retrieval_hits(speech_t, face_t, speaker_t, k=1)
    hits5, chance5 = retrieval_hits(speech_t, face_t, speaker_t, k=5)
    per_clip = {key: {"speaker": name, "top1": float(h1), "top5": float(h5)}
                for key, name, h1, h5 in zip(keys, names, hits1.tolist(), hits5.tolist(), strict=True)}
    return RetrievalResult(split, len(speaker_t), int(torch.unique(speaker_t).numel()), hits1.mean().item(),
                           hits5.mean().item(), chance1, chance5, per_clip)
