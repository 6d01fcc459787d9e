"""Training keys: what a stage file was made from, so that it is reused only while that still holds.

A stage's key (saved in its run's provenance and so in its exported file) has four parts:

- ``code``: a hash of the source of the modules that define and train the stage: its own module and every project
  module it imports (to any depth, stopping at other stages' modules, whose changes reach it through ``inputs``),
  and the training machinery (``trainer.runner``, ``trainer.factory`` and what they import);
- ``config``: a hash per section of the resolved config that shapes the weights (stage, data but its root, trainer,
  seed); run folders, tracking and names are left out;
- ``corpus``: the SHA-256 of the shard index and the corpus version written into it;
- ``inputs``: the SHA-256 of every file the stage graph says it loads (``requires(cfg)``); for a codebook phase
  after the first, the key of the phase file it starts from.

:func:`key_changes` says, in words, why two keys differ.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "datamodules", "lightning_modules", "generation", "evaluation", "trainer", "slurm", "reports")
BOOKKEEPING = ("trainer.keys", "trainer.provenance")  # record what a run was made from; shape no weight
TRAINING_MODULES = ("trainer.runner", "trainer.factory")
KEY_FORMAT = 1


def module_path(root: Path, module: str) -> Path | None:
    """The source file of ``module`` under ``root`` (a module file or a package's ``__init__.py``)."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(root: Path, path: Path) -> set[str]:
    """Project modules that ``path`` imports anywhere in its body (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES and module_path(root, n))
    return found


def module_closure(root: Path, starts: tuple[str, ...], stop: frozenset[str] = frozenset()) -> list[str]:
    """``starts`` and every project module they import, to any depth, not entering the modules in ``stop``."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in seen or (module in stop and module not in starts) or module_path(root, module) is None:
            continue
        seen.add(module)
        parent = module.rsplit(".", 1)[0]
        if "." in module and parent not in seen:
            todo.append(parent)  # a package's __init__ runs before its modules
        todo.extend(imported_modules(root, module_path(root, module)))
    return sorted(seen)


def source_hash(root: Path, modules: list[str]) -> str:
    digest = hashlib.sha256()
    for module in modules:
        digest.update(module.encode() + b"\0" + module_path(root, module).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def stage_modules() -> dict[str, str]:
    """stage -> the module that defines it."""
    from lightning_modules.registry import STAGES
    return {stage: target.split(":")[0] for stage, target in STAGES.items()}


def code_hash(stage: str, root: Path = ROOT) -> str:
    """The hash of the modules that define and train ``stage`` (read under ``root``)."""
    modules = stage_modules()
    own = (modules[stage],) if stage in modules else ()  # a stage class defined outside the registry: the machinery
    stop = frozenset(m for s, m in modules.items() if s != stage) | frozenset(BOOKKEEPING)
    return source_hash(root, module_closure(root, (*own, *TRAINING_MODULES), stop))


def evaluation_code_hash(modules: tuple[str, ...], root: Path = ROOT, stop: tuple[str, ...] = ()) -> str:
    """The hash of the modules an evaluation runs (``modules`` and what they import, not entering ``stop``)."""
    return source_hash(root, module_closure(root, modules, frozenset(stop)))


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    digest_ = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest_.update(block)
    return digest_.hexdigest()[:16]


def config_digests(config: dict[str, Any]) -> dict[str, str]:
    """Per-section hashes of what in a resolved config (a dict) shapes the weights."""
    data = {k: v for k, v in config["data"].items() if k != "root"}
    return {"stage": digest(config["stage"]), "data": digest(data), "trainer": digest(config["trainer"]),
            "seed": digest(config["experiment"]["seed"])}


def corpus_identity(data_root: str | Path) -> dict[str, Any]:
    from datamodules.shards import INDEX_NAME, ShardIndex
    index = Path(data_root) / INDEX_NAME
    if not index.is_file():
        return {"index": "", "version": None}
    return {"index": file_digest(index), "version": ShardIndex.load(data_root).corpus_version()}


def input_identity(cfg: Any, earlier_phase: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the stage graph says this stage loads, each named by its file's hash (a codebook phase after the first:
    by the key of the phase file it starts from, ``earlier_phase`` when given, else read from the file)."""
    from lightning_modules.registry import node_file, requires
    folder = Path(cfg.run.stages_dir or ".")
    inputs = {}
    for node in requires(cfg.stage.name, cfg.stage):
        path = folder / node_file(node)
        inputs[node] = file_digest(path) if path.is_file() else ""
    for name, path in cfg.stage.input_files().items():
        inputs[name] = file_digest(Path(path)) if Path(path).is_file() else ""
    if cfg.stage.name == "codebook" and cfg.stage.phase != "vqgan":
        inputs["codebook"] = earlier_phase if earlier_phase is not None else stage_file_key(
            folder / "codebook.safetensors")
    return inputs


def stage_file_provenance(path: Path) -> dict[str, Any]:
    """The provenance recorded in an exported stage file ({} when there is no file)."""
    from lightning_modules.stagefile import read_metadata
    if not path.is_file():
        return {}
    return json.loads(read_metadata(path).get("provenance", "{}"))


def stage_file_key(path: Path) -> dict[str, Any]:
    """The training key recorded in an exported stage file ({} when it has none or there is no file)."""
    return stage_file_provenance(path).get("training_key") or {}


def training_key(cfg: Any, config: dict[str, Any], root: Path = ROOT,
                 earlier_phase: dict[str, Any] | None = None) -> dict[str, Any]:
    """The key of a training run: ``cfg`` the typed config, ``config`` the same as a plain dict."""
    return {"format": KEY_FORMAT, "code": code_hash(cfg.stage.name, root), "config": config_digests(config),
            "corpus": corpus_identity(cfg.data.root), "inputs": input_identity(cfg, earlier_phase)}


def key_changes(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Why ``found`` (a stage file's key) is not ``expected`` (the key a run would have now), in words."""
    if not found:
        return [f"{prefix}the stage file records no training key"]
    reasons = []
    if found.get("code") != expected.get("code"):
        reasons.append(f"{prefix}training code changed ({found.get('code')} -> {expected['code']})")
    for section, value in expected["config"].items():
        if found.get("config", {}).get(section) != value:
            reasons.append(f"{prefix}config section '{section}' changed")
    if found.get("corpus") != expected["corpus"]:
        reasons.append(f"{prefix}corpus changed ({found.get('corpus')} -> {expected['corpus']})")
    for node, value in expected["inputs"].items():
        seen = found.get("inputs", {}).get(node)
        if isinstance(value, dict):
            reasons += key_changes(value, seen or {}, prefix=f"{prefix}{node} phase file: ")
        elif seen != value:
            reasons.append(f"{prefix}input {node} changed")
    return reasons
