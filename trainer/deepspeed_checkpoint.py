"""DeepSpeed checkpoint directories: completeness markers and consolidation to one fp32 state_dict.

Lightning's DeepSpeed strategy saves a checkpoint as a directory that every rank writes its partition into
(``<dir>/latest`` names the tag, ``<dir>/<tag>/*_model_states.pt`` and ``*_optim_states.pt`` hold the states).
``mark_complete`` writes a marker after all ranks have written; ``load_deepspeed_checkpoint`` merges the ZeRO-2/3
fp32 partitions on CPU with DeepSpeed's own ``zero_to_fp32`` reader, loading every file with
``torch.load(weights_only=True)`` and an explicit list of the few DeepSpeed classes those files hold, so that a
crafted pickle cannot run code.
"""
from __future__ import annotations

import contextlib
import json
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from common.errors import CheckpointError
from common.files import atomic_write_text

COMPLETE_MARKER = "checkpoint_complete.json"
DEFAULT_TAG = "checkpoint"  # the tag Lightning's DeepSpeedStrategy.save_checkpoint uses
MODEL_STATE_FILES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
LIGHTNING_PREFIX = "_forward_module."
DEEPSPEED_KEYS = frozenset({
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "lr_scheduler",
    "sparse_tensor_module_names", "skipped_steps", "global_steps", "global_samples", "dp_world_size",
    "mp_world_size", "ds_config", "ds_version", "shared_params", "frozen_param_fragments", "data_sampler",
    "random_ltd", "zero_stage", "checkpoint_parallel_dimensions",
})


class DeepSpeedCheckpointError(CheckpointError):
    """A path that is not a complete, readable DeepSpeed checkpoint directory."""


def checkpoint_tag(path: str | Path) -> str:
    """The tag (sub-folder) of a DeepSpeed checkpoint directory: the ``latest`` file, else Lightning's tag."""
    latest = Path(path) / "latest"
    return latest.read_text().strip() if latest.is_file() else DEFAULT_TAG


def model_state_file(path: str | Path) -> Path | None:
    """The rank-0 model-states file (ZeRO-1/2 or ZeRO-3 naming) of a checkpoint directory, if present."""
    folder = Path(path) / checkpoint_tag(path)
    for name in MODEL_STATE_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def is_deepspeed_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a DeepSpeed checkpoint directory (has a tag folder with model states)."""
    return Path(path).is_dir() and model_state_file(path) is not None


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _dist_barrier(*_: Any) -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def clear_complete(path: str | Path) -> None:
    """Remove the completeness marker (before ``path`` is written again)."""
    (Path(path) / COMPLETE_MARKER).unlink(missing_ok=True)


def mark_complete(path: str | Path, barrier: Callable[..., None] | None = None) -> None:
    """Collective: after every rank has written its part of ``path``, rank 0 writes the completeness marker.

    ``barrier`` is the strategy's barrier (it knows the device NCCL needs); default: torch.distributed's.
    """
    wait_for_all = barrier or _dist_barrier
    wait_for_all()
    dist = torch.distributed
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if rank == 0:
        folder = Path(path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.pt"))
        record = {"world_size": _world_size(), "tag": checkpoint_tag(folder), "files": files}
        atomic_write_text(folder / COMPLETE_MARKER, json.dumps(record, indent=1))
    wait_for_all()


def is_complete(path: str | Path) -> bool:
    """True when ``path`` holds the completeness marker and every file it lists still exists."""
    marker = Path(path) / COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all((Path(path) / name).is_file() for name in record.get("files", [])) and bool(record.get("files"))


def _deepspeed_safe_globals() -> list:
    """The classes DeepSpeed pickles into its checkpoint files (besides tensors and plain containers)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class _WeightsOnlyTorch:
    """``torch`` as seen by DeepSpeed's reader, except that ``load`` always unpickles weights only."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def load(f, *args, **kwargs):
        kwargs["weights_only"] = True
        return torch.load(f, *args, **kwargs)


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Within the block DeepSpeed's ``zero_to_fp32`` reader loads files with ``weights_only=True``."""
    from deepspeed.utils import zero_to_fp32

    saved = zero_to_fp32.torch
    zero_to_fp32.torch = _WeightsOnlyTorch()
    try:
        with torch.serialization.safe_globals(_deepspeed_safe_globals()):
            yield
    finally:
        zero_to_fp32.torch = saved


@contextlib.contextmanager
def weights_only_engine(engine) -> Iterator[None]:
    """Within the block a DeepSpeed engine reads its checkpoint files with ``weights_only=True`` (resume)."""
    checkpoint_engine = engine.checkpoint_engine

    def load(path: str, map_location=None):
        return safe_load(path, map_location=map_location)

    checkpoint_engine.load = load
    try:
        yield
    finally:
        del checkpoint_engine.load  # back to the class's method


def safe_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load`` of one DeepSpeed file on CPU, weights only, DeepSpeed's own classes allowed."""
    with torch.serialization.safe_globals(_deepspeed_safe_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def load_deepspeed_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(fp32 state_dict of the LightningModule, Lightning's client state incl. ``callbacks``) of a directory."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    path = Path(path)
    model_file = model_state_file(path) if path.is_dir() else None
    if model_file is None:
        raise DeepSpeedCheckpointError(
            f"{path} is not a DeepSpeed checkpoint directory (expected {path}/<tag>/{MODEL_STATE_FILES[0]} or "
            f"{MODEL_STATE_FILES[1]}); pass the directory that Trainer.save_checkpoint wrote under DeepSpeed"
        )
    try:
        with weights_only_loading():
            state = get_fp32_state_dict_from_zero_checkpoint(str(path), tag=checkpoint_tag(path))
        client = safe_load(model_file)
    except (FileNotFoundError, KeyError) as exc:
        raise DeepSpeedCheckpointError(
            f"DeepSpeed checkpoint {path} is incomplete ({exc}); resume from an earlier complete checkpoint"
        ) from exc
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else str(exc).splitlines()[0]
        raise DeepSpeedCheckpointError(
            f"DeepSpeed checkpoint {path} holds {what}, which is neither a tensor nor DeepSpeed's own state; "
            "it is refused because loading it could run code"
        ) from None
    client = {k: v for k, v in client.items() if k not in DEEPSPEED_KEYS}
    state_dict = {}
    for key, value in state.items():
        name = key[len(LIGHTNING_PREFIX):] if key.startswith(LIGHTNING_PREFIX) else key
        state_dict[name] = value.float() if value.is_floating_point() else value
    return state_dict, client
