"""The pure parts of the Stage-1 ablation table (``reports.results_portrait_ablation``): the speech conditions every
row sees, the nearest-voice baselines, the choices made on val, retrieval with undetected faces, and Spearman's
correlation with a speaker-bootstrap interval. No stage file is read here."""
from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from evaluation.intervals import BOOTSTRAP_SAMPLES, LEVEL
from lightning_modules.nets.speech_degradation import degrade_speech
from lightning_modules.retrieval import speaker_gallery
from lightning_modules.saw_cache import clip_seed

# condition -> None (the clip's speech as it is: the full 2 s window) or (seconds kept [min, max], SNRs in dB)
CONDITIONS: dict[str, tuple[list[float], list[float | None]] | None] = {
    "clean 2 s": None, "0.5 s": ([0.5, 0.5], [None]), "0 dB": ([2.0, 2.0], [0.0])}


def condition_audio(audio: torch.Tensor, keys: list[str], condition: str) -> torch.Tensor:
    """The speech [N, S] of every clip under ``condition``: degraded clip by clip with a generator seeded from the
    condition and the clip's key, so that every row, every seed and every run see the same audio."""
    spec = CONDITIONS[condition]
    if spec is None:
        return audio.clone()
    if len(keys) != len(audio):
        raise ValueError(f"{len(keys)} keys for {len(audio)} clips of speech")
    seconds, snr_db = spec
    return torch.cat([degrade_speech(audio[i:i + 1], seconds, snr_db,
                                     generator=torch.Generator().manual_seed(clip_seed(f"{condition}|{key}"))).audio
                      for i, key in enumerate(keys)])


def nearest_speakers(query: torch.Tensor, train_embedding: torch.Tensor, train_speaker: torch.Tensor,
                     k: int) -> torch.Tensor:
    """[N, k] the labels of the k training speakers whose mean speech embedding is nearest (cosine) to each query
    embedding [N, E], nearest first (``train_embedding`` [M, E] and ``train_speaker`` [M]: one row per clip)."""
    gallery, labels = speaker_gallery(train_embedding.float(), train_speaker)
    if k > len(labels):
        raise ValueError(f"asked for the {k} nearest of {len(labels)} training speakers")
    scores = F.normalize(query.float(), dim=-1) @ gallery.t()
    return labels[scores.topk(k, dim=-1).indices]


def nearest_voice_latents(query: torch.Tensor, train_embedding: torch.Tensor, train_speaker: torch.Tensor,
                          train_latents: torch.Tensor, k: int) -> torch.Tensor:
    """[N, C, H, W] the nearest-voice face of each query: the mean, with equal weight per speaker, of the mean face
    latent of each of the k training speakers nearest by voice (:func:`nearest_speakers`)."""
    chosen = nearest_speakers(query, train_embedding, train_speaker, k)
    labels = torch.unique(train_speaker)
    means = torch.stack([train_latents[train_speaker == s].float().mean(0) for s in labels])
    return means[torch.searchsorted(labels, chosen)].mean(1)


def latent_error(target: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    """[N] the mean squared error of latents [N, C, H, W] to the true face's latents ``target``."""
    return (target.float() - latents.float()).square().flatten(1).mean(1)


def errors_by_prior_weight(residual: torch.Tensor, sample: torch.Tensor, grid: tuple[float, ...]) -> dict[float, float]:
    """{a: the mean over clips of the latent error of z_hat(a) = prior + (1 - a) r_hat to the true face} (the error
    is || r - (1 - a) r_hat ||^2 per element, with r = z - prior the true residual)."""
    return {a: float(latent_error(residual, (1.0 - a) * sample).mean()) for a in grid}


def choose_on_val(losses: Mapping[float, float]) -> float:
    """The grid value with the lowest loss (on val); a tie goes to the value listed first."""
    if not losses:
        raise ValueError("nothing to choose from")
    order = list(losses)
    return min(order, key=lambda value: (losses[value], order.index(value)))


def gallery_hits(query: torch.Tensor, query_found: torch.Tensor, real: torch.Tensor, real_found: torch.Tensor,
                 speaker: torch.Tensor, k: int) -> torch.Tensor:
    """[N] 1 where a query face was found and its speaker is among the k per-speaker galleries (mean embeddings of
    the speakers' real faces that were found) nearest to it; an unfound query, or one whose speaker has no found
    real face, is a miss."""
    hits = torch.zeros(len(query))
    if not bool(real_found.any()) or not bool(query_found.any()):
        return hits
    gallery, labels = speaker_gallery(real[real_found].float(), speaker[real_found])
    scores = F.normalize(query[query_found].float(), dim=-1) @ gallery.t()
    top = labels[scores.topk(min(k, len(labels)), dim=-1).indices]
    hits[query_found] = (top == speaker[query_found][:, None]).any(dim=-1).float()
    return hits


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties; NaN when either side is constant)."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def spearman_interval(x_by_clip: Mapping[Hashable, float], y_by_clip: Mapping[Hashable, float],
                      speaker_of: Mapping[Hashable, str], n: int = BOOTSTRAP_SAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float, float]:
    """(Spearman's rho over the clips, low, high): the percentile interval of rho when the speakers are drawn with
    replacement, ``n`` times, each with all of its clips (draws where rho is undefined are left out)."""
    if set(x_by_clip) != set(y_by_clip):
        raise ValueError("the two sides hold different clips; correlate them on the same clips")
    clips = sorted(x_by_clip, key=str)
    x = np.array([x_by_clip[c] for c in clips], dtype=np.float64)
    y = np.array([y_by_clip[c] for c in clips], dtype=np.float64)
    speakers = sorted({speaker_of[c] for c in clips})
    members = [np.array([i for i, c in enumerate(clips) if speaker_of[c] == s]) for s in speakers]
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(n):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        rhos.append(spearman(x[rows], y[rows]))
    rhos = np.array([r for r in rhos if np.isfinite(r)])
    tail = (1 - level) / 2
    low, high = np.quantile(rhos, [tail, 1 - tail]) if len(rhos) else (float("nan"), float("nan"))
    return spearman(x, y), float(low), float(high)
