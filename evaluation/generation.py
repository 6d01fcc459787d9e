"""The one place the evaluation calls the speech-to-video pipeline (``generation/pipeline.py``).

The adapter uses only this of the pipeline: ``TalkingFacePipeline(stages_dir, GenerationOptions(device=...))``
loads the exported stages once; for each clip, ``options.seed`` is set, ``portrait(speech, timings)`` draws the
portrait from the speech [N] (float, 16 kHz) and ``video(portrait, speech, timings, advance)`` returns
``(low-res frames, final frames)`` at 25 fps (float [T, 3, S, S] in [-1, 1], or uint8 [T, S, S, 3]). A stage file
the pipeline cannot use is a ``GenerationError`` naming it, which the evaluation reports as an input error. The
results name every stage file of the folder by its sha256, with the generation options, so that two evaluations of
one folder can be told apart when a file was retrained in between.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from common.images import to_uint8
from evaluation.fid import file_sha256
from evaluation.sources import EvalInputError
from generation.pipeline import GenerationOptions, TalkingFacePipeline

PIPELINE = "generation.pipeline.TalkingFacePipeline"


def _as_uint8(frames) -> np.ndarray:
    if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3:
        return frames
    if frames.ndim == 4 and frames.shape[1] == 3:
        return to_uint8(frames)
    raise EvalInputError(f"the pipeline returned frames {frames.dtype} {tuple(frames.shape)}; expected uint8 "
                         "[T, H, W, 3] or float [T, 3, H, W] in [-1, 1]")


def load_generator(stages_dir: str | Path, device: str = "cpu") -> tuple[Callable[[np.ndarray, int, str], np.ndarray],
                                                                         dict]:
    """(``generate(audio, seed, key) -> uint8 frames``, description) from an exported stages folder."""
    stages_dir = Path(stages_dir)
    if not stages_dir.is_dir():
        raise EvalInputError(f"{stages_dir} is not a folder of exported stage files (seespeaker export)")
    try:
        pipeline = TalkingFacePipeline(stages_dir, GenerationOptions(device=device))
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

    files = sorted(stages_dir.glob("*.safetensors"))
    return generate, {"pipeline": PIPELINE, "stages_dir": str(stages_dir), "stage_files": [p.name for p in files],
                      "stage_sha256": {p.name: file_sha256(p) for p in files},
                      "options": {k: v for k, v in asdict(pipeline.options).items() if k != "seed"}}
