"""The exported motion stage's rendering of real clips, as training inputs of a later stage.

The codebook's render phase (``render_source: motion``) and the lip enhancer (``input_source: motion``) learn to
correct the frames Stage 2 makes, not degraded real frames: each batch's clips are re-rendered by the motion stage
from their own landmarks, speech and preceding real frames (:func:`rerender_frames`), so the inputs carry the frame
renderer's errors and stay aligned with the real frames that are the targets.
"""
from __future__ import annotations

from typing import Any

import torch

from lightning_modules.motion_generation import MotionParts, rerender_frames, truth_gaze
from lightning_modules.stagefile import StageFileError, StageFiles


class MotionRerender:
    """Loads the exported motion stage (and the conre and autoencoder stages it draws through) on first use, outside
    the caller's module tree (neither trained nor exported with it)."""

    def __init__(self, option: str):
        self.option = option
        self.parts: MotionParts | None = None

    def load(self, files: StageFiles) -> MotionParts:
        if self.parts is None:
            from lightning_modules.motion_diffusion import MotionDiffusionStage
            try:
                self.parts = MotionDiffusionStage.for_inference(files)
            except StageFileError as exc:
                raise StageFileError(
                    f"{self.option} needs the exported motion_diffusion, conre and autoencoder stages: {exc}. Train "
                    f"them first (`seespeaker train experiment=<same> stage=motion_diffusion`) or set "
                    f"run.stages_dir") from exc
        return self.parts

    @torch.no_grad()
    def __call__(self, files: StageFiles, batch: dict[str, Any], resolution: int, training: bool) -> torch.Tensor:
        """The batch's clips [B, T, 3, r, r] as the motion stage of ``files`` renders them; seeded outside
        training."""
        generator = None if training else torch.Generator().manual_seed(0)
        gaze, known = truth_gaze(batch, batch["frames"].shape[1])
        return rerender_frames(self.load(files), batch["frames"], batch["landmarks"], batch["audio"], resolution,
                               generator, gaze, known)
