"""Speech -> video at the tiny scale on the CPU: frames/s of the output video and seconds per pipeline step.

The stages come from ``outputs/tiny/stages`` when the demo has trained all of them, else from small untrained
exports (tests/integration/tiny_stages.py: the same network shapes as the generate tests, a tiny codebook of the
tiny experiment's size); speed does not depend on the weights. Sampler steps are the tiny experiment's (portrait
10, motion 10, frame latents 5 per frame). A second table times the codebook renderer alone (64 -> 256 px) by batch.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from bench.common import write_report
from lightning_modules.pipeline import PORTRAIT_STAGES, VIDEO_STAGES, GenerationOptions, generate_video

SECONDS = 4.0
DEMO_STAGES = Path("outputs/tiny/stages")


def stages_folder(scratch: Path) -> tuple[Path, str]:
    if all((DEMO_STAGES / f"{n}.safetensors").is_file() for n in PORTRAIT_STAGES + VIDEO_STAGES):
        return DEMO_STAGES, "trained tiny demo stages"
    from tests.integration.tiny_stages import export_codebook, make_generation_stages
    folder = make_generation_stages(scratch / "stages")
    export_codebook(folder)
    return folder, "untrained small exports (tests/integration/tiny_stages.py)"


def speech_file(path: Path, seconds: float = SECONDS) -> Path:
    """A voiced, amplitude-modulated tone of ``seconds`` at 16 kHz (speed does not depend on the words)."""
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 170 * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(np.float32), 16000)
    return path


def pipeline_row(stages: Path, scratch: Path) -> dict:
    options = GenerationOptions(steps=10, motion_steps=10, frame_steps=5, seed=0)
    result = generate_video(speech_file(scratch / "speech.wav"), stages, scratch / "bench.mp4", options)
    generating = result.seconds - result.timings.get("load_stages", 0.0)
    row = {"frames": result.frames, "size": result.size, "seconds": round(generating, 2),
           "video_fps": round(result.frames / generating, 2), "realtime_factor": round(SECONDS / generating, 3)}
    row.update({f"s_{k}": round(v, 3) for k, v in result.timings.items()})
    return row


def renderer_rows(stages: Path) -> list[dict]:
    from lightning_modules.codebook import load_codebook
    codebook = load_codebook(stages / "codebook.safetensors")
    rows = []
    for batch in (1, 8, 16):
        frames = torch.rand(32, 3, codebook.cfg.lr_resolution, codebook.cfg.lr_resolution) * 2 - 1
        codebook.upscale(frames[:batch], batch_frames=batch)  # warm-up
        start = time.perf_counter()
        codebook.upscale(frames, batch_frames=batch)
        elapsed = time.perf_counter() - start
        rows.append({"batch_frames": batch, "frames": 32, "seconds": round(elapsed, 2),
                     "frames_s": round(32 / elapsed, 2), "phase": codebook.cfg.phase})
    return rows


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    with tempfile.TemporaryDirectory(prefix="seespeaker-bench-") as tmp:
        scratch = Path(tmp)
        stages, source = stages_folder(scratch)
        row = pipeline_row(stages, scratch)
        renderer = renderer_rows(stages)
    load = os.getloadavg()[0]
    notes = (f"load average {load:.1f} on {os.cpu_count()} cores during the run; stages: {source}; {SECONDS:g} s of speech -> {row['frames']} frames at 25 fps, {row['size']} px; "
             f"seconds exclude loading the stages (s_load_stages); video_fps = output frames per second of "
             f"generation. Codebook renderer alone: " + ", ".join(f"batch {r['batch_frames']}: {r['frames_s']} "
                                                                  f"frames/s" for r in renderer))
    write_report("generate", [row], list(row), notes=notes)


if __name__ == "__main__":
    main()
