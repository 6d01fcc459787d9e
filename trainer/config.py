"""Configuration: the one place YAML is read.

Merge order for ``seespeaker train experiment=E stage=S [group=choice ...] [key=value ...]``:

1. the typed schema defaults (``trainer/schemas.py``, the stage's ``config_class``);
2. the group files ``configs/<group>/<choice>.yaml`` for data, trainer, tracking and stage — choices from the
   experiment's ``defaults:`` list, overridden by choices named on the command line;
3. the experiment file's own sections (``experiment``, ``data``, ``trainer``, ...), then its
   ``stages.<stage>`` section (only what differs for that stage);
4. ``key=value`` overrides from the command line.

An experiment file may build on another: a top-level ``base: <experiment>`` key (a name in ``configs/experiment/``
or a YAML path relative to the file) merges the base experiment first, resolved recursively, then the file's own
``defaults:`` list and sections over it (mappings merge key by key, lists are replaced whole). The merged
experiment then takes its place in steps 2 and 3. A missing base or a cycle of bases is an error naming the file.

Unknown keys, wrong types and invalid values are errors naming the key, the file and the allowed values. A field
whose metadata lists ``choices`` is checked against them here, in one place (:func:`choice_errors`), for the
composed run config and for every standalone group file; the ``validate()`` methods check everything else.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from common.errors import SeespeakerError
from trainer.schemas import Config, ExperimentConfig, RunConfig

GROUPS = ("experiment", "stage", "data", "trainer", "tracking")
GROUP_DEFAULTS = {"data": "synthetic", "trainer": "cpu", "tracking": "offline"}
TOP_LEVEL_SHORTCUTS = {"resume": "run.resume", "init_from": "run.init_from", "seed": "experiment.seed"}


class ConfigError(SeespeakerError, ValueError):
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
        choices = ", ".join(group_choices(group)) or "none"
        raise ConfigError(f"{group}={choice}: no file {path}; choices for {group}: {choices}")
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
    errors = check(obj, group)
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


def _base_file(path: Path, base: Any) -> Path:
    """The experiment file that ``base:`` in ``path`` names: an experiment name, or a YAML path relative to
    ``path``'s folder."""
    available = ", ".join(group_choices("experiment")) or "none"
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must name an experiment, got {base!r}; experiments: {available}")
    if base.endswith((".yaml", ".yml")):
        candidate = path.parent / base
    else:
        candidate = configs_dir() / "experiment" / f"{base}.yaml"
    if not candidate.is_file():
        raise ConfigError(f"{path}: base '{base}' not found ({candidate}); experiments: {available}")
    return candidate


def experiment_files(path: Path) -> list[tuple[Path, DictConfig]]:
    """``path`` and the experiment files its ``base:`` keys name, each read once, the deepest base first."""
    chain = [(path, read_yaml(path))]
    while "base" in chain[-1][1]:
        child, text = chain[-1]
        base = _base_file(child, text.get("base"))
        if base.resolve() in [p.resolve() for p, _ in chain]:
            cycle = " -> ".join(str(p) for p, _ in chain) + f" -> {base}"
            raise ConfigError(f"{child}: base '{text.get('base')}' makes a cycle: {cycle}")
        chain.append((base, read_yaml(base)))
    return chain[::-1]


def read_experiment(choice: str) -> tuple[DictConfig, str]:
    """The experiment ``choice`` merged over its bases (base first), and a source naming every file for errors."""
    files = experiment_files(group_file("experiment", choice))
    merged = OmegaConf.create()
    for path, own in files:
        own = {k: v for k, v in own.items() if k != "base"}
        try:
            merged = OmegaConf.merge(merged, own)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{path}: does not merge over its base ({exc})") from None
    source = str(files[-1][0])
    if len(files) > 1:
        source += " (base: " + " <- ".join(str(p) for p, _ in files[-2::-1]) + ")"
    return merged, source


def _stage_file(defaults: dict[str, str]) -> tuple[Path, str, type]:
    """The chosen stage's file, its name and its config class."""
    from lightning_modules.registry import stage_class

    if "stage" not in defaults:
        raise ConfigError("no stage chosen: add stage=<name>; stages: " + ", ".join(group_choices("stage")))
    stage_path = group_file("stage", defaults["stage"])
    stage_name = str(read_yaml(stage_path).get("name", Path(defaults["stage"]).stem))
    try:
        return stage_path, stage_name, stage_class(stage_name).config_class
    except KeyError as exc:
        raise ConfigError(f"{stage_path}: {exc.args[0]}") from None


def compose(args: list[str]) -> Config:
    """The validated, typed config of a training run from command-line words."""
    choices, overrides = split_args(args)
    experiment_name = choices.get("experiment", "tiny")
    experiment, exp_source = read_experiment(experiment_name)
    defaults = dict(GROUP_DEFAULTS)
    defaults.update(OmegaConf.to_container(experiment.get("defaults", {})) or {})
    defaults.update({k: v for k, v in choices.items() if k != "experiment"})
    stage_path, stage_name, stage_cls = _stage_file(defaults)

    schema = Config(stage=stage_cls())
    cfg = OmegaConf.structured(schema)
    cfg = merge_into(cfg, {"experiment": {"name": Path(experiment_name).stem}}, exp_source, schema)
    for group in ("data", "trainer", "tracking"):
        path = group_file(group, defaults[group])
        cfg = merge_into(cfg, {group: read_yaml(path)}, str(path), schema)
    cfg = merge_into(cfg, {"stage": read_yaml(stage_path)}, str(stage_path), schema)
    sections = {k: v for k, v in experiment.items() if k not in ("defaults", "stages")}
    cfg = merge_into(cfg, sections, exp_source, schema)
    per_stage = experiment.get("stages", {}) or {}
    if stage_name in per_stage:
        cfg = merge_into(cfg, per_stage[stage_name], f"{exp_source} (stages.{stage_name})", schema)
    cfg = merge_into(cfg, OmegaConf.from_dotlist(overrides), "command line", schema)
    config: Config = OmegaConf.to_object(cfg)
    derive(config)
    validate(config, f"{exp_source} with the command line {' '.join(overrides)}" if overrides else exp_source)
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


def choice_errors(obj: Any, prefix: str) -> list[str]:
    """The one check of ``field(metadata={"choices": ...})``: every field of the dataclass ``obj`` (nested ones
    included) whose value is not among its choices, each message naming the key, the value and the allowed values."""
    errors = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value):
            errors += choice_errors(value, key)
        allowed = f.metadata.get("choices")
        if allowed is not None and value not in allowed:
            errors.append(f"{key}={value!r} is not one of {', '.join(map(str, allowed))}")
    return errors


def check(obj: Any, prefix: str) -> list[str]:
    """Every problem with a typed config object: its choices, then its own ``validate()``."""
    return choice_errors(obj, prefix) + (obj.validate() if hasattr(obj, "validate") else [])


def validate(cfg: Config, source: Path | str = "config") -> None:
    """Raise a ConfigError listing every problem of the composed config."""
    errors = []
    for section in ("experiment", "stage", "data", "trainer", "tracking", "run"):
        errors += check(getattr(cfg, section), section)
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


__all__ = ["ConfigError", "compose", "load_group_file", "read_experiment", "choice_errors", "check", "describe",
           "to_container", "to_yaml", "field_help", "Config", "ExperimentConfig", "RunConfig"]
