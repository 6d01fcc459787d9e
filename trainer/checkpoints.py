"""Checkpoint files: atomic writes, safe reads, and choosing what ``resume=auto`` continues from."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from common.errors import CheckpointError
from common.files import atomic_path

STEP_IN_NAME = re.compile(r"step=(\d+)")
TEMPORARY_NAME = re.compile(r"\..+\.(\d+)\.tmp\.ckpt")  # AtomicCheckpointIO's: .<name>.<writer pid>.tmp.ckpt
CHECKPOINT_DIR = "checkpoints"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary name in the same folder, fsyncs it and renames it into place.

    A crash mid-write leaves only a hidden temporary file (``.<name>.<pid>.tmp.ckpt``), which ``resume=auto``
    ignores; the previous checkpoint is untouched. A full disk raises an error naming the path and keeps the
    previous checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
                _fault_injection_pause()
        except (OSError, RuntimeError) as exc:  # torch reports a failed write as RuntimeError
            raise CheckpointError(
                f"could not write checkpoint {path} ({exc}); the previous checkpoints in {path.parent} are intact. "
                f"Free disk space or move run.dir, then resume with resume=auto"
            ) from exc

    def load_checkpoint(self, path, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return safe_load(path, map_location or "cpu")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Remove the run's temporary checkpoint files whose writer process is gone (killed mid-write): each is as
    large as a checkpoint and nothing else removes it. Called by rank 0 when a run starts; a live writer's file
    stays. Returns the removed paths."""
    run_dir = Path(run_dir)
    removed = []
    for path in sorted([*(run_dir / CHECKPOINT_DIR).glob(".*.tmp.ckpt"), *run_dir.glob(".*.tmp.ckpt")]):
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
            print(f"[checkpoints] removed {path}: a checkpoint write that did not finish", flush=True)
    return removed


def _fault_injection_pause() -> None:
    """``SEESPEAKER_CHECKPOINT_WRITE_PAUSE_S``: hold a written checkpoint before its rename (crash tests)."""
    pause = float(os.environ.get("SEESPEAKER_CHECKPOINT_WRITE_PAUSE_S", "0") or 0)
    if pause > 0:
        import time

        time.sleep(pause)


def safe_load(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)``: a pickle that would run code is refused with a message."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as exc:  # torch raises UnpicklingError/RuntimeError for unsafe or corrupt files
        if "Unsupported global" in str(exc) or "GLOBAL" in str(exc):
            raise CheckpointError(
                f"refusing to load {path}: it contains Python objects that would run code when unpickled "
                f"({str(exc).splitlines()[0][:200]}). Only load checkpoints you trust, re-exported as safetensors"
            ) from None
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated ({exc})") from None


@dataclass
class FoundCheckpoint:
    path: Path
    step: int
    kind: str  # "regular" | "hpc" | "deepspeed"


def checkpoint_step(path: Path) -> int | None:
    """The global step of a checkpoint: from its name where it has one, else from the file itself."""
    match = STEP_IN_NAME.search(path.name)
    if match:
        return int(match.group(1))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state.get("global_step", -1))
    except Exception:
        return None


def is_complete(path: Path) -> bool:
    if path.name.startswith(".") or path.name.endswith(".tmp"):
        return False
    if path.is_dir():
        from trainer.deepspeed_checkpoint import is_complete as deepspeed_complete

        return deepspeed_complete(path)
    return path.is_file() and path.stat().st_size > 0


def find_resume_checkpoint(run_dir: str | Path) -> FoundCheckpoint | None:
    """The newest complete checkpoint of a run by global step, regular, HPC or DeepSpeed alike."""
    run_dir = Path(run_dir)
    candidates: list[FoundCheckpoint] = []
    for path in list((run_dir / CHECKPOINT_DIR).glob("*.ckpt")) + list(run_dir.glob("hpc_ckpt_*.ckpt")):
        if not is_complete(path):
            continue
        step = checkpoint_step(path)
        if step is not None and step >= 0:
            kind = "deepspeed" if path.is_dir() else ("hpc" if path.name.startswith("hpc_ckpt_") else "regular")
            candidates.append(FoundCheckpoint(path, step, kind))
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c.step, c.path.stat().st_mtime))
