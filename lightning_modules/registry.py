"""The stages and the graph between them.

``STAGES`` maps a stage name (the config's ``stage`` group) to its LightningModule class. Each class's
``requires(cfg)`` names the exported files it loads, which may depend on its config (the codebook's
``render_source``); the face prior is a computed node of the graph (``seespeaker prior`` makes it from the
autoencoder and the training shards). :func:`training_order` puts any set of stages in an order that trains every
requirement first; the demo, ``make results``, ``generate`` and ``seespeaker config show`` read it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from lightning_modules.prior import DEFAULT_PRIOR_NAME

STAGES: dict[str, str] = {
    "conre": "lightning_modules.conre:ConReStage",
    "autoencoder": "lightning_modules.autoencoder:AutoencoderStage",
    "portrait_diffusion": "lightning_modules.portrait_diffusion:PortraitDiffusionStage",
    "saw": "lightning_modules.saw:SAWStage",
    "syncnet": "lightning_modules.syncnet:SyncNetStage",
    "motion_diffusion": "lightning_modules.motion_diffusion:MotionDiffusionStage",
    "lip_enhancer": "lightning_modules.lip_enhancer:LipEnhancerStage",
    "codebook": "lightning_modules.codebook:CodebookStage",
}
FACE_PRIOR = "face_prior"
COMPUTED: dict[str, tuple[str, ...]] = {FACE_PRIOR: ("autoencoder",)}  # computed nodes and what they need
NODE_FILES = {FACE_PRIOR: DEFAULT_PRIOR_NAME}


def stage_class(name: str):
    """The LightningModule class of stage ``name``."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module_name, cls_name = STAGES[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def requires(node: str, cfg: Any = None) -> tuple[str, ...]:
    """What ``node`` (a stage or a computed node) needs first; a stage's answer depends on its config
    (``cfg``: its typed stage config; the schema defaults when None)."""
    if node in COMPUTED:
        return COMPUTED[node]
    cls = stage_class(node)
    return tuple(cls.requires(cfg if cfg is not None else cls.config_class()))


def node_file(node: str) -> str:
    """The file a node leaves in the stages folder."""
    return NODE_FILES.get(node, f"{node}.safetensors")


def training_order(targets: list[str] | tuple[str, ...] = tuple(STAGES),
                   config_of: Callable[[str], Any] | None = None) -> list[str]:
    """``targets`` and everything they need, each after its requirements (stages otherwise in ``STAGES`` order);
    ``config_of(stage)`` gives the typed stage config the graph is read with."""
    order: list[str] = []
    visiting: list[str] = []

    def visit(node: str) -> None:
        if node in order:
            return
        if node in visiting:
            raise ValueError(f"the stage graph has a cycle: {' -> '.join(visiting + [node])}")
        visiting.append(node)
        for needed in requires(node, config_of(node) if config_of and node in STAGES else None):
            visit(needed)
        visiting.pop()
        order.append(node)

    for target in sorted(targets, key=lambda s: list(STAGES).index(s) if s in STAGES else len(STAGES)):
        visit(target)
    return order
