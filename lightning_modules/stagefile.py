"""Exported stage files: one safetensors file per stage, fp32 weights + EMA weights + config + provenance.

Tensors are stored as ``model.<name>`` and ``ema.<name>``; the metadata (strings only, as safetensors
requires) holds ``format``, ``stage``, ``phase``, ``config`` (JSON) and ``provenance`` (JSON). Loading never
unpickles anything.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

FORMAT_VERSION = "1"


class StageFileError(ValueError):
    """A stage file that is missing, unreadable or not what the caller needs."""


@dataclass
class StageFile:
    stage: str
    state: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    phase: str = ""
    path: str = ""

    def weights(self, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The weights to run: EMA values where they exist (sampling and export use them), else the raw ones."""
        if not use_ema or not self.ema:
            return dict(self.state)
        return {k: self.ema.get(k, v) for k, v in self.state.items()}

    def sub_state(self, prefix: str, use_ema: bool = True) -> dict[str, torch.Tensor]:
        """The weights under ``prefix.`` with the prefix removed (one submodule of the stage)."""
        start = prefix.rstrip(".") + "."
        return {k[len(start):]: v for k, v in self.weights(use_ema).items() if k.startswith(start)}


def save_stage_file(path: str | Path, stage: StageFile) -> Path:
    """Write atomically: a temporary file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
               for k, v in stage.state.items()}
    tensors.update({f"ema.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in stage.ema.items()})
    metadata = {
        "format": FORMAT_VERSION,
        "stage": stage.stage,
        "phase": stage.phase,
        "config": json.dumps(stage.config, sort_keys=True, default=str),
        "provenance": json.dumps(stage.provenance, sort_keys=True, default=str),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(_unshare(tensors), str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights): give each its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in tensors.items():
        ptr = v.data_ptr()
        out[k] = v.clone() if ptr in seen and v.numel() else v
        seen.add(ptr)
    return out


def read_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise StageFileError(f"{path} is not a readable safetensors stage file ({exc})") from exc


def load_stage_file(path: str | Path, expect_stage: str | None = None) -> StageFile:
    """Load a stage file; a wrong format version or another stage than expected is an error naming both."""
    path = Path(path)
    if not path.is_file():
        raise StageFileError(f"stage file {path} does not exist")
    meta = read_metadata(path)
    if meta.get("format") != FORMAT_VERSION:
        raise StageFileError(
            f"{path} has stage-file format {meta.get('format')!r}, this seespeaker reads {FORMAT_VERSION!r}; "
            f"re-export it with `seespeaker export`"
        )
    if expect_stage and meta.get("stage") != expect_stage:
        raise StageFileError(f"{path} holds stage {meta.get('stage')!r}, expected {expect_stage!r}")
    tensors = load_file(str(path))
    state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
    return StageFile(
        stage=meta.get("stage", ""),
        state=state,
        ema=ema,
        config=json.loads(meta.get("config", "{}")),
        provenance=json.loads(meta.get("provenance", "{}")),
        phase=meta.get("phase", ""),
        path=str(path),
    )
