"""CodeFormer's face restoration network (Zhou et al., NeurIPS 2022) with the parameter names and shapes of its
released ``codeformer.pth`` (``params_ema``), so that those weights load unchanged (``load_state_dict(strict=True)``).

The face, bicubic-upsampled to ``image_size`` (512), goes through the VQGAN encoder to a ``code_dim`` x g x g
latent (256 x 16 x 16). A transformer (``layers`` pre-norm layers of width ``width`` with ``heads`` heads and a
feed-forward of ``ff``, GELU, a learned position embedding per token added to queries and keys) predicts from that
latent the logits of the ``codebook_size`` codes at every token. The most likely codes are looked up, optionally
renormalised to the encoder latent's per-channel mean and std (adaptive instance normalisation, ``adain``), and
decoded by the VQGAN generator. At each resolution of ``fuse_resolutions`` (32, 64, 128, 256) a fusion block turns
the encoder's and the generator's features into a scale and a shift that modulate the generator's features with
weight w, the fidelity: w = 0 decodes the predicted codes alone (the most restoration, the least faithful), w = 1
adds the full modulation (the most faithful to the input).

The defaults are the released sizes; smaller ones build the same structure (tests, CPU configs).
:meth:`CodeFormerSizes.from_state_dict` reads the sizes back from a state dict's shapes, except the number of
attention heads, which no shape holds (8 in the release).
"""
from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from common.errors import SeespeakerError
from lightning_modules.nets.renderer import fidelity_like
from lightning_modules.nets.vqgan_blocks import Codebook, ResBlock, VQGANEncoder, VQGANGenerator, level_resolutions

RELEASE_HEADS = 8


class CodeFormerWeightsError(SeespeakerError, ValueError):
    """A weights file that is not a CodeFormer state dict, or not one of the sizes asked for."""


@dataclass(frozen=True)
class CodeFormerSizes:
    """Network sizes; the defaults are those of the released 512 px model."""

    image_size: int = 512
    base_channels: int = 64
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4, 4, 8)
    blocks_per_level: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    codebook_size: int = 1024
    code_dim: int = 256
    width: int = 512
    heads: int = RELEASE_HEADS
    layers: int = 9
    ff: int = 1024
    fuse_resolutions: tuple[int, ...] = field(default=(32, 64, 128, 256))

    @property
    def widths(self) -> list[int]:
        return [self.base_channels * m for m in self.channel_multipliers]

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** (len(self.channel_multipliers) - 1)

    def errors(self) -> list[str]:
        sizes = level_resolutions(self.image_size, len(self.channel_multipliers))
        errors = []
        if self.grid < 1 or self.grid * 2 ** (len(sizes) - 1) != self.image_size:
            errors.append(f"image_size {self.image_size} does not halve {len(sizes) - 1} times to a whole grid")
        if self.width % self.heads:
            errors.append(f"transformer width {self.width} does not divide by {self.heads} heads")
        wrong = [s for s in self.fuse_resolutions if s not in sizes[:-1]]
        if wrong:
            errors.append(f"fuse resolutions {wrong} are not level sizes above the {self.grid} x {self.grid} grid "
                          f"({sizes[:-1]})")
        return errors

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], heads: int = RELEASE_HEADS,
                        source: str = "state dict") -> CodeFormerSizes:
        """The sizes a CodeFormer state dict was built with (``heads`` is not in any shape: the release's 8)."""
        try:
            return cls._read_sizes(state, heads)
        except (KeyError, IndexError, ValueError, ZeroDivisionError) as exc:
            raise CodeFormerWeightsError(
                f"{source} is not a CodeFormer state dict ({type(exc).__name__}: {exc}); it needs encoder.blocks.*, "
                f"quantize.embedding.weight, position_emb, feat_emb, ft_layers.*, idx_pred_layer.* and "
                f"fuse_convs_dict.* as in CodeFormer's codeformer.pth") from None

    @classmethod
    def _read_sizes(cls, state: dict[str, torch.Tensor], heads: int) -> CodeFormerSizes:
        levels: list[list[tuple[str, int]]] = [[]]
        indices = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks.")})
        for index in indices[1:]:
            prefix = f"encoder.blocks.{index}."
            if prefix + "conv1.weight" in state:
                levels[-1].append(("res", state[prefix + "conv1.weight"].shape[0]))
            elif prefix + "q.weight" in state:
                levels[-1].append(("attn", 0))
            elif prefix + "conv.weight" in state:
                levels.append([])
        levels[-1] = levels[-1][:-3]  # the middle residual / attention / residual (the norm and conv have no kind)
        widths = [[w for kind, w in level if kind == "res"] for level in levels]
        base = state["encoder.blocks.0.weight"].shape[0]
        if any(len(w) != len(widths[0]) or len(set(w)) != 1 for w in widths) or any(w[0] % base for w in widths):
            raise ValueError(f"encoder levels of unequal depth or width: {widths}")
        grid = math.isqrt(state["position_emb"].shape[0])
        image_size = grid * 2 ** (len(levels) - 1)
        codebook = state["quantize.embedding.weight"]
        layers = {int(k.split(".")[1]) for k in state if k.startswith("ft_layers.")}
        return cls(image_size=image_size, base_channels=base, channel_multipliers=tuple(w[0] // base for w in widths),
                   blocks_per_level=len(widths[0]),
                   attention_resolutions=tuple(image_size // 2 ** i for i, level in enumerate(levels)
                                               if any(kind == "attn" for kind, _ in level)),
                   codebook_size=codebook.shape[0], code_dim=codebook.shape[1], width=state["feat_emb.weight"].shape[0],
                   heads=heads, layers=len(layers), ff=state["ft_layers.0.linear1.weight"].shape[0],
                   fuse_resolutions=tuple(sorted({int(k.split(".")[1]) for k in state
                                                  if k.startswith("fuse_convs_dict.")})))


class TransformerLayer(nn.Module):
    """Pre-norm self-attention (position added to queries and keys only) and a GELU feed-forward."""

    def __init__(self, width: int, heads: int, ff: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.linear1 = nn.Linear(width, ff)
        self.linear2 = nn.Linear(ff, width)
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        query = h + position
        x = x + self.self_attn(query, query, h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


def conv_pair(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(channels, channels, 3, padding=1))


class FuseBlock(nn.Module):
    """CodeFormer's controllable feature transformation: (encoder, generator) features -> a residual block ->
    scale and shift; generator features + w * (generator features * scale + shift)."""

    def __init__(self, channels: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * channels, channels)
        self.scale = conv_pair(channels)
        self.shift = conv_pair(channels)

    def forward(self, encoded: torch.Tensor, decoded: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        h = self.encode_enc(torch.cat([encoded, decoded], dim=1))
        return decoded + w * (decoded * self.scale(h) + self.shift(h))


def adaptive_instance_norm(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``content`` [B, C, H, W] with each channel's mean and std replaced by those of ``style`` (unbiased
    variance + eps, as the release)."""
    def stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.flatten(2)
        return flat.mean(2)[..., None, None], (flat.var(2) + eps).sqrt()[..., None, None]

    content_mean, content_std = stats(content)
    style_mean, style_std = stats(style)
    return (content - content_mean) / content_std * style_std + style_mean


class CodeFormerOutput(NamedTuple):
    image: torch.Tensor    # [B, 3, S, S], not clamped
    logits: torch.Tensor   # [B, g*g, codebook_size]
    latent: torch.Tensor   # the encoder's latent [B, code_dim, g, g]
    indices: torch.Tensor  # the codes decoded [B, g, g]


class CodeFormerNet(nn.Module):
    """CodeFormer: images [B, 3, S, S] in [-1, 1] -> restored images, code logits and the encoder latent."""

    def __init__(self, sizes: CodeFormerSizes | None = None):
        super().__init__()
        sizes = sizes or CodeFormerSizes()
        if sizes.errors():
            raise ValueError(f"CodeFormer sizes {sizes}: " + "; ".join(sizes.errors()))
        self.sizes = sizes
        widths, attention = sizes.widths, tuple(sizes.attention_resolutions)
        self.encoder = VQGANEncoder(sizes.image_size, widths, sizes.blocks_per_level, attention, sizes.code_dim)
        self.quantize = Codebook(sizes.codebook_size, sizes.code_dim)
        self.generator = VQGANGenerator(sizes.image_size, widths, sizes.blocks_per_level, attention, sizes.code_dim)
        self.position_emb = nn.Parameter(torch.zeros(sizes.grid ** 2, sizes.width))
        self.feat_emb = nn.Linear(sizes.code_dim, sizes.width)
        self.ft_layers = nn.ModuleList(TransformerLayer(sizes.width, sizes.heads, sizes.ff)
                                       for _ in range(sizes.layers))
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(sizes.width),
                                            nn.Linear(sizes.width, sizes.codebook_size, bias=False))
        level_width = dict(zip(level_resolutions(sizes.image_size, len(widths)), widths, strict=True))
        self.fuse_convs_dict = nn.ModuleDict({str(s): FuseBlock(level_width[s]) for s in sizes.fuse_resolutions})

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Images -> (latent [B, code_dim, g, g], encoder features at the fuse resolutions)."""
        size = self.sizes.image_size
        if images.shape[-2:] != (size, size):
            raise ValueError(f"CodeFormer takes {size} x {size} images (bicubic-upsample the face first), got "
                             f"{tuple(images.shape[-2:])}")
        return self.encoder(images, keep=tuple(self.sizes.fuse_resolutions))

    def code_logits(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, code_dim, g, g] -> code logits [B, g*g, codebook_size]."""
        h = self.feat_emb(latent.flatten(2).transpose(1, 2))
        for layer in self.ft_layers:
            h = layer(h, self.position_emb)
        return self.idx_pred_layer(h)

    def decode(self, indices: torch.Tensor, latent: torch.Tensor, features: dict[int, torch.Tensor],
               fidelity: float | torch.Tensor = 0.0, adain: bool = False) -> torch.Tensor:
        """Code indices [B, g, g] -> image, fused with the encoder features at fidelity w (number or [B])."""
        codes = self.quantize.lookup(indices)
        if adain:
            codes = adaptive_instance_norm(codes, latent)
        fuse = None
        if isinstance(fidelity, torch.Tensor) or fidelity > 0:
            w = fidelity_like(fidelity, codes)

            def fuse(size: int, h: torch.Tensor) -> torch.Tensor:
                return self.fuse_convs_dict[str(size)](features[size], h, w)
        return self.generator(codes, fuse=fuse, at=tuple(self.sizes.fuse_resolutions))

    def forward(self, images: torch.Tensor, fidelity: float | torch.Tensor = 0.0, adain: bool = False,
                indices: torch.Tensor | None = None) -> CodeFormerOutput:
        """Restore ``images``; ``indices`` [B, g, g] replaces the predicted codes (the logits are still returned)."""
        latent, features = self.encode(images)
        logits = self.code_logits(latent)
        if indices is None:
            indices = logits.argmax(-1).view(latent.shape[0], latent.shape[2], latent.shape[3])
        image = self.decode(indices, latent, features, fidelity, adain)
        return CodeFormerOutput(image, logits, latent, indices)


def read_codeformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a CodeFormer ``.pth`` (``{'params_ema': state_dict}`` as released, or ``{'params': ...}``),
    read with ``weights_only=True`` (nothing is unpickled beyond tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CodeFormerWeightsError(f"CodeFormer weights {path} do not exist; give the path of codeformer.pth "
                                     f"(CodeFormer's release, v0.1.0) or of a file saved as "
                                     f"torch.save({{'params_ema': state_dict}}, path)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as exc:
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise CodeFormerWeightsError(
                f"refusing to load {path}: it holds Python objects that would run code when unpickled "
                f"({str(exc).splitlines()[0][:200]}); CodeFormer's released codeformer.pth holds tensors only, so "
                f"use that file, or re-save the state dict you trust as torch.save({{'params_ema': state}}, path)"
            ) from None
        raise CodeFormerWeightsError(f"{path} is not a readable torch weights file ({exc}); give CodeFormer's "
                                     f"codeformer.pth") from None
    if isinstance(checkpoint, dict):
        for key in ("params_ema", "params"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
    found = sorted(map(str, checkpoint))[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise CodeFormerWeightsError(f"{path} holds no 'params_ema' or 'params' state dict (found: {found}); "
                                 f"CodeFormer's release stores {{'params_ema': state_dict}}: save yours as "
                                 f"torch.save({{'params_ema': net.state_dict()}}, path)")


def load_weights_into(net: CodeFormerNet, state: dict[str, torch.Tensor], source: str) -> CodeFormerNet:
    """Load a CodeFormer state dict strictly; a mismatch names the file's sizes and the network's."""
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        theirs = CodeFormerSizes.from_state_dict(state, net.sizes.heads, source)
        first = str(exc).splitlines()[1:3]
        raise CodeFormerWeightsError(f"{source} holds a CodeFormer of sizes {theirs}, the network built here has "
                                     f"{net.sizes} ({' '.join(s.strip() for s in first)}); build the network with "
                                     f"the file's sizes") from None
    return net


def load_codeformer(path: str | Path, heads: int = RELEASE_HEADS) -> CodeFormerNet:
    """A CodeFormer built with the sizes read from the file's shapes and its weights loaded, in eval mode."""
    state = read_codeformer_weights(path)
    sizes = CodeFormerSizes.from_state_dict(state, heads, str(path))
    if sizes.errors():
        raise CodeFormerWeightsError(f"{path}: the sizes read from its shapes do not build a CodeFormer: "
                                     + "; ".join(sizes.errors()))
    return load_weights_into(CodeFormerNet(sizes), state, str(path)).eval()

