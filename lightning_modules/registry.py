"""Stage name -> LightningModule class; the config's ``stage`` group selects one."""
from __future__ import annotations

import importlib

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
CHAIN = tuple(STAGES)  # training order


def available_stages() -> list[str]:
    """Stages whose module is present in this installation."""
    out = []
    for name, target in STAGES.items():
        if importlib.util.find_spec(target.split(":")[0]) is not None:
            out.append(name)
    return out


def stage_class(name: str):
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
    module_name, cls_name = STAGES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise KeyError(f"stage {name!r} is not built in this installation (no {module_name})") from exc
        raise
    return getattr(module, cls_name)
