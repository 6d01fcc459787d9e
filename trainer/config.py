"""Configuration: the one place YAML is read.

Merge order for ``seespeaker train experiment=E stage=S [group=choice ...] [key=value ...]``:

1. the typed schema defaults (``trainer/schemas.py``, the stage's ``config_class``);
2. the group files ``configs/<group>/<choice>.yaml`` for data, trainer, tracking and stage — choices from the
   experiment's ``defaults:`` list, overridden by choices named on the command line;
3. the experiment file's own sections (``experiment``, ``data``, ``trainer``, ...), then its
   ``stages.<stage>`` section (only what differs for that stage);
4. ``key=value`` overrides from the command line.

Unknown keys, wrong types and invalid values are errors naming the key, the file and the allowed values.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from trainer.schemas import Config, ExperimentConfig, RunConfig

GROUPS = ("experiment", "stage", "data", "trainer", "tracking")
GROUP_DEFAULTS = {"data": "synthetic", "trainer": "cpu", "tracking": "offline"}
TOP_LEVEL_SHORTCUTS = {"resume": "run.resume", "init_from": "run.init_from", "seed": "experiment.seed"}


class ConfigError(ValueError):
    """A configuration the user must fix; the message says what, where, and what is allowed."""


def configs_dir() -> Path:
    """``$SEESPEAKER_CONFIGS`` or the ``configs/`` folder of this checkout."""
    env = os.environ.get("SEESPEAKER_CONFIGS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def group_choices(group: str) -> list[str]:
    folder = configs_dir() / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def group_file(group: str, choice: str) -> Path:
    """The YAML file of a group choice: a name in ``configs/<group>/`` or a path to a file."""
    path = Path(choice)
    if choice.endswith((".yaml", ".yml")) and path.is_file():
        return path
    path = configs_dir() / group / f"{choice}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={choice}: no file {path}; choices for {group}: {', '.join(group_choices(group)) or 'none'}")
    return path


def read_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except (OSError, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return cfg


def _allowed_keys(schema: Any, full_key: str) -> list[str]:
    node = schema
    for part in [p for p in full_key.split(".")[:-1] if p]:
        node = getattr(node, part, None)
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return []


def merge_into(base: DictConfig, update: Any, source: str, schema: Any) -> DictConfig:
    """Merge ``update`` into ``base``; errors name the key, the source and what is allowed."""
    try:
        return OmegaConf.merge(base, update)
    except ConfigKeyError as exc:
        key = exc.full_key or str(exc.key)
        allowed = _allowed_keys(schema, key)
        raise ConfigError(f"{source}: unknown key '{key}'; allowed keys here: {', '.join(allowed)}") from None
    except ValidationError as exc:
        raise ConfigError(f"{source}: key '{exc.full_key}': {exc.msg.splitlines()[0]}") from None


def load_group_file(group: str, choice: str, schema_cls: type) -> Any:
    """A standalone typed group (e.g. a SLURM profile or an eval protocol) from ``configs/<group>/``."""
    path = group_file(group, choice)
    merged = merge_into(OmegaConf.structured(schema_cls), read_yaml(path), str(path), schema_cls)
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ConfigError(f"{path}: required key(s) {', '.join(missing)} missing")
    obj = OmegaConf.to_object(merged)
    errors = obj.validate() if hasattr(obj, "validate") else []
    if errors:
        raise ConfigError(f"{path}: " + "; ".join(errors))
    return obj


def split_args(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Command-line words -> (group choices, dotted overrides)."""
    choices, overrides = {}, []
    for word in args:
        if "=" not in word:
            raise ConfigError(f"'{word}' is not group=choice or key=value; example: stage=conre trainer.max_steps=50")
        key, value = word.split("=", 1)
        if key in GROUPS:
            choices[key] = value
        elif key in TOP_LEVEL_SHORTCUTS:
            overrides.append(f"{TOP_LEVEL_SHORTCUTS[key]}={value}")
        else:
            overrides.append(word)
    return choices, overrides


def compose(args: list[str]) -> Config:
    """The validated, typed config of a training run from command-line words."""
    from lightning_modules.registry import stage_class

    choices, overrides = split_args(args)
    experiment_name = choices.get("experiment", "tiny")
    exp_path = group_file("experiment", experiment_name)
    experiment = read_yaml(exp_path)
    defaults = dict(GROUP_DEFAULTS)
    defaults.update(OmegaConf.to_container(experiment.get("defaults", {})) or {})
    defaults.update({k: v for k, v in choices.items() if k != "experiment"})
    if "stage" not in defaults:
        raise ConfigError("no stage chosen: add stage=<name>; stages: " + ", ".join(group_choices("stage")))
    stage_path = group_file("stage", defaults["stage"])
    stage_name = str(read_yaml(stage_path).get("name", defaults["stage"]))
    try:
        stage_cls = stage_class(stage_name).config_class
    except KeyError as exc:
        raise ConfigError(f"{stage_path}: {exc.args[0]}") from None

    schema = Config(stage=stage_cls())
    cfg = OmegaConf.structured(schema)
    cfg = merge_into(cfg, {"experiment": {"name": Path(experiment_name).stem}}, str(exp_path), schema)
    for group in ("data", "trainer", "tracking"):
        path = group_file(group, defaults[group])
        cfg = merge_into(cfg, {group: read_yaml(path)}, str(path), schema)
    cfg = merge_into(cfg, {"stage": read_yaml(stage_path)}, str(stage_path), schema)
    sections = {k: v for k, v in experiment.items() if k not in ("defaults", "stages")}
    cfg = merge_into(cfg, sections, str(exp_path), schema)
    per_stage = experiment.get("stages", {}) or {}
    if stage_name in per_stage:
        cfg = merge_into(cfg, per_stage[stage_name], f"{exp_path} (stages.{stage_name})", schema)
    cfg = merge_into(cfg, OmegaConf.from_dotlist(overrides), "command line", schema)
    config: Config = OmegaConf.to_object(cfg)
    derive(config)
    validate(config, exp_path)
    return config


def derive(cfg: Config) -> None:
    """Fill the derived values (run folder, stages folder)."""
    root = Path(cfg.experiment.output_root) / cfg.experiment.name
    if cfg.run.resume in ("False", "True"):  # YAML reads a bare false/true as a boolean
        cfg.run.resume = cfg.run.resume.lower()
    if not cfg.run.dir:
        suffix = f"-{cfg.run.name}" if cfg.run.name else ""
        cfg.run.dir = str(root / f"{cfg.stage.name}{suffix}")
    if not cfg.run.stages_dir:
        cfg.run.stages_dir = str(root / "stages")


def _choice_errors(obj: Any, prefix: str) -> list[str]:
    errors = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            errors.append(f"{prefix}.{f.name}={value!r} is not one of {', '.join(map(str, allowed))}")
    return errors


def validate(cfg: Config, source: Path | str = "config") -> None:
    errors = []
    for section in ("experiment", "stage", "data", "trainer", "tracking", "run"):
        obj = getattr(cfg, section)
        errors += _choice_errors(obj, section)
        if hasattr(obj, "validate"):
            errors += obj.validate()
    if errors:
        raise ConfigError(f"invalid configuration ({source}):\n  " + "\n  ".join(errors))


def to_container(cfg: Config) -> dict[str, Any]:
    """Plain dict of the resolved config (for saving, W&B, stage files)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.create(to_container(cfg)))


def describe(cfg: Config) -> str:
    """The resolved config plus the derived values, as ``config show`` prints it."""
    lines = [to_yaml(cfg).rstrip(), "# derived:",
             f"#   world size   = {cfg.trainer.devices} devices x {cfg.trainer.num_nodes} nodes = {cfg.world_size}",
             f"#   global batch = {cfg.data.batch_size} x {cfg.world_size} x {cfg.trainer.accumulate_grad_batches} "
             f"(batch x world x accumulation) = {cfg.global_batch}",
             f"#   run dir      = {cfg.run.dir}", f"#   stages dir   = {cfg.run.stages_dir}"]
    return "\n".join(lines)


def field_help(obj: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, value, help) for every field: what `config show --explain` prints."""
    rows = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            rows += field_help(value, key + ".")
        else:
            rows.append((key, repr(value), f.metadata.get("help", "")))
    return rows


__all__ = ["ConfigError", "compose", "load_group_file", "describe", "to_container", "to_yaml", "field_help",
           "Config", "ExperimentConfig", "RunConfig"]
