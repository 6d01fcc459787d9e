"""The statistical face prior: the mean VAE latent of aligned training faces (+ an optional top-k PCA basis).

Computed once by streaming the training faces through the VAE (``seespeaker prior``), in float64 with bounded
memory, and stored as a safetensors file with its provenance: the shards it read, how many faces, and the hash
of the VAE whose latent space it lives in. A prior is only valid for that VAE.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from common.errors import SeespeakerError
from common.files import atomic_path

PRIOR_FORMAT = "1"
DEFAULT_PRIOR_NAME = "face_prior.safetensors"


class FacePriorError(SeespeakerError, ValueError):
    """A prior file that is missing, unreadable or made with another VAE."""


@dataclass
class FacePrior:
    """Mean latent ``[C, h, w]``; with PCA, ``basis [k, C*h*w]`` (orthonormal rows) and ``eigenvalues [k]``."""

    mean: torch.Tensor
    vae_hash: str
    count: int
    shards: list[str] = field(default_factory=list)
    basis: torch.Tensor | None = None
    eigenvalues: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        tensors = {"mean": self.mean.double().contiguous()}
        if self.basis is not None:
            tensors["basis"] = self.basis.double().contiguous()
            tensors["eigenvalues"] = self.eigenvalues.double().contiguous()
        metadata = {"format": PRIOR_FORMAT, "kind": "face_prior", "vae_hash": self.vae_hash,
                    "count": str(self.count), "shards": json.dumps(self.shards), "extra": json.dumps(self.extra)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, expect_vae_hash: str | None = None) -> FacePrior:
        """Load a prior; one made with another VAE than ``expect_vae_hash`` is refused, naming both hashes."""
        path = Path(path)
        if not path.is_file():
            raise FacePriorError(f"face prior {path} does not exist; compute it with "
                                 f"`seespeaker prior --data <train shards> --stages <stages dir> --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise FacePriorError(f"face prior {path} is not a readable safetensors file ({exc})") from exc
        if meta.get("kind") != "face_prior" or "mean" not in tensors:
            raise FacePriorError(f"{path} is not a face prior file (kind={meta.get('kind')!r})")
        if expect_vae_hash is not None and meta.get("vae_hash") != expect_vae_hash:
            raise FacePriorError(
                f"face prior {path} was computed with VAE {meta.get('vae_hash')!r} but this stage uses VAE "
                f"{expect_vae_hash!r}; recompute it with `seespeaker prior` against the current autoencoder"
            )
        return cls(mean=tensors["mean"], vae_hash=meta.get("vae_hash", ""), count=int(meta.get("count", 0)),
                   shards=json.loads(meta.get("shards", "[]")), basis=tensors.get("basis"),
                   eigenvalues=tensors.get("eigenvalues"), extra=json.loads(meta.get("extra", "{}")))


class LatentMoments:
    """Streaming float64 mean (and, with ``track_covariance``, scatter matrix) of flattened latents.

    Batches are merged with Chan et al.'s pairwise update, so memory is bounded by one batch plus a
    ``D x D`` scatter matrix (``D = C*h*w``; 4096 at 4 x 32 x 32).
    """

    def __init__(self, shape: tuple[int, ...], track_covariance: bool = False):
        self.shape = tuple(shape)
        dim = 1
        for s in self.shape:
            dim *= s
        self.count = 0
        self.mean = torch.zeros(dim, dtype=torch.float64)
        self.scatter = torch.zeros(dim, dim, dtype=torch.float64) if track_covariance else None

    def update(self, latents: torch.Tensor) -> None:
        """Add a batch of latents ``[B, *shape]``."""
        if tuple(latents.shape[1:]) != self.shape:
            raise ValueError(f"latent shape {tuple(latents.shape[1:])} differs from the prior's {self.shape}")
        x = latents.detach().to("cpu", torch.float64).flatten(1)
        n_b = x.shape[0]
        if n_b == 0:
            return
        mean_b = x.mean(0)
        delta = mean_b - self.mean
        total = self.count + n_b
        if self.scatter is not None:
            centred = x - mean_b
            self.scatter += centred.T @ centred + torch.outer(delta, delta) * (self.count * n_b / total)
        self.mean += delta * (n_b / total)
        self.count = total

    def pca(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` principal directions (rows, orthonormal) and their variances, largest first."""
        if self.scatter is None:
            raise ValueError("PCA needs LatentMoments(track_covariance=True)")
        if self.count < 2:
            raise ValueError(f"PCA needs at least 2 latents, got {self.count}")
        cov = self.scatter / (self.count - 1)
        values, vectors = torch.linalg.eigh(cov)
        order = torch.argsort(values, descending=True)[:k]
        return vectors[:, order].T.contiguous(), values[order].clamp_min(0.0)


def compute_face_prior(latent_batches: Iterable[torch.Tensor], vae_hash: str, pca: int = 0,
                       shards: list[str] | None = None, extra: dict | None = None) -> FacePrior:
    """Stream latent batches ``[B, C, h, w]`` into a :class:`FacePrior` (float64 mean, optional top-k PCA)."""
    moments = None
    for batch in latent_batches:
        if moments is None:
            moments = LatentMoments(tuple(batch.shape[1:]), track_covariance=pca > 0)
        moments.update(batch)
    if moments is None or moments.count == 0:
        raise FacePriorError("no faces were read: the face prior needs at least one training clip")
    basis = eigenvalues = None
    if pca > 0:
        basis, eigenvalues = moments.pca(pca)
    return FacePrior(mean=moments.mean.reshape(moments.shape), vae_hash=vae_hash, count=moments.count,
                     shards=list(shards or []), basis=basis, eigenvalues=eigenvalues, extra=dict(extra or {}))
