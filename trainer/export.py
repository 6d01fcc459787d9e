"""Export a checkpoint (Lightning file or DeepSpeed directory) or a run folder to one stage file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.errors import CheckpointError
from lightning_modules.stagefile import StageFile, save_stage_file
from trainer.checkpoints import find_resume_checkpoint, safe_load


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict, the rest of the checkpoint) from a Lightning file or a DeepSpeed directory."""
    if path.is_dir():
        from trainer.deepspeed_checkpoint import is_deepspeed_checkpoint, load_deepspeed_checkpoint

        if not is_deepspeed_checkpoint(path):
            raise CheckpointError(f"{path} is a folder but not a DeepSpeed checkpoint or a run folder")
        return load_deepspeed_checkpoint(path)
    state = safe_load(path)
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} has no 'state_dict': it is not a Lightning checkpoint")
    return state.pop("state_dict"), state


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint path from a checkpoint, a DeepSpeed directory or a run folder (its newest checkpoint)."""
    source = Path(source)
    if not source.exists():
        raise CheckpointError(f"{source} does not exist; give a run folder, a .ckpt file or a DeepSpeed "
                              f"checkpoint folder")
    if source.is_dir() and (source / "checkpoints").is_dir():
        found = find_resume_checkpoint(source)
        if found is None:
            raise CheckpointError(f"run folder {source} has no complete checkpoint to export")
        return found.path
    return source


def export_stage(source: str | Path, out: str | Path | None = None, stages_dir: str | Path | None = None) -> Path:
    """Write ``<stage>.safetensors`` (fp32 weights, EMA weights, config, provenance) and return its path."""
    path = resolve_checkpoint(source)
    state_dict, rest = read_checkpoint(path)
    info = rest.get("seespeaker") or {}
    stage = info.get("stage")
    if not stage:
        raise CheckpointError(f"{path} was not written by a seespeaker stage (no 'seespeaker' entry)")
    ema_state = (rest.get("callbacks") or {}).get("EMA", {}).get("shadow", {})
    config = info.get("config") or {}
    provenance = dict(info.get("provenance") or {})
    provenance.update({"source_checkpoint": str(path), "global_step": int(rest.get("global_step", -1)),
                       "run_config": config})
    stage_file = StageFile(stage=stage, state={k: v for k, v in state_dict.items()}, ema=dict(ema_state),
                           config=config.get("stage", config), provenance=provenance, phase=info.get("phase", ""))
    if out is None:
        folder = Path(stages_dir or (config.get("run") or {}).get("stages_dir") or path.parent)
        out = folder / f"{stage}.safetensors"
    return save_stage_file(out, stage_file)
