"""Exported stage files: one safetensors file per stage, fp32 weights + EMA weights + config + provenance.

Tensors are stored as ``model.<name>`` and ``ema.<name>``; the metadata (strings only, as safetensors
requires) holds ``format``, ``stage``, ``phase``, ``config`` (JSON) and ``provenance`` (JSON). Loading never
unpickles anything.

There is one way to rebuild an exported stage for inference: :class:`StageFiles` reads the files of a stages
folder, :meth:`StageFile.typed_config` turns a file's config back into the stage's typed config (refusing keys
the schema lacks, and missing keys that have no recorded default), and each stage class's ``for_inference``
classmethod returns what inference needs from it.
"""
from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from common.errors import SeespeakerError
from common.files import atomic_path

FORMAT_VERSION = "1"
FILE_DEFAULTS = "file_defaults"  # a config class's ClassVar: values for keys that files written before them lack


class StageFileError(SeespeakerError, ValueError):
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

    def typed_config(self, schema: type) -> Any:
        """The file's config as the stage's typed config ``schema`` (a dataclass, nested ones included)."""
        return config_from_dict(schema, self.config, f"{self.path or self.stage} (stage {self.stage!r})", "stage")

    def trained_resolution(self) -> int | None:
        """The ``data.resolution`` the stage was trained at, from the run config in its provenance."""
        data = (self.provenance.get("run_config") or {}).get("data") or {}
        return int(data["resolution"]) if data.get("resolution") else None


def config_from_dict(schema: type, values: dict[str, Any], source: str, prefix: str) -> Any:
    """Build dataclass ``schema`` from ``values``: a key the schema lacks, or a missing key with no recorded
    default (the schema's ``file_defaults``), is a StageFileError naming the key and what to do."""
    if not isinstance(values, dict):
        raise StageFileError(f"{source}: config '{prefix}' is {type(values).__name__}, expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise StageFileError(
            f"{source}: config key '{prefix}.{unknown[0]}' is not in this seespeaker's {schema.__name__} "
            f"(known: {', '.join(fields)}); the file was written by another version of the stage: load it with "
            f"the seespeaker that trained it, or retrain and re-export the stage")
    recorded = getattr(schema, FILE_DEFAULTS, {})
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for name in fields:
        if name in values:
            value = values[name]
        elif name in recorded:
            value = recorded[name](values) if callable(recorded[name]) else recorded[name]
        else:
            raise StageFileError(
                f"{source}: config key '{prefix}.{name}' is missing and {schema.__name__} records no default for "
                f"files without it; retrain and re-export the stage with this seespeaker")
        nested = hints.get(name)
        if dataclasses.is_dataclass(nested) and isinstance(value, dict):
            value = config_from_dict(nested, value, source, f"{prefix}.{name}")
        kwargs[name] = value
    return schema(**kwargs)


class StageFiles:
    """The exported stage files of one stages folder, each read once on first use.

    ``files[stage]`` is the :class:`StageFile` of ``<folder>/<stage>.safetensors`` (or of the file given for it
    in ``paths``); a missing file is a StageFileError that says how to make it. ``needed_by`` names the stage or
    command that asks, for that message.
    """

    def __init__(self, folder: str | Path, paths: dict[str, str | Path] | None = None, needed_by: str = ""):
        self.folder = Path(folder or ".")
        self.paths = {stage: Path(path) for stage, path in (paths or {}).items()}
        self.needed_by = needed_by
        self._loaded: dict[str, StageFile] = {}

    @classmethod
    def of(cls, path: str | Path, stage: str) -> StageFiles:
        """One file given by its path (``evaluate --sync-expert FILE``); the other stages from its folder."""
        return cls(Path(path).parent, {stage: path})

    def path(self, stage: str) -> Path:
        return self.paths.get(stage, self.folder / f"{stage}.safetensors")

    def has(self, stage: str) -> bool:
        return self.path(stage).is_file()

    def __getitem__(self, stage: str) -> StageFile:
        if stage not in self._loaded:
            path = self.path(stage)
            if not path.is_file():
                asker = f"{self.needed_by} needs the exported {stage!r} stage, but " if self.needed_by else ""
                raise StageFileError(
                    f"{asker}stage file {path} does not exist. Train and export it first (`seespeaker train "
                    f"experiment=<same> stage={stage}`) or point run.stages_dir at the folder that holds it")
            self._loaded[stage] = load_stage_file(path, expect_stage=stage)
        return self._loaded[stage]


def save_stage_file(path: str | Path, stage: StageFile) -> Path:
    """Write atomically: a temporary file renamed into place."""
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
    with atomic_path(path) as tmp:
        save_file(_unshare(tensors), str(tmp), metadata=metadata)
    return Path(path)


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
