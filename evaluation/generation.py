"""The one place the evaluation calls the speech-to-video pipeline (``lightning_modules/pipeline.py``).

The adapter uses only this of the pipeline: ``TalkingFacePipeline(stages_dir, GenerationOptions(device=...))``
loads the exported stages once; for each clip, ``options.seed`` is set, ``portrait(speech, timings)`` draws the
portrait from the speech [N] (float, 16 kHz) and ``video(portrait, speech, timings, advance)`` returns
``(low-res frames, uint8 frames [T, S, S, 3])`` at 25 fps. A stage file the pipeline cannot use is a
``GenerationError`` naming it, which the evaluation reports as an input error.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from evaluation.sources import EvalInputError

PIPELINE_MODULE = "lightning_modules.pipeline"
PIPELINE_CLASS = "TalkingFacePipeline"


def _as_uint8(frames) -> np.ndarray:
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3:
        return frames
    if frames.ndim == 4 and frames.shape[1] == 3:
        return np.ascontiguousarray(((frames.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    raise EvalInputError(f"the pipeline returned frames {frames.dtype} {frames.shape}; expected uint8 [T, H, W, 3] "
                         "or float [T, 3, H, W] in [-1, 1]")


def _pipeline_module():
    try:
        return importlib.import_module(PIPELINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PIPELINE_MODULE:
            raise
        raise EvalInputError(f"this installation has no speech-to-video pipeline ({PIPELINE_MODULE}); generate the "
                             "videos elsewhere and score them with --videos DIR") from None


def load_generator(stages_dir: str | Path, device: str = "cpu") -> tuple[Callable[[np.ndarray, int, str], np.ndarray],
                                                                         dict]:
    """(``generate(audio, seed, key) -> uint8 frames``, description) from an exported stages folder."""
    stages_dir = Path(stages_dir)
    if not stages_dir.is_dir():
        raise EvalInputError(f"{stages_dir} is not a folder of exported stage files (seespeaker export)")
    module = _pipeline_module()
    pipeline_class, options_class = getattr(module, PIPELINE_CLASS, None), getattr(module, "GenerationOptions", None)
    if pipeline_class is None or options_class is None:
        raise EvalInputError(f"{PIPELINE_MODULE} has no {PIPELINE_CLASS} / GenerationOptions; score generated videos "
                             "with --videos DIR instead")
    try:
        pipeline = pipeline_class(stages_dir, options_class(device=device))
    except ValueError as exc:  # GenerationError: a missing or unusable stage file, named
        raise EvalInputError(str(exc)) from None

    def generate(audio: np.ndarray, seed: int, key: str) -> np.ndarray:
        pipeline.options.seed = seed
        torch.manual_seed(seed)
        speech = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        timings: dict[str, float] = {}
        try:
            portrait = pipeline.portrait(speech, timings)
            _, frames = pipeline.video(portrait, speech, timings, lambda step: None)
        except ValueError as exc:
            raise EvalInputError(f"generating {key}: {exc}") from None
        return _as_uint8(frames)

    return generate, {"pipeline": f"{PIPELINE_MODULE}.{PIPELINE_CLASS}", "stages_dir": str(stages_dir),
                      "stage_files": sorted(p.name for p in stages_dir.glob("*.safetensors"))}
