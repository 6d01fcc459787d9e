"""The one place the evaluation calls the speech-to-video pipeline (``lightning_modules/pipeline.py``).

The adapter needs only this of the pipeline module:
``SpeechToVideoPipeline.from_stages_dir(stages_dir, device=...)`` returning an object whose
``generate(audio, sample_rate=16000, seed=0)`` takes mono float speech [N] in [-1, 1] and returns the video's
frames, uint8 RGB [T, H, W, 3] (or float [T, 3, H, W] in [-1, 1]) at 25 fps.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable

import numpy as np

from evaluation.sources import EvalInputError

PIPELINE_MODULE = "lightning_modules.pipeline"
PIPELINE_CLASS = "SpeechToVideoPipeline"


def _as_uint8(frames) -> np.ndarray:
    if hasattr(frames, "detach"):
        frames = frames.detach().float().cpu().numpy()
    frames = np.asarray(frames)
    if frames.dtype == np.uint8:
        return frames
    if frames.ndim == 4 and frames.shape[1] == 3:
        return np.ascontiguousarray(((frames.transpose(0, 2, 3, 1) + 1) * 127.5).round().clip(0, 255).astype(np.uint8))
    raise EvalInputError(f"the pipeline returned frames {frames.dtype} {frames.shape}; expected uint8 [T, H, W, 3] "
                         "or float [T, 3, H, W] in [-1, 1]")


def load_generator(stages_dir: str | Path, device: str = "cpu",
                   sample_rate: int = 16000) -> tuple[Callable[[np.ndarray, int, str], np.ndarray], dict]:
    """(``generate(audio, seed, key) -> uint8 frames``, description) from an exported stages folder."""
    stages_dir = Path(stages_dir)
    if not stages_dir.is_dir():
        raise EvalInputError(f"{stages_dir} is not a folder of exported stage files (seespeaker export)")
    try:
        module = importlib.import_module(PIPELINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != PIPELINE_MODULE:
            raise
        raise EvalInputError(f"this installation has no speech-to-video pipeline ({PIPELINE_MODULE}); generate the "
                             "videos elsewhere and score them with --videos DIR") from None
    pipeline_class = getattr(module, PIPELINE_CLASS, None)
    if pipeline_class is None or not hasattr(pipeline_class, "from_stages_dir"):
        raise EvalInputError(f"{PIPELINE_MODULE} has no {PIPELINE_CLASS}.from_stages_dir(stages_dir, device=...); "
                             "score generated videos with --videos DIR instead")
    pipeline = pipeline_class.from_stages_dir(stages_dir, device=device)
    stage_files = sorted(p.name for p in stages_dir.glob("*.safetensors"))

    def generate(audio: np.ndarray, seed: int, key: str) -> np.ndarray:
        return _as_uint8(pipeline.generate(audio, sample_rate=sample_rate, seed=seed))

    return generate, {"pipeline": f"{PIPELINE_MODULE}.{PIPELINE_CLASS}", "stages_dir": str(stages_dir),
                      "stage_files": stage_files}
