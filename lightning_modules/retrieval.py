"""Speech-to-face retrieval among speakers: the identity metric of the portrait stages."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def speaker_gallery(face: torch.Tensor, speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One gallery entry per speaker: the normalised mean of that speaker's face embeddings."""
    labels = torch.unique(speaker)
    gallery = torch.stack([face[speaker == s].mean(0) for s in labels])
    return F.normalize(gallery, dim=-1), labels


def retrieval_hits(query: torch.Tensor, face: torch.Tensor, speaker: torch.Tensor,
                   k: int = 1) -> tuple[torch.Tensor, float]:
    """(hit [N]: 1 where a query's speaker is among its top k of the per-speaker galleries, chance level)."""
    gallery, labels = speaker_gallery(face.float(), speaker)
    scores = F.normalize(query.float(), dim=-1) @ gallery.t()
    k = min(k, len(labels))
    top = labels[scores.topk(k, dim=-1).indices]
    return (top == speaker[:, None]).any(dim=-1).float(), k / len(labels)


def retrieval_accuracy(query: torch.Tensor, face: torch.Tensor, speaker: torch.Tensor,
                       k: int = 1) -> tuple[float, float]:
    """(top-k accuracy, chance level) of finding each query's speaker among the per-speaker galleries."""
    hits, chance = retrieval_hits(query, face, speaker, k)
    return hits.mean().item(), chance
